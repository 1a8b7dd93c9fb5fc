"""The three record kinds the shards hold, and how they are built from utterances.

* ``text``    -- ``[Text]`` + BPE ids (stored pre-materialised in ``input_ids``)
* ``speech``  -- ``[Speech]`` + the speech string's ids (stored pre-materialised)
* ``aligned`` -- an :class:`AlignedRecord`: the words, their times, the frame-level unit streams
  and the BPE ids of every word, so that interleaving is resampled every epoch
  (:mod:`spiritlm.data.interleave`).

Word BPE ids: every word is encoded on its own in its mid-sentence form -- SentencePiece *with*
its dummy prefix (``"cat"`` -> ``▁cat``), byte-level BPE with its leading space (``Ġcat``) -- so
the text of any span of words is the concatenation of its words' ids and no merge crosses a
word or a marker. Ids never include BOS: the trainer adds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from spiritlm.vocab import SPIRITLM, VocabLayout, units_to_ids


class RecordError(ValueError):
    """A record that cannot be built; ``reason`` is the short drop reason for reports."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


@dataclass
class AlignedRecord:
    id: str
    words: list[str]
    word_start: np.ndarray  # float64 seconds, one per word
    word_end: np.ndarray  # float64 seconds
    word_bpe: np.ndarray  # int32, all words' BPE ids concatenated
    word_bpe_len: np.ndarray  # int32, ids per word
    units: dict[str, np.ndarray] = field(default_factory=dict)  # frame-level streams
    duration: float = 0.0
    speaker: str | None = None

    def __post_init__(self) -> None:
        self.word_start = np.asarray(self.word_start, dtype=np.float64)
        self.word_end = np.asarray(self.word_end, dtype=np.float64)
        self.word_bpe = np.asarray(self.word_bpe, dtype=np.int32)
        self.word_bpe_len = np.asarray(self.word_bpe_len, dtype=np.int32)
        self.units = {k: np.asarray(v, dtype=np.int64) for k, v in self.units.items()}
        n = len(self.words)
        if n == 0:
            raise RecordError("alignment_empty", f"{self.id}: an aligned record needs at least one word")
        if not (len(self.word_start) == len(self.word_end) == len(self.word_bpe_len) == n):
            raise RecordError("bad_record", f"{self.id}: words, times and BPE lengths differ in length")
        if int(self.word_bpe_len.sum()) != len(self.word_bpe):
            raise RecordError("bad_record", f"{self.id}: word_bpe_len does not sum to len(word_bpe)")
        if n and (self.word_bpe_len < 1).any():
            raise RecordError("bad_record", f"{self.id}: every word needs at least one BPE id")
        # Monotone word times (absorbs sub-millisecond overlaps that manifests tolerate), so the
        # word boundaries used for interleaving never go back in time.
        e = np.maximum.accumulate(np.maximum(self.word_end, self.word_start))
        s = np.maximum(self.word_start, np.concatenate(([-np.inf], e[:-1])))
        self.word_start, self.word_end = s, np.maximum(e, s)
        if "hubert" not in self.units:
            raise RecordError("bad_record", f"{self.id}: an aligned record needs a 'hubert' stream")

    @classmethod
    def trusted(cls, id, words, word_start, word_end, word_bpe, word_bpe_len, units,
                duration=0.0, speaker=None) -> "AlignedRecord":
        """Build without checks or copies, for rows read back from shards (checked when written)."""
        self = object.__new__(cls)
        self.id, self.words, self.duration, self.speaker = id, words, duration, speaker
        self.word_start, self.word_end = word_start, word_end
        self.word_bpe, self.word_bpe_len, self.units = word_bpe, word_bpe_len, units
        return self

    def word_offsets(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.word_bpe_len, dtype=np.int64)))


def encode_words(tokenizer, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-word ids, each word in its mid-sentence form (``▁cat``, ``Ġcat``: a
    :class:`~spiritlm.text_tokenizer.SpiritTokenizer`'s ``word_ids``) -> (flat ids, lengths)."""
    pieces = tokenizer.word_ids(list(words)) if words else []
    lens = np.array([len(p) for p in pieces], dtype=np.int32)
    flat = np.fromiter((i for p in pieces for i in p), dtype=np.int32, count=int(lens.sum()))
    return flat, lens


def text_ids(bpe: Sequence[int] | np.ndarray, layout: VocabLayout = SPIRITLM) -> np.ndarray:
    """A text-only row: ``[Text]`` + BPE ids."""
    return np.concatenate(([layout.text_id], np.asarray(bpe, dtype=np.int64))).astype(np.int32)


def speech_ids(units: Mapping[str, np.ndarray], has_pitch: bool, has_style: bool,
               layout: VocabLayout = SPIRITLM) -> np.ndarray:
    """A speech-only row: ``[Speech]`` + merged unit ids (the release's string)."""
    ids = units_to_ids(units, has_pitch, has_style, layout)
    return np.concatenate(([layout.speech_id], ids)).astype(np.int32)


def asr_ids(rec: AlignedRecord, has_pitch: bool, has_style: bool,
            layout: VocabLayout = SPIRITLM) -> np.ndarray:
    """Parallel ASR-style row: ``[Speech] units [Text] transcript``."""
    return np.concatenate((speech_ids(rec.units, has_pitch, has_style, layout),
                           text_ids(rec.word_bpe, layout))).astype(np.int32)


def tts_ids(rec: AlignedRecord, has_pitch: bool, has_style: bool,
            layout: VocabLayout = SPIRITLM) -> np.ndarray:
    """Parallel TTS-style row: ``[Text] transcript [Speech] units``."""
    return np.concatenate((text_ids(rec.word_bpe, layout),
                           speech_ids(rec.units, has_pitch, has_style, layout))).astype(np.int32)


def _chars(words: Sequence[str]) -> str:
    return "".join(ch for w in words for ch in w if ch.isalnum())


def written_tokens(text: str) -> list[str]:
    """A text's words as written: its whitespace tokens, where a token without letters or digits
    (a dash, a quote) joins the token before it, or the first word. Also the words of a text
    document that ``prepare synth-interleave`` cuts into spans."""
    tokens: list[str] = []
    lead = ""  # punctuation before the first word ('" Hello', '- Hello') joins that word
    for t in text.split():
        if not _chars([t]):
            if tokens:
                tokens[-1] += " " + t
            else:
                lead += t + " "
        else:
            tokens.append(lead + t)
            lead = ""
    return tokens


def written_forms(words: Sequence[str], text: str) -> list[str] | None:
    """Each aligned word as the transcript writes it -- ``garden`` -> ``garden.``, ``her`` ->
    ``Her`` -- so interleaved text spans read like the text-only data and the benchmarks'
    text (aligners emit bare, often lower-cased words). The transcript's words
    (:func:`written_tokens`) must match the aligned words one to one on their letters and
    digits, case-insensitively; else ``None``."""
    tokens = written_tokens(text)
    if len(tokens) != len(words):
        return None
    for w, t in zip(words, tokens):
        if _chars([w]).lower() != _chars([t]).lower():  # every token holds a letter or digit
            return None
    return tokens


def check_alignment(uid: str, words: Sequence, text_words: Sequence[str] | None,
                    duration: float, tolerance: float = 0.05) -> None:
    """Raise :class:`RecordError` when an alignment is unusable for interleaving.

    Reasons: ``alignment_empty``, ``alignment_overruns_audio`` (a word ends after the audio,
    beyond ``tolerance`` s), ``alignment_not_monotonic``, ``alignment_incomplete`` (the aligned
    words are not the transcript's words, compared case-insensitively, when ``text_words``
    is given; compared on their letters and digits, case-insensitively).
    """
    if not words:
        raise RecordError("alignment_empty", f"{uid}: no word alignment")
    prev = -np.inf
    for i, w in enumerate(words):
        if w.end > duration + tolerance:
            raise RecordError("alignment_overruns_audio",
                              f"{uid}: word {i} {w.word!r} ends at {w.end:.3f}s, audio is {duration:.3f}s")
        if w.start < prev - 1e-6 or w.end < w.start:
            raise RecordError("alignment_not_monotonic", f"{uid}: word {i} {w.word!r} goes back in time")
        prev = w.end
    if text_words is not None:
        # Same letters/digits in the same order, case-insensitive: tolerant of tokenisation
        # differences ("there's" vs "there" + "s"), strict about missing or extra words.
        got = [w.word.lower() for w in words]
        want = [t.lower() for t in text_words]
        if _chars(got) != _chars(want):
            raise RecordError("alignment_incomplete",
                              f"{uid}: alignment covers {len(got)} words {got[:5]}..., transcript "
                              f"has {len(want)} {want[:5]}...")
