"""Sequence packing: documents -> full ``seq_len`` rows that never mix documents.

Each row is a run of *segments* (a document, or the piece of a long document that fits). Per row:

* ``input_ids_T``     the tokens;
* ``position_ids_T``  restart at 0 at every segment, so RoPE sees each segment as a sequence alone;
* ``targets_T``       the next token *within the segment* (already shifted), -100 on a segment's
                      last token, so no label ever crosses a document boundary.

Attention: with ``position_ids`` and no attention mask, transformers turns the position resets
into a block-diagonal causal mask (SDPA/eager) and flash-attention-2 into varlen calls;
``block_mask_B1TT`` builds the same mask explicitly (additive 4-D) for other paths. Both are
tested to give, for every segment, the logits of that segment run alone.

Documents longer than the room left in a row are cut: the rest starts the next row (positions
from 0 again). The packer keeps the cut-off rest in its state, so resuming is exact.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np
import torch

IGNORE = -100


class Packer:
    def __init__(self, docs: Iterator[dict], seq_len: int, bos_id: int = -1, eos_id: int = -1):
        self.docs = docs
        self.T = seq_len
        self.bos_id, self.eos_id = bos_id, eos_id
        self.pending = np.zeros(0, dtype=np.int64)  # rest of a document cut at a row end
        self.pending_kind = ""

    def _next_doc(self) -> np.ndarray:
        doc = next(self.docs)
        ids = np.asarray(doc["input_ids"], dtype=np.int64)
        if self.bos_id >= 0 and (ids.size == 0 or ids[0] != self.bos_id):
            ids = np.concatenate([[self.bos_id], ids])
        if self.eos_id >= 0:
            ids = np.concatenate([ids, [self.eos_id]])
        self.pending_kind = doc.get("kind", "")
        return ids

    def next_row(self) -> dict:
        T = self.T
        input_ids = np.zeros(T, dtype=np.int64)
        targets = np.full(T, IGNORE, dtype=np.int64)
        positions = np.zeros(T, dtype=np.int64)
        n, n_docs = 0, 0
        while n < T:
            if self.pending.size == 0:
                self.pending = self._next_doc()
                if self.pending.size < 2:  # nothing to predict in a 0/1-token document
                    self.pending = self.pending[:0]
                    continue
            take = min(T - n, self.pending.size)
            seg = self.pending[:take]
            self.pending = self.pending[take:]
            if self.pending.size == 1:  # a lone leftover token has no target: drop it
                self.pending = self.pending[:0]
            input_ids[n : n + take] = seg
            targets[n : n + take - 1] = seg[1:]
            positions[n : n + take] = np.arange(take)
            n += take
            n_docs += 1
        return {"input_ids": input_ids, "targets": targets, "position_ids": positions, "segments": n_docs}

    def next_batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        rows = [self.next_row() for _ in range(batch_size)]
        return {
            "input_ids_BT": torch.from_numpy(np.stack([r["input_ids"] for r in rows])),
            "targets_BT": torch.from_numpy(np.stack([r["targets"] for r in rows])),
            "position_ids_BT": torch.from_numpy(np.stack([r["position_ids"] for r in rows])),
        }

    def state_dict(self) -> dict:
        return {"pending": self.pending.tolist(), "pending_kind": self.pending_kind}

    def load_state_dict(self, state: Mapping) -> None:
        self.pending = np.asarray(state["pending"], dtype=np.int64)
        self.pending_kind = state.get("pending_kind", "")


def segment_ids_BT(position_ids_BT: torch.Tensor) -> torch.Tensor:
    """Segment index per token: a new segment wherever the position does not go up by one."""
    first = position_ids_BT[:, :1] - 1
    diff = torch.diff(position_ids_BT, prepend=first, dim=-1)
    return (diff != 1).cumsum(-1)


def block_mask_B1TT(position_ids_BT: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive block-diagonal causal mask (0 = attend, dtype-min = blocked), shape B x 1 x T x T."""
    seg = segment_ids_BT(position_ids_BT)
    T = seg.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]
