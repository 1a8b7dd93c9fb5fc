"""``spiritlm tokenizer fit``: train codebooks on a corpus and write a tokenizer directory.

Steps (each skipped when the recipe already points at a trained file):

1. HuBERT: ``hubert.path`` (HF dir or fairseq .pt), or the demo's tiny HuBERT (``demo.enabled``);
   the semantic encoder instead when ``semantic.enabled``; none for MFCC units (``mfcc.enabled``).
2. HuBERT units: layer features of the ``fit.split`` files flow through a fixed-size reservoir
   (``units.max_frames`` frames, uniform over the corpus), then faiss k-means (``units.k``).
3. Pitch (``pitch.enabled``): F0 of up to ``pitch.max_files`` files, per-speaker mean log-F0,
   F0 VQ-VAE training.
4. Style (``style.enabled``, kmeans kind): 1 s mean-pooled layer features -> k-means (``style.k``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from spiritlm.config import save_config
from spiritlm.tokenizer.config import TokenizerCfg, check_one_unit_family
from spiritlm.tokenizer.corpus_audio import corpus_files, iter_wavs

log = logging.getLogger(__name__)


def _batches(items, seconds: float):
    cur, tot = [], 0.0
    for u, w in items:
        cur.append((u, w))
        tot += len(w) / 16000
        if tot >= seconds:
            yield cur
            cur, tot = [], 0.0
    if cur:
        yield cur


def fit_tokenizer(cfg: TokenizerCfg, manifest: str | Path, out_dir: str | Path, model=None,
                  progress: bool = True) -> Path:
    from spiritlm.tokenizer.hubert import load_hubert
    from spiritlm.tokenizer.kmeans import FrameReservoir, KMeansQuantizer, LinearQuantizer, train_kmeans
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer, featurizer_for
    from spiritlm.tokenizer.style import pool_windows

    t0 = time.perf_counter()
    check_one_unit_family(cfg)
    out_dir = Path(out_dir)
    rows = corpus_files(manifest, cfg.fit.split, cfg.fit.max_files)
    if model is None and not cfg.mfcc.enabled:  # MFCC units have no encoder
        if cfg.semantic.enabled:
            model = _semantic_encoder(cfg, manifest, rows, progress)
        elif cfg.demo.enabled:
            from spiritlm.tokenizer.tiny_hubert_train import train_tiny_hubert

            model = train_tiny_hubert(cfg.demo, rows, seed=cfg.seed, progress=progress)
        else:
            model = load_hubert(cfg.hubert.path)
    feat = featurizer_for(cfg, model)
    need_units = not cfg.units.path
    style_kmeans = cfg.style.enabled and cfg.style.kind == "kmeans" and not cfg.style.path
    style_feat = featurizer_for(cfg, model, layer=cfg.style.layer) if style_kmeans else None
    res = FrameReservoir(cfg.units.max_frames, seed=cfg.seed)
    style_res = FrameReservoir(cfg.style.max_windows, seed=cfg.seed + 1)
    if need_units or style_kmeans:
        it = _batches(iter_wavs(rows, feat.hop), cfg.fit.batch_seconds)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc="features", unit="batch")
        for batch in it:
            wavs = [w for _, w in batch]
            if need_units:  # with style k-means too: both layers from one pass
                units_feats, style_feats = feat.features_with(style_feat, wavs)
                for f in units_feats:
                    res.add(f)
            else:
                style_feats = style_feat.features_many(wavs)
            if style_feat is not None:
                for w, f in zip(wavs, style_feats):
                    style_res.add(pool_windows(f, len(w), style_feat.frame_rate))
    if need_units:
        if cfg.units.kind != "kmeans":
            raise ValueError("units.kind='linear' cannot be trained here: give units.path (a LinearQuantizer state_dict)")
        log.info("k-means k=%d on %d of %d frames", cfg.units.k, res.filled, res.seen)
        quant = KMeansQuantizer(train_kmeans(res.sample(), cfg.units.k, cfg.units.niter, cfg.seed))
    elif cfg.units.kind == "linear":
        quant = LinearQuantizer.load(cfg.units.path)
    else:
        quant = KMeansQuantizer.load(cfg.units.path, allow_pickle=cfg.units.allow_pickle)
    pitch_model, speaker_f0 = None, {}
    if cfg.pitch.enabled:
        pitch_model, speaker_f0 = _fit_pitch(cfg, rows, progress)
    style_q = None
    if cfg.style.enabled:
        if style_kmeans:
            style_q = KMeansQuantizer(train_kmeans(style_res.sample(), cfg.style.k, cfg.style.niter, cfg.seed))
        elif cfg.style.kind == "kmeans":
            style_q = KMeansQuantizer.load(cfg.style.path)
        else:
            from spiritlm.tokenizer.style import StyleClassifier

            style_q = StyleClassifier(cfg.style.path)
        if style_feat is None and cfg.style.kind == "kmeans":
            style_feat = featurizer_for(cfg, model, layer=cfg.style.layer)
    tok = SpeechTokenizer(cfg, feat, quant, pitch_model, style_q, style_feat, speaker_f0)
    tok.save(out_dir)
    save_config(cfg, out_dir / "fit_config.yaml")
    if cfg.semantic.enabled and getattr(model, "train_log", None):  # after save: not in the hashed manifest
        (out_dir / "metrics.json").write_text(json.dumps({"semantic_encoder": model.train_log}, indent=1))
    log.info("tokenizer fitted in %.1f s -> %s", time.perf_counter() - t0, out_dir)
    return out_dir


def _semantic_encoder(cfg: TokenizerCfg, manifest, rows, progress: bool):
    """The recipe's semantic encoder: loaded from ``semantic.path``, else the CTC conformer
    trained here on the fit split's transcripts (held-out WER from the manifest's other split)."""
    from spiritlm.tokenizer.semantic import load_semantic_encoder, pool_factor, train_ctc_conformer

    sc = cfg.semantic
    if sc.path:
        model = load_semantic_encoder(sc.kind, sc.path)
    elif sc.kind == "hf":
        raise ValueError("semantic.kind='hf' needs semantic.path (a local HF *ForCTC directory); only the "
                         "conformer kind is trained here")
    else:  # refuse a bad rate or layer before minutes of training, not after
        pool_factor(sc.frame_rate, 1000.0 / (sc.conformer.hop_ms * sc.conformer.subsample))
        if not 0 <= sc.layer <= sc.conformer.layers:
            raise ValueError(f"semantic.layer={sc.layer} but semantic.conformer.layers={sc.conformer.layers}; "
                             f"pick 1..{sc.conformer.layers} (0 = the last)")
        held = [r for r in corpus_files(manifest, "", 0) if r[0].split != (cfg.fit.split or r[0].split)]
        model = train_ctc_conformer(sc, rows, held, seed=cfg.seed, progress=progress)
    return model


def _fit_pitch(cfg: TokenizerCfg, rows, progress: bool):
    from spiritlm.tokenizer.f0_vqvae import load_vqvae, train_vqvae
    from spiritlm.tokenizer.pitch import extract_f0, f0_features, mean_log_f0

    pc = cfg.pitch
    f0s, spk = [], []
    it = iter_wavs(rows[: pc.max_files])
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=min(len(rows), pc.max_files), desc=f"f0 ({pc.method})", unit="file")
    for u, w in it:
        f0s.append(extract_f0(w, pc.method, pc.f0_min, pc.f0_max))
        spk.append(u.speaker)
    speaker_f0 = {s: mean_log_f0([f for f, s2 in zip(f0s, spk) if s2 == s]) for s in sorted(set(spk))}
    if pc.path:
        return load_vqvae(pc.path), speaker_f0
    feats = []
    for f, s in zip(f0s, spk):
        mean = speaker_f0[s] if pc.norm == "speaker" else (0.0 if pc.norm == "none" else None)
        feats.append(f0_features(f, mean)[0])
    model = train_vqvae(feats, pc.codebook, pc.train_steps, pc.batch_size, pc.segment_frames, pc.lr,
                        cfg.seed, progress)
    return model, speaker_f0
