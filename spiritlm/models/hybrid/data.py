"""Documents with a feature reference per position, packed like the unit LM's.

The hybrid model reads the data stage's shards through the unit LM's own machinery
(``ParquetSource`` + ``MixtureStream`` + ``Packer``: same order, mixture, packing and exact
resume). What changes is the speech string: the aligned records' HuBERT frames are **not**
deduplicated (one position per frame), and every speech position carries the row of its frame in
the feature table (:class:`FeatureTable`, the data stage's feature store), so that unit and
feature stay aligned through interleaving and packing:

* ``speech``: ``[Speech] u_0 u_1 ... u_{F-1}`` with features ``f_0 ... f_{F-1}``;
* ``interleaved``: the unit LM's word-level interleaving (same spans, same random stream,
  ``spiritlm.data.interleave``) with deduplication off; speech spans take the frames of their
  words (the straddling rule), text spans are unchanged;
* ``text``: the stored ids, no features.

A document travels through the packer as one int64 per position, ``id << 32 | (row + 1)``
(``row + 1 = 0``: no feature), so the packer's cutting, positions and targets apply to both at
once; :meth:`HybridPacker.next_batch` splits them and looks the features up.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np
import torch

from spiritlm.config import ConfigError
from spiritlm.data.interleave import SPEECH, Interleaver, _first_frame_at
from spiritlm.components.packing import IGNORE, Packer

SHIFT = 32
LOW = (1 << SHIFT) - 1


class FeatureTable:
    """Every record's frames in one ``(N, D)`` float32 array; ``offset[id]`` = its first row."""

    def __init__(self, feats: Mapping[str, np.ndarray], dim: int):
        ids = sorted(feats)
        self.offset, rows, n = {}, [], 0
        for uid in ids:
            self.offset[uid] = n
            rows.append(np.asarray(feats[uid], np.float32).reshape(-1, dim))
            n += rows[-1].shape[0]
        self.n = {uid: r.shape[0] for uid, r in zip(ids, rows)}
        self.table = torch.from_numpy(np.concatenate(rows) if rows else np.zeros((0, dim), np.float32))
        self.dim = dim

    def rows(self, uid: str, n_frames: int) -> np.ndarray:
        if uid not in self.offset:
            raise ConfigError(f"record {uid} has no features in the feature store: rebuild it from the same shards")
        if self.n[uid] != n_frames:
            raise ConfigError(f"record {uid}: {self.n[uid]} feature frames for {n_frames} units; the store was built "
                              "from other shards: rebuild it")
        return self.offset[uid] + np.arange(n_frames, dtype=np.int64)


def combine(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return (np.asarray(ids, np.int64) << SHIFT) | (np.asarray(rows, np.int64) + 1)


def split(comb):
    """-> (ids, feature rows with -1 where there is none); numpy or torch."""
    return comb >> SHIFT, (comb & LOW) - 1


def speech_frames_of_spans(rec, lengths, mods, rate: float) -> np.ndarray:
    """Frame indices of the record's speech spans, in order (the interleaver's straddling rule:
    a frame goes to the word holding its midpoint)."""
    n_words = len(rec.words)
    F = len(rec.units["hubert"])
    cut_lo = np.empty(n_words)
    cut_lo[0] = -np.inf
    cut_lo[1:] = (rec.word_end[:-1] + rec.word_start[1:]) / 2.0
    lo = np.clip(_first_frame_at(cut_lo, rate), 0, F)
    hi = np.append(lo[1:], F)
    out, w = [], 0
    for ln, mod in zip(lengths, mods):
        if mod == SPEECH:
            out.append(np.arange(lo[w], max(lo[w], hi[w + ln - 1]), dtype=np.int64))
        w += ln
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def hybrid_doc_fn(shard_dir, kind: str, table: FeatureTable | None):
    """``interleave_fn`` for ``ParquetSource``: record -> combined ids (see the module doc)."""
    from spiritlm.data.reader import ShardReader
    from spiritlm.data.shards import row_to_record

    reader = ShardReader(shard_dir, shuffle=False, aligned_as="speech")
    if reader.has_pitch or reader.has_style:
        raise ConfigError(f"{shard_dir}: the hybrid family reads Base (HuBERT-only) speech; these shards hold "
                          "pitch/style tokens")
    layout = replace(reader.layout, hubert_dedup=False)
    rate = float(reader.meta["frame_rates"]["hubert"])
    il = Interleaver(reader.interleaver.cfg, layout, {"hubert": rate})
    hu = layout.streams["hubert"]

    def rows_of(rec, frames):
        if table is None:
            return np.full(len(frames), -1, np.int64)
        return table.rows(rec.id, len(rec.units["hubert"]))[frames]

    def fn(record: dict, seed: int, epoch: int) -> np.ndarray:
        if record.get("kind") != "aligned":
            ids = np.asarray(record["input_ids"], np.int64)
            if kind != "text" and ids.size and (ids >= layout.speech_id).any():
                raise ConfigError(f"{shard_dir}: a stored {record.get('kind')} row holds deduplicated speech; the "
                                  "hybrid family reads speech from aligned records only")
            return combine(ids, np.full(ids.size, -1))
        rec = row_to_record(record)
        units = np.asarray(rec.units["hubert"], np.int64)
        if kind == "speech":
            ids = np.concatenate(([layout.speech_id], hu.offset + units))
            rows = np.concatenate(([-1], rows_of(rec, np.arange(units.size))))
            return combine(ids, rows)
        if kind == "text":
            from spiritlm.data.records import text_ids

            ids = text_ids(rec.word_bpe, layout).astype(np.int64)
            return combine(ids, np.full(ids.size, -1))
        lengths, mods = il.spans(rec, seed, epoch)
        ids = np.asarray(il(rec, seed, epoch), np.int64)
        is_unit = (ids >= hu.offset) & (ids < hu.offset + hu.size)
        frames = speech_frames_of_spans(rec, lengths, mods, rate)
        if int(is_unit.sum()) != frames.size:
            raise AssertionError(f"{rec.id}: {int(is_unit.sum())} unit positions but {frames.size} span frames")
        rows = np.full(ids.size, -1, np.int64)
        rows[is_unit] = rows_of(rec, frames)
        return combine(ids, rows)

    return fn, layout


class HybridPacker(Packer):
    """The unit LM's packer over combined ids; ``next_batch`` adds ``feats_BTD``/``feat_mask_BT``."""

    def __init__(self, docs, seq_len: int, table: FeatureTable | None, bos_id: int = -1, eos_id: int = -1):
        super().__init__(docs, seq_len, bos_id, eos_id)
        self.table = table

    def _next_doc(self) -> np.ndarray:
        doc = next(self.docs)
        comb = np.asarray(doc["input_ids"], dtype=np.int64)
        ids, _ = split(comb)
        if self.bos_id >= 0 and (comb.size == 0 or ids[0] != self.bos_id):
            comb = np.concatenate([combine([self.bos_id], [-1]), comb])
        if self.eos_id >= 0:
            comb = np.concatenate([comb, combine([self.eos_id], [-1])])
        self.pending_kind = doc.get("kind", "")
        self.pending_source = doc.get("source", self.pending_kind)
        return comb

    def next_batch(self, batch_size: int) -> dict:
        rows = [self.next_row() for _ in range(batch_size)]
        comb = torch.from_numpy(np.stack([r["input_ids"] for r in rows]))
        tcomb = torch.from_numpy(np.stack([r["targets"] for r in rows]))
        ids, frow = split(comb)
        targets = torch.where(tcomb == IGNORE, tcomb, tcomb >> SHIFT)
        out = {"input_ids_BT": ids, "targets_BT": targets,
               "position_ids_BT": torch.from_numpy(np.stack([r["position_ids"] for r in rows])),
               "feat_mask_BT": frow >= 0}
        if self.table is not None:
            out["feats_BTD"] = self.table.table[frow.clamp(min=0)] * out["feat_mask_BT"][..., None]
        return out


class HybridBatches:
    """Stream + packer in one resumable object (the trainer's ``spec.batches`` contract)."""

    def __init__(self, stream, packer: HybridPacker):
        self.stream, self.packer = stream, packer

    def next_batch(self, batch_size: int) -> dict:
        return self.packer.next_batch(batch_size)

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(), "packer": self.packer.state_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        self.stream.load_state_dict(state["stream"])
        self.packer.load_state_dict(state["packer"])


def make_hybrid_batches(sources_cfg: Sequence, seq_len: int, table: FeatureTable | None, seed: int = 0,
                        rank: int = 0, world: int = 1, bos_id: int = 1, eos_id: int = -1,
                        mixture_unit: str = "tokens", max_id: int | None = None) -> HybridBatches:
    from spiritlm.components.mixture import MixtureStream, ParquetSource

    srcs = []
    for i, s in enumerate(sources_cfg):
        fn, _ = hybrid_doc_fn(s.path, s.kind, table)
        srcs.append(ParquetSource(s.path, name=s.name or f"source{i}", kind=s.kind, interleave_fn=fn))
    stream = MixtureStream(srcs, [s.weight for s in sources_cfg], seed=seed, rank=rank, world_size=world,
                           unit=mixture_unit)
    if max_id is not None:
        stream = _CheckedIds(stream, max_id)
    return HybridBatches(stream, HybridPacker(stream, seq_len, table, bos_id, eos_id))


class _CheckedIds:
    """The unit LM's id range check (MixtureStream's ``max_id``), on the ids inside combined values."""

    def __init__(self, stream, max_id: int):
        self.stream, self.max_id = stream, max_id

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        doc = next(self.stream)
        ids, _ = split(np.asarray(doc["input_ids"], np.int64))
        if ids.size and (ids.min() < 0 or ids.max() >= self.max_id):
            from spiritlm.components.mixture import DataError

            raise DataError(f"data source {doc.get('source')}: id {int(ids.max())} outside [0, {self.max_id}); "
                            "the shards and the model use different vocabularies")
        return doc

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state) -> None:
        self.stream.load_state_dict(state)
