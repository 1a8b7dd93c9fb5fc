"""T2U documents from aligned records, and the loss mask that keeps the text as the condition.

A window of words of an aligned record becomes ``[Text] bpe [Speech] units [Text]``. Its units are
the ones real interleaving writes for a speech span over exactly these words: the record is
interleaved with the spans (before, window, after) as (text, speech, text) by
:func:`spiritlm.data.interleave.interleave_batch`, so the straddling rule, the per-span
deduplication and the Expressive merge are the data stage's own, not a second copy.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from spiritlm.data.interleave import SPEECH, TEXT, Interleaver, RecordRng, SpanDist, _draw, interleave_batch
from spiritlm.data.records import AlignedRecord
from spiritlm.vocab import VocabLayout

IGNORE = -100
# salts the windows' random stream, so a record's T2U window is not tied to its interleaving spans
WINDOW_SALT = 0x7432_7532_5F77_696E


def window(rec: AlignedRecord, span: SpanDist, seed: int, epoch: int) -> tuple[int, int]:
    """(first word, number of words) of the record's window for (seed, epoch)."""
    n = len(rec.words)
    rng = RecordRng(rec.id, int(seed) ^ WINDOW_SALT, epoch)
    length = min(n, _draw(span, rng))
    return rng.integer(0, n - length), length


def window_units(recs: Sequence[AlignedRecord], windows: Sequence[tuple[int, int]],
                 il: Interleaver) -> list[np.ndarray | None]:
    """Speech-token ids of each record's window, as interleaving writes them (None where the window
    got no frame, which interleaving would write as text)."""
    spans = []
    for rec, (a, length) in zip(recs, windows):
        n = len(rec.words)
        parts = [(a, TEXT), (length, SPEECH), (n - a - length, TEXT)]
        spans.append(([k for k, _ in parts if k], [m for k, m in parts if k]))
    flat, off = interleave_batch(list(recs), spans, il)
    out: list[np.ndarray | None] = []
    sp, tx = il.layout.speech_id, il.layout.text_id
    for i in range(len(recs)):
        ids = flat[off[i]:off[i + 1]]
        at = np.flatnonzero(ids == sp)
        if not at.size:
            out.append(None)
            continue
        end = np.flatnonzero(ids[at[0] + 1:] == tx)
        out.append(ids[at[0] + 1: at[0] + 1 + end[0]] if end.size else ids[at[0] + 1:])
    return out


def window_text(rec: AlignedRecord, a: int, length: int) -> np.ndarray:
    """The window's words' BPE ids (each word in its mid-sentence form, as interleaving writes them)."""
    off = rec.word_offsets()
    return rec.word_bpe[off[a]:off[a + length]]


def prompt_ids(text_bpe: np.ndarray, layout: VocabLayout) -> np.ndarray:
    """What the T2U model is given: ``[Text] bpe [Speech]`` (BOS is added by the caller)."""
    return np.concatenate(([layout.text_id], np.asarray(text_bpe, np.int64), [layout.speech_id])).astype(np.int64)


def pair_ids(text_bpe: np.ndarray, units: np.ndarray, layout: VocabLayout, max_tokens: int) -> np.ndarray:
    """``[Text] bpe [Speech] units [Text]``; a pair longer than ``max_tokens`` keeps its first
    tokens and loses the closing ``[Text]`` (the model is not taught to stop where the span did not)."""
    ids = np.concatenate((prompt_ids(text_bpe, layout), np.asarray(units, np.int64), [layout.text_id]))
    return ids[:max_tokens] if len(ids) > max_tokens else ids


def pair_fn(il: Interleaver, span: SpanDist, max_tokens: int):
    """``fn(record, seed, epoch) -> ids`` for a ``ParquetSource`` of aligned shards (its
    ``interleave_fn``): one window per record and epoch, resampled every epoch."""
    from spiritlm.data.shards import row_to_record

    lay = il.layout

    def fn(record: dict, seed: int, epoch: int) -> np.ndarray:
        if record.get("kind") != "aligned":
            raise ValueError(f"record {record.get('id')}: a T2U source holds aligned records only, found "
                             f"{record.get('kind')!r} (list the data stage's aligned/ folder)")
        rec = row_to_record(record)
        a, length = window(rec, span, seed, epoch)
        units = window_units([rec], [(a, length)], il)[0]
        if units is None:  # no frame under these words: nothing to learn from this draw
            return np.array([lay.text_id], np.int64)
        return pair_ids(window_text(rec, a, length), units, lay, max_tokens)

    return fn


def unit_rows(layout: VocabLayout, streams: Sequence[str]) -> np.ndarray:
    """Token ids of the speech streams the model writes."""
    return np.concatenate([np.arange(layout.streams[s].offset, layout.streams[s].offset + layout.streams[s].size)
                           for s in streams])


def t2u_targets(input_ids_BT: torch.Tensor, targets_BT: torch.Tensor, position_ids_BT: torch.Tensor,
                layout: VocabLayout) -> torch.Tensor:
    """The packer's targets with everything but the units and the closing ``[Text]`` ignored.

    A unit target counts only in a segment that holds its ``[Speech]`` marker: the packer cuts a
    document at a row's end and starts the next row with the rest, whose units would then be
    predicted without their text. Segments start where the position ids restart at 0."""
    lo, hi = layout.streams["hubert"].offset, layout.vocab_size
    is_unit_tgt = (targets_BT >= lo) & (targets_BT < hi)
    closing = (targets_BT == layout.text_id) & (input_ids_BT >= lo) & (input_ids_BT < hi)
    sp = (input_ids_BT == layout.speech_id).long()
    cum = torch.cumsum(sp, dim=1)  # non-decreasing along a row, so a running max carries each
    start = position_ids_BT == 0   # segment's count-before-its-start forward
    base = torch.cummax(torch.where(start, cum - sp, torch.zeros_like(cum)), dim=1).values
    keep = (is_unit_tgt | closing) & (cum - base > 0)
    return torch.where(keep, targets_BT, torch.full_like(targets_BT, IGNORE))
