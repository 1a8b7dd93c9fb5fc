"""The paper's other ablations (its Table 6 family) at demo scale, as the demo part ``ablations``.

    spiritlm demo --out runs/demo --part ablations
    spiritlm demo --out runs/demo --part ablations --set 'part_overrides.ablations=["seeds=[0, 1, 2]"]'

Beside the demo's own ablation (no interleaving), two models that differ from the demo's
interleaved model in one thing each, trained on the demo's cached steps with its steps, batch,
model and mixture:

* ``pairs``: the aligned third of the mixture read as whole-record ASR/TTS pairs
  (``[Speech] units [Text] transcript`` or the reverse, ``interleave.mode = "pairs"``) instead of
  word-level interleaving; shards built by the data stage (``data_prep/demo_pairs.toml``) from the
  same aligned records, units and text.
* ``random_init``: random weights instead of the demo's text-pretrained start, at the same LR
  (the demo's ``continued_lr``) -- only the initialisation differs.

Each is evaluated with the demo's suite on the dev draw and on every test draw; the table pools
the test draws (claims) and shows the dev draw apart (no claims), with paired CIs against the
interleaved model of the same training seeds (``spiritlm.eval.report.paired_compare``). Every
training and evaluation is a cached, timed pipeline step. Trainings run one after another by
default (``one_at_a_time``): the part is meant to run beside other work on a shared machine.
Checkpoints are all kept (``checkpoint.keep = 0``) so the ``over_steps`` part can score each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spiritlm.config import ConfigError, load_config
from spiritlm.demo import main as demo
from spiritlm.demo.over_steps import OverStepsConfig
from spiritlm.demo.parts import check_variants

ABLATIONS = ("pairs", "random_init")
PAIRS_RECIPE = "data_prep/demo_pairs.toml"
ABLATIONS_FORMAT = "ablations-v1: test draws pooled x seeds against the interleaved model; dev apart"
# the rows of the summary table: the paper's speech and cross-modal settings
SUMMARY_ROWS = ("swuggy/S", "sblimp/S", "topic_storycloze/S", "topic_storycloze/T2S", "topic_storycloze/S2T",
                "storycloze/S", "storycloze/T2S", "storycloze/S2T", "swuggy/T", "topic_storycloze/T")


@dataclass
class AblationsConfig:
    """``--set 'part_overrides.ablations=["seeds=[0, 1]", ...]'``."""
    variants: list[str] = field(default_factory=lambda: list(ABLATIONS))
    # training seeds of the ablation models; [] = the demo's first seed. Each is compared with the
    # demo's interleaved (and no-interleaving) model of the same seed.
    seeds: list[int] = field(default_factory=list)
    one_at_a_time: bool = True  # trainings and evaluations one after another (False: side by side)
    keep_checkpoints: bool = True  # keep every saved step (checkpoint.keep = 0) for the curves below
    # last: accuracy over steps of these models and of the demo's own (spiritlm.demo.over_steps)
    curves: bool = True
    over_steps: OverStepsConfig = field(default_factory=OverStepsConfig)


def part_config(ctx) -> AblationsConfig:
    acfg = load_config(AblationsConfig, None, ctx.overrides("ablations"))
    check_variants("ablations", acfg.variants, ABLATIONS)
    seeds = ctx.part_seeds("ablations", acfg.seeds, "interleaved model")
    if "random_init" in acfg.variants and ctx.start is None:
        raise ConfigError("ablations: random_init needs the demo's text start (text_pretrain_steps > 0): with "
                          "text_pretrain_steps = 0 the demo's models already start from random weights")
    return replace(acfg, seeds=seeds)


def _suffix(ctx, seed: int) -> str:
    return "" if seed == ctx.cfg.seed else f"_seed{seed}"


def pair_shards(ctx) -> dict:
    """The demo's shard step with the pairs recipe: the same manifest, tokenizers and seed."""
    # one worker: the part runs in one CPU slot beside other work (workers do not change the bytes)
    cfg = replace(ctx.cfg, prepare_recipe=PAIRS_RECIPE, prepare_overrides=[*ctx.cfg.prepare_overrides, "workers=1"])
    deps = [cfg.seed, ctx.manifest, ctx.file_hash(ctx.manifest), cfg.prepare_overrides,
            ctx.file_hash(ctx.recipe(PAIRS_RECIPE)), ctx.text_tok,
            ctx.file_hash(Path(ctx.text_tok["dir"]) / "tokenizer.model"),
            ctx.file_hash(Path(ctx.speech_tok["dir"]) / "manifest.json")]
    return ctx.pipe.run("shards_pairs", deps, lambda d: demo.shards_step(cfg, ctx.manifest, ctx.corpus, ctx.text_tok,
                                                                     ctx.speech_tok, d))


def train_config(ctx, variant: str, seed: int, shards: dict, step_dir: Path, keep_checkpoints: bool = True):
    """The interleaved model's resolved config (the demo's own builder) with the one change the
    ablation makes: pair shards, or no start checkpoint."""
    tcfg = demo.train_config(ctx.cfg, "interleaved", shards, ctx.text_tok, step_dir, ctx.start, seed)
    if variant == "random_init":
        tcfg.model.checkpoint = ""  # the same tiny model (model.tiny) from random weights, same LR
    if keep_checkpoints:
        tcfg.checkpoint.keep = 0
    return tcfg


def _run(ctx, jobs: list, one_at_a_time: bool) -> list[dict]:
    if not one_at_a_time:
        return ctx.pipe.run_jobs(jobs)
    return [ctx.pipe.run_jobs([j])[0] for j in jobs]


def train_ablations(ctx, acfg: AblationsConfig) -> dict[str, list[dict]]:
    """``{variant: [model per seed]}`` (cached after the first run)."""
    shards = {"pairs": pair_shards(ctx)} if "pairs" in acfg.variants else {}
    jobs = []
    for v in acfg.variants:
        for s in acfg.seeds:
            name = f"ablation_{v}{_suffix(ctx, s)}"
            tcfg = train_config(ctx, v, s, shards.get(v, ctx.shards), ctx.out / name, acfg.keep_checkpoints)
            start = None if v == "random_init" else ctx.start
            jobs.append((v, demo.training_job(name, tcfg, demo.train_key(tcfg, shards.get(v, ctx.shards), start))))
    models: dict[str, list[dict]] = {v: [] for v in acfg.variants}
    for (v, _), m in zip(jobs, _run(ctx, [j for _, j in jobs], acfg.one_at_a_time)):
        models[v].append(m)
    return models


def evaluate_ablations(ctx, acfg, models: dict[str, list[dict]], prefix: str = "eval_ablation_") -> dict[str, dict[str, list]]:
    """``{variant: {draw label: [evaluation per seed]}}``: the demo's own evaluation step (its
    suite, its units files, its test-draw overrides) on every draw. ``acfg``: any part config
    with ``seeds`` and ``one_at_a_time``; steps are named ``<prefix><variant>[_seedN][_testN]``."""
    from spiritlm.pipeline import Job

    cfg, jobs = ctx.cfg, []
    for v, mdls in models.items():
        for s, model in zip(acfg.seeds, mdls):
            for label, draw in ctx.draws.items():
                extra = () if label == "dev" else demo.TEST_EVAL_OVERRIDES
                units = ctx.units[label]
                jobs.append(((v, label), Job(
                    f"{prefix}{v}{_suffix(ctx, s)}{'' if label == 'dev' else '_' + label}",
                    demo.eval_key(cfg, model, draw, extra, ctx.speech_tok, units),
                    demo.eval_step, (cfg, v, model, draw, ctx.speech_tok, units, extra))))
    evals: dict[str, dict[str, list]] = {v: {label: [] for label in ctx.draws} for v in models}
    for ((v, label), _), ev in zip(jobs, _run(ctx, [j for _, j in jobs], acfg.one_at_a_time)):
        evals[v][label].append(ev)
    return evals


def _seed_evals(ctx, variant: str, seeds: list[int]) -> dict[str, list]:
    """The demo's evaluations of ``variant`` for ``seeds`` only (``ctx.evals`` lists every seed)."""
    idx = [ctx.seeds.index(s) for s in seeds]
    return {label: [es[i] for i in idx] for label, es in ctx.evals[variant].items()}


def compare(evals: dict[str, dict[str, list]], reference: str, labels: list[str]) -> dict[str, dict]:
    """``{other model: paired_compare(reference, other)}`` pooled over ``labels`` (and seeds)."""
    from spiritlm.eval.protocol import pool_draws
    from spiritlm.eval.report import paired_compare, read_items

    items = {m: pool_draws({t: [read_items(Path(e["dir"])) for e in evals[m][t]] for t in labels}) for m in evals}
    return {m: paired_compare(items[reference], items[m]) for m in evals if m != reference}


def pooled_labels(draws: dict) -> tuple[list[str], list[str], str]:
    """(the test draws' labels, the labels a part pools -- the test draws, else "dev" --, and the
    sentence that says which draws were pooled, or that there is no test draw to claim from)."""
    tests = [label for label in draws if label != "dev"]
    where = (", ".join(f"{t} (mini seed {draws[t]['seed']})" for t in tests) if tests
             else "NO TEST DRAW (test_draws = 0): the dev draw is all there is; read no claim from it")
    return tests, tests or ["dev"], where


def summary_markdown(cmps: dict[str, dict], reference: str, rows: tuple = SUMMARY_ROWS) -> str:
    """One row per task/setting: the reference's accuracy, then each other model's accuracy with
    its difference from the reference (95% CI over items) and the paired p."""
    others = list(cmps)
    head = f"| task/setting | n | {reference} | " + " | ".join(f"{m} (diff, 95% CI, p)" for m in others) + " |"
    lines = [head, "|---|---:|---:|" + "---|" * len(others)]
    for key in rows:
        cells, ref, n = [], None, 0
        for m in others:
            r = cmps[m].get(key)
            if r is None:
                cells.append("--")
                continue
            ref, n = r["acc_a"], max(n, r["n"])
            neg = lambda x: 0.0 - 100 * x + 0.0  # noqa: E731  (other minus reference; no "-0.0")
            cells.append(f"{100 * r['acc_b']:.1f} ({neg(r['diff']):+.1f}; {neg(r['ci95'][1]):+.1f}, "
                         f"{neg(r['ci95'][0]):+.1f}; p = {r['p']:.2g})")
        if ref is not None:
            lines.append(f"| {key} | {n} | {100 * ref:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _compare_step(evals: dict, draws: dict, seeds: list[int], step_dir: Path) -> dict[str, Any]:
    from spiritlm.eval.report import comparison_markdown, plot_comparison, transfer_check

    tests = [label for label in draws if label != "dev"]
    ref = "interleaved"
    pooled = compare(evals, ref, tests) if tests else {}
    dev = compare(evals, ref, ["dev"])
    seeds_txt = ", ".join(map(str, seeds))
    text = [f"# Ablations at demo scale (paper Table 6 family)\n",
            f"Every model: the demo's model, steps, batch and mixture; training seed(s) {seeds_txt}. "
            "Differences are the ablation minus the interleaved model on the same items (a negative "
            "difference: the ablation is worse); paired p: McNemar's exact test on 0/1 items, sign-flip where "
            "items are tied or averaged over seeds.\n"]
    if tests:
        which = ", ".join(f"{t} (mini seed {draws[t]['seed']})" for t in tests)
        text += [f"## Test draws pooled ({which})", "",
                 summary_markdown(pooled, ref)]
    else:
        text += ["## NO TEST DRAW (test_draws = 0): the dev draw below is all there is; read no claim from it", ""]
    text += [f"## Dev draw (mini seed {draws['dev']['seed']}; the demo's settings were chosen on it: no claims)", "",
             summary_markdown(dev, ref)]
    pngs = {}
    for m, cmp in (pooled or dev).items():
        text += [f"## {ref} vs {m} ({'test draws pooled' if tests else 'dev draw'})", "",
                 comparison_markdown(cmp, ref, m), transfer_check(cmp, ref, m)]
        pngs[m] = str(plot_comparison(cmp, step_dir / f"{ref}_vs_{m}.png", ref, m))
    md = "\n".join(text)
    (step_dir / "ablations.md").write_text(md)
    (step_dir / "ablations.json").write_text(json.dumps(
        {"seeds": seeds, "test_draws": {t: draws[t]["seed"] for t in tests}, "pooled": pooled, "dev": dev},
        indent=1, default=float))
    return {"markdown": str(step_dir / "ablations.md"), "json": str(step_dir / "ablations.json"), "png": pngs}


def run(ctx) -> dict:
    """The demo part: train, evaluate, compare (every step cached)."""
    acfg = part_config(ctx)
    models = train_ablations(ctx, acfg)
    evals = {"interleaved": _seed_evals(ctx, "interleaved", acfg.seeds),
             "no_interleaving": _seed_evals(ctx, "no_interleaving", acfg.seeds),
             **evaluate_ablations(ctx, acfg, models)}
    deps = [ABLATIONS_FORMAT, acfg.seeds, {k: d["seed"] for k, d in ctx.draws.items()},
            *(ctx.file_hash(Path(e["dir"]) / "items.jsonl") for ev in evals.values() for es in ev.values()
              for e in es)]
    out = ctx.pipe.run("ablations_compare", deps, lambda d: _compare_step(evals, ctx.draws, acfg.seeds, d))
    print(Path(out["markdown"]).read_text())
    result = {"models": models, **out}
    if acfg.curves:
        result["over_steps"] = ablation_curves(ctx, acfg, models, evals)
    return result


def ablation_curves(ctx, acfg: AblationsConfig, models: dict[str, list[dict]], evals: dict) -> dict:
    """Accuracy over saved steps of the demo's models (``over_steps.seeds``, default all) and of
    the ablation models, in one table and chart."""
    from spiritlm.demo import over_steps

    ocfg = acfg.over_steps
    missing = [s for s in ocfg.seeds if s not in ctx.seeds]
    if missing:
        raise ConfigError(f"ablations: over_steps.seeds {missing} not trained in this demo (train_seeds {ctx.seeds})")
    runs = over_steps.main_runs(ctx, list(ocfg.seeds) or list(ctx.seeds))
    for v, mdls in models.items():
        runs[v] = [{"run_dir": m["run_dir"], "hf": m["hf"], "from_start": v != "random_init",
                    "steps": _steps(ctx, v, s),
                    "final_eval": evals[v]["dev"][i]["dir"]}
                   for i, (s, m) in enumerate(zip(acfg.seeds, mdls))]
    return over_steps.report(ctx, ocfg, runs, "ablations_over_steps", acfg.one_at_a_time)


def _steps(ctx, variant: str, seed: int) -> int:
    return train_config(ctx, variant, seed, ctx.shards, ctx.out).steps
