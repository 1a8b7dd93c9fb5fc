"""F0 VQ-VAE (speech-resynthesis / Jukebox style) giving 12.5 pitch tokens/s.

Input (2, T) at 200 frames/s: normalised interpolated log-F0 and the voiced flag. A conv encoder
downsamples 16x (four stride-2 convs) to 12.5 latents/s; a codebook of 64 entries quantizes them
with EMA updates, a commitment loss and dead-code restarts (codes unused for a while are reset
to random encoder outputs of the current batch); a mirrored decoder reconstructs both channels.
``cents_error`` measures 1200*|log2(F0_hat / F0)| on frames voiced in the reference.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DOWN = 16


class EMACodebook(nn.Module):
    def __init__(self, size: int = 64, dim: int = 64, decay: float = 0.99, dead_after: int = 20):
        super().__init__()
        self.size, self.dim, self.decay, self.dead_after = size, dim, decay, dead_after
        self.register_buffer("codes_KD", torch.randn(size, dim) * 0.1)
        self.register_buffer("ema_count_K", torch.ones(size))
        self.register_buffer("ema_sum_KD", self.codes_KD.clone())
        self.register_buffer("unused_K", torch.zeros(size))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.bypass = False  # warm-up: pass encoder outputs through unquantized

    def nearest(self, z_ND: torch.Tensor) -> torch.Tensor:
        d = (z_ND.pow(2).sum(1, keepdim=True) - 2 * z_ND @ self.codes_KD.T + self.codes_KD.pow(2).sum(1)[None])
        return d.argmin(1)

    def forward(self, z_ND: torch.Tensor):
        if self.bypass:
            return z_ND, self.nearest(z_ND), z_ND.new_zeros(())
        if self.training and not bool(self.initialized) and len(z_ND):
            with torch.no_grad():  # data-dependent init: codes = random encoder outputs
                pick = torch.randint(len(z_ND), (self.size,), device=z_ND.device)
                self.codes_KD.copy_(z_ND[pick] + 1e-3 * torch.randn_like(z_ND[pick]))
                self.ema_sum_KD.copy_(self.codes_KD)
                self.initialized.fill_(True)
        idx = self.nearest(z_ND)
        q = self.codes_KD[idx]
        if self.training:
            with torch.no_grad():
                onehot = F.one_hot(idx, self.size).type_as(z_ND)
                count, total = onehot.sum(0), onehot.T @ z_ND
                self.ema_count_K.mul_(self.decay).add_(count, alpha=1 - self.decay)
                self.ema_sum_KD.mul_(self.decay).add_(total, alpha=1 - self.decay)
                n = self.ema_count_K.sum()
                cnt = (self.ema_count_K + 1e-5) / (n + self.size * 1e-5) * n
                self.codes_KD.copy_(self.ema_sum_KD / cnt[:, None])
                self.unused_K.add_(1).masked_fill_(count > 0, 0)
                dead = self.unused_K >= self.dead_after
                if dead.any() and len(z_ND):
                    pick = torch.randint(len(z_ND), (int(dead.sum()),), device=z_ND.device)
                    self.codes_KD[dead] = z_ND[pick].detach()
                    self.ema_sum_KD[dead] = z_ND[pick].detach()
                    self.ema_count_K[dead] = 1.0
                    self.unused_K[dead] = 0
        commit = F.mse_loss(z_ND, q.detach())
        q = z_ND + (q - z_ND).detach()  # straight-through to the encoder
        return q, idx, commit


def _block(cin: int, cout: int, stride: int, up: bool = False) -> nn.Module:
    conv = (nn.ConvTranspose1d(cin, cout, 4, stride=2, padding=1) if up
            else nn.Conv1d(cin, cout, 4 if stride == 2 else 3, stride=stride, padding=1))
    return nn.Sequential(conv, nn.GELU(), nn.Conv1d(cout, cout, 3, padding=1), nn.GELU())


class F0VQVAE(nn.Module):
    def __init__(self, codebook: int = 64, hidden: int = 64, dim: int = 64, beta: float = 0.25,
                 f0_scale: float = 5.0):
        super().__init__()
        self.beta = beta
        self.f0_scale = f0_scale  # normalised log-F0 varies by ~0.1-0.3: scale it up to ~1
        self.enc = nn.Sequential(nn.Conv1d(2, hidden, 3, padding=1), nn.GELU(),
                                 *[_block(hidden, hidden, 2) for _ in range(4)], nn.Conv1d(hidden, dim, 1))
        self.vq = EMACodebook(codebook, dim)
        self.dec = nn.Sequential(nn.Conv1d(dim, hidden, 3, padding=1), nn.GELU(),
                                 *[_block(hidden, hidden, 2, up=True) for _ in range(4)], nn.Conv1d(hidden, 2, 1))
        for mod in self.modules():  # variance-preserving init: PyTorch's default shrinks the
            if isinstance(mod, (nn.Conv1d, nn.ConvTranspose1d)):  # signal ~10x over 10+ layers
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                nn.init.zeros_(mod.bias)

    @staticmethod
    def pad(x_BCT: torch.Tensor) -> torch.Tensor:
        T = x_BCT.shape[-1]
        target = max(DOWN, math.ceil(T / DOWN) * DOWN)
        return F.pad(x_BCT, (0, target - T), mode="replicate") if target > T else x_BCT

    def _scale(self, x_BCT: torch.Tensor) -> torch.Tensor:
        return torch.cat([x_BCT[:, :1] * self.f0_scale, x_BCT[:, 1:]], 1)

    def forward(self, x_BCT: torch.Tensor):
        """-> (reconstruction with the F0 channel in scaled units, codes, commitment loss)."""
        T = x_BCT.shape[-1]
        z_BDN = self.enc(self.pad(self._scale(x_BCT)))
        B, D, N = z_BDN.shape
        q_ND, idx, commit = self.vq(z_BDN.permute(0, 2, 1).reshape(-1, D))
        y_BCT = self.dec(q_ND.reshape(B, N, D).permute(0, 2, 1))[..., :T]
        return y_BCT, idx.reshape(B, N), commit

    def loss(self, x_BCT: torch.Tensor):
        y, _, commit = self(x_BCT)
        voiced = x_BCT[:, 1]
        f0_loss = (F.mse_loss(y[:, 0], x_BCT[:, 0] * self.f0_scale, reduction="none") * (0.2 + voiced)).mean()
        vuv_loss = F.binary_cross_entropy_with_logits(y[:, 1], voiced)
        return f0_loss + 0.1 * vuv_loss + self.beta * commit, {"f0": f0_loss.item(), "commit": commit.item()}

    @torch.inference_mode()
    def encode(self, x_CT: np.ndarray) -> np.ndarray:
        """(2, T) features -> floor(T / 16) codes (1 when T < 16).

        A trailing part shorter than 16 frames (80 ms) gets no code, as in the release, whose
        strided convs give floor(T / 16): with HuBERT's floor((n - 720) / 640) + 1 frames and
        ceil(n / 16000) style windows, a LibriSpeech file of 146000-146639 samples gives the
        228 / 114 / 10 units of the release's test (a ceil here would give 115).
        """
        self.eval()
        x = torch.as_tensor(x_CT, dtype=torch.float32)[None]
        if x.shape[-1] >= DOWN:
            x = x[..., : x.shape[-1] // DOWN * DOWN]
        z = self.enc(self.pad(self._scale(x)))
        return self.vq.nearest(z[0].T).cpu().numpy().astype(np.int64)

    @torch.inference_mode()
    def decode(self, codes_N: np.ndarray, mean: float, voicing: bool = True) -> np.ndarray:
        """codes -> F0 in Hz at 200 frames/s, 16 frames per code; 0 where predicted unvoiced
        (``voicing=False``: the continuous interpolated contour everywhere)."""
        self.eval()
        q = self.vq.codes_KD[torch.as_tensor(codes_N, dtype=torch.long)]
        y = self.dec(q.T[None])[0].cpu().numpy()
        f0 = np.exp(np.clip(y[0] / self.f0_scale + mean, -20, 20))
        return (np.where(y[1] > 0, f0, 0.0) if voicing else f0).astype(np.float32)


def cents_error(f0_ref: np.ndarray, f0_hat: np.ndarray) -> float:
    """Mean |1200 log2(F0_hat/F0)| over frames voiced in the reference and with F0_hat > 0
    (pass ``decode(..., voicing=False)`` to score every reference-voiced frame)."""
    f0_ref, f0_hat = np.asarray(f0_ref), np.asarray(f0_hat)[: len(f0_ref)]
    v = (f0_ref > 0) & (f0_hat > 0)
    if not v.any():
        return float("nan")
    return float(np.mean(np.abs(1200 * np.log2(f0_hat[v] / f0_ref[v]))))


def train_vqvae(feats: list[np.ndarray], codebook: int = 64, steps: int = 1500, batch_size: int = 32,
                segment: int = 256, lr: float = 2e-3, seed: int = 0, progress: bool = False) -> F0VQVAE:
    """Train on a list of (2, T) feature arrays with random fixed-length windows."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    feats = [f for f in feats if f.shape[1] >= 16]
    if not feats:
        raise ValueError("no F0 tracks of at least 16 frames (80 ms) to train the pitch VQ-VAE on")
    model = F0VQVAE(codebook=codebook)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    data = [torch.as_tensor(f) for f in feats]
    model.train()
    warmup = steps // 5  # plain autoencoder first, so the codebook starts from spread-out latents
    model.vq.bypass = warmup > 0
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="f0-vqvae", unit="step")
    for step in it:
        if step == warmup:
            model.vq.bypass = False
        batch = []
        for _ in range(batch_size):
            x = data[int(torch.randint(len(data), (1,), generator=g))]
            if x.shape[1] > segment:
                s = int(torch.randint(x.shape[1] - segment + 1, (1,), generator=g))
                x = x[:, s : s + segment]
            else:
                x = F.pad(x[None], (0, segment - x.shape[1]), mode="replicate")[0]
            batch.append(x)
        loss, _ = model.loss(torch.stack(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def save_vqvae(model: F0VQVAE, path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def load_vqvae(path, codebook: int = 64) -> F0VQVAE:
    from safetensors.torch import load_file

    sd = load_file(str(path))
    model = F0VQVAE(codebook=sd["vq.codes_KD"].shape[0], dim=sd["vq.codes_KD"].shape[1])
    model.load_state_dict(sd)
    return model.eval()
