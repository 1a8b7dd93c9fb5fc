"""A small conformer over log-mel filterbanks and a CTC head: the ASR-supervised speech encoder.

It sits in the tokenizer layer because two stages use it: the speech tokenizer quantises one of
its layers into **semantic units** (``spiritlm.tokenizer.semantic``, issue 35), and the continuous
and streaming model families train it as their encoder (``spiritlm.models.continuous.encoders``
re-exports everything here, so their checkpoints and imports are unchanged).

* :class:`LogMel` -- 25 ms Hann windows every ``hop_ms``, log mel power (written here: neither
  torchaudio nor librosa can be a dependency of this stack, MACHINE_FACTS.md);
* :class:`ConformerEncoder` -- log-mel -> stride-2 convs -> sinusoidal positions -> conformer
  blocks; ``forward(wavs) -> (x_BTD, lens_B)``, ``hidden_states(wavs, layers)`` for one pass over
  several layers; a row's valid frames are exactly what the waveform gives alone (tested);
* :class:`CharVocab` / :class:`CTCHead` -- the character CTC objective and greedy decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from spiritlm.config import ConfigError

SAMPLE_RATE = 16000


@dataclass
class ConformerConfig:
    """The small CTC conformer over log-mel filterbanks trained here (SpeechLLM's encoder, small)."""

    n_mels: int = 80
    hop_ms: float = 10.0  # filterbank hop; conv subsampling x4 -> 40 ms frames
    subsample: int = 4  # 2 stride-2 convs (4) or 3 (8 -> 80 ms frames, SpeechLLM's base rate)
    dim: int = 144
    layers: int = 4
    heads: int = 4
    ffn_mult: int = 4
    conv_kernel: int = 15
    dropout: float = 0.0


def valid_mask(lens_B: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T) bool: True at the first ``lens_B[b]`` frames of row b."""
    return torch.arange(T, device=lens_B.device)[None, :] < lens_B[:, None]


def _pad_wavs(wavs: Sequence[np.ndarray | torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    ts = [torch.as_tensor(np.asarray(w, dtype=np.float32)) for w in wavs]
    lens = torch.tensor([t.numel() for t in ts], dtype=torch.long)
    out = torch.zeros(len(ts), int(lens.max()) if ts else 0)
    for i, t in enumerate(ts):
        out[i, : t.numel()] = t
    return out.to(device), lens.to(device)


def pad_frames(feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (T_i, D) -> (B, T_max, D) zero-padded, lens (B,)."""
    lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long, device=feats[0].device)
    out = feats[0].new_zeros(len(feats), int(lens.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
    return out, lens


# ---- log-mel filterbanks ----------------------------------------------------------------------
def mel_filters(n_mels: int, n_fft: int, sr: int = SAMPLE_RATE) -> torch.Tensor:
    """HTK-scale triangular mel filters (n_mels, n_fft // 2 + 1). Written here because neither
    torchaudio nor librosa can be a dependency of this stack (MACHINE_FACTS.md)."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    lower, center, upper = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None] - lower) / (center - lower)
    down = (upper - freqs[None]) / (upper - center)
    return torch.from_numpy(np.maximum(0.0, np.minimum(up, down)).astype(np.float32))


class LogMel(nn.Module):
    """25 ms Hann windows every ``hop_ms``; log(mel power + 1e-6); frames ``1 + (n - win) // hop``."""

    def __init__(self, n_mels: int = 80, hop_ms: float = 10.0):
        super().__init__()
        self.win, self.hop = 400, int(SAMPLE_RATE * hop_ms / 1000)
        self.register_buffer("window", torch.hann_window(self.win), persistent=False)
        self.register_buffer("fb", mel_filters(n_mels, self.win), persistent=False)

    def num_frames(self, n_samples):
        n = torch.as_tensor(n_samples)
        return torch.where(n >= self.win, 1 + (n - self.win) // self.hop, torch.zeros_like(n))

    def forward(self, wav_BS: torch.Tensor, lens_B: torch.Tensor):
        # fp32 whatever the model's precision (bf16 STFT is not supported on every device)
        spec = torch.stft(wav_BS.float(), self.win, self.hop, window=self.window.float(), center=False,
                          return_complex=True)
        mel = torch.matmul(self.fb.float(), spec.abs().pow(2))  # (B, n_mels, T)
        return torch.log(mel + 1e-6).transpose(1, 2), self.num_frames(lens_B)


# ---- conformer ------------------------------------------------------------------------------
class _FFN(nn.Module):
    def __init__(self, d, mult, p):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, mult * d), nn.SiLU(), nn.Dropout(p),
                                 nn.Linear(mult * d, d), nn.Dropout(p))

    def forward(self, x):
        return self.net(x)


class _ConvModule(nn.Module):
    """Pointwise GLU -> depthwise conv -> LayerNorm (not BatchNorm: a row's output must not depend
    on the other rows of its batch) -> SiLU -> pointwise. Padding frames are zeroed before the
    depthwise conv, so a row sees the zeros an unpadded run would see at its edge."""

    def __init__(self, d, kernel, p):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.pw1 = nn.Linear(d, 2 * d)
        self.dw = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.norm2 = nn.LayerNorm(d)
        self.pw2 = nn.Linear(d, d)
        self.drop = nn.Dropout(p)

    def forward(self, x_BTD, ok_BT):
        y = F.glu(self.pw1(self.norm(x_BTD)), dim=-1) * ok_BT[..., None]
        y = self.dw(y.transpose(1, 2)).transpose(1, 2)
        return self.drop(self.pw2(F.silu(self.norm2(y))))


class ConformerBlock(nn.Module):
    def __init__(self, c: ConformerConfig):
        super().__init__()
        self.ff1, self.ff2 = _FFN(c.dim, c.ffn_mult, c.dropout), _FFN(c.dim, c.ffn_mult, c.dropout)
        self.attn_norm = nn.LayerNorm(c.dim)
        self.attn = nn.MultiheadAttention(c.dim, c.heads, dropout=c.dropout, batch_first=True)
        self.conv = _ConvModule(c.dim, c.conv_kernel, c.dropout)
        self.out_norm = nn.LayerNorm(c.dim)

    def forward(self, x, ok_BT):
        x = x + 0.5 * self.ff1(x)
        h = self.attn_norm(x)
        x = x + self.attn(h, h, h, key_padding_mask=~ok_BT, need_weights=False)[0]
        x = x + self.conv(x, ok_BT)
        return self.out_norm(x + 0.5 * self.ff2(x))


def _sinusoids(T: int, d: int, device) -> torch.Tensor:
    pos = torch.arange(T, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(T, d, device=device)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)[:, : d // 2]
    return pe


class ConformerEncoder(nn.Module):
    """Log-mel -> stride-2 convs (x``subsample``) -> sinusoidal positions -> conformer blocks.
    (Absolute positions instead of the paper's relative ones: simpler, and enough at demo size.)"""

    def __init__(self, c: ConformerConfig):
        super().__init__()
        if c.subsample not in (1, 2, 4, 8):
            raise ConfigError(f"conformer.subsample={c.subsample} (continuous.encoder.conformer / semantic.conformer): use 1, 2, 4 or 8")
        self.cfg = c
        self.mel = LogMel(c.n_mels, c.hop_ms)
        n_convs = int(math.log2(c.subsample))
        chans = [c.n_mels] + [c.dim] * n_convs
        self.convs = nn.ModuleList([nn.Conv1d(chans[i], c.dim, 3, stride=2, padding=1) for i in range(n_convs)])
        self.inp = nn.Linear(chans[-1], c.dim)
        self.blocks = nn.ModuleList([ConformerBlock(c) for _ in range(c.layers)])
        self.dim = c.dim
        self.frame_rate = 1000.0 / (c.hop_ms * c.subsample)
        self.min_samples = self.mel.win

    def num_frames(self, n_samples):
        n = self.mel.num_frames(n_samples)
        for _ in self.convs:
            n = (n + 1) // 2  # kernel 3, stride 2, padding 1
        return n

    def forward_padded(self, wav_BS: torch.Tensor, lens_B: torch.Tensor):
        h, n = self.forward_layers(wav_BS, lens_B, [len(self.blocks)])
        return h[len(self.blocks)], n

    def forward_layers(self, wav_BS: torch.Tensor, lens_B: torch.Tensor, layers: Sequence[int]):
        """-> ({layer: x_BTD}, lens_B): the output of conformer block ``layer`` (1-based; 0 = the
        input of the first block) for every requested layer, from one pass that stops at the
        highest one. Padding frames are zero."""
        want = sorted(set(int(x) for x in layers))
        if not want or want[0] < 0 or want[-1] > len(self.blocks):
            raise ValueError(f"layers={list(layers)} but the conformer has {len(self.blocks)} blocks; "
                             f"pick from 0..{len(self.blocks)}")
        x, n = self.mel(wav_BS, lens_B)
        # per-utterance mean/variance normalisation of the filterbanks over valid frames
        ok = valid_mask(n, x.shape[1])[..., None].to(x.dtype)
        cnt = ok.sum(1, keepdim=True).clamp(min=1)
        mean = (x * ok).sum(1, keepdim=True) / cnt
        # std floored at 1 (log-mel units): a steady tone has a near-zero std over time, and
        # dividing by it would blow float rounding (batched vs alone STFT) up to real differences
        std = (((x - mean) ** 2 * ok).sum(1, keepdim=True) / cnt).sqrt().clamp(min=1.0)
        x = ((x - mean) / std * ok).to(self.inp.weight.dtype)
        for conv in self.convs:
            x = F.gelu(conv(x.transpose(1, 2))).transpose(1, 2)
            n = (n + 1) // 2
            x = x * valid_mask(n, x.shape[1])[..., None].to(x.dtype)
        x = self.inp(x)
        x = x + _sinusoids(x.shape[1], self.dim, x.device).to(x.dtype)
        ok_BT = valid_mask(n, x.shape[1])
        # rows with no frame keep one attendable key (their output is ignored: length 0)
        ok_attn = ok_BT | (~ok_BT.any(-1, keepdim=True) & (torch.arange(x.shape[1], device=x.device) == 0))
        out = {0: x * ok_BT[..., None].to(x.dtype)} if want[0] == 0 else {}
        for i, blk in enumerate(self.blocks[: want[-1]], start=1):
            x = blk(x, ok_attn) * ok_BT[..., None].to(x.dtype)
            if i in want:
                out[i] = x
        return out, n

    def forward(self, wavs):
        device = next(self.parameters()).device
        return self.forward_padded(*_pad_wavs(wavs, device))


# ---- CTC ------------------------------------------------------------------------------------
CHARS = " abcdefghijklmnopqrstuvwxyz'"


class CharVocab:
    """Lower-case letters, apostrophe and space; id 0 is the CTC blank, other characters dropped."""

    def __init__(self, chars: str = CHARS):
        self.chars = chars
        self.index = {ch: i + 1 for i, ch in enumerate(chars)}

    def __len__(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        ids = [self.index[c] for c in " ".join(text.lower().split()) if c in self.index]
        return ids

    def decode(self, ids) -> str:
        return "".join(self.chars[i - 1] for i in ids if 0 < i <= len(self.chars))


class CTCHead(nn.Module):
    """Linear classifier over encoder frames with a blank at id 0 (reusable: issue 22 aligns with
    it). ``loss`` is mean-over-utterances CTC (``zero_infinity``: an utterance too short for its
    labels adds nothing instead of inf); ``greedy`` collapses repeats and drops blanks."""

    blank = 0

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.proj = nn.Linear(dim, vocab_size)

    def log_probs(self, x_BTD: torch.Tensor) -> torch.Tensor:
        return self.proj(x_BTD).float().log_softmax(-1)

    def loss(self, x_BTD, lens_B, targets: Sequence[Sequence[int]]) -> torch.Tensor:
        lp_TBV = self.log_probs(x_BTD).transpose(0, 1)
        tgt = torch.tensor([t for seq in targets for t in seq], dtype=torch.long, device=x_BTD.device)
        tl = torch.tensor([len(s) for s in targets], dtype=torch.long, device=x_BTD.device)
        return F.ctc_loss(lp_TBV, tgt, lens_B, tl, blank=self.blank, reduction="mean", zero_infinity=True)

    @torch.no_grad()
    def greedy(self, x_BTD, lens_B) -> list[list[int]]:
        best = self.log_probs(x_BTD).argmax(-1).cpu()
        out = []
        for b, n in enumerate(lens_B.tolist()):
            seq = torch.unique_consecutive(best[b, :n]).tolist()
            out.append([i for i in seq if i != self.blank])
        return out
