"""The per-chunk work of ``prepare shards``: items, record building, local worker pool."""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from spiritlm.config import ConfigError
from spiritlm.data.encoders import AudioError, HashUnitEncoder
from spiritlm.data.interleave import Interleaver
from spiritlm.data.records import (AlignedRecord, RecordError, asr_ids, check_alignment,
                                   encode_words, speech_ids, text_ids, tts_ids, written_forms)
from spiritlm.unit_encoder import UnitEncoder
from spiritlm.vocab import UnitError

log = logging.getLogger(__name__)

_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def transcript_words(text: str) -> list[str]:
    """Words of a transcript for checking alignments: letters/digits with inner apostrophes."""
    return _WORD_RE.findall(text)


def load_text_tokenizer(path: str):
    from spiritlm.text_tokenizer import SpiritTokenizer

    if not path:
        raise ConfigError("text_tokenizer is not set: give the path of a SentencePiece "
                          "tokenizer.model, a tokenizer.json, or a directory holding one (an HF model "
                          "directory), e.g. --set text_tokenizer=runs/demo/text_tokenizer/tokenizer")
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"text_tokenizer {p} does not exist")
    try:
        if p.is_dir() or p.name == "tokenizer.json":
            return SpiritTokenizer.from_pretrained(p if p.is_dir() else p.parent)
        return SpiritTokenizer(p)
    except (FileNotFoundError, ValueError) as e:  # TokenizerError, HFTextError, LayoutMismatchError
        raise ConfigError(f"text_tokenizer={p}: {e}") from None


def make_encoder(spec: str, speech_cfg):
    if spec == "hash":
        return HashUnitEncoder(expressive=speech_cfg.expressive, sample_rate=speech_cfg.sample_rate)
    mod, sep, fn = spec.partition(":")
    if not sep:
        raise ConfigError(f"speech.encoder {spec!r}: use 'hash' or 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"speech.encoder {spec!r}: cannot import it ({e})") from None
    return checked_encoder(factory(speech_cfg), f"speech.encoder {spec!r}")


def checked_encoder(enc, where: str) -> UnitEncoder:
    """The data stage needs the whole protocol: a name for the shards' metadata and the frame
    rates to place frames in time, not guessed defaults."""
    if not isinstance(enc, UnitEncoder):
        missing = [m for m in ("name", "frame_rates", "encode", "encode_many") if not hasattr(enc, m)]
        raise ConfigError(f"{where} gave {type(enc).__name__}, which lacks {missing}: a speech encoder for the "
                          "data stage implements spiritlm.unit_encoder.UnitEncoder (see spiritlm/data/encoders.py)")
    return enc


class Context:
    """Everything a worker needs; picklable (the SentencePiece model travels as bytes)."""

    def __init__(self, cfg, encoder, tokenizer):
        self.cfg = cfg
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.layout = tokenizer.layout
        self.expressive = cfg.speech.expressive
        missing = [s for s in (("hubert", "pitch", "style") if self.expressive else ("hubert",))
                   if s not in encoder.frame_rates]
        if missing:
            raise ConfigError(f"speech encoder {encoder.name!r} has no {missing} stream(s); "
                              "set speech.expressive=false or use an Expressive encoder")
        self.interleaver = Interleaver(cfg.interleave, self.layout, encoder.frame_rates,
                                       self.expressive, self.expressive)

    encoder_spec: str | None = None  # set when the encoder was built from the config

    def __getstate__(self) -> dict:
        # the tokenizer pickles as its bytes (SpiritTokenizer.__reduce__); an encoder built from the
        # config is rebuilt in the worker (a model loads there, on its GPU when present).
        return {"cfg": self.cfg, "spec": self.encoder_spec,
                "encoder": None if self.encoder_spec else self.encoder, "tok": self.tokenizer}

    def __setstate__(self, state: dict) -> None:
        enc = state["encoder"] or make_encoder(state["spec"], state["cfg"].speech)
        self.__init__(state["cfg"], enc, state["tok"])
        self.encoder_spec = state["spec"]

    @classmethod
    def create(cls, cfg, encoder=None, tokenizer=None) -> "Context":
        tokenizer = tokenizer or load_text_tokenizer(cfg.text_tokenizer)
        spec = None if encoder is not None else cfg.speech.encoder
        encoder = (checked_encoder(encoder, "the encoder given to prepare_shards") if encoder is not None
                   else make_encoder(cfg.speech.encoder, cfg.speech))
        ctx = cls(cfg, encoder, tokenizer)
        ctx.encoder_spec = spec
        return ctx

    def items(self, cfg) -> tuple[list[dict], list[dict]]:
        """The job's items and the drops found reading them (``prepare.run_prepare`` asks any context)."""
        return collect_items(cfg)

    def process(self, items: list[dict]) -> tuple[list[dict], dict]:
        """One chunk's rows and counters (``write_chunk`` calls this on any context)."""
        return process_chunk(self, items)

    def tokenizer_sha256(self) -> str:
        return self.tokenizer.sha256

    def fingerprint(self) -> str:
        return self.tokenizer_sha256()[:16] + ":" + self.encoder.name

    def metadata(self, config: dict) -> dict:
        return {"tokenizer_sha256": self.tokenizer_sha256(),
                "base_vocab_size": self.layout.base_vocab_size,
                "vocab_size": self.layout.vocab_size,
                "frame_rates": {k: float(v) for k, v in self.encoder.frame_rates.items()},
                "vocab_layout": asdict(self.layout), "has_pitch": self.expressive,
                "has_style": self.expressive, "speech_encoder": self.encoder.name,
                "bos": False, "config": config,
                # a tokenizer.json's kind is recorded; SentencePiece shards keep their metadata as it was
                **({"text_tokenizer": self.tokenizer.text.kind} if self.tokenizer.sp is None else {})}


# ---- items ---------------------------------------------------------------------------------
def collect_items(cfg) -> tuple[list[dict], list[dict]]:
    from spiritlm.data.importers import iter_text_corpus
    from spiritlm.manifest import read_manifest

    items, seen, drops = [], set(), []

    def add(item: dict) -> None:
        if item["id"] in seen:
            msg = ("duplicate id (the first occurrence is kept); give every utterance/document a "
                   "unique id (JSONL 'id', or distinct text file names)")
            drops.append({"id": item["id"], "reason": "duplicate_id", "message": msg,
                          "action": "dropped"})
            log.warning("dropped %s: %s", item["id"], msg)
            return
        seen.add(item["id"])
        items.append(item)

    for paths, speech_only in ((cfg.inputs.manifests, False), (cfg.inputs.speech_only_manifests, True)):
        for m in paths:
            mdir = str(Path(m).resolve().parent)
            try:
                utts = read_manifest(m)
            except UnicodeDecodeError as e:
                raise ValueError(f"{m}: not UTF-8 (byte {e.start}); re-encode the manifest as "
                                 "UTF-8") from None
            for u in utts:
                if cfg.inputs.splits and u.split not in cfg.inputs.splits:
                    drops.append({"id": u.id, "reason": "split_excluded", "action": "dropped",
                                  "message": f"{u.id}: split {u.split!r} not in inputs.splits "
                                             f"{cfg.inputs.splits}"})
                    continue
                add({"type": "utt", "id": u.id, "dir": mdir, "utt": u.to_dict(),
                     "speech_only": speech_only})
    for path in cfg.inputs.text_corpora:
        for rid, text, reason in iter_text_corpus(path, cfg.inputs.text_field,
                                                  cfg.inputs.text_min_chars):
            if reason:
                drops.append({"id": rid, "reason": reason, "message": f"{rid}: {reason}",
                              "action": "dropped"})
                continue
            add({"type": "text", "id": rid, "text": text})
    return items, drops


# ---- one chunk -----------------------------------------------------------------------------
def empty_stats() -> dict:
    """One chunk's statistics, zeroed; ``prepare.merge_stats`` sums chunks into this shape."""
    return {"items": 0, "kept": {}, "dropped": {}, "fallback": {}, "tokens": {}, "word_form": {},
            "seconds_in": 0.0, "seconds_kept": 0.0, "frames_encoded": 0, "encode_seconds": 0.0,
            "drop_log": []}


class _Stats:
    def __init__(self):
        self.d = empty_stats()

    def inc(self, key: str, sub: str, n: int = 1) -> None:
        self.d[key][sub] = self.d[key].get(sub, 0) + n

    def drop(self, rid: str, reason: str, msg: str, fallback: bool = False) -> None:
        self.inc("fallback" if fallback else "dropped", reason)
        self.d["drop_log"].append({"id": rid, "reason": reason, "message": msg,
                                   "action": "speech_only" if fallback else "dropped"})
        log.warning("%s %s (%s): %s", "speech-only" if fallback else "dropped", rid, reason, msg)

    def tokens(self, ids: np.ndarray, layout) -> None:
        kinds = layout.stream_of_ids(ids)
        self.inc("tokens", "text", int((kinds == -1).sum()))
        self.inc("tokens", "marker", int((kinds == -2).sum()))
        self.inc("tokens", "speech", int((kinds >= 0).sum()))


# A manifest duration may be rounded and a unit stream ends up to a frame or two early (the
# model's receptive field); beyond this it is wrong (seen: 100 s declared for 6 s of audio, which
# made the shard row and the report's hours wrong).
DURATION_TOLERANCE_S = 0.25
DURATION_TOLERANCE_REL = 0.02


def _duration_off(declared: float, actual: float, slack_s: float = 0.0) -> bool:
    return abs(declared - actual) > DURATION_TOLERANCE_S + DURATION_TOLERANCE_REL * actual + slack_s


def audio_problem(u, path: Path) -> tuple[float, tuple[str, str] | None]:
    """(seconds of audio, problem): the duration from the file's header (the manifest's when the
    header is unreadable), and (drop reason, message) for an utterance whose audio must not
    become speech, else None: the file is missing or unreadable (bad header, implausible sample
    rate, truncated), its duration is not the manifest's, or it is digital silence. Reads the
    header, and samples only until the first one that is not silent."""
    from spiritlm.audio import is_silent, probe_audio

    if not path.is_file():
        return u.duration, ("audio_missing", f"audio file not found: {path}")
    try:
        info = probe_audio(path)
    except AudioError as e:
        return u.duration, ("audio_unreadable", str(e))
    if _duration_off(u.duration, info.duration):
        return info.duration, ("duration_mismatch", (
            f"{u.id}: the manifest says {u.duration:.3f} s but {path} holds {info.duration:.3f} s; "
            "fix its 'duration' (`spiritlm prepare manifest` reads it from the file)"))
    try:
        if is_silent(path):
            return info.duration, ("silent_audio", (
                f"{path}: digital silence (no sample above one 16-bit step); remove the utterance "
                "from the manifest or replace the file"))
    except AudioError as e:
        return info.duration, ("audio_unreadable", str(e))
    return info.duration, None


def _decoded_duration_mismatch(declared: float, units: dict, rates) -> str:
    """The header can lie about the length too: compare with the units actually decoded."""
    rate = float(rates["hubert"])
    decoded = len(units["hubert"]) / rate
    if _duration_off(declared, decoded, slack_s=2.0 / rate):
        return (f"the manifest says {declared:.3f} s but the decoded audio gave "
                f"{len(units['hubert'])} frames at {rate:g} Hz ({decoded:.3f} s); fix its 'duration'")
    return ""


def process_chunk(ctx: Context, items: list[dict]) -> tuple[list[dict], dict]:
    from spiritlm.data.shards import aligned_row, ids_row
    from spiritlm.manifest import Utterance

    cfg, lay, st = ctx.cfg, ctx.layout, _Stats()
    rows: list[dict] = []
    utts = [(it, Utterance.from_dict(it["utt"])) for it in items if it["type"] == "utt"]
    units: dict[str, dict] = {}
    durations = {u.id: u.duration for _, u in utts}
    bs = cfg.speech.batch_size
    todo = []
    for it, u in utts:
        path = u.audio_file(it["dir"])
        seconds, problem = audio_problem(u, path)
        st.d["seconds_in"] += seconds  # the file's, not a wrong manifest value
        if problem is not None:
            st.drop(u.id, *problem)
        else:
            todo.append((u.id, path))
    for i in range(0, len(todo), bs):
        batch = todo[i:i + bs]
        t0 = time.perf_counter()
        try:
            outs = list(zip(batch, ctx.encoder.encode_many([p for _, p in batch])))
        except Exception:  # find the culprit(s) one by one
            outs = []
            for rid, p in batch:
                try:
                    outs.append(((rid, p), ctx.encoder.encode_many([p])[0]))
                except (AudioError, RuntimeError, ValueError, OSError) as e:
                    st.drop(rid, "audio_unreadable", str(e))
        st.d["encode_seconds"] += time.perf_counter() - t0
        for (rid, _), un in outs:
            if isinstance(un, Exception):  # encoders may report a bad file in place
                st.drop(rid, "audio_unreadable", str(un))
                continue
            un = {k: np.asarray(v, dtype=np.int64) for k, v in un.items()}
            st.d["frames_encoded"] += sum(len(v) for v in un.values())
            mismatch = _decoded_duration_mismatch(durations[rid], un, ctx.encoder.frame_rates)
            if mismatch:
                st.drop(rid, "duration_mismatch", mismatch)
                continue
            units[rid] = un
    for it in items:
        st.d["items"] += 1
        if it["type"] == "text":
            ids = text_ids(ctx.tokenizer.span_ids(it["text"]), lay)
            rows.append(ids_row(it["id"], "text", ids))
            st.inc("kept", "text")
            st.tokens(ids, lay)
            continue
        u = Utterance.from_dict(it["utt"])
        un = units.get(u.id)
        if un is None:
            continue  # dropped above
        try:
            sp_ids = speech_ids(un, ctx.expressive, ctx.expressive, lay)
        except (UnitError, KeyError) as e:
            st.drop(u.id, "bad_units", str(e))
            continue
        rec = None
        if not it["speech_only"]:
            try:
                rec, form = _aligned_record(ctx, u, un)
                if form:
                    st.inc("word_form", form)
            except RecordError as e:
                if cfg.records.on_alignment_failure == "drop":
                    st.drop(u.id, e.reason, str(e))
                    continue
                st.drop(u.id, e.reason, str(e), fallback=True)
        st.d["seconds_kept"] += u.duration
        if rec is None:
            rows.append(ids_row(u.id, "speech", sp_ids, u.duration, u.speaker))
            st.inc("kept", "speech")
            st.tokens(sp_ids, lay)
            continue
        if cfg.records.mode == "materialised":
            ids = ctx.interleaver(rec, cfg.seed, cfg.records.materialise_epoch)
            rows.append(ids_row(u.id, "interleaved", ids, u.duration, u.speaker))
            st.inc("kept", "interleaved")
            st.tokens(ids, lay)
        else:
            rows.append(aligned_row(rec))
            st.inc("kept", "aligned")
            st.tokens(sp_ids, lay)
            st.inc("tokens", "text", len(rec.word_bpe))
        for kind in cfg.records.parallel:
            fn = asr_ids if kind == "asr" else tts_ids
            ids = fn(rec, ctx.expressive, ctx.expressive, lay)
            rows.append(ids_row(f"{u.id}#{kind}", kind, ids, u.duration, u.speaker))
            st.inc("kept", kind)
            st.tokens(ids, lay)
    return rows, st.d


def _aligned_record(ctx: Context, u, units: dict) -> tuple[AlignedRecord, str]:
    """-> (record, where its word forms came from: "transcript", "aligned", or "" when
    ``records.word_form`` is "aligned" and nothing was tried)."""
    cfg = ctx.cfg.records
    if not u.text.strip():
        raise RecordError("empty_transcript", f"{u.id}: empty transcript")
    want = transcript_words(u.text) if cfg.check_transcript else None
    rate = ctx.encoder.frame_rates["hubert"]
    audio_s = len(units["hubert"]) / rate  # the audio actually encoded (within one frame)
    check_alignment(u.id, u.words, want, min(u.duration, audio_s + 1.0 / rate),
                    cfg.alignment_tolerance_s)
    words, form = [w.word for w in u.words], ""
    if cfg.word_form == "transcript":
        written = written_forms(words, u.text)
        words, form = (written, "transcript") if written else (words, "aligned")
    bpe, lens = encode_words(ctx.tokenizer, words)
    return AlignedRecord(u.id, words, [w.start for w in u.words], [w.end for w in u.words],
                         bpe, lens, units, float(u.duration), u.speaker), form


def write_chunk(ctx: Context, index: int, items: list[dict], wdir: Path) -> dict:
    from spiritlm.data.shards import atomic_write_table, rows_to_table

    rows, stats = ctx.process(items)
    js = wdir / f"chunk-{index:06d}.json"
    tmp = wdir / f".{js.name}.tmp"
    tmp.write_text(json.dumps(stats, sort_keys=True))
    os.replace(tmp, js)
    atomic_write_table(rows_to_table(rows), wdir / f"chunk-{index:06d}.parquet")
    return stats


_CTX: Context | None = None  # the worker process's context


def _init_worker(ctx: Context) -> None:
    global _CTX
    _CTX = ctx


def _work(args):
    index, items, wdir = args
    write_chunk(_CTX, index, items, Path(wdir))
    return index


def start_method(cfg, ctx: Context) -> str:
    """``fork`` (cheap) unless the encoder is a model built from the config -- then ``spawn``,
    so that each worker loads its own copy (CUDA cannot be used in a forked child)."""
    if cfg.start_method != "auto":
        return cfg.start_method
    return "spawn" if ctx.encoder_spec not in (None, "hash") else "fork"


def run_chunks_local(cfg, ctx: Context, chunks: list, todo: list[int], wdir: Path) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(chunks), initial=len(chunks) - len(todo), unit="chunk",
               desc="prepare", disable=not cfg.progress)
    jobs = [(i, chunks[i], str(wdir)) for i in todo]
    if cfg.workers == 1 or len(jobs) <= 1:
        for j in jobs:
            write_chunk(ctx, j[0], j[1], wdir)
            bar.update()
    else:
        import multiprocessing as mp

        from spiritlm.data.shards import rows_to_table

        rows_to_table([{"id": "x", "kind": "text"}])  # pyarrow's lazy imports, once, pre-fork
        method = start_method(cfg, ctx)
        with mp.get_context(method).Pool(cfg.workers, initializer=_init_worker,
                                         initargs=(ctx,)) as pool:
            for _ in pool.imap_unordered(_work, jobs):
                bar.update()
    bar.close()
