"""Demo part "streaming" (issue 22): the chunked streaming model and its non-streaming twin on the
demo's cached corpus and text start, with held-out WER for both.

    spiritlm demo --out runs/r25 --part streaming
    spiritlm demo --out runs/r25 --part streaming --set 'part_overrides.streaming=["ctc.steps=100","steps=200"]'

Steps (each cached, resumable and timed through ``ctx.pipe``):

1. ``streaming_ctc`` -- train/streaming_ctc_demo.toml: a conformer from scratch with a character
   CTC head + the LM's transcript loss (the continuous family, full attention). Its CTC head aligns
   the transcripts; its encoder is the (frozen) encoder of both models below.
2. ``streaming_chunked`` and ``streaming_baseline`` side by side -- train/streaming_demo.toml (chunks
   of 1.28 s, window 1, CTC-aligned text, ``$``) and train/streaming_baseline_demo.toml (the same
   encoder, LM start, data, steps and optimiser; full attention, transcript after the audio).
3. ``streaming_wer`` -- held-out WER of both (the chunked model with the reference chunked greedy
   decoder, the twin with greedy ``generate``), the paired difference with a bootstrap CI over
   utterances; then, when ``spiritlm.models.streaming.bench`` provides them, the long-form and
   chunk-size tables (``longform_wer`` / ``chunk_table``) on the same two models.

Overrides (``part_overrides.streaming``): ``ctc.KEY=V`` / ``chunked.KEY=V`` / ``baseline.KEY=V``
go to one stage's recipe, a plain ``KEY=V`` to the chunked model and its twin (e.g. ``steps``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from spiritlm import stats
from spiritlm.eval.fewshot import normalize_text  # the ASR normalisation (spiritlm.stats.asr_wer's)

CTC_RECIPE = "train/streaming_ctc_demo.toml"
CHUNKED_RECIPE = "train/streaming_demo.toml"
BASELINE_RECIPE = "train/streaming_baseline_demo.toml"


def _split_overrides(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"ctc": [], "chunked": [], "baseline": []}
    for it in items:
        head, _, rest = it.partition(".")
        if head in out and "=" in rest:
            out[head].append(rest)
        else:
            out["chunked"].append(it)
            out["baseline"].append(it)
    return out


def _load(recipe: Path, overrides: list[str]):
    from spiritlm.config import load_config, read_recipe
    from spiritlm.models import config_class_of_recipe

    return load_config(config_class_of_recipe(read_recipe(recipe)), recipe, overrides)


def _train(cfg, step_dir: Path) -> dict[str, Any]:
    from spiritlm.train import train

    run_dir = train(cfg)
    return {"run_dir": str(run_dir), "hf": str(Path(run_dir) / "hf")}


def paired_wer_bootstrap(items_a: list[dict], items_b: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Corpus WER of A and B on the same utterances, and B - A with a 95% bootstrap CI over
    utterances (resampled together, so the pairing is kept). Texts are normalised as the ASR
    WER does; empty text and the CI follow :mod:`spiritlm.stats`' rules."""
    by_id = {it["id"]: it for it in items_b}
    shared = [it for it in items_a if it["id"] in by_id]
    refs = [normalize_text(it["ref"]) for it in shared]
    ca = stats.word_errors(refs, [normalize_text(it["hyp"]) for it in shared])
    cb = stats.word_errors(refs, [normalize_text(by_id[it["id"]]["hyp"]) for it in shared])
    a, b = np.array([c.errors for c in ca], float), np.array([c.errors for c in cb], float)
    n = np.array([c.words for c in ca], float)
    nan = float("nan")
    if not n.sum():  # no reference words: no WER
        return {"n": len(n), "words": 0, "wer_a": nan, "wer_b": nan, "diff_b_minus_a": nan, "ci95": [nan, nan]}
    return {"n": int(len(n)), "words": int(n.sum()), "wer_a": float(a.sum() / n.sum()), "wer_b": float(b.sum() / n.sum()),
            "diff_b_minus_a": float((b.sum() - a.sum()) / n.sum()),
            "ci95": list(stats.paired_bootstrap_ci(b, a, n, n_boot=n_boot, rng=seed))}


def _wer_step(ctx, chunked: dict, baseline: dict, step_dir: Path) -> dict[str, Any]:
    from spiritlm.models.continuous.asr import evaluate_asr
    from spiritlm.models.continuous.model import load_continuous
    from spiritlm.models.streaming.decode import evaluate_stream_asr
    from spiritlm.models.streaming.model import load_streaming
    from spiritlm.transcripts import manifest_items

    # held-out utterances live in the corpus manifest: ctx.manifest (the aligned training records) has none
    items = manifest_items(ctx.corpus["manifest"], split="heldout")
    if not items:
        from spiritlm.config import ConfigError

        raise ConfigError(f"no 'heldout' utterances in {ctx.corpus['manifest']}: the WER needs held-out speech")
    s = evaluate_stream_asr(load_streaming(chunked["hf"]), items)
    b = evaluate_asr(load_continuous(baseline["hf"]), items, batch_size=8)
    cmp = paired_wer_bootstrap(b["items"], s["items"])
    (step_dir / "chunked.json").write_text(json.dumps(s, indent=1) + "\n")
    (step_dir / "baseline.json").write_text(json.dumps(b, indent=1) + "\n")
    out = {"chunked_wer": s["wer"], "baseline_wer": b["wer"], "n": s["n"], "words": s["words"],
           "chunked_minus_baseline": cmp["diff_b_minus_a"], "ci95": cmp["ci95"],
           "chunk_s": s["chunk_s"], "window": s["window"]}
    (step_dir / "wer.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def wer_markdown(w: dict) -> str:
    lo, hi = w["ci95"]
    return "\n".join([
        f"| model (held-out split, {w['n']} utterances, {w['words']} words) | WER |",
        "|---|---|",
        f"| non-streaming twin (full attention, transcript after the audio) | {100 * w['baseline_wer']:.1f}% |",
        f"| chunked streaming (chunk {w['chunk_s']} s, window {w['window']}) | {100 * w['chunked_wer']:.1f}% |",
        f"| chunked - twin (95% bootstrap CI over utterances) | {100 * w['chunked_minus_baseline']:+.1f} "
        f"[{100 * lo:+.1f}, {100 * hi:+.1f}] |"])


def run(ctx) -> dict:
    from spiritlm.pipeline import Job

    ov = _split_overrides(ctx.overrides("streaming"))
    if ctx.start is None:
        from spiritlm.config import ConfigError

        raise ConfigError("the streaming part starts its LM from the demo's text-pretrained model: run the demo "
                          "with text_pretrain_steps > 0")
    common = [f"model.checkpoint={ctx.start['hf']}", f"model.tokenizer={ctx.text_tok['dir']}",
              f"continuous.data.manifests=[{json.dumps(str(ctx.manifest))}]"]
    base_deps = [ctx.file_hash(Path(ctx.start["hf"]) / "model.safetensors"), ctx.file_hash(Path(ctx.manifest))]
    part = ctx.out / "parts" / "streaming"

    ctc_rec = ctx.recipe(CTC_RECIPE)
    ctc_cfg = _load(ctc_rec, common + [f"run_dir={part / 'ctc'}"] + ov["ctc"])
    ctc = ctx.pipe.run("streaming_ctc", base_deps + [ctx.file_hash(ctc_rec), ov["ctc"]],
                       lambda d: _train(ctc_cfg, d))
    enc = str(Path(ctc["hf"]) / "encoder.safetensors")
    stage2 = common + [f"continuous.encoder.checkpoint={enc}"]
    ch_rec, bl_rec = ctx.recipe(CHUNKED_RECIPE), ctx.recipe(BASELINE_RECIPE)
    ch_cfg = _load(ch_rec, stage2 + [f"streaming.align_model={ctc['hf']}", f"run_dir={part / 'chunked'}"]
                   + ov["chunked"])
    bl_cfg = _load(bl_rec, stage2 + [f"run_dir={part / 'baseline'}"] + ov["baseline"])
    enc_dep = ctx.file_hash(Path(enc))
    chunked, baseline = ctx.pipe.run_jobs([
        Job("streaming_chunked", base_deps + [enc_dep, ctx.file_hash(ch_rec), ov["chunked"]], _train, (ch_cfg,)),
        Job("streaming_baseline", base_deps + [enc_dep, ctx.file_hash(bl_rec), ov["baseline"]], _train, (bl_cfg,)),
    ])
    deps = [ctx.file_hash(Path(chunked["hf"]) / "model.safetensors"),
            ctx.file_hash(Path(baseline["hf"]) / "model.safetensors"), ctx.file_hash(Path(ctx.corpus["manifest"]))]
    w = ctx.pipe.run("streaming_wer", deps, lambda d: _wer_step(ctx, chunked, baseline, d))
    print("\n" + wer_markdown(w))
    out: dict[str, Any] = {"wer": w, "runs": {"ctc": ctc["run_dir"], "chunked": chunked["run_dir"],
                                              "baseline": baseline["run_dir"]}}
    try:  # deliverable 5's tables (spiritlm.models.streaming.bench, the other half of issue 22)
        from spiritlm.models.streaming import bench
    except ImportError:
        bench = None
    if bench is not None and hasattr(bench, "demo_tables"):
        out["tables"] = bench.demo_tables(ctx, chunked=chunked, baseline=baseline, ctc=ctc)
    return out
