"""Named parts of the demo: comparisons that reuse the main demo's cached steps.

``spiritlm demo --part continuous`` (or ``--set 'parts=[continuous]'``) first runs the main demo
(every step cached after one full run, so this costs seconds), then the part. A part receives a
:class:`DemoContext` with the main demo's step outputs (corpus, tokenizers, shards, the trained
unit models, the benchmark draws and their encoded units, the unit models' evaluations) and adds
its own steps through ``ctx.pipe.run`` / ``ctx.pipe.run_jobs``, so they are cached, resumable and
timed like the main steps; the part's own wall time is printed and written to
``<out_dir>/parts/<name>/TIME.json``.

A part is a function ``run(ctx) -> dict`` in its model family's module, named here by an import
string so that no part's heavy imports load unless it is asked for. A new comparison adds one
line to ``PARTS``: the main demo's code does not change.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from spiritlm.config import ConfigError

# name -> "module:function"; the function takes a DemoContext and returns a dict for the report
PARTS: dict[str, str] = {
    "ablations": "spiritlm.eval.ablations:run",
    "over_steps": "spiritlm.eval.over_steps:run",
    "full_report": "spiritlm.eval.full_report:run",
    "continuous": "spiritlm.models.continuous.demo_part:run",
    "streaming": "spiritlm.models.streaming.demo_part:run",
    "hybrid": "spiritlm.models.hybrid.demo_part:run",
}


@dataclass
class DemoContext:
    """What the main demo built, for a part to reuse. ``models[variant]`` and
    ``evals[variant][draw label]`` are lists over ``seeds`` (the training seeds), in order;
    ``draws["dev"]`` is the draw settings were chosen on, the other labels are test draws."""

    cfg: Any  # spiritlm.demo.DemoConfig
    out: Path
    pipe: Any  # spiritlm.pipeline.Pipeline
    corpus: dict
    text_tok: dict
    speech_tok: dict
    manifest: str
    shards: dict
    start: dict | None  # the text-pretrained start model (None when text_pretrain_steps = 0)
    seeds: list[int]
    models: dict[str, list[dict]]
    draws: dict[str, dict]
    units: dict[str, dict]
    evals: dict[str, dict[str, list[dict]]]
    comparison: dict
    part_overrides: dict[str, list[str]] = field(default_factory=dict)

    def overrides(self, part: str) -> list[str]:
        """``--set key=value`` overrides a user gave this part (``part_overrides.<part>``)."""
        return list(self.part_overrides.get(part, []))

    def test_labels(self) -> list[str]:
        return [label for label in self.draws if label != "dev"]

    @staticmethod
    def file_hash(path: str | Path) -> str:
        from spiritlm.demo import _file_hash

        return _file_hash(Path(path))

    @staticmethod
    def recipe(path: str) -> Path:
        """A recipe path relative to the working directory or the repository root."""
        from spiritlm.demo import _recipe

        return _recipe(path)


def part_function(name: str) -> Callable[[DemoContext], dict]:
    if name not in PARTS:
        raise ConfigError(f"demo part {name!r} is not known: use one of {sorted(PARTS) or '(none registered)'}")
    module, _, fn = PARTS[name].partition(":")
    return getattr(importlib.import_module(module), fn)


def check_parts(names: list[str]) -> None:
    """Fail before the main demo runs, not after 20 minutes, on a misspelt part."""
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise ConfigError(f"demo part(s) {unknown} not known: use one of {sorted(PARTS) or '(none registered)'}")
    if len(set(names)) != len(names):
        raise ConfigError(f"parts {names} names a part twice; give each once")


def run_parts(ctx: DemoContext, names: list[str]) -> dict[str, dict]:
    results = {}
    for name in names:
        fn = part_function(name)
        print(f"\n=== demo part: {name} ===", flush=True)
        t0 = time.perf_counter()
        out = fn(ctx) or {}
        seconds = time.perf_counter() - t0
        part_dir = ctx.out / "parts" / name
        part_dir.mkdir(parents=True, exist_ok=True)
        (part_dir / "TIME.json").write_text(json.dumps({"part": name, "seconds": seconds}, indent=1))
        print(f"=== demo part {name}: {seconds / 60:.1f} min ===", flush=True)
        results[name] = {"seconds": seconds, **out}
    return results


def context_from_cache(out_dir: str | Path, part_overrides: dict[str, list[str]] | None = None) -> DemoContext:
    """A :class:`DemoContext` read from the cached steps of a demo output folder (their
    ``STEP_DONE.json`` outputs), without running the main demo: a part can then run beside the
    main demo while it is still training or evaluating (every step it needs must be done; a part
    that needs one that is not gets a ConfigError naming it), or beside another part. Models and
    evaluations are those of the recorded training seeds whose steps are done."""
    from spiritlm.config import load_config
    from spiritlm.demo import MIXTURES, DemoConfig, eval_step_name, model_step_name
    from spiritlm.pipeline import Pipeline

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
