"""The files the demo's steps read: stage recipes (found beside the checkout when not given as a
path that exists) and the content hashes that key the cached steps. Its own module so that the
main demo, the parts' context and the studies share one definition without importing each other."""

from __future__ import annotations

import hashlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def recipe(path: str) -> Path:
    """A stage recipe, relative to the working directory or else to the repository root."""
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    repo = REPO / path
    if repo.is_file():
        return repo
    raise FileNotFoundError(f"recipe {path} not found here or in the repository ({repo})")


def file_hash(path: str | Path) -> str:
    """First 16 hex digits of the file's sha256; ``missing:<path>`` for an absent file, so a step
    keyed on a file that does not exist yet is keyed differently from every real content."""
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else f"missing:{p}"
