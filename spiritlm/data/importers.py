"""Corpus importers -> :mod:`spiritlm.manifest` utterances (and text-only corpora -> documents).

Every importer returns ``(utterances, ImportReport)``. Problems with single items are counted
drops with a reason (``audio_missing``, ``audio_unreadable``, ``no_transcript``,
``empty_transcript``, ``non_utf8``, ``duplicate_id``, ``partial_recording``...), each logged and
listed in the report; problems with the input as a whole (a missing root directory) raise.

Audio paths are written relative to the manifest's directory when ``manifest_dir`` is given and
the audio lies below it, else absolute.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from spiritlm.manifest import Style, Utterance, Word

log = logging.getLogger(__name__)

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3")


@dataclass
class ImportReport:
    kept: int = 0
    dropped: dict = field(default_factory=dict)
    drop_log: list = field(default_factory=list)

    def drop(self, item: str, reason: str, message: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.drop_log.append({"item": item, "reason": reason, "message": message})
        log.warning("dropped %s (%s): %s", item, reason, message)

    def to_dict(self) -> dict:
        return {"kept": self.kept, "dropped": dict(sorted(self.dropped.items())),
                "drop_log": self.drop_log}


def _audio_info(path: Path, rep: ImportReport, item: str):
    """(duration, sample rate) from the checked header (the tokenizer's probe_audio: readable,
    plausible sample rate, not empty, not truncated), or None with the drop recorded."""
    from spiritlm.audio import AudioError, probe_audio

    if not path.is_file():
        rep.drop(item, "audio_missing", f"audio file not found: {path}")
        return None
    try:
        info = probe_audio(path)
    except AudioError as e:
        rep.drop(item, "audio_unreadable", str(e))
        return None
    return info.duration, info.sample_rate


def _rel(path: Path, manifest_dir: str | os.PathLike | None) -> str:
    path = path.resolve()
    if manifest_dir is not None:
        try:
            return path.relative_to(Path(manifest_dir).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def _read_text(path: Path, rep: ImportReport, item: str) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        rep.drop(item, "non_utf8", f"{path} is not UTF-8 (byte {e.start}); re-encode it as UTF-8")
        return None


def _finish(utts: list[Utterance], rep: ImportReport) -> list[Utterance]:
    seen, out = set(), []
    for u in utts:
        if u.id in seen:
            rep.drop(u.id, "duplicate_id", f"id {u.id!r} appears more than once (first kept)")
            continue
        seen.add(u.id)
        out.append(u)
    rep.kept = len(out)
    return out


def _require_dir(root) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus directory not found: {root}")
    return root


def import_librispeech(root, manifest_dir=None, split: str = "train"):
    """``<root>/<speaker>/<chapter>/<spk>-<ch>.trans.txt`` (``ID TEXT`` lines) + ``ID.flac``."""
    root = _require_dir(root)
    rep, utts = ImportReport(), []
    trans = sorted(root.glob("*/*/*.trans.txt"))
    if not trans:
        raise FileNotFoundError(f"{root} has no <speaker>/<chapter>/*.trans.txt files: point at a "
                                "LibriSpeech split directory such as LibriSpeech/dev-clean")
    for tf in trans:
        content = _read_text(tf, rep, str(tf))
        if content is None:
            continue
        for lineno, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            item = f"{tf}:{lineno}"
            if not text.strip():
                rep.drop(uid, "empty_transcript", f"{item}: no transcript after the id")
                continue
            audio = next((tf.parent / f"{uid}{e}" for e in (".flac", ".wav")
                          if (tf.parent / f"{uid}{e}").is_file()), tf.parent / f"{uid}.flac")
            info = _audio_info(audio, rep, uid)
            if info is None:
                continue
            utts.append(Utterance(uid, _rel(audio, manifest_dir), info[0], info[1], text.strip(),
                                  tf.parent.parent.name, split=split, kind="librispeech"))
    return _finish(utts, rep), rep


def import_folder(root, manifest_dir=None, split: str = "train", text_exts=(".txt", ".lab"),
                  keep_empty: bool = False):
    """Audio files with a transcript of the same stem (``a.wav`` + ``a.txt``/``a.lab``); the
    speaker is the parent directory's name (``unknown`` at the root); ids are the relative path
    without extension, ``/`` replaced by ``-``."""
    root = _require_dir(root)
    rep, utts = ImportReport(), []
    audio_files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTS)
    if not audio_files:
        raise FileNotFoundError(f"{root} holds no audio files ({', '.join(AUDIO_EXTS)})")
    for audio in audio_files:
        rel = audio.relative_to(root).with_suffix("")
        uid = rel.as_posix().replace("/", "-")
        tf = next((audio.with_suffix(e) for e in text_exts if audio.with_suffix(e).is_file()), None)
        if tf is None:
            rep.drop(uid, "no_transcript", f"no {'/'.join(text_exts)} file beside {audio}")
            continue
        text = _read_text(tf, rep, uid)
        if text is None:
            continue
        text = " ".join(text.split())
        if not text and not keep_empty:
            rep.drop(uid, "empty_transcript", f"{tf} is empty")
            continue
        info = _audio_info(audio, rep, uid)
        if info is None:
            continue
        speaker = rel.parent.name or "unknown"
        utts.append(Utterance(uid, _rel(audio, manifest_dir), info[0], info[1], text, speaker,
                              split=split, kind="folder"))
    return _finish(utts, rep), rep


def import_demo(manifest_path):
    """The demo corpus manifest (already in our format): validated, audio checked."""
    from spiritlm.manifest import read_manifest

    rep, utts = ImportReport(), []
    mdir = Path(manifest_path).parent
    for u in read_manifest(manifest_path):
        if _audio_info(u.audio_file(mdir), rep, u.id) is not None:
            utts.append(u)
    return _finish(utts, rep), rep


# ---- lhotse --------------------------------------------------------------------------------
def _open_jsonl(path) -> Iterator[tuple[int, dict]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"lhotse manifest not found: {p}")
    raw = gzip.open(p, "rb").read() if p.suffix == ".gz" else p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p} is not UTF-8 (byte {e.start})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{lineno}: invalid JSON: {e.msg}") from None


def import_lhotse(recordings, supervisions, manifest_dir=None, split: str = "train",
                  tolerance_s: float = 0.01):
    """lhotse ``RecordingSet`` + ``SupervisionSet`` JSONL(.gz). A supervision must cover its whole
    recording (our manifests hold whole files; others are dropped as ``partial_recording``).
    Word alignments (``alignment.word``) become ``words``. ``custom.split`` / ``custom.kind`` /
    ``custom.style`` (what ``export_lhotse`` writes) are kept; ``split`` is the split of
    supervisions without one."""
    rep, utts = ImportReport(), []
    recs = {}
    base = Path(recordings).parent
    for _, r in _open_jsonl(recordings):
        recs[r["id"]] = r
    for lineno, s in _open_jsonl(supervisions):
        sid = s.get("id", f"line{lineno}")
        r = recs.get(s.get("recording_id"))
        if r is None:
            rep.drop(sid, "no_recording", f"recording {s.get('recording_id')!r} is not in {recordings}")
            continue
        dur = float(r["duration"])
        if abs(float(s.get("start", 0))) > tolerance_s or abs(float(s["duration"]) - dur) > tolerance_s:
            rep.drop(sid, "partial_recording", f"covers {s.get('start', 0)}+{s['duration']}s of a "
                     f"{dur}s recording; cut the audio into segment files first")
            continue
        src = [x for x in r.get("sources", []) if x.get("type") == "file"]
        if not src:
            rep.drop(sid, "audio_missing", "the recording has no 'file' source")
            continue
        audio = Path(src[0]["source"])
        audio = audio if audio.is_absolute() else base / audio
        if not audio.is_file():
            rep.drop(sid, "audio_missing", f"audio file not found: {audio}")
            continue
        text = s.get("text") or ""
        if not text.strip():
            rep.drop(sid, "empty_transcript", "supervision has no text")
            continue
        words = [Word(w["symbol"], round(float(w["start"]), 6),
                      round(float(w["start"]) + float(w["duration"]), 6))
                 for w in ((s.get("alignment") or {}).get("word") or [])]
        custom = s.get("custom") or {}
        st = custom.get("style")
        style = (Style(int(st["rate"]), int(st["pitch"]), int(st["range"]))
                 if isinstance(st, dict) and {"rate", "pitch", "range"} <= set(st) else None)
        utts.append(Utterance(sid, _rel(audio, manifest_dir), dur, int(r["sampling_rate"]), text,
                              s.get("speaker") or "unknown", style=style, words=words,
                              split=str(custom.get("split") or split), kind=str(custom.get("kind") or "lhotse")))
    return _finish(utts, rep), rep


def _write_jsonl_gz(path: Path, rows: Iterable[dict]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:  # mtime=0: byte-stable output
        for r in rows:
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def export_lhotse(utts: list[Utterance], manifest_dir, out_dir) -> tuple[Path, Path]:
    """Write ``recordings.jsonl.gz`` + ``supervisions.jsonl.gz`` (absolute audio paths)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recs, sups = [], []
    for u in utts:
        n = int(round(u.duration * u.sample_rate))
        recs.append({"id": u.id, "sources": [{"type": "file", "channels": [0],
                     "source": str(u.audio_file(manifest_dir).resolve())}],
                     "sampling_rate": u.sample_rate, "num_samples": n,
                     "duration": u.duration, "channel_ids": [0]})
        sup = {"id": u.id, "recording_id": u.id, "start": 0.0, "duration": u.duration,
               "channel": 0, "text": u.text, "speaker": u.speaker}
        if u.words:
            sup["alignment"] = {"word": [{"symbol": w.word, "start": w.start,
                                          "duration": round(w.end - w.start, 6)} for w in u.words]}
        # held-out utterances must stay held out after a round trip (lhotse keeps `custom` as is)
        sup["custom"] = {"split": u.split, "kind": u.kind}
        if u.style is not None:
            sup["custom"]["style"] = {"rate": u.style.rate, "pitch": u.style.pitch, "range": u.style.range}
        sups.append(sup)
    rp, sp = out / "recordings.jsonl.gz", out / "supervisions.jsonl.gz"
    _write_jsonl_gz(rp, recs)
    _write_jsonl_gz(sp, sups)
    return rp, sp


# ---- text-only corpora ---------------------------------------------------------------------
def iter_text_corpus(path, text_field: str = "text", min_chars: int = 1):
    """Yield ``(id, text, drop_reason)``: ``.txt`` -> one document per non-blank line (id
    ``<stem>:<line>``); ``.jsonl`` -> one object per line with ``text_field`` (and optional
    ``id``). Bad lines are yielded with a reason (``non_utf8``, ``invalid_json``, ``empty_text``)
    and logged, never skipped silently."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text corpus not found: {p}")
    is_json = p.suffix in (".jsonl", ".json") or p.name.endswith(".jsonl.gz")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{p}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                log.warning("dropped %s: not UTF-8 (byte %d)", where, e.start)
                yield where, None, "non_utf8"
                continue
            if not line.strip():
                continue  # blank lines separate documents; they are not documents
            if not is_json:
                text = line.strip()
                rid = f"{p.stem}:{lineno}"
            else:
                try:
                    obj = json.loads(line)
                    text = obj[text_field]
                    rid = str(obj.get("id", f"{p.stem}:{lineno}"))
                except (json.JSONDecodeError, KeyError, TypeError):
                    log.warning("dropped %s: not a JSON object with a %r field", where, text_field)
                    yield where, None, "invalid_json"
                    continue
                if not isinstance(text, str):
                    yield where, None, "invalid_json"
                    continue
            if len(text.strip()) < max(1, min_chars):
                log.warning("dropped %s: empty text", where)
                yield where, None, "empty_text"
                continue
            yield rid, text, None
