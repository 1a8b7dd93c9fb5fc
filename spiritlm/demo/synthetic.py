"""Does synthetic interleaving help beyond the aligned hour? The demo part ``synthetic`` (issue 36).

    spiritlm demo --out runs/demo --part synthetic
    spiritlm demo --out runs/demo --part synthetic --set 'part_overrides.synthetic=["seeds=[0, 1, 2]"]'

Zeng et al. 2024 make interleaved data from text alone: a text-to-unit (T2U) model writes the
speech spans. Here, on the demo's cached steps:

1. ``t2u``: a T2U model (``train/t2u_demo.toml``) trained on the demo's aligned training shards;
2. ``synth_shards``: the demo's text corpus turned into synthetic interleaved shards
   (``data_prep/synth_interleave_demo.toml``: the real interleaving's span lengths);
3. ``train_interleaved_synthetic``: the demo's interleaved model again -- same text start, steps,
   batch, seeds and sources -- with the synthetic shards as one more source. They take
   ``synthetic_weight`` of the text source's token share (the synthetic documents *are* the text
   corpus, partly spoken), so the real interleaved and speech shares and the token budget are the
   demo's own;
4. its evaluation on the dev draw and every test draw, compared item by item with the demo's own
   interleaved model of the same seeds (test draws pooled x seeds; the dev draw shown apart);
5. ``t2u_quality``: the T2U units against the real ones on the corpus' held-out utterances (unit
   edit rate, the demo interleaved model's NLL per unit, and -- with ``vocoder = true`` -- the
   pocketsphinx WER of the CPU vocoder's audio of both).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spiritlm.config import ConfigError, load_config
from spiritlm.demo import main as demo
from spiritlm.demo.ablations import _seed_evals, _suffix, compare, evaluate_ablations, pooled_labels, summary_markdown

SYNTHETIC_FORMAT = "synthetic-v1: interleaved vs interleaved + synthetic (T2U) interleaving; test draws pooled"
VARIANT = "interleaved_synthetic"


@dataclass
class SyntheticConfig:
    """``--set 'part_overrides.synthetic=["seeds=[0, 1]", "synthetic_weight=0.5"]'``."""
    t2u_recipe: str = "train/t2u_demo.toml"
    t2u_overrides: list[str] = field(default_factory=list)
    synth_recipe: str = "data_prep/synth_interleave_demo.toml"
    synth_overrides: list[str] = field(default_factory=list)
    # the synthetic source's token share, out of the text source's 1.0 (the demo's interleaved
    # mixture is interleaved 1 : speech 1 : text 1); 0.5 = text 0.5 + synthetic 0.5
    synthetic_weight: float = 0.5
    seeds: list[int] = field(default_factory=list)  # [] = the demo's first training seed
    one_at_a_time: bool = False
    quality: bool = True  # the T2U units vs real units on held-out utterances
    vocoder: bool = True  # ... with the vocoder WER (fits the CPU vocoder on the demo's units, ~12 CPU min)
    vocoder_recipe: str = "tokenizers/vocoder_demo_spectral.toml"

    def __post_init__(self) -> None:
        if not 0 < self.synthetic_weight <= 1:
            raise ConfigError(f"part_overrides.synthetic: synthetic_weight={self.synthetic_weight} must lie in (0, 1] "
                              "(the share of the text source's weight 1.0 the synthetic source takes)")


def part_config(ctx) -> SyntheticConfig:
    scfg = load_config(SyntheticConfig, None, ctx.overrides("synthetic"))
    if "interleaved" not in ctx.models:
        raise ConfigError("the synthetic part compares with the demo's interleaved model, which this demo did not train")
    return replace(scfg, seeds=ctx.part_seeds("synthetic", scfg.seeds, "interleaved model"))


def _aligned(ctx) -> Path:
    return Path(ctx.shards["dir"]) / "aligned"


def t2u_config(ctx, scfg: SyntheticConfig, run_dir: Path):
    from spiritlm.components.config import SourceConfig
    from spiritlm.models.t2u.config import T2UConfig
    from spiritlm.precision import pin_precision

    tcfg = load_config(T2UConfig, demo.recipe(scfg.t2u_recipe), [
        f"seed={ctx.cfg.seed}", f"run_dir={run_dir}", f"model.tokenizer={ctx.text_tok['dir']}", *scfg.t2u_overrides])
    pin_precision(tcfg, "cpu")  # the step's key holds the precision trained in
    tcfg.data.sources = [SourceConfig(name="aligned", path=str(_aligned(ctx)))]
    return tcfg


def t2u_model(ctx, scfg: SyntheticConfig) -> dict:
    tcfg = t2u_config(ctx, scfg, ctx.out / "t2u" / "run")
    key = [demo.train_config_key(tcfg), demo.file_hash(Path(ctx.shards["dir"]) / "index.json")]
    return ctx.pipe.run_jobs([demo.training_job("t2u", tcfg, key)])[0]


def _synth_step(ctx, scfg: SyntheticConfig, t2u: dict, step_dir: Path) -> dict[str, Any]:
    from spiritlm.models.t2u.synth import SynthConfig, format_synth_report, synth_interleave

    cfg = load_config(SynthConfig, demo.recipe(scfg.synth_recipe), [
        f"seed={ctx.cfg.seed}", f"output_dir={step_dir / 'shards'}", f"t2u={t2u['hf']}",
        f"inputs.text_corpora=[{ctx.corpus['text_corpus']}]", *scfg.synth_overrides])
    report = synth_interleave(cfg)
    print(format_synth_report(report))
    report.pop("drop_examples", None)
    return {"dir": str(step_dir / "shards"), "report": report}


def synth_shards(ctx, scfg: SyntheticConfig, t2u: dict) -> dict:
    deps = [ctx.cfg.seed, scfg.synth_recipe, scfg.synth_overrides, ctx.file_hash(demo.recipe(scfg.synth_recipe)),
            ctx.file_hash(Path(t2u["hf"]) / "model.safetensors"), ctx.file_hash(Path(ctx.corpus["text_corpus"]))]
    return ctx.pipe.run("synth_shards", deps, lambda d: _synth_step(ctx, scfg, t2u, d))


def train_config(ctx, scfg: SyntheticConfig, synth: dict, seed: int, step_dir: Path):
    from spiritlm.components.config import SourceConfig

    tcfg = demo.train_config(ctx.cfg, "interleaved", ctx.shards, ctx.text_tok, step_dir, ctx.start, seed)
    for s in tcfg.data.sources:
        if s.kind == "text":
            s.weight -= scfg.synthetic_weight * s.weight
    tcfg.data.sources.append(SourceConfig(name="synthetic", path=str(Path(synth["dir"]) / "interleaved"),
                                          weight=scfg.synthetic_weight, kind="interleaved", synthetic=True))
    return tcfg


def train_models(ctx, scfg: SyntheticConfig, synth: dict) -> list[dict]:
    jobs = []
    for s in scfg.seeds:
        name = f"train_{VARIANT}{_suffix(ctx, s)}"
        tcfg = train_config(ctx, scfg, synth, s, ctx.out / name)
        key = [*demo.train_key(tcfg, ctx.shards, ctx.start), ctx.file_hash(Path(synth["dir"]) / "index.json")]
        jobs.append(demo.training_job(name, tcfg, key))
    run = ctx.pipe.run_jobs
    return [run([j])[0] for j in jobs] if scfg.one_at_a_time else run(jobs)


def _heldout_step(ctx, step_dir: Path) -> dict[str, Any]:
    """The corpus' held-out utterances as aligned shards (the data stage's demo recipe, split heldout).

    Their word times are the synthesizer's own (the corpus manifest): the demo re-aligns only its
    training split with pocketsphinx, whose word boundaries differ from these by tens of ms."""
    from spiritlm.data.prepare import PrepareConfig, prepare_demo_shards

    cfg = ctx.cfg
    pcfg = load_config(PrepareConfig, demo.recipe(cfg.prepare_recipe), [
        f"seed={cfg.seed}", f"output_dir={step_dir / 'shards'}", f"text_tokenizer={ctx.text_tok['dir']}",
        "speech.encoder=spiritlm.data.encoders:speech_tokenizer", f"speech.tokenizer_dir={ctx.speech_tok['dir']}",
        "records.parallel=[]", "inputs.splits=[heldout]", "inputs.text_corpora=[]", "workers=1", *cfg.prepare_overrides])
    return {"dir": str(prepare_demo_shards(pcfg, ctx.corpus["manifest"]))}


def _vocoder_step(ctx, scfg: SyntheticConfig, step_dir: Path) -> dict[str, Any]:
    from spiritlm.vocoder.fit import VocoderFitConfig, fit_vocoder

    vcfg = load_config(VocoderFitConfig, demo.recipe(scfg.vocoder_recipe), [
        f"seed={ctx.cfg.seed}", f"output_dir={step_dir / 'vocoder'}", f"data.tokenizer={ctx.speech_tok['dir']}",
        f"data.corpus={ctx.corpus['manifest']}"])
    out = fit_vocoder(vcfg)
    return {"dir": str(out), "metrics": json.loads((Path(out) / "metrics.json").read_text())}


def quality(ctx, scfg: SyntheticConfig, t2u: dict) -> dict:
    from spiritlm.models.t2u.quality import QualityConfig, quality_report

    held = ctx.pipe.run("heldout_shards", [ctx.cfg.seed, ctx.corpus["manifest"], ctx.file_hash(ctx.corpus["manifest"]),
                                           ctx.cfg.prepare_overrides, ctx.file_hash(ctx.recipe(ctx.cfg.prepare_recipe)),
                                           ctx.file_hash(Path(ctx.text_tok["dir"]) / "tokenizer.model"),
                                           ctx.file_hash(Path(ctx.speech_tok["dir"]) / "manifest.json")],
                        lambda d: _heldout_step(ctx, d))
    voc = {}
    if scfg.vocoder:
        voc = ctx.pipe.run("t2u_vocoder", [ctx.cfg.seed, scfg.vocoder_recipe, ctx.file_hash(demo.recipe(scfg.vocoder_recipe)),
                                           ctx.file_hash(Path(ctx.speech_tok["dir"]) / "manifest.json"),
                                           ctx.corpus["stats"]], lambda d: _vocoder_step(ctx, scfg, d))
    lm = ctx.models["interleaved"][ctx.seeds.index(scfg.seeds[0])]["hf"]

    def step(d: Path) -> dict:
        q = quality_report(QualityConfig(t2u=t2u["hf"], shards=str(Path(held["dir"]) / "aligned"), lm=lm,
                                         vocoder=voc.get("dir", ""), seed=ctx.cfg.seed), d)
        return {"markdown": str(d / "quality.md"), "json": str(d / "quality.json"), "rows": q["rows"]}

    return ctx.pipe.run("t2u_quality", [ctx.file_hash(Path(t2u["hf"]) / "model.safetensors"),
                                        ctx.file_hash(Path(held["dir"]) / "index.json"), lm,
                                        ctx.file_hash(Path(lm) / "model.safetensors"), voc.get("dir", "")], step)


def _compare_step(evals: dict, draws: dict, seeds: list[int], synth: dict, quality_md: str, weight: float,
                  step_dir: Path) -> dict[str, Any]:
    from spiritlm.eval.report import plot_comparison

    tests, labels, where = pooled_labels(draws)
    rep = synth.get("report", {})
    syn, tp = rep.get("synthetic", {}), rep.get("throughput", {})
    ref = "interleaved"
    pooled, dev = compare(evals, ref, labels)[VARIANT], compare(evals, ref, ["dev"])[VARIANT]
    text = ["# Synthetic interleaving (T2U) vs aligned interleaving only\n",
            f"Both models: the demo's text start, model, steps, batch, seeds ({', '.join(map(str, seeds))}) and "
            f"mixture (interleaved 1 : speech 1 : text 1); `{VARIANT}` gives {weight:g} of the text source's share to "
            f"synthetic interleaved documents made from the same text corpus by the T2U model ({syn.get('documents')} "
            f"documents, {syn.get('spans_speech')} speech spans, {syn.get('units')} units; "
            f"{tp.get('text_words_per_s')} text words/s and {tp.get('units_per_s')} units/s per worker). Differences "
            f"are `{VARIANT}` minus `{ref}` on the same items; paired p: McNemar's exact test on 0/1 items, sign-flip "
            f"where items are averaged over seeds. Test draws pooled: {where}.\n"]
    if quality_md:
        text += ["## The T2U units (held-out utterances of the demo corpus)", "", Path(quality_md).read_text()]
    text += [f"## {ref} vs {VARIANT}", "", summary_markdown({VARIANT: pooled}, ref),
             "Dev draw (no claims):", "", summary_markdown({VARIANT: dev}, ref)]
    png = plot_comparison(pooled, step_dir / f"{ref}_vs_{VARIANT}.png", ref, VARIANT)
    md = "\n".join(text)
    (step_dir / "synthetic.md").write_text(md)
    out = {"seeds": seeds, "test_draws": {t: draws[t]["seed"] for t in tests}, "pooled": pooled, "dev": dev,
           "synth_report": rep}
    (step_dir / "synthetic.json").write_text(json.dumps(out, indent=1, default=float))
    return {"markdown": str(step_dir / "synthetic.md"), "json": str(step_dir / "synthetic.json"), "png": str(png)}


def run(ctx) -> dict:
    """The demo part: T2U model, synthetic shards, models, evaluations, unit quality, comparison
    (all cached, timed steps)."""
    scfg = part_config(ctx)
    t2u = t2u_model(ctx, scfg)
    synth = synth_shards(ctx, scfg, t2u)
    models = train_models(ctx, scfg, synth)
    evals = {"interleaved": _seed_evals(ctx, "interleaved", scfg.seeds),
             **evaluate_ablations(ctx, scfg, {VARIANT: models}, prefix="eval_synthetic_")}
    q = quality(ctx, scfg, t2u) if scfg.quality else {}
    deps = [SYNTHETIC_FORMAT, scfg.seeds, scfg.synthetic_weight, {k: d["seed"] for k, d in ctx.draws.items()},
            q.get("json", ""), ctx.file_hash(Path(synth["dir"]) / "index.json"),
            *(ctx.file_hash(Path(e["dir"]) / "items.jsonl") for ev in evals.values() for es in ev.values() for e in es)]
    out = ctx.pipe.run("synthetic_compare", deps, lambda d: _compare_step(evals, ctx.draws, scfg.seeds, synth,
                                                                          q.get("markdown", ""), scfg.synthetic_weight, d))
    print(Path(out["markdown"]).read_text())
    return {"t2u": t2u, "synth": {"dir": synth["dir"]}, "models": models, "quality": q, **out}
