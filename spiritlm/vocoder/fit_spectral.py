"""Training the spectral unit vocoder (``model.kind = "spectral"`` in ``spiritlm vocoder fit``).

Each step takes random crops of ``train.segment_frames`` unit frames (or continuous HuBERT
features, ``data.condition = "features"``, a diagnosis of what quantisation loses) and the
log-magnitude STFT frames under them; the loss is the L1 between predicted and true log
magnitudes, plus the duration predictor's MSE beside it. No discriminators and no phase: the
waveform comes from Griffin-Lim at decode time (see :mod:`spiritlm.vocoder.spectral`).

STFT frame alignment: unit ``i`` covers samples ``[hop*i, hop*i + 400)`` of a 50 Hz HuBERT
(centre ``hop*i + 200``); its ``frames_per_unit`` predicted frames are the STFT frames centred on
``hop*i + stft_hop*(k + 1)``, k = 0..fpu-1 (centres ``hop*i + 80 .. 320`` for hop 320), i.e. global
STFT frames ``fpu*i + 1 .. fpu*i + fpu``; frame 0 repeats the first prediction.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import numpy as np

from spiritlm.vocoder.fit_data import duration_batch

log = logging.getLogger(__name__)


def target_frames(wav: np.ndarray, n_units: int, scfg) -> np.ndarray:
    """(n_units * fpu, n_bins) log magnitude of the STFT frames the model predicts for ``n_units``."""
    import torch

    from spiritlm.vocoder.spectral import log_magnitude

    n = n_units * scfg.hop
    w = np.zeros(n, np.float32)
    w[: min(n, len(wav))] = wav[:n]
    lm = log_magnitude(torch.from_numpy(w)[None], scfg)[0]  # n // stft_hop + 1 frames
    return lm[1: n_units * scfg.frames_per_unit + 1].numpy().astype(np.float16)  # float16: half the memory


LOGMEL_BANDS = 40


def logmel_features(examples: list, hop: int, n_mels: int = LOGMEL_BANDS) -> list[np.ndarray]:
    """(n_units, n_mels) log mel per example at the units' rate (``data.condition = "logmel"``):
    frame i from a 400-sample window at sample ``hop * i``, as the 50 Hz HuBERT's unit i."""
    import torch

    from spiritlm.vocoder.losses import LogMel

    n_fft = win = 400  # frame i is exactly samples [hop * i, hop * i + 400), the 50 Hz HuBERT's unit i
    # LogMel's filter bank; its own forward pads by (n_fft - hop) // 2, which would shift the frames
    fb_MF = LogMel(n_fft=n_fft, hop=hop, win=win, n_mels=n_mels).fb_FM.T
    out = []
    for e in examples:
        n_units = len(e.units["hubert"])
        w = np.zeros(max(len(e.wav), hop * (n_units - 1) + win), np.float32)
        w[: len(e.wav)] = e.wav
        mag_FT = torch.stft(torch.from_numpy(w), n_fft, hop, win, torch.hann_window(win), center=False,
                            return_complex=True).abs()
        out.append(torch.log(torch.clamp(fb_MF @ mag_FT, min=1e-5)).T[:n_units].numpy().astype(np.float32))
    return out


def duration_predictor_params(m) -> dict | None:
    """The duration predictor's settings (both vocoder kinds have the release's predictor), or
    None when the recipe turns it off."""
    if not m.duration_predictor:
        return None
    return {"encoder_embed_dim": m.embedding_dim, "var_pred_hidden_dim": m.dur_hidden,
            "var_pred_kernel_size": m.dur_kernel, "var_pred_dropout": m.dur_dropout}


def build_spectral_cfg(cfg, tokenizer, n_speakers: int, input_dim: int = 0):
    """The :class:`~spiritlm.vocoder.spectral.SpectralCfg` of a fit config (``model.*``, ``data.*`` of a
    :class:`~spiritlm.vocoder.fit.VocoderFitConfig`) for ``tokenizer``'s units."""
    from spiritlm.config import ConfigError
    from spiritlm.vocoder.spectral import SpectralCfg

    m = cfg.model
    if cfg.data.pitch or cfg.data.style:
        raise ConfigError("model.kind=spectral conditions on HuBERT units and speakers only: set data.pitch=false "
                          "and data.style=false, or use model.kind=hifigan")
    s = SpectralCfg(
        num_embeddings=int(tokenizer.quantizer.size), embedding_dim=m.embedding_dim, input_dim=input_dim,
        channels=m.spectral_channels, kernel_size=m.spectral_kernel, dilations=list(m.spectral_dilations),
        dropout=m.spectral_dropout, n_fft=m.n_fft, win_length=m.n_fft, stft_hop=m.stft_hop,
        griffin_lim_iters=m.griffin_lim_iters, code_hop_size=int(tokenizer.featurizer.hop),
        multispkr=cfg.data.speakers and n_speakers > 0, num_speakers=max(1, n_speakers),
        dur_predictor_params=duration_predictor_params(m))
    try:
        return s.validate()
    except ValueError as e:
        raise ConfigError(f"vocoder model: {e}") from None


def predict_frames(model, ex_units: np.ndarray, speaker: int | None, features: np.ndarray | None = None):
    """Whole-utterance prediction -> (T * fpu, n_bins) torch tensor (no Griffin-Lim)."""
    import torch

    spk = torch.tensor([speaker]) if model.cfg.multispkr else None
    feats = torch.from_numpy(features)[None] if features is not None else None
    return model.spectrogram(torch.from_numpy(ex_units)[None], spk, feats)[0]


def train_spectral(cfg, scfg, examples: list, progress: bool = True, eval_examples: list | None = None,
                   features: list[np.ndarray] | None = None, eval_features: list[np.ndarray] | None = None):
    """-> (trained SpectralUnitVocoder, training log dict, per-step history)."""
    import torch

    from spiritlm.vocoder.spectral import SpectralUnitVocoder, spectral_loss

    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = SpectralUnitVocoder(scfg)
    fpu = scfg.frames_per_unit
    targets = [target_frames(e.wav, len(e.units["hubert"]), scfg) for e in examples]
    ev = eval_examples or []
    ev_targets = [target_frames(e.wav, len(e.units["hubert"]), scfg) for e in ev]
    rng = np.random.default_rng(cfg.seed)
    dur_rng = np.random.default_rng(cfg.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), tc.lr, betas=tuple(tc.betas), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, tc.lr_decay ** 0.01)
    seg = tc.segment_frames

    def heldout_l1() -> float | None:
        if not ev:
            return None
        model.eval()
        with torch.inference_mode():
            tot = [float(spectral_loss(predict_frames(model, e.units["hubert"], e.speaker,
                                                      eval_features[i] if eval_features else None),
                                       torch.from_numpy(ev_targets[i].astype(np.float32))))
                   for i, e in enumerate(ev)]
        model.train()
        return float(np.mean(tot))

    before = heldout_l1()
    model.train()
    history: list[dict[str, float]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, desc="vocoder (spectral)", unit="step")
    t0 = time.perf_counter()
    step = 0
    for step in range(tc.steps):
        idx = rng.integers(0, len(examples), tc.batch_size)
        codes, spk, tgt, mask, feats = [], [], [], [], []
        for i in idx:
            hu = examples[i].units["hubert"]
            s = int(rng.integers(0, max(1, len(hu) - seg + 1)))
            c = hu[s:s + seg]
            n = len(c)
            codes.append(np.pad(c, (0, seg - n), mode="edge"))
            t = targets[i][s * fpu:(s + n) * fpu].astype(np.float32)
            tgt.append(np.pad(t, ((0, (seg - n) * fpu), (0, 0))))
            mask.append(np.repeat(np.arange(seg) < n, fpu))
            spk.append(examples[i].speaker)
            if features is not None:
                f = features[i][s:s + n]
                feats.append(np.pad(f, ((0, seg - n), (0, 0)), mode="edge"))
        codes_BT = torch.from_numpy(np.stack(codes))
        spk_B = torch.tensor(spk, dtype=torch.long) if scfg.multispkr else None
        feats_BTD = torch.from_numpy(np.stack(feats)) if features is not None else None
        pred = model.spectrogram(codes_BT, spk_B, feats_BTD)
        loss_spec = spectral_loss(pred, torch.from_numpy(np.stack(tgt)), torch.from_numpy(np.stack(mask)).float())
        loss = loss_spec
        loss_dur = torch.zeros(())
        if model.dur_predictor is not None:
            dcodes, dtarget, dmask = duration_batch(examples, dur_rng, tc.batch_size)
            p = model.dur_predictor(model.dict(dcodes))
            loss_dur = torch.mean((p - dtarget)[dmask] ** 2)
            loss = loss + tc.dur_weight * loss_dur
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            sched.step()
        rec = {"step": step + 1, "spec_l1": float(loss_spec.detach()), "dur": float(loss_dur.detach())}
        history.append(rec)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(spec=f"{rec['spec_l1']:.3f}")
        if tc.log_every and (step + 1) % tc.log_every == 0:
            log.info("step %d: spec_l1 %.4f dur %.4f", step + 1, rec["spec_l1"], rec["dur"])
        if tc.max_minutes and time.perf_counter() - t0 > tc.max_minutes * 60:
            log.warning("train.max_minutes=%s reached after %d of %d steps", tc.max_minutes, step + 1, tc.steps)
            break
    if bar is not None:
        bar.close()
    seconds = round(time.perf_counter() - t0, 1)
    model.eval()
    after = heldout_l1()
    train_log: dict[str, Any] = {
        "steps": step + 1, "seconds": seconds, "spec_l1_first": history[0]["spec_l1"] if history else None,
        "spec_l1_last50": float(np.mean([h["spec_l1"] for h in history[-50:]])) if history else None,
        "heldout_spec_l1_before": before, "heldout_spec_l1_after": after}
    return model, train_log, history
