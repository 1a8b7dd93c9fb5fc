"""``spiritlm tokenizer report``: one unit-quality table for every unit family (issue 35).

Rows: each fitted tokenizer directory given (HuBERT k-means, semantic units, ...), plus the
baselines that say what an encoder adds -- k-means on MFCCs, and k-means on the same encoder with
random weights (for each encoder kind given) -- all with the tokenizers' codebook size. Columns,
on held-out utterances of a corpus with phone alignments (the demo corpus: two espeak voices):

* PNMI (phone-normalised mutual information), codebook perplexity, units/s after dedup, bitrate;
* ABX phone discriminability within and across speaker (:mod:`spiritlm.tokenizer.abx`, on the
  frame-level units: what the LM sees, not the features before quantisation);
* the repeated-word unit distance (edit distance of a word's deduplicated units between tokens of
  it: same speaker, other speaker, and different words as the baseline), on the corpus and, for
  real speech, on a folder of utterances with word times (``../shared/data/real_speech/librivox``:
  one reader, so no across-speaker figure there);
* on that real speech, when each ``<id>.wav`` also has its transcript ``<id>.txt``: PNMI and ABX
  within speaker against pocketsphinx's forced phone alignment (:mod:`spiritlm.phone_align`,
  ARPAbet), ABX both within context (ZeroSpeech 2017-2020) and any context (ZeroSpeech 2021: a few
  utterances rarely repeat a triphone).

The vocoder's WER (the issue-17 method: the CPU vocoder trained on each family's units,
pocketsphinx on held-out utterances) is a separate, slower measurement:
``spiritlm vocoder fit tokenizers/vocoder_demo_spectral.toml --set data.tokenizer=DIR``; its
``metrics.json`` is read into the table when ``vocoder_dirs`` names it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from spiritlm.tokenizer.corpus_audio import corpus_files, iter_wavs

log = logging.getLogger(__name__)

REPORT_VERSION = 1


@dataclass
class ReportConfig:
    corpus: str = ""  # manifest with phone alignments (the demo corpus)
    tokenizers: dict[str, str] = field(default_factory=dict)  # row name -> tokenizer directory
    split: str = "heldout"  # utterances measured (no fit saw them)
    max_files: int = 120
    train_split: str = "train"  # what the baselines' k-means is fitted on
    baseline_files: int = 150
    baselines: bool = True
    abx_max_per_cell: int = 5
    real_speech: str = ""  # a folder of <id>.wav + <id>.json word times (LibriVox format), "" = none
    vocoder_dirs: dict[str, str] = field(default_factory=dict)  # row name -> a `vocoder fit` output dir
    # write each baseline row (MFCC, random-init encoders) as a tokenizer directory <dir>/<row name>,
    # so that `spiritlm vocoder fit --set data.tokenizer=...` can measure its vocoder WER; "" = don't
    save_baselines: str = ""
    # also k-means (fitted here, the tokenizer's k) on these layers of each tokenizer's encoder:
    # rows "<name>_layer<L>", to choose the layer a recipe quantises
    layers: list[int] = field(default_factory=list)
    seed: int = 0


@dataclass
class _System:
    name: str
    featurize: Callable  # list of waveforms -> list of (T, D) features
    rate: float
    quantize: Callable | None  # features -> units; None: k-means fitted here on the train split
    k: int
    kind: str  # "hubert" | "semantic" | "mfcc"
    # baselines: the featurizer and tokenizer config a tokenizer directory of the row is saved with
    featurizer: object = None
    tok_cfg: object = None


def _tokenizer_system(name: str, directory: str) -> tuple[_System, object]:
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.load(directory, device="cpu", streams=["hubert"])
    kind = tok.layout.unit_family
    return _System(name, tok.featurizer.features_many, tok.featurizer.frame_rate, tok.quantizer,
                   tok.quantizer.size, kind), tok


def _random_twin(tok, seed: int) -> _System | None:
    """The tokenizer's encoder with freshly initialised weights: what training the encoder adds
    (None for MFCC units: no encoder)."""
    from spiritlm.tokenizer.hubert import HubertFeaturizer
    from spiritlm.tokenizer.semantic import ConformerCTC, HFCTCEncoder, SemanticFeaturizer

    feat = tok.featurizer
    if feat.model is None:
        return None
    torch.manual_seed(seed + 1)
    if isinstance(feat, SemanticFeaturizer):
        if isinstance(feat.model, HFCTCEncoder):
            model = HFCTCEncoder(type(feat.model.model)(feat.model.model.config))
        else:
            model = ConformerCTC(feat.model.cfg)
        twin = SemanticFeaturizer(model, feat.layer, feat.frame_rate, "cpu")
        kind = "semantic"
    else:
        from transformers import HubertModel

        twin = HubertFeaturizer(HubertModel(feat.model.config).eval(), feat.layer, device="cpu")
        kind = "hubert"
    name = f"random_{kind}_kmeans"
    return _System(name, twin.features_many, twin.frame_rate, None, tok.quantizer.size, kind, twin,
                   _baseline_cfg(tok.cfg, name))


def _mfcc_system(rate: float, k: int) -> _System:
    from spiritlm.tokenizer.config import TokenizerCfg
    from spiritlm.tokenizer.speech_tokenizer import featurizer_for

    cfg = TokenizerCfg(name="mfcc_kmeans")
    cfg.mfcc = dataclasses.replace(cfg.mfcc, enabled=True, hop=int(round(16000 / rate)))
    feat = featurizer_for(cfg, None)
    return _System("mfcc_kmeans", feat.features_many, rate, None, k, "mfcc", feat, cfg)


def _baseline_cfg(cfg, name: str):
    """``cfg`` for a row's own tokenizer directory: its unit stream only, the k-means fitted here."""
    out = dataclasses.replace(cfg, name=name)
    out.units = dataclasses.replace(cfg.units, path="", kind="kmeans")
    out.pitch = dataclasses.replace(cfg.pitch, enabled=False, path="")
    out.style = dataclasses.replace(cfg.style, enabled=False, path="")
    out.demo = dataclasses.replace(cfg.demo, enabled=False)
    return out


def save_row_tokenizer(system: _System, quantizer, directory: Path) -> Path:
    """A row's featurizer and fitted k-means as a tokenizer directory (``SpeechTokenizer.load``)."""
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    return SpeechTokenizer(system.tok_cfg, system.featurizer, quantizer).save(directory)


def fit_kmeans(featurize: Callable, train_wavs, k: int, seed: int, niter: int = 30, max_frames: int = 100_000):
    """k-means (CPU faiss) on the frames of ``train_wavs``, a uniform reservoir of ``max_frames``."""
    from spiritlm.tokenizer.kmeans import FrameReservoir, KMeansQuantizer, train_kmeans

    res = FrameReservoir(max_frames, seed)
    for i in range(0, len(train_wavs), 16):
        for f in featurize(train_wavs[i : i + 16]):
            res.add(f)
    return KMeansQuantizer(train_kmeans(res.sample(), k, niter, seed), use_gpu=False)


def frame_units(featurize: Callable, quantize: Callable, evals, rate: float):
    """-> (units, phone labels) per (utterance, waveform) of ``evals``, one per frame, both cut to
    the shorter of the two (the labels cover the utterance's duration, the frames its samples)."""
    from spiritlm.manifest import frame_labels

    units, labels = [], []
    for i in range(0, len(evals), 16):
        chunk = evals[i : i + 16]
        for (u, _), f in zip(chunk, featurize([w for _, w in chunk])):
            lab = np.array(frame_labels(u, rate), dtype=object)
            n = min(len(lab), len(f))
            units.append(np.asarray(quantize(f[:n]), dtype=np.int64))
            labels.append(lab[:n])
    return units, labels


def measure(system: _System, evals, cfg: ReportConfig, train_wavs, real) -> dict:
    """Every column of one row (see the module docstring)."""
    from spiritlm.tokenizer.abx import abx_error, phone_items
    from spiritlm.tokenizer.metrics import unit_metrics, word_unit_consistency

    t0 = time.perf_counter()
    quantize = system.quantize or fit_kmeans(system.featurize, train_wavs, system.k, cfg.seed)
    saved = None
    if cfg.save_baselines and system.tok_cfg is not None:
        saved = str(save_row_tokenizer(system, quantize, Path(cfg.save_baselines) / system.name))
    units, labels = frame_units(system.featurize, quantize, evals, system.rate)
    seconds = sum(len(w) for _, w in evals) / 16000
    row = {"kind": system.kind, "rate": round(system.rate, 3), **unit_metrics(units, labels, seconds, system.k)}
    speakers = [u.speaker for u, _ in evals]
    items = phone_items(units, labels, speakers)
    for mode in ("within", "across"):
        try:
            r = abx_error(items, mode=mode, max_per_cell=cfg.abx_max_per_cell, seed=cfg.seed, vocab_size=system.k)
            row[f"abx_{mode}"] = round(100 * r["error"], 2)
        except ValueError as e:  # e.g. one speaker: no across-speaker cell
            row[f"abx_{mode}"] = None
            row[f"abx_{mode}_why"] = str(e)
    row["word_unit_distance"] = word_unit_consistency(units, [u.words for u, _ in evals], speakers, system.rate,
                                                      seed=cfg.seed)
    if real:
        ru = [np.asarray(quantize(f), dtype=np.int64) for f in system.featurize([r.wav for r in real])]
        row["real_speech_word_distance"] = word_unit_consistency(ru, [r.words for r in real], ["reader"] * len(real),
                                                                 system.rate, max_per_word=12, seed=cfg.seed)
        aligned = [(u, r) for u, r in zip(ru, real) if r.alignment is not None]
        if aligned:
            row["real_speech_phones"] = real_speech_phone_measures(aligned, system.rate, system.k, cfg)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    if saved:
        row["tokenizer_dir"] = saved
    log.info("%s: %s", system.name, row)
    return row


def vocoder_wer(directory: str | Path) -> dict:
    """The pocketsphinx WERs a ``spiritlm vocoder fit`` run measured on its held-out utterances:
    vocoded from the units, and the original audio (the ASR's own ceiling)."""
    f = Path(directory) / "metrics.json"
    if not f.is_file():
        raise ValueError(f"--vocoder {directory}: no metrics.json there (the output of `spiritlm vocoder fit ... "
                         "--out DIR` with eval.asr = true)")
    cond = json.loads(f.read_text()).get("intelligibility", {}).get("conditions", {})
    if "vocoded" not in cond:
        raise ValueError(f"{f}: no intelligibility measurement (fit with eval.asr = true)")
    return {"vocoder_wer": round(cond["vocoded"]["wer"], 3),
            "vocoder_wer_original": round(cond["original"]["wer"], 3) if "original" in cond else None}


@dataclass
class RealUtterance:
    wav: np.ndarray
    words: list[tuple[str, float, float]]  # the folder's word times
    alignment: object | None  # a manifest.Utterance with pocketsphinx's word and phone times; None: no transcript


def read_real_speech(folder: str | Path, align: bool = True) -> list[RealUtterance]:
    """Each ``<id>.wav`` with an ``<id>.json`` of word times (LibriVox alignment format: ``w`` =
    [{"t": word, "b": start, "d": duration}]; ``<sil>`` and pronunciation variants such as ``was(2)``
    are normalised); with ``align`` and an ``<id>.txt`` transcript beside it, also its phone times
    (pocketsphinx forced alignment)."""
    from spiritlm.audio import load_audio
    from spiritlm.phone_align import align_utterance

    out = []
    for js in sorted(Path(folder).glob("*.json")):
        wav = js.with_suffix(".wav")
        if not wav.is_file():
            continue
        words = [(w["t"].split("(")[0], float(w["b"]), float(w["b"]) + float(w["d"]))
                 for w in json.loads(js.read_text())["w"] if not w["t"].startswith("<")]
        audio = load_audio(wav)
        txt = js.with_suffix(".txt")
        alignment = align_utterance(audio, txt.read_text(), id=js.stem) if align and txt.is_file() else None
        out.append(RealUtterance(audio, words, alignment))
    if not out:
        raise ValueError(f"real_speech={folder}: no <id>.wav with an <id>.json of word times there")
    return out


def real_speech_phone_measures(aligned, rate: float, k: int, cfg: ReportConfig) -> dict:
    """PNMI and within-speaker ABX (within and any context) of units on real speech, against the
    forced phone alignment. ``aligned``: [(frame units, RealUtterance with phones)]."""
    from spiritlm.manifest import frame_labels
    from spiritlm.tokenizer.abx import abx_error, phone_items
    from spiritlm.tokenizer.metrics import pnmi

    units, labels = [], []
    for u, r in aligned:
        lab = np.array(frame_labels(r.alignment, rate), dtype=object)
        n = min(len(lab), len(u))
        units.append(u[:n])
        labels.append(lab[:n])
    out = {"utterances": len(aligned), "phones": sum(len(r.alignment.phones) for _, r in aligned),
           "pnmi": round(pnmi(np.concatenate(labels), np.concatenate(units)), 4)}
    items = phone_items(units, labels, ["reader"] * len(units))
    for context in ("within", "any"):
        try:
            r = abx_error(items, mode="within", context=context, max_per_cell=cfg.abx_max_per_cell, seed=cfg.seed,
                          vocab_size=k)
            out[f"abx_within_{context}_context"] = round(100 * r["error"], 2)
            out[f"abx_within_{context}_context_cells"] = r["n_cells"]
        except ValueError as e:  # too little speech for a cell
            out[f"abx_within_{context}_context"] = None
            out[f"abx_within_{context}_context_why"] = str(e)
    return out


def unit_report(cfg: ReportConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Measure every row, write ``report.json`` and ``report.md`` under ``out_dir``."""
    from spiritlm.tokenizer.speech_tokenizer import featurizer_for

    if not cfg.tokenizers:
        raise ValueError("tokenizer report: give at least one tokenizer directory (--tokenizer NAME=DIR)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evals = list(iter_wavs(corpus_files(cfg.corpus, cfg.split, cfg.max_files), 1280))
    if not any(u.phones for u, _ in evals):
        raise ValueError(f"{cfg.corpus}: its {cfg.split!r} utterances have no phone alignments, which PNMI and ABX "
                         "need; use a corpus with phones (the demo corpus, or one aligned with MFA)")
    train_wavs = [w for _, w in iter_wavs(corpus_files(cfg.corpus, cfg.train_split, cfg.baseline_files), 1280)]
    real = read_real_speech(cfg.real_speech) if cfg.real_speech else []
    systems, toks = [], []
    for name, d in cfg.tokenizers.items():
        s, tok = _tokenizer_system(name, d)
        systems.append(s)
        toks.append(tok)
    for name, tok in zip(cfg.tokenizers, toks):
        for layer in cfg.layers:
            f = featurizer_for(tok.cfg, tok.featurizer.model, layer=layer)
            systems.append(_System(f"{name}_layer{layer}", f.features_many, f.frame_rate, None, tok.quantizer.size,
                                   tok.layout.unit_family))
    if cfg.baselines:
        first = systems[0]
        systems.append(_mfcc_system(first.rate, first.k))
        seen = set()
        for tok in toks:
            twin = _random_twin(tok, cfg.seed)
            if twin is not None and twin.name not in seen:
                seen.add(twin.name)
                systems.append(twin)
    rows = {}
    it = systems
    if progress:
        from tqdm import tqdm

        it = tqdm(systems, desc="unit report", unit="family")
    for s in it:
        rows[s.name] = measure(s, evals, cfg, train_wavs, real)
        vd = cfg.vocoder_dirs.get(s.name)
        if vd:
            rows[s.name].update(vocoder_wer(vd))
    report = {"version": REPORT_VERSION, "corpus": str(cfg.corpus), "split": cfg.split, "utterances": len(evals),
              "seconds_of_speech": round(sum(len(w) for _, w in evals) / 16000, 1), "tokenizers": cfg.tokenizers,
              "real_speech": {"folder": cfg.real_speech, "utterances": len(real)} if real else None, "rows": rows}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "report.md").write_text(report_markdown(report))
    return report


def _f(x, nd=3):
    return "--" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def report_markdown(report: dict) -> str:
    lines = [f"Unit quality on {report['utterances']} held-out utterances ({report['seconds_of_speech']} s, split "
             f"{report['split']!r}) of `{report['corpus']}`. ABX: % error on frame-level units (lower is better); "
             "word distance: edit distance of a word's deduplicated units between two tokens of it / the longer "
             "(same word same speaker | same word other speaker | different words), lower is better when the "
             "first two sit well below the third. Vocoder WER: pocketsphinx on the CPU vocoder's speech from the units "
             "(`spiritlm vocoder fit tokenizers/vocoder_demo_spectral.toml`, held-out utterances), original audio "
             "in brackets. Real speech phones: PNMI and ABX within speaker (within context / any context) against "
             "pocketsphinx's forced phone alignment of the transcripts.", "",
             "| units | kind | rate (Hz) | PNMI | perplexity | units/s after dedup | bitrate (bit/s) | ABX within | "
             "ABX across | word distance (same spk / other spk / other word) | real speech word distance (same / other word) |"
             " real speech phones: PNMI, ABX within (within / any context) | vocoder WER |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|"]
    for name, r in report["rows"].items():
        wd = r.get("word_unit_distance") or {}
        rw = r.get("real_speech_word_distance") or {}
        orig = f" ({r['vocoder_wer_original']:.3f})" if r.get("vocoder_wer_original") is not None else ""
        real = (f"{_f(rw.get('same_word_same_speaker'))} / {_f(rw.get('other_word_same_speaker'))} "
                f"({rw.get('words', 0)} words)") if rw else "--"
        rp = r.get("real_speech_phones")
        real_phones = (f"{_f(rp['pnmi'])}, {_f(rp.get('abx_within_within_context'), 1)} / "
                       f"{_f(rp.get('abx_within_any_context'), 1)} ({rp['phones']} phones)") if rp else "--"
        lines.append(
            f"| {name} | {r['kind']} | {r['rate']:g} | {_f(r.get('pnmi'))} | {_f(r.get('perplexity'), 1)} | "
            f"{_f(r.get('units_per_s'), 1)} | {_f(r.get('bitrate_nominal'), 0)} | {_f(r.get('abx_within'), 1)} | "
            f"{_f(r.get('abx_across'), 1)} | {_f(wd.get('same_word_same_speaker'))} / "
            f"{_f(wd.get('same_word_other_speaker'))} / {_f(wd.get('other_word_same_speaker'))} | {real} | {real_phones} | "
            f"{_f(r.get('vocoder_wer'))}{orig} |")
    return "\n".join(lines) + "\n"
