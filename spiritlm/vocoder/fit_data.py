"""The utterances a vocoder fit trains and is measured on, and the duration predictor's batches.

Shared by :mod:`spiritlm.vocoder.fit` (HiFi-GAN training, the orchestration of ``spiritlm
vocoder fit``), :mod:`spiritlm.vocoder.fit_spectral` (spectral training) and
:mod:`spiritlm.vocoder.measure` (``spiritlm vocoder diagnose``): they live here, below all three,
so that none of those modules has to import another one's orchestration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Example:
    id: str
    wav: np.ndarray  # float32, 16 kHz
    units: dict[str, np.ndarray]  # frame-level hubert (+ pitch/style)
    speaker: int
    text: str = ""


def load_examples(cfg, tokenizer, split: str, limit: int, speakers: list[str],
                  progress: bool = True, skip: int = 0) -> list[Example]:
    """The ``split`` utterances of ``cfg.data.corpus`` (``cfg``: a
    :class:`~spiritlm.vocoder.fit.VocoderFitConfig`) after the first ``skip``, at most ``limit``
    (0 = all), encoded by ``tokenizer``; utterances that fail to encode are skipped."""
    from spiritlm.config import ConfigError
    from spiritlm.manifest import read_manifest

    man = Path(cfg.data.corpus)
    if not man.is_file():
        raise ConfigError(f"data.corpus={man} not found: build the demo corpus with `spiritlm corpus demo` "
                          "(-> data/demo_corpus/manifest.jsonl) or point at a manifest.jsonl")
    utts = [u for u in read_manifest(man) if not split or u.split == split]
    if not utts:
        raise ConfigError(f"{man}: no utterances with split={split!r}")
    if skip >= len(utts):
        raise ConfigError(f"{man}: skip={skip} passes over all {len(utts)} utterances with split={split!r}; "
                          "lower eval.skip")
    utts = utts[skip:skip + limit if limit else None]
    streams = ["hubert"] + (["pitch"] if cfg.data.pitch else []) + (["style"] if cfg.data.style else [])
    paths = [u.audio_file(man.parent) for u in utts]
    results = tokenizer.encode_many(paths, speakers=[u.speaker for u in utts], progress=progress,
                                    streams=streams)
    out = []
    for u, p, r in zip(utts, paths, results):
        if isinstance(r, Exception):
            log.warning("skipping %s: %s", u.id, r)
            continue
        units = {k: np.asarray(r[k], np.int64) for k in streams}
        spk = speakers.index(u.speaker) if u.speaker in speakers else 0
        out.append(Example(u.id, tokenizer.load_wav(p), units, spk, u.text))
    if not out:
        raise ConfigError(f"{man}: none of the {split!r} utterances could be encoded")
    return out


def run_lengths(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = np.concatenate(([True], hu[1:] != hu[:-1]))
    idx = np.flatnonzero(starts)
    return hu[idx], np.diff(np.append(idx, len(hu)))


def duration_batch(examples: list[Example], rng: np.random.Generator, batch_size: int):
    import torch

    idx = rng.integers(0, len(examples), batch_size)
    seqs = [run_lengths(examples[i].units["hubert"]) for i in idx]
    L = max(len(u) for u, _ in seqs)
    codes = torch.zeros(batch_size, L, dtype=torch.long)
    target = torch.zeros(batch_size, L)
    mask = torch.zeros(batch_size, L, dtype=torch.bool)
    for b, (u, d) in enumerate(seqs):
        codes[b, :len(u)] = torch.from_numpy(u)
        target[b, :len(u)] = torch.log(torch.from_numpy(d).float() + 1)
        mask[b, :len(u)] = True
    return codes, target, mask
