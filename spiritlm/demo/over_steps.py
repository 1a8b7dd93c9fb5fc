"""Accuracy over training steps, from the checkpoints a run saved (the demo part ``over_steps``).

    spiritlm demo --out runs/demo --part over_steps
    spiritlm demo --out runs/demo --part ablations      # its models too (it calls over_steps last)

Every saved checkpoint (``<run_dir>/checkpoints/step_N``) of a unit model is turned into an HF
directory beside it (``checkpoint_to_hf``: the module weights DeepSpeed saved, which are what
the final export writes, plus the export's config and tokenizer) and scored on the *dev* draw
with a light subset of the demo's suite (``OverStepsConfig.eval_overrides``: sWUGGY S, sBLIMP S,
Topic-StoryCloze and StoryCloze T->S / S->T; the S settings of the story tasks cost most of an
evaluation and sit at chance at demo scale). Step 0 is the text start the continued models share;
the last step is read from the model's dev evaluation, which used the same suite and scoring.
A model trained with ``checkpoint.keep = 2`` (the demo's main models) keeps only its last two
checkpoints, so it has points at 0, 600 and 800 of 800; the ablation models keep every one.

Why from checkpoints rather than evaluation while training (``eval_every``): it needs no
retraining of the demo's finished models, reads the same dev-draw units file as every other
evaluation, and each point is a cached step of its own. A user's own run can log the same
accuracies live with ``eval_every`` + ``eval.suite`` (eval/during_training.toml).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spiritlm.config import ConfigError, load_config
from spiritlm.demo import main as demo

OVER_STEPS_VERSION = "over-steps-v1: checkpoint module weights -> HF, demo suite subset on the dev draw"
MODEL_STATES = "mp_rank_00_model_states.pt"
ROWS = ("swuggy/S", "sblimp/S", "topic_storycloze/T2S", "topic_storycloze/S2T", "storycloze/T2S", "storycloze/S2T")


@dataclass
class OverStepsConfig:
    """``--set 'part_overrides.over_steps=["seeds=[0]"]'`` (the ablations part reads the same keys
    under ``part_overrides.ablations`` with an ``over_steps.`` prefix)."""
    seeds: list[int] = field(default_factory=list)  # of the demo's main models; [] = all of ctx.seeds
    # on top of the demo's eval recipe and eval_overrides: the light subset scored at every step
    eval_overrides: list[str] = field(default_factory=lambda: [
        'zerospeech.modalities=["S"]', "zerospeech.submission=false",
        'topic_storycloze.settings=["T2S", "S2T"]', 'storycloze.settings=["T2S", "S2T"]',
        'stsp.manifest=""', 'fewshot.asr_manifest=""', 'speech_cls.manifest=""', "text_tasks=[]"])


def checkpoint_to_hf(ckpt_dir: str | Path, export_dir: str | Path, out_dir: str | Path) -> Path:
    """An HF directory for a DeepSpeed checkpoint of a run (ZeRO 0-2: one full copy of the module
    weights in ``mp_rank_00_model_states.pt``), with the config and tokenizer of the run's final
    export ``export_dir``. Every tensor's name and shape must match the export's."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    ckpt_dir, export_dir, out_dir = Path(ckpt_dir), Path(export_dir), Path(out_dir)
    states = ckpt_dir / MODEL_STATES
    if not states.is_file():
        raise FileNotFoundError(f"{states} not found: point at a step_N folder of <run_dir>/checkpoints")
    if not (export_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"{export_dir}/model.safetensors not found: the run's final export (hf/) is "
                                "needed for its config and tokenizer")
    module = torch.load(states, map_location="cpu", weights_only=True)["module"]
    with safe_open(export_dir / "model.safetensors", "pt") as f:
        want = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    got = {k: tuple(v.shape) for k, v in module.items()}
    if set(got) != set(want) or any(got[k] != want[k][0] for k in want):
        diff = sorted(set(got) ^ set(want)) or [k for k in want if got[k] != want[k][0]]
        raise ConfigError(f"{states} does not hold the export's tensors ({diff[:3]} differ): a ZeRO-3 checkpoint "
                          "is sharded (consolidate it with the zero_to_fp32.py script beside it), or the "
                          f"export {export_dir} belongs to another run")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for p in export_dir.iterdir():
        if p.is_file() and p.name != "model.safetensors":
            shutil.copy2(p, tmp / p.name)
    save_file({k: v.contiguous() for k, v in module.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def saved_steps(run_dir: str | Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (Path(run_dir) / "checkpoints").glob("step_*")
                  if (p / MODEL_STATES).is_file())


def accuracies(results_json: str | Path, rows=ROWS) -> dict[str, float]:
    res = json.loads(Path(results_json).read_text())["results"]
    out = {}
    for row in rows:
        task, _, setting = row.partition("/")
        r = res.get(task, {}).get(setting)
        if isinstance(r, dict) and r.get("accuracy") is not None:
            out[row] = float(r["accuracy"])
    return out


def _eval_checkpoint(cfg, dev: dict, units: dict, speech_tok: dict, eval_overrides: list[str], ckpt: str,
                     export: str, name: str, step_dir: Path) -> dict:
    """A ``Job`` function: the demo's eval config (``cfg``: DemoConfig) with ``eval_overrides`` on
    the dev draw ``dev`` and its units file, for checkpoint ``ckpt`` ("" = the HF dir ``export``)."""
    from spiritlm.eval.suite import run_suite

    hf = checkpoint_to_hf(ckpt, export, step_dir / "hf") if ckpt else Path(export)
    ecfg = demo.eval_config(cfg, dev, speech_tok, [f"model={hf}", f"name={name}", f"output_dir={step_dir}",
                                               f"units_cache={units['file']}"], tuple(eval_overrides))
    run_suite(ecfg)
    if ckpt:  # the weights are the checkpoint's; only the scores are kept
        shutil.rmtree(hf, ignore_errors=True)
    return {"dir": str(step_dir), "results": str(step_dir / "results.json")}


def curves(ctx, ocfg: OverStepsConfig, runs: dict[str, list[dict]], one_at_a_time: bool = True) -> dict:
    """``runs[model name]``: one dict per training seed with ``run_dir``, ``hf``, ``steps``,
    ``from_start`` (continued from ctx.start) and ``final_eval`` (its dev evaluation's dir).
    -> ``{model name: [{step: {row: accuracy}} per seed]}``; every point a cached step."""
    from spiritlm.pipeline import Job

    dev, units = ctx.draws["dev"], ctx.units["dev"]
    base = [OVER_STEPS_VERSION, demo.EVAL_VERSION, ocfg.eval_overrides, ctx.cfg.eval_overrides,
            demo.file_hash(demo.recipe(ctx.cfg.eval_recipe)), *demo.scoring_key(ctx.cfg), dev["root"], demo.file_hash(Path(dev["root"]) / "COMPLETE.json"),
            demo.file_hash(Path(ctx.speech_tok["dir"]) / "manifest.json"), demo.file_hash(Path(units["file"]))]
    common = (ctx.cfg, dev, units, ctx.speech_tok, list(ocfg.eval_overrides))
    jobs, where = [], []  # where[i] = (model name, seed index, step) of jobs[i]
    if ctx.start is not None and any(r["from_start"] for rs in runs.values() for r in rs):
        jobs.append(Job("over_steps_start", [*base, demo.file_hash(Path(ctx.start["hf"]) / "model.safetensors")],
                        _eval_checkpoint, (*common, "", ctx.start["hf"], "text start (step 0)")))
        where.append(("start", 0, 0))
    for name, rs in runs.items():
        for i, r in enumerate(rs):
            for step in saved_steps(r["run_dir"]):
                if step >= r["steps"]:  # the final step: the model's own dev evaluation
                    continue
                ckpt = Path(r["run_dir"]) / "checkpoints" / f"step_{step:08d}"
                jobs.append(Job(f"over_steps_{Path(r['run_dir']).parent.name}_{step:05d}",
                                [*base, demo.file_hash(ckpt / MODEL_STATES), demo.file_hash(Path(r["hf"]) / "config.json")],
                                _eval_checkpoint, (*common, str(ckpt), r["hf"], f"{name} step {step}")))
                where.append((name, i, step))
    outs = ctx.pipe.run_jobs(jobs) if not one_at_a_time else [ctx.pipe.run_jobs([j])[0] for j in jobs]
    start = next((accuracies(o["results"]) for (n, _, _), o in zip(where, outs) if n == "start"), None)
    table: dict[str, list[dict]] = {}
    for name, rs in runs.items():
        table[name] = []
        for i, r in enumerate(rs):
            pts = {0: start} if r["from_start"] and start is not None else {}
            pts.update({step: accuracies(o["results"]) for (n, j, step), o in zip(where, outs) if n == name and j == i})
            pts[r["steps"]] = accuracies(Path(r["final_eval"]) / "results.json")
            table[name].append(dict(sorted(pts.items())))
    return table


def markdown(table: dict[str, list[dict]], rows=ROWS) -> str:
    """One line per model and step: accuracy % per row, the mean over seeds (per seed in brackets)."""
    lines = ["| model | step | seeds | " + " | ".join(rows) + " |", "|---|---:|---:|" + "---:|" * len(rows)]
    for name, seeds in table.items():
        steps = sorted({s for pts in seeds for s in pts})
        for step in steps:
            have = [pts[step] for pts in seeds if step in pts]
            cells = []
            for row in rows:
                v = [100 * h[row] for h in have if row in h]
                cells.append("--" if not v else f"{sum(v) / len(v):.1f}" +
                             (f" ({', '.join(f'{x:.0f}' for x in v)})" if len(v) > 1 else ""))
            lines.append(f"| {name} | {step} | {len(have)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict[str, list[dict]], path: Path, rows=ROWS, title: str = "") -> Path:
    """A panel per row (task/setting): accuracy vs step, one colour per model; the mean over
    seeds as a line with markers, each seed as a thin line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = 3
    nrow = -(-len(rows) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 2.9 * nrow), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, row in zip(axes.flat, rows):
        for k, (name, seeds) in enumerate(table.items()):
            c = colors[k % len(colors)]
            for pts in seeds if len(seeds) > 1 else []:
                xy = [(s, 100 * p[row]) for s, p in pts.items() if row in p]
                if xy:
                    ax.plot(*zip(*xy), color=c, lw=0.6, alpha=0.5)
            steps = sorted({s for pts in seeds for s in pts})
            mean = [(s, 100 * sum(v) / len(v)) for s in steps
                    for v in [[pts[s][row] for pts in seeds if s in pts and row in pts[s]]] if v]
            if mean:
                ax.plot(*zip(*mean), color=c, marker="o", ms=3, label=f"{name} ({len(seeds)} seed{'s' * (len(seeds) > 1)})")
        ax.axhline(50, color="grey", ls="--", lw=0.8)
        ax.set_title(row.replace("2", "→") if "/T2" in row or "/S2" in row else row, fontsize=9)
        vals = [100 * p[row] for seeds in table.values() for pts in seeds for p in pts.values() if row in p]
        ax.set_ylim(min([30, *[v - 5 for v in vals]]), max([80, *[v + 5 for v in vals]]))
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("dev accuracy %", fontsize=8)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def main_runs(ctx, seeds: list[int]) -> dict[str, list[dict]]:
    """The demo's own unit models of ``seeds`` in the form ``curves`` reads."""
    runs = {}
    for variant, models in ctx.models.items():
        runs[variant] = []
        for s in seeds:
            i = ctx.seeds.index(s)
            steps = demo.train_config(ctx.cfg, variant, ctx.shards, ctx.text_tok, ctx.out, ctx.start, s).steps
            runs[variant].append({"run_dir": models[i]["run_dir"], "hf": models[i]["hf"], "steps": steps,
                                  "from_start": ctx.start is not None,
                                  "final_eval": ctx.evals[variant]["dev"][i]["dir"]})
    return runs


def report(ctx, ocfg: OverStepsConfig, runs: dict[str, list[dict]], step_name: str,
           one_at_a_time: bool = True) -> dict[str, Any]:
    """Score every saved step of ``runs``; write over_steps.md / .json / .png in a cached step."""
    table = curves(ctx, ocfg, runs, one_at_a_time)

    def write(d: Path) -> dict:
        dev_seed = ctx.draws["dev"]["seed"]
        md = (f"# Accuracy over training steps (dev draw, mini seed {dev_seed}: settings were chosen on it, "
              "so these curves show learning, not claims)\n\nStep 0: the text start; other steps: the saved "
              "checkpoints; the last step: the model's own dev evaluation. Mean over training seeds, each seed "
              "in brackets.\n\n" + markdown(table))
        (d / "over_steps.md").write_text(md)
        (d / "over_steps.json").write_text(json.dumps(table, indent=1))
        png = plot(table, d / "over_steps.png", title=f"accuracy over steps, dev draw (mini seed {dev_seed})")
        return {"markdown": str(d / "over_steps.md"), "json": str(d / "over_steps.json"), "png": str(png)}

    out = ctx.pipe.run(step_name, [OVER_STEPS_VERSION, table], write)
    print(Path(out["markdown"]).read_text())
    return out


def part_config(ctx, overrides: list[str]) -> OverStepsConfig:
    ocfg = load_config(OverStepsConfig, None, overrides)
    missing = [s for s in ocfg.seeds if s not in ctx.seeds]
    if missing:
        raise ConfigError(f"over_steps: seeds {missing} not trained in this demo (train_seeds {ctx.seeds})")
    return ocfg


def run(ctx) -> dict:
    """The demo part: the demo's two unit models (every seed) over their saved steps."""
    ocfg = part_config(ctx, ctx.overrides("over_steps"))
    return report(ctx, ocfg, main_runs(ctx, list(ocfg.seeds) or list(ctx.seeds)), "over_steps")
