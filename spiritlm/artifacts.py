"""Reading what a run saved (JSON metadata, safetensors weights, a module's state) with errors a
user can act on: one line naming the file, what is wrong with it and the fix, instead of a
JSONDecodeError, a SafetensorError or a state_dict RuntimeError that names neither the file nor
the setting. Base layer: the loaders of every family use it."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from spiritlm.config import ConfigError

REEXPORT = "re-export the model (spiritlm train writes <run_dir>/hf) or copy the file again"


class ArtifactError(ConfigError):
    """A saved file that is missing, damaged or does not fit the model being built."""


def read_json(path: str | Path, key: str | None = None) -> Any:
    """The JSON document at ``path`` (or its ``key`` section)."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: not found; {REEXPORT}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{p}: not valid JSON ({e}); the file is damaged or was edited by hand: "
                            f"{REEXPORT}") from None
    if key is None:
        return data
    if not isinstance(data, dict) or key not in data:
        raise ArtifactError(f"{p}: has no {key!r} section; it was not written by this version of spiritlm's "
                            f"export, or was edited: {REEXPORT}")
    return data[key]


def typed_section(path: str | Path, build, key: str | None = None):
    """``build(read_json(path, key))`` with a config error (an unknown or mistyped field) named
    by the file it came from."""
    section = read_json(path, key)
    try:
        return build(section)
    except ArtifactError:
        raise
    except (ConfigError, TypeError, ValueError, KeyError) as e:
        raise ArtifactError(f"{path}: its {key or 'content'} does not load ({e}); the file was written by "
                            f"another version of spiritlm or edited: {REEXPORT}") from None


def load_tensors(path: str | Path, device: str = "cpu") -> dict:
    """A safetensors file's tensors; a truncated or foreign file is named, not a traceback."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: not found; {REEXPORT}")
    try:
        return load_file(str(p), device=device)
    except Exception as e:  # safetensors raises its own SafetensorError (not an OSError) on a bad header
        raise ArtifactError(f"{p}: cannot read its tensors ({type(e).__name__}: {e}); the file is truncated "
                            f"or not a safetensors file: {REEXPORT}") from None


def load_state(module, path: str | Path, what: str, setting: str = "", strict: bool = True) -> None:
    """Load ``path``'s tensors into ``module``; a checkpoint of another shape names the file, the
    part (``what``) and the setting that pointed at it."""
    state = load_tensors(path)
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e).splitlines()[0])
        where = f" (set by {setting})" if setting else ""
        raise ArtifactError(f"{path}{where}: does not fit the {what} these settings build ({first}); it was "
                            f"saved with other sizes: point {setting or 'the setting'} at a checkpoint of this "
                            "shape, or use the sizes it was trained with") from None


@contextmanager
def hf_directory(directory: str | Path):
    """Around a ``from_pretrained`` of ``directory``: a damaged weights file (safetensors'
    SafetensorError) or config (transformers' OSError "not a valid JSON file") becomes one line
    naming the directory and the fix."""
    try:
        yield
    except ArtifactError:
        raise
    except Exception as e:
        if type(e).__name__ == "SafetensorError":
            raise ArtifactError(f"{directory}: a weights file cannot be read ({e}); it is truncated or not a "
                                f"safetensors file: {REEXPORT}") from None
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            raise ArtifactError(f"{directory}: {e} ({REEXPORT})") from None
        raise
