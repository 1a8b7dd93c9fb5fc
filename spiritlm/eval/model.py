"""Loading a checkpoint for evaluation, and the speech-encoder protocol.

The unit LM's loader (``load_model``, ``load_tokenizer``, ``ModelDirError``) is the family's own
(``spiritlm.models.unit_lm.load``); it is re-exported here, where evaluation code has always found
it. A model of any family loads through the registry: ``spiritlm.models.load_model_dir``.

Speech enters the evaluation as a wav (path or 16 kHz array) turned into units by a speech unit
encoder -- the project's one protocol, :class:`spiritlm.unit_encoder.UnitEncoder` (the data
stage's encoders fit; so do ``spiritlm.tokenizer.SpeechTokenizer`` and any function
``wav_or_path -> {"hubert": array, "pitch": ..., "style": ...}``, through
:func:`~spiritlm.unit_encoder.as_unit_encoder`) -- or as precomputed units.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from spiritlm.models.unit_lm.load import ModelDirError, check_speech_vocab, load_model, load_tokenizer
from spiritlm.unit_encoder import AudioInput, Units, UnitEncoder, as_unit_encoder

__all__ = ["CachedEncoder", "ModelDirError", "StaleUnitsError", "UnitEncoder", "check_speech_vocab",
           "build_from_spec", "encoder_identity", "load_model", "load_speech_encoder", "load_tokenizer", "resolve_device"]

log = logging.getLogger(__name__)

WavInput = AudioInput


class CachedEncoder:
    """Wraps a speech unit encoder (anything :func:`as_unit_encoder` takes); memoises file inputs
    by path."""

    def __init__(self, encoder: Any):
        self.encoder: UnitEncoder = as_unit_encoder(encoder)
        self._cache: dict[str, Units] = {}
        self.calls = 0

    def __call__(self, wav: WavInput) -> Units:
        if isinstance(wav, (str, Path)):
            key = str(Path(wav).resolve())
            if key not in self._cache:
                p = Path(wav)
                if not p.is_file():
                    raise FileNotFoundError(f"audio file not found: {p}")
                self._cache[key] = self._encode(wav)
            return self._cache[key]
        return self._encode(wav)

    def prefetch(self, paths) -> None:
        """Encode many files at once when the encoder has ``encode_many`` (batched); cache them."""
        todo, seen = [], set()
        for p in paths:
            key = str(Path(p).resolve())
            if key not in self._cache and key not in seen:
                if not Path(p).is_file():
                    raise FileNotFoundError(f"audio file not found: {p}")
                seen.add(key)
                todo.append((key, p))
        # only an encoder that batches gains from it (a function adapted file by file does not)
        if not todo or not getattr(self.encoder, "batched", True):
            return
        many = self.encoder.encode_many
        from tqdm.auto import tqdm

        for i in tqdm(range(0, len(todo), 64), desc=f"encode {len(todo)} audio files", unit="batch",
                      disable=True if len(todo) <= 64 else None):
            chunk = todo[i : i + 64]
            outs = many([str(p) for _, p in chunk])
            for (key, p), out in zip(chunk, outs):
                if isinstance(out, Exception):
                    raise ValueError(f"{p}: the speech encoder failed ({out}); check the audio file") from out
                self._cache[key] = out
            self.calls += len(chunk)

    # ---- on disk: the units of many files, encoded once, read by other processes -------------
    # Each file's entry records the size and SHA-256 of the wav it was encoded from, and is read
    # back only while the wav under the reader's root is still those bytes. A content hash, not
    # (size, mtime_ns): benchmark clips are rewritten in place with the same size (re-rendered
    # fixed-length audio, a benchmark re-extracted from an archive, which puts the old mtimes
    # back), and a copied or moved benchmark gets new mtimes for the same bytes. Hashing the
    # benchmark's wavs costs a read of each, far less than encoding one of them.
    def save_units(self, path: str | Path, root: str | Path, identity: str = "") -> int:
        """Write every cached file under ``root`` to ``path`` (``.npz``, no pickles): the paths
        relative to ``root`` and each file's size and SHA-256 (``file_bytes``, ``file_sha256``;
        -1 and "" for a file gone since it was encoded: such an entry is never read back); per
        array stream the concatenated values and each file's offset; the other values
        (durations, frame counts) as JSON; ``identity`` names the encoder that made them
        (:func:`encoder_identity`). Returns the number of files."""
        from spiritlm.data.shards import sha256_file

        root_r = Path(root).resolve()
        keys = sorted(k for k in self._cache if Path(k).is_relative_to(root_r))
        arrays: dict[str, np.ndarray] = {"paths": np.array([str(Path(k).relative_to(root_r)) for k in keys])}
        # an entry read from a units file keeps the identity it was checked against there; one
        # encoded in this process is hashed now (a wav rewritten between its encoding and this
        # save would be recorded with units of its old bytes: the suite saves once, at its end)
        known: dict[str, tuple[int, str]] = dict(getattr(self, "_file_ids", {}))
        sizes, hashes = [], []
        for k in keys:
            if k not in known:
                try:
                    known[k] = (Path(k).stat().st_size, sha256_file(k))
                except FileNotFoundError:
                    known[k] = (-1, "")
            sizes.append(known[k][0])
            hashes.append(known[k][1])
        arrays["file_bytes"] = np.array(sizes, dtype=np.int64)
        arrays["file_sha256"] = np.array(hashes, dtype="<U64")
        streams: dict[str, np.dtype] = {}
        for k in keys:
            for s, v in self._cache[k].items():
                if isinstance(v, np.ndarray) and v.ndim > 0:
                    if "@" in s:
                        raise ValueError(f"stream name {s!r} contains '@'; rename the encoder's stream")
                    if streams.setdefault(s, v.dtype) != v.dtype:
                        raise ValueError(f"stream {s!r} is {streams[s]} in one file and {v.dtype} in "
                                         f"another ({k}); make the encoder return one dtype per stream")
        for s, dtype in sorted(streams.items()):
            parts = [self._cache[k].get(s) for k in keys]
            present = [isinstance(x, np.ndarray) and x.ndim > 0 for x in parts]
            parts = [x if ok else np.zeros(0, dtype) for x, ok in zip(parts, present)]
            arrays[f"stream:{s}"] = np.concatenate(parts)
            arrays[f"stream:{s}@offsets"] = np.cumsum([0] + [len(x) for x in parts])
            arrays[f"stream:{s}@present"] = np.array(present)

        def meta(units) -> str:  # the rest, JSON (numpy scalars and 0-d arrays as numbers)
            rest = {s: v for s, v in units.items() if not (isinstance(v, np.ndarray) and v.ndim > 0)}
            return json.dumps(rest, default=lambda o: o.item() if hasattr(o, "item") else str(o))

        arrays["meta"] = np.array([meta(self._cache[k]) for k in keys])
        arrays["identity"] = np.array(identity)
        tmp = Path(path).with_suffix(f".{os.getpid()}.tmp.npz")  # concurrent writers: one each
        np.savez(tmp, allow_pickle=False, **arrays)
        tmp.replace(path)
        self._file_ids = known
        return len(keys)

    def load_units(self, path: str | Path, root: str | Path, identity: str | None = None) -> int:
        """Fill the cache from a :meth:`save_units` file; paths are taken relative to ``root``.
        With ``identity``, a file written by another encoder raises :class:`StaleUnitsError`.
        An entry whose wav under ``root`` is no longer the bytes it was encoded from is left out
        (the caller encodes that wav again; the log gives the count), and so is every entry of a
        file written before entries recorded their wav. An entry whose wav is absent is read: the
        units are all there is of it. Returns the number of files read."""
        from spiritlm.data.shards import sha256_file

        root_r = Path(root).resolve()
        with np.load(path, allow_pickle=False) as z:
            stored = str(z["identity"]) if "identity" in z.files else ""
            if identity is not None and stored != identity:
                raise StaleUnitsError(f"{path} holds units of another speech encoder or of other files "
                                      f"({stored[:200] or 'not recorded'}); not read")
            paths, meta = z["paths"], z["meta"]
            if "file_sha256" not in z.files:
                log.warning("%s: written before units files recorded their audio; its %d entries are not "
                            "trusted: the audio is encoded again", path, len(paths))
                return 0
            sizes, hashes = z["file_bytes"], z["file_sha256"]
            cols = {k[len("stream:"):]: (z[k], z[f"{k}@offsets"], z[f"{k}@present"])
                    for k in z.files if k.startswith("stream:") and "@" not in k}
        known: dict[str, tuple[int, str]] = dict(getattr(self, "_file_ids", {}))
        changed = 0
        for i, rel in enumerate(paths):
            key = str(root_r / str(rel))
            size, digest = int(sizes[i]), str(hashes[i])
            if size < 0:  # its wav was gone when the file was written: nothing to check it against
                changed += 1
                continue
            f = Path(key)
            if f.is_file() and (f.stat().st_size != size or sha256_file(f) != digest):
                changed += 1
                continue
            units: dict[str, Any] = json.loads(str(meta[i]))
            for s, (vals, offs, present) in cols.items():
                if present[i]:
                    units[s] = vals[offs[i] : offs[i + 1]]
            self._cache[key] = units
            known[key] = (size, digest)
        self._file_ids = known
        if changed:
            log.warning("%s: %d of %d audio files changed since their units were written (or were missing "
                        "then); they are encoded again", path, changed, len(paths))
        return len(paths) - changed

    def _encode(self, wav: WavInput) -> Units:
        self.calls += 1
        try:
            out = self.encoder.encode(wav)
        except FileNotFoundError:
            raise
        except Exception as e:  # audio that fails to load: name the file
            where = str(wav) if isinstance(wav, (str, Path)) else "<waveform>"
            raise ValueError(f"{where}: the speech encoder failed ({type(e).__name__}: {e}); "
                             "check that the file is a readable mono/stereo WAV/FLAC") from e
        if not isinstance(out, Mapping) or "hubert" not in out:
            raise TypeError(f"speech encoder returned {type(out).__name__}; expected a dict with 'hubert'")
        return out


class StaleUnitsError(ValueError):
    """A units file written by another speech encoder (or the same one before its files changed)."""


def encoder_identity(spec: str, args: Mapping[str, Any] | None = None) -> str:
    """What a units file is valid for: the encoder factory, its arguments, and the size and
    modification time of every file its path arguments name (a tokenizer directory retrained in
    place changes them)."""
    files: dict[str, list] = {}
    for key, value in sorted((args or {}).items()):
        if isinstance(value, (str, Path)) and str(value) and Path(value).exists():
            p = Path(value)
            found = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
            files[key] = [(x.name if x == p else str(x.relative_to(p)), x.stat().st_size, x.stat().st_mtime_ns)
                          for x in found[:1000]]
    return json.dumps({"encoder": spec, "args": dict(args or {}), "files": files}, sort_keys=True, default=str)


def build_from_spec(spec: str, args: Mapping[str, Any] | None = None, setting: str = "speech_encoder") -> Any:
    """``"pkg.module:factory"`` -> ``factory(**args)`` (a class, a ``from_pretrained`` classmethod
    written ``Cls.from_pretrained``, or any function); the recipe's hooks are named this way."""
    mod_name, sep, attr = spec.partition(":")
    if not sep:
        raise ModelDirError(f"{setting}={spec!r}: write it as 'package.module:factory'")
    obj: Any = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj(**dict(args or {}))


def load_speech_encoder(spec: str, args: Mapping[str, Any] | None = None) -> CachedEncoder | None:
    """``""``/``"none"`` -> None; else the factory's encoder (:func:`build_from_spec`), cached."""
    if not spec or spec == "none":
        return None
    return CachedEncoder(build_from_spec(spec, args))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
