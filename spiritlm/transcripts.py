"""Triples ``(id, audio path, transcript)`` of transcribed speech, the input of every ASR
evaluation (the continuous family's greedy decoding, the streaming family's chunked decoding):
from the data stage's manifest (one split) or from a folder of ``<id>.wav`` + ``<id>.txt`` (the
real-speech set). Base layer: no model or evaluation code."""

from __future__ import annotations

from pathlib import Path

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
