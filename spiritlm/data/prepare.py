"""``spiritlm prepare shards``: manifests + text corpora -> Parquet shards, restartable and parallel.

Pipeline (deterministic at every step):

1. **Items.** Every input (speech manifests, then text corpora, in config order) is read into an
   ordered list of items; duplicate ids across inputs are dropped (reason ``duplicate_id``).
2. **Chunks** of ``chunk_size`` items are processed independently (encode audio in batches,
   check alignments, build rows) by N local worker processes or by Ray Data tasks. A chunk's
   rows go to ``<out>/_work/chunk-NNNNNN.parquet`` and its counters to ``chunk-NNNNNN.json``,
   both written atomically (json first); a chunk is done when its Parquet file exists. A
   restarted job skips done chunks.
3. **Shards.** The chunk files are streamed in order into ``<kind>/shard-NNNNN.parquet`` (one
   directory per record kind -- ``text``, ``speech``, ``aligned``, ``interleaved``, ``asr``,
   ``tts`` -- so that each is one trainer source; ``shards.split_by_kind=false`` puts all in
   ``<out>``); atomic writes; boundaries depend on the rows only. Then ``config.yaml``,
   ``drops.jsonl``, ``report.json`` and -- last -- ``index.json`` are written and the work
   directory is removed.

``index.json`` is removed when a run starts and written last, so a folder without one is
unfinished: the trainer and the reader refuse it (``reader.verified_shard_files``, which also
checks every shard's size and SHA-256 against it), saying to rerun this command. Killed at any
point (``kill -9``) and restarted with the same config, the job ends with the same bytes as an
uninterrupted run (tested, tests/test_faults.py). A work directory made under another config or
other inputs is wiped (its ``config.sha256`` differs). A rerun of a finished run whose
fingerprint (config, tokenizer, encoder, input contents) is in ``index.json`` is "up to date".
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from spiritlm.config import ConfigError, dump_config, save_config, to_dict
from spiritlm.data.interleave import InterleaveConfig

log = logging.getLogger(__name__)


@dataclass
class InputsConfig:
    manifests: list[str] = field(default_factory=list)  # speech manifests (aligned or not)
    speech_only_manifests: list[str] = field(default_factory=list)  # transcripts ignored
    text_corpora: list[str] = field(default_factory=list)  # .txt (one doc per line) or .jsonl
    text_field: str = "text"  # JSONL field holding the text
    text_min_chars: int = 1
    # Manifest utterances whose `split` is not listed are left out (counted in the report as
    # "split_excluded"): held-out material such as the demo's mini-benchmark sentences.
    splits: list[str] = field(default_factory=lambda: ["train"])


@dataclass
class SpeechConfig:
    encoder: str = "hash"  # "hash" (deterministic fake) or "package.module:factory"
    tokenizer_dir: str = ""  # for encoder = "spiritlm.data.encoders:speech_tokenizer"
    device: str = ""  # "" = the tokenizer's default (GPU when present)
    expressive: bool = False  # add pitch + style streams (Spirit LM Expressive)
    batch_size: int = 16  # audio files per encoder call
    sample_rate: int = 16000


@dataclass
class RecordsConfig:
    mode: Literal["aligned", "materialised"] = "aligned"  # interleave at read time or now
    on_alignment_failure: Literal["speech_only", "drop"] = "speech_only"
    check_transcript: bool = True  # aligned words must be the transcript's words
    # Text of interleaved spans: "aligned" = the aligner's words as they are (bare, no
    # punctuation); "transcript" = each word as the transcript writes it (case, punctuation),
    # where the transcript matches the alignment word for word, else the aligned words.
    word_form: Literal["aligned", "transcript"] = "aligned"
    alignment_tolerance_s: float = 0.05  # slack for word ends past the audio
    parallel: list[str] = field(default_factory=list)  # add "asr" and/or "tts" rows
    materialise_epoch: int = 0


@dataclass
class ShardsConfig:
    target_mb: float = 256.0
    row_group_mb: float = 8.0
    compression: str = "zstd"
    split_by_kind: bool = True  # <out>/<kind>/shard-*.parquet: one trainer source per kind

    def __post_init__(self) -> None:  # found at start, not after the work
        for k in ("target_mb", "row_group_mb"):
            v = getattr(self, k)
            if not v > 0:
                raise ValueError(f"shards.{k}={v}: must be > 0 (MiB of rows per "
                                 f"{'shard' if k == 'target_mb' else 'row group'}, default "
                                 f"{ShardsConfig.__dataclass_fields__[k].default})")


@dataclass
class PrepareConfig:
    output_dir: str = "shards"
    text_tokenizer: str = ""  # tokenizer.model or a directory holding one
    seed: int = 0
    workers: int = 1
    backend: Literal["local", "ray"] = "local"
    ray_gpus_per_worker: float = 0.0
    start_method: Literal["auto", "fork", "spawn"] = "auto"  # local worker processes
    chunk_size: int = 64
    progress: bool = True
    keep_work: bool = False
    inputs: InputsConfig = field(default_factory=InputsConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    interleave: InterleaveConfig = field(default_factory=InterleaveConfig)
    records: RecordsConfig = field(default_factory=RecordsConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.chunk_size < 1:
            raise ValueError("workers and chunk_size must be >= 1")
        bad = [p for p in self.records.parallel if p not in ("asr", "tts")]
        if bad:
            raise ValueError(f"records.parallel takes 'asr' and/or 'tts', got {bad}")
        if self.speech.encoder == "hash" and self.speech.tokenizer_dir:
            raise ValueError(f"speech.tokenizer_dir={self.speech.tokenizer_dir} is set, but speech.encoder='hash' "
                             "writes stand-in units and ignores it; set "
                             "speech.encoder=spiritlm.data.encoders:speech_tokenizer (or tokenizer_dir='')")


_RUNTIME_KEYS = ("output_dir", "workers", "backend", "ray_gpus_per_worker", "start_method",
                 "progress", "keep_work")


def config_fingerprint(cfg: PrepareConfig) -> str:
    d = to_dict(cfg)
    for k in _RUNTIME_KEYS:  # do not change the output
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def inputs_fingerprint(cfg: PrepareConfig) -> str:
    """SHA-256 over the contents of every input file (manifests, text corpora), so that an
    edited input is never answered "up to date" and never resumes chunks made from the old
    one. The audio files a manifest names are not read here (see data_prep/README.md)."""
    from spiritlm.data.shards import sha256_file

    h = hashlib.sha256()
    for group in (cfg.inputs.manifests, cfg.inputs.speech_only_manifests, cfg.inputs.text_corpora):
        for f in group:
            p = Path(f)
            if not p.is_file():
                raise ValueError(f"input {p} does not exist (inputs.manifests / "
                                 "inputs.speech_only_manifests / inputs.text_corpora)")
            h.update(f"{f}\0{sha256_file(p)}\0".encode())
    return h.hexdigest()


def _check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir={out} is a file, not a folder: point output_dir at a "
                         "(new or earlier) shard folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"output_dir={out} cannot be created ({e.strerror}): point it at a "
                         "writable folder") from None


def _up_to_date(out: Path, fp: str) -> dict | None:
    """The earlier report when ``out`` holds a finished run of this very config and inputs,
    with every shard intact (checked against index.json); else None."""
    from spiritlm.data.reader import verified_shard_files
    from spiritlm.data.shards import ShardError

    idx, rep = out / "index.json", out / "report.json"
    if not (idx.is_file() and rep.is_file()) or (out / "_work").exists():
        return None
    try:
        if json.loads(idx.read_text()).get("fingerprint") != fp:
            return None
        verified_shard_files(out, pattern="shard-*.parquet")
        return json.loads(rep.read_text())
    except ShardError as e:
        log.warning("%s; rebuilding the shards", e)
    except (OSError, ValueError):
        pass
    return None


def _out_config(cfg: PrepareConfig) -> dict:
    d = to_dict(cfg)
    for k in _RUNTIME_KEYS:
        d.pop(k, None)
    return d


def prepare_shards(cfg: PrepareConfig, encoder=None, text_tokenizer=None) -> dict:
    """Run the pipeline; returns the report (also written to ``report.json``).

    ``encoder`` (a :class:`~spiritlm.unit_encoder.UnitEncoder`) and ``text_tokenizer`` (a
    ``SpiritTokenizer``) override ``cfg.speech.encoder`` / ``cfg.text_tokenizer`` when given.
    """
    from spiritlm.data import work

    t_start = time.perf_counter()
    _check_output_dir(Path(cfg.output_dir))
    return run_prepare(cfg, work.Context.create(cfg, encoder, text_tokenizer), t_start)


def run_prepare(cfg, ctx, t_start: float | None = None) -> dict:
    """The restartable pipeline (items -> chunks -> shards -> index.json last) for any context
    that lists the job's items (``ctx.items(cfg)``) and turns a chunk of them into rows
    (``ctx.process``): the speech/text one of ``prepare shards`` (:class:`spiritlm.data.work.Context`),
    or another, e.g. the synthetic interleaving of ``prepare synth-interleave``
    (``spiritlm.models.t2u.synth``). ``cfg`` needs the fields of :class:`PrepareConfig` this
    function reads."""
    from spiritlm.data import work

    t_start = time.perf_counter() if t_start is None else t_start
    out = Path(cfg.output_dir)
    _check_output_dir(out)
    fp = config_fingerprint(cfg) + ":" + ctx.fingerprint() + ":" + inputs_fingerprint(cfg)
    done = _up_to_date(out, fp)
    if done is not None:
        log.info("%s is up to date (same config, inputs, tokenizer and encoder): nothing to do", out)
        _fail_if_all_speech_dropped(done, out)  # as the first run did
        return {**done, "up_to_date": True}
    # From here on the folder is in progress: no index.json, so no reader takes it as complete
    # (the trainer refuses it, saying to rerun this command) until the new one is written.
    (out / "index.json").unlink(missing_ok=True)
    items, pre_drops = ctx.items(cfg)
    chunks = [items[i:i + cfg.chunk_size] for i in range(0, len(items), cfg.chunk_size)]
    wdir = out / "_work"
    if wdir.exists() and (wdir / "config.sha256").is_file() \
            and (wdir / "config.sha256").read_text() != fp:
        log.warning("work directory %s was made under another config: starting over", wdir)
        shutil.rmtree(wdir)
    wdir.mkdir(exist_ok=True)
    (wdir / "config.sha256").write_text(fp)
    for stale in out.rglob(".*.tmp"):
        stale.unlink()
    todo = [i for i in range(len(chunks)) if not (wdir / f"chunk-{i:06d}.parquet").is_file()]
    log.info("%d items in %d chunks (%d to do), %d worker(s), backend %s", len(items),
             len(chunks), len(todo), cfg.workers, cfg.backend)
    try:
        if cfg.backend == "ray":
            from spiritlm.data.ray_backend import run_chunks_ray

            run_chunks_ray(cfg, ctx, chunks, todo, wdir)
        else:
            work.run_chunks_local(cfg, ctx, chunks, todo, wdir)
        report = _write_shards(cfg, ctx, len(chunks), wdir, out, pre_drops, fp)
    except OSError as e:
        if not _disk_full(e):
            raise
        done = sum(1 for i in range(len(chunks)) if (wdir / f"chunk-{i:06d}.parquet").is_file())
        raise ShardWriteError(
            f"writing to {out} failed: no space left on device ({_free_mib(out)} MiB free there; {e}). The folder "
            f"holds no complete shard set (index.json is written last, so no reader takes it); the "
            f"{done} of {len(chunks)} encoded chunks in {wdir} are kept: free space and rerun the same command, "
            "which encodes only the rest and writes the shards") from None
    report["wall_s"] = round(time.perf_counter() - t_start, 3)
    _atomic_json(out / "report.json", report)
    if not cfg.keep_work:
        shutil.rmtree(wdir)
    _fail_if_all_speech_dropped(report, out)
    return report


class ShardWriteError(ConfigError, OSError):
    """A shard build stopped by a full disk: one line (the CLI prints a ConfigError as one) naming
    the folder, the free space and how the rerun resumes; an OSError for callers that catch those."""


def _disk_full(e: OSError) -> bool:
    # pyarrow reports a full disk as an OSError whose errno may be unset, with the C message inside
    return e.errno == errno.ENOSPC or "No space left on device" in str(e)


def _free_mib(path: Path) -> int:
    try:
        return int(shutil.disk_usage(path).free / 2**20)
    except OSError:
        return -1


class AllSpeechDroppedError(ValueError):
    """A user-input problem (the CLI prints it as one line), found after the report is written."""


def _fail_if_all_speech_dropped(report: dict, out: Path) -> None:
    """Shards with text but none of the speech they were given are never what a user wants
    (seen: a manifest whose absolute audio paths pointed at a moved directory). The report and
    the drop log are already written, so the error only has to say where to look."""
    if report.get("hours_in", 0) > 0 and report.get("hours_kept", 0) == 0:
        first = (report.get("drop_examples") or [{}])[0].get("message", "?")
        raise AllSpeechDroppedError(
            f"every speech item was dropped ({report.get('dropped')}); first: {first}. The reasons "
            f"of all of them are in {out / 'drops.jsonl'}; fix the manifest (audio paths, alignments) "
            "and run again")


def prepare_demo_shards(cfg: PrepareConfig | None, manifest, speech_tokenizer=None,
                        text_tokenizer=None, text_corpus=None, output_dir=None) -> Path:
    """End-to-end demo: a manifest (+ optional text corpus) -> shard directory (returned).

    ``speech_tokenizer``: a :class:`~spiritlm.unit_encoder.UnitEncoder`, a loaded
    ``SpeechTokenizer``, or None (use ``cfg.speech``). ``text_tokenizer``: a ``SpiritTokenizer``,
    a path, or None (use ``cfg.text_tokenizer``). The report is in ``<shard_dir>/report.json``.
    """
    import copy

    from spiritlm.data.encoders import SpeechTokenizerEncoder
    from spiritlm.data.work import load_text_tokenizer
    from spiritlm.unit_encoder import UnitEncoder

    cfg = copy.deepcopy(cfg) if cfg is not None else PrepareConfig(progress=False)
    cfg.inputs.manifests = [str(manifest)]
    if text_corpus is not None:
        cfg.inputs.text_corpora = [str(text_corpus)]
    if output_dir is not None:
        cfg.output_dir = str(output_dir)
    enc = speech_tokenizer
    if enc is not None and not isinstance(enc, UnitEncoder):
        if not hasattr(enc, "encode_many"):
            raise TypeError("speech_tokenizer must be a UnitEncoder or a SpeechTokenizer")
        enc = SpeechTokenizerEncoder.from_tokenizer(enc, cfg.speech.expressive)
    if isinstance(text_tokenizer, (str, Path)):
        cfg.text_tokenizer = str(text_tokenizer)
        text_tokenizer = load_text_tokenizer(cfg.text_tokenizer)
    prepare_shards(cfg, enc, text_tokenizer)
    return Path(cfg.output_dir)


def _write_shards(cfg: PrepareConfig, ctx, n_chunks: int, wdir: Path, out: Path,
                  pre_drops: list, fingerprint: str) -> dict:
    import pyarrow as pa

    from spiritlm.data.shards import ShardWriter, iter_tables

    old = sorted(out.rglob("shard-*.parquet"))
    meta = ctx.metadata(_out_config(cfg))
    writers: dict[str, ShardWriter] = {}

    def writer_for(kind: str) -> ShardWriter:
        if kind not in writers:
            d = out / kind if cfg.shards.split_by_kind else out
            writers[kind] = ShardWriter(d, meta, int(cfg.shards.target_mb * 2**20),
                                        int(cfg.shards.row_group_mb * 2**20), cfg.shards.compression)
        return writers[kind]

    paths = [wdir / f"chunk-{i:06d}.parquet" for i in range(n_chunks)]
    stats = merge_stats([json.loads((wdir / f"chunk-{i:06d}.json").read_text())
                         for i in range(n_chunks)])
    for d in pre_drops:
        stats["dropped"][d["reason"]] = stats["dropped"].get(d["reason"], 0) + 1
    stats["dropped"] = dict(sorted(stats["dropped"].items()))
    stats["drop_log"] = pre_drops + stats.get("drop_log", [])
    for t in iter_tables(paths):
        if not cfg.shards.split_by_kind:
            writer_for("all").add(t)
            continue
        kinds = t.column("kind").to_numpy(zero_copy_only=False)
        for kind in dict.fromkeys(kinds.tolist()):  # first-seen order: deterministic
            writer_for(kind).add(t.filter(pa.array(kinds == kind)))
    shards = []
    for kind, w in writers.items():
        for s in w.close():
            if cfg.shards.split_by_kind:
                s.name = f"{kind}/{s.name}"
            shards.append(s)
    names = {s.name for s in shards}
    for p in old:  # shards of an earlier, larger run under the same config
        if p.relative_to(out).as_posix() not in names:
            p.unlink()
    index = {"schema_version": meta_version(), "shards": [s.__dict__ for s in shards],
             "metadata": meta, "fingerprint": fingerprint}
    save_config(cfg, out / "config.yaml")
    drop_log = stats.pop("drop_log", [])
    tmp = out / ".drops.jsonl.tmp"
    tmp.write_text("".join(json.dumps(d, sort_keys=True) + "\n" for d in drop_log), encoding="utf-8")
    os.replace(tmp, out / "drops.jsonl")
    stats["drop_examples"] = drop_log[:20]
    secs = stats.pop("encode_seconds", 0.0)
    frames = stats.get("frames_encoded", 0)
    stats["units_per_s"] = round(frames / secs, 1) if secs else None
    stats["hours_in"] = round(stats.pop("seconds_in", 0.0) / 3600, 6)
    stats["hours_kept"] = round(stats.pop("seconds_kept", 0.0) / 3600, 6)
    stats["shards"] = len(shards)
    stats["rows"] = sum(s.rows for s in shards)
    stats["bytes"] = sum(s.bytes for s in shards)
    # index.json last: its presence says the folder is complete (readers check it); the
    # report is written just before, so a finished folder always has both
    _atomic_json(out / "report.json", stats)
    _atomic_json(out / "index.json", index)
    return stats


def meta_version() -> int:
    from spiritlm.data.shards import SCHEMA_VERSION

    return SCHEMA_VERSION


def merge_stats(parts: list[dict]) -> dict:
    from spiritlm.data.work import empty_stats

    out: dict[str, Any] = empty_stats()
    del out["drop_log"]  # present only when a chunk has one
    for p in parts:
        for k, v in p.items():
            if isinstance(v, dict):
                d = out.setdefault(k, {})  # counters another context adds sum the same way
                for kk, vv in v.items():
                    d[kk] = d.get(kk, 0) + vv
            elif isinstance(v, list):
                out.setdefault(k, []).extend(v)
            else:
                out[k] = out.get(k, 0) + v
    for k, v in out.items():
        if isinstance(v, dict):
            out[k] = dict(sorted(v.items()))
    return out


def format_report(report: dict) -> str:
    lines = [f"hours in: {report['hours_in']:.4f}   hours kept: {report['hours_kept']:.4f}",
             f"items: {report['items']}   rows: {report['rows']} in {report['shards']} shard(s), "
             f"{report['bytes'] / 2**20:.2f} MiB"]
    lines.append("kept: " + ", ".join(f"{k}={v}" for k, v in report["kept"].items()))
    lines.append("dropped: " + (", ".join(f"{k}={v}" for k, v in report["dropped"].items()) or "none"))
    if report["fallback"]:
        lines.append("kept as speech-only: " + ", ".join(f"{k}={v}" for k, v in report["fallback"].items()))
    lines.append("tokens: " + ", ".join(f"{k}={v}" for k, v in report["tokens"].items()))
    if report.get("word_form"):
        lines.append("interleaved text spans written as: "
                     + ", ".join(f"{k}={v}" for k, v in report["word_form"].items()))
    if report.get("drop_examples"):
        lines.append("every drop/fallback with its reason: drops.jsonl")
    lines.append(f"units/s (encoder): {report['units_per_s']}   wall: {report.get('wall_s')} s")
    return "\n".join(lines)


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def dump(cfg: PrepareConfig) -> str:
    return dump_config(cfg)
