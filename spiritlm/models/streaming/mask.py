"""The limited attention window of the streaming model (SpeechLLM-XL, figure 1 B).

Every position of chunk k (its audio, its text, its ``$`` when fed back) attends causally within
chunk k and fully to the ``b`` chunks before it, never further back, and never across packed
utterances::

    allowed(q, k) = same_segment(q, k)  and  k <= q  and  chunk(q) - chunk(k) <= b

(chunks are in order within an utterance, so "k <= q" already gives "fully" for earlier chunks).
Two forms of the same predicate:

* :func:`window_mask_B1TT` -- an explicit additive mask (0 / dtype-min), for ``sdpa`` / ``eager``
  attention. This is what training on CPU uses: FlexAttention has no CPU backward here (and its
  CPU forward needs torch.compile), and the demo's sequences are short enough (<= 512) that a
  dense T x T mask costs nothing that matters.
* :func:`flex_block_mask` -- a FlexAttention ``BlockMask`` built from :func:`window_mask_mod`,
  for ``model.attn_implementation = "flex_attention"`` on CUDA: blocks outside the window are
  skipped, so attention costs O(T * (b + 1) * chunk) instead of O(T^2).
Both are tested equal on CPU (``create_mask`` materialises the mask_mod).
"""

from __future__ import annotations

import torch

from spiritlm.components.packing import segment_ids_BT


def window_allowed_BTT(position_ids_BT: torch.Tensor, chunk_BT: torch.Tensor, window: int) -> torch.Tensor:
    """Boolean (B, T, T): query q may attend key k (module doc). Segments are read from the
    position ids, which restart at 0 for every packed utterance (and for the padding)."""
    seg = segment_ids_BT(position_ids_BT)
    T = seg.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
    same = seg[:, :, None] == seg[:, None, :]
    near = (chunk_BT[:, :, None] - chunk_BT[:, None, :]) <= window
    return same & causal & near


def window_mask_B1TT(position_ids_BT: torch.Tensor, chunk_BT: torch.Tensor, window: int,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive mask B x 1 x T x T: 0 where attention is allowed, dtype-min elsewhere."""
    allowed = window_allowed_BTT(position_ids_BT, chunk_BT, window)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def window_mask_mod(seg_BT: torch.Tensor, chunk_BT: torch.Tensor, window: int):
    """FlexAttention ``mask_mod(b, h, q, kv)`` of the same predicate (tensors captured)."""

    def mask_mod(b, h, q_idx, kv_idx):
        same = seg_BT[b, q_idx] == seg_BT[b, kv_idx]
        near = (chunk_BT[b, q_idx] - chunk_BT[b, kv_idx]) <= window
        return same & (kv_idx <= q_idx) & near

    return mask_mod


def flex_block_mask(position_ids_BT: torch.Tensor, chunk_BT: torch.Tensor, window: int, block_size: int = 128):
    """A FlexAttention ``BlockMask`` (pass it as ``attention_mask`` with ``attn_implementation =
    "flex_attention"``)."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg = segment_ids_BT(position_ids_BT)
    B, T = seg.shape
    return create_block_mask(window_mask_mod(seg, chunk_BT, window), B, None, T, T,
                             device=str(seg.device), BLOCK_SIZE=block_size)


def window_attention_mask(position_ids_BT, chunk_BT, window: int, attn_implementation: str, dtype):
    """What the LM's ``attention_mask`` gets for its attention backend."""
    if attn_implementation == "flex_attention":
        return flex_block_mask(position_ids_BT, chunk_BT, window)
    return window_mask_B1TT(position_ids_BT, chunk_BT, window, dtype)
