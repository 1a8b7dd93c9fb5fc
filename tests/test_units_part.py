"""The demo part ``units`` (issue 35): the demo's models rebuilt on semantic units -- only the
speech tokenizer (and so the shards and the benchmarks' units) differ -- and its tables: semantic
vs HuBERT units per variant, and interleaving within each unit family, test draws pooled, dev
apart, with the unit-quality report on top."""

import json
from pathlib import Path

import pytest

from spiritlm.config import ConfigError, dotted, to_dict
from spiritlm.demo import units
from spiritlm.demo.main import DemoConfig, train_config
from spiritlm.demo.parts import PARTS, DemoContext
from spiritlm.eval.testing import two_test_draws


def _ctx(tmp_path, overrides=(), seeds=(0,)):
    return DemoContext(cfg=DemoConfig(out_dir=str(tmp_path), text_vocab_size=300), out=tmp_path, pipe=None,
                       corpus={"manifest": "corpus.jsonl"}, text_tok={"dir": "tok"}, speech_tok={"dir": "hubert_tok"},
                       manifest="m.jsonl", shards={"dir": "shards"}, start={"hf": "start/hf"}, seeds=list(seeds),
                       models={}, draws={}, units={}, evals={}, comparison={},
                       part_overrides={"units": list(overrides)})


def test_registered_and_config_errors_say_the_fix(tmp_path):
    assert PARTS["units"] == "spiritlm.demo.units:run"
    cfg = units.part_config(_ctx(tmp_path, seeds=(0, 1)))
    assert cfg.seeds == [0] and cfg.recipe == "tokenizers/semantic_demo.toml" and not cfg.one_at_a_time
    assert units.part_config(_ctx(tmp_path, ["variants=[interleaved]"])).variants == ["interleaved"]
    with pytest.raises(ConfigError, match="no HuBERT-unit model"):
        units.part_config(_ctx(tmp_path, ["seeds=[4]"]))
    with pytest.raises(ConfigError, match="use some of"):
        units.part_config(_ctx(tmp_path, ["variants=[pairs]"]))
    with pytest.raises(ConfigError, match="name='hubert' must be a plain identifier other than 'hubert'"):
        units.part_config(_ctx(tmp_path, ["name=hubert"]))
    assert units.part_config(_ctx(tmp_path, ["name=hubert25", "recipe=tokenizers/demo.toml"])).name == "hubert25"


def test_the_models_differ_only_in_their_shards(tmp_path):
    """The semantic models start from the demo's own text start, with its settings: the only
    difference in the resolved training config is the shard folder."""
    ctx = _ctx(tmp_path)
    ref = dotted(to_dict(train_config(ctx.cfg, "interleaved", ctx.shards, ctx.text_tok, tmp_path / "x", ctx.start, 0)))
    got = dotted(to_dict(train_config(ctx.cfg, "interleaved", {"dir": "shards_semantic"}, ctx.text_tok, tmp_path / "x",
                                      ctx.start, 0)))
    assert {k for k in ref if ref[k] != got.get(k)} == {"data.sources"}
    assert [s["path"].replace("shards_semantic", "shards") for s in got["data.sources"]] == \
        [s["path"] for s in ref["data.sources"]]


def test_tables_pool_the_test_draws_and_carry_the_unit_report(tmp_path):
    right, half, wrong = [1] * 10, [1, 0] * 5, [0] * 10
    evals, draws = two_test_draws(tmp_path, {"interleaved": half, "no_interleaving": wrong, "interleaved_semantic": right,
                                             "no_interleaving_semantic": half})
    report = tmp_path / "report.md"
    report.write_text("| units | kind |\n|---|---|\n| semantic_kmeans | semantic |\n")
    (tmp_path / "cmp").mkdir()
    out = units._compare_step(evals, draws, [0], ["interleaved", "no_interleaving"], str(report), tmp_path / "cmp")
    tables = json.loads(Path(out["json"]).read_text())["tables"]
    fam = tables["interleaved_hubert_vs_semantic"]["pooled"]["topic_storycloze/T2S"]
    assert fam["n"] == 20 and fam["acc_a"] == 0.5 and fam["acc_b"] == 1.0  # both test draws, not dev
    inter = tables["interleaving_semantic"]["pooled"]["topic_storycloze/T2S"]
    assert inter["acc_a"] == 1.0 and inter["acc_b"] == 0.5
    md = Path(out["markdown"]).read_text()
    assert "| semantic_kmeans | semantic |" in md  # the unit-quality table comes first
    assert "## Interleaving, semantic units" in md and "## Interleaving, HuBERT units" in md
