"""Discrete units from dense features: faiss k-means, centroid import/export, LinearQuantizer.

* :class:`FrameReservoir` samples frames uniformly across a whole corpus into a fixed memory
  budget (reservoir sampling), so k-means training memory does not grow with the corpus.
* :func:`train_kmeans` runs faiss k-means (k=500 by default) with a fixed seed.
* :class:`KMeansQuantizer` assigns frames to the nearest centroid with a faiss flat index (a GPU
  index when faiss has GPU support and a GPU is there); centroids load/save as ``.npy``.
  scikit-learn/joblib k-means files are pickles and load only with ``allow_pickle=True``.
* :class:`LinearQuantizer` is the release's alternative: a 3-layer MLP (LeakyReLU) with
  ``vocab + 1`` outputs, argmax, and the extra (last) CTC "blank" output replaced by a unit
  (:func:`fill_blanks`: the release's rule wraps round to the end of the sequence; our earlier
  files use left-then-right). It loads the release's ``{model_cfg, model_weight}`` file as is.
* The release's k-means alternative is a ``.pt`` dict ``{cluster_centers: (K, D), n_clusters: K}``
  (often numpy arrays): read by :func:`load_centroids` without executing pickled code.
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
    if p.suffix == ".safetensors":
        from safetensors.numpy import load_file

        d = load_file(str(p))
        return next(iter(d.values())).astype(np.float32)
    if p.suffix == ".pt":
        return _centroids_from_pt(p)
    if not allow_pickle:
        raise ValueError(
            f"{p}: a scikit-learn/joblib k-means file is a pickle, which can run arbitrary code. "
            "Pass allow_pickle=True (CLI: --set hubert_units.allow_pickle=true) only for files you "
            "trust, or convert it once to .npy with numpy.save(path, km.cluster_centers_)"
        )
    import joblib

    km = joblib.load(p)
    return np.asarray(km.cluster_centers_, dtype=np.float32)


BLANK_RULES = ("wrap_left", "left_then_right")


def _centroids_from_pt(p: Path) -> np.ndarray:
    """A tensor, or the textless/release k-means dict ``{cluster_centers: (K, D), n_clusters: K}``
    (numpy arrays or tensors), read with ``weights_only`` + numpy rebuild functions allowed."""
    from spiritlm.tokenizer.fairseq_convert import safe_load_checkpoint

    obj = safe_load_checkpoint(p)
    if isinstance(obj, dict) and "cluster_centers" in obj:
        c = obj["cluster_centers"]
        c = c.numpy() if isinstance(c, torch.Tensor) else np.asarray(c)
        if c.ndim != 2 or not np.issubdtype(c.dtype, np.floating):
            raise ValueError(f"{p}: cluster_centers must be a float (K, D) array, got {c.dtype} {c.shape}")
        k = obj.get("n_clusters")
        if k is None or int(np.asarray(k)) != len(c):
            raise ValueError(f"{p}: n_clusters={k!r} does not match cluster_centers with {len(c)} rows")
        return np.ascontiguousarray(c, dtype=np.float32)
    if isinstance(obj, torch.Tensor) and obj.ndim == 2:
        return obj.numpy().astype(np.float32)
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), torch.Tensor):
        return next(iter(obj.values())).numpy().astype(np.float32)
    keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"{p}: not a k-means file: expected {{cluster_centers: (K, D), n_clusters: K}} or a (K, D) "
                     f"tensor, found {keys}")


class LinearQuantizer(nn.Module):
    """3-layer MLP over features -> ``vocab + 1`` logits (last = CTC blank), argmax, blanks filled.

    Hidden widths may differ (the release's ``dim -> dim - m//4 -> dim - m//2 -> vocab + 1``).
    ``blank_rule`` (see :func:`fill_blanks`): ``"wrap_left"`` is the release's, ``"left_then_right"``
    the one our own earlier files were written with.
    """

    kind = "linear"

    def __init__(self, dim: int, hidden: int, vocab: int, negative_slope: float = 0.01,
                 hidden2: int | None = None, blank_rule: str = "left_then_right"):
        super().__init__()
        hidden2 = hidden if hidden2 is None else hidden2
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.LeakyReLU(negative_slope),
            nn.Linear(hidden, hidden2), nn.LeakyReLU(negative_slope),
            nn.Linear(hidden2, vocab + 1),
        )
        self.vocab = vocab
        self.dim = dim
        if blank_rule not in BLANK_RULES:
            raise ValueError(f"blank_rule={blank_rule!r}: choose one of {BLANK_RULES}")
        self.blank_rule = blank_rule

    @property
    def size(self) -> int:
        return self.vocab

    @classmethod
    def from_state_dict(cls, sd: dict, blank_rule: str = "left_then_right", source: str = "state_dict") -> "LinearQuantizer":
        """Build from any state_dict holding three Linear layers in order (names are ignored)."""
        ws = [(k, v) for k, v in sd.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
        bs = [(k, v) for k, v in sd.items() if k.endswith("bias") and getattr(v, "ndim", 0) == 1]
        if len(ws) != 3 or len(bs) != 3:
            raise ValueError(
                f"{source}: a LinearQuantizer state_dict needs 3 Linear weights and biases, got weights "
                f"{[k for k, _ in ws]} and biases {[k for k, _ in bs]}"
            )
        shapes = [tuple(v.shape) for _, v in ws]
        chain = all(shapes[i + 1][1] == shapes[i][0] for i in range(2)) and all(
            b.shape[0] == w.shape[0] for (_, w), (_, b) in zip(ws, bs))
        if not chain:
            raise ValueError(f"{source}: LinearQuantizer shapes do not chain: weights {shapes}, "
                             f"biases {[tuple(b.shape) for _, b in bs]}")
        q = cls(shapes[0][1], shapes[0][0], shapes[2][0] - 1, hidden2=shapes[1][0], blank_rule=blank_rule)
        lins = [m for m in q.net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, (_, w), (_, b) in zip(lins, ws, bs):
                lin.weight.copy_(w)
                lin.bias.copy_(b)
        return q.eval()

    @classmethod
    def from_release(cls, ckpt: dict, source: str = "quantizer") -> "LinearQuantizer":
        """The release's ``{"model_cfg": {vocab_size, dim, upstream_dim}, "model_weight": sd}``:
        widths ``dim -> dim - m//4 -> dim - m//2 -> vocab_size + 1``, ``m = upstream_dim -
        (vocab_size + 1)``, keys ``{0,2,4}.{weight,bias}``; blanks follow the release's rule."""
        mcfg, sd = ckpt.get("model_cfg"), ckpt.get("model_weight")
        need = ("vocab_size", "dim", "upstream_dim")
        if not isinstance(mcfg, dict) or any(k not in mcfg for k in need) or not isinstance(sd, dict):
            raise ValueError(f"{source}: the release's quantizer layout is {{'model_cfg': {{{', '.join(need)}}}, "
                             f"'model_weight': state_dict}}; got model_cfg={mcfg!r:.120}")
        vocab, dim, up = (int(mcfg[k]) for k in need)
        m = up - (vocab + 1)
        widths = [dim, dim - m // 4, dim - m // 2, vocab + 1]
        want = {f"{2 * i}.weight": (widths[i + 1], widths[i]) for i in range(3)}
        want.update({f"{2 * i}.bias": (widths[i + 1],) for i in range(3)})
        got = {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}
        if got != want:
            raise ValueError(f"{source}: model_weight does not match model_cfg {dict(zip(need, (vocab, dim, up)))}: "
                             f"expected shapes {want}, found {got}")
        return cls.from_state_dict({k: sd[k] for k in sorted(want, key=lambda k: (int(k.split('.')[0]), k))},
                                   blank_rule="wrap_left", source=source)

    @classmethod
    def load(cls, path: str | Path, blank_rule: str | None = None) -> "LinearQuantizer":
        """Our safetensors / ``{"model"|"state_dict": sd}`` files, or the release's layout (which
        always uses the release's blank rule). ``blank_rule=None``: ``left_then_right`` for ours."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"LinearQuantizer weights not found: {p}")
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            from spiritlm.tokenizer.fairseq_convert import safe_load_checkpoint

            sd = safe_load_checkpoint(p)
            if isinstance(sd, dict) and ("model_cfg" in sd or "model_weight" in sd):
                q = cls.from_release(sd, source=str(p))
                if blank_rule not in (None, "wrap_left"):
                    q.blank_rule = blank_rule
                return q
            for key in ("model", "state_dict"):
                if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                    sd = sd[key]
            if not isinstance(sd, dict):
                raise ValueError(f"{p}: expected a state_dict or the release's {{model_cfg, model_weight}} dict, "
                                 f"got a {type(sd).__name__}")
        return cls.from_state_dict(sd, blank_rule=blank_rule or "left_then_right", source=str(p))

    def logits(self, x_TD: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x_TD, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features have shape {tuple(x.shape)}, the quantizer expects (T, {self.dim})")
        dev = next(self.parameters()).device
        return self.net(x.to(dev))

    @torch.inference_mode()
    def __call__(self, x_TD: np.ndarray) -> np.ndarray:  # type: ignore[override]
        if len(x_TD) == 0:
            return np.zeros(0, np.int64)
        pred = self.logits(x_TD).argmax(-1).cpu().numpy()
        return fill_blanks(pred, blank=self.vocab, rule=self.blank_rule)


def fill_blanks(pred_T: np.ndarray, blank: int, rule: str = "left_then_right") -> np.ndarray:
    """Replace the CTC ``blank`` output by a unit.

    * ``"wrap_left"`` (the release): each blank takes the unit on its left, where the left of the
      first frame is the last frame (a roll by one, repeated until no blank is left) -- i.e. the
      nearest non-blank to the left, cyclically. An all-blank sequence stays blank (the release's
      loop gives up and returns the blank id, which is also the token ``[Hu<vocab>]``).
    * ``"left_then_right"`` (our earlier files): nearest non-blank on the left; leading blanks take
      the first non-blank on their right; all blanks -> unit 0.
    """
    pred_T = np.asarray(pred_T, dtype=np.int64)
    ok = pred_T != blank
    if rule not in BLANK_RULES:
        raise ValueError(f"blank rule {rule!r}: choose one of {BLANK_RULES}")
    if not ok.any():
        log.warning("LinearQuantizer predicted only blanks for %d frames", len(pred_T))
        return pred_T.copy() if rule == "wrap_left" else np.zeros_like(pred_T)
    idx = np.where(ok, np.arange(len(pred_T)), -1)
    idx = np.maximum.accumulate(idx)
    idx[idx < 0] = np.flatnonzero(ok)[-1] if rule == "wrap_left" else np.flatnonzero(ok)[0]
    return pred_T[idx]
