"""The files the demo's steps read: stage recipes (found beside the checkout when not given as a
path that exists) and the content hashes that key the cached steps. Its own module so that the
main demo, the parts' context and the studies share one definition without importing each other."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

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


# Train-config settings added after cached steps were written that change nothing at their
# default: left out of a model's key while at the default (TrainConfig's), so that adding a
# setting retrains no cached model; set to anything else, they enter the key (and retrain).
LATE_DEFAULTS = (
    ("model", "linear_ce"),  # issue 33: the logits-free cross-entropy, "plain" (off) by default
    ("model", "ce_chunk_tokens"),  # its chunk size, read only when linear_ce is not plain
    ("model", "compile"),  # issue 33: torch.compile of the model, off by default
    ("optim", "fused"),  # issue 33: torch's fused AdamW kernel, off by default
)
# the same for a field of every [[data.sources]] entry
LATE_SOURCE_DEFAULTS = (
    ("synthetic", False),  # issue 36: shards of `prepare synth-interleave`, off by default
)


def train_config_key(tcfg) -> dict[str, Any]:
    """The resolved train config as a cached step's key: every field but ``run_dir`` (where the
    run goes, not what it computes), less ``LATE_DEFAULTS`` at their defaults."""
    from spiritlm.components.config import TrainConfig
    from spiritlm.config import to_dict

    d, default = to_dict(tcfg), to_dict(TrainConfig())
    d.pop("run_dir")
    for section, name in LATE_DEFAULTS:
        if name in d.get(section, {}) and d[section][name] == default[section][name]:
            del d[section][name]
    for src in d.get("data", {}).get("sources", []):
        for name, value in LATE_SOURCE_DEFAULTS:
            if src.get(name) == value:
                del src[name]
    return d
