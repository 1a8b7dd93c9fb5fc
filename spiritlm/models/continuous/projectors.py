"""Frame stacking and the projectors from encoder frames to LM input embeddings.

Every projector maps ``x_BTD`` (encoder frames, ``lens_B`` valid frames per row) to
``(y_BNH, out_lens_B, aux_loss)`` with ``N = T // stack`` LM embeddings per row (a trailing
remainder of fewer than ``stack`` frames is dropped; a row shorter than one stack gives none --
the data reader skips such utterances). Only valid frames ever reach a valid output: padding
frames are zeroed first and outputs past ``out_lens`` are ignored downstream.

* ``linear`` (SpeechLLM): stack k -> Linear.
* ``mlp`` (Tiny Audio): stack k -> Linear(no bias) -> RMSNorm -> GELU -> Linear -> RMSNorm.
* ``qformer``: windows of ``window`` frames (rounded to whole stacks); each window has
  ``window // stack`` learned queries that cross-attend its valid frames through ``layers``
  decoder layers, so the output rate equals the other projectors' (one per ``stack`` frames).
* ``moe``: a shared expert + top-k of n experts (each an MLP over the stacked frame), with the
  Switch-style balance loss ``n * sum_e f_e * p_e`` times ``balance_weight``.
* ``mosa``: 2 strided 1-D convs (total stride ``stack``) then a dense softmax router mixing
  ``n_experts`` small adapters.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from spiritlm.models.continuous.config import ProjectorConfig
from spiritlm.tokenizer.conformer import valid_mask


def stack_frames(x_BTD: torch.Tensor, lens_B: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D) -> (B, T // k, k * D): k consecutive frames concatenated; lens -> lens // k."""
    B, T, D = x_BTD.shape
    n = T // k
    return x_BTD[:, : n * k].reshape(B, n, k * D), torch.div(lens_B, k, rounding_mode="floor")


def _zero_pad(x_BTD: torch.Tensor, lens_B: torch.Tensor) -> torch.Tensor:
    return x_BTD * valid_mask(lens_B, x_BTD.shape[1])[..., None].to(x_BTD.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class LinearProjector(nn.Module):
    def __init__(self, d_in: int, d_lm: int, cfg: ProjectorConfig):
        super().__init__()
        self.k = cfg.stack
        self.proj = nn.Linear(d_in * cfg.stack, d_lm)

    def forward(self, x_BTD, lens_B):
        s_BNK, n_B = stack_frames(_zero_pad(x_BTD, lens_B), lens_B, self.k)
        return self.proj(s_BNK), n_B, s_BNK.new_zeros(())


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden, bias=False), RMSNorm(hidden), nn.GELU(),
                         nn.Linear(hidden, d_out), RMSNorm(d_out))


class MLPProjector(nn.Module):
    def __init__(self, d_in: int, d_lm: int, cfg: ProjectorConfig):
        super().__init__()
        self.k = cfg.stack
        self.net = _mlp(d_in * cfg.stack, cfg.hidden or d_lm, d_lm)

    def forward(self, x_BTD, lens_B):
        s_BNK, n_B = stack_frames(_zero_pad(x_BTD, lens_B), lens_B, self.k)
        return self.net(s_BNK), n_B, s_BNK.new_zeros(())


class QFormerProjector(nn.Module):
    """Learned queries per window: windows of ``window`` frames; each window gives
    ``window // stack`` outputs (so the rate matches the other projectors), every output a query
    that cross-attends its window's valid frames through ``layers`` decoder layers."""

    def __init__(self, d_in: int, d_lm: int, cfg: ProjectorConfig):
        super().__init__()
        self.k = cfg.stack
        self.window = max(cfg.window // cfg.stack, 1) * cfg.stack  # whole stacks per window
        self.nq = self.window // cfg.stack
        h = cfg.hidden or d_lm
        heads = cfg.heads if h % cfg.heads == 0 else 1
        self.inp = nn.Linear(d_in, h)
        self.queries = nn.Parameter(torch.randn(self.nq, h) * 0.02)
        self.pos = nn.Parameter(torch.randn(self.window, h) * 0.02)
        layer = nn.TransformerDecoderLayer(h, heads, 4 * h, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, cfg.layers)
        self.out = nn.Sequential(nn.Linear(h, d_lm), RMSNorm(d_lm))

    def forward(self, x_BTD, lens_B):
        B, T, _ = x_BTD.shape
        W, Q = self.window, self.nq
        nwin = max(math.ceil(T / W), 1)
        x = F.pad(_zero_pad(x_BTD, lens_B), (0, 0, 0, nwin * W - T))
        mem = self.inp(x).reshape(B * nwin, W, -1) + self.pos
        frame_ok = valid_mask(lens_B, nwin * W).reshape(B * nwin, W)
        # an all-padding window attends its first frame (its outputs are beyond out_lens anyway)
        frame_ok = frame_ok | (~frame_ok.any(-1, keepdim=True) & (torch.arange(W, device=x.device) == 0))
        q = self.queries.expand(B * nwin, Q, -1)
        y = self.layers(q, mem, memory_key_padding_mask=~frame_ok)
        y_BNH = self.out(y).reshape(B, nwin * Q, -1)
        n_B = torch.div(lens_B, self.k, rounding_mode="floor")
        return y_BNH[:, : T // self.k], n_B, y_BNH.new_zeros(())


class MoEProjector(nn.Module):
    def __init__(self, d_in: int, d_lm: int, cfg: ProjectorConfig):
        super().__init__()
        self.k, self.top_k, self.n = cfg.stack, cfg.top_k, cfg.n_experts
        self.balance_weight = cfg.balance_weight
        h, d = cfg.hidden or d_lm, d_in * cfg.stack
        self.shared = _mlp(d, h, d_lm)
        self.experts = nn.ModuleList([_mlp(d, h, d_lm) for _ in range(cfg.n_experts)])
        self.router = nn.Linear(d, cfg.n_experts, bias=False)

    def forward(self, x_BTD, lens_B):
        s_BNK, n_B = stack_frames(_zero_pad(x_BTD, lens_B), lens_B, self.k)
        probs_BNE = self.router(s_BNK).float().softmax(-1)
        top_p, top_i = probs_BNE.topk(self.top_k, dim=-1)
        top_p = top_p / top_p.sum(-1, keepdim=True)
        y = self.shared(s_BNK)
        # dense evaluation of every expert: exact and simple at projector sizes (a few M params)
        outs_BNEH = torch.stack([e(s_BNK) for e in self.experts], dim=2)
        gate_BNE = torch.zeros_like(probs_BNE).scatter(-1, top_i, top_p).to(y.dtype)
        y = y + (outs_BNEH * gate_BNE[..., None]).sum(2)
        ok = valid_mask(n_B, s_BNK.shape[1])
        if ok.any():  # Switch balance loss over valid positions: n * sum_e (share routed) * (mean prob)
            sel = torch.zeros_like(probs_BNE).scatter(-1, top_i, 1.0)[ok]
            frac_E = sel.mean(0) / self.top_k
            aux = self.n * (frac_E * probs_BNE[ok].mean(0)).sum() * self.balance_weight
        else:
            aux = probs_BNE.sum() * 0
        return y, n_B, aux


def _split_stride(k: int) -> tuple[int, int]:
    a = max(d for d in range(1, int(math.isqrt(k)) + 1) if k % d == 0)
    return k // a, a


class MoSAProjector(nn.Module):
    def __init__(self, d_in: int, d_lm: int, cfg: ProjectorConfig):
        super().__init__()
        self.k = cfg.stack
        h = cfg.hidden or d_lm
        s1, s2 = _split_stride(cfg.stack)
        self.convs = nn.ModuleList([nn.Conv1d(d_in, h, s1, stride=s1), nn.Conv1d(h, h, s2, stride=s2)])
        self.router = nn.Linear(h, cfg.n_experts)
        self.adapters = nn.ModuleList([nn.Sequential(nn.Linear(h, h // 2), nn.GELU(), nn.Linear(h // 2, d_lm))
                                       for _ in range(cfg.n_experts)])
        self.norm = RMSNorm(d_lm)

    def forward(self, x_BTD, lens_B):
        T = x_BTD.shape[1]
        n = T // self.k
        x = _zero_pad(x_BTD, lens_B)[:, : n * self.k].transpose(1, 2)
        x = F.gelu(self.convs[0](x))
        x = F.gelu(self.convs[1](x)).transpose(1, 2)  # (B, n, h); kernel == stride: no overlap
        w_BNE = self.router(x).softmax(-1)
        y = torch.stack([a(x) for a in self.adapters], dim=2)
        y = (y * w_BNE[..., None]).sum(2)
        return self.norm(y), torch.div(lens_B, self.k, rounding_mode="floor"), y.new_zeros(())


PROJECTORS = {"linear": LinearProjector, "mlp": MLPProjector, "qformer": QFormerProjector,
              "moe": MoEProjector, "mosa": MoSAProjector}


def build_projector(cfg: ProjectorConfig, d_enc: int, d_lm: int) -> nn.Module:
    return PROJECTORS[cfg.kind](d_enc, d_lm, cfg)
