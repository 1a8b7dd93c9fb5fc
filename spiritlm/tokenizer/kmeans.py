"""Discrete units from dense features: faiss k-means, centroid import/export, LinearQuantizer.

* :class:`FrameReservoir` samples frames uniformly across a whole corpus into a fixed memory
  budget (reservoir sampling), so k-means training memory does not grow with the corpus.
* :func:`train_kmeans` runs faiss k-means (k=500 by default) with a fixed seed.
* :class:`KMeansQuantizer` assigns frames to the nearest centroid with a faiss flat index (a GPU
  index when faiss has GPU support and a GPU is there); centroids load/save as ``.npy``.
  scikit-learn/joblib k-means files are pickles and load only with ``allow_pickle=True``.
* :class:`LinearQuantizer` is the release's alternative: a 3-layer MLP (LeakyReLU) with
  ``vocab + 1`` outputs, argmax, and the extra (last) "blank" output replaced by the nearest
  non-blank unit on its left (leading blanks take the first non-blank on their right).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


class FrameReservoir:
    """Uniform sample of at most ``max_frames`` feature frames from a stream of arrays."""

    def __init__(self, max_frames: int, seed: int = 0):
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.max_frames = int(max_frames)
        self.rng = np.random.default_rng(seed)
        self.buf_ND: np.ndarray | None = None
        self.filled = 0
        self.seen = 0

    def add(self, x_TD: np.ndarray) -> None:
        x_TD = np.asarray(x_TD, dtype=np.float32)
        if x_TD.ndim != 2 or len(x_TD) == 0:
            return
        if self.buf_ND is None:
            self.buf_ND = np.empty((self.max_frames, x_TD.shape[1]), np.float32)
        take = min(self.max_frames - self.filled, len(x_TD))
        if take:
            self.buf_ND[self.filled : self.filled + take] = x_TD[:take]
            self.filled += take
            self.seen += take
        rest = x_TD[take:]
        if len(rest):  # Algorithm R, vectorised: frame t replaces slot j ~ U[0, t] if j < cap
            t = self.seen + np.arange(len(rest))
            j = (self.rng.random(len(rest)) * (t + 1)).astype(np.int64)
            keep = j < self.max_frames
            self.buf_ND[j[keep]] = rest[keep]  # later duplicates win, as in the sequential loop
            self.seen += len(rest)

    def sample(self) -> np.ndarray:
        if self.buf_ND is None:
            raise ValueError("no features were collected: the corpus is empty or every file failed")
        return self.buf_ND[: self.filled]


def train_kmeans(x_ND: np.ndarray, k: int = 500, niter: int = 50, seed: int = 0,
                 max_points_per_centroid: int = 1000, gpu: bool = False) -> np.ndarray:
    """faiss k-means; returns centroids (k, D) float32. Deterministic for a given seed."""
    import faiss

    x_ND = np.ascontiguousarray(x_ND, dtype=np.float32)
    if len(x_ND) < k:
        raise ValueError(
            f"k-means with k={k} needs at least {k} frames, got {len(x_ND)}: use more audio or a smaller k"
        )
    km = faiss.Kmeans(x_ND.shape[1], k, niter=niter, seed=seed, verbose=False,
                      max_points_per_centroid=max_points_per_centroid, gpu=bool(gpu and _faiss_gpu()))
    km.train(x_ND)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _faiss_gpu() -> bool:
    try:
        import faiss

        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # noqa: BLE001
        return False


class KMeansQuantizer:
    """Nearest-centroid assignment through a faiss flat L2 index."""

    kind = "kmeans"

    def __init__(self, centroids_KD: np.ndarray, use_gpu: bool = True):
        import faiss

        c = np.ascontiguousarray(centroids_KD, dtype=np.float32)
        if c.ndim != 2 or len(c) == 0 or not np.isfinite(c).all():
            raise ValueError(f"centroids must be a finite (K, D) array, got shape {c.shape}")
        self.centroids_KD = c
        index = faiss.IndexFlatL2(c.shape[1])
        index.add(c)
        if use_gpu and _faiss_gpu():
            self._res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._res, 0, index)
        self.index = index

    @property
    def size(self) -> int:
        return len(self.centroids_KD)

    @property
    def dim(self) -> int:
        return self.centroids_KD.shape[1]

    def __call__(self, x_TD: np.ndarray) -> np.ndarray:
        x_TD = np.ascontiguousarray(x_TD, dtype=np.float32)
        if len(x_TD) == 0:
            return np.zeros(0, np.int64)
        if x_TD.shape[1] != self.dim:
            raise ValueError(f"features have dim {x_TD.shape[1]}, the codebook expects {self.dim}")
        _, idx = self.index.search(x_TD, 1)
        return idx[:, 0].astype(np.int64)

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        np.save(p, self.centroids_KD, allow_pickle=False)
        return p

    @classmethod
    def load(cls, path: str | Path, allow_pickle: bool = False, use_gpu: bool = True) -> "KMeansQuantizer":
        return cls(load_centroids(path, allow_pickle), use_gpu)


def load_centroids(path: str | Path, allow_pickle: bool = False) -> np.ndarray:
    """Centroids from ``.npy`` (safe) or a scikit-learn/joblib KMeans pickle (``allow_pickle``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"centroid file not found: {p}")
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False).astype(np.float32)
    if p.suffix in (".pt", ".safetensors"):
        from safetensors.numpy import load_file

        if p.suffix == ".safetensors":
            d = load_file(str(p))
            return next(iter(d.values())).astype(np.float32)
        t = torch.load(p, map_location="cpu", weights_only=True)
        return (t if isinstance(t, torch.Tensor) else next(iter(t.values()))).numpy().astype(np.float32)
    if not allow_pickle:
        raise ValueError(
            f"{p}: a scikit-learn/joblib k-means file is a pickle, which can run arbitrary code. "
            "Pass allow_pickle=True (CLI: --set hubert_units.allow_pickle=true) only for files you "
            "trust, or convert it once to .npy with numpy.save(path, km.cluster_centers_)"
        )
    import joblib

    km = joblib.load(p)
    return np.asarray(km.cluster_centers_, dtype=np.float32)


class LinearQuantizer(nn.Module):
    """3-layer MLP over features -> ``vocab + 1`` logits (last = blank); see module doc."""

    kind = "linear"

    def __init__(self, dim: int, hidden: int, vocab: int, negative_slope: float = 0.01):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.LeakyReLU(negative_slope),
            nn.Linear(hidden, hidden), nn.LeakyReLU(negative_slope),
            nn.Linear(hidden, vocab + 1),
        )
        self.vocab = vocab

    @property
    def size(self) -> int:
        return self.vocab

    @classmethod
    def from_state_dict(cls, sd: dict) -> "LinearQuantizer":
        """Build from any state_dict holding three Linear layers in order (names are ignored)."""
        ws = [(k, v) for k, v in sd.items() if k.endswith("weight") and v.ndim == 2]
        bs = [(k, v) for k, v in sd.items() if k.endswith("bias") and v.ndim == 1]
        if len(ws) != 3 or len(bs) != 3:
            raise ValueError(
                f"a LinearQuantizer state_dict needs 3 Linear weights and biases, got weights "
                f"{[k for k, _ in ws]} and biases {[k for k, _ in bs]}"
            )
        (dim, hidden), vocab = ws[0][1].shape[::-1], ws[2][1].shape[0] - 1
        if ws[1][1].shape != (hidden, hidden) or ws[2][1].shape[1] != hidden:
            raise ValueError(f"LinearQuantizer shapes do not chain: {[tuple(v.shape) for _, v in ws]}")
        q = cls(dim, hidden, vocab)
        lins = [m for m in q.net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, (_, w), (_, b) in zip(lins, ws, bs):
                lin.weight.copy_(w)
                lin.bias.copy_(b)
        return q.eval()

    @classmethod
    def load(cls, path: str | Path) -> "LinearQuantizer":
        p = Path(path)
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
            for key in ("model", "state_dict"):
                if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                    sd = sd[key]
        return cls.from_state_dict(sd)

    @torch.inference_mode()
    def __call__(self, x_TD: np.ndarray) -> np.ndarray:  # type: ignore[override]
        x = torch.as_tensor(np.asarray(x_TD, dtype=np.float32))
        if len(x) == 0:
            return np.zeros(0, np.int64)
        dev = next(self.parameters()).device
        pred = self.net(x.to(dev)).argmax(-1).cpu().numpy()
        return fill_blanks(pred, blank=self.vocab)


def fill_blanks(pred_T: np.ndarray, blank: int) -> np.ndarray:
    """Replace ``blank`` by the nearest non-blank on the left (leading: first on the right)."""
    pred_T = np.asarray(pred_T, dtype=np.int64)
    ok = pred_T != blank
    if not ok.any():
        log.warning("LinearQuantizer predicted only blanks for %d frames; returning unit 0", len(pred_T))
        return np.zeros_like(pred_T)
    idx = np.where(ok, np.arange(len(pred_T)), -1)
    idx = np.maximum.accumulate(idx)
    idx[idx < 0] = np.flatnonzero(ok)[0]
    return pred_T[idx]
