"""Style tokens at 1 Hz.

Two kinds:

* ``kmeans`` (the paper's recipe, without its Expresso fine-tuning step): features of a speech
  encoder layer mean-pooled over consecutive 1 s windows (the last, partial window included)
  and quantized with k-means (100 units).
* ``classifier`` (the release's kind): a ``Wav2Vec2ForSequenceClassification`` loaded from a
  local directory, run on each 1 s window; the token is the argmax over its (100) classes.

A file of ``n`` samples gives ``ceil(n / 16000)`` style tokens (9.12 s -> 10, like the release).
The release's own style encoder (whole-utterance normalisation, one wav2vec2 pass, 50-frame mean
pooling) is ``release_style.ReleaseStyleEncoder``; these two kinds keep their behaviour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

WINDOW = 16000  # samples: 1 s at 16 kHz


@dataclass
class StyleCfg:
    enabled: bool = False
    kind: Literal["kmeans", "classifier"] = "kmeans"
    layer: int = 6  # encoder layer pooled for the kmeans kind
    k: int = 100
    niter: int = 30
    path: str = ""  # centroids .npy (kmeans) or a Wav2Vec2ForSequenceClassification dir (classifier)
    max_windows: int = 200_000


def n_windows(n_samples: int) -> int:
    return max(1, math.ceil(int(n_samples) / WINDOW))


def pool_windows(feats_TD: np.ndarray, n_samples: int, frame_rate: float) -> np.ndarray:
    """Mean-pool frame features over 1 s windows -> (ceil(n_samples / 16000), D)."""
    W = n_windows(n_samples)
    out = np.zeros((W, feats_TD.shape[1]), np.float32)
    if len(feats_TD) == 0:
        return out
    win = np.minimum((np.arange(len(feats_TD)) / frame_rate).astype(np.int64), W - 1)
    np.add.at(out, win, feats_TD)
    counts = np.bincount(win, minlength=W).astype(np.float32)
    filled = counts > 0
    out[filled] /= counts[filled, None]
    for w in np.flatnonzero(~filled):  # a window without frames (tiny tail) copies its left one
        out[w] = out[w - 1] if w > 0 else out[min(w + 1, W - 1)]
    return out


class StyleClassifier:
    """The release's style encoder kind: argmax of a sequence classifier over 1 s windows."""

    kind = "classifier"

    def __init__(self, path: str, device: str = "cpu"):
        from transformers import Wav2Vec2ForSequenceClassification

        self.model = Wav2Vec2ForSequenceClassification.from_pretrained(path).eval().to(device)
        self.device = device
        self.size = int(self.model.config.num_labels)

    @torch.inference_mode()
    def __call__(self, wav: np.ndarray) -> np.ndarray:
        W = n_windows(len(wav))
        x = np.zeros((W, WINDOW), np.float32)
        lens = np.zeros(W, np.int64)
        for w in range(W):
            seg = wav[w * WINDOW : (w + 1) * WINDOW]
            x[w, : len(seg)] = seg
            lens[w] = len(seg)
        mask = torch.as_tensor(np.arange(WINDOW)[None] < lens[:, None]).long()
        logits = self.model(torch.as_tensor(x).to(self.device), attention_mask=mask.to(self.device)).logits
        return logits.argmax(-1).cpu().numpy().astype(np.int64)
