"""``spiritlm vocoder fit``: train a unit HiFi-GAN on a corpus of ours.

    cfg = load_config(VocoderFitConfig, "tokenizers/vocoder_demo.toml", ["data.tokenizer=out/tokenizer-demo"])
    out = fit_vocoder(cfg)      # output_dir: config.json, generator.safetensors, fit_config.yaml, metrics.json

Data: the manifest's ``train`` utterances are encoded with the speech tokenizer (frame-level
HuBERT units, and pitch/style codes when ``data.pitch``/``data.style`` ask for them); each step
takes random crops of ``train.segment_frames`` unit frames and the matching
``segment_frames * hop`` samples. Losses (HiFi-GAN): 45 x log-mel L1, from
``train.disc_start_step`` on also least-squares GAN losses of a multi-period and a multi-scale
discriminator and 2 x feature matching; the duration predictor (log(run length + 1) of the
deduplicated units, MSE) trains beside it. Convolutions train under weight normalisation, folded
into plain weights when saved. Same data + seed -> the same weights (CPU).

At the end, held-out utterances are vocoded from their units and transcribed by pocketsphinx,
as are the originals; ``metrics.json`` holds both WERs and the held-out mel L1 before and after.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spiritlm.vocoder.fit_data import Example, duration_batch, load_examples, run_lengths
from spiritlm.vocoder.fit_spectral import (LOGMEL_BANDS, build_spectral_cfg, duration_predictor_params,
                                           logmel_features, predict_frames, train_spectral)
from spiritlm.vocoder.measure import score

log = logging.getLogger(__name__)


@dataclass
class VocoderDataCfg:
    corpus: str = "data/demo_corpus/manifest.jsonl"  # `spiritlm corpus demo` writes it
    tokenizer: str = ""  # speech tokenizer directory (`spiritlm tokenizer fit`)
    train_split: str = "train"
    eval_split: str = "heldout"
    max_files: int = 400  # training utterances (0 = all)
    pitch: bool = False  # condition on pitch codes (the tokenizer must have them)
    style: bool = False  # condition on style codes
    speakers: bool = True  # a speaker embedding per manifest speaker
    # "units" (a vocoder) or "features": the spectral kind fed the tokenizer's continuous HuBERT
    # features instead of their units -- a diagnosis of what quantisation loses, cannot decode units
    # "logmel": fed the true 40-band log-mel at the units' rate -- the bound of the vocoder and
    # Griffin-Lim when the input keeps the spectral envelope (what the units lose beyond it)
    condition: str = "units"


@dataclass
class VocoderModelCfg:
    # "hifigan": the unit HiFi-GAN (the release's kind). "spectral": units -> log-magnitude STFT by a
    # conv net + Griffin-Lim (spiritlm/vocoder/spectral.py): learns in CPU minutes, no learned phase
    kind: str = "hifigan"
    embedding_dim: int = 64
    upsample_rates: list[int] = field(default_factory=lambda: [5, 4, 4, 4])  # product = the units' hop
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [11, 8, 8, 8])
    upsample_initial_channel: int = 128
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]])
    duration_predictor: bool = True
    dur_hidden: int = 64
    dur_kernel: int = 3
    dur_dropout: float = 0.5
    # kind = "spectral" only
    spectral_channels: int = 256
    spectral_kernel: int = 5
    spectral_dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 1, 2, 4])
    spectral_dropout: float = 0.1
    n_fft: int = 640
    stft_hop: int = 80
    griffin_lim_iters: int = 64


@dataclass
class VocoderTrainCfg:
    steps: int = 2000
    max_minutes: float = 0.0  # > 0: stop after this much training time (the result then depends on load)
    batch_size: int = 8
    segment_frames: int = 24
    lr: float = 2e-4
    betas: tuple[float, float] = (0.8, 0.99)
    lr_decay: float = 0.999  # per 100 steps
    disc_start_step: int = 0  # mel-only warm-up before the discriminators join
    mel_weight: float = 45.0
    fm_weight: float = 2.0
    dur_weight: float = 1.0
    mpd_channels: int = 16
    msd_channels: int = 8
    threads: int = 0  # torch threads (0 = torch's default)
    log_every: int = 50


@dataclass
class VocoderEvalCfg:
    n_files: int = 20  # held-out utterances vocoded and transcribed (0 = no intelligibility check)
    # held-out utterances passed over before those n_files: settings chosen on the first ones (a dev
    # set) are then measured on utterances no decision has seen (skip = the dev set's size)
    skip: int = 0
    asr: bool = True  # pocketsphinx WER of vocoded vs original audio
    write_samples: int = 4  # vocoded wavs written to output_dir/samples
    dedup: bool = True  # also vocode the deduplicated units with predicted durations (the LM path)
    original: bool = True  # also transcribe the original audio (deterministic: off when already measured)


@dataclass
class VocoderFitConfig:
    name: str = "vocoder"
    seed: int = 0
    output_dir: str = "runs/vocoder"
    device: str = "cpu"
    data: VocoderDataCfg = field(default_factory=VocoderDataCfg)
    model: VocoderModelCfg = field(default_factory=VocoderModelCfg)
    train: VocoderTrainCfg = field(default_factory=VocoderTrainCfg)
    eval: VocoderEvalCfg = field(default_factory=VocoderEvalCfg)


# ---- data ----------------------------------------------------------------------------------
def frame_level(units: dict[str, np.ndarray], cfg_hop: int, f0_hop: int, style_hop: int) -> dict[str, np.ndarray]:
    from spiritlm.vocoder.vocoder import _upsample

    hu = units["hubert"]
    out = {"hubert": hu}
    for k, hop in (("pitch", f0_hop), ("style", style_hop)):
        if k in units:
            out[k] = _upsample(units[k], len(hu), max(1, round(hop / cfg_hop)), k)
    return out


# ---- training ------------------------------------------------------------------------------
def build_generator_cfg(cfg: VocoderFitConfig, tokenizer, n_speakers: int):
    from spiritlm.config import ConfigError
    from spiritlm.vocoder.model import GeneratorCfg

    hop = int(tokenizer.featurizer.hop)
    m = cfg.model
    if math.prod(m.upsample_rates) != hop:
        raise ConfigError(f"model.upsample_rates {m.upsample_rates} multiply to {math.prod(m.upsample_rates)}, "
                          f"but the tokenizer's units come every {hop} samples: make them multiply to {hop} "
                          "(e.g. [5, 4, 4, 4] for 320, [5, 4, 4, 4, 2] with kernels [11, 8, 8, 8, 4] for 640)")
    if cfg.data.pitch and tokenizer.pitch_model is None:
        raise ConfigError(f"data.pitch=true but the tokenizer {cfg.data.tokenizer} has no pitch stream")
    if cfg.data.style and tokenizer.style_quantizer is None:
        raise ConfigError(f"data.style=true but the tokenizer {cfg.data.tokenizer} has no style stream")
    g = GeneratorCfg(
        num_embeddings=int(tokenizer.quantizer.size), embedding_dim=m.embedding_dim,
        upsample_rates=list(m.upsample_rates), upsample_kernel_sizes=list(m.upsample_kernel_sizes),
        upsample_initial_channel=m.upsample_initial_channel, resblock_kernel_sizes=list(m.resblock_kernel_sizes),
        resblock_dilation_sizes=[list(d) for d in m.resblock_dilation_sizes], code_hop_size=hop,
        num_f0_tokens=int(tokenizer.cfg.pitch.codebook) if cfg.data.pitch else 0, f0_hop_size=1280,
        num_style_tokens=int(tokenizer.style_quantizer.size) if cfg.data.style else 0, style_hop_size=16000,
        multispkr=cfg.data.speakers and n_speakers > 0, num_speakers=max(1, n_speakers),
        dur_predictor_params=duration_predictor_params(m))
    try:
        return g.validate()
    except ValueError as e:
        raise ConfigError(f"vocoder model: {e}") from None


class Batcher:
    """Seeded random crops: (codes, pitch, style, speakers, audio) tensors."""

    def __init__(self, examples: list[Example], frames: list[dict[str, np.ndarray]], hop: int, seg: int, seed: int):
        self.examples, self.frames, self.hop, self.seg = examples, frames, hop, seg
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch_size: int):
        import torch

        idx = self.rng.integers(0, len(self.examples), batch_size)
        cols: dict[str, list] = {"hubert": [], "pitch": [], "style": [], "wav": [], "spk": []}
        for i in idx:
            ex, fr = self.examples[i], self.frames[i]
            T = len(fr["hubert"])
            s = int(self.rng.integers(0, max(1, T - self.seg + 1)))
            for k in ("hubert", "pitch", "style"):
                if k in fr:
                    c = fr[k][s:s + self.seg]
                    cols[k].append(np.pad(c, (0, self.seg - len(c)), mode="edge"))
            w = ex.wav[s * self.hop:(s + self.seg) * self.hop]
            cols["wav"].append(np.pad(w, (0, self.seg * self.hop - len(w))))
            cols["spk"].append(ex.speaker)
        t = {k: torch.from_numpy(np.stack(v)) for k, v in cols.items() if v and k != "spk"}
        t["spk"] = torch.tensor(cols["spk"], dtype=torch.long)
        return t


def mel_l1(gen, mel, examples: list[Example], frames: list[dict[str, np.ndarray]], multispkr: bool) -> float:
    """Mean log-mel L1 of whole utterances (the held-out set)."""
    import torch

    tot = 0.0
    with torch.inference_mode():
        for ex, fr in zip(examples, frames):
            def t(k):
                return torch.from_numpy(fr[k])[None] if k in fr else None

            y_hat = gen(t("hubert"), t("pitch"), t("style"), torch.tensor([ex.speaker]) if multispkr else None)
            y = torch.from_numpy(np.pad(ex.wav, (0, max(0, y_hat.shape[1] - len(ex.wav))))[: y_hat.shape[1]])[None]
            tot += float(torch.mean(torch.abs(mel(y) - mel(y_hat))))
    return tot / max(1, len(examples))


def train_generator(cfg: VocoderFitConfig, gcfg, examples: list[Example], progress: bool = True,
                    eval_examples: list[Example] | None = None):
    """-> (trained UnitHiFiGAN with plain weights, training log dict)."""
    import torch
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import weight_norm

    from spiritlm.vocoder.losses import (Discriminators, LogMel, discriminator_loss, feature_matching_loss,
                                         generator_adv_loss)
    from spiritlm.vocoder.model import UnitHiFiGAN, weight_norm_modules

    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    gen = UnitHiFiGAN(gcfg)
    for m in weight_norm_modules(gen):
        weight_norm(m)
    disc = Discriminators(mpd_channels=tc.mpd_channels, msd_channels=tc.msd_channels)
    mel = LogMel(gcfg.sampling_rate)
    frames = [frame_level(e.units, gcfg.code_hop_size, gcfg.f0_hop_size, gcfg.style_hop_size) for e in examples]
    ev_frames = [frame_level(e.units, gcfg.code_hop_size, gcfg.f0_hop_size, gcfg.style_hop_size)
                 for e in (eval_examples or [])]
    batches = Batcher(examples, frames, gcfg.hop, tc.segment_frames, cfg.seed)
    dur_rng = np.random.default_rng(cfg.seed + 1)
    opt_g = torch.optim.AdamW(gen.parameters(), tc.lr, betas=tuple(tc.betas))
    opt_d = torch.optim.AdamW(disc.parameters(), tc.lr, betas=tuple(tc.betas))
    sched = [torch.optim.lr_scheduler.ExponentialLR(o, tc.lr_decay ** 0.01) for o in (opt_g, opt_d)]
    history: list[dict[str, float]] = []
    mel_before = mel_l1(gen.eval(), mel, eval_examples, ev_frames, gcfg.multispkr) if eval_examples else None
    gen.train()
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, desc="vocoder", unit="step")
    step = 0
    for step in range(tc.steps):
        b = batches(tc.batch_size)
        y = b["wav"]
        y_hat = gen(b["hubert"], b.get("pitch"), b.get("style"), b["spk"] if gcfg.multispkr else None)
        use_disc = step >= tc.disc_start_step
        loss_d = torch.zeros(())
        if use_disc:
            real, _ = disc(y)
            fake, _ = disc(y_hat.detach())
            loss_d = discriminator_loss(real, fake)
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
        loss_mel = torch.mean(torch.abs(mel(y) - mel(y_hat)))
        loss_g = tc.mel_weight * loss_mel
        loss_adv = loss_fm = torch.zeros(())
        if use_disc:
            _, real_f = disc(y)
            fake, fake_f = disc(y_hat)
            loss_adv, loss_fm = generator_adv_loss(fake), feature_matching_loss(real_f, fake_f)
            loss_g = loss_g + loss_adv + tc.fm_weight * loss_fm
        loss_dur = torch.zeros(())
        if gen.dur_predictor is not None:
            codes, target, mask = duration_batch(examples, dur_rng, tc.batch_size)
            pred = gen.dur_predictor(gen.dict(codes))
            loss_dur = torch.mean((pred - target)[mask] ** 2)
            loss_g = loss_g + tc.dur_weight * loss_dur
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        if (step + 1) % 100 == 0:
            for s in sched:
                s.step()
        rec = {"step": step + 1, **{k: float(v.detach()) for k, v in (("mel_l1", loss_mel), ("d", loss_d),
                                                                        ("adv", loss_adv), ("fm", loss_fm),
                                                                        ("dur", loss_dur))}}
        history.append(rec)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(mel=f"{rec['mel_l1']:.3f}", d=f"{rec['d']:.2f}")
        if tc.log_every and (step + 1) % tc.log_every == 0:
            log.info("step %d: %s", step + 1, {k: round(v, 4) for k, v in rec.items() if k != "step"})
        if tc.max_minutes and time.perf_counter() - t0 > tc.max_minutes * 60:
            log.warning("train.max_minutes=%s reached after %d of %d steps", tc.max_minutes, step + 1, tc.steps)
            break
    if bar is not None:
        bar.close()
    for m in weight_norm_modules(gen):  # fold g * v / |v| into plain weights
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    gen.eval()
    mel_after = mel_l1(gen, mel, eval_examples, ev_frames, gcfg.multispkr) if eval_examples else None
    train_log = {"steps": step + 1, "seconds": round(time.perf_counter() - t0, 1),
                 "mel_l1_first": history[0]["mel_l1"] if history else None,
                 "mel_l1_last50": float(np.mean([h["mel_l1"] for h in history[-50:]])) if history else None,
                 "heldout_mel_l1_before": mel_before, "heldout_mel_l1_after": mel_after}
    return gen, train_log, history


def intelligibility(vocoder, examples: list[Example], out_dir: Path | None = None, write_samples: int = 0,
                    progress: bool = True, dedup: bool = False, features: list[np.ndarray] | None = None,
                    asr=None, original: bool = True) -> dict[str, Any]:
    """pocketsphinx WER of the original audio and of its vocoded units (frame-level resynthesis,
    and with ``dedup`` the deduplicated units expanded by the duration predictor), with MCD and
    log-mel L1 of the frame-level resynthesis (:mod:`spiritlm.vocoder.measure`). With
    ``features`` (a ``data.condition=features`` or ``logmel`` fit) those continuous inputs are vocoded instead."""
    def frame_level(ex):
        return vocoder.decode(ex.units, speaker=ex.speaker, deduplicated=False)[0]

    def deduplicated(ex):
        return vocoder.decode({"hubert": run_lengths(ex.units["hubert"])[0]}, speaker=ex.speaker,
                              deduplicated=True)[0]

    synths = {"vocoded": frame_level}
    if features is not None:
        import torch

        from spiritlm.vocoder.spectral import griffin_lim

        feats = {ex.id: f for ex, f in zip(examples, features)}

        def from_features(ex):
            with torch.inference_mode():
                spec = predict_frames(vocoder.model, ex.units["hubert"], ex.speaker, feats[ex.id])
                spec = torch.cat([spec[:1], spec])
                return griffin_lim(spec[None], vocoder.model.cfg, length=len(ex.units["hubert"]) * vocoder.hop)[0].numpy()

        synths = {"vocoded": from_features}
    elif dedup and vocoder.model.dur_predictor is not None:
        synths["vocoded_dedup"] = deduplicated
    r = score(examples, synths, asr=asr, progress=progress, sample_dir=out_dir / "samples" if out_dir else None,
              write_samples=write_samples, same_length=("vocoded",), original=original)
    c = r["conditions"]
    r["wer_original"], r["wer_vocoded"] = c.get("original", {}).get("wer"), c["vocoded"]["wer"]
    r["mcd_db_vocoded"] = c["vocoded"]["mcd_db"]
    if "vocoded_dedup" in c:
        r["wer_vocoded_dedup"] = c["vocoded_dedup"]["wer"]
    return r


def fit_vocoder(cfg: VocoderFitConfig, progress: bool = True) -> Path:
    from spiritlm.config import ConfigError, save_config
    from spiritlm.manifest import read_manifest
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer
    from spiritlm.vocoder.vocoder import Vocoder

    if not cfg.data.tokenizer:
        raise ConfigError("data.tokenizer is empty: give a speech tokenizer directory (`spiritlm tokenizer fit "
                          "tokenizers/demo.toml --corpus data/demo_corpus/manifest.jsonl --out out/tokenizer-demo`)")
    if cfg.train.steps < 1 or cfg.train.batch_size < 1 or cfg.train.segment_frames < 1:
        raise ConfigError("train.steps, train.batch_size and train.segment_frames must be >= 1")
    if cfg.eval.skip < 0:
        raise ConfigError(f"eval.skip={cfg.eval.skip}: give the number of held-out utterances to pass over (>= 0)")
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={out} is a file")
    tok = SpeechTokenizer.load(cfg.data.tokenizer)
    man = Path(cfg.data.corpus)
    all_utts = read_manifest(man) if man.is_file() else []
    speakers = sorted({u.speaker for u in all_utts}) if cfg.data.speakers else []
    if cfg.model.kind not in ("hifigan", "spectral"):
        raise ConfigError(f"model.kind={cfg.model.kind!r}: use 'hifigan' (the release's kind) or 'spectral' "
                          "(units -> spectrogram + Griffin-Lim)")
    if cfg.data.condition not in ("units", "features", "logmel"):
        raise ConfigError(f"data.condition={cfg.data.condition!r}: use 'units', 'features' or 'logmel'")
    if cfg.data.condition != "units" and cfg.model.kind != "spectral":
        raise ConfigError(f"data.condition={cfg.data.condition} (a diagnosis) is implemented for model.kind=spectral only")
    spectral = cfg.model.kind == "spectral"
    in_dim = {"units": 0, "features": int(tok.featurizer.dim), "logmel": LOGMEL_BANDS}[cfg.data.condition]
    # config mistakes before any encoding
    gcfg = build_spectral_cfg(cfg, tok, len(speakers), in_dim) if spectral else build_generator_cfg(cfg, tok, len(speakers))
    examples = load_examples(cfg, tok, cfg.data.train_split, cfg.data.max_files, speakers, progress)
    ev = []
    if cfg.eval.n_files and cfg.data.eval_split:
        ev = load_examples(cfg, tok, cfg.data.eval_split, cfg.eval.n_files, speakers, progress, cfg.eval.skip)
    feats = ev_feats = None
    if cfg.data.condition == "logmel":
        feats, ev_feats = logmel_features(examples, int(tok.featurizer.hop)), logmel_features(ev, int(tok.featurizer.hop))
    elif cfg.data.condition == "features":
        feats = [f.astype(np.float32) for f in tok.featurizer.features_many([e.wav for e in examples], progress)]
        ev_feats = [f.astype(np.float32) for f in tok.featurizer.features_many([e.wav for e in ev], progress)]
    if spectral:
        gen, train_log, history = train_spectral(cfg, gcfg, examples, progress, ev, feats, ev_feats)
    else:
        gen, train_log, history = train_generator(cfg, gcfg, examples, progress, ev)
    mean_run = float(np.mean(np.concatenate([run_lengths(e.units["hubert"])[1] for e in examples])))
    layout = tok.layout
    voc = Vocoder(gen, speakers, [], default_speaker=0, default_style=0, default_duration=round(mean_run),
                  layout=layout, source=str(out))
    out.mkdir(parents=True, exist_ok=True)
    voc.save(out, extra={"tokenizer": str(cfg.data.tokenizer), "name": cfg.name, "condition": cfg.data.condition})
    save_config(cfg, out / "fit_config.yaml")
    (out / "train_log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    metrics: dict[str, Any] = {"train": train_log, "mean_run_length_frames": mean_run,
                               "train_files": len(examples), "heldout_files": len(ev),
                               "heldout_ids": [e.id for e in ev]}
    if ev and cfg.eval.asr:
        metrics["intelligibility"] = intelligibility(voc, ev, out, cfg.eval.write_samples, progress,
                                                     dedup=cfg.eval.dedup, features=ev_feats,
                                                     original=cfg.eval.original)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return out
