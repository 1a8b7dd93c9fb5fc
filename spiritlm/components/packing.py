"""Sequence packing: documents -> full ``seq_len`` rows that never mix documents.

Each row is a run of *segments* (a document, or the piece of a long document that fits). Per row:

* ``input_ids_T``     the tokens;
* ``position_ids_T``  restart at 0 at every segment, so RoPE sees each segment as a sequence alone;
* ``targets_T``       the next token *within the segment* (already shifted), -100 on a segment's
                      last token, so no label ever crosses a document boundary.

Attention never crosses a segment, on every backend (``isolation_plan`` picks how, from
``model.attn_implementation`` and ``model.packed_attention``; ``packed_inputs`` builds the model's
inputs accordingly):

* ``eager`` / ``sdpa``: position ids and no mask -- transformers turns the resets into a
  block-diagonal causal mask at any batch size -- or (``packed_attention="block_mask"``) the same
  mask passed explicitly (``block_mask_B1TT``, additive 4-D).
* ``flex_attention``: position ids; transformers builds a FlexAttention ``BlockMask`` with the
  document mask from them (batch size any). FlexAttention has no backward on CPU (torch 2.13):
  training with it on CPU is refused.
* ``flash_attention_2/3`` (and other flash kernels): transformers splits position-id-packed rows
  into separate sequences only when the batch size is 1 (``_is_packed_sequence``) and drops a
  packed 4-D mask. So the micro-batch is flattened into one row of ``B*T`` tokens and the
  sequence boundaries are passed explicitly (``cu_seq_lens_q/k``, ``max_length_q/k``): the
  varlen kernel sees every segment as its own sequence. An explicit block mask is refused there.

Any other backend is refused at start (it could not be shown to keep documents apart). The
tests prove, for each backend installed here, that every segment's logits equal those of the
segment run alone at micro-batch > 1, and that what reaches the model under flash attention is
the single-row varlen layout.

Documents longer than the room left in a row are cut: the rest starts the next row (positions
from 0 again). The packer keeps the cut-off rest in its state, so resuming is exact.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np
import torch

from spiritlm.config import ConfigError

IGNORE = -100


class Packer:
    def __init__(self, docs: Iterator[dict], seq_len: int, bos_id: int = -1, eos_id: int = -1):
        self.docs = docs
        self.T = seq_len
        self.bos_id, self.eos_id = bos_id, eos_id
        self.pending = np.zeros(0, dtype=np.int64)  # rest of a document cut at a row end
        self.pending_kind = ""
        self.pending_source = ""
        # tokens placed in rows, per source (its name, else its kind): the realised mixture
        self.tokens_by_source: dict[str, int] = {}

    @property
    def stream(self):
        """The document stream this packer reads (its own state is saved beside the packer's)."""
        return self.docs

    def _next_doc(self) -> np.ndarray:
        doc = next(self.docs)
        ids = np.asarray(doc["input_ids"], dtype=np.int64)
        if self.bos_id >= 0 and (ids.size == 0 or ids[0] != self.bos_id):
            ids = np.concatenate([[self.bos_id], ids])
        if self.eos_id >= 0:
            ids = np.concatenate([ids, [self.eos_id]])
        self.pending_kind = doc.get("kind", "")
        self.pending_source = doc.get("source", self.pending_kind)
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
            self.tokens_by_source[self.pending_source] = self.tokens_by_source.get(self.pending_source, 0) + take
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

    def token_shares(self) -> dict[str, float]:
        """Share of the packed tokens so far that came from each source."""
        total = sum(self.tokens_by_source.values())
        return {k: v / total for k, v in sorted(self.tokens_by_source.items())} if total else {}

    def state_dict(self) -> dict:
        return {"pending": self.pending.tolist(), "pending_kind": self.pending_kind,
                "pending_source": self.pending_source, "tokens_by_source": dict(self.tokens_by_source)}

    def load_state_dict(self, state: Mapping) -> None:
        self.pending = np.asarray(state["pending"], dtype=np.int64)
        self.pending_kind = state.get("pending_kind", "")
        self.pending_source = state.get("pending_source", self.pending_kind)
        self.tokens_by_source = {str(k): int(v) for k, v in state.get("tokens_by_source", {}).items()}


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


# ---- keeping packed documents apart, per attention backend --------------------------------------
ISOLATION = ("position_ids", "block_mask", "varlen")


def is_flash(attn_implementation: str) -> bool:
    """flash_attention_2/3/4 and hub kernels such as ``kernels-community/flash-attn``."""
    return "flash" in attn_implementation.lower()


def isolation_plan(attn_implementation: str, packed_attention: str = "position_ids",
                   device_type: str = "cpu", training: bool = True) -> str:
    """How packed rows reach the model so that no document sees another: ``"position_ids"``,
    ``"block_mask"`` or ``"varlen"`` (flattened micro-batch + sequence lengths). A backend or
    combination that cannot guarantee it raises ConfigError saying what to set instead."""
    attn = attn_implementation
    if packed_attention not in ("position_ids", "block_mask"):
        raise ConfigError(f"model.packed_attention={packed_attention!r}: use 'position_ids' or 'block_mask'")
    if attn in ("eager", "sdpa"):
        return packed_attention
    if attn == "sdpa_varlen":  # spiritlm.components.varlen_attention: each document's block only
        if packed_attention == "block_mask":
            raise ConfigError(
                "model.attn_implementation='sdpa_varlen' computes each document's own block from the "
                "document boundaries and would not use a block mask; set model.packed_attention='position_ids'")
        return "varlen"
    if is_flash(attn):
        if packed_attention == "block_mask":
            raise ConfigError(
                f"model.attn_implementation={attn!r} ignores a 4-D attention mask, so packed documents "
                "would attend to each other; set model.packed_attention='position_ids' (the micro-batch "
                "is then flattened into one varlen row with the document boundaries)")
        return "varlen"
    if attn == "flex_attention":
        if packed_attention == "block_mask":
            raise ConfigError(
                "model.attn_implementation='flex_attention' builds its document mask from the position "
                "ids; set model.packed_attention='position_ids'")
        if training and device_type == "cpu":
            raise ConfigError(
                "model.attn_implementation='flex_attention' has no backward pass on CPU (torch's "
                "FlexAttention); train on CPU with model.attn_implementation='sdpa'")
        return "position_ids"
    raise ConfigError(
        f"model.attn_implementation={attn!r}: packed documents are kept apart only with 'sdpa', "
        "'eager', 'flex_attention' or flash attention ('flash_attention_2'/'flash_attention_3'); "
        "use one of those")


def cu_seqlens_of(position_ids_BT: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative segment lengths over the flattened micro-batch (int32, starts with 0) and the
    longest segment: a row start is always a segment start, as is every position reset."""
    starts_N = segment_starts_BT(position_ids_BT).reshape(-1)
    starts = starts_N.nonzero().flatten().to(torch.int32)
    total = torch.tensor([position_ids_BT.numel()], dtype=torch.int32)
    cu = torch.cat([starts, total])
    return cu, int(cu.diff().max())


def segment_starts_BT(position_ids_BT: torch.Tensor) -> torch.Tensor:
    """True where a segment starts (first token of a row, or the position does not go up by one)."""
    starts = torch.ones_like(position_ids_BT, dtype=torch.bool)
    starts[:, 1:] = position_ids_BT[:, 1:] - position_ids_BT[:, :-1] != 1
    return starts


def packed_inputs(batch: Mapping[str, torch.Tensor], plan: str, device: torch.device | str = "cpu",
                  mask_dtype: torch.dtype = torch.float32) -> dict:
    """The model's keyword arguments for a packed micro-batch under ``plan`` (``isolation_plan``).
    Under ``"varlen"`` the rows are flattened to ``1 x B*T``; the logits come back in that shape,
    token for token in row-major order, which is how ``token_losses`` flattens the targets."""
    ids_BT, pos_BT = batch["input_ids_BT"], batch["position_ids_BT"]
    if plan == "varlen":
        cu, longest = cu_seqlens_of(pos_BT.cpu())  # computed on the host: no device sync
        cu = cu.to(device)
        return {"input_ids": ids_BT.reshape(1, -1).to(device), "position_ids": pos_BT.reshape(1, -1).to(device),
                "attention_mask": None, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
                "max_length_q": longest, "max_length_k": longest}
    ids_BT, pos_BT = ids_BT.to(device), pos_BT.to(device)
    if plan == "block_mask":
        return {"input_ids": ids_BT, "position_ids": pos_BT, "attention_mask": block_mask_B1TT(pos_BT, mask_dtype)}
    if plan == "position_ids":
        return {"input_ids": ids_BT, "position_ids": pos_BT, "attention_mask": None}
    raise ValueError(f"unknown isolation plan {plan!r}; one of {ISOLATION}")
