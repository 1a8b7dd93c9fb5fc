"""Measuring a vocoder against the original audio: pocketsphinx WER (intelligibility), a
mel-cepstral distance and log-mel L1 (spectral closeness), and the diagnosis conditions that
separate "the units carry too little" from "the vocoder is not trained enough".

    spiritlm vocoder diagnose tokenizers/vocoder_demo.toml --set data.tokenizer=TOK --out runs/vocoder_diag

Conditions of ``diagnose`` (no vocoder training, held-out utterances of the corpus):

* ``original``: the audio itself (the ASR's ceiling on this corpus).
* ``griffin_lim_true``: Griffin-Lim from the true log-magnitude STFT (the ceiling of the spectral
  vocoder: what is lost by discarding phase).
* ``unit_centroid``: each frame-level unit replaced by the mean log-magnitude frames of that unit
  for that speaker over the training split, then Griffin-Lim: a zero-training decoder that shows
  what the units alone carry, frame by frame, without context.

MCD: 13 mel cepstra (c1..c13, DCT-II of the 80-band natural-log mel magnitudes of
:class:`~spiritlm.vocoder.losses.LogMel`), ``10 / ln 10 * sqrt(2 * sum (c - c')^2)`` dB averaged
over the frames where the original is within 40 dB of its loudest frame (digital silence in
espeak audio would otherwise dominate). Frame-level resynthesis keeps the original's length,
so no time warping is needed; deduplicated-unit resynthesis (predicted durations) changes the
length and gets a WER only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from spiritlm.vocoder.fit_data import load_examples, run_lengths
from spiritlm.vocoder.fit_spectral import build_spectral_cfg, target_frames

log = logging.getLogger(__name__)

_MEL = None


def _logmel(wav: np.ndarray) -> np.ndarray:
    """(n_mels, frames) natural-log mel magnitudes (HiFi-GAN loss setting)."""
    import torch

    from spiritlm.vocoder.losses import LogMel

    global _MEL
    if _MEL is None:
        _MEL = LogMel()
    with torch.inference_mode():
        return _MEL(torch.from_numpy(np.ascontiguousarray(wav, np.float32))[None])[0].numpy()


def spectral_distances(ref: np.ndarray, syn: np.ndarray, n_ceps: int = 13, floor_db: float = 40.0) -> dict[str, float]:
    """-> {"mcd_db", "mel_l1"} of two waveforms on the same timeline (the shorter length is used)."""
    from scipy.fft import dct

    n = min(len(ref), len(syn))
    a, b = _logmel(ref[:n]), _logmel(syn[:n])
    ca = dct(a, type=2, norm="ortho", axis=0)[1:n_ceps + 1]
    cb = dct(b, type=2, norm="ortho", axis=0)[1:n_ceps + 1]
    energy_db = 20 / np.log(10) * a.max(axis=0)
    keep = energy_db >= energy_db.max() - floor_db
    d = 10 / np.log(10) * np.sqrt(2 * np.sum((ca - cb) ** 2, axis=0))
    return {"mcd_db": float(d[keep].mean()), "mel_l1": float(np.abs(a - b).mean())}


def score(examples: list, synths: dict[str, Callable[[Any], np.ndarray]], asr: Callable | None = None,
          progress: bool = True, sample_dir: Path | None = None, write_samples: int = 0,
          same_length: tuple[str, ...] | None = None, original: bool = True) -> dict[str, Any]:
    """Each condition ``name -> example -> 16 kHz waveform`` over ``examples``: WER (pocketsphinx
    unless ``asr``), and MCD / mel L1 against the original for conditions in ``same_length``
    (default: every condition). ``"original"`` is scored first unless ``original=False`` (its
    transcripts are deterministic: a run that scored them on the same files need not repeat it)."""
    import soundfile as sf

    from spiritlm.stats import asr_wer

    def wer(refs, hyps) -> float:  # corpus WER of normalised texts, the project's one rule
        return float(asr_wer(refs, hyps)["wer"])

    from spiritlm.vocoder.asr import PocketsphinxASR

    asr = asr or PocketsphinxASR()
    conds = {**({"original": lambda ex: ex.wav} if original else {}), **synths}
    same_length = tuple(conds) if same_length is None else ("original", *same_length)
    it = examples
    if progress:
        from tqdm import tqdm

        it = tqdm(examples, desc="vocoder measure", unit="utt")
    items = []
    for k, ex in enumerate(it):
        row: dict[str, Any] = {"id": ex.id, "ref": ex.text}
        for name, fn in conds.items():
            wav = np.asarray(fn(ex), np.float32)
            row[name] = asr(wav)
            if name != "original" and name in same_length:
                row[f"{name}_dist"] = spectral_distances(ex.wav, wav)
            if sample_dir is not None and k < write_samples:
                sample_dir.mkdir(parents=True, exist_ok=True)
                sf.write(str(sample_dir / f"{ex.id}.{name}.wav"), wav, 16000)
        items.append(row)
    refs = [r["ref"] for r in items]
    summary: dict[str, Any] = {}
    for name in conds:
        s = {"wer": wer(refs, [r[name] for r in items])}
        if name != "original" and name in same_length:
            s["mcd_db"] = float(np.mean([r[f"{name}_dist"]["mcd_db"] for r in items]))
            s["mel_l1"] = float(np.mean([r[f"{name}_dist"]["mel_l1"] for r in items]))
        summary[name] = s
    return {"n": len(items), "asr": "pocketsphinx (en-us, shipped LM, fresh decoder per utterance)",
            "conditions": summary, "items": items}


def unit_centroids(examples: list, scfg) -> dict[tuple[int, int], np.ndarray]:
    """(speaker, unit) -> mean (fpu, n_bins) log-magnitude frames over ``examples``."""
    fpu = scfg.frames_per_unit
    sums: dict[tuple[int, int], np.ndarray] = {}
    counts: dict[tuple[int, int], int] = {}
    for ex in examples:
        hu = ex.units["hubert"]
        t = target_frames(ex.wav, len(hu), scfg).astype(np.float32).reshape(len(hu), fpu, -1)
        for u in np.unique(hu):
            key = (ex.speaker, int(u))
            sel = t[hu == u]
            sums[key] = sums.get(key, 0) + sel.sum(0)
            counts[key] = counts.get(key, 0) + len(sel)
    return {k: sums[k] / counts[k] for k in sums}


def diagnose(cfg, progress: bool = True) -> dict[str, Any]:
    """The no-training conditions (module docstring) on ``cfg.eval.n_files`` held-out utterances;
    writes ``diagnosis.json`` (and a few samples) under ``cfg.output_dir``."""
    import torch

    from spiritlm.config import ConfigError, save_config
    from spiritlm.manifest import read_manifest
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer
    from spiritlm.vocoder.spectral import griffin_lim, log_magnitude

    if not cfg.data.tokenizer:
        raise ConfigError("data.tokenizer is empty: give the speech tokenizer whose units to diagnose")
    tok = SpeechTokenizer.load(cfg.data.tokenizer)
    man = Path(cfg.data.corpus)
    speakers = sorted({u.speaker for u in read_manifest(man)}) if man.is_file() else []
    scfg = build_spectral_cfg(cfg, tok, len(speakers))
    cfg.data.pitch = cfg.data.style = False
    train = load_examples(cfg, tok, cfg.data.train_split, cfg.data.max_files, speakers, progress)
    ev = load_examples(cfg, tok, cfg.data.eval_split, cfg.eval.n_files, speakers, progress, cfg.eval.skip)
    cents = unit_centroids(train, scfg)
    global_mean = {}
    for (spk, u), c in cents.items():  # a unit never seen with this speaker: any speaker's mean
        global_mean.setdefault(u, c)

    def gl_true(ex):
        with torch.inference_mode():
            lm = log_magnitude(torch.from_numpy(ex.wav)[None], scfg)
            return griffin_lim(lm, scfg, length=len(ex.wav))[0].numpy()

    def centroid(ex):
        hu = ex.units["hubert"]
        fr = np.stack([cents.get((ex.speaker, int(u)), global_mean.get(int(u))) for u in hu]).reshape(-1, scfg.n_bins)
        fr = np.concatenate([fr[:1], fr])  # frame 0 repeats frame 1, as the spectral vocoder does
        n = len(hu) * scfg.hop
        with torch.inference_mode():
            wav = griffin_lim(torch.from_numpy(fr)[None], scfg, length=n)[0].numpy()
        return np.clip(np.pad(wav, (0, max(0, len(ex.wav) - n))), -1, 1)

    out = Path(cfg.output_dir)
    runs = np.concatenate([run_lengths(e.units["hubert"])[1] for e in train])
    n_frames = sum(len(e.units["hubert"]) for e in train)
    secs = sum(len(e.wav) for e in train) / 16000
    result: dict[str, Any] = {
        "tokenizer": str(cfg.data.tokenizer), "train_files": len(train), "heldout_files": len(ev),
        "units": {"frames_per_s": n_frames / secs, "mean_run_length_frames": float(runs.mean()),
                  "deduplicated_units_per_s": len(runs) / secs,
                  "distinct_units": int(len({u for (_, u) in cents}))},
        "stft": {"n_fft": scfg.n_fft, "win_length": scfg.win_length, "hop": scfg.stft_hop,
                 "griffin_lim_iters": scfg.griffin_lim_iters}}
    metrics = Path(cfg.data.tokenizer) / "metrics.json"
    if metrics.is_file():  # the tokenizer's own unit-quality numbers (PNMI, word distances)
        result["tokenizer_metrics"] = json.loads(metrics.read_text()).get("units", {})
    result["intelligibility"] = score(ev, {"griffin_lim_true": gl_true, "unit_centroid": centroid}, progress=progress,
                                      sample_dir=out / "samples", write_samples=cfg.eval.write_samples)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "diagnose_config.yaml")
    (out / "diagnosis.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
