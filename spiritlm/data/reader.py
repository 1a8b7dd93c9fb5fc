"""Streaming, shard-aware, resumable reader of ``prepare shards`` output.

The unit of work is a Parquet row group. All row groups of all shards are listed in (shard,
group) order, permuted per epoch when ``shuffle`` (seeded by ``(seed, epoch)``), and dealt
round-robin to the ``world_size * num_workers`` readers: reader ``rank * num_workers +
worker_id`` takes groups ``g, g + W, g + 2W, ...``. Every row is read by exactly one reader per
epoch (tested). With ``shuffle`` the rows inside a group are permuted too.

Rows come out as ``{"id", "kind", "input_ids"}`` (int32, no BOS). ``aligned`` rows are
materialised on the fly (``aligned_as="interleave"``: resampled per (record, seed, epoch); or
``"speech"``/``"text"``/``"asr"``/``"tts"``), using the frame rates, layout and interleaving
config recorded in the shards' metadata unless ``interleave`` is given.

Resuming: ``state_dict()`` -> ``{"epoch", "group", "row"}`` (position of the *next* row in this
reader's sequence); ``load_state_dict`` continues exactly there (tested). Iterating a reader
yields the rest of the current epoch, then moves ``epoch`` on by one.

The shards are plain Parquet: ``datasets.load_dataset("parquet", data_files=".../shard-*.parquet")``
loads them too (rows as stored; aligned rows are not interleaved there).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np

from spiritlm.data.interleave import InterleaveConfig, Interleaver, _mix64
from spiritlm.data.records import AlignedRecord, asr_ids, speech_ids, text_ids, tts_ids
from spiritlm.data.shards import ShardError, read_metadata, row_to_record
from spiritlm.vocab import VocabLayout

log = logging.getLogger(__name__)
ALIGNED_AS = ("interleave", "speech", "text", "asr", "tts")


def shard_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """A shard directory or one kind's subdirectory (checked against the data stage's
    ``index.json``: :func:`verified_shard_files`), or a file, or a list of files."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            files = verified_shard_files(p, pattern="shard-*.parquet")
            if not files:
                raise FileNotFoundError(f"{p} holds no shard-*.parquet files: run "
                                        "`spiritlm prepare shards RECIPE` first")
            return files
        return [p]
    return [Path(x) for x in source]


# Checksums of more than this many bytes get a progress bar (hashing runs at ~1 GB/s).
_HASH_BAR_BYTES = 1 << 30


def _rerun_hint(root: Path) -> str:
    cfg = root / "config.yaml"
    return (f"rerun `spiritlm prepare shards {cfg}`" if cfg.is_file()
            else "rerun `spiritlm prepare shards RECIPE` with the recipe that made it")


def verified_shard_files(path: str | Path, pattern: str = "*.parquet", checksums: bool = True,
                         progress: bool = True) -> list[Path]:
    """The shard files of a folder, checked against the ``index.json`` that ``prepare shards``
    writes last: every listed shard present, with its size and SHA-256, and no other shard
    beside them. ``path`` is the output folder or one kind's subfolder (the index is then in
    the parent). A folder of the data stage's shards without an index -- a run that died
    while writing, or is writing now -- is refused, as is any mismatch, with the file named
    and what to rerun: training on such a folder silently used part of the data.

    A folder of other Parquet files (no index, no data-stage metadata) is returned as globbed.
    The checksums are read once, streaming, with a progress bar when the shards are large.
    """
    p = Path(path)
    root = next((r for r in (p, p.parent) if (r / "index.json").is_file()), None)
    on_disk = sorted(p.glob(pattern))
    if root == p:  # the output folder: its kinds' subfolders too (not the work folder's chunks)
        on_disk = sorted(set(on_disk) | {f for f in p.glob(f"*/{pattern}") if f.parent.name != "_work"})
    if root is None:
        work = next((r / "_work" for r in (p, p.parent) if (r / "_work").is_dir()), None)
        ours = [f for f in on_disk if _is_data_stage_shard(f)]
        if work is not None or ours:
            base = work.parent if work is not None else (p if (p / "config.yaml").is_file() else p.parent)
            raise ShardError(
                f"{p}: no index.json, so `spiritlm prepare shards` did not finish writing this folder "
                f"(it writes index.json last{'; its _work/ folder is still there' if work else ''}); "
                f"the shards here may be partial: {_rerun_hint(base)} to complete it (it resumes)")
        return on_disk
    try:
        index = json.loads((root / "index.json").read_text())
        entries = [e for e in index["shards"] if isinstance(e, dict)]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ShardError(f"{root / 'index.json'} is unreadable ({e}); {_rerun_hint(root)}") from None
    rel = "" if root == p else p.name + "/"
    mine = [e for e in entries if e["name"].startswith(rel)]
    files = [root / e["name"] for e in mine]
    extra = sorted(set(on_disk) - set(files))
    if extra:
        raise ShardError(f"{extra[0]} is not listed in {root / 'index.json'}: it is not part of "
                         f"that prepare shards output; move it away, or {_rerun_hint(root)}")
    for e, f in zip(mine, files):
        if not f.is_file():
            raise ShardError(f"shard {f} listed in {root / 'index.json'} is missing; training on "
                             f"the rest would leave its rows out: restore it or {_rerun_hint(root)}")
        size = f.stat().st_size
        if "bytes" in e and size != e["bytes"]:
            raise ShardError(f"shard {f} has {size} bytes, {root / 'index.json'} says {e['bytes']}: "
                             f"truncated or replaced; {_rerun_hint(root)}")
    if checksums:
        from spiritlm.data.shards import sha256_file

        total = sum(e.get("bytes", 0) for e in mine)
        bar = None
        if progress and total > _HASH_BAR_BYTES:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"checking {p.name} shards")
        for e, f in zip(mine, files):
            if "sha256" in e and _sha256_once(f, sha256_file) != e["sha256"]:
                raise ShardError(f"shard {f} does not match its SHA-256 in {root / 'index.json'}: "
                                 f"corrupt or changed since it was written; {_rerun_hint(root)}")
            if bar is not None:
                bar.update(e.get("bytes", 0))
        if bar is not None:
            bar.close()
    return files


_HASHED: dict[tuple, str] = {}  # (path, size, mtime) -> sha256: one hash per file and process


def _sha256_once(f: Path, sha256_file) -> str:
    st = f.stat()
    key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = sha256_file(f)
    return _HASHED[key]


def _is_data_stage_shard(f: Path) -> bool:
    import pyarrow.parquet as pq

    from spiritlm.data.shards import META_KEY

    try:
        md = pq.read_schema(f).metadata or {}
    except Exception:  # noqa: BLE001 -- unreadable: a partial file of ours, or not Parquet
        return f.name.startswith("shard-")
    return META_KEY in md and b'"schema_version"' in md[META_KEY]


def interleave_fn_for(source, interleave: InterleaveConfig | None = None,
                      aligned_as: str = "interleave"):
    """``fn(record, seed, epoch) -> ids`` for ``spiritlm.components.mixture.ParquetSource``'s
    ``interleave_fn``: rows of any kind; ``aligned`` rows are interleaved afresh (resampled per
    (record id, seed, epoch)) or, with ``aligned_as`` = "speech"/"text"/"asr"/"tts", turned into
    that single-modality or parallel form (the paper's no-interleaving ablation reads them as
    "speech"); the others return their stored ``input_ids``."""
    reader = ShardReader(source, interleave=interleave, shuffle=False, aligned_as=aligned_as)
    il, lay, hp, hs = reader.interleaver, reader.layout, reader.has_pitch, reader.has_style

    def fn(record: dict, seed: int, epoch: int) -> np.ndarray:
        if record.get("kind") != "aligned":
            return np.asarray(record["input_ids"], dtype=np.int32)
        rec = row_to_record(record)
        if aligned_as == "interleave":
            return il(rec, seed, epoch)
        if aligned_as == "speech":
            return speech_ids(rec.units, hp, hs, lay)
        if aligned_as == "text":
            return text_ids(rec.word_bpe, lay)
        return (asr_ids if aligned_as == "asr" else tts_ids)(rec, hp, hs, lay)

    return fn


class ShardReader:
    def __init__(self, source, *, rank: int = 0, world_size: int = 1,
                 worker_id: int | None = None, num_workers: int | None = None, seed: int = 0,
                 epoch: int = 0, shuffle: bool = True,
                 aligned_as: Literal["interleave", "speech", "text", "asr", "tts"] = "interleave",
                 interleave: InterleaveConfig | None = None, kinds: Sequence[str] | None = None,
                 batch_rows: int = 256):
        import pyarrow.parquet as pq

        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if aligned_as not in ALIGNED_AS:
            raise ValueError(f"aligned_as must be one of {ALIGNED_AS}, got {aligned_as!r}")
        self.files = shard_files(source)
        for f in self.files:
            if not f.is_file():
                raise FileNotFoundError(f"shard not found: {f}")
        metas = [read_metadata(f) for f in self.files]
        shas = {m["tokenizer_sha256"] for m in metas}
        if len(shas) > 1:
            raise ShardError("shards were made with different text tokenizers "
                             f"({sorted(shas)}); read them with separate readers")
        self.meta = metas[0]
        self.layout = VocabLayout(**self.meta["vocab_layout"])
        if interleave is None:
            from spiritlm.config import from_dict

            interleave = from_dict(InterleaveConfig, self.meta.get("config", {}).get("interleave", {}))
        self.has_pitch, self.has_style = self.meta["has_pitch"], self.meta["has_style"]
        self.interleaver = Interleaver(interleave, self.layout, self.meta["frame_rates"],
                                       self.has_pitch, self.has_style)
        self.rank, self.world_size = rank, world_size
        self.worker_id, self.num_workers = worker_id, num_workers
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.aligned_as = aligned_as
        self.kinds = set(kinds) if kinds else None
        self.batch_rows = batch_rows
        self.groups = [(fi, g) for fi, f in enumerate(self.files)
                       for g in range(pq.ParquetFile(f).num_row_groups)]
        self._group = 0  # index into this reader's list of groups
        self._row = 0  # rows of that group already yielded

    # ---- splitting ---------------------------------------------------------------------------
    def _worker(self) -> tuple[int, int]:
        wid, nw = self.worker_id, self.num_workers
        if wid is None or nw is None:
            import sys

            torch = sys.modules.get("torch")  # no DataLoader workers without torch loaded
            info = torch.utils.data.get_worker_info() if torch is not None else None
            wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * nw + wid, self.world_size * nw

    def my_groups(self, epoch: int | None = None) -> list[tuple[int, int]]:
        epoch = self.epoch if epoch is None else epoch
        order = np.arange(len(self.groups))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(len(self.groups))
        g, w = self._worker()
        if w > len(self.groups) and not getattr(self, "_warned_idle", False):
            self._warned_idle = True
            log.warning("%d readers (ranks x DataLoader workers) share %d row groups: %d of them read "
                        "nothing; write smaller row groups (shards.row_group_mb) or use fewer readers",
                        w, len(self.groups), w - len(self.groups))
        return [self.groups[i] for i in order[g::w]]

    def as_torch_dataset(self):
        """A ``torch.utils.data.IterableDataset`` over this reader: each DataLoader worker gets
        a copy that reads its own share (worker id/count from ``get_worker_info``). The
        resumable state lives in the workers: for exact resumption use ``num_workers=0`` or one
        reader per worker with explicit ``worker_id``/``num_workers``."""
        import torch.utils.data as tud

        reader = self

        class _Dataset(tud.IterableDataset):
            def __iter__(self):
                return iter(reader)

        return _Dataset()

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "group": self._group, "row": self._row}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._group, self._row = int(state["epoch"]), int(state["group"]), int(state["row"])

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._group, self._row = int(epoch), 0, 0

    # ---- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        import pyarrow.parquet as pq

        groups = self.my_groups()
        files: dict[int, pq.ParquetFile] = {}
        while self._group < len(groups):
            fi, g = groups[self._group]
            pf = files.get(fi) or files.setdefault(fi, pq.ParquetFile(self.files[fi]))
            table = pf.read_row_group(g)
            order = np.arange(table.num_rows)
            if self.shuffle:
                key = _mix64((self.seed << 32) ^ (self.epoch << 16) ^ (fi << 40) ^ g)
                order = np.random.default_rng(key).permutation(table.num_rows)
            for start in range(self._row, table.num_rows, self.batch_rows):
                idx = order[start:start + self.batch_rows]
                for ex in self._materialise(table.take(idx)):
                    self._row += 1
                    if self.kinds is None or ex["kind"] in self.kinds:
                        yield ex
            self._group += 1
            self._row = 0
        self.set_epoch(self.epoch + 1)

    def _materialise(self, table) -> list[dict]:
        """A batch of rows -> examples, from flat Arrow buffers (no per-value Python objects)."""
        cols = _FlatColumns(table)
        kinds = table.column("kind").to_pylist()
        ids_ = table.column("id").to_pylist()
        out: list[dict | None] = [None] * len(kinds)
        aligned = [i for i, k in enumerate(kinds) if k == "aligned"]
        for i, k in enumerate(kinds):
            if k != "aligned":
                out[i] = {"id": ids_[i], "kind": k,
                          "input_ids": cols.get("input_ids", i).astype(np.int32, copy=False)}
        if aligned:
            recs = [cols.record(i, ids_[i]) for i in aligned]
            lay, hp, hs = self.layout, self.has_pitch, self.has_style
            if self.aligned_as == "interleave":
                flat, off = self.interleaver.batch(recs, self.seed, self.epoch)
                ids = [flat[off[k]:off[k + 1]] for k in range(len(recs))]
            elif self.aligned_as == "speech":
                ids = [speech_ids(r.units, hp, hs, lay) for r in recs]
            elif self.aligned_as == "text":
                ids = [text_ids(r.word_bpe, lay) for r in recs]
            else:
                fn = asr_ids if self.aligned_as == "asr" else tts_ids
                ids = [fn(r, hp, hs, lay) for r in recs]
            kind = "interleaved" if self.aligned_as == "interleave" else self.aligned_as
            for k, i in enumerate(aligned):
                out[i] = {"id": ids_[i], "kind": kind, "input_ids": ids[k]}
        return out


class _FlatColumns:
    """Per-row slices of list columns via their flat values + offsets."""

    NUMERIC = ("input_ids", "word_start", "word_end", "word_bpe", "word_bpe_len", "hubert",
               "pitch", "style")

    def __init__(self, table):
        self.values, self.offsets, self.valid = {}, {}, {}
        for name in self.NUMERIC:
            arr = table.column(name).combine_chunks()
            self.offsets[name] = arr.offsets.to_numpy()
            self.values[name] = arr.values.to_numpy(zero_copy_only=False)
            self.valid[name] = arr.is_valid().to_numpy(zero_copy_only=False)
        words = table.column("words").combine_chunks()
        self.word_off = words.offsets.to_numpy()
        self.words = words.values.to_pylist()
        self.duration = table.column("duration").to_pylist()
        self.speaker = table.column("speaker").to_pylist()

    def get(self, name: str, i: int):
        if not self.valid[name][i]:
            return None
        o = self.offsets[name]
        return self.values[name][o[i]:o[i + 1]]

    def record(self, i: int, rid: str) -> AlignedRecord:
        units = {s: self.get(s, i) for s in ("hubert", "pitch", "style")}
        return AlignedRecord.trusted(rid, self.words[self.word_off[i]:self.word_off[i + 1]],
                             self.get("word_start", i), self.get("word_end", i),
                             self.get("word_bpe", i), self.get("word_bpe_len", i),
                             {k: v for k, v in units.items() if v is not None},
                             float(self.duration[i] or 0.0), self.speaker[i])
