"""Speech corpus manifests: JSON Lines, one utterance per line (lhotse-like, flat).

This is the format the data-preparation stage reads. Example line (wrapped here)::

    {"id": "demo-00003", "audio_path": "audio/demo-00003.wav", "duration": 2.84375,
     "sample_rate": 16000, "text": "The dog sleeps.", "speaker": "en-us+f2",
     "style": {"rate": 162, "pitch": 41, "range": 57},
     "words": [{"word": "The", "start": 0.15, "end": 0.2619}, ...],
     "phones": [{"phone": "_", "start": 0.0, "end": 0.15}, {"phone": "D", ...}, ...],
     "split": "train", "kind": "sentence", "extra": {"template": "intrans"}}

Fields:

* ``id`` -- unique, non-empty string.
* ``audio_path`` -- a WAV/FLAC file; a relative path is relative to the directory that holds the
  manifest (the demo corpus always writes relative paths), an absolute path is used as is.
  :meth:`Utterance.audio_file` resolves it.
* ``duration`` (seconds, > 0) and ``sample_rate`` (Hz) of that file.
* ``text`` -- the transcript; ``words[i].word`` are its word tokens in order (letters only,
  punctuation dropped, case kept).
* ``speaker`` -- a speaker id (for the demo corpus: the espeak voice, e.g. ``en-us+f2``).
* ``style`` -- ``{rate, pitch, range}`` (espeak words/minute, 0-99, 0-99) or ``null``.
* ``words`` / ``phones`` -- time-aligned segments in seconds, ordered, non-overlapping, within
  ``[0, duration]``; may be empty when no alignment exists. Demo phones are espeak phoneme
  mnemonics (stress marks ``'``/``,`` kept; silences start with ``_``) and tile the utterance;
  :func:`phone_label` normalises them and :func:`frame_labels` gives one label per frame (PNMI).
* ``split`` -- e.g. ``train`` / ``heldout``; ``kind`` -- e.g. ``story`` / ``sentence`` /
  ``sentiment``; ``extra`` -- a free JSON object (labels such as the sentiment or story topic).

:func:`read_manifest` validates every line and raises :class:`ManifestError` naming the file,
line number and field. :func:`write_manifest` writes atomically (temp file + rename) with a
canonical key order, so equal utterances give byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

TIME_TOLERANCE = 1e-3  # seconds of slack allowed for segment ends past ``duration``


class ManifestError(ValueError):
    def __init__(self, message: str, *, path: str | os.PathLike | None = None,
                 line: int | None = None, field: str | None = None) -> None:
        self.path, self.line, self.field = path, line, field
        where = ""
        if path is not None:
            where += f"{path}:"
        if line is not None:
            where += f"{line}:"
        if field is not None:
            where += f" field '{field}':"
        super().__init__(f"{where} {message}".strip())


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float


@dataclass(frozen=True)
class Phone:
    phone: str
    start: float
    end: float


@dataclass(frozen=True)
class Style:
    rate: int
    pitch: int
    range: int


@dataclass
class Utterance:
    id: str
    audio_path: str
    duration: float
    sample_rate: int
    text: str
    speaker: str
    style: Style | None = None
    words: list[Word] = field(default_factory=list)
    phones: list[Phone] = field(default_factory=list)
    split: str = "train"
    kind: str = "sentence"
    extra: dict[str, Any] = field(default_factory=dict)

    def audio_file(self, manifest_dir: str | os.PathLike) -> Path:
        p = Path(self.audio_path)
        return p if p.is_absolute() else Path(manifest_dir) / p

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "audio_path": self.audio_path, "duration": self.duration,
            "sample_rate": self.sample_rate, "text": self.text, "speaker": self.speaker,
            "style": None if self.style is None else
            {"rate": self.style.rate, "pitch": self.style.pitch, "range": self.style.range},
            "words": [{"word": w.word, "start": w.start, "end": w.end} for w in self.words],
            "phones": [{"phone": p.phone, "start": p.start, "end": p.end} for p in self.phones],
            "split": self.split, "kind": self.kind, "extra": _canonical(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Any) -> "Utterance":
        """Build and validate; raises :class:`ManifestError` with ``field`` set."""
        if not isinstance(d, dict):
            raise ManifestError("expected a JSON object")
        missing = [k for k in ("id", "audio_path", "duration", "sample_rate", "text", "speaker")
                   if k not in d]
        if missing:
            raise ManifestError("missing required field", field=missing[0])
        known = {"id", "audio_path", "duration", "sample_rate", "text", "speaker", "style",
                 "words", "phones", "split", "kind", "extra"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ManifestError("unknown field (put custom data in 'extra')", field=unknown[0])
        style = d.get("style")
        if style is not None:
            if not isinstance(style, dict) or set(style) != {"rate", "pitch", "range"}:
                raise ManifestError("must be null or {rate, pitch, range}", field="style")
            for k in ("rate", "pitch", "range"):
                if not _is_int(style[k]):
                    raise ManifestError(f"must be an integer, got {style[k]!r}", field=f"style.{k}")
            style = Style(style["rate"], style["pitch"], style["range"])
        words = _segments(d.get("words", []), "words", "word", Word)
        phones = _segments(d.get("phones", []), "phones", "phone", Phone)
        utt = cls(d["id"], d["audio_path"], d["duration"], d["sample_rate"], d["text"],
                  d["speaker"], style, words, phones, d.get("split", "train"),
                  d.get("kind", "sentence"), d.get("extra", {}))
        validate(utt)
        return utt


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


def _segments(items: Any, name: str, label_key: str, cls):
    if not isinstance(items, list):
        raise ManifestError("must be a list", field=name)
    out = []
    for i, it in enumerate(items):
        if not isinstance(it, dict) or set(it) != {label_key, "start", "end"}:
            raise ManifestError(f"must be an object with keys {label_key}, start, end",
                                field=f"{name}[{i}]")
        out.append(cls(it[label_key], it["start"], it["end"]))
    return out


def validate(u: Utterance) -> None:
    """Check types and invariants; raises :class:`ManifestError` naming the field."""
    for k in ("id", "audio_path", "speaker", "split", "kind"):
        v = getattr(u, k)
        if not isinstance(v, str) or not v:
            raise ManifestError(f"must be a non-empty string, got {v!r}", field=k)
    if not isinstance(u.text, str):
        raise ManifestError(f"must be a string, got {u.text!r}", field="text")
    if not _is_num(u.duration) or u.duration <= 0:
        raise ManifestError(f"must be a finite number > 0, got {u.duration!r}", field="duration")
    if not _is_int(u.sample_rate) or u.sample_rate <= 0:
        raise ManifestError(f"must be a positive integer, got {u.sample_rate!r}",
                            field="sample_rate")
    if not isinstance(u.extra, dict):
        raise ManifestError("must be a JSON object", field="extra")
    for name, segs, key in (("words", u.words, "word"), ("phones", u.phones, "phone")):
        prev_end = 0.0
        for i, s in enumerate(segs):
            label = getattr(s, key)
            if not isinstance(label, str) or not label:
                raise ManifestError(f"must be a non-empty string, got {label!r}",
                                    field=f"{name}[{i}].{key}")
            for k in ("start", "end"):
                v = getattr(s, k)
                if not _is_num(v):
                    raise ManifestError(f"must be a finite number, got {v!r}", field=f"{name}[{i}].{k}")
            if s.start < 0:
                raise ManifestError(f"must be >= 0, got {s.start}", field=f"{name}[{i}].start")
            if s.end < s.start:
                raise ManifestError(f"must be >= start ({s.start}), got {s.end}",
                                    field=f"{name}[{i}].end")
            if s.end > u.duration + TIME_TOLERANCE:
                raise ManifestError(f"must be <= duration ({u.duration}), got {s.end}",
                                    field=f"{name}[{i}].end")
            if s.start < prev_end - TIME_TOLERANCE:
                raise ManifestError(f"overlaps the previous segment (ends {prev_end}), got {s.start}",
                                    field=f"{name}[{i}].start")
            prev_end = s.end


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _canonical(obj[k]) for k in sorted(obj, key=str)}
    if isinstance(obj, (list, tuple)):
        return [_canonical(x) for x in obj]
    return obj


def dumps_utterance(u: Utterance) -> str:
    validate(u)
    return json.dumps(u.to_dict(), ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read and validate a manifest; raises :class:`ManifestError` (file, line, field)."""
    utts: list[Utterance] = []
    ids: dict[str, int] = {}
    # utf-8-sig: a byte-order mark (Windows editors write one) is skipped, not a JSON error
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"invalid JSON: {e.msg} (column {e.colno})", path=path,
                                    line=lineno) from None
            try:
                u = Utterance.from_dict(d)
            except ManifestError as e:
                raise ManifestError(str(e), path=path, line=lineno, field=e.field) from None
            if u.id in ids:
                raise ManifestError(f"duplicate id {u.id!r} (first on line {ids[u.id]})",
                                    path=path, line=lineno, field="id")
            ids[u.id] = lineno
            utts.append(u)
    return utts


def write_manifest(path: str | os.PathLike, utts: Iterable[Utterance]) -> None:
    """Validate and write atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    lines, seen = [], set()
    for i, u in enumerate(utts):
        try:
            lines.append(dumps_utterance(u))
        except ManifestError as e:
            raise ManifestError(str(e), path=path, line=i + 1, field=e.field) from None
        if u.id in seen:
            raise ManifestError(f"duplicate id {u.id!r}", path=path, line=i + 1, field="id")
        seen.add(u.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; others on shared storage read it
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; restored at once
    os.umask(mask)
    return mask


def phone_label(phone: str, silence: str = "sil") -> str:
    """Normalise an espeak mnemonic for phone-level statistics: drop stress marks
    (``'`` primary, ``,`` secondary) and map pauses (``_...``) to ``silence``."""
    if phone.startswith("_"):
        return silence
    return phone.replace("'", "").replace(",", "") or silence


def frame_labels(utt: Utterance, frame_rate: float = 50.0, silence: str = "sil",
                 normalize: bool = True) -> list[str]:
    """One phone label per frame (frame ``i`` covers ``[i/rate, (i+1)/rate)``, labelled by the
    phone containing its centre; frames outside any phone get ``silence``). For PNMI."""
    n = int(math.floor(utt.duration * frame_rate + 1e-9))
    labels = [silence] * n
    j = 0
    phones = utt.phones
    for i in range(n):
        t = (i + 0.5) / frame_rate
        while j < len(phones) and phones[j].end <= t:
            j += 1
        if j < len(phones) and phones[j].start <= t:
            p = phones[j].phone
            labels[i] = phone_label(p, silence) if normalize else p
    return labels
