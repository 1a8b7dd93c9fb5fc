"""Meta's released speech tokenizer, loaded from its ``speech_tokenizer/`` folder as shipped.

    tok = SpeechTokenizer.from_release("checkpoints/speech_tokenizer", variant="expressive")
    units = tok.encode("a.wav")   # {"hubert", "pitch", "style"}: the streams before dedup
    tok.to_string(units)          # the release's string

Layout read (facts of the release, our own loaders):

    speech_tokenizer/
      hubert_25hz/mhubert_base_25hz.pt      converted HuBERT {model_cfg, task_cfg, model_weight, dictionaries_symbols}
      hubert_25hz/L11_quantizer_500.pt      {model_cfg: {vocab_size, dim, upstream_dim}, model_weight}
      vqvae_f0_quantizer/{config.yaml, model.pt}          F0 VQ-VAE (expressive)
      style_encoder_w2v2/{config.json, pytorch_model.bin} wav2vec2 style classifier (expressive)

Release behaviour kept: audio in chunks of at most 100 s, chunks under 1280 samples dropped, every
stream computed per chunk (blank filling of the unit quantizer wraps within a chunk); HuBERT
layer 11 in fp32; YAAPT F0 with the release's settings (its default FCPE cannot run here).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

HUBERT_FILE = "hubert_25hz/mhubert_base_25hz.pt"
UNITS_FILE = "hubert_25hz/L11_quantizer_500.pt"
PITCH_DIR = "vqvae_f0_quantizer"
STYLE_DIR = "style_encoder_w2v2"
VARIANTS = ("base", "expressive")


def resolve_release_dir(path: str | Path, root: Path | None = None) -> Path:
    """The ``speech_tokenizer/`` folder (its parent ``checkpoints/`` is accepted too)."""
    if not str(path):
        raise ValueError("release.path is empty: point it at the release's checkpoints/speech_tokenizer/ folder")
    d = Path(path)
    if root is not None and not d.is_absolute():
        d = root / d
    if not d.is_dir():
        raise FileNotFoundError(f"release folder not found: {d} (the release's checkpoints/speech_tokenizer/)")
    if not (d / "hubert_25hz").is_dir() and (d / "speech_tokenizer" / "hubert_25hz").is_dir():
        d = d / "speech_tokenizer"
    if not (d / "hubert_25hz").is_dir():
        raise FileNotFoundError(f"{d}: no hubert_25hz/ folder -- not the release's speech_tokenizer/ folder "
                                f"(expected {HUBERT_FILE}, {UNITS_FILE}, {PITCH_DIR}/, {STYLE_DIR}/)")
    return d


def release_files(directory: Path, variant: str, units_path: str = "") -> list[Path]:
    """The files a variant reads (for sha256 records in tokenizer directories that point here)."""
    files = [directory / HUBERT_FILE, Path(units_path) if units_path else directory / UNITS_FILE]
    if variant == "expressive":
        files += [directory / PITCH_DIR / "config.yaml", directory / PITCH_DIR / "model.pt",
                  directory / STYLE_DIR / "config.json"]
        files += [p for p in (directory / STYLE_DIR / "pytorch_model.bin", directory / STYLE_DIR / "model.safetensors")
                  if p.is_file()]
    return files


def build_from_release(cls, cfg, root: Path | None = None):
    """``SpeechTokenizer`` (class ``cls``) for ``cfg.release``; ``cfg.units.path`` may name another
    unit file of the family (e.g. a k-means ``.pt``) to use instead of the linear quantizer."""
    from spiritlm.tokenizer.hubert import HubertFeaturizer, load_hubert
    from spiritlm.tokenizer.kmeans import KMeansQuantizer, LinearQuantizer

    rc = cfg.release
    if rc.variant not in VARIANTS:
        raise ValueError(f"release.variant={rc.variant!r}: choose one of {VARIANTS}")
    d = resolve_release_dir(rc.path, root)
    for p in release_files(d, rc.variant, cfg.units.path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing from the release folder (variant {rc.variant!r} needs it)")
    feat = HubertFeaturizer.from_cfg(cfg.hubert, load_hubert(d / HUBERT_FILE))
    units_path = Path(cfg.units.path) if cfg.units.path else d / UNITS_FILE
    if cfg.units.path and cfg.units.kind == "kmeans":
        quant = KMeansQuantizer.load(units_path, allow_pickle=cfg.units.allow_pickle)
    else:
        quant = LinearQuantizer.load(units_path, blank_rule=cfg.units.blank_rule or None)
    if quant.dim != feat.dim:
        raise ValueError(f"{units_path}: the quantizer takes {quant.dim}-dim features, but layer {feat.layer} of "
                         f"{d / HUBERT_FILE} gives {feat.dim}")
    cfg = dataclasses.replace(cfg)
    cfg.release = dataclasses.replace(rc, path=str(d.resolve()))
    cfg.units = dataclasses.replace(cfg.units, kind=quant.kind, path=str(units_path.resolve()),
                                    blank_rule=getattr(quant, "blank_rule", ""))
    pitch = style = None
    if rc.variant == "expressive":
        from spiritlm.tokenizer.release_f0 import ReleasePitchTokenizer
        from spiritlm.tokenizer.release_style import ReleaseStyleEncoder

        dev = str(feat.device)
        pitch = ReleasePitchTokenizer(d / PITCH_DIR, rc.f0_method, device=dev, max_chunk=feat.max_chunk,
                                      min_chunk=feat.min_chunk)
        style = ReleaseStyleEncoder(d / STYLE_DIR, device=dev, max_chunk=feat.max_chunk, min_chunk=feat.min_chunk)
    cfg.pitch = dataclasses.replace(cfg.pitch, enabled=pitch is not None, method="yaapt", norm="utterance",
                                    path=str((d / PITCH_DIR).resolve()) if pitch else "",
                                    codebook=pitch.size if pitch else cfg.pitch.codebook)
    cfg.style = dataclasses.replace(cfg.style, enabled=style is not None, kind="classifier",
                                    path=str((d / STYLE_DIR).resolve()) if style else "")
    return cls(cfg, feat, quant, pitch, style, None)
