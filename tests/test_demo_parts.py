"""Demo parts: a named comparison runs on the demo's context, its steps cached and timed."""

import json

import pytest

from spiritlm import demo_parts
from spiritlm.config import ConfigError, load_config
from spiritlm.demo import DemoConfig
from spiritlm.demo_parts import DemoContext, check_parts, run_parts
from spiritlm.pipeline import Pipeline

CALLS = []


def toy_part(ctx: DemoContext) -> dict:
    """Adds one cached step that reads the main demo's outputs and the part's overrides."""
    def step(d):
        CALLS.append(d)
        (d / "seen.json").write_text(json.dumps({"shards": ctx.shards["dir"], "seeds": ctx.seeds}))
        return {"n_models": len(ctx.models["interleaved"]), "overrides": ctx.overrides("toy")}
    return ctx.pipe.run("toy_step", [ctx.shards, ctx.overrides("toy")], step)


def _ctx(tmp_path, overrides=None):
    pipe = Pipeline(tmp_path)
    return DemoContext(cfg=DemoConfig(out_dir=str(tmp_path)), out=tmp_path, pipe=pipe, corpus={}, text_tok={},
                       speech_tok={}, manifest="m.jsonl", shards={"dir": "shards"}, start=None, seeds=[0, 1],
                       models={"interleaved": [{}, {}]}, draws={"dev": {}, "test1": {}}, units={}, evals={},
                       comparison={}, part_overrides=overrides or {})


def test_part_runs_on_the_demo_context_and_its_steps_are_cached(tmp_path, monkeypatch):
    monkeypatch.setitem(demo_parts.PARTS, "toy", f"{__name__}:toy_part")
    CALLS.clear()
    ctx = _ctx(tmp_path, {"toy": ["lr=1"]})
    res = run_parts(ctx, ["toy"])
    assert res["toy"]["n_models"] == 2 and res["toy"]["overrides"] == ["lr=1"]
    assert json.loads((tmp_path / "parts" / "toy" / "TIME.json").read_text())["seconds"] >= 0
    assert ctx.test_labels() == ["test1"]
    run_parts(_ctx(tmp_path, {"toy": ["lr=1"]}), ["toy"])  # same deps: cached, not rerun
    assert len(CALLS) == 1
    run_parts(_ctx(tmp_path, {"toy": ["lr=2"]}), ["toy"])  # a changed override reruns the step
    assert len(CALLS) == 2


def test_unknown_part_fails_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="not known"):
        check_parts(["no_such_part"])
    with pytest.raises(ConfigError, match="not known"):
        from spiritlm.demo import run_demo
        run_demo(load_config(DemoConfig, None, [f"out_dir={tmp_path / 'x'}", "parts=[no_such_part]"]))
    assert not (tmp_path / "x").exists()


def test_demo_cli_part_flag_becomes_the_parts_list(monkeypatch):
    from spiritlm.cli import build_parser

    seen = {}
    monkeypatch.setattr("spiritlm.demo.run_demo", lambda cfg: seen.setdefault("cfg", cfg))
    args = build_parser().parse_args(["demo", "--part", "a", "--part", "b", "--out", "/tmp/x"])
    assert args.func(args) == 0
    assert seen["cfg"].parts == ["a", "b"] and seen["cfg"].out_dir == "/tmp/x"
