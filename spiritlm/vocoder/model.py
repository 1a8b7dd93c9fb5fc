"""The unit HiFi-GAN generator: unit embeddings (+ pitch/style codes, speaker, global style) ->
16 kHz waveform at ``prod(upsample_rates)`` samples per unit frame.

Written from the published description (HiFi-GAN V1 generator, the "CodeHiFiGAN" conditioning
of speech-resynthesis / Spirit LM); the attribute names follow the released state_dict layout so
that a release ``generator.pt`` loads by name (see :mod:`spiritlm.vocoder.release`):

    dict.weight                       (num_embeddings, embedding_dim)     HuBERT units
    f0_dict.weight / style_dict.weight (num_f0_tokens | num_style_tokens, embedding_dim)
    spkr.weight / style.weight        (num_speakers | num_styles, embedding_dim)  one per utterance
    dur_predictor.{conv1.0, ln1, conv2.0, ln2, proj}.*                  log(duration + 1)
    conv_pre.* ups.{i}.* resblocks.{i * n_kernels + j}.convs{1,2}.{k}.* conv_post.*

The embeddings are concatenated on the channel axis in that order (units, pitch codes, style
codes, speaker, global style), so ``model_in_dim`` is ``embedding_dim`` times their number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

LRELU_SLOPE = 0.1  # HiFi-GAN's slope inside the generator (the last activation uses torch's 0.01)


@dataclass
class GeneratorCfg:
    """The release's ``config.json`` fields that shape the generator (other keys are ignored)."""

    num_embeddings: int = 100
    embedding_dim: int = 128
    model_in_dim: int = 0  # 0 = derived from the conditioning in use
    upsample_rates: list[int] = field(default_factory=lambda: [5, 4, 4, 4])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [11, 8, 8, 8])
    upsample_initial_channel: int = 128
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)
    code_hop_size: int = 320  # samples per unit frame at sampling_rate (= prod(upsample_rates))
    sampling_rate: int = 16000
    num_f0_tokens: int = 0  # > 0: per-frame pitch codes (Expressive)
    f0_hop_size: int = 1280
    num_style_tokens: int = 0  # > 0: per-frame style codes (Expressive)
    style_hop_size: int = 16000
    multispkr: bool = False
    num_speakers: int = 200
    multistyle: bool = False  # one global style label per utterance (Expresso styles, Base)
    num_styles: int = 100
    dur_predictor_params: dict[str, Any] | None = None  # encoder_embed_dim, var_pred_hidden_dim, ...

    @property
    def hop(self) -> int:
        return math.prod(self.upsample_rates)

    @property
    def n_conditions(self) -> int:
        return 1 + sum(map(bool, (self.num_f0_tokens, self.num_style_tokens, self.multispkr, self.multistyle)))

    def validate(self) -> "GeneratorCfg":
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError(f"upsample_rates {self.upsample_rates} and upsample_kernel_sizes "
                             f"{self.upsample_kernel_sizes} must have the same length")
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            if (k - u) % 2 or k < u:
                raise ValueError(f"upsample kernel {k} with rate {u}: k - u must be even and >= 0 so "
                                 "that each stage multiplies the length exactly by its rate")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes must have the same length")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise ValueError(f"upsample_initial_channel {self.upsample_initial_channel} must be divisible "
                             f"by 2**{len(self.upsample_rates)} (it is halved at every upsampling)")
        want = self.embedding_dim * self.n_conditions
        if self.model_in_dim and self.model_in_dim != want:
            raise ValueError(f"model_in_dim {self.model_in_dim} != embedding_dim {self.embedding_dim} x "
                             f"{self.n_conditions} conditioning inputs (units, pitch, style, speaker, global style)")
        self.model_in_dim = want
        return self


class ResBlock(nn.Module):
    """HiFi-GAN residual block type 1: per dilation, lrelu -> dilated conv -> lrelu -> conv, + x."""

    def __init__(self, channels: int, kernel: int, dilations: list[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d, padding=d * (kernel - 1) // 2)
                                    for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2)
                                    for _ in dilations)

    def forward(self, x_BCT: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x_BCT = x_BCT + c2(F.leaky_relu(c1(F.leaky_relu(x_BCT, LRELU_SLOPE)), LRELU_SLOPE))
        return x_BCT


class DurationPredictor(nn.Module):
    """conv(k) + ReLU -> LayerNorm -> dropout -> conv(k, padding 1) + ReLU -> LayerNorm -> dropout
    -> Linear(1): predicts log(duration + 1) of each deduplicated unit from its embedding."""

    def __init__(self, encoder_embed_dim: int, var_pred_hidden_dim: int, var_pred_kernel_size: int,
                 var_pred_dropout: float, **_: Any):
        super().__init__()
        k = var_pred_kernel_size
        self.conv1 = nn.Sequential(nn.Conv1d(encoder_embed_dim, var_pred_hidden_dim, k, padding=(k - 1) // 2), nn.ReLU())
        self.ln1 = nn.LayerNorm(var_pred_hidden_dim)
        self.conv2 = nn.Sequential(nn.Conv1d(var_pred_hidden_dim, var_pred_hidden_dim, k, padding=1), nn.ReLU())
        self.ln2 = nn.LayerNorm(var_pred_hidden_dim)
        self.proj = nn.Linear(var_pred_hidden_dim, 1)
        self.dropout = float(var_pred_dropout)

    def forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x_BTC.transpose(1, 2)).transpose(1, 2)
        x = F.dropout(self.ln1(x), self.dropout, self.training)
        x = self.conv2(x.transpose(1, 2)).transpose(1, 2)
        x = F.dropout(self.ln2(x), self.dropout, self.training)
        return self.proj(x).squeeze(-1)  # (B, T) log(duration + 1)


class UnitHiFiGAN(nn.Module):
    def __init__(self, cfg: GeneratorCfg):
        super().__init__()
        self.cfg = cfg.validate()
        e = cfg.embedding_dim
        self.dict = nn.Embedding(cfg.num_embeddings, e)
        self.f0_dict = nn.Embedding(cfg.num_f0_tokens, e) if cfg.num_f0_tokens else None
        self.style_dict = nn.Embedding(cfg.num_style_tokens, e) if cfg.num_style_tokens else None
        self.spkr = nn.Embedding(cfg.num_speakers, e) if cfg.multispkr else None
        self.style = nn.Embedding(cfg.num_styles, e) if cfg.multistyle else None
        self.dur_predictor = DurationPredictor(**cfg.dur_predictor_params) if cfg.dur_predictor_params else None
        ch = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.model_in_dim, ch, 7, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(ch // 2**i, ch // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)))
        self.resblocks = nn.ModuleList(
            ResBlock(ch // 2 ** (i + 1), k, list(d))
            for i in range(len(self.ups)) for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        self.conv_post = nn.Conv1d(ch // 2 ** len(self.ups), 1, 7, padding=3)
        self.n_kernels = len(cfg.resblock_kernel_sizes)

    # ---- conditioning ---------------------------------------------------------------------
    def features(self, code_BT: torch.Tensor, f0_code_BT: torch.Tensor | None = None,
                 style_code_BT: torch.Tensor | None = None, speaker_B: torch.Tensor | None = None,
                 style_B: torch.Tensor | None = None) -> torch.Tensor:
        """Frame-level inputs -> the generator's input (B, model_in_dim, T)."""
        B, T = code_BT.shape
        parts = [self.dict(code_BT)]
        for name, module, x in (("pitch codes", self.f0_dict, f0_code_BT), ("style codes", self.style_dict, style_code_BT)):
            if module is not None:
                if x is None or x.shape != code_BT.shape:
                    raise ValueError(f"this vocoder needs {name} aligned with the units (shape {tuple(code_BT.shape)}), "
                                     f"got {None if x is None else tuple(x.shape)}")
                parts.append(module(x))
        for name, module, x in (("a speaker", self.spkr, speaker_B), ("a style label", self.style, style_B)):
            if module is not None:
                if x is None:
                    raise ValueError(f"this vocoder needs {name} per utterance")
                parts.append(module(x.view(B, 1)).expand(B, T, -1))
        return torch.cat(parts, dim=-1).transpose(1, 2)

    def predict_durations(self, code_BT: torch.Tensor) -> torch.Tensor:
        """Frames per deduplicated unit: round(exp(log_dur) - 1), at least 1."""
        if self.dur_predictor is None:
            raise ValueError("this vocoder has no duration predictor")
        log_dur = self.dur_predictor(self.dict(code_BT))
        return torch.clamp(torch.round(torch.exp(log_dur) - 1), min=1).long()

    # ---- waveform -------------------------------------------------------------------------
    def generate(self, x_BCT: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(x_BCT)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.n_kernels:(i + 1) * self.n_kernels]
            x = sum(b(x) for b in blocks) / self.n_kernels
        x = self.conv_post(F.leaky_relu(x))  # torch's default slope (0.01) here, as published
        return torch.tanh(x).squeeze(1)  # (B, T * hop)

    def forward(self, code_BT, f0_code_BT=None, style_code_BT=None, speaker_B=None, style_B=None):
        return self.generate(self.features(code_BT, f0_code_BT, style_code_BT, speaker_B, style_B))


def weight_norm_modules(model: UnitHiFiGAN) -> list[nn.Module]:
    """The convolutions HiFi-GAN trains under weight normalisation (not the embeddings, not the
    duration predictor)."""
    mods: list[nn.Module] = [model.conv_pre, model.conv_post, *model.ups]
    for rb in model.resblocks:
        mods += [*rb.convs1, *rb.convs2]
    return mods
