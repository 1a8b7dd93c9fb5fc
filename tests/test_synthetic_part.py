"""The demo part ``synthetic`` (issue 36): the demo's interleaved model again with synthetic
interleaved shards (T2U) as one more source taking part of the text share -- everything else the
demo's own -- and its table, test draws pooled, dev apart, the T2U unit quality on top."""

import json
from pathlib import Path

import pytest

from spiritlm.config import ConfigError, dotted, to_dict
from spiritlm.demo import synthetic
from spiritlm.demo.files import train_config_key
from spiritlm.demo.main import DemoConfig, train_config
from spiritlm.demo.parts import PARTS, DemoContext
from spiritlm.eval.testing import two_test_draws


def _ctx(tmp_path, overrides=(), seeds=(0,), models=("interleaved",)):
    return DemoContext(cfg=DemoConfig(out_dir=str(tmp_path), text_vocab_size=300), out=tmp_path, pipe=None,
                       corpus={"manifest": "corpus.jsonl", "text_corpus": "text.jsonl"}, text_tok={"dir": "tok"},
                       speech_tok={"dir": "hubert_tok"}, manifest="m.jsonl", shards={"dir": "shards"},
                       start={"hf": "start/hf"}, seeds=list(seeds), models={m: [] for m in models}, draws={}, units={},
                       evals={}, comparison={}, part_overrides={"synthetic": list(overrides)})


def test_registered_and_config_errors_say_the_fix(tmp_path):
    assert PARTS["synthetic"] == "spiritlm.demo.synthetic:run"
    cfg = synthetic.part_config(_ctx(tmp_path, seeds=(0, 1)))
    assert cfg.seeds == [0] and cfg.synthetic_weight == 0.5 and cfg.t2u_recipe == "train/t2u_demo.toml"
    with pytest.raises(ConfigError, match="synthetic_weight=1.5 must lie in"):
        synthetic.part_config(_ctx(tmp_path, ["synthetic_weight=1.5"]))
    with pytest.raises(ConfigError, match="no interleaved model"):
        synthetic.part_config(_ctx(tmp_path, ["seeds=[3]"]))
    with pytest.raises(ConfigError, match="did not train"):
        synthetic.part_config(_ctx(tmp_path, models=("no_interleaving",)))


def test_the_model_differs_only_by_the_synthetic_source_and_the_text_share(tmp_path):
    ctx = _ctx(tmp_path)
    scfg = synthetic.part_config(ctx)
    ref = train_config(ctx.cfg, "interleaved", ctx.shards, ctx.text_tok, tmp_path / "x", ctx.start, 0)
    got = synthetic.train_config(ctx, scfg, {"dir": "synth"}, 0, tmp_path / "x")
    assert {k for k, v in dotted(to_dict(ref)).items() if v != dotted(to_dict(got)).get(k)} == {"data.sources"}
    src = {s.name: (s.path, s.kind, s.weight, s.synthetic) for s in got.data.sources}
    assert src["synthetic"] == ("synth/interleaved", "interleaved", 0.5, True) and src["text"][2] == 0.5
    assert [src[s.name][2] for s in ref.data.sources if s.kind != "text"] == [1.0, 1.0]
    # a setting added later leaves every cached demo model's key as it was
    assert all("synthetic" not in s for s in train_config_key(ref)["data"]["sources"])
    assert any("synthetic" in s for s in train_config_key(got)["data"]["sources"])


def test_t2u_trains_on_the_demo_aligned_shards_with_its_tokenizer(tmp_path):
    ctx = _ctx(tmp_path)
    tcfg = synthetic.t2u_config(ctx, synthetic.part_config(ctx), tmp_path / "run")
    assert tcfg.model_type == "t2u" and tcfg.model.tokenizer == "tok"
    assert [s.path for s in tcfg.data.sources] == ["shards/aligned"] and tcfg.deepspeed.precision in ("bf16", "fp32")


def test_table_pools_the_test_draws_and_carries_the_quality_report(tmp_path):
    half, right = [1, 0] * 5, [1] * 10
    evals, draws = two_test_draws(tmp_path, {"interleaved": half, synthetic.VARIANT: right})
    q = tmp_path / "quality.md"
    q.write_text("| units | units/word |\n|---|---|\n| T2U | 3.1 |\n")
    (tmp_path / "cmp").mkdir()
    synth = {"report": {"synthetic": {"documents": 7, "spans_speech": 9, "units": 300},
                        "throughput": {"text_words_per_s": 50.0, "units_per_s": 120.0}}}
    out = synthetic._compare_step(evals, draws, [0], synth, str(q), 0.5, tmp_path / "cmp")
    pooled = json.loads(Path(out["json"]).read_text())["pooled"]["topic_storycloze/T2S"]
    assert pooled["n"] == 20 and pooled["acc_a"] == 0.5 and pooled["acc_b"] == 1.0
    md = Path(out["markdown"]).read_text()
    assert "| T2U | 3.1 |" in md and "7 documents" in md and Path(out["png"]).is_file()
