"""Dense HuBERT features through transformers' ``HubertModel``.

``HubertFeaturizer`` wraps a HubertModel (from a local HF directory, a fairseq checkpoint via
:mod:`spiritlm.tokenizer.fairseq_convert`, or built from a config) and returns the output of one
transformer layer per 16 kHz waveform, frame by frame.

On CPU each chunk runs alone and unpadded (``padded_batches=False``): what HubertModel runs on
one file, bit for bit, cut after the deepest layer read. Batching buys nothing there (the matmuls
of one file already fill the cores) and padding costs: zero frames computed and thrown away,
masked GroupNorm statistics (~8 passes over the largest activation), and batch-sized activations
(~0.3 GB per conv layer for 8 files of 6 s) that page-fault into memory anew each call; measured
with ``spiritlm bench tokenizer`` (2026-12-02).

On GPU (``padded_batches=True``) batched inference gives the same frames as running each file
alone: files are bucketed by length, zero-padded, and the padding is masked everywhere it could
leak --

* the first conv layer of base-sized models normalises each channel over *time* (GroupNorm); we
  compute those statistics over each file's valid frames only (``masked GroupNorm``),
* later convs only see padding in frames beyond the valid length (the HF length formula),
* the encoder zeroes padded frames before the positional conv and masks attention.

Long files are cut into chunks of at most ``max_chunk_s`` seconds (100 s like the release);
chunks shorter than ``min_chunk_samples`` (1280) are dropped, and the chunk features are
concatenated. Only the first ``layer`` transformer layers are run, in fp32 on every device like
the release (``dtype="bfloat16"`` opts into bf16 autocast). A model whose fairseq task config
says ``normalize`` (``config.normalize_waveform``) gets each chunk layer-normalised first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass
class HubertCfg:
    path: str = ""  # local HF directory (config.json + weights) or fairseq .pt checkpoint
    layer: int = 11  # 1-based transformer layer whose output is the feature (Spirit LM: 11)
    max_chunk_s: float = 100.0  # long audio is processed in chunks of at most this length
    min_chunk_samples: int = 1280  # trailing chunks shorter than this are dropped (release)
    batch_samples: int = 1_600_000  # padded samples per forward batch (100 s of audio)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # float32 on every device (the release's numbers) | bfloat16 (explicit: faster on GPU)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def conv_out_length(n_samples: np.ndarray | int, kernels: Sequence[int], strides: Sequence[int]):
    """Frames produced by the conv feature extractor for ``n_samples`` input samples."""
    n = np.asarray(n_samples, dtype=np.int64)
    for k, s in zip(kernels, strides):
        n = np.where(n >= k, (n - k) // s + 1, 0)
    return n if n.ndim else int(n)


def receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Samples one frame of a conv front end sees: the shortest input that gives one frame."""
    return kernels[0] + sum((k - 1) * int(np.prod(strides[:i])) for i, k in enumerate(kernels) if i > 0)


class HubertFeaturizer:
    """Layer-``layer`` features of a HubertModel: each chunk alone on CPU, padded batches with
    exact padding masks on GPU (``padded_batches`` chooses; see the module docstring)."""

    def __init__(
        self,
        model,
        layer: int = 11,
        max_chunk_s: float = 100.0,
        min_chunk_samples: int = 1280,
        batch_samples: int = 1_600_000,
        device: str | torch.device = "auto",
        dtype: str = "float32",
        padded_batches: bool | None = None,
    ):
        n_layers = model.config.num_hidden_layers
        if not 0 <= layer <= n_layers:
            raise ValueError(f"layer={layer} but the model has {n_layers} layers; pick 0..{n_layers}")
        if model.config.do_stable_layer_norm:
            log.warning("pre-LN (stable layer norm) HuBERT: layer features include the final LayerNorm")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model = model.eval().to(self.device)  # may be shared with other featurizers
        self.layer = layer
        self.kernels = list(model.config.conv_kernel)
        self.strides = list(model.config.conv_stride)
        self.hop = int(np.prod(self.strides))
        self.receptive_field = receptive_field(self.kernels, self.strides)
        self.max_chunk = int(max_chunk_s * 16000)
        self.min_chunk = max(int(min_chunk_samples), self.receptive_field)
        self.batch_samples = int(batch_samples)
        self.dim = model.config.hidden_size
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"hubert.dtype={dtype!r}: choose float32 (default, the release's numbers) or bfloat16")
        self.dtype = dtype
        # fairseq task.normalize: each (<= 100 s) chunk is layer-normalised before the model (release)
        self.normalize = bool(getattr(model.config, "normalize_waveform", False))
        # None: padded, masked batches on GPU only; on CPU every chunk alone (module docstring)
        self.padded_batches = self.device.type != "cpu" if padded_batches is None else bool(padded_batches)

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_cfg(cls, cfg: HubertCfg, model=None, layer: int | None = None) -> "HubertFeaturizer":
        """``layer``: another layer than ``cfg.layer`` (style features) with the same chunking and
        batching, so that both share one pass (``features_with``)."""
        if model is None:
            model = load_hubert(cfg.path)
        return cls(model, cfg.layer if layer is None else layer, cfg.max_chunk_s, cfg.min_chunk_samples,
                   cfg.batch_samples, cfg.device, getattr(cfg, "dtype", "float32"))

    @property
    def frame_rate(self) -> float:
        return 16000.0 / self.hop

    def shares_pass_with(self, other: "HubertFeaturizer | None") -> bool:
        """True when ``other`` reads another layer of the same model with the same chunking and
        batching: ``features_many_at`` then gives both from one pass, bit for bit."""
        return (other is not None and other.model is self.model and other.device == self.device
                and other.dtype == self.dtype and other.padded_batches == self.padded_batches
                and (other.max_chunk, other.min_chunk, other.batch_samples)
                == (self.max_chunk, self.min_chunk, self.batch_samples))

    def features_with(self, other: "HubertFeaturizer | None", wavs: Sequence[np.ndarray],
                      progress: bool = False) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """-> (this featurizer's features, ``other``'s or None): one pass when they share it."""
        return features_with(self, other, wavs, progress)

    def num_frames(self, n_samples: int) -> int:
        """Frames for a file of ``n_samples`` (after chunking, as ``features`` returns them)."""
        total, start = 0, 0
        while start < n_samples:
            n = min(self.max_chunk, n_samples - start)
            if n >= self.min_chunk:
                total += conv_out_length(n, self.kernels, self.strides)
            start += self.max_chunk
        return total

    # ---- inference -----------------------------------------------------------------------
    def features(self, wav: np.ndarray) -> np.ndarray:
        return self.features_many([wav])[0]

    def features_many(self, wavs: Sequence[np.ndarray], progress: bool = False) -> list[np.ndarray]:
        """Waveforms (float32, 16 kHz) -> list of (T_i, D) float32 feature arrays."""
        return self.features_many_at(wavs, [self.layer], progress)[self.layer]

    def features_many_at(self, wavs: Sequence[np.ndarray], layers: Sequence[int],
                         progress: bool = False) -> dict[int, list[np.ndarray]]:
        """Features of several layers from one pass -> {layer: list of (T_i, D) arrays}.

        The conv front end dominates the cost on CPU (~78% of encoding with the demo model), so
        units and style features of one model come from one forward. Each layer's features are
        those a featurizer at that layer alone returns, bit for bit (tested).
        """
        layers = sorted(set(int(x) for x in layers))
        n_layers = self.model.config.num_hidden_layers
        if not layers or not all(0 <= x <= n_layers for x in layers):
            raise ValueError(f"layers={layers} but the model has {n_layers} layers; pick from 0..{n_layers}")
        chunks: list[tuple[int, int, np.ndarray]] = []  # (file, chunk index, samples)
        for i, wav in enumerate(wavs):
            wav = np.asarray(wav, dtype=np.float32)
            for j, start in enumerate(range(0, max(len(wav), 1), self.max_chunk)):
                piece = wav[start : start + self.max_chunk]
                if len(piece) >= self.min_chunk:
                    if self.normalize:  # F.layer_norm over the whole chunk, eps 1e-5, no affine
                        piece = torch.nn.functional.layer_norm(torch.from_numpy(piece), piece.shape).numpy()
                    chunks.append((i, j, piece))
        out: dict[tuple[int, int], dict[int, np.ndarray]] = {}
        order = sorted(range(len(chunks)), key=lambda c: len(chunks[c][2]), reverse=True)
        batches, cur = [], []
        limit = self.batch_samples if self.padded_batches else 0  # 0: every chunk alone, unpadded
        for c in order:  # length bucketing: neighbours in sorted order share a batch
            longest = len(chunks[cur[0]][2]) if cur else len(chunks[c][2])
            if cur and longest * (len(cur) + 1) > limit:
                batches.append(cur)
                cur = []
            cur.append(c)
        if cur:
            batches.append(cur)
        it = batches
        if progress:
            from tqdm import tqdm

            it = tqdm(batches, desc="hubert", unit="batch")
        for batch in it:
            feats = self._forward([chunks[c][2] for c in batch], layers)
            for b, c in enumerate(batch):
                out[chunks[c][:2]] = {x: feats[x][b] for x in layers}
        result: dict[int, list[np.ndarray]] = {x: [] for x in layers}
        for i in range(len(wavs)):
            keys = sorted(k for k in out if k[0] == i)
            for x in layers:
                parts = [out[k][x] for k in keys]
                result[x].append(np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32))
        return result

    @torch.inference_mode()
    def _forward(self, wavs: list[np.ndarray], layers: Sequence[int]) -> dict[int, list[np.ndarray]]:
        lengths = np.array([len(w) for w in wavs])
        if len(wavs) == 1:  # no padding: the model's own front end, no masks, no copy of the input
            x_BS, lengths_B = torch.from_numpy(np.ascontiguousarray(wavs[0]))[None].to(self.device), None
        else:
            x_BS = torch.zeros(len(wavs), int(lengths.max()), dtype=torch.float32)
            for b, w in enumerate(wavs):
                x_BS[b, : len(w)] = torch.from_numpy(w)
            x_BS, lengths_B = x_BS.to(self.device), torch.as_tensor(lengths)
        use_bf16 = self.dtype == "bfloat16"
        enc = self.model.encoder
        all_layers = enc.layers
        enc.layers = all_layers[: max(layers)]  # never run the layers above the ones we read
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                h_by_layer, frames = masked_hidden(self.model, x_BS, lengths_B, layers)
        finally:
            enc.layers = all_layers
        out = {}
        for x, h_BTD in h_by_layer.items():
            h = h_BTD.float().cpu().numpy()
            if len(wavs) == 1:  # all frames valid: the array itself, no copy
                out[x] = [h[0]]
            else:  # copies, so that the padded batch is freed
                out[x] = [h[b, : frames[b]].copy() for b in range(len(wavs))]
        return out


def features_with(feat, other, wavs: Sequence[np.ndarray], progress: bool = False):
    """(``feat``'s features, ``other``'s or None) for two layers of one encoder: one pass through it
    when ``feat.shares_pass_with(other)`` (any featurizer with ``features_many_at``: HuBERT's,
    the semantic encoder's)."""
    if other is None:
        return feat.features_many(wavs, progress), None
    if not feat.shares_pass_with(other):
        return feat.features_many(wavs, progress), other.features_many(wavs, progress)
    at = feat.features_many_at(wavs, [feat.layer, other.layer], progress)
    return at[feat.layer], at[other.layer]


def masked_conv_features(model, x_BS: torch.Tensor, lengths_B: torch.Tensor):
    """Run the conv feature extractor with padding-exact normalisation -> (x_BTC, frames_B)."""
    from transformers.models.hubert.modeling_hubert import HubertGroupNormConvLayer

    h = x_BS[:, None, :]
    n = lengths_B.to(h.device)
    for layer in model.feature_extractor.conv_layers:
        h = layer.conv(h)
        k, s = layer.conv.kernel_size[0], layer.conv.stride[0]
        n = torch.where(n >= k, torch.div(n - k, s, rounding_mode="floor") + 1, torch.zeros_like(n))
        if isinstance(layer, HubertGroupNormConvLayer):
            gn = layer.layer_norm  # one group per channel: statistics over valid frames only
            mask = (torch.arange(h.shape[-1], device=h.device)[None, :] < n[:, None]).to(h.dtype)
            m = mask[:, None, :]
            cnt = m.sum(-1, keepdim=True).clamp_min(1)
            mean = (h * m).sum(-1, keepdim=True) / cnt
            var = (((h - mean) * m) ** 2).sum(-1, keepdim=True) / cnt
            h = (h - mean) / torch.sqrt(var + gn.eps)
            h = h * gn.weight[None, :, None] + gn.bias[None, :, None]
        elif hasattr(layer, "layer_norm"):
            h = layer.layer_norm(h.transpose(-2, -1)).transpose(-2, -1)
        h = layer.activation(h)
    return h.transpose(1, 2), n


def masked_hidden(model, x_BS: torch.Tensor, lengths_B: torch.Tensor | None, layers: Sequence[int]):
    """Padded waveforms -> ({layer: h_BTD}, valid frames per item): each the output a model cut
    after that layer returns. The deepest of ``layers`` must be ``len(model.encoder.layers)``, the
    last one computed; pre-LN models end in a LayerNorm. ``lengths_B=None``: nothing is padded,
    so the model's own conv front end runs and the encoder gets no mask (HubertModel's ops).
    """
    if lengths_B is None:
        feats_BTC = model.feature_extractor(x_BS).transpose(1, 2)
        frames = torch.full((x_BS.shape[0],), feats_BTC.shape[1])
    else:
        feats_BTC, frames = masked_conv_features(model, x_BS, lengths_B)
    h_BTD = model.feature_projection(feats_BTC)
    if isinstance(h_BTD, tuple):
        h_BTD = h_BTD[0]
    mask_BT = None
    if lengths_B is not None:
        mask_BT = torch.arange(h_BTD.shape[1], device=h_BTD.device)[None, :] < frames[:, None]
    enc = model.encoder
    top = len(enc.layers)
    if max(layers) != top:
        raise ValueError(f"layers {list(layers)}: the model is cut after layer {top}; the deepest must be {top}")
    if top == 0 and not model.config.do_stable_layer_norm:
        if mask_BT is not None:  # layer 0 = input of the first layer
            h_BTD = h_BTD.masked_fill(~mask_BT[..., None], 0)
        return {0: enc.layer_norm(h_BTD + enc.pos_conv_embed(h_BTD))}, frames.cpu().numpy()
    # hooks catch the inputs of the layers: the input of layer x+1 is the output of layer x (for
    # x = 0, after the input LayerNorm of post-LN models); the encoder's own output is the last
    seen: dict[int, torch.Tensor] = {}
    hooks = [enc.layers[x].register_forward_pre_hook(
        lambda mod, args, kwargs, x=x: seen.__setitem__(x, args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True) for x in layers if x < top]
    try:
        last = enc(h_BTD, attention_mask=mask_BT).last_hidden_state
    finally:
        for hk in hooks:
            hk.remove()
    out = {}
    for x in layers:
        if x == top:
            out[x] = last
        else:  # pre-LN: what a model cut after layer x would end with
            out[x] = enc.layer_norm(seen[x]) if model.config.do_stable_layer_norm else seen[x]
    return out, frames.cpu().numpy()


def load_hubert(path: str | Path):
    """A HubertModel from a local HF directory or a fairseq checkpoint file (.pt)."""
    from transformers import HubertModel

    p = Path(path)
    if not str(path):
        raise ValueError("hubert.path is empty: set it to a local HF HuBERT directory or a fairseq .pt file")
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p}: not a HF model directory (no config.json)")
        return HubertModel.from_pretrained(str(p))
    if p.is_file():
        from spiritlm.tokenizer.fairseq_convert import load_fairseq_hubert

        return load_fairseq_hubert(p)
    raise FileNotFoundError(f"HuBERT checkpoint not found: {p} (a HF directory or a fairseq .pt file)")


def tiny_hubert_config(hidden: int = 64, layers: int = 2, heads: int = 2, ffn: int = 128,
                       conv_dim: int = 32, hop: int = 320, taper: bool = False, **kw):
    """A small HubertConfig with the base model's structure (GroupNorm first conv, post-LN).

    ``taper``: early (high-rate) conv layers get fewer channels (conv_dim/4, /2, /2, then
    conv_dim), which makes the conv stack ~3x cheaper for CPU training.
    """
    from transformers import HubertConfig

    if hop == 320:
        kernels, strides = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)
    elif hop == 640:  # 25 Hz like mHuBERT-25hz: one extra stride-2 layer
        kernels, strides = (10, 3, 3, 3, 3, 2, 2, 2), (5, 2, 2, 2, 2, 2, 2, 2)
    else:
        raise ValueError(f"hop must be 320 (50 Hz) or 640 (25 Hz), got {hop}")
    dims = (conv_dim,) * len(kernels)
    if taper:
        dims = (max(conv_dim // 4, 8), max(conv_dim // 2, 8), max(conv_dim // 2, 8)) + (conv_dim,) * (len(kernels) - 3)
    return HubertConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, conv_dim=dims, conv_kernel=kernels,
        conv_stride=strides, num_conv_pos_embeddings=kw.pop("num_conv_pos_embeddings", 16),
        num_conv_pos_embedding_groups=kw.pop("num_conv_pos_embedding_groups", 4),
        feat_extract_norm="group", do_stable_layer_norm=False, **kw,
    )
