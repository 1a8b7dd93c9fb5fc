"""Demo parts: a named comparison runs on the demo's context, its steps cached and timed."""

import json

import pytest

from spiritlm.demo import cached as demo_cached, parts as demo_parts
from spiritlm.config import ConfigError, load_config
from spiritlm.demo.main import DemoConfig
from spiritlm.demo.parts import DemoContext, check_parts, run_parts
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
        from spiritlm.demo.main import run_demo
        run_demo(load_config(DemoConfig, None, [f"out_dir={tmp_path / 'x'}", "parts=[no_such_part]"]))
    assert not (tmp_path / "x").exists()


def test_demo_cli_part_flag_becomes_the_parts_list(monkeypatch):
    from spiritlm.cli import build_parser

    seen = {}
    monkeypatch.setattr("spiritlm.demo.main.run_demo", lambda cfg: seen.setdefault("cfg", cfg))
    args = build_parser().parse_args(["demo", "--part", "a", "--part", "b", "--out", "/tmp/x"])
    assert args.func(args) == 0
    assert seen["cfg"].parts == ["a", "b"] and seen["cfg"].out_dir == "/tmp/x"


def _done(root, step, outputs):
    (root / step).mkdir(parents=True, exist_ok=True)
    (root / step / "STEP_DONE.json").write_text(json.dumps({"key": "k", "seconds": 1.0, "outputs": outputs}))


def test_context_from_cache_reads_finished_steps_and_pairs_only_complete_seeds(tmp_path, monkeypatch):
    from spiritlm.config import save_config
    from spiritlm.demo.cached import context_from_cache

    with pytest.raises(ConfigError, match="run `spiritlm demo"):
        context_from_cache(tmp_path)
    save_config(load_config(DemoConfig, None, [f"out_dir={tmp_path}", "train_seeds=[0, 1]"]),
                tmp_path / "config.resolved.yaml")
    for step in ("corpus", "text_tokenizer", "speech_tokenizer", "shards"):
        _done(tmp_path, step, {"dir": step})
    with pytest.raises(ConfigError, match="'align' has not finished"):
        context_from_cache(tmp_path)
    _done(tmp_path, "align", {"manifest": "aligned.jsonl"})
    _done(tmp_path, "text_pretrain", {"hf": "start/hf"})
    # seed 0 done for both variants, seed 1 only for one: seed 1 is left out of models
    for step in ("train_interleaved", "train_no_interleaving", "train_interleaved_seed1"):
        _done(tmp_path, step, {"hf": step})
    _done(tmp_path, "mini_benchmarks", {"root": "mini", "label": "dev"})
    _done(tmp_path, "bench_units", {"file": "u.npz"})
    ctx = context_from_cache(tmp_path, {"toy": ["lr=1"]})
    assert ctx.start == {"hf": "start/hf"} and ctx.manifest == "aligned.jsonl" and ctx.seeds == [0]
    assert ctx.models == {"interleaved": [{"hf": "train_interleaved"}], "no_interleaving": [{"hf": "train_no_interleaving"}]}
    assert list(ctx.draws) == ["dev"] and ctx.units["dev"] == {"file": "u.npz"}
    assert ctx.evals == {} and ctx.comparison == {}  # no evaluation yet: a part needing them sees none
    for step in ("eval_interleaved", "eval_no_interleaving"):
        _done(tmp_path, step, {"dir": step})
    ctx = context_from_cache(tmp_path)
    assert ctx.evals == {"interleaved": {"dev": [{"dir": "eval_interleaved"}]},
                         "no_interleaving": {"dev": [{"dir": "eval_no_interleaving"}]}}
    monkeypatch.setitem(demo_parts.PARTS, "toy", f"{__name__}:toy_part")
    CALLS.clear()
    from spiritlm.cli import main

    assert main(["demo-parts", "--out", str(tmp_path), "--part", "toy", "--set", "toy.lr=3"]) == 0
    assert json.loads((tmp_path / "toy_step" / "STEP_DONE.json").read_text())["outputs"]["overrides"] == ["lr=3"]
    with pytest.raises(ConfigError, match="PART.key=value"):
        demo_cached.run_cached_parts(tmp_path, ["toy"], ["lr=3"])
    assert main(["demo-parts", "--out", str(tmp_path), "--part", "toy", "--set", "lr=3"]) == 1
