"""Named parts of the demo: comparisons that reuse the main demo's cached steps.

``spiritlm demo --part continuous`` (or ``--set 'parts=[continuous]'``) first runs the main demo
(every step cached after one full run, so this costs seconds), then the part. A part receives a
:class:`DemoContext` with the main demo's step outputs (corpus, tokenizers, shards, the trained
unit models, the benchmark draws and their encoded units, the unit models' evaluations) and adds
its own steps through ``ctx.pipe.run`` / ``ctx.pipe.run_jobs``, so they are cached, resumable and
timed like the main steps; the part's own wall time is printed and written to
``<out_dir>/parts/<name>/TIME.json``.

A part is a function ``run(ctx) -> dict`` in a module of ``spiritlm/demo/``, named here by an import
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
from spiritlm.demo.files import file_hash, recipe

# name -> "module:function"; the function takes a DemoContext and returns a dict for the report
PARTS: dict[str, str] = {
    "ablations": "spiritlm.demo.ablations:run",
    "over_steps": "spiritlm.demo.over_steps:run",
    "full_report": "spiritlm.demo.full_report:run",
    "continuous": "spiritlm.demo.continuous:run",
    "streaming": "spiritlm.demo.streaming:run",
    "hybrid": "spiritlm.demo.hybrid:run",
    "backbone": "spiritlm.demo.backbone:run",
    "units": "spiritlm.demo.units:run",
    "synthetic": "spiritlm.demo.synthetic:run",
}


@dataclass
class DemoContext:
    """What the main demo built, for a part to reuse. ``models[variant]`` and
    ``evals[variant][draw label]`` are lists over ``seeds`` (the training seeds), in order;
    ``draws["dev"]`` is the draw settings were chosen on, the other labels are test draws."""
    cfg: Any  # spiritlm.demo.main.DemoConfig
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

    def part_seeds(self, part: str, seeds, what: str) -> list[int]:
        """A part's training seeds: those it was given, else the demo's first; each must be one the
        demo trained (its ``what``, e.g. "interleaved model", is compared with the part's)."""
        seeds = list(seeds) or self.seeds[:1]
        missing = [s for s in seeds if s not in self.seeds]
        if missing:
            raise ConfigError(f"{part}: seeds {missing} have no {what} in this demo (its train_seeds are "
                              f"{self.seeds}); use some of those, or add them with --set 'train_seeds=[...]'")
        return seeds

    # the demo's own definitions (spiritlm.demo.files), at hand for a part
    file_hash = staticmethod(file_hash)
    recipe = staticmethod(recipe)


def check_variants(part: str, variants, allowed) -> None:
    """A part's ``variants`` setting: some of ``allowed``, at least one."""
    bad = [v for v in variants if v not in allowed]
    if bad or not variants:
        raise ConfigError(f"{part}: variants {list(variants)} -- use some of {list(allowed)}")


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
