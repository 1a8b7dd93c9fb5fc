"""HiFi-GAN training losses: log-mel L1, a multi-period and a multi-scale discriminator (least
squares GAN) and feature matching. Written from the HiFi-GAN paper (Kong et al. 2020); channel
widths are parameters so that a CPU recipe can use a small fraction of the paper's sizes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm


class LogMel(nn.Module):
    """waveform (B, N) -> log mel spectrogram (B, n_mels, frames); the HiFi-GAN loss setting
    (n_fft 1024, hop 256, window 1024, 80 mels, 0-8 kHz at 16 kHz) by default."""

    def __init__(self, sample_rate: int = 16000, n_fft: int = 1024, hop: int = 256, win: int = 1024,
                 n_mels: int = 80, fmin: float = 0.0, fmax: float | None = None):
        super().__init__()
        # transformers ships a mel filter bank (librosa is not installed here)
        from transformers.audio_utils import mel_filter_bank

        fb = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=fmin,
                             max_frequency=fmax or sample_rate / 2, sampling_rate=sample_rate, norm="slaney",
                             mel_scale="slaney")
        self.register_buffer("fb_FM", torch.tensor(fb, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hann_window(win), persistent=False)
        self.n_fft, self.hop, self.win = n_fft, hop, win

    def forward(self, wav_BN: torch.Tensor) -> torch.Tensor:
        pad = (self.n_fft - self.hop) // 2
        x = F.pad(wav_BN.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(x, self.n_fft, self.hop, self.win, self.window, center=False, return_complex=True)
        mag_BFT = torch.sqrt(spec.real**2 + spec.imag**2 + 1e-9)
        mel_BMT = torch.einsum("fm,bft->bmt", self.fb_FM, mag_BFT)
        return torch.log(torch.clamp(mel_BMT, min=1e-5))


def _run_stack(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor):
    """A discriminator's conv stack: (flattened score, every layer's output for feature matching)."""
    feats = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        feats.append(x)
    x = post(x)
    feats.append(x)
    return x.flatten(1), feats


class PeriodDiscriminator(nn.Module):
    """The waveform folded into (N / p, p) and seen by 2-D convs that never mix the p columns."""

    def __init__(self, period: int, channels: int):
        super().__init__()
        self.period = period
        c = channels
        widths = [1, c, 4 * c, 8 * c, 8 * c]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(widths[i], widths[i + 1], (5, 1), (3, 1) if i < 3 else (1, 1), padding=(2, 0)))
            for i in range(4))
        self.post = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, x_BN: torch.Tensor):
        B, N = x_BN.shape
        if N % self.period:
            x_BN = F.pad(x_BN, (0, self.period - N % self.period), mode="reflect")
        return _run_stack(self.convs, self.post, x_BN.view(B, 1, -1, self.period))


class ScaleDiscriminator(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        c = channels
        spec = [(1, c, 15, 1, 1), (c, 2 * c, 41, 4, 4), (2 * c, 4 * c, 41, 4, 4), (4 * c, 4 * c, 41, 4, 4),
                (4 * c, 4 * c, 5, 1, 1)]
        self.convs = nn.ModuleList(weight_norm(nn.Conv1d(i, o, k, s, groups=g, padding=k // 2))
                                   for i, o, k, s, g in spec)
        self.post = weight_norm(nn.Conv1d(4 * c, 1, 3, padding=1))

    def forward(self, x_BN: torch.Tensor):
        return _run_stack(self.convs, self.post, x_BN.unsqueeze(1))


class Discriminators(nn.Module):
    """Multi-period (periods 2, 3, 5, 7, 11) + multi-scale (raw, /2, /4 by average pooling)."""

    def __init__(self, periods=(2, 3, 5, 7, 11), mpd_channels: int = 32, msd_channels: int = 16, scales: int = 3):
        super().__init__()
        self.mpd = nn.ModuleList(PeriodDiscriminator(p, mpd_channels) for p in periods)
        self.msd = nn.ModuleList(ScaleDiscriminator(msd_channels) for _ in range(scales))

    def forward(self, x_BN: torch.Tensor):
        outs, feats = [], []
        for d in self.mpd:
            o, f = d(x_BN)
            outs.append(o)
            feats.append(f)
        x = x_BN
        for i, d in enumerate(self.msd):
            if i:
                x = F.avg_pool1d(x.unsqueeze(1), 4, 2, padding=2).squeeze(1)
            o, f = d(x)
            outs.append(o)
            feats.append(f)
        return outs, feats


def discriminator_loss(real_outs, fake_outs) -> torch.Tensor:
    return sum(torch.mean((1 - r) ** 2) + torch.mean(f**2) for r, f in zip(real_outs, fake_outs))


def generator_adv_loss(fake_outs) -> torch.Tensor:
    return sum(torch.mean((1 - f) ** 2) for f in fake_outs)


def feature_matching_loss(real_feats, fake_feats) -> torch.Tensor:
    return sum(torch.mean(torch.abs(r.detach() - f)) for rs, fs in zip(real_feats, fake_feats) for r, f in zip(rs, fs))
