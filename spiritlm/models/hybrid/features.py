"""Per-frame continuous features aligned with the speech units, and their store.

:class:`FrameFeaturizer` turns a 16 kHz waveform into ``(n_frames, dim)`` features at the unit
frame rate, ``n_frames`` being the number of units the speech tokenizer gave that audio (frames
beyond the featurizer's own count repeat its last frame; a difference of more than 2 frames
means another tokenizer, and raises):

* ``logmel``: the continuous family's :class:`~spiritlm.models.continuous.encoders.LogMel`
  (25 ms Hann windows every ``mel_hop_ms``) with ``n_mels`` bins; unit frame ``t`` is the mean
  of the ``r = hop_unit / hop_mel`` mel frames that *end* with mel frame ``r * t`` -- the window
  that starts where the unit's CNN frame starts (wav2vec2/HuBERT CNN: 400-sample window,
  hop 320/640). No sample after the unit's own CNN window enters its feature, so a feature
  tells the LM nothing about unit ``t + 1`` that unit ``t``'s own audio does not.
* ``hubert``: the frames of the speech tokenizer's HuBERT (``HubertEncoder``), the very frames
  the units are quantised from.

The store (:func:`build_feature_store`) is the data stage's: every aligned record of the shard
folders gets its features computed once from its audio (looked up by record id in the aligned
manifests) and written as Parquet shards through the continuous family's
:class:`~spiritlm.models.continuous.data.FeatureCache` (``id, n_frames, dim, feats`` and the
size and SHA-256 of the audio each record's features came from). The store's folder is keyed by
the feature settings; each record by its audio's bytes, so a manifest that points an id at other
audio, or a file rewritten in place, gets that record's features computed again (logged with
the count), never the old audio's. Same inputs -> same bytes (tested). ``spiritlm hybrid
features`` builds it from the command line.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from spiritlm.config import ConfigError
from spiritlm.models.hybrid.config import FeatureConfig

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000


class FrameFeaturizer:
    def __init__(self, cfg: FeatureConfig, frame_rate: float):
        if cfg.kind == "none":
            raise ValueError("features.kind='none' has no featurizer")
        self.cfg = cfg
        self.frame_rate = float(cfg.frame_rate or frame_rate)
        self.unit_hop = SAMPLE_RATE / self.frame_rate
        if cfg.kind == "logmel":
            from spiritlm.models.continuous.encoders import LogMel

            self.mel = LogMel(cfg.n_mels, cfg.mel_hop_ms)
            ratio = self.unit_hop / self.mel.hop
            if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
                raise ConfigError(f"hybrid.features.mel_hop_ms={cfg.mel_hop_ms}: the unit hop ({self.unit_hop:g} "
                                  "samples) must be a whole number of mel hops")
            self.ratio = int(round(ratio))
            self.dim = cfg.n_mels
        else:
            from spiritlm.models.continuous.encoders import HubertEncoder

            self.enc = HubertEncoder(cfg.hubert, cfg.layer)
            if abs(self.enc.frame_rate - self.frame_rate) > 1e-3:
                raise ConfigError(f"hybrid.features.hubert gives {self.enc.frame_rate} frames/s but the units are at "
                                  f"{self.frame_rate}: use the speech tokenizer the shards were made with")
            self.dim = self.enc.dim

    def natural(self, wav: np.ndarray) -> np.ndarray:
        """Features at the unit rate, as many frames as the featurizer itself gives."""
        w = torch.as_tensor(np.asarray(wav, dtype=np.float32))
        with torch.no_grad():
            if self.cfg.kind == "logmel":
                if w.numel() < self.mel.win:
                    return np.zeros((0, self.dim), np.float32)
                mel_TD, _ = self.mel(w[None], torch.tensor([w.numel()]))
                mel_TD = mel_TD[0]
                T = (mel_TD.shape[0] - 1) // self.ratio + 1  # unit frames whose CNN window starts inside
                # frame t: the mean of mel frames r*t - r + 1 .. r*t (clamped at 0)
                idx = (torch.arange(T)[:, None] * self.ratio + torch.arange(-self.ratio + 1, 1)[None]).clamp(min=0)
                return mel_TD[idx].mean(dim=1).numpy().astype(np.float32)
            x, lens = self.enc([w.numpy()])
            return x[0, : int(lens[0])].float().numpy()

    def __call__(self, wav: np.ndarray, n_frames: int) -> np.ndarray:
        return fit_frames(self.natural(wav), n_frames)


def fit_frames(f_TD: np.ndarray, n_frames: int, tolerance: int = 2) -> np.ndarray:
    """Crop, or repeat the last frame, to ``n_frames`` (the units' count)."""
    if abs(f_TD.shape[0] - n_frames) > tolerance or (f_TD.shape[0] == 0 and n_frames):
        raise ValueError(f"features have {f_TD.shape[0]} frames but the units {n_frames}: the features and the "
                         "units come from different frame rates (hybrid.features.frame_rate)")
    if f_TD.shape[0] >= n_frames:
        return np.ascontiguousarray(f_TD[:n_frames])
    pad = np.repeat(f_TD[-1:], n_frames - f_TD.shape[0], axis=0)
    return np.concatenate([f_TD, pad])


class _Batch(torch.nn.Module):
    """``FeatureCache.build``'s encoder interface: list of waveforms -> (padded frames, lengths)."""

    def __init__(self, featurizer: FrameFeaturizer):
        super().__init__()
        self.f = featurizer

    def forward(self, wavs):
        from spiritlm.models.continuous.encoders import pad_frames

        feats = [torch.from_numpy(self.f.natural(w)) for w in wavs]
        return pad_frames(feats)


def feature_identity(cfg: FeatureConfig, frame_rate: float) -> dict:
    ident = {"features": asdict(cfg), "frame_rate": float(cfg.frame_rate or frame_rate), "version": 1}
    if cfg.kind == "hubert":
        from spiritlm.models.continuous.config import EncoderConfig
        from spiritlm.models.continuous.data import encoder_identity

        ident["encoder"] = encoder_identity(EncoderConfig(kind="hubert", path=cfg.hubert, layer=cfg.layer))
    return ident


def store_dir_for(run_dir: str | Path, cfg: FeatureConfig, frame_rate: float, features_dir: str = "") -> Path:
    if features_dir:
        return Path(features_dir)
    h = hashlib.sha256(json.dumps(feature_identity(cfg, frame_rate), sort_keys=True).encode()).hexdigest()[:12]
    return Path(run_dir) / "features" / h


def shard_frame_rate(shard_dir: str | Path) -> float:
    """The HuBERT frame rate the data stage recorded in the shards' metadata."""
    from spiritlm.data.shards import read_metadata

    files = sorted(Path(shard_dir).glob("*.parquet")) or sorted(Path(shard_dir).glob("*/*.parquet"))
    if not files:
        raise ConfigError(f"{shard_dir}: no Parquet shards")
    meta = read_metadata(files[0])
    rate = (meta.get("frame_rates") or {}).get("hubert")
    if not rate:
        raise ConfigError(f"{files[0]}: no HuBERT frame rate in the shard metadata; set hybrid.features.frame_rate")
    return float(rate)


def aligned_frame_counts(shard_dirs: Sequence[str | Path]) -> dict[str, int]:
    """Record id -> number of HuBERT frames, for every ``aligned`` row of the shard folders."""
    import pyarrow.parquet as pq

    from spiritlm.data.reader import verified_shard_files

    out: dict[str, int] = {}
    for d in shard_dirs:
        for f in verified_shard_files(Path(d), progress=False):
            t = pq.read_table(f, columns=["id", "kind", "hubert"])
            for uid, kind, hu in zip(t.column("id").to_pylist(), t.column("kind").to_pylist(),
                                     t.column("hubert").to_pylist()):
                if kind == "aligned" and hu is not None:
                    out[uid] = len(hu)
    return out


def audio_paths(manifests: Sequence[str | Path]) -> dict[str, str]:
    from spiritlm.manifest import read_manifest

    out = {}
    for m in manifests:
        for u in read_manifest(m):
            out[u.id] = str(u.audio_file(Path(m).parent))
    return out


def build_feature_store(shard_dirs: Sequence[str | Path], manifests: Sequence[str | Path], out_dir: str | Path,
                        cfg: FeatureConfig, frame_rate: float = 0.0, progress: bool = True):
    """Features of every aligned record of ``shard_dirs`` -> a FeatureCache in ``out_dir`` (loaded).
    Records whose audio is not in the manifests raise (they could not be trained with features)."""
    from spiritlm.models.continuous.data import FeatureCache, Utt

    rate = float(cfg.frame_rate or frame_rate or shard_frame_rate(shard_dirs[0]))
    counts = aligned_frame_counts(shard_dirs)
    paths = audio_paths(manifests)
    missing = sorted(set(counts) - set(paths))
    if missing:
        raise ConfigError(f"{len(missing)} aligned records (e.g. {missing[0]}) have no audio in hybrid.data.manifests "
                          f"{list(manifests)}: list the manifest the shards were prepared from")
    fz = FrameFeaturizer(cfg, rate)
    cache = FeatureCache(out_dir, feature_identity(cfg, rate))
    cache.load()
    utts = [Utt(uid, "", [], 0, counts[uid], paths[uid]) for uid in sorted(counts)]
    n_new = cache.build(utts, _Batch(fz), batch=8, progress=progress)
    if n_new:
        log.info("features of %d records written to %s", n_new, cache.dir)
    for uid, n in counts.items():  # aligned with the units from here on
        cache.feats[uid] = fit_frames(cache.feats[uid], n)
    return cache
