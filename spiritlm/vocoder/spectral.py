"""A spectral unit vocoder: units -> log-magnitude spectrogram (a small conv net) -> waveform by
Griffin-Lim (no learned phase).

Why this exists beside the unit HiFi-GAN: on this project's 2-core CPU budget the HiFi-GAN
generator, which must learn phase and waveform from scratch, stayed unintelligible after 25-50
CPU minutes (its mel L1 plateaued near 1.0; tokenizers/README.md has the measurements). A net that
only predicts magnitudes learns in minutes, and Griffin-Lim (a fixed algorithm) supplies the
phase. It is slower to decode and sounds phasier than a trained HiFi-GAN, but it carries what
the units know. The release's vocoders stay HiFi-GAN (``model.py``); this kind is ours only.

    model = SpectralUnitVocoder(SpectralCfg(num_embeddings=100, code_hop_size=320))
    wav_BN = model(code_BT, speaker_B=spk_B)         # same call as UnitHiFiGAN

It exposes the attributes :class:`~spiritlm.vocoder.vocoder.Vocoder` uses of a generator
(``cfg`` with the conditioning fields, ``dict``, ``dur_predictor``, ``predict_durations``).
Griffin-Lim is written here because torchaudio (which has one) cannot be installed on this stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from spiritlm.vocoder.model import DurationPredictor

KIND = "spectral"
LOG_FLOOR = 1e-5


@dataclass
class SpectralCfg:
    num_embeddings: int = 100
    embedding_dim: int = 128
    input_dim: int = 0  # > 0: continuous features of this width instead of unit ids (diagnosis only)
    channels: int = 256
    kernel_size: int = 5
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 1, 2, 4])  # residual conv blocks
    dropout: float = 0.1
    n_fft: int = 640
    win_length: int = 640
    stft_hop: int = 80  # spectrogram frames every 5 ms: 4 per 20-ms unit, dense overlap helps Griffin-Lim
    griffin_lim_iters: int = 64
    griffin_lim_momentum: float = 0.99
    code_hop_size: int = 320
    sampling_rate: int = 16000
    multispkr: bool = False
    num_speakers: int = 1
    dur_predictor_params: dict[str, Any] | None = None
    # conditioning this kind does not model; kept so that Vocoder treats both kinds alike
    num_f0_tokens: int = 0
    f0_hop_size: int = 1280
    num_style_tokens: int = 0
    style_hop_size: int = 16000
    multistyle: bool = False
    num_styles: int = 1

    @property
    def hop(self) -> int:
        return self.code_hop_size

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def frames_per_unit(self) -> int:
        return self.code_hop_size // self.stft_hop

    def validate(self) -> "SpectralCfg":
        if self.code_hop_size % self.stft_hop:
            raise ValueError(f"stft_hop {self.stft_hop} must divide the units' hop {self.code_hop_size}")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} > n_fft {self.n_fft}")
        if self.num_f0_tokens or self.num_style_tokens or self.multistyle:
            raise ValueError("the spectral vocoder conditions on HuBERT units (and a speaker) only; use the "
                             "HiFi-GAN kind for pitch/style codes")
        return self


def log_magnitude(wav_BN: torch.Tensor, cfg: SpectralCfg) -> torch.Tensor:
    """(B, N) waveform -> (B, frames, n_bins) natural-log magnitude; frame j centred on sample j * hop."""
    spec = torch.stft(wav_BN, cfg.n_fft, cfg.stft_hop, cfg.win_length, torch.hann_window(cfg.win_length,
                      device=wav_BN.device), center=True, return_complex=True)
    return torch.log(torch.clamp(spec.abs(), min=LOG_FLOOR)).transpose(1, 2)


def griffin_lim(logmag_BTF: torch.Tensor, cfg: SpectralCfg, length: int | None = None) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013, momentum ``griffin_lim_momentum``), zero initial
    phase so that it is deterministic -> (B, N) waveform."""
    mag = torch.exp(logmag_BTF).transpose(1, 2)  # (B, F, T)
    window = torch.hann_window(cfg.win_length, device=mag.device)

    def istft(s):
        return torch.istft(s, cfg.n_fft, cfg.stft_hop, cfg.win_length, window, center=True, length=length)

    def stft(x):
        return torch.stft(x, cfg.n_fft, cfg.stft_hop, cfg.win_length, window, center=True, return_complex=True)

    angles = torch.ones_like(mag, dtype=torch.complex64)
    prev = torch.zeros_like(angles)
    for _ in range(cfg.griffin_lim_iters):
        rebuilt = stft(istft(mag * angles))
        if rebuilt.shape[-1] != mag.shape[-1]:  # istft length cut: keep the frame count
            rebuilt = F.pad(rebuilt, (0, mag.shape[-1] - rebuilt.shape[-1]))
        angles = rebuilt - cfg.griffin_lim_momentum / (1 + cfg.griffin_lim_momentum) * prev
        prev = rebuilt
        angles = angles / torch.clamp(angles.abs(), min=1e-8)
    return istft(mag * angles)


class _ResConv(nn.Module):
    def __init__(self, ch: int, k: int, dilation: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(ch, ch, k, dilation=dilation, padding=dilation * (k - 1) // 2)
        self.norm = nn.GroupNorm(1, ch)
        self.dropout = dropout

    def forward(self, x_BCT):
        return x_BCT + F.dropout(F.gelu(self.norm(self.conv(x_BCT))), self.dropout, self.training)


class SpectralUnitVocoder(nn.Module):
    def __init__(self, cfg: SpectralCfg):
        super().__init__()
        self.cfg = cfg.validate()
        e = cfg.embedding_dim
        # unit ids (or, for the continuous-feature diagnosis, a projection of the features)
        self.dict = nn.Embedding(cfg.num_embeddings, e)
        self.proj_in = nn.Linear(cfg.input_dim, e) if cfg.input_dim else None
        self.spkr = nn.Embedding(cfg.num_speakers, e) if cfg.multispkr else None
        self.dur_predictor = DurationPredictor(**cfg.dur_predictor_params) if cfg.dur_predictor_params else None
        self.conv_pre = nn.Conv1d(e * (2 if cfg.multispkr else 1), cfg.channels, cfg.kernel_size,
                                  padding=(cfg.kernel_size - 1) // 2)
        self.blocks = nn.ModuleList(_ResConv(cfg.channels, cfg.kernel_size, d, cfg.dropout) for d in cfg.dilations)
        self.conv_post = nn.Conv1d(cfg.channels, cfg.n_bins * cfg.frames_per_unit, 1)

    def spectrogram(self, code_BT: torch.Tensor, speaker_B: torch.Tensor | None = None,
                    features_BTD: torch.Tensor | None = None) -> torch.Tensor:
        """-> (B, T * frames_per_unit, n_bins) log magnitude; STFT frame j*hop is unit j's start."""
        x = self.proj_in(features_BTD) if self.proj_in is not None else self.dict(code_BT)
        B, T, _ = x.shape
        if self.spkr is not None:
            if speaker_B is None:
                raise ValueError("this vocoder needs a speaker per utterance")
            x = torch.cat([x, self.spkr(speaker_B.view(B, 1)).expand(B, T, -1)], dim=-1)
        h = self.conv_pre(x.transpose(1, 2))
        for b in self.blocks:
            h = b(h)
        y = self.conv_post(h)  # (B, n_bins * fpu, T)
        fpu, nb = self.cfg.frames_per_unit, self.cfg.n_bins
        return y.view(B, fpu, nb, T).permute(0, 3, 1, 2).reshape(B, T * fpu, nb)

    def predict_durations(self, code_BT: torch.Tensor) -> torch.Tensor:
        if self.dur_predictor is None:
            raise ValueError("this vocoder has no duration predictor")
        log_dur = self.dur_predictor(self.dict(code_BT))
        return torch.clamp(torch.round(torch.exp(log_dur) - 1), min=1).long()

    def forward(self, code_BT, f0_code_BT=None, style_code_BT=None, speaker_B=None, style_B=None):
        """The UnitHiFiGAN call: frame-level units -> (B, T * hop) waveform in [-1, 1]."""
        spec = self.spectrogram(code_BT, speaker_B)
        n = code_BT.shape[1] * self.cfg.hop
        # the STFT of n samples has n // stft_hop + 1 frames; the net predicts frames 1.. (its
        # frames sit under their unit's receptive field, see fit_spectral): frame 0 repeats frame 1
        spec = torch.cat([spec[:, :1], spec], dim=1)[:, : n // self.cfg.stft_hop + 1]
        return torch.clamp(griffin_lim(spec, self.cfg, length=n), -1.0, 1.0)


def spectral_loss(pred_BTF: torch.Tensor, target_BTF: torch.Tensor, mask_BT: torch.Tensor | None = None) -> torch.Tensor:
    """L1 on log magnitude; ``mask_BT`` drops padded frames."""
    d = torch.abs(pred_BTF - target_BTF).mean(-1)
    if mask_BT is None:
        return d.mean()
    return (d * mask_BT).sum() / torch.clamp(mask_BT.sum(), min=1)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

