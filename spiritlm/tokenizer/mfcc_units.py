"""MFCC k-means units: a unit family with no encoder (``[mfcc] enabled = true`` in a tokenizer recipe).

13 MFCCs + deltas + delta-deltas per frame (25-ms Hamming window, one frame per ``hop`` samples,
per-utterance mean and variance normalisation), quantised by k-means like HuBERT's layer features.
They are the targets of HuBERT's first training iteration (and of the demo's tiny HuBERT) and
the classic baseline of unit studies: what a trained encoder adds is measured against them
(``spiritlm tokenizer report``). As a tokenizer directory they go through every stage unchanged --
``[Hu*]`` rows, dedup, interleaving, the vocoder fit -- with the layout's ``unit_family = "mfcc"``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

WINDOW = 400  # 25 ms at 16 kHz


def _mel_filterbank(n_fft: int = 512, n_mels: int = 40, sr: int = 16000) -> np.ndarray:
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    imel = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    pts = imel(np.linspace(mel(20), mel(sr / 2), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, 1 / sr)
    fb = np.zeros((n_mels, len(bins)))
    for i in range(n_mels):
        lo, c, hi = pts[i : i + 3]
        fb[i] = np.clip(np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)), 0, None)
    return fb


_FB = None


def mfcc(wav: np.ndarray, hop: int = 320, n_frames: int | None = None) -> np.ndarray:
    """(T, 39) MFCC + deltas + delta-deltas, WINDOW-sample (25-ms) windows every ``hop``, per-utterance CMVN."""
    global _FB
    from scipy.fft import dct

    if _FB is None:
        _FB = _mel_filterbank()
    wav = np.asarray(wav, dtype=np.float32)
    if len(wav) < WINDOW:
        wav = np.pad(wav, (0, WINDOW - len(wav)))
    T = (len(wav) - WINDOW) // hop + 1
    idx = np.arange(WINDOW)[None, :] + hop * np.arange(T)[:, None]
    frames = wav[idx] * np.hamming(WINDOW)[None].astype(np.float32)
    power = np.abs(np.fft.rfft(frames, 512)) ** 2
    c = dct(np.log(power @ _FB.T + 1e-8), type=2, norm="ortho", axis=1)[:, :13]
    d1 = np.gradient(c, axis=0) if T > 1 else np.zeros_like(c)
    d2 = np.gradient(d1, axis=0) if T > 1 else np.zeros_like(c)
    x = np.concatenate([c, d1, d2], 1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-5)
    if n_frames is not None:
        x = x[:n_frames] if len(x) >= n_frames else np.pad(x, ((0, n_frames - len(x)), (0, 0)), mode="edge")
    return x.astype(np.float32)


class MfccFeaturizer:
    """The featurizer protocol of HuBERT's and the semantic encoder's (``features_many``,
    ``features_with``, ``frame_rate``, ``hop``, ``dim``, ``model``) over :func:`mfcc`. A file
    shorter than one window gives one (zero-padded) frame."""

    model = None  # nothing to save or load
    layer = 0
    dim = 39

    def __init__(self, hop: int = 320):
        if not isinstance(hop, int) or hop < 1 or 16000 % hop:
            raise ValueError(f"mfcc.hop={hop!r}: give a whole number of samples dividing 16000 "
                             "(320 = 50 Hz frames, 640 = 25 Hz)")
        self.hop = hop
        self.frame_rate = 16000 / hop
        self.min_chunk = 1
        self.max_chunk = 1 << 62  # whole files: the normalisation is per utterance

    def features_many(self, wavs: Sequence[np.ndarray], progress: bool = False) -> list[np.ndarray]:
        return [mfcc(w, self.hop) for w in wavs]

    def features(self, wav: np.ndarray) -> np.ndarray:
        return mfcc(wav, self.hop)

    def shares_pass_with(self, other) -> bool:
        return False

    def features_with(self, other, wavs: Sequence[np.ndarray], progress: bool = False):
        if other is not None:
            raise ValueError("MFCC units have no encoder layer for style k-means; use style.kind = 'classifier' "
                             "or another unit family")
        return self.features_many(wavs, progress), None

    def num_frames(self, n_samples: int) -> int:
        return max((n_samples - WINDOW) // self.hop + 1, 1)
