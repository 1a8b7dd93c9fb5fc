"""Word alignment behind one interface: pocketsphinx (offline default), MFA, and imports.

An :class:`Aligner` turns ``(utterance, audio file)`` into word segments, or raises
:class:`AlignmentError` with a short ``reason``. :func:`align_manifest` runs one over a manifest,
checks every result (words = the transcript's words, monotone, inside the audio), and keeps
failed utterances without words (-> speech-only records later) or drops them; every failure
is counted by reason in the report.

* :class:`PocketsphinxAligner` -- runs here, offline: the English acoustic model + CMU dictionary
  that ship with the ``pocketsphinx`` wheel, FSG forced alignment (``Decoder.set_align_text``).
  Out-of-dictionary words get a pronunciation from :func:`letter_to_sound` (rule-based
  letters -> ARPABET; digits spelled out) added with ``Decoder.add_word``. Audio is padded with
  0.25 s of faint deterministic noise on both sides (pocketsphinx loses the last word on
  digitally silent edges) and the beams are widened on a failed first try.
* :class:`MFAAligner` -- ``mfa align`` in a subprocess when ``mfa`` is on PATH (it needs Kaldi
  from conda), then the TextGrids are imported.
* :class:`TextGridAligner`, :class:`CTMAligner`, :class:`LhotseAligner` -- import existing
  alignments (TextGrid long/short format, CTM, lhotse ``alignment.word``).

:func:`measure_aligner` scores an aligner against reference word times (the demo corpus's exact
synthesizer times): mean / p95 boundary error in ms and the share of boundaries within 50 ms.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from spiritlm.data.textgrid import read_ctm, read_textgrid, textgrid_words
from spiritlm.manifest import Utterance, Word
from spiritlm.audio import AudioError, is_silent

log = logging.getLogger(__name__)

SKIP_LABELS = {"", "sil", "sp", "spn", "<eps>", "<sil>", "<s>", "</s>", "[noise]", "<unk>"}
_CLEAN_RE = re.compile(r"[^a-z0-9']")


class AlignmentError(ValueError):
    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


class Aligner(Protocol):
    name: str

    def align(self, utt: Utterance, audio_file: Path) -> list[Word]: ...


def transcript_words(text: str) -> list[str]:
    from spiritlm.data.work import transcript_words as tw

    return tw(text)


def check_words(utt: Utterance, words: list[Word], tolerance: float = 0.05) -> None:
    """Raise :class:`AlignmentError` if ``words`` do not fit the transcript and audio."""
    from spiritlm.data.records import _chars

    want = [w.lower() for w in transcript_words(utt.text)]
    got = [w.word.lower() for w in words]
    if _chars(got) != _chars(want):
        raise AlignmentError("alignment_incomplete", f"{utt.id}: aligned words {got[:6]}... "
                             f"are not the transcript's {want[:6]}...")
    prev = 0.0
    for w in words:
        if w.end > utt.duration + tolerance:
            raise AlignmentError("alignment_overruns_audio",
                                 f"{utt.id}: {w.word!r} ends at {w.end:.3f}s > {utt.duration:.3f}s")
        if w.start < prev - 1e-3 or w.end < w.start:
            raise AlignmentError("alignment_not_monotonic", f"{utt.id}: {w.word!r} goes back in time")
        prev = w.end


def _clip(words: list[Word], duration: float) -> list[Word]:
    return [Word(w.word, round(min(max(w.start, 0.0), duration), 4),
                 round(min(max(w.end, 0.0), duration), 4)) for w in words]


def _relabel(utt: Utterance, words: list[Word]) -> list[Word]:
    """Give aligned words the transcript's spelling when they match case-insensitively."""
    want = transcript_words(utt.text)
    if [w.word.lower() for w in words] == [w.lower() for w in want]:
        return [Word(t, w.start, w.end) for t, w in zip(want, words)]
    return words


# ---- letter-to-sound for out-of-dictionary words --------------------------------------------
_DIGITS = ["Z IH R OW", "W AH N", "T UW", "TH R IY", "F AO R", "F AY V", "S IH K S",
           "S EH V AH N", "EY T", "N AY N"]
_LTS = [  # longest match first; a deliberately small rule set (good enough to be aligned)
    ("tion", "SH AH N"), ("ough", "AO"), ("eigh", "EY"), ("igh", "AY"), ("sch", "S K"),
    ("tch", "CH"), ("dge", "JH"), ("th", "TH"), ("sh", "SH"), ("ch", "CH"), ("ph", "F"),
    ("wh", "W"), ("ng", "NG"), ("ck", "K"), ("qu", "K W"), ("kn", "N"), ("wr", "R"),
    ("ee", "IY"), ("ea", "IY"), ("oo", "UW"), ("ou", "AW"), ("ow", "OW"), ("oi", "OY"),
    ("oy", "OY"), ("ai", "EY"), ("ay", "EY"), ("au", "AO"), ("aw", "AO"), ("ie", "IY"),
    ("ei", "EY"), ("ue", "UW"), ("ew", "UW"), ("er", "ER"), ("ir", "ER"), ("ur", "ER"),
    ("ar", "AA R"), ("or", "AO R"), ("a", "AE"), ("b", "B"), ("c", "K"), ("d", "D"),
    ("e", "EH"), ("f", "F"), ("g", "G"), ("h", "HH"), ("i", "IH"), ("j", "JH"), ("k", "K"),
    ("l", "L"), ("m", "M"), ("n", "N"), ("o", "AA"), ("p", "P"), ("q", "K"), ("r", "R"),
    ("s", "S"), ("t", "T"), ("u", "AH"), ("v", "V"), ("w", "W"), ("x", "K S"), ("y", "Y"),
    ("z", "Z"),
]


def ascii_fold(word: str) -> str:
    """Latin letters with diacritics -> their base letters ("café" -> "cafe", "naïve" ->
    "naive"; NFKD splits off the accents), so that the English dictionary and letter-to-sound
    rules see the word instead of dropping its letters. Other scripts are left as they are."""
    import unicodedata

    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


def letter_to_sound(word: str) -> str:
    """A rough ARPABET pronunciation for a word missing from the dictionary ("" if none)."""
    w = _CLEAN_RE.sub("", ascii_fold(word).lower()).replace("'", "")
    phones: list[str] = []
    i = 0
    while i < len(w):
        if w[i].isdigit():
            phones.append(_DIGITS[int(w[i])])
            i += 1
            continue
        if w[i:] == "e" and phones:  # silent final e
            break
        if w[i] == "y" and i == len(w) - 1 and i > 0:
            phones.append("IY")
            break
        for letters, ph in _LTS:
            if w.startswith(letters, i):
                phones.append(ph)
                i += len(letters)
                break
        else:
            i += 1
    return " ".join(phones)


# Confidence of a forced alignment. A forced aligner always "succeeds": given 8 words of a
# 22-word recording, pocketsphinx stretched them over the audio and reported silence over 1.4 s
# of speech, and the shards paired those words with the wrong speech. Measured on the real
# LibriVox utterances (tests/test_real_speech.py): correct transcripts leave <= 0.03 s of speech
# outside the words and at most 0.29 s per phone; transcripts missing 3-14 words leave 0.36-2.4 s
# uncovered or stretch a word to 0.49-0.55 s per phone. (pocketsphinx's FSG alignment reports no
# per-word acoustic score -- Segment.ascore is 0 there; its state-level pass does, but failed on a
# third of the runs tried: data_prep/README.md -- so these two measures stand in for it.)
MAX_UNCOVERED_SPEECH_S = 0.25
MAX_SECONDS_PER_PHONE = 0.4
MIN_SUSPECT_WORD_S = 0.5  # short words are never "too long", whatever their phone count


def speech_frames(audio: np.ndarray, rate: int = 16000, hop_s: float = 0.01) -> np.ndarray:
    """Per 10-ms frame: loud enough to be speech, i.e. above the midpoint (in dB) between the
    recording's noise floor (10th percentile of frame energy) and its speech level (95th)."""
    hop = int(rate * hop_s)
    n = len(audio) // hop
    if n == 0:
        return np.zeros(0, bool)
    e = 10 * np.log10(np.mean(audio[:n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1) + 1e-10)
    floor, peak = np.percentile(e, 10), np.percentile(e, 95)
    return e > floor + 0.5 * (peak - floor)


def check_confidence(uid: str, audio: np.ndarray, words: list[Word], phones: list[int],
                     rate: int = 16000) -> None:
    """Raise :class:`AlignmentError` when an alignment looks forced onto the wrong speech:
    ``alignment_uncovered_speech`` (speech outside every word: the transcript misses words) or
    ``alignment_implausible_duration`` (a word held far longer than its phones take)."""
    sp = speech_frames(audio, rate)
    covered = np.zeros(len(sp), bool)
    for w in words:
        covered[max(0, int(round(w.start * 100))):max(0, int(round(w.end * 100)))] = True
    uncovered = float((sp & ~covered).sum()) / 100
    if uncovered > MAX_UNCOVERED_SPEECH_S:
        raise AlignmentError(
            "alignment_uncovered_speech",
            f"{uid}: {uncovered:.2f} s of speech lie outside the aligned words: the transcript "
            f"({len(words)} words) probably misses words of the recording; fix the transcript")
    for w, n in zip(words, phones):
        d = w.end - w.start
        if d > MIN_SUSPECT_WORD_S and d / max(n, 1) > MAX_SECONDS_PER_PHONE:
            raise AlignmentError(
                "alignment_implausible_duration",
                f"{uid}: {w.word!r} ({n} phones) would last {d:.2f} s: the transcript probably "
                "does not match the recording; check it")


class PocketsphinxAligner:
    name = "pocketsphinx"
    BEAMS = ({"beam": 1e-60, "pbeam": 1e-60, "wbeam": 1e-40},
             {"beam": 1e-100, "pbeam": 1e-100, "wbeam": 1e-80})

    def __init__(self, pad_s: float = 0.25, noise: float = 1e-3, dictionary: str | None = None):
        import pocketsphinx  # noqa: F401  (fail early with ImportError)

        self.pad_s, self.noise, self.dictionary = pad_s, noise, dictionary
        self._decoders: dict[int, object] = {}
        self.oov_added: dict[str, str] = {}

    def _decoder(self, k: int):
        if k not in self._decoders:
            import pocketsphinx as ps

            kw = dict(self.BEAMS[k], lm=None, loglevel="FATAL")
            if self.dictionary:
                kw["dict"] = self.dictionary
            self._decoders[k] = ps.Decoder(**kw)
        return self._decoders[k]

    def _prepare_words(self, dec, words: list[str]) -> list[str]:
        out = []
        for w in words:
            key = _CLEAN_RE.sub("", ascii_fold(w).lower())
            if not key.strip("'"):
                raise AlignmentError(
                    "unalignable_characters",
                    f"word {w!r}: the pocketsphinx aligner's alphabet (English: letters a-z, digits) "
                    "does not cover its characters; align this language with MFA and its model "
                    "(--method mfa) or import alignments (--method textgrid/ctm/lhotse)")
            if dec.lookup_word(key) is None:
                phones = self.oov_added.get(key) or letter_to_sound(key)
                if not phones:
                    raise AlignmentError("unalignable_characters", f"no pronunciation for {w!r}")
                dec.add_word(key, phones, True)
                self.oov_added[key] = phones
            out.append(key)
        return out

    def align(self, utt: Utterance, audio_file: Path) -> list[Word]:
        from spiritlm.data.encoders import read_audio
        from spiritlm.data.interleave import record_key

        words = transcript_words(utt.text)
        if not words:
            raise AlignmentError("empty_transcript", f"{utt.id}: nothing to align")
        audio = read_audio(audio_file, 16000)
        if is_silent(audio):
            raise AlignmentError("silent_audio", f"{audio_file}: digital silence, nothing to align; "
                                                 "remove it from the manifest or replace the file")
        pad = np.zeros(int(self.pad_s * 16000), np.float32)
        x = np.concatenate([pad, audio, pad])
        rng = np.random.default_rng(record_key(utt.id))
        x = x + rng.standard_normal(x.size).astype(np.float32) * self.noise
        pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
        duration = len(audio) / 16000
        for k in range(len(self.BEAMS)):
            dec = self._decoder(k)
            keys = self._prepare_words(dec, words)
            dec.set_align_text(" ".join(keys))
            dec.start_utt()
            dec.process_raw(pcm, full_utt=True)
            dec.end_utt()
            segs = dec.seg()
            if segs is None:
                continue
            out = []
            for s in segs:
                label = re.sub(r"\(\d+\)$", "", s.word)
                if label.lower() in SKIP_LABELS:
                    continue
                out.append(Word(label, s.start_frame / 100 - self.pad_s,
                                (s.end_frame + 1) / 100 - self.pad_s))
            if [w.word for w in out] == keys:
                phones = [len((dec.lookup_word(k) or "x x x").split()) for k in keys]
                check_confidence(utt.id, audio, out, phones)
                return _clip([Word(t, w.start, w.end) for t, w in zip(words, out)], duration)
        raise AlignmentError("alignment_failed", f"{utt.id}: pocketsphinx found no alignment")


class TextGridAligner:
    """Reads ``<dir>/<id>.TextGrid`` (or ``<dir>/<speaker>/<id>.TextGrid``, MFA's layout)."""

    name = "textgrid"

    def __init__(self, directory, tier: str = "words"):
        self.dir, self.tier = Path(directory), tier
        if not self.dir.is_dir():
            raise FileNotFoundError(f"TextGrid directory not found: {self.dir}")

    def align(self, utt: Utterance, audio_file: Path) -> list[Word]:
        for p in (self.dir / f"{utt.id}.TextGrid", self.dir / utt.speaker / f"{utt.id}.TextGrid"):
            if p.is_file():
                words = textgrid_words(read_textgrid(p), self.tier)
                return _relabel(utt, [Word(w, s, e) for w, s, e in words
                                      if w.lower() not in SKIP_LABELS])
        raise AlignmentError("no_alignment", f"{utt.id}: no {utt.id}.TextGrid in {self.dir}")


class _TableAligner:
    table: dict

    def align(self, utt: Utterance, audio_file: Path) -> list[Word]:
        if utt.id not in self.table:
            raise AlignmentError("no_alignment", f"{utt.id}: not in {self.name} source")
        return _relabel(utt, [w for w in self.table[utt.id] if w.word.lower() not in SKIP_LABELS])


class CTMAligner(_TableAligner):
    name = "ctm"

    def __init__(self, path):
        self.table = {k: [Word(w, s, e) for w, s, e in v] for k, v in read_ctm(path).items()}


class LhotseAligner(_TableAligner):
    name = "lhotse"

    def __init__(self, supervisions):
        from spiritlm.data.importers import _open_jsonl

        self.table = {}
        for _, s in _open_jsonl(supervisions):
            ali = (s.get("alignment") or {}).get("word") or []
            off = float(s.get("start", 0.0))
            self.table[s["id"]] = [Word(a["symbol"], float(a["start"]) - off,
                                        float(a["start"]) - off + float(a["duration"])) for a in ali]


class MFAAligner:
    """Montreal Forced Aligner in a subprocess; needs ``mfa`` on PATH (conda, with Kaldi)."""

    name = "mfa"

    def __init__(self, dictionary: str, acoustic_model: str, out_dir=None, extra_args=()):
        if shutil.which("mfa") is None:
            raise FileNotFoundError("`mfa` is not on PATH: install the Montreal Forced Aligner "
                                    "(conda install -c conda-forge montreal-forced-aligner) or use "
                                    "--method pocketsphinx")
        if not dictionary or not acoustic_model:
            raise ValueError("mfa needs --mfa-dictionary and --mfa-acoustic-model")
        self.dictionary, self.acoustic_model = dictionary, acoustic_model
        self.out_dir = Path(out_dir) if out_dir else None
        self.extra_args = list(extra_args)
        self._tg: TextGridAligner | None = None

    def run(self, utts: list[Utterance], manifest_dir: Path) -> None:
        """Lay the corpus out as MFA wants (``<speaker>/<id>.wav`` + ``.lab``) and align it."""
        corpus = Path(tempfile.mkdtemp(prefix="mfa_corpus_"))
        out = self.out_dir or Path(tempfile.mkdtemp(prefix="mfa_out_"))
        for u in utts:
            d = corpus / u.speaker
            d.mkdir(parents=True, exist_ok=True)
            src = u.audio_file(manifest_dir).resolve()
            (d / f"{u.id}{src.suffix}").symlink_to(src)
            (d / f"{u.id}.lab").write_text(u.text, encoding="utf-8")
        cmd = ["mfa", "align", "--clean", str(corpus), self.dictionary, self.acoustic_model,
               str(out), *self.extra_args]
        log.info("running %s", " ".join(cmd))
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"mfa align failed ({r.returncode}): {r.stderr[-2000:]}")
        self._tg = TextGridAligner(out)

    def align(self, utt: Utterance, audio_file: Path) -> list[Word]:
        if self._tg is None:
            raise RuntimeError("call MFAAligner.run(utterances, manifest_dir) first")
        return self._tg.align(utt, audio_file)


def make_aligner(method: str, source=None, dictionary=None, acoustic_model=None):
    if method == "pocketsphinx":
        return PocketsphinxAligner()
    if method == "mfa":
        return MFAAligner(dictionary, acoustic_model, out_dir=source)
    if source is None:
        raise ValueError(f"--method {method} needs --source (the alignments to import)")
    return {"textgrid": TextGridAligner, "ctm": CTMAligner, "lhotse": LhotseAligner}[method](source)


def failure_reason(e: Exception) -> str:
    """The short drop reason of an alignment failure (data_prep/README.md lists them all)."""
    if isinstance(e, AlignmentError):
        return e.reason
    return "audio_unreadable" if isinstance(e, AudioError) else "alignment_failed"


def align_utterances(utts: list[Utterance], manifest_dir, aligner, keep_failed: bool = True,
                     tolerance: float = 0.05) -> tuple[list[Utterance], dict]:
    """Align every utterance; failures keep ``words=[]`` (or are dropped), counted by reason."""
    from tqdm import tqdm

    manifest_dir = Path(manifest_dir)
    if isinstance(aligner, MFAAligner):
        aligner.run(utts, manifest_dir)
    out, reasons, failures = [], {}, []
    for u in tqdm(utts, desc=f"align ({aligner.name})", unit="utt", disable=len(utts) < 50):
        try:
            words = aligner.align(u, u.audio_file(manifest_dir))
            check_words(u, words, tolerance)
            u = Utterance(**{**u.__dict__, "words": _clip(words, u.duration)})
        except (AlignmentError, OSError, ValueError) as e:
            reason = failure_reason(e)
            reasons[reason] = reasons.get(reason, 0) + 1
            failures.append({"id": u.id, "reason": reason, "message": str(e),
                             "action": "kept_without_words" if keep_failed else "dropped"})
            log.warning("alignment of %s failed (%s): %s", u.id, reason, e)
            if not keep_failed:
                continue
            u = Utterance(**{**u.__dict__, "words": []})
        out.append(u)
    report = {"aligner": aligner.name, "utterances": len(utts), "aligned": len(utts) - len(failures),
              "failed": len(failures), "failed_reasons": dict(sorted(reasons.items())),
              "failures": failures}
    if isinstance(aligner, PocketsphinxAligner):
        report["oov_pronunciations"] = dict(sorted(aligner.oov_added.items()))
    return out, report


def align_manifest(manifest, output, aligner, keep_failed: bool = True) -> dict:
    from spiritlm.manifest import read_manifest, write_manifest

    mdir = Path(manifest).resolve().parent
    utts, report = align_utterances(read_manifest(manifest), mdir, aligner, keep_failed)
    out = Path(output)
    if out.resolve().parent != mdir:
        for u in utts:
            u.audio_path = str(u.audio_file(mdir).resolve())
    write_manifest(out, utts)
    return report


def measure_aligner(utts: Iterable[Utterance], manifest_dir, aligner, limit: int | None = None) -> dict:
    """Boundary errors of ``aligner`` against the utterances' own (reference) word times."""
    errs, failed, n = [], {}, 0
    for u in utts:
        if limit is not None and n >= limit:
            break
        if not u.words:
            continue
        n += 1
        ref = Utterance(**{**u.__dict__, "words": []})
        try:
            got = aligner.align(ref, u.audio_file(manifest_dir))
            check_words(ref, got)
        except (AlignmentError, OSError, ValueError) as e:
            r = failure_reason(e)
            failed[r] = failed.get(r, 0) + 1
            continue
        for a, b in zip(got, u.words):
            errs += [abs(a.start - b.start), abs(a.end - b.end)]
    return _boundary_report(aligner.name, n, failed, errs)


def alignment_error(reference: list[Utterance], aligned: list[Utterance], aligner_name: str,
                    limit: int | None = None) -> dict:
    """:func:`measure_aligner`'s report for alignments already made (same order as
    ``reference``, whose word times are the truth); an aligned utterance without words counts
    as failed. Saves aligning the measured utterances a second time."""
    errs, failed, n = [], {}, 0
    for ref, got in zip(reference, aligned):
        if limit is not None and n >= limit:
            break
        if not ref.words:
            continue
        n += 1
        if not got.words:
            failed["alignment_failed"] = failed.get("alignment_failed", 0) + 1
            continue
        for a, b in zip(got.words, ref.words):
            errs += [abs(a.start - b.start), abs(a.end - b.end)]
    return _boundary_report(aligner_name, n, failed, errs)


def _boundary_report(name: str, n: int, failed: dict, errs: list[float]) -> dict:
    e = np.array(errs) * 1000.0
    return {"aligner": name, "utterances": n, "failed": failed, "boundaries": int(e.size),
            "mean_ms": round(float(e.mean()), 2) if e.size else None,
            "median_ms": round(float(np.median(e)), 2) if e.size else None,
            "p95_ms": round(float(np.percentile(e, 95)), 2) if e.size else None,
            "within_50ms": round(float((e <= 50).mean()), 4) if e.size else None}


def measure_manifest(manifest: str, limit: int = 200, out: str | None = None) -> dict:
    """pocketsphinx's word boundary errors on the first ``limit`` utterances of ``manifest`` that
    have reference word times (``spiritlm prepare measure-aligner MANIFEST [--limit N]``)."""
    from spiritlm.manifest import read_manifest

    rep = measure_aligner(read_manifest(manifest), Path(manifest).parent, PocketsphinxAligner(), limit)
    if rep["utterances"] == 0:
        raise ValueError(f"{manifest}: no utterance has reference word times, so there is nothing to "
                         "measure the aligner against; use a manifest with words (the demo corpus has "
                         "the synthesizer's exact times)")
    if out:
        Path(out).write_text(json.dumps(rep, indent=2) + "\n")
    return rep

