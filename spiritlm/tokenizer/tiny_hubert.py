"""The demo tokenizer: a tiny HuBERT trained on the demo corpus (HuBERT iteration 1).

No pretrained HuBERT can be downloaded here, so ``fit_demo_tokenizer`` trains one from scratch
(:func:`~spiritlm.tokenizer.tiny_hubert_train.train_tiny_hubert`: masked prediction of MFCC
k-means targets), then fits k-means on one of its layers and writes the tokenizer directory plus
``metrics.json`` with PNMI (against the manifest's phone labels) of MFCC k-means, random-init
HuBERT k-means and trained HuBERT k-means units on the held-out split, codebook perplexity,
units/s after dedup and bitrate.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from spiritlm.tokenizer.config import TokenizerCfg, check_one_unit_family
from spiritlm.tokenizer.corpus_audio import corpus_files, iter_wavs
from spiritlm.tokenizer.fit import fit_tokenizer
from spiritlm.tokenizer.metrics import unit_metrics  # noqa: F401  (re-exported: its home before the unit report)
from spiritlm.tokenizer.mfcc_units import mfcc
from spiritlm.tokenizer.tiny_hubert_train import train_tiny_hubert

log = logging.getLogger(__name__)


def evaluate_units(cfg: TokenizerCfg, trained_model, train_rows, eval_rows, seed: int = 0) -> dict:
    """PNMI etc. of MFCC / random-init HuBERT / trained HuBERT k-means units on ``eval_rows``."""
    from spiritlm.tokenizer.hubert import HubertFeaturizer, conv_out_length
    from spiritlm.tokenizer.metrics import word_unit_consistency
    from spiritlm.tokenizer.report import fit_kmeans, frame_units
    from transformers import HubertModel

    k = cfg.units.k
    train = list(iter_wavs(train_rows[:150], cfg.demo.hop * 2))  # k-means data for the 3 systems
    evals = list(iter_wavs(eval_rows, cfg.demo.hop * 2))
    seconds = sum(len(w) for _, w in evals) / 16000
    torch.manual_seed(seed + 1)
    random_model = HubertModel(trained_model.config).eval()
    out = {"eval_seconds": round(seconds, 1), "k": k}

    def run(name, featurize, rate):
        q = fit_kmeans(featurize, [w for _, w in train], k, seed, cfg.units.niter, cfg.units.max_frames)
        units, labels = frame_units(featurize, q, evals, rate)
        out[name] = unit_metrics(units, labels, seconds, k)
        out[name]["word_unit_distance"] = word_unit_consistency(
            units, [u.words for u, _ in evals], [u.speaker for u, _ in evals], rate, seed=seed)
        log.info("%s: %s", name, out[name])

    layer = cfg.hubert.layer
    feat_trained = HubertFeaturizer(trained_model, layer, device="cpu")
    rate = feat_trained.frame_rate
    ks, ss = list(trained_model.config.conv_kernel), list(trained_model.config.conv_stride)
    run("mfcc_kmeans", lambda ws: [mfcc(w, cfg.demo.hop, int(conv_out_length(len(w), ks, ss))) for w in ws], rate)
    run("random_hubert_kmeans", HubertFeaturizer(random_model, layer, device="cpu").features_many, rate)
    run("trained_hubert_kmeans", feat_trained.features_many, rate)
    return out


def evaluate_prosody(tokenizer_dir: Path, eval_rows) -> dict:
    """Held-out report of the pitch and style streams of a fitted tokenizer: F0 reconstruction
    error in cents through the VQ-VAE (voiced frames), codebook perplexity, tokens/s."""
    from spiritlm.tokenizer.f0_vqvae import cents_error
    from spiritlm.tokenizer.metrics import perplexity
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.load(tokenizer_dir, device="cpu")
    out: dict = {}
    wavs = list(iter_wavs(eval_rows, 1280))
    seconds = sum(len(w) for _, w in wavs) / 16000
    if tok.pitch_model is not None:
        pc, codes, errs = tok.cfg.pitch, [], []
        for u, w in wavs:
            f0, x, used = tok.pitch_features(w, u.speaker)  # the features encode() quantizes
            c = tok.pitch_model.encode(x)
            hat = tok.pitch_model.decode(c, used, voicing=False)
            n = min(len(hat), len(f0))
            errs.append(cents_error(f0[:n], hat[:n]))
            codes.append(c)
        allc = np.concatenate(codes)
        out["pitch"] = {"cents_error": round(float(np.nanmean(errs)), 1), "codebook": pc.codebook,
                        "perplexity": round(perplexity(allc, pc.codebook), 1),
                        "tokens_per_s": round(len(allc) / seconds, 2), "method": pc.method}
    if tok.style_quantizer is not None:
        st = [r["style"] for r in tok.encode_many([w for _, w in wavs], streams=["hubert", "style"])
              if not isinstance(r, Exception)]
        alls = np.concatenate(st)
        out["style"] = {"k": tok.style_quantizer.size, "perplexity": round(perplexity(alls, tok.style_quantizer.size), 1),
                        "tokens_per_s": round(len(alls) / seconds, 2)}
    log.info("prosody streams on %.0f s of held-out speech: %s", seconds, out)
    return out


def fit_demo_tokenizer(cfg: TokenizerCfg, manifest: str | Path, out_dir: str | Path = "out/tokenizer-demo",
                       evaluate: bool = True, progress: bool = True) -> Path:
    """Train the tiny HuBERT, fit its k-means, save the tokenizer dir (+ metrics.json); returns the dir."""
    t0 = time.perf_counter()
    if not cfg.demo.enabled:
        raise ValueError("fit_demo_tokenizer needs demo.enabled=true (use tokenizers/demo.toml)")
    check_one_unit_family(cfg)
    rows = corpus_files(manifest, cfg.fit.split, cfg.fit.max_files)
    model = train_tiny_hubert(cfg.demo, rows, cfg.seed, progress)
    out = fit_tokenizer(cfg, manifest, out_dir, model=model, progress=progress)
    metrics = {"train": getattr(model, "train_log", {}), "fit_seconds": round(time.perf_counter() - t0, 1)}
    if evaluate:
        eval_split = "heldout"
        try:
            eval_rows = corpus_files(manifest, eval_split, cfg.demo.eval_max_files)
        except ValueError:
            eval_rows = rows[-max(1, len(rows) // 10):]
        metrics["units"] = evaluate_units(cfg, model, rows, eval_rows, cfg.seed)
        if cfg.pitch.enabled or cfg.style.enabled:
            metrics["prosody"] = evaluate_prosody(out, eval_rows[:40])
        metrics["total_seconds"] = round(time.perf_counter() - t0, 1)
    (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return Path(out)
