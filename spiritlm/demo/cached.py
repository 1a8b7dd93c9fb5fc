"""The demo's parts on a finished demo folder: a :class:`DemoContext` read back from the cached
steps' ``STEP_DONE.json`` (no step reruns), for ``spiritlm demo-parts``. Above both the main demo
(whose step names and config it reads) and the parts' registry."""

from __future__ import annotations

import json
from pathlib import Path

from spiritlm.config import ConfigError, load_config
from spiritlm.demo.main import MIXTURES, DemoConfig, eval_step_name, model_step_name
from spiritlm.demo.parts import PARTS, DemoContext, check_parts, run_parts
from spiritlm.pipeline import Pipeline


def context_from_cache(out_dir: str | Path, part_overrides: dict[str, list[str]] | None = None) -> DemoContext:
    """A :class:`DemoContext` read from the cached steps of a demo output folder (their
    ``STEP_DONE.json`` outputs), without running the main demo: a part can then run beside the
    main demo while it is still training or evaluating (every step it needs must be done; a part
    that needs one that is not gets a ConfigError naming it), or beside another part. Models and
    evaluations are those of the recorded training seeds whose steps are done."""
    r = Path(out_dir).absolute()
    if not (r / "config.resolved.yaml").is_file():
        raise ConfigError(f"{r / 'config.resolved.yaml'} not found: run `spiritlm demo --set out_dir={out_dir}` first")

    def done(step: str) -> bool:
        return (r / step / "STEP_DONE.json").is_file()

    def o(step: str) -> dict:
        if not done(step):
            raise ConfigError(f"{r / step / 'STEP_DONE.json'} not found: the demo step {step!r} has not finished "
                              f"in {r}; run (or let finish) `spiritlm demo --set out_dir={out_dir}` first")
        return json.loads((r / step / "STEP_DONE.json").read_text())["outputs"]

    cfg = load_config(DemoConfig, r / "config.resolved.yaml")
    seeds = list(cfg.train_seeds) or [cfg.seed]
    draws: dict[str, dict] = {}
    units: dict[str, dict] = {}
    if done("mini_benchmarks"):
        draws["dev"] = o("mini_benchmarks")
        if done("bench_units"):
            units["dev"] = o("bench_units")
    if done("mini_test"):
        tests = o("mini_test")["draws"]
        draws.update((d["label"], d) for d in tests)
        if done("bench_units_test"):
            units.update((d["label"], u) for d, u in zip(tests, o("bench_units_test")["draws"]))
    # only the seeds every variant has finished, so models[v][i] and evals[v][label][i] stay paired
    ready = [s for s in seeds if all(done(model_step_name(cfg, v, s)) for v in MIXTURES)]
    models = {v: [o(model_step_name(cfg, v, s)) for s in ready] for v in MIXTURES}
    evals: dict[str, dict[str, list[dict]]] = {}
    if ready and draws and all(done(eval_step_name(cfg, v, s, lab)) for v in MIXTURES for s in ready for lab in draws):
        evals = {v: {lab: [o(eval_step_name(cfg, v, s, lab)) for s in ready] for lab in draws} for v in MIXTURES}
    manifest = o("align")["manifest"] if cfg.align else o("corpus")["manifest"]
    return DemoContext(cfg=cfg, out=r, pipe=Pipeline(r, workers=cfg.side_by_side),
                       corpus=o("corpus"), text_tok=o("text_tokenizer"), speech_tok=o("speech_tokenizer"),
                       manifest=manifest, shards=o("shards"),
                       start=o("text_pretrain") if cfg.text_pretrain_steps > 0 else None,
                       seeds=ready, models=models, draws=draws, units=units, evals=evals,
                       comparison=o("compare") if done("compare") else {},
                       part_overrides=dict(part_overrides or {}))


def run_cached_parts(out_dir: str | Path, parts: list[str], overrides: list[str] = ()) -> None:
    """``spiritlm demo-parts --out runs/demo --part streaming [--set streaming.steps=200]``: named
    parts on a demo folder's cached steps, without running (or waiting for) the main demo.
    ``overrides`` are ``PART.key=value`` (as ``part_overrides.PART`` in the demo)."""
    check_parts(parts)
    po: dict[str, list[str]] = {}
    for item in overrides:
        part, dot, rest = item.partition(".")
        if not dot or part not in PARTS:
            raise ConfigError(f"--set {item!r}: write PART.key=value with PART one of {sorted(PARTS)}")
        po.setdefault(part, []).append(rest)
    run_parts(context_from_cache(out_dir, po), parts)
