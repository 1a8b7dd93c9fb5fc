"""``spiritlm demo --part hybrid``: the Whisper-GPT comparison at demo scale.

Three speech LMs trained on the same data for the same steps, from scratch (the paper's models
are speech-only LMs trained from scratch on LibriSpeech; here the demo's aligned training
records, read as speech, **undeduplicated**, one position per HuBERT frame):

* ``tokens``: tokens only, its FFN widened so that its parameter count equals the hybrid's;
* ``hybrid``: the same LM, plus the 64-bin log-mel frame through two light blocks,
  concatenated with the unit embedding (Whisper-GPT);
* ``tokens_big``: tokens only, several times the parameters (``big``).

Everything else is the demo's: its shards, aligned manifest, speech tokenizer (units of the
benchmark audio: the demo's ``bench_units`` files, copied) and its benchmark draws. Evaluation:
held-out speech NLL / perplexity per unit (the corpus' held-out split, every utterance scored
whole), and sWUGGY / sBLIMP / StoryCloze S through the eval suite (``HybridScorer``: same items,
same report files). Claims come from the TEST draws pooled (each item averaged over training
seeds) with bootstrap 95% CIs; the dev draw is reported, labelled dev; no setting here was
chosen by looking at any score (sizes and steps were fixed by the CPU budget before the runs).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spiritlm import stats
from spiritlm.demo import main as demo
from spiritlm.precision import pin_precision

log = logging.getLogger(__name__)

PART = "hybrid"
VERSION = "hybrid-part-v2"  # v2: units and feature caches record each audio file's identity
# S settings only: the models are speech-only LMs (no text to score T, T->S or S->T with).
EVAL_OVERRIDES = ("zerospeech.modalities=[S]", "zerospeech.submission=false", "storycloze.settings=[S]",
                  'topic_storycloze.speech=""', "topic_storycloze.settings=[]", 'stsp.manifest=""',
                  'fewshot.asr_manifest=""', 'speech_cls.manifest=""')


@dataclass
class HybridPartConfig:
    """``--set 'part_overrides.hybrid=[steps=200, seeds=[0]]'``"""
    recipe: str = "train/hybrid_demo.toml"
    steps: int = 300
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # training seeds of tokens and hybrid
    big_seeds: list[int] = field(default_factory=lambda: [0])  # training seeds of tokens_big
    big: list[str] = field(default_factory=lambda: [
        "model.tiny.hidden_size=128", "model.tiny.intermediate_size=352", "model.tiny.num_hidden_layers=4",
        "model.tiny.num_attention_heads=4", "model.tiny.num_key_value_heads=4"])
    match_params: bool = True  # widen the tokens-only FFN to the hybrid's parameter count
    train_overrides: list[str] = field(default_factory=lambda: [
        "data.seq_len=1024", "micro_batch_size=2", "global_batch_size=2", "deepspeed.precision=auto",
        "log.every=20", "log.progress_bar=false"])
    dev: bool = True  # also evaluate on the dev draw (reported, labelled dev)
    heldout_max: int = 0  # held-out utterances for NLL (0 = all)


def part_config(ctx) -> HybridPartConfig:
    from spiritlm.config import ConfigError, load_config

    opts = load_config(HybridPartConfig, None, ctx.overrides(PART))
    if not opts.seeds:
        raise ConfigError("part_overrides.hybrid seeds=[]: give at least one training seed, e.g. seeds=[0]")
    return opts


def train_config(ctx, opts: HybridPartConfig, variant: str, seed: int, run_dir: Path, extra: list[str] = ()):
    from spiritlm.components.config import SourceConfig
    from spiritlm.config import load_config
    from spiritlm.models.hybrid.config import HybridTrainConfig

    kind = "logmel" if variant == "hybrid" else "none"
    tcfg = load_config(HybridTrainConfig, ctx.recipe(opts.recipe), [
        f"seed={seed}", f"run_dir={run_dir}", f"steps={opts.steps}", f"model.tokenizer={ctx.text_tok['dir']}",
        f"hybrid.features.kind={kind}", f"hybrid.data.manifests={json.dumps([str(ctx.manifest)])}",
        f"hybrid.data.features_dir={ctx.out / 'hybrid_features' / 'features'}",
        *opts.train_overrides, *(opts.big if variant == "tokens_big" else []), *extra])
    pin_precision(tcfg, "cpu")  # the step's key holds the precision trained in
    # the demo's own shards (the recipe's folder is where a default demo run puts them)
    tcfg.data.sources = [SourceConfig(name="speech", path=str(Path(ctx.shards["dir"]) / "aligned"), kind="speech")]
    return tcfg


def matched_ffn(ctx, opts: HybridPartConfig) -> int:
    """The tokens-only FFN width whose parameter count is closest to the hybrid model's."""
    from spiritlm.models.hybrid.model import FrameProjector, feature_dim

    cfg = train_config(ctx, opts, "hybrid", opts.seeds[0], ctx.out / "unused")
    H, L, P = cfg.model.tiny.hidden_size, cfg.model.tiny.num_hidden_layers, cfg.hybrid.projector.dim or \
        cfg.model.tiny.hidden_size
    p = cfg.hybrid.projector
    extra = sum(x.numel() for x in FrameProjector(feature_dim(cfg.hybrid), P, p.blocks, p.mult).parameters())
    extra += (H + P) * H if cfg.hybrid.fusion == "concat" else P * H
    return cfg.model.tiny.intermediate_size + round(extra / (3 * H * L))  # SwiGLU: 3 H x I per layer


# ---- steps (module-level functions: they run in side processes) ----------------------------------
def _features_step(shard_dir: str, manifest: str, feat_cfg, step_dir: Path) -> dict:
    from spiritlm.models.hybrid.features import build_feature_store

    cache = build_feature_store([shard_dir], [manifest], step_dir / "features", feat_cfg)
    return {"dir": str(cache.dir), "records": len(cache.feats)}


def _heldout_step(corpus_manifest: str, enc_spec: str, enc_args: dict, limit: int, step_dir: Path) -> dict:
    """Units of the corpus' held-out utterances, encoded once with the demo's speech tokenizer."""
    from spiritlm.eval.model import encoder_identity, load_speech_encoder
    from spiritlm.manifest import read_manifest

    root = Path(corpus_manifest).parent
    wavs = [str(u.audio_file(root)) for u in read_manifest(corpus_manifest) if u.split == "heldout"]
    wavs = wavs[: limit or None]
    enc = load_speech_encoder(enc_spec, enc_args)
    enc.prefetch(wavs)
    for w in wavs:
        enc(w)
    n = enc.save_units(step_dir / "units.npz", root, encoder_identity(enc_spec, enc_args))
    (step_dir / "wavs.json").write_text(json.dumps(wavs))
    return {"units": str(step_dir / "units.npz"), "wavs": str(step_dir / "wavs.json"), "root": str(root), "n": n}


def _train_step(tcfg, step_dir: Path) -> dict:
    from spiritlm.train import train

    run_dir = train(tcfg)
    counts = json.loads((Path(run_dir) / "param_counts.json").read_text())
    return {"run_dir": str(run_dir), "hf": str(Path(run_dir) / "hf"), "params": counts["all"]["total"]}


def _eval_step(ecfg, units_file: str, step_dir: Path) -> dict:
    """The eval suite on one draw; the demo's units file is copied in (the suite rewrites its units
    file when it encodes anything, and the demo's belongs to the main demo)."""
    from spiritlm.eval.suite import run_suite

    if units_file:
        shutil.copy(units_file, step_dir / "units.npz")
        ecfg.units_cache = str(step_dir / "units.npz")
    out = run_suite(ecfg)
    return {"dir": str(step_dir), "encoded_here": out["speech_files_encoded"]}


def _nll_step(model_dir: str, heldout: dict, enc_spec: str, enc_args: dict, step_dir: Path) -> dict:
    from spiritlm.eval.model import encoder_identity, load_speech_encoder
    from spiritlm.models.hybrid.model import load_hybrid
    from spiritlm.models.hybrid.scoring import speech_nll

    model, tok = load_hybrid(model_dir)
    enc = load_speech_encoder(enc_spec, enc_args)
    enc.load_units(heldout["units"], heldout["root"], encoder_identity(enc_spec, enc_args))
    wavs = json.loads(Path(heldout["wavs"]).read_text())
    res = speech_nll(model.make_scorer(tok, enc), wavs)
    if enc.calls:
        raise RuntimeError(f"{enc.calls} held-out files were not in {heldout['units']}")
    (step_dir / "nll.json").write_text(json.dumps(res))
    return {"nll": res["nll"], "ppl": res["ppl"], "units": res["units"], "file": str(step_dir / "nll.json")}


# ---- the comparison --------------------------------------------------------------------------------
PAIRS = (("hybrid", "tokens", "hybrid vs tokens-only, equal parameters"),
         ("hybrid", "tokens_big", "hybrid vs tokens-only, larger"),
         ("tokens_big", "tokens", "larger vs equal-size tokens-only"))


def nll_compare(per_utt_a: list[list], per_utt_b: list[list], n_boot: int = 2000, seed: int = 0) -> dict:
    """NLL per unit of A and B on the same utterances (each utterance's summed NLL averaged over
    the training seeds), their difference A - B with a bootstrap 95% CI over utterances."""
    a = np.mean([[x[0] for x in run] for run in per_utt_a], axis=0)
    b = np.mean([[x[0] for x in run] for run in per_utt_b], axis=0)
    n = np.asarray([x[1] for x in per_utt_a[0]], dtype=np.float64)
    if not np.array_equal(n, [x[1] for x in per_utt_b[0]]):
        raise ValueError("the two models were scored on different units")
    return {"nll_a": float(a.sum() / n.sum()), "nll_b": float(b.sum() / n.sum()),
            "diff": float((a.sum() - b.sum()) / n.sum()),
            "ci95": list(stats.paired_bootstrap_ci(a, b, n, n_boot=n_boot, rng=seed)),
            "utterances": int(n.size), "units": int(n.sum())}


def _compare_step(evals: dict, nlls: dict, params: dict, seeds: dict, labels: list[str], step_dir: Path) -> dict:
    from spiritlm.eval.protocol import pool_draws
    from spiritlm.eval.report import paired_compare, read_items

    items = {v: {lab: [read_items(Path(e["dir"])) for e in evals[v][lab]] for lab in evals[v]} for v in evals}
    tests = [lab for lab in labels if lab != "dev"]
    pooled = {v: pool_draws({t: items[v][t] for t in tests}) for v in items}
    per_utt = {v: [json.loads(Path(x["file"]).read_text())["per_utt"] for x in nlls[v]] for v in nlls}
    cmps = {f"{a}-{b}": paired_compare(pooled[a], pooled[b]) for a, b, _ in PAIRS}
    nll = {f"{a}-{b}": nll_compare(per_utt[a], per_utt[b]) for a, b, _ in PAIRS}
    dev = ({f"{a}-{b}": paired_compare(items[a]["dev"], items[b]["dev"]) for a, b, _ in PAIRS}
           if "dev" in labels else {})
    md = comparison_table(cmps, nll, params, seeds, tests)
    if dev:
        md += "\n" + dev_table(dev)
    (step_dir / "comparison.md").write_text(md)
    (step_dir / "comparison.json").write_text(json.dumps({"test": cmps, "nll": nll, "dev": dev, "params": params,
                                                          "seeds": seeds, "test_draws": tests}, indent=1))
    return {"markdown": md, "json": str(step_dir / "comparison.json")}


def _ci(r: dict, scale: float = 100.0, digits: int = 1) -> str:
    return (f"{scale * r['diff']:+.{digits}f} ({scale * r['ci95'][0]:+.{digits}f}, "
            f"{scale * r['ci95'][1]:+.{digits}f})")


def comparison_table(cmps: dict, nll: dict, params: dict, seeds: dict, tests: list[str]) -> str:
    t, h, b = "tokens", "hybrid", "tokens_big"
    lines = [f"Parameters: tokens-only {params[t]:,} / hybrid {params[h]:,} / tokens-only large {params[b]:,} "
             f"({params[b] / params[h]:.1f}x). Training seeds: tokens-only {seeds[t]}, hybrid {seeds[h]}, "
             f"large {seeds[b]}. Test draws pooled: {', '.join(tests)}.", "",
             "| metric | tokens-only | hybrid | tokens-only large | hybrid - tokens-only (95% CI) | "
             "hybrid - large (95% CI) | large - tokens-only (95% CI) |",
             "|---|---:|---:|---:|---|---|---|"]
    n1, n2, n3 = nll["hybrid-tokens"], nll["hybrid-tokens_big"], nll["tokens_big-tokens"]
    lines.append(f"| held-out NLL / unit (nats; {n1['utterances']} utt., {n1['units']} units) | {n1['nll_b']:.3f} | "
                 f"{n1['nll_a']:.3f} | {n2['nll_b']:.3f} | {_ci(n1, 1, 3)} | {_ci(n2, 1, 3)} | {_ci(n3, 1, 3)} |")
    lines.append(f"| held-out perplexity / unit | {math.exp(n1['nll_b']):.2f} | {math.exp(n1['nll_a']):.2f} | "
                 f"{math.exp(n2['nll_b']):.2f} | | | |")
    c1, c2, c3 = cmps["hybrid-tokens"], cmps["hybrid-tokens_big"], cmps["tokens_big-tokens"]
    for key in sorted(c1):
        r1, r2, r3 = c1[key], c2.get(key), c3.get(key)
        lines.append(f"| {key} accuracy % (n = {r1['n']}) | {100 * r1['acc_b']:.1f} | {100 * r1['acc_a']:.1f} | "
                     f"{100 * r2['acc_b']:.1f} | {_ci(r1)}, p = {r1['p']:.2g} | {_ci(r2)}, p = {r2['p']:.2g} | "
                     f"{_ci(r3)}, p = {r3['p']:.2g} |")
    lines += ["", "NLL CIs: bootstrap over held-out utterances (each utterance's NLL averaged over seeds). Accuracy "
              "CIs: bootstrap over items of the pooled test draws (each item averaged over seeds), p: paired test "
              "(spiritlm.eval.report.paired_compare)."]
    return "\n".join(lines) + "\n"


def dev_table(dev: dict) -> str:
    lines = ["Dev draw (reported, not claimed):", "", "| task/setting | n | tokens-only | hybrid | large | "
             "hybrid - tokens-only |", "|---|---:|---:|---:|---:|---|"]
    for key, r in sorted(dev["hybrid-tokens"].items()):
        big = dev["hybrid-tokens_big"].get(key, {})
        lines.append(f"| {key} | {r['n']} | {100 * r['acc_b']:.1f} | {100 * r['acc_a']:.1f} | "
                     f"{100 * big.get('acc_b', float('nan')):.1f} | {_ci(r)} |")
    return "\n".join(lines) + "\n"


def run(ctx) -> dict:
    from dataclasses import asdict

    from spiritlm.pipeline import Job

    opts = part_config(ctx)
    out = ctx.out
    shard_dir = str(Path(ctx.shards["dir"]) / "aligned")
    base = train_config(ctx, opts, "hybrid", opts.seeds[0], out / "unused")
    ctx.pipe.run("hybrid_features", [VERSION, asdict(base.hybrid.features), ctx.file_hash(Path(ctx.shards["dir"]) /
                                                                                            "index.json"),
                                     ctx.file_hash(ctx.manifest)],
                 lambda d: _features_step(shard_dir, str(ctx.manifest), base.hybrid.features, d))
    ecfg0 = demo.eval_config(ctx.cfg, ctx.draws["dev"], ctx.speech_tok)
    enc = (ecfg0.speech_encoder, dict(ecfg0.speech_encoder_args))
    heldout = ctx.pipe.run("hybrid_heldout_units", [VERSION, ctx.file_hash(ctx.corpus["manifest"]), *enc,
                                                    ctx.file_hash(Path(ctx.speech_tok["dir"]) / "manifest.json"),
                                                    opts.heldout_max],
                           lambda d: _heldout_step(ctx.corpus["manifest"], *enc, opts.heldout_max, d))
    ffn = matched_ffn(ctx, opts) if opts.match_params else 0
    variants = {"tokens": (opts.seeds, [f"model.tiny.intermediate_size={ffn}"] if ffn else []),
                "hybrid": (opts.seeds, []), "tokens_big": (opts.big_seeds, [])}
    shards_hash = ctx.file_hash(Path(ctx.shards["dir"]) / "index.json")
    labels = [lab for lab in ctx.draws if lab != "dev" or opts.dev]
    models: dict[str, list[dict]] = {v: [] for v in variants}
    evals: dict[str, dict[str, list[dict]]] = {v: {lab: [] for lab in labels} for v in variants}
    nlls: dict[str, list[dict]] = {v: [] for v in variants}
    from spiritlm.demo.files import train_config_key

    # seed by seed (every variant trained and evaluated on seed i before seed i + 1), one job at a
    # time: the part runs in one CPU slot, and a cut-short run leaves whole seeds behind
    for i in range(max(len(sd) for sd, _ in variants.values())):
        for v, (seeds, extra) in variants.items():
            if i >= len(seeds):
                continue
            s = seeds[i]
            name = f"hybrid_train_{v}_seed{s}"
            tcfg = train_config(ctx, opts, v, s, out / name / "run", extra)
            key = train_config_key(tcfg)
            m, = ctx.pipe.run_jobs([Job(name, [VERSION, key, shards_hash, ctx.file_hash(ctx.manifest)],
                                        _train_step, (tcfg,))])
            models[v].append(m)
            mhash = ctx.file_hash(Path(m["hf"]) / "model.safetensors")
            jobs = []
            for lab in labels:
                draw, units = ctx.draws[lab], ctx.units[lab]
                ename = f"hybrid_eval_{v}_seed{s}_{lab}"
                ecfg = demo.eval_config(ctx.cfg, draw, ctx.speech_tok, [f"model={m['hf']}", f"name={v}",
                                                                     f"output_dir={out / ename}"], EVAL_OVERRIDES)
                jobs.append(Job(ename, [VERSION, mhash, draw, ctx.file_hash(Path(draw["root"]) / "COMPLETE.json"),
                                        EVAL_OVERRIDES, units["files"], *demo.scoring_key(ctx.cfg)], _eval_step, (ecfg, units["file"])))
            for lab, ev in zip(labels, ctx.pipe.run_jobs(jobs)):
                evals[v][lab].append(ev)
            nlls[v] += ctx.pipe.run_jobs([Job(f"hybrid_nll_{v}_seed{s}", [VERSION, mhash, heldout], _nll_step,
                                              (m["hf"], heldout, *enc))])
    params = {v: models[v][0]["params"] for v in variants}
    seeds = {v: list(variants[v][0]) for v in variants}
    cmp = ctx.pipe.run("hybrid_compare", [VERSION, evals, nlls, params, seeds, labels,
                                          *(ctx.file_hash(Path(e["dir"]) / "items.jsonl")
                                            for ev in evals.values() for es in ev.values() for e in es)],
                       lambda d: _compare_step(evals, nlls, params, seeds, labels, d))
    print(cmp["markdown"])
    return {"markdown": cmp["markdown"], "json": cmp["json"], "params": params}

