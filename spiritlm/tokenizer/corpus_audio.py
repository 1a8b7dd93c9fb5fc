"""The audio of a corpus manifest's split, as the fitting code reads it: the (utterance, file)
rows and their loaded waveforms.

Used by :mod:`spiritlm.tokenizer.fit` (``spiritlm tokenizer fit``), by the tiny HuBERT's
training (:mod:`spiritlm.tokenizer.tiny_hubert_train`) and by the demo tokenizer's evaluation
(:mod:`spiritlm.tokenizer.tiny_hubert`); it sits below all of them so that the fit can train a
tiny HuBERT without the tiny HuBERT's modules importing the fit back.
"""

from __future__ import annotations

import logging
from pathlib import Path

from spiritlm.audio import AudioError, load_audio

log = logging.getLogger(__name__)


def corpus_files(manifest: str | Path, split: str = "train", max_files: int = 0):
    """[(utterance, audio file)] of a manifest split ('' = every row)."""
    from spiritlm.manifest import read_manifest

    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"corpus manifest not found: {manifest} (build one with `spiritlm corpus ...`)")
    utts = read_manifest(manifest)
    rows = [(u, u.audio_file(manifest.parent)) for u in utts if not split or u.split == split]
    if not rows:
        raise ValueError(f"{manifest}: no utterances in split {split!r}; set fit.split (\"\" = all rows)")
    return rows[:max_files] if max_files else rows


def iter_wavs(rows, min_samples: int = 1):
    """Yield (utterance, waveform) for loadable rows; bad files are logged and skipped."""
    for u, path in rows:
        try:
            yield u, load_audio(path, min_samples=min_samples)
        except AudioError as e:
            log.warning("skipping %s", e)
