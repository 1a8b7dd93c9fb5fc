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
usual forced-alignment convention. Zero-length phones are dropped. Pauses are kept as phones, and
any stretch not covered by a phone (e.g. silence before the first word) becomes a ``_`` pause, so
the phones tile the whole utterance.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import os
import pickle
import re
import selectors
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import numpy.ctypeslib  # noqa: F401 - imported here, not lazily in every forked child

from spiritlm.corpus import espeak_zygote as zy

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
    audio_position: int = 0  # ms, as espeak reports it (rounded; ``sample`` is exact)


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


PRELOAD_VOICE = "en-us"
MAX_UNMERGE_ROUNDS = 4
_TOKEN_RE = re.compile(r"[A-Za-z]+")


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
        self._zygote = None  # espeak_zygote.Zygote, started when this process gets large
        # Load the English voice and dictionary once here (saves ~15 ms in every fork). This is
        # the only voice the parent ever selects, so every child starts from the same state.
        if lib.espeak_SetVoiceByName(PRELOAD_VOICE.encode()) != 0:
            raise RuntimeError(f"espeak voice {PRELOAD_VOICE!r} not found")

    def _callback(self, wav, n, events) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != EV_LIST_TERMINATED:
            e = events[i]
            name = e.id.string.decode("utf-8", "replace") if e.type == EV_PHONEME else ""
            self._events.append(RawEvent(e.type, e.text_position, e.length, e.sample, name,
                                        e.audio_position))
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
        was initialised but never synthesises itself, and the child's noise generators are
        reseeded with ``seed``. (POSIX only.)
        """
        return self.synthesize_many([SynthRequest(text, voice, rate, pitch, range_, seed)])[0]

    def synthesize_many(self, requests: Sequence["SynthRequest"], processes: int = 1,
                        post: Callable[["ESpeak", "SynthRequest", Synthesis], Any] | None = None
                        ) -> list[Any]:
        """Synthesise many requests, ``processes`` forks at a time, results in input order.

        ``post(es, request, synthesis)`` (optional) runs in the child right after synthesis and
        its (picklable) result is returned instead of the :class:`Synthesis` -- e.g. to resample
        and write the audio file without sending it back.

        Merged words: for some word pairs ("in the", "there are", ...) espeak's dictionary has
        multi-word entries and it reports a single WORD event for both. When a synthesis has fewer
        WORD events than the text has tokens, it is redone with a no-break space (U+00A0) at each
        merged boundary, which makes espeak read the words separately (same phones up to stress,
        no pause); repeated while new merges appear ("out of the" -> "out|of the" -> "out|of|the"),
        at most ``MAX_UNMERGE_ROUNDS`` times. The retries depend only on the text, so results stay
        deterministic.
        """
        reqs = list(requests)
        for voice in sorted({r.voice for r in reqs}):  # fail early, and cache the lookups
            if not voice_exists(voice):
                raise ValueError(f"espeak voice not found: {voice!r}")
        out: list[Any] = [None] * len(reqs)
        todo = [(i, None) for i in range(len(reqs))]  # (index, speak_text)
        for _round in range(MAX_UNMERGE_ROUNDS + 1):
            final = _round == MAX_UNMERGE_ROUNDS
            res = self.map_forked(_request_job, [(reqs[i], st, post, final) for i, st in todo],
                                  processes)
            retry = []
            for (i, _), (status, payload) in zip(todo, res):
                if status == "retry":
                    retry.append((i, payload))
                else:
                    out[i] = payload
            if not retry:
                break
            todo = retry
        return out

    def synthesize_here(self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50,
                        range_: int = 50, seed: int = 0, speak_text: str | None = None
                        ) -> Synthesis:
        """Synthesise in this process. Only deterministic in a pristine process, i.e. once per
        child of :meth:`map_forked`; everything else should call :meth:`synthesize`.
        ``speak_text`` (default ``text``) is what espeak reads; ``text`` labels the words."""
        if not text.isascii():
            raise ValueError("only ASCII text is supported")
        if not voice_exists(voice):
            raise ValueError(f"espeak voice not found: {voice!r}")
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak voice not found: {voice!r}")
        for param, value in ((espeakRATE, rate), (espeakPITCH, pitch), (espeakRANGE, range_),
                             (espeakVOLUME, 100), (espeakPUNCTUATION, 0), (espeakCAPITALS, 0),
                             (espeakWORDGAP, 0)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        self.lib.espeak_ng_SetRandSeed(seed)
        self._libc.srand(ctypes.c_uint(seed & 0xFFFFFFFF))
        self._chunks, self._events = [], []
        buf = (text if speak_text is None else speak_text).encode("utf-8") + b"\0"
        err = self.lib.espeak_Synth(buf, len(buf), 0, POS_CHARACTER, 0,
                                    espeakCHARS_UTF8 | espeakENDPAUSE, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with {err}")
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        audio = audio.astype(np.int16)
        events, self._chunks, self._events = self._events, [], []
        words, phones = align(text, events, audio)
        return Synthesis(audio, self.sample_rate, events, words, phones)

    def map_forked(self, fn: Callable[["ESpeak", Any], Any], items: Sequence[Any],
                   processes: int = 1, direct: bool | None = None) -> list[Any]:
        """``[fn(self, item) for item in items]``, each call in its own fork of this process
        (so each sees a pristine espeak), at most ``processes`` at a time; results (pickled back
        through a pipe) come in input order. The first failure is raised after all children
        have been reaped.

        ``direct=None``: a process larger than ``ZYGOTE_RSS_BYTES`` forks from a small helper
        process instead (same bytes, much cheaper forks; see :mod:`spiritlm.corpus.espeak_zygote`);
        then ``fn`` and the items must be picklable. ``True``/``False`` force either path."""
        if os.getpid() != self._pid:
            raise RuntimeError("ESpeak instance used after fork; use get_espeak() in each process")
        if direct is None:
            direct = zy.resident_bytes() <= zy.ZYGOTE_RSS_BYTES
        with self._lock:
            if not direct:
                if self._zygote is None:
                    self._zygote = zy.Zygote()
                return self._zygote.map(fn, list(items), max(1, int(processes)))
            return _map_forked(self, fn, list(items), max(1, int(processes)))


@dataclass(frozen=True)
class SynthRequest:
    text: str
    voice: str = "en-us"
    rate: int = 175
    pitch: int = 50
    range_: int = 50
    seed: int = 0
    tag: str = ""  # caller's label (e.g. an utterance id); not used for synthesis


def n_tokens(text: str) -> int:
    return len(_TOKEN_RE.findall(text))


def unmerge_text(text: str, events: Sequence[RawEvent]) -> str:
    """``text`` with U+00A0 instead of the space before every token that got no WORD event."""
    spans = [(m.start(), m.end()) for m in _TOKEN_RE.finditer(text)]
    starts = [a for a, _ in spans]
    hit = set()
    for ev in events:
        if ev.type == EV_WORD:
            j = bisect.bisect_right(starts, ev.text_position - 1) - 1
            hit.add(max(j, 0))
    out = list(text)
    for j in range(1, len(spans)):
        if j not in hit:
            gap = range(spans[j - 1][1], spans[j][0])
            for k in gap:
                if out[k] == " ":
                    out[k] = "\u00a0"
    return "".join(out)


def _request_job(es: "ESpeak", item) -> tuple[str, Any]:
    req, speak_text, post, final = item
    syn = es.synthesize_here(req.text, req.voice, req.rate, req.pitch, req.range_, req.seed,
                             speak_text=speak_text)
    if not final and len(syn.words) != n_tokens(req.text):
        current = req.text if speak_text is None else speak_text
        fixed = unmerge_text(current, syn.events)
        if fixed != current:
            return "retry", fixed
    return "ok", (post(es, req, syn) if post is not None else syn)


def _child_main(es, fn, item, w: int) -> None:
    code = 0
    try:
        try:
            payload = (True, fn(es, item))
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            payload = (False, f"{type(e).__name__}: {e}")
        view = memoryview(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
        while view:
            view = view[os.write(w, view):]
        os.close(w)
    except BaseException:  # noqa: BLE001
        code = 1
    finally:
        os._exit(code)  # never run the parent's cleanup (atexit, buffered files) in the child


def _map_forked(es, fn, items: list, processes: int) -> list:
    results: list[Any] = [None] * len(items)
    errors: list[str] = []
    pending: dict[int, tuple[int, int, list[bytes]]] = {}  # fd -> (pid, index, chunks)
    sel = selectors.DefaultSelector()
    nxt = 0
    try:
        while nxt < len(items) or pending:
            while nxt < len(items) and len(pending) < processes and not errors:
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(r)
                    _child_main(es, fn, items[nxt], w)
                os.close(w)
                pending[r] = (pid, nxt, [])
                sel.register(r, selectors.EVENT_READ)
                nxt += 1
            if not pending:
                break
            for key, _ in sel.select():
                fd = key.fd
                data = os.read(fd, 1 << 20)
                if data:
                    pending[fd][2].append(data)
                    continue
                sel.unregister(fd)
                os.close(fd)
                pid, idx, chunks = pending.pop(fd)
                _, status = os.waitpid(pid, 0)
                if status != 0 or not chunks:
                    errors.append(f"item {idx}: child process failed (wait status {status})")
                    continue
                ok, res = pickle.loads(b"".join(chunks))
                if ok:
                    results[idx] = res
                else:
                    errors.append(f"item {idx}: {res}")
            if errors and not pending:
                break
    finally:
        for fd, (pid, _, _) in pending.items():  # interrupted: stop and reap our children
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
            sel.unregister(fd)
            os.close(fd)
        sel.close()
    if errors:
        raise RuntimeError("espeak synthesis failed: " + "; ".join(errors[:3]))
    return results


@functools.lru_cache(maxsize=None)
def data_path() -> str:
    import espeakng_loader

    return espeakng_loader.get_data_path()


@functools.lru_cache(maxsize=None)
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
    words: list[list] = []  # [label, start, end or None, still waiting for a phone after a pause]
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
    # espeak's text_position is occasionally wrong (e.g. in "... song it was!" the last WORD event
    # points into "it"), while the events themselves are right: label by order when the counts
    # agree with the text's letter tokens.
    tokens = _TOKEN_RE.findall(text)
    if len(tokens) == len(words):
        for w, tok in zip(words, tokens):
            w[0] = tok
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
    # drop zero-length phones, then fill any gap (e.g. before the first word) with a pause
    phone_segs: list[Segment] = []
    t = 0
    for p in seg:
        if p[2] <= p[1]:
            continue
        if p[1] > t:
            phone_segs.append(Segment("_", t, p[1]))
        phone_segs.append(Segment(p[0], p[1], p[2]))
        t = p[2]
    if t < total:
        phone_segs.append(Segment("_", t, total))
    return word_segs, phone_segs
