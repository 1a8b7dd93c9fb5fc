"""The table of ``spiritlm demo --part continuous``: each continuous-input model beside the
interleaved unit model, on the same items, with paired CIs (see ``demo_part`` for what is shared).

Accuracies pool the test draws (``spiritlm.eval.protocol.pool_draws``); the unit model's items
are averaged over its training seeds, and every difference is paired per item
(``spiritlm.eval.report.paired_compare``: bootstrap CI over items, sign-flip or McNemar p). WER
differences are paired per utterance (``compare.paired_wer``). Written to
``<out>/continuous_compare/comparison.{md,json}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from spiritlm.demo.files import recipe
from spiritlm.models.continuous.compare import acc_with_ci, paired_wer, wer_with_ci

UNIT = "interleaved"
SETTINGS = (("topic_storycloze", "S2T"), ("storycloze", "S2T"), ("topic_storycloze", "T2S"))


def _scores(runs: Sequence[Sequence[dict]], task: str, setting: str) -> np.ndarray:
    """Per-item scores of one (task, setting), each item averaged over the runs that all scored it."""
    from spiritlm.eval.report import item_key

    maps = [{item_key(it): it["score"] for it in r if it["task"] == task and it["setting"] == setting
             and "score" in it} for r in runs]
    shared = sorted(set.intersection(*(set(m) for m in maps))) if maps else []
    return np.array([np.mean([m[k] for m in maps]) for k in shared], dtype=np.float64)


def _asr(items: Sequence[dict]) -> list[dict]:
    return [it for it in items if it["task"] == "asr" and "hyp" in it]


def model_params(hf: str, run_dirs: Sequence[str] = ()) -> dict:
    """Trainable / total parameters: a continuous run's ``param_counts.json`` (every part, the
    frozen encoder included), or a unit model's weights (all of them train)."""
    for r in reversed(list(run_dirs)):
        pc = Path(r) / "param_counts.json"
        if pc.is_file():
            counts = json.loads(pc.read_text())
            return {"trainable": sum(v["trainable"] for v in counts.values()),
                    "total": sum(v["total"] for v in counts.values()), "parts": counts}
    from safetensors import safe_open

    with safe_open(str(Path(hf) / "model.safetensors"), "pt") as f:
        n = int(sum(np.prod(f.get_slice(k).get_shape()) for k in f.keys()))
    return {"trainable": n, "total": n}


def tokens_per_s(run_dirs: Sequence[str]) -> float | None:
    rates = []
    for r in run_dirs:
        m = Path(r) / "metrics.jsonl"
        if m.is_file():
            rates += [x["tokens_per_s"] for x in map(json.loads, filter(str.strip, m.read_text().splitlines()))
                      if x.get("tokens_per_s")]
    return float(np.mean(rates)) if rates else None


def model_row(items: Mapping[str, Sequence[Sequence[dict]]], unit: Mapping[str, Sequence[Sequence[dict]]],
              tests: Sequence[str], heldout: Sequence[dict] | None = None) -> dict:
    """One model's numbers against the unit model. ``items[label]`` / ``unit[label]``: one item
    list per training seed of that draw. Accuracies pool ``tests`` (the dev draw when empty)."""
    from spiritlm.eval.protocol import pool_draws
    from spiritlm.eval.report import paired_compare

    labels = list(tests) or ["dev"]
    mine = pool_draws({t: items[t] for t in labels})
    theirs = pool_draws({t: unit[t] for t in labels})
    paired = paired_compare(mine, theirs)
    row: dict = {"draws": labels}
    for task, setting in SETTINGS:
        s = _scores(mine, task, setting)
        if s.size:
            row[f"{task}/{setting}"] = acc_with_ci(s)
            if f"{task}/{setting}" in paired:
                row[f"{task}/{setting}"]["vs_unit"] = paired[f"{task}/{setting}"]
    if "dev" in items and "dev" in unit:
        mine_asr = [_asr(r) for r in items["dev"]]
        if all(mine_asr):
            row["asr_dev"] = paired_wer(mine_asr, [_asr(r) for r in unit["dev"]])
    if heldout:
        row["asr_heldout"] = wer_with_ci(heldout)
    return row


def unit_row(unit: Mapping[str, Sequence[Sequence[dict]]], tests: Sequence[str]) -> dict:
    from spiritlm.eval.protocol import pool_draws

    labels = list(tests) or ["dev"]
    pooled = pool_draws({t: unit[t] for t in labels})
    row: dict = {"draws": labels}
    for task, setting in SETTINGS:
        s = _scores(pooled, task, setting)
        if s.size:
            row[f"{task}/{setting}"] = acc_with_ci(s)
    if "dev" in unit and all(_asr(r) for r in unit["dev"]):
        asr = [_asr(r) for r in unit["dev"]]
        row["asr_dev"] = {k.replace("_a", ""): v for k, v in paired_wer(asr, asr).items()
                          if k in ("n", "words", "wer_a", "ci95_a")}
    return row


def _pct(x: float) -> str:
    return "--" if x is None or x != x else f"{100 * x:.1f}"


def _acc(r: Mapping | None) -> str:
    return "--" if not r else f"{_pct(r['accuracy'])} [{_pct(r['ci95'][0])}, {_pct(r['ci95'][1])}]"


def _diff(r: Mapping | None) -> str:
    if not r:
        return "--"
    return (f"{100 * r['diff']:+.1f} [{100 * r['ci95'][0]:+.1f}, {100 * r['ci95'][1]:+.1f}], "
            f"p {r['p']:.2g}")


def _wer(r: Mapping | None, key: str = "wer", ci: str = "ci95") -> str:
    return "--" if not r or r.get(key) is None else f"{_pct(r[key])} [{_pct(r[ci][0])}, {_pct(r[ci][1])}]"


def markdown(rows: Mapping[str, dict], protocol: str) -> str:
    head = ("| model | what trains | trainable / total params | steps | train min | tokens/s | "
            "ASR WER % (dev draw) | WER − unit | ASR WER % (held-out corpus) | Topic-StoryCloze S→T % | "
            "S→T − unit | StoryCloze S→T % | S→T − unit | Topic-StoryCloze T→S % |")
    lines = [protocol, "", head, "|" + "---|" * 14]
    for name, r in rows.items():
        p = r.get("params", {})
        params = f"{p['trainable']:,} / {p['total']:,}" if p else "--"
        dev = r.get("asr_dev")
        wer_dev = _wer(dev, "wer_a", "ci95_a") if dev and "wer_a" in dev else _wer(dev)
        wer_diff = (f"{100 * dev['diff']:+.1f} [{100 * dev['ci95'][0]:+.1f}, {100 * dev['ci95'][1]:+.1f}]"
                    if dev and "diff" in dev else "--")
        tsc, sc = r.get("topic_storycloze/S2T"), r.get("storycloze/S2T")
        tps, secs = r.get("tokens_per_s"), r.get("train_s")
        lines.append(
            f"| {name} | {r.get('trains', '--')} | {params} | {r.get('steps', '--')} | "
            f"{'--' if secs is None else f'{secs / 60:.1f}'} | {'--' if tps is None else f'{tps:,.0f}'} | "
            f"{wer_dev} | {wer_diff} | {_wer(r.get('asr_heldout'))} | {_acc(tsc)} | "
            f"{_diff((tsc or {}).get('vs_unit'))} | {_acc(sc)} | {_diff((sc or {}).get('vs_unit'))} | "
            f"{_acc(r.get('topic_storycloze/T2S'))} |")
    return "\n".join(lines) + "\n"


def per_draw_markdown(per_draw: Mapping[str, Mapping[str, float]], names: Sequence[str]) -> str:
    lines = ["| draw | n | " + " | ".join(names) + " |", "|---|---:|" + "---|" * len(names)]
    for label, accs in per_draw.items():
        n = accs.get("n", 0)
        lines.append(f"| {label} | {n} | " + " | ".join(_pct(accs.get(k)) for k in names) + " |")
    return "\n".join(lines) + "\n"


TRAINS = {"speechllm": "linear projector ×3 + LoRA q/k/v/o (prepend)",
          "speechllm_frozen": "linear projector ×3, LM frozen (prepend)",
          "tinyaudio_stage1": "MLP projector ×4, LM frozen (<audio>)",
          "tinyaudio": "MLP projector ×4, then + LoRA q/k/v/o (<audio>)"}


def compare_step(ctx, models: Mapping[str, dict], eval_dirs: Mapping[str, Mapping[str, str]],
                 heldout_files: Mapping[str, str], unit_dirs: Mapping[str, Sequence[str]], step_dir: Path) -> dict:
    from spiritlm.eval.report import read_items

    tests = ctx.test_labels()
    unit = {label: [read_items(Path(d)) for d in dirs] for label, dirs in unit_dirs.items()}
    unit_models = ctx.models[UNIT]
    urow = unit_row(unit, tests)
    urow.update(trains="everything (interleaved units + text)", params=model_params(unit_models[0]["hf"]),
                steps=unit_steps(ctx.cfg), train_s=float(np.mean([_step_seconds(Path(m["run_dir"]).parent)
                                                                           for m in unit_models])),
                tokens_per_s=tokens_per_s([m["run_dir"] for m in unit_models]))
    seeds = f"{len(ctx.seeds)} seed{'s' * (len(ctx.seeds) > 1)}"
    rows = {f"{UNIT} units ({seeds})": urow}
    per_draw: dict[str, dict] = {label: {} for label in ctx.draws}
    for label in ctx.draws:
        s = _scores(unit[label], "topic_storycloze", "S2T")
        per_draw[label].update(n=int(s.size), **{f"{UNIT} units": float(s.mean()) if s.size else None})
    for name, m in models.items():
        items = {label: [read_items(Path(d))] for label, d in eval_dirs[name].items()}
        held = json.loads(Path(heldout_files[name]).read_text())["items"] if name in heldout_files else None
        r = model_row(items, unit, tests, held)
        r.update(trains=TRAINS.get(name, m.get("style", "")), params=model_params(m["hf"], m["run_dirs"]),
                 steps=m["steps"], train_s=m.get("train_s"), tokens_per_s=tokens_per_s(m["run_dirs"]))
        rows[name] = r
        for label in ctx.draws:
            s = _scores(items[label], "topic_storycloze", "S2T")
            per_draw[label][name] = float(s.mean()) if s.size else None
    n_items = (rows[next(iter(rows))].get("topic_storycloze/S2T") or {}).get("n", 0)
    protocol = (f"S→T and T→S: the {len(tests)} test draws pooled ({', '.join(tests)}; {n_items} Topic-StoryCloze "
                f"items), the unit model's items averaged over its {seeds}; the continuous models are one "
                "training seed each. Differences are paired per item (bootstrap 95% CI over items; sign-flip "
                "p). ASR WER (dev draw): the dev draw's few-shot ASR items (the test draws hold none) -- the unit "
                "model transcribes them 10-shot in context, a continuous model zero-shot (it was trained to "
                "transcribe); WER − unit is paired per utterance (bootstrap CI). Held-out corpus WER: the "
                "corpus' held-out stories, continuous models only (10-shot unit prompts of them would exceed "
                "the unit model's 1024 positions). T→S needs a model that writes speech: continuous models "
                "have none." if tests else
                "NO TEST DRAW: every number below is from the dev draw, on which the demo's settings were "
                "chosen; read no claim from it.")
    md = markdown(rows, protocol)
    names = [f"{UNIT} units", *models]
    md += ("\n## Topic-StoryCloze S→T per draw (%)\n\n" + per_draw_markdown(per_draw, names)
           + "\n(dev: the draw the demo's settings were chosen on; no claims.)\n")
    out_md, out_json = step_dir / "comparison.md", step_dir / "comparison.json"
    out_md.write_text(md)
    out_json.write_text(json.dumps({"rows": rows, "per_draw": per_draw, "tests": tests}, indent=1, default=float))
    return {"markdown": str(out_md), "json": str(out_json)}


def unit_steps(demo_cfg) -> int:
    """The unit models' step count: the last ``steps=`` of the demo's train overrides, else the recipe's."""
    steps = [o.split("=", 1)[1] for o in demo_cfg.train_overrides if o.startswith("steps=")]
    if steps:
        return int(steps[-1])
    from spiritlm.config import load_config
    from spiritlm.train import TrainConfig

    return load_config(TrainConfig, recipe(demo_cfg.train_recipe)).steps


def _step_seconds(step_dir: Path) -> float:
    done = step_dir / "STEP_DONE.json"
    return float(json.loads(done.read_text()).get("seconds", 0.0)) if done.is_file() else float("nan")
