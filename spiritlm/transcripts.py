"""Triples ``(id, audio path, transcript)`` of transcribed speech, the input of every ASR
evaluation (the continuous family's greedy decoding, the streaming family's chunked decoding):
from the data stage's manifest (one split) or from a folder of ``<id>.wav`` + ``<id>.txt`` (the
real-speech set). Base layer: no model or evaluation code."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from spiritlm.audio import load_audio
from spiritlm.manifest import read_manifest


def manifest_items(manifest: str | Path, split: str = "heldout") -> list[tuple[str, str, str]]:
    """(id, audio path, transcript) of the data stage's manifest utterances of ``split``."""
    m = Path(manifest)
    return [(u.id, str(u.audio_file(m.parent)), u.text) for u in read_manifest(m) if not split or u.split == split]


def text_dir_items(directory: str | Path) -> list[tuple[str, str, str]]:
    """(id, wav, transcript) of a folder of ``<id>.wav`` + ``<id>.txt`` (the real-speech set)."""
    d = Path(directory)
    items = [(w.stem, str(w), w.with_suffix(".txt").read_text(encoding="utf-8").strip())
             for w in sorted(d.glob("*.wav")) if w.with_suffix(".txt").is_file()]
    if not items:
        raise FileNotFoundError(f"{d}: no <id>.wav with a <id>.txt transcript beside it")
    return items


def readable_items(items: Iterable[tuple[str, str, str]], frames_for: Callable[[int], int]
                   ) -> tuple[list[str], list[np.ndarray], list[str], dict[str, str]]:
    """The items an ASR model can read: (ids, 16 kHz waveforms, transcripts, skipped), where
    ``skipped`` names each unreadable or too-short file and why (``frames_for(samples)``: the
    model's frames for that many samples), so an evaluation counts bad audio instead of crashing."""
    ids, wavs, refs, skipped = [], [], [], {}
    for uid, path, ref in items:
        try:
            w = load_audio(path, target_rate=16000)
        except Exception as e:  # AudioError and soundfile errors: counted, named in the result
            skipped[uid] = f"unreadable audio: {e}"
            continue
        if frames_for(w.size) < 1:
            skipped[uid] = f"too short for one stacked frame ({w.size} samples)"
            continue
        ids.append(uid)
        wavs.append(w)
        refs.append(ref)
    return ids, wavs, refs, skipped
