"""Parquet shards: schema (versioned), file metadata, and an atomic, deterministic writer.

Schema v1 -- one row per record; columns that do not apply to a row's kind are null:

=============  ==============  =========================================================
column         type            meaning
=============  ==============  =========================================================
id             string          record id (utterance id, or ``<doc id>`` for text)
kind           string          ``text`` | ``speech`` | ``aligned`` | ``interleaved`` |
                               ``asr`` | ``tts``
input_ids      list<int32>     token ids, no BOS (all kinds but ``aligned``)
duration       float64         seconds of audio (null for text)
speaker        string          speaker id (null for text)
words          list<string>    aligned only: the words
word_start     list<float64>   aligned only: word start times (s)
word_end       list<float64>   aligned only: word end times (s)
word_bpe       list<int32>     aligned only: every word's BPE ids (with ``▁``), concatenated
word_bpe_len   list<int32>     aligned only: number of BPE ids per word
hubert         list<int16>     aligned only: frame-level HuBERT units (not deduplicated)
pitch          list<int16>     aligned + Expressive only: frame-level pitch units
style          list<int16>     aligned + Expressive only: frame-level style units
=============  ==============  =========================================================

File metadata (Parquet key-value, key ``spiritlm``, a JSON object): ``schema_version``,
``tokenizer_sha256`` (the SentencePiece model), ``frame_rates``, ``vocab_layout``,
``has_pitch``/``has_style``, ``speech_encoder`` and the resolved ``config``.

Shards are named ``shard-00000.parquet``...; each is written to a hidden temp file, fsynced and
renamed, so a reader never sees a partial shard. Shard and row-group boundaries depend only on
the rows (estimated uncompressed bytes), never on timing: same rows -> byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from spiritlm.data.records import AlignedRecord

SCHEMA_VERSION = 1
META_KEY = b"spiritlm"
KINDS = ("text", "speech", "aligned", "interleaved", "asr", "tts")

SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("input_ids", pa.list_(pa.int32())),
    pa.field("duration", pa.float64()),
    pa.field("speaker", pa.string()),
    pa.field("words", pa.list_(pa.string())),
    pa.field("word_start", pa.list_(pa.float64())),
    pa.field("word_end", pa.list_(pa.float64())),
    pa.field("word_bpe", pa.list_(pa.int32())),
    pa.field("word_bpe_len", pa.list_(pa.int32())),
    pa.field("hubert", pa.list_(pa.int16())),
    pa.field("pitch", pa.list_(pa.int16())),
    pa.field("style", pa.list_(pa.int16())),
])


class ShardError(ValueError):
    pass


def ids_row(rid: str, kind: str, ids: np.ndarray, duration: float | None = None,
            speaker: str | None = None) -> dict:
    if kind not in KINDS or kind == "aligned":
        raise ShardError(f"kind {kind!r} is not a pre-materialised kind")
    return {"id": rid, "kind": kind, "input_ids": np.asarray(ids, dtype=np.int32),
            "duration": duration, "speaker": speaker}


def aligned_row(rec: AlignedRecord) -> dict:
    row = {"id": rec.id, "kind": "aligned", "duration": rec.duration, "speaker": rec.speaker,
           "words": list(rec.words), "word_start": rec.word_start, "word_end": rec.word_end,
           "word_bpe": rec.word_bpe, "word_bpe_len": rec.word_bpe_len}
    for s in ("hubert", "pitch", "style"):
        if s in rec.units:
            row[s] = rec.units[s].astype(np.int16)
    return row


def _list_column(vals: list, typ: pa.ListType) -> pa.Array:
    """list<...> column from per-row sequences/arrays (None = null), built from flat buffers."""
    lens = np.fromiter((0 if v is None else len(v) for v in vals), np.int32, len(vals))
    offsets = pa.array(np.concatenate(([0], np.cumsum(lens, dtype=np.int32))), pa.int32())
    present = [v for v in vals if v is not None]
    if pa.types.is_string(typ.value_type):
        values = pa.array([x for v in present for x in v], pa.string())
    else:
        dtype = typ.value_type.to_pandas_dtype()
        values = pa.array(np.concatenate([np.asarray(v, dtype=dtype) for v in present])
                          if present else np.zeros(0, dtype), typ.value_type)
    mask = pa.array(np.fromiter((v is None for v in vals), bool, len(vals)))
    return pa.ListArray.from_arrays(offsets, values, type=typ, mask=mask)


def rows_to_table(rows: list[dict]) -> pa.Table:
    cols = []
    for f in SCHEMA:
        vals = [r.get(f.name) for r in rows]
        cols.append(_list_column(vals, f.type) if pa.types.is_list(f.type)
                    else pa.array(vals, type=f.type))
    return pa.Table.from_arrays(cols, schema=SCHEMA)


def row_to_record(row: Mapping[str, Any]) -> AlignedRecord:
    """An ``aligned`` row (as a dict of Python/numpy values) -> :class:`AlignedRecord`."""
    units = {s: np.asarray(row[s], dtype=np.int64) for s in ("hubert", "pitch", "style")
             if row.get(s) is not None}
    return AlignedRecord(row["id"], list(row["words"]), row["word_start"], row["word_end"],
                         row["word_bpe"], row["word_bpe_len"], units,
                         float(row.get("duration") or 0.0), row.get("speaker"))


def row_nbytes(table: pa.Table) -> np.ndarray:
    """Deterministic estimate of each row's uncompressed size (bytes)."""
    import pyarrow.compute as pc

    n = table.num_rows
    size = np.full(n, 32, dtype=np.int64)
    for name, width in (("input_ids", 4), ("word_start", 8), ("word_end", 8), ("word_bpe", 4),
                        ("word_bpe_len", 4), ("hubert", 2), ("pitch", 2), ("style", 2),
                        ("words", 8)):
        lens = pc.list_value_length(table.column(name)).fill_null(0)
        size += width * lens.to_numpy(zero_copy_only=False).astype(np.int64)
    size += pc.binary_length(table.column("id")).to_numpy(zero_copy_only=False).astype(np.int64)
    return size


def file_metadata(meta: Mapping[str, Any]) -> dict[bytes, bytes]:
    body = {"schema_version": SCHEMA_VERSION, **meta}
    return {META_KEY: json.dumps(body, sort_keys=True, separators=(",", ":")).encode()}


def read_metadata(path: str | Path) -> dict:
    md = pq.read_schema(path).metadata or {}
    if META_KEY not in md:
        raise ShardError(f"{path} is not a spiritlm shard (no '{META_KEY.decode()}' metadata)")
    meta = json.loads(md[META_KEY])
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ShardError(f"{path}: schema version {meta.get('schema_version')} but this code reads "
                         f"version {SCHEMA_VERSION}; re-run `spiritlm prepare shards`")
    return meta


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_table(table: pa.Table, path: Path, compression: str = "zstd",
                       row_group_rows: int | None = None) -> None:
    """Write one Parquet file via a temp file + fsync + rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression=compression, row_group_size=row_group_rows)
    _fsync_rename(tmp, path)


def _fsync_rename(tmp: Path, path: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass
class ShardInfo:
    name: str
    rows: int
    row_groups: int
    bytes: int
    sha256: str
    kinds: dict


class ShardWriter:
    """Streams tables into ``shard-NNNNN.parquet`` files of about ``target_bytes`` each (estimated
    uncompressed), in row groups of about ``row_group_bytes``. Call :meth:`add` then :meth:`close`."""

    def __init__(self, out_dir: str | Path, metadata: Mapping[str, Any], target_bytes: int,
                 row_group_bytes: int, compression: str = "zstd", prefix: str = "shard"):
        if target_bytes <= 0 or row_group_bytes <= 0:
            raise ShardError("shard target size and row-group size must be > 0")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.schema = SCHEMA.with_metadata(file_metadata(metadata))
        self.target = int(target_bytes)
        self.rg_bytes = int(min(row_group_bytes, target_bytes))
        self.compression = compression
        self.prefix = prefix
        self.shards: list[ShardInfo] = []
        self._writer = None
        self._tmp = self._path = None
        self._shard_bytes = 0
        self._rg: list[pa.Table] = []
        self._rg_bytes = 0
        self._rows = 0
        self._groups = 0
        self._kinds: dict[str, int] = {}

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        sizes = row_nbytes(table)
        kinds = table.column("kind").to_pylist()
        start = 0
        for i in range(table.num_rows):
            self._rg_bytes += int(sizes[i])
            self._shard_bytes += int(sizes[i])
            self._kinds[kinds[i]] = self._kinds.get(kinds[i], 0) + 1
            end_rg = self._rg_bytes >= self.rg_bytes
            end_shard = self._shard_bytes >= self.target
            if end_rg or end_shard:
                self._rg.append(table.slice(start, i + 1 - start))
                start = i + 1
                self._flush_row_group()
                if end_shard:
                    self._finish_shard()
        if start < table.num_rows:
            self._rg.append(table.slice(start))

    def _flush_row_group(self) -> None:
        if not self._rg:
            return
        t = pa.concat_tables(self._rg).cast(self.schema)
        if self._writer is None:
            self._path = self.out_dir / f"{self.prefix}-{len(self.shards):05d}.parquet"
            self._tmp = self.out_dir / f".{self._path.name}.tmp"
            self._writer = pq.ParquetWriter(self._tmp, self.schema, compression=self.compression)
        self._writer.write_table(t, row_group_size=t.num_rows)
        self._rows += t.num_rows
        self._groups += 1
        self._rg, self._rg_bytes = [], 0

    def _finish_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        _fsync_rename(self._tmp, self._path)
        self.shards.append(ShardInfo(self._path.name, self._rows, self._groups,
                                     self._path.stat().st_size, sha256_file(self._path),
                                     dict(sorted(self._kinds.items()))))
        self._writer = None
        self._shard_bytes = self._rows = self._groups = 0
        self._kinds = {}

    def close(self) -> list[ShardInfo]:
        self._flush_row_group()
        self._finish_shard()
        return self.shards


def iter_tables(paths: Iterable[str | Path]) -> Iterable[pa.Table]:
    for p in paths:
        yield pq.read_table(p, schema=SCHEMA)
