"""The one audio -> units protocol, shared by the data stage and the evaluation.

A :class:`UnitEncoder` turns speech into frame-level unit streams (``{"hubert": int array,
"pitch": ..., "style": ...}``; Base models need only ``hubert``):

- ``encode(audio)``: one wav path or 16 kHz float waveform (the evaluation scores items one at a
  time and caches them, ``spiritlm.eval.model.CachedEncoder``);
- ``encode_many(paths)``: a batch of files, one result per path, a bad file's result being its
  exception (the data stage's workers batch files into shards and count unreadable ones);
- ``name``: the encoder's identity (written into shard metadata, so shards of different
  encoders never mix); ``frame_rates``: the streams it returns and their rate in Hz (used to
  place frames in time).

Implementations: the data stage's (``spiritlm.data.encoders``: the speech tokenizer directory,
a hash stand-in for tests), and whatever a recipe names as ``package.module:factory``.
:func:`as_unit_encoder` takes what a user is likely to hand in -- an object with ``encode``
(``spiritlm.tokenizer.SpeechTokenizer``) or a plain function ``audio -> units`` -- and gives it
the missing parts. Base layer: numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

Units = Mapping[str, np.ndarray]
AudioInput = Union[str, Path, np.ndarray]
# the rates of the release's streams (HuBERT 25 Hz, pitch 12.5 Hz, style 1 Hz)
DEFAULT_FRAME_RATES = {"hubert": 25.0, "pitch": 12.5, "style": 1.0}


@runtime_checkable
class UnitEncoder(Protocol):
    name: str
    frame_rates: Mapping[str, float]

    def encode(self, audio: AudioInput) -> Units: ...

    def encode_many(self, paths: Sequence[Union[str, Path]]) -> list: ...  # [Units | Exception]


class _Adapted:
    """``encode`` from the wrapped object or function; ``encode_many`` the object's own when it
    has one (``batched``: worth calling on many files at once), else one ``encode`` per path."""

    def __init__(self, encode: Callable[[AudioInput], Units], many: Optional[Callable], name: str,
                 frame_rates: Mapping[str, float], owner: Any):
        self._encode, self._many, self.owner = encode, many, owner
        self.name, self.frame_rates = name, dict(frame_rates)
        self.batched = many is not None

    def encode(self, audio: AudioInput) -> Units:
        return self._encode(audio)

    def encode_many(self, paths: Sequence[Union[str, Path]]) -> list:
        if self._many is not None:
            return list(self._many([str(p) for p in paths]))
        out: list = []
        for p in paths:
            try:
                out.append(self._encode(str(p)))
            except Exception as e:  # one bad file is its result, as encode_many's contract says
                out.append(e)
        return out


def as_unit_encoder(obj: Any, name: Optional[str] = None,
                    frame_rates: Optional[Mapping[str, float]] = None) -> UnitEncoder:
    """``obj`` as a :class:`UnitEncoder`: returned as is when it is one; an object with
    ``encode`` (and maybe ``encode_many``) or a function ``audio -> units`` is wrapped, its name
    and frame rates taken from the object, else from the arguments, else ``type name`` and the
    release's rates. Anything else: TypeError naming what is missing."""
    if isinstance(obj, UnitEncoder):
        return obj
    encode = getattr(obj, "encode", None)
    if encode is None and callable(obj):
        encode = obj
    if encode is None:
        raise TypeError(f"{obj!r} is not a speech unit encoder: give an object with encode(audio) -> "
                        "{'hubert': ...} (and optionally encode_many(paths)), or a function audio -> units "
                        "(spiritlm.unit_encoder.UnitEncoder)")
    return _Adapted(encode, getattr(obj, "encode_many", None),
                    name or getattr(obj, "name", None) or type(obj).__name__,
                    frame_rates or getattr(obj, "frame_rates", None) or DEFAULT_FRAME_RATES, obj)
