"""The release's pitch tokenizer: its F0 VQ-VAE files, its F0 settings and preprocessing.

Our own implementation of the layout the release's ``vqvae_f0_quantizer/`` folder holds (read
from the published layout, no code copied; the release's code is noncommercial):

* ``config.yaml`` (YAML, read with ``safe_load``): ``features`` (``f0,vuv`` | ``f0_interp,vuv`` |
  ``norm_f0,vuv`` | ``norm_f0_interp,vuv``), optional ``speaker_norm``, and the Jukebox-style
  architecture in ``encoder_params`` / ``vq_params`` / ``decoder_params``.
* ``model.pt``: ``{"model": state_dict}`` with keys ``encoder.level_blocks.{l}.model...``,
  ``vq.level_blocks.{l}.k`` (the ``l_bins x emb_width`` codebook) and ``decoder.level_blocks...``,
  ``decoder.out``. Loaded without executing pickled code.

Encoder level: ``down_t`` times [Conv1d(kernel 2s, stride s, pad s//2) -> Resnet1D], then a
Conv1d(width -> emb_width, 3). Resnet1D: ``depth`` residual blocks x + [ReLU, Conv1d(3, dilation
g**d), ReLU, Conv1d(1)](x). With stride 2 and ``down_t`` 4 a track of T frames (200 Hz) gives
``T // 16`` codes (12.5 Hz). The code of a latent is its nearest codebook row (squared L2).

Input (release): F0 in Hz of the extractor, linearly interpolated over unvoiced frames (edges take
the border values) when there are at least two voiced frames; with ``norm_`` features (or
``speaker_norm``), every non-zero frame minus the mean F0 of the frames the extractor calls voiced
(the utterance's own mean: the release's ``encode_units`` passes no speaker); stacked with the
extractor's voicing flag -> (2, T). F0 extractors: pYAAPT with the release's settings (peak
normalised x 0.95, frame 20 ms every 5 ms, 10 ms zero padding each side, ``nccf_thresh1=0.25``,
``tda_frame_length=25``, pYAAPT's default 60-400 Hz range; ``n // 80`` frames), or FCPE
(``n // 80 + 1`` frames), which needs torchfcpe -> torchaudio and cannot run on this stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

HOP = 80
FEATURES = ("f0,vuv", "f0_interp,vuv", "norm_f0,vuv", "norm_f0_interp,vuv")
F0_METHODS = ("yaapt", "fcpe")


class ReleaseFormatError(ValueError):
    """A release file that is not what its name says."""


def release_f0_frames(n_samples: int, method: str = "yaapt") -> int:
    """F0 frames the release's extractor gives for ``n_samples`` at 16 kHz."""
    if method == "yaapt":
        return int(n_samples) // HOP
    if method == "fcpe":
        return int(n_samples) // HOP + 1
    raise ValueError(f"F0 method {method!r}: the release has {F0_METHODS}")


def release_pitch_tokens(n_samples: int, method: str = "yaapt", down: int = 16,
                         max_chunk: int = 100 * 16000, min_chunk: int = 1280) -> int:
    """Pitch tokens of a file under the release's rule: per <= 100 s chunk (shorter than 1280
    samples: dropped), F0 frames of that extractor // 16 (the strided encoder floors)."""
    return sum(release_f0_frames(min(max_chunk, n_samples - s), method) // down
               for s in range(0, n_samples, max_chunk) if min(max_chunk, n_samples - s) >= min_chunk)


# ---- F0 extraction with the release's settings ---------------------------------------------
def release_yaapt(wav: np.ndarray, hop: int = HOP, sr: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    """pYAAPT with the release's settings -> (F0 in Hz, 0 where unvoiced; voicing flag), ``n // hop`` frames."""
    import amfm_decompy.basic_tools as basic
    import amfm_decompy.pYAAPT as pYAAPT

    wav = np.asarray(wav).squeeze()
    if wav.ndim != 1:
        raise ValueError(f"expected a mono waveform, got shape {wav.shape}")
    if not np.issubdtype(wav.dtype, np.floating):
        wav = wav.astype(np.float32)
    wav = wav[: len(wav) // hop * hop]
    # peak normalisation as librosa.util.normalize does it (not installed here): divide by max |x|
    # unless that is below the dtype's smallest normal number (silence stays as is); then x 0.95
    peak = np.abs(wav).max() if len(wav) else 0.0
    audio = (wav / (peak if peak >= np.finfo(wav.dtype).tiny else 1.0)) * 0.95
    half_frame = int(20.0 / 1000 * sr) // 2
    if hop == 80:
        audio = np.pad(audio, (half_frame, half_frame))
    pitch = pYAAPT.yaapt(basic.SignalObj(audio, sr), frame_length=20.0, frame_space=hop / sr * 1000,
                         nccf_thresh1=0.25, tda_frame_length=25.0)
    return np.asarray(pitch.samp_values, dtype=np.float64), np.asarray(pitch.vuv).astype(bool)


def interpolate_f0(f0_T: np.ndarray) -> np.ndarray:
    """Linear interpolation over zero frames, border values at the ends; < 2 voiced -> unchanged."""
    f0_T = np.asarray(f0_T, dtype=np.float64)
    voiced = f0_T != 0
    if voiced.sum() <= 1:
        return f0_T.copy()
    t = np.arange(len(f0_T))
    return np.interp(t, t[voiced], f0_T[voiced])  # np.interp holds the border values outside


def release_vqvae_input(f0_T: np.ndarray, vuv_T: np.ndarray, features: str, normalize: bool) -> np.ndarray:
    """(F0 as given by the extractor, its voicing flag) -> the (2, T) float32 VQ-VAE input."""
    if features not in FEATURES:
        raise ValueError(f"features={features!r}: the release's F0 VQ-VAE takes one of {FEATURES}")
    f0 = np.array(f0_T, dtype=np.float64)
    vuv = np.asarray(vuv_T).astype(bool)
    if normalize:
        if vuv.any():
            nonzero = f0 != 0
            f0[nonzero] -= f0[vuv].mean()
    return np.stack([f0, vuv.astype(np.float64)]).astype(np.float32)


# ---- the Jukebox-style VQ-VAE -------------------------------------------------------------
class _ResBlock(nn.Module):
    def __init__(self, width: int, state: int, dilation: int, res_scale: float):
        super().__init__()
        self.model = nn.Sequential(nn.ReLU(), nn.Conv1d(width, state, 3, 1, dilation, dilation),
                                   nn.ReLU(), nn.Conv1d(state, width, 1, 1, 0))
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.res_scale * self.model(x)


class _ResStack(nn.Module):
    def __init__(self, width: int, depth: int, m_conv: float = 1.0, dilation_growth_rate: int = 1,
                 dilation_cycle: int | None = None, res_scale: bool = False, reverse_dilation: bool = False):
        super().__init__()
        blocks = [_ResBlock(width, int(m_conv * width),
                            dilation_growth_rate ** (d % dilation_cycle if dilation_cycle else d),
                            1.0 / np.sqrt(depth) if res_scale else 1.0) for d in range(depth)]
        self.model = nn.Sequential(*(blocks[::-1] if reverse_dilation else blocks))

    def forward(self, x):
        return self.model(x)


def _filter_pad(stride: int) -> tuple[int, int]:
    return (2 * stride, stride // 2) if stride % 2 == 0 else (2 * stride + 1, stride // 2 + 1)


def _stages(downs_t: Any, strides_t: Any) -> list[tuple[int, int]]:
    """[(stride, number of downsampling convs)] of one level; int or list forms."""
    if isinstance(strides_t, (list, tuple)):
        return [(int(s), int(d)) for s, d in zip(strides_t, downs_t)]
    return [(int(strides_t), int(downs_t))]


def _block_kwargs(p: dict) -> dict:
    return {"m_conv": float(p.get("m_conv", 1.0)), "dilation_growth_rate": int(p.get("dilation_growth_rate", 1)),
            "dilation_cycle": p.get("dilation_cycle"), "res_scale": bool(p.get("res_scale", False))}


class _EncoderLevel(nn.Module):
    def __init__(self, cin: int, cout: int, stages, width: int, depth: int, kw: dict, int_form: bool):
        super().__init__()
        blocks, first = [], True
        for s, d in stages:
            filt, pad = (2 * s, s // 2) if int_form else _filter_pad(s)
            for _ in range(d):
                blocks.append(nn.Sequential(nn.Conv1d(cin if first else width, width, filt, s, pad),
                                            _ResStack(width, depth, **kw)))
                first = False
        if blocks or not int_form:
            blocks.append(nn.Conv1d(width, cout, 3, 1, 1))
        self.model = nn.Sequential(*blocks)

    def forward(self, x):
        return self.model(x)


class _DecoderLevel(nn.Module):
    def __init__(self, emb: int, stages, width: int, depth: int, kw: dict, int_form: bool, reverse: bool):
        super().__init__()
        blocks = [nn.Conv1d(emb, width, 3, 1, 1)] if (not int_form or stages[0][1] > 0) else []
        for k, (s, d) in enumerate(stages):
            filt, pad = (2 * s, s // 2) if int_form else _filter_pad(s)
            last_stage = k == len(stages) - 1
            for i in range(d):
                out = emb if (i == d - 1 and last_stage) else width
                blocks.append(nn.Sequential(_ResStack(width, depth, reverse_dilation=reverse, **kw),
                                            nn.ConvTranspose1d(width, out, filt, s, pad)))
        self.model = nn.Sequential(*blocks)

    def forward(self, x):
        return self.model(x)


class _Codebook(nn.Module):
    def __init__(self, l_bins: int, emb_width: int):
        super().__init__()
        self.register_buffer("k", torch.zeros(l_bins, emb_width))


class ReleaseF0VQVAE(nn.Module):
    """Encoder / bottleneck / decoder with the release's parameter names (see module doc)."""

    def __init__(self, cfg: dict):
        super().__init__()
        enc, vq, dec = (dict(cfg[k]) for k in ("encoder_params", "vq_params", "decoder_params"))
        self.levels = int(enc["levels"])
        self.encoder = nn.Module()
        self.encoder.level_blocks = nn.ModuleList()
        self.strides: list[list[tuple[int, int]]] = []
        self.int_form: list[bool] = []
        for lvl in range(self.levels):
            stages = _stages(enc["downs_t"][lvl], enc["strides_t"][lvl])
            self.strides.append(stages)
            self.int_form.append(not isinstance(enc["strides_t"][lvl], (list, tuple)))
            self.encoder.level_blocks.append(_EncoderLevel(
                int(enc["input_emb_width"]) if lvl == 0 else int(enc["output_emb_width"]),
                int(enc["output_emb_width"]), stages, int(enc["width"]), int(enc["depth"]), _block_kwargs(enc),
                not isinstance(enc["strides_t"][lvl], (list, tuple))))
        self.vq = nn.Module()
        self.vq.level_blocks = nn.ModuleList(_Codebook(int(vq["l_bins"]), int(vq["emb_width"]))
                                             for _ in range(int(vq["levels"])))
        self.decoder = nn.Module()
        self.decoder.level_blocks = nn.ModuleList(
            _DecoderLevel(int(dec["output_emb_width"]), _stages(dec["downs_t"][lvl], dec["strides_t"][lvl]),
                          int(dec["width"]), int(dec["depth"]), _block_kwargs(dec),
                          not isinstance(dec["strides_t"][lvl], (list, tuple)),
                          bool(dec.get("reverse_decoder_dilation", False)))
            for lvl in range(int(dec["levels"])))
        self.decoder.out = nn.Conv1d(int(dec["output_emb_width"]), int(dec["input_emb_width"]), 3, 1, 1)
        self.input_channels = int(enc["input_emb_width"])

    @property
    def codebook_size(self) -> int:
        return int(self.vq.level_blocks[0].k.shape[0])

    @property
    def downsampling(self) -> int:
        return int(np.prod([s ** d for s, d in self.strides[0]]))

    def n_codes(self, n_frames: int) -> int:
        for s, d in self.strides[0]:
            filt, pad = (2 * s, s // 2) if self.int_form[0] else _filter_pad(s)
            for _ in range(d):
                n_frames = max((n_frames + 2 * pad - filt) // s + 1, 0)
        return n_frames

    @torch.inference_mode()
    def encode(self, x_CT: np.ndarray) -> np.ndarray:
        """(2, T) input -> level-0 codes (the ones the release's tokens are)."""
        x = torch.as_tensor(np.asarray(x_CT, dtype=np.float32))[None]
        if x.shape[1] != self.input_channels:
            raise ValueError(f"VQ-VAE input has {x.shape[1]} channels, the model expects {self.input_channels}")
        if self.n_codes(x.shape[-1]) == 0:
            return np.zeros(0, np.int64)
        dev = self.decoder.out.weight.device
        z_BDN = self.encoder.level_blocks[0](x.to(dev))
        k_KD = self.vq.level_blocks[0].k
        z_ND = z_BDN[0].T
        dist = z_ND.pow(2).sum(1, keepdim=True) - 2 * z_ND @ k_KD.T + k_KD.pow(2).sum(1)[None]
        return dist.argmin(1).cpu().numpy().astype(np.int64)

    @torch.inference_mode()
    def decode(self, codes_N: np.ndarray) -> np.ndarray:
        """Level-0 codes -> the (2, T) reconstruction (one-level models)."""
        if self.levels != 1:
            raise ValueError("decode supports one-level VQ-VAEs (the release's)")
        q = self.vq.level_blocks[0].k[torch.as_tensor(np.asarray(codes_N), dtype=torch.long)]
        return self.decoder.out(self.decoder.level_blocks[0](q.T[None]))[0].cpu().numpy()


def load_release_vqvae(directory: str | Path) -> tuple[ReleaseF0VQVAE, dict]:
    """``vqvae_f0_quantizer/`` (``config.yaml`` + ``model.pt``) -> (model in eval mode, config)."""
    import yaml

    from spiritlm.tokenizer.fairseq_convert import safe_load_checkpoint

    d = Path(directory)
    cfg_path, pt_path = d / "config.yaml", d / "model.pt"
    for p in (cfg_path, pt_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing (the release's vqvae_f0_quantizer/ holds config.yaml and model.pt)")
    try:
        cfg = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as e:
        raise ReleaseFormatError(f"{cfg_path}: not valid YAML ({e})") from None
    need = ("features", "encoder_params", "vq_params", "decoder_params")
    if not isinstance(cfg, dict) or any(k not in cfg for k in need):
        raise ReleaseFormatError(f"{cfg_path}: an F0 VQ-VAE config needs the fields {list(need)}; found "
                                 f"{sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__}")
    if cfg["features"] not in FEATURES:
        raise ReleaseFormatError(f"{cfg_path}: features={cfg['features']!r}; the release's VQ-VAE takes one of {FEATURES}")
    try:
        model = ReleaseF0VQVAE(cfg)
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise ReleaseFormatError(f"{cfg_path}: incomplete architecture fields ({type(e).__name__}: {e})") from None
    ckpt = safe_load_checkpoint(pt_path)
    sd = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise ReleaseFormatError(f"{pt_path}: expected {{'model': state_dict}} (the release's F0 VQ-VAE), found "
                                 f"{sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__}")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ReleaseFormatError(f"{pt_path}: weights do not match {cfg_path.name}: {str(e)[:500]}") from None
    return model.eval(), cfg


class ReleasePitchTokenizer:
    """Waveform -> the release's pitch tokens (12.5 Hz), chunked like its ``encode_units``."""

    kind = "release_vqvae"

    def __init__(self, directory: str | Path, f0_method: str = "yaapt", device: str = "cpu",
                 max_chunk: int = 100 * 16000, min_chunk: int = 1280):
        if f0_method == "fcpe":
            raise ValueError("f0_method='fcpe' (the release's default F0) needs torchfcpe, which imports torchaudio: "
                             "it cannot be installed on this stack. Use f0_method='yaapt' (the release's other "
                             "extractor, the one its VQ-VAE was trained on)")
        if f0_method not in F0_METHODS:
            raise ValueError(f"f0_method={f0_method!r}: the release has {F0_METHODS}")
        self.model, self.cfg = load_release_vqvae(directory)
        self.model.to(device)
        self.f0_method = f0_method
        self.features = self.cfg["features"]
        self.normalize = bool(self.cfg.get("speaker_norm", False)) or "norm_" in self.features
        self.interpolate = True  # the release builds its extractor with interpolate=True
        self.max_chunk, self.min_chunk = int(max_chunk), int(min_chunk)

    @property
    def size(self) -> int:
        return self.model.codebook_size

    def f0(self, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(F0 in Hz as the VQ-VAE sees it before normalisation, voicing flag)."""
        f0, vuv = release_yaapt(wav)
        return (interpolate_f0(f0) if self.interpolate else f0), vuv

    def tokenize(self, wav: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(wav), self.max_chunk):
            chunk = wav[start : start + self.max_chunk]
            if len(chunk) < self.min_chunk:
                continue
            f0, vuv = self.f0(chunk)
            out.append(self.model.encode(release_vqvae_input(f0, vuv, self.features, self.normalize)))
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def num_tokens(self, n_samples: int) -> int:
        total = 0
        for start in range(0, n_samples, self.max_chunk):
            n = min(self.max_chunk, n_samples - start)
            if n >= self.min_chunk:
                total += self.model.n_codes(release_f0_frames(n, self.f0_method))
        return total
