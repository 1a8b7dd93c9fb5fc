"""A minimal ctypes binding of libespeak-ng (shipped by the ``espeakng-loader`` wheel) that returns
audio together with word and phoneme alignments.

One :class:`ESpeak` per process (the C library keeps global state and is not thread-safe; use
processes, not threads). Synthesis runs in ``AUDIO_OUTPUT_SYNCHRONOUS`` mode with phoneme events
enabled; the callback collects the int16 samples and the events. Every event carries ``sample``,
the exact offset (at the native 22050 Hz) in the output stream where the event's command was
reached -- exact to the sample, unlike ``audio_position`` which is rounded to milliseconds.

How espeak orders things (verified on this build, see tests/test_corpus.py):

* per word the engine emits: WORD event -> the word's first phoneme's pre-pause (the closure
  silence of a stop) -> PHONEME event -> its audio -> next PHONEME event -> ...  So a WORD event
  is the true start of a word (closure included) and a stop's PHONEME event marks its release.
* pauses are phonemes whose mnemonic starts with ``_`` (``_``, ``_:``, ``_!``, ``_;``, ...); their
  audio is digital silence, starting exactly where the previous phoneme's sound stops.

Word END rule (empirical; the WORD event only gives the start): a word ends at whichever comes
first of (a) the next WORD event, (b) the first pause phoneme after the word's start, (c) the end
of the audio. Word START: the WORD event, except after a pause or at the very start of the
utterance, where the word starts at its first phoneme event (the pre-pause closure cannot be told
apart from the pause there, so it is counted as pause).

Phone rule: a phone starts at its PHONEME event and ends where the next phone starts; phones are
cut at word boundaries (the first phone of a word starts at the word's start, so zero-length
markers such as ``;`` emitted just before a WORD event disappear). Within a word, a stop's closure
(the run of digital silence at the end of the previous phone) is moved to the stop, following the
usual forced-alignment convention. Zero-length phones are dropped. Pauses are kept as phones.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# --- constants of speak_lib.h (API revision 12, espeak-ng 1.52) --------------------------------
AUDIO_OUTPUT_SYNCHRONOUS = 2
espeakINITIALIZE_PHONEME_EVENTS = 0x0001
espeakCHARS_UTF8 = 1
espeakENDPAUSE = 0x1000
POS_CHARACTER = 1
EV_LIST_TERMINATED, EV_WORD, EV_SENTENCE, EV_MARK, EV_PLAY = 0, 1, 2, 3, 4
EV_END, EV_MSG_TERMINATED, EV_PHONEME, EV_SAMPLERATE = 5, 6, 7, 8
espeakRATE, espeakVOLUME, espeakPITCH, espeakRANGE = 1, 2, 3, 4
espeakPUNCTUATION, espeakCAPITALS, espeakWORDGAP = 5, 6, 7

# Phonemes whose audio starts with a closure (the pre-pause emitted before their event).
STOP_PHONES = frozenset({"p", "t", "k", "b", "d", "g", "tS", "dZ", "t2", "d2", "t#", "?", "k-"})


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class EspeakEvent(ctypes.Structure):
    """``espeak_EVENT``. On LP64: 6 x int (24 bytes), ``void*`` at 24, the 8-byte union at 32,
    40 bytes in all -- checked by :func:`_check_layout` at load time."""

    _fields_ = [
        ("type", ctypes.c_int),  # espeak_EVENT_TYPE (an enum: int-sized)
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position in the text
        ("length", ctypes.c_int),  # word length in characters (WORD events)
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),  # sample offset at the native rate
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


def _check_layout() -> None:
    if ctypes.sizeof(ctypes.c_void_p) == 8:
        got = (EspeakEvent.sample.offset, EspeakEvent.user_data.offset, EspeakEvent.id.offset)
        if got != (20, 24, 32) or ctypes.sizeof(EspeakEvent) != 40:
            raise RuntimeError(f"unexpected espeak_EVENT layout {got}, size {ctypes.sizeof(EspeakEvent)}")


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(EspeakEvent))


@dataclass(frozen=True)
class RawEvent:
    type: int
    text_position: int  # 1-based, as espeak reports it
    length: int
    sample: int  # at the native rate
    name: str  # phoneme mnemonic for PHONEME events, "" otherwise


@dataclass(frozen=True)
class Segment:
    label: str
    start: int  # samples at the native rate
    end: int


@dataclass
class Synthesis:
    audio: np.ndarray  # int16, native rate
    sample_rate: int
    events: list[RawEvent]
    words: list[Segment]  # label = the word's text span
    phones: list[Segment]  # label = espeak phoneme mnemonic (pauses start with "_")


def is_pause(phone: str) -> bool:
    return phone.startswith("_")


class ESpeak:
    """Process-wide espeak-ng instance. Use :func:`get_espeak` rather than constructing twice."""

    def __init__(self) -> None:
        import espeakng_loader

        _check_layout()
        self._pid = os.getpid()
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path()
        lib = self.lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = ctypes.c_int
        self.sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(),
                                                 espeakINITIALIZE_PHONEME_EVENTS)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate}) with data at {data}")
        self.version = lib.espeak_Info(None).decode()
        self._libc = ctypes.CDLL(None)
        self._chunks: list[np.ndarray] = []
        self._events: list[RawEvent] = []
        self._cb = _CALLBACK(self._callback)  # keep a reference: ctypes does not
        lib.espeak_SetSynthCallback(self._cb)
        self._lock = threading.Lock()

    def _callback(self, wav, n, events) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != EV_LIST_TERMINATED:
            e = events[i]
            name = e.id.string.decode("utf-8", "replace") if e.type == EV_PHONEME else ""
            self._events.append(RawEvent(e.type, e.text_position, e.length, e.sample, name))
            i += 1
        return 0

    def has_voice(self, voice: str) -> bool:
        """True when the language voice and the ``+variant`` (if any) exist in the shipped data.
        (espeak_SetVoiceByName silently ignores unknown variants, hence the file check.)"""
        return voice_exists(voice)

    def synthesize(self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50,
                   range_: int = 50, seed: int = 0) -> Synthesis:
        """Speak ``text`` (ASCII, words separated by spaces) and align it.

        Deterministic: a pure function of the arguments. espeak keeps synthesis state across calls
        that no API resets (e.g. the pitch-flutter index, a function-level ``static`` in
        wavegen.c, and the waveform phase), so two calls in one process give slightly different
        audio and event times. Each call therefore runs in a ``fork()`` of this process, which
        was initialised but has never synthesised, and the child's noise generators are
        reseeded with ``seed``. (POSIX only.)
        """
        if os.getpid() != self._pid:
            raise RuntimeError("ESpeak instance used after fork; create one per process")
        if not text.isascii():
            raise ValueError("only ASCII text is supported (event positions are bytes)")
        with self._lock:
            audio, events = self._in_child(text, voice, rate, pitch, range_, seed)
        words, phones = align(text, events, audio)
        return Synthesis(audio, self.sample_rate, events, words, phones)

    def _in_child(self, *args) -> tuple[np.ndarray, list[RawEvent]]:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: synthesise, send, exit without running any Python cleanup
            code = 0
            try:
                os.close(r)
                try:
                    payload = (True, self._synthesize_inplace(*args))
                except BaseException as e:  # noqa: BLE001 - reported to the parent
                    payload = (False, f"{type(e).__name__}: {e}")
                data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
                view = memoryview(data)
                while view:
                    n = os.write(w, view)
                    view = view[n:]
                os.close(w)
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        chunks = []
        with os.fdopen(r, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                chunks.append(b)
        _, status = os.waitpid(pid, 0)
        if status != 0 or not chunks:
            raise RuntimeError(f"espeak child process failed (status {status})")
        ok, result = pickle.loads(b"".join(chunks))
        if not ok:
            raise RuntimeError(f"espeak synthesis failed: {result}")
        audio_bytes, ev = result
        return np.frombuffer(audio_bytes, dtype=np.int16).copy(), [RawEvent(*e) for e in ev]

    def _synthesize_inplace(self, text, voice, rate, pitch, range_, seed):
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak voice not found: {voice!r}")
        for param, value in ((espeakRATE, rate), (espeakPITCH, pitch), (espeakRANGE, range_),
                             (espeakVOLUME, 100), (espeakPUNCTUATION, 0), (espeakCAPITALS, 0),
                             (espeakWORDGAP, 0)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        self.lib.espeak_ng_SetRandSeed(seed)
        self._libc.srand(ctypes.c_uint(seed & 0xFFFFFFFF))
        self._chunks, self._events = [], []
        buf = text.encode("utf-8") + b"\0"
        err = self.lib.espeak_Synth(buf, len(buf), 0, POS_CHARACTER, 0,
                                    espeakCHARS_UTF8 | espeakENDPAUSE, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with {err}")
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        events = [(e.type, e.text_position, e.length, e.sample, e.name) for e in self._events]
        self._chunks, self._events = [], []
        return audio.astype(np.int16).tobytes(), events


def data_path() -> str:
    import espeakng_loader

    return espeakng_loader.get_data_path()


def voice_exists(voice: str) -> bool:
    base, _, variant = voice.partition("+")
    root = os.path.join(data_path(), "voices")
    if variant and not os.path.isfile(os.path.join(root, "!v", variant)):
        return False
    lang_root = os.path.join(data_path(), "lang")
    for _dirpath, _dirs, files in os.walk(lang_root):
        if any(f.lower() == base.lower() for f in files):
            return True
    return False


_INSTANCE: ESpeak | None = None


def get_espeak() -> ESpeak:
    global _INSTANCE
    if _INSTANCE is None or _INSTANCE._pid != os.getpid():
        _INSTANCE = ESpeak()
    return _INSTANCE


def _trailing_silence(audio: np.ndarray, start: int, end: int, thresh: int = 1) -> int:
    """Start of the run of |x| <= thresh that ends at ``end`` (``end`` if there is none)."""
    seg = np.abs(audio[start:end].astype(np.int32)) > thresh
    loud = np.flatnonzero(seg)
    return start + int(loud[-1]) + 1 if len(loud) else start


def align(text: str, events: Sequence[RawEvent], audio: np.ndarray,
          min_closure: int = 44) -> tuple[list[Segment], list[Segment]]:
    """Word and phone segments (native-rate samples) from the event stream; see module doc."""
    total = len(audio)
    raw_b = text.encode("utf-8")
    words: list[list] = []  # [label, start, end, first_phone_index]
    phones: list[list] = []  # [label, start, word_index or -1]
    open_word = -1
    after_pause = True  # utterance start behaves like a pause
    for ev in events:
        s = min(max(ev.sample, 0), total)
        if ev.type == EV_WORD:
            if open_word >= 0 and words[open_word][2] is None:
                words[open_word][2] = s
            label = raw_b[ev.text_position - 1: ev.text_position - 1 + ev.length].decode()
            words.append([label, s, None, after_pause])
            open_word = len(words) - 1
        elif ev.type == EV_PHONEME:
            if is_pause(ev.name):
                if open_word >= 0 and words[open_word][2] is None:
                    words[open_word][2] = s
                open_word = -1
                after_pause = True
                phones.append([ev.name, s, -1])
            else:
                if open_word >= 0 and words[open_word][3] is True:
                    # first phone after a pause / utterance start: the word starts here
                    words[open_word][1] = max(words[open_word][1], s)
                if open_word >= 0:
                    words[open_word][3] = False
                after_pause = False
                phones.append([ev.name, s, open_word])
    for w in words:
        if w[2] is None:
            w[2] = total
    word_segs = [Segment(w[0], w[1], max(w[1], w[2])) for w in words]

    # phones: cut at word starts, first phone of each word starts at the word start
    starts = [p[1] for p in phones]
    seen_words: set[int] = set()
    for i, p in enumerate(phones):
        wi = p[2]
        if wi >= 0 and wi not in seen_words:
            seen_words.add(wi)
            starts[i] = word_segs[wi].start
    for i in range(1, len(phones)):
        starts[i] = max(starts[i], starts[i - 1])
    ends = starts[1:] + [total]
    # a word boundary inside a phone's span cuts it (e.g. ';' markers before a WORD event)
    word_starts = sorted(w.start for w in word_segs)
    seg: list[list] = []
    import bisect

    for i, p in enumerate(phones):
        st, en = starts[i], ends[i]
        j = bisect.bisect_right(word_starts, st)
        if j < len(word_starts) and word_starts[j] < en:
            en = word_starts[j]
        seg.append([p[0], st, en, p[2]])
    # within-word stops take their closure from the previous phone
    for i in range(1, len(seg)):
        cur, prev = seg[i], seg[i - 1]
        if cur[0].lstrip("',") in STOP_PHONES and cur[3] >= 0 and prev[3] == cur[3] \
                and prev[2] == cur[1] and cur[1] > word_segs[cur[3]].start:
            cut = _trailing_silence(audio, prev[1], prev[2])
            if prev[2] - cut >= min_closure and cut > prev[1]:
                prev[2] = cut
                cur[1] = cut
    # the trailing silence of a word-initial phone after a pause belongs to the pause already
    phone_segs = [Segment(p[0], p[1], p[2]) for p in seg if p[2] > p[1]]
    return word_segs, phone_segs
