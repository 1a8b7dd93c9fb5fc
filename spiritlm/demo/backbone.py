"""Does the demo's result depend on the text tokenizer? The demo part ``backbone``.

    spiritlm demo --out runs/demo --part backbone
    spiritlm demo --out runs/demo --part backbone --set 'part_overrides.backbone=["seeds=[0, 1, 2]"]'

Modern LLMs (Llama-3, Qwen2.5/3, SmolLM2, OLMo-2) ship byte-level BPE tokenizers (``Ġword``,
reserved special ids, ``tokenizer.json``), LLaMA-2 -- and the demo -- a SentencePiece one
(``▁word``, byte fallback). This part rebuilds the demo's models on a byte-level BPE of the same
size trained on the same text (Llama-3's conventions, :func:`spiritlm.hf_text_train.train_bpe_tokenizer`):
the same corpus, speech tokenizer and aligned records made into shards with it, the same
text-only start (``text_pretrain_steps``), then the same continued training of each variant
(``variants``: the interleaved model and the one without interleaving), with the same steps,
batch, model and mixture, evaluated with the demo's suite on the dev draw and every test draw.

Two questions, both read from the test draws pooled x training seeds (the dev draw shown apart):
the BPE models against the demo's SentencePiece models of the same variant and seed (does the
tokenizer move a row?), and -- the demo's own claim -- interleaved against no interleaving
within the BPE models (does the cross-modal gain hold with this tokenizer?). Every step is a
cached, timed pipeline step; trainings run one after another by default (``one_at_a_time``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spiritlm.config import load_config
from spiritlm.demo import main as demo
from spiritlm.demo.ablations import (_seed_evals, _suffix, compare, evaluate_ablations, pooled_labels,
                                     summary_markdown)
from spiritlm.demo.parts import check_variants

BACKBONE_FORMAT = "backbone-v1: BPE vs SentencePiece per variant, and interleaving within BPE; test draws pooled"
TOKENIZER_VERSION = 1  # bump when the BPE tokenizer step changes what it writes


@dataclass
class BackboneConfig:
    """``--set 'part_overrides.backbone=["seeds=[0, 1]", ...]'``."""
    style: str = "llama3"  # a spiritlm.hf_text_train style: llama3 | qwen2 | gpt2 | olmo2
    variants: list[str] = field(default_factory=lambda: list(demo.MIXTURES))
    seeds: list[int] = field(default_factory=list)  # [] = the demo's first training seed
    one_at_a_time: bool = True


def part_config(ctx) -> BackboneConfig:
    bcfg = load_config(BackboneConfig, None, ctx.overrides("backbone"))
    check_variants("backbone", bcfg.variants, demo.MIXTURES)
    return replace(bcfg, seeds=ctx.part_seeds("backbone", bcfg.seeds, "SentencePiece model"))


def _bpe_tokenizer_step(ctx, style: str, step_dir: Path) -> dict[str, Any]:
    from spiritlm.hf_text_train import train_bpe_tokenizer
    from spiritlm.text_tokenizer import SpiritTokenizer

    texts = [json.loads(line)["text"] for line in open(ctx.corpus["text_corpus"], encoding="utf-8")]
    base = train_bpe_tokenizer(texts, step_dir / "base", vocab_size=ctx.cfg.text_vocab_size, style=style)
    tok = SpiritTokenizer.from_pretrained(base)
    out = tok.save_pretrained(step_dir / "tokenizer")
    return {"dir": str(out), "base_vocab_size": tok.layout.base_vocab_size, "vocab_size": len(tok),
            "bos_id": tok.bos_id, "style": style}


def bpe_tokenizer(ctx, style: str) -> dict:
    return ctx.pipe.run("text_tokenizer_bpe", [TOKENIZER_VERSION, ctx.cfg.text_vocab_size, ctx.corpus["stats"], style],
                        lambda d: _bpe_tokenizer_step(ctx, style, d))


def bpe_shards(ctx, tok: dict) -> dict:
    """The demo's shard step with the BPE tokenizer: the same manifest, speech tokenizer and seed."""
    cfg = replace(ctx.cfg, prepare_overrides=[*ctx.cfg.prepare_overrides, "workers=1"])
    deps = [cfg.seed, ctx.manifest, ctx.file_hash(ctx.manifest), cfg.prepare_overrides,
            ctx.file_hash(ctx.recipe(cfg.prepare_recipe)), tok, ctx.file_hash(Path(tok["dir"]) / "tokenizer.json"),
            ctx.file_hash(Path(ctx.speech_tok["dir"]) / "manifest.json")]
    return ctx.pipe.run("shards_bpe", deps, lambda d: demo.shards_step(cfg, ctx.manifest, ctx.corpus, tok,
                                                                    ctx.speech_tok, d))


def _config(ctx, variant: str, shards: dict, tok: dict, step_dir: Path, start: dict | None, seed: int | None):
    """The demo's own config builder; only the tokenizer (and the BOS it starts documents with) differ."""
    tcfg = demo.train_config(ctx.cfg, variant, shards, tok, step_dir, start, seed)
    tcfg.data.bos_id = int(tok["bos_id"])
    return tcfg


def _job(ctx, name: str, tcfg, shards: dict, start: dict | None):
    return demo.training_job(name, tcfg, demo.train_key(tcfg, shards, start))


def train_models(ctx, bcfg: BackboneConfig, tok: dict, shards: dict) -> tuple[dict | None, dict[str, list[dict]]]:
    """(the BPE text start, ``{variant: [model per seed]}``), cached after the first run."""
    start = None
    if ctx.cfg.text_pretrain_steps > 0:
        tcfg = _config(ctx, "text_pretrain", shards, tok, ctx.out / "text_pretrain_bpe", None, None)
        start, = ctx.pipe.run_jobs([_job(ctx, "text_pretrain_bpe", tcfg, shards, None)])
    jobs = []
    for v in bcfg.variants:
        for s in bcfg.seeds:
            name = f"train_{v}_bpe{_suffix(ctx, s)}"
            jobs.append((v, _job(ctx, name, _config(ctx, v, shards, tok, ctx.out / name, start, s), shards, start)))
    run = ctx.pipe.run_jobs
    done = [run([j])[0] for _, j in jobs] if bcfg.one_at_a_time else run([j for _, j in jobs])
    models: dict[str, list[dict]] = {v: [] for v in bcfg.variants}
    for (v, _), m in zip(jobs, done):
        models[v].append(m)
    return start, models


def _compare_step(evals: dict, draws: dict, seeds: list[int], variants: list[str], style: str,
                  step_dir: Path) -> dict[str, Any]:
    from spiritlm.eval.report import comparison_markdown, plot_comparison, transfer_check

    tests, labels, where = pooled_labels(draws)
    text = [f"# Byte-level BPE ({style} conventions) vs the demo's SentencePiece tokenizer\n",
            f"Every model: the demo's corpus, speech units, model, steps, batch and mixture; training seed(s) "
            f"{', '.join(map(str, seeds))}; only the text tokenizer (and so the text start) differs. Differences "
            "are the second model minus the first on the same items; paired p: McNemar's exact test on 0/1 items, "
            f"sign-flip where items are tied or averaged over seeds. Test draws pooled: {where}.\n"]
    out: dict[str, Any] = {"seeds": seeds, "test_draws": {t: draws[t]["seed"] for t in tests}, "tables": {}}
    pngs = {}
    for v in variants:  # the tokenizer's effect on each variant
        ev = {v: evals[v], f"{v}_bpe": evals[f"{v}_bpe"]}
        pooled, dev = compare(ev, v, labels)[f"{v}_bpe"], compare(ev, v, ["dev"])[f"{v}_bpe"]
        text += [f"## {v}: SentencePiece vs BPE", "", summary_markdown({f"{v}_bpe": pooled}, v),
                 "Dev draw (no claims):", "", summary_markdown({f"{v}_bpe": dev}, v)]
        out["tables"][f"{v}_sp_vs_bpe"] = {"pooled": pooled, "dev": dev}
    if {"interleaved", "no_interleaving"} <= set(variants):  # the demo's claim, within each tokenizer
        for tag in ("", "_bpe"):
            ref, other = f"interleaved{tag}", f"no_interleaving{tag}"
            ev = {ref: evals[ref], other: evals[other]}
            cmp = compare(ev, ref, labels)[other]
            name = "BPE" if tag else "SentencePiece (the demo's own)"
            text += [f"## Interleaving, {name}: {ref} vs {other}", "", comparison_markdown(cmp, ref, other),
                     transfer_check(cmp, ref, other)]
            out["tables"][f"interleaving{tag or '_sp'}"] = {"pooled": cmp}
            pngs[f"interleaving{tag or '_sp'}"] = str(plot_comparison(cmp, step_dir / f"{ref}_vs_{other}.png", ref, other))
    md = "\n".join(text)
    (step_dir / "backbone.md").write_text(md)
    (step_dir / "backbone.json").write_text(json.dumps(out, indent=1, default=float))
    return {"markdown": str(step_dir / "backbone.md"), "json": str(step_dir / "backbone.json"), "png": pngs}


def run(ctx) -> dict:
    """The demo part: BPE tokenizer, shards, text start, models, evaluations, comparison (all cached)."""
    bcfg = part_config(ctx)
    tok = bpe_tokenizer(ctx, bcfg.style)
    shards = bpe_shards(ctx, tok)
    start, models = train_models(ctx, bcfg, tok, shards)
    evals = {**{v: _seed_evals(ctx, v, bcfg.seeds) for v in bcfg.variants},
             **{f"{v}_bpe": e for v, e in evaluate_ablations(ctx, bcfg, models, prefix="eval_bpe_").items()}}
    deps = [BACKBONE_FORMAT, bcfg.seeds, bcfg.variants, bcfg.style, {k: d["seed"] for k, d in ctx.draws.items()},
            *(ctx.file_hash(Path(e["dir"]) / "items.jsonl") for ev in evals.values() for es in ev.values()
              for e in es)]
    out = ctx.pipe.run("backbone_compare", deps, lambda d: _compare_step(evals, ctx.draws, bcfg.seeds,
                                                                          bcfg.variants, bcfg.style, d))
    print(Path(out["markdown"]).read_text())
    return {"tokenizer": tok, "shards_report": shards.get("report", {}).get("kept"), "start": start,
            "models": models, **out}
