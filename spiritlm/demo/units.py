"""Units that carry words? The demo part ``units`` (issue 35).

    spiritlm demo --out runs/demo --part units
    spiritlm demo --out runs/demo --part units --set 'part_overrides.units=["seeds=[0, 1, 2]"]'

The demo's speech-only rows sit at chance on the test draws, and the cause is upstream of the LM:
its tiny HuBERT's units keep about as much phonetic information as k-means on MFCCs. This part
rebuilds the demo's models on **semantic units** -- k-means on a layer of a conformer trained
here with character CTC on the corpus' transcripts (``tokenizers/semantic_demo.toml``) -- with
everything else the demo's: the corpus and its aligned manifest, the text tokenizer and the
text-only start, the mixture of each variant, steps, batch, model and seeds; the benchmark audio
is encoded once with the semantic tokenizer and every model is evaluated on the dev draw and each
test draw.

Read from the test draws pooled x training seeds (the dev draw shown apart): each variant on
semantic vs HuBERT units (does the unit family move a row?), interleaving within the semantic
models (does the cross-modal gain hold?), and whether the speech-only rows (sWUGGY S, sBLIMP S,
(Topic-)StoryCloze S) leave chance. The unit-quality report of both families (PNMI, ABX,
bitrate, word distance; MFCC and random-init baselines) is a step of the part too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spiritlm.config import ConfigError, load_config
from spiritlm.demo import main as demo
from spiritlm.demo.ablations import (_seed_evals, _suffix, compare, evaluate_ablations, pooled_labels,
                                     summary_markdown)
from spiritlm.demo.parts import check_variants

UNITS_FORMAT = "units-v1: semantic vs HuBERT units per variant, interleaving within semantic; test draws pooled"
REAL_SPEECH = Path("../shared/data/real_speech/librivox")


@dataclass
class UnitsConfig:
    """``--set 'part_overrides.units=["seeds=[0, 1]", "tokenizer_overrides=[semantic.layer=3]"]'``."""
    recipe: str = "tokenizers/semantic_demo.toml"
    # names the part's steps and rows (``<variant>_<name>``); another tokenizer recipe under another
    # name runs beside the first without touching its cached steps, e.g. a 25-Hz HuBERT control:
    # name=hubert25, recipe=tokenizers/demo.toml, tokenizer_overrides=[demo.hop=640]
    name: str = "semantic"
    tokenizer_overrides: list[str] = field(default_factory=list)
    variants: list[str] = field(default_factory=lambda: list(demo.MIXTURES))
    seeds: list[int] = field(default_factory=list)  # [] = the demo's first training seed
    one_at_a_time: bool = False  # the variants train side by side, like the demo's own pair
    report: bool = True  # the unit-quality report of both families


def part_config(ctx) -> UnitsConfig:
    ucfg = load_config(UnitsConfig, None, ctx.overrides("units"))
    check_variants("units", ucfg.variants, demo.MIXTURES)
    if not ucfg.name.isidentifier() or ucfg.name in ("hubert", "seed"):
        raise ConfigError(f"part_overrides.units: name={ucfg.name!r} must be a plain identifier other than "
                          "'hubert' (the demo's own models) and 'seed', e.g. name=semantic")
    return replace(ucfg, seeds=ctx.part_seeds("units", ucfg.seeds, "HuBERT-unit model"))


def _tokenizer_step(ctx, ucfg: UnitsConfig, step_dir: Path) -> dict[str, Any]:
    from spiritlm.tokenizer.config import TokenizerCfg
    from spiritlm.tokenizer.fit import fit_tokenizer

    tcfg = load_config(TokenizerCfg, demo.recipe(ucfg.recipe), [f"seed={ctx.cfg.seed}", *ucfg.tokenizer_overrides])
    out = fit_tokenizer(tcfg, ctx.corpus["manifest"], step_dir / "tokenizer", progress=True)
    metrics = Path(out) / "metrics.json"
    return {"dir": str(out), "metrics": json.loads(metrics.read_text()) if metrics.is_file() else {}}


def semantic_tokenizer(ctx, ucfg: UnitsConfig) -> dict:
    deps = [ctx.cfg.seed, ucfg.recipe, ucfg.tokenizer_overrides, ctx.file_hash(demo.recipe(ucfg.recipe)),
            ctx.corpus["stats"]]
    return ctx.pipe.run(f"speech_tokenizer_{ucfg.name}", deps, lambda d: _tokenizer_step(ctx, ucfg, d))


def semantic_shards(ctx, tok: dict, name: str = "semantic") -> dict:
    cfg = ctx.cfg
    deps = [cfg.seed, ctx.manifest, ctx.file_hash(ctx.manifest), cfg.prepare_overrides,
            ctx.file_hash(ctx.recipe(cfg.prepare_recipe)), ctx.text_tok,
            ctx.file_hash(Path(ctx.text_tok["dir"]) / "tokenizer.model"), ctx.file_hash(Path(tok["dir"]) / "manifest.json")]
    return ctx.pipe.run(f"shards_{name}", deps, lambda d: demo.shards_step(cfg, ctx.manifest, ctx.corpus, ctx.text_tok,
                                                                          tok, d))


def train_models(ctx, ucfg: UnitsConfig, shards: dict) -> dict[str, list[dict]]:
    """``{variant: [model per seed]}`` from the demo's text start, on the semantic shards."""
    jobs = []
    for v in ucfg.variants:
        for s in ucfg.seeds:
            name = f"train_{v}_{ucfg.name}{_suffix(ctx, s)}"
            tcfg = demo.train_config(ctx.cfg, v, shards, ctx.text_tok, ctx.out / name, ctx.start, s)
            jobs.append((v, demo.training_job(name, tcfg, demo.train_key(tcfg, shards, ctx.start))))
    run = ctx.pipe.run_jobs
    done = [run([j])[0] for _, j in jobs] if ucfg.one_at_a_time else run([j for _, j in jobs])
    models: dict[str, list[dict]] = {v: [] for v in ucfg.variants}
    for (v, _), m in zip(jobs, done):
        models[v].append(m)
    return models


def bench_units(ctx, tok: dict, name: str = "semantic") -> dict[str, dict]:
    """Every draw's benchmark audio encoded once with the semantic tokenizer (the demo's own step)."""
    labels = list(ctx.draws)
    ecfg = demo.eval_config(ctx.cfg, ctx.draws["dev"], tok)
    deps = [demo.UNITS_VERSION, ecfg.speech_encoder, ecfg.speech_encoder_args,
            ctx.file_hash(Path(tok["dir"]) / "manifest.json"),
            *[[ctx.draws[t]["root"], ctx.file_hash(Path(ctx.draws[t]["root"]) / "COMPLETE.json")] for t in labels]]
    out = ctx.pipe.run(f"bench_units_{name}", deps,
                       lambda d: demo._bench_units_step(ecfg, [ctx.draws[t] for t in labels], d))
    return dict(zip(labels, out["draws"]))


def _report_step(ctx, tok: dict, name: str, step_dir: Path) -> dict[str, Any]:
    from spiritlm.tokenizer.report import ReportConfig, unit_report

    rcfg = ReportConfig(corpus=ctx.corpus["manifest"], tokenizers={"hubert_kmeans": ctx.speech_tok["dir"],
                                                                    f"{name}_kmeans": tok["dir"]},
                        real_speech=str(REAL_SPEECH) if REAL_SPEECH.is_dir() else "", seed=ctx.cfg.seed)
    report = unit_report(rcfg, step_dir)
    return {"markdown": str(step_dir / "report.md"), "json": str(step_dir / "report.json"),
            "rows": report["rows"]}


def _compare_step(evals: dict, draws: dict, seeds: list[int], variants: list[str], report_md: str,
                  step_dir: Path, name: str = "semantic") -> dict[str, Any]:
    from spiritlm.eval.report import comparison_markdown, plot_comparison, transfer_check

    tests, labels, where = pooled_labels(draws)
    text = [f"# {name} units vs the demo's HuBERT units\n",
            f"Every model: the demo's corpus, text tokenizer, text start, model, steps, batch and mixture; training "
            f"seed(s) {', '.join(map(str, seeds))}; only the speech units differ (and so the benchmarks' audio is "
            "encoded with each model's own tokenizer). Differences are the second model minus the first on the same "
            "items; paired p: McNemar's exact test on 0/1 items, sign-flip where items are tied or averaged over "
            f"seeds. Test draws pooled: {where}.\n"]
    if report_md:
        text += ["## Unit quality (held-out demo speech; real LibriVox speech for the word distance)", "",
                 Path(report_md).read_text()]
    out: dict[str, Any] = {"seeds": seeds, "test_draws": {t: draws[t]["seed"] for t in tests}, "tables": {}}
    pngs = {}
    for v in variants:  # the unit family's effect on each variant
        other = f"{v}_{name}"
        ev = {v: evals[v], other: evals[other]}
        pooled, dev = compare(ev, v, labels)[other], compare(ev, v, ["dev"])[other]
        text += [f"## {v}: HuBERT units vs {name} units", "", summary_markdown({other: pooled}, v),
                 "Dev draw (no claims):", "", summary_markdown({other: dev}, v)]
        out["tables"][f"{v}_hubert_vs_{name}"] = {"pooled": pooled, "dev": dev}
    if {"interleaved", "no_interleaving"} <= set(variants):  # the demo's claim, within each unit family
        for tag in ("", f"_{name}"):
            ref, other = f"interleaved{tag}", f"no_interleaving{tag}"
            ev = {ref: evals[ref], other: evals[other]}
            cmp = compare(ev, ref, labels)[other]
            what = f"{name} units" if tag else "HuBERT units (the demo's own)"
            text += [f"## Interleaving, {what}: {ref} vs {other}", "", comparison_markdown(cmp, ref, other),
                     transfer_check(cmp, ref, other)]
            out["tables"][f"interleaving{tag or '_hubert'}"] = {"pooled": cmp}
            pngs[f"interleaving{tag or '_hubert'}"] = str(plot_comparison(cmp, step_dir / f"{ref}_vs_{other}.png",
                                                                          ref, other))
    md = "\n".join(text)
    (step_dir / "units.md").write_text(md)
    (step_dir / "units.json").write_text(json.dumps(out, indent=1, default=float))
    return {"markdown": str(step_dir / "units.md"), "json": str(step_dir / "units.json"), "png": pngs}


def run(ctx) -> dict:
    """The demo part: semantic tokenizer, shards, models, benchmark units, evaluations, unit
    report and comparison (all cached, timed steps)."""
    ucfg = part_config(ctx)
    name = ucfg.name
    tok = semantic_tokenizer(ctx, ucfg)
    shards = semantic_shards(ctx, tok, name)
    models = train_models(ctx, ucfg, shards)
    sctx = replace(ctx, speech_tok=tok, units=bench_units(ctx, tok, name))
    evals = {**{v: _seed_evals(ctx, v, ucfg.seeds) for v in ucfg.variants},
             **{f"{v}_{name}": e for v, e in evaluate_ablations(sctx, ucfg, models, prefix=f"eval_{name}_").items()}}
    report = {}
    if ucfg.report:
        step = "units_report" if name == "semantic" else f"units_report_{name}"
        report = ctx.pipe.run(step, [tok, ctx.speech_tok, ctx.file_hash(Path(tok["dir"]) / "manifest.json"),
                                     ctx.file_hash(Path(ctx.speech_tok["dir"]) / "manifest.json"),
                                     ctx.corpus["stats"], str(REAL_SPEECH)],
                              lambda d: _report_step(ctx, tok, name, d))
    deps = [UNITS_FORMAT, ucfg.seeds, ucfg.variants, {k: d["seed"] for k, d in ctx.draws.items()},
            report.get("json", ""),
            *(ctx.file_hash(Path(e["dir"]) / "items.jsonl") for ev in evals.values() for es in ev.values() for e in es)]
    out = ctx.pipe.run("units_compare" if name == "semantic" else f"units_compare_{name}", deps,
                       lambda d: _compare_step(evals, ctx.draws, ucfg.seeds, ucfg.variants, report.get("markdown", ""),
                                               d, name))
    print(Path(out["markdown"]).read_text())
    return {"tokenizer": tok, "shards_report": shards.get("report", {}).get("kept"), "models": models,
            "report": report, **out}
