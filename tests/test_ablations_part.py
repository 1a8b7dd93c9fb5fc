"""The demo part ``ablations``: each ablation model is the demo's interleaved model with one change
(pair shards; no start checkpoint), and its table pools the test draws against the interleaved
model item by item, with the dev draw apart."""

import json
from pathlib import Path

import pytest

from spiritlm.config import ConfigError, dotted, to_dict
from spiritlm.demo.main import DemoConfig
from spiritlm.demo.parts import DemoContext
from spiritlm.demo import ablations
from spiritlm.eval.testing import write_items


def _ctx(tmp_path, overrides=(), start=True, seeds=(0,)):
    return DemoContext(cfg=DemoConfig(out_dir=str(tmp_path)), out=tmp_path, pipe=None, corpus={},
                       text_tok={"dir": "tok"}, speech_tok={}, manifest="m.jsonl", shards={"dir": "shards"},
                       start={"hf": "start/hf"} if start else None, seeds=list(seeds), models={}, draws={},
                       units={}, evals={}, comparison={}, part_overrides={"ablations": list(overrides)})


def test_each_ablation_changes_one_thing_of_the_interleaved_model(tmp_path):
    from spiritlm.demo.main import train_config

    ctx = _ctx(tmp_path)
    ref = dotted(to_dict(train_config(ctx.cfg, "interleaved", ctx.shards, ctx.text_tok, tmp_path / "x", ctx.start, 0)))
    for variant, shards, changed in (("pairs", {"dir": "shards_pairs"}, {"data.sources"}),
                                     ("random_init", ctx.shards, {"model.checkpoint"})):
        got = dotted(to_dict(ablations.train_config(ctx, variant, 0, shards, tmp_path / "x")))
        diff = {k for k in ref if ref[k] != got.get(k)}
        assert diff == changed | {"checkpoint.keep"} and got["checkpoint.keep"] == 0  # every step kept
    got = dotted(to_dict(ablations.train_config(ctx, "pairs", 0, {"dir": "shards_pairs"}, tmp_path / "x")))
    assert [s["path"].replace("shards_pairs", "shards") for s in got["data.sources"]] == \
        [s["path"] for s in ref["data.sources"]]
    rnd = ablations.train_config(ctx, "random_init", 0, ctx.shards, tmp_path / "x")
    assert rnd.model.checkpoint == "" and rnd.optim.lr == ctx.cfg.continued_lr  # the same LR as the reference


def test_part_config_errors_say_the_fix(tmp_path):
    assert ablations.part_config(_ctx(tmp_path, seeds=(0, 1, 2))).seeds == [0]  # default: the first seed
    assert ablations.part_config(_ctx(tmp_path, ["seeds=[2]"], seeds=(0, 1, 2))).seeds == [2]
    with pytest.raises(ConfigError, match="no interleaved model"):
        ablations.part_config(_ctx(tmp_path, ["seeds=[3]"]))
    with pytest.raises(ConfigError, match="use some of"):
        ablations.part_config(_ctx(tmp_path, ["variants=[asr_only]"]))
    with pytest.raises(ConfigError, match="text_pretrain_steps"):
        ablations.part_config(_ctx(tmp_path, start=False))
    assert ablations.part_config(_ctx(tmp_path, ["variants=[pairs]"], start=False)).variants == ["pairs"]


def test_table_pools_test_draws_against_the_interleaved_model(tmp_path):
    # interleaved right on every item, pairs on half of them, on two test draws; the dev draw differs
    evals = {"interleaved": {"dev": [write_items(tmp_path / "i_dev", [1, 1])],
                             "test1": [write_items(tmp_path / "i1", [1] * 10)],
                             "test2": [write_items(tmp_path / "i2", [1] * 10)]},
             "pairs": {"dev": [write_items(tmp_path / "p_dev", [1, 1])],
                       "test1": [write_items(tmp_path / "p1", [1, 0] * 5)],
                       "test2": [write_items(tmp_path / "p2", [0] * 10)]}}
    draws = {"dev": {"seed": 0}, "test1": {"seed": 11}, "test2": {"seed": 12}}
    (tmp_path / "cmp").mkdir()
    out = ablations._compare_step(evals, draws, [0], tmp_path / "cmp")
    md = Path(out["markdown"]).read_text()
    pooled = json.loads(Path(out["json"]).read_text())["pooled"]["pairs"]["topic_storycloze/T2S"]
    assert pooled["n"] == 20 and pooled["acc_a"] == 1.0 and pooled["acc_b"] == 0.25  # items of both draws
    test_part = md.split("## Dev draw")[0]
    assert "| topic_storycloze/T2S | 20 | 100.0 | 25.0 (-75.0;" in test_part  # ablation minus interleaved
    lo, hi = pooled["ci95"]
    assert f"{-100 * hi:+.1f}, {-100 * lo:+.1f}; p = " in test_part and hi <= 1.0 and lo > 0
    assert "| topic_storycloze/T2S | 2 | 100.0 | 100.0 (+0.0;" in md.split("## Dev draw")[1]
    assert Path(out["png"]["pairs"]).is_file()
    (tmp_path / "cmp0").mkdir()
    only_dev = ablations._compare_step({m: {"dev": e["dev"]} for m, e in evals.items()}, {"dev": draws["dev"]}, [0],
                                       tmp_path / "cmp0")
    assert "NO TEST DRAW" in Path(only_dev["markdown"]).read_text()
