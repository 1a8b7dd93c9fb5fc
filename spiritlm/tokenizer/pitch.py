"""F0 at 200 frames/s (hop 80 samples at 16 kHz) with YAAPT or Praat, and its normalisation.

``extract_f0(wav, method)`` returns one value per 5 ms frame (0 = unvoiced), ``n_samples // 80``
frames. ``f0_features`` turns that into the VQ-VAE input: log-F0 interpolated over unvoiced
frames (edges take the nearest voiced value), minus a mean log-F0 (utterance or speaker
normalisation), stacked with the voiced/unvoiced flag -> (2, T). This is our own pitch
tokenizer's input, unchanged; the release's (F0 in Hz minus the mean voiced F0, its extractor's
voicing flag, its pYAAPT settings) is in ``release_f0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

HOP = 80  # samples at 16 kHz -> 200 frames/s
FRAME_RATE = 200.0


@dataclass
class PitchCfg:
    enabled: bool = False
    method: Literal["yaapt", "praat"] = "yaapt"  # YAAPT = the paper's quantizer training F0
    norm: Literal["none", "utterance", "speaker"] = "utterance"
    f0_min: float = 60.0
    f0_max: float = 500.0
    path: str = ""  # trained VQ-VAE (.safetensors) to load instead of training on `fit`
    codebook: int = 64
    train_steps: int = 1500
    batch_size: int = 32
    segment_frames: int = 256  # 1.28 s training windows
    lr: float = 2e-3
    max_files: int = 2000


def n_frames(n_samples: int) -> int:
    return int(n_samples) // HOP


def extract_f0(wav: np.ndarray, method: str = "yaapt", f0_min: float = 60.0, f0_max: float = 500.0) -> np.ndarray:
    wav = np.asarray(wav, dtype=np.float64)
    T = n_frames(len(wav))
    if method == "yaapt":
        f0 = _yaapt(wav, f0_min, f0_max)
    elif method == "praat":
        f0 = _praat(wav, f0_min, f0_max, T)
    else:
        raise ValueError(f"pitch.method must be 'yaapt' or 'praat', got {method!r}")
    f0 = np.nan_to_num(np.asarray(f0, dtype=np.float32), nan=0.0)
    f0[f0 < 0] = 0
    if len(f0) >= T:
        return f0[:T]
    return np.pad(f0, (0, T - len(f0)))


def _yaapt(wav: np.ndarray, f0_min: float, f0_max: float) -> np.ndarray:
    import amfm_decompy.basic_tools as basic
    import amfm_decompy.pYAAPT as pYAAPT

    # 20 ms analysis frames every 5 ms; pad half a frame each side so frame i is centred at 5i ms
    pad = 160
    sig = basic.SignalObj(np.pad(wav, (pad, pad)), 16000)
    p = pYAAPT.yaapt(sig, frame_length=20.0, frame_space=5.0, f0_min=f0_min, f0_max=f0_max)
    return p.samp_values


def _praat(wav: np.ndarray, f0_min: float, f0_max: float, T: int) -> np.ndarray:
    import parselmouth

    snd = parselmouth.Sound(wav, sampling_frequency=16000)
    pitch = snd.to_pitch_ac(time_step=HOP / 16000, pitch_floor=f0_min, pitch_ceiling=f0_max)
    times = pitch.xs()
    vals = pitch.selected_array["frequency"]
    grid = (np.arange(T) + 0.5) * HOP / 16000
    if len(times) == 0:
        return np.zeros(T, np.float32)
    idx = np.clip(np.searchsorted(times, grid), 0, len(times) - 1)
    prev = np.clip(idx - 1, 0, len(times) - 1)
    near = np.where(np.abs(times[prev] - grid) < np.abs(times[idx] - grid), prev, idx)
    out = vals[near]
    out[np.abs(times[near] - grid) > HOP / 16000] = 0.0
    return out


def interpolate_log_f0(f0_T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (log-F0 linearly interpolated over unvoiced frames, voiced mask). All-unvoiced -> zeros."""
    f0_T = np.asarray(f0_T, dtype=np.float64)
    vuv = f0_T > 0
    if not vuv.any():
        return np.zeros(len(f0_T), np.float32), vuv
    t = np.arange(len(f0_T))
    lf = np.interp(t, t[vuv], np.log(f0_T[vuv]))
    return lf.astype(np.float32), vuv


def mean_log_f0(f0s: list[np.ndarray]) -> float:
    v = np.concatenate([np.log(f[f > 0]) for f in f0s if (f > 0).any()] or [np.zeros(0)])
    return float(v.mean()) if v.size else 0.0


def f0_features(f0_T: np.ndarray, mean: float | None = None) -> tuple[np.ndarray, float]:
    """(2, T) VQ-VAE input [log-F0 - mean, vuv] and the mean used (utterance mean if None)."""
    lf, vuv = interpolate_log_f0(f0_T)
    if mean is None:
        mean = mean_log_f0([np.asarray(f0_T)])
    x = np.stack([np.where(lf != 0, lf - mean, 0.0), vuv.astype(np.float32)]).astype(np.float32)
    if not vuv.any():
        x[0] = 0.0
    return x, float(mean)
