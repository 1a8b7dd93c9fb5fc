"""``sdpa_varlen``: attention over packed documents that computes only each document's own block.

Why our own: on a GPU, flash-attn's varlen kernel does this (``flash_attention_2``); on a CPU no
maintained kernel does. torch's SDPA sees packed rows as one sequence with a block-diagonal mask,
and its CPU flash kernel computes every query-key block of the row -- those of other documents
too, and, with an explicit mask, those above the diagonal.
FlexAttention would skip them but has no backward on CPU (torch 2.13). Here the documents of a
micro-batch are cut out of the flattened rows, grouped by length into buckets, padded at the right
end within a bucket and run through SDPA with ``is_causal=True``: the work is each document's
causal block (plus its bucket's padding, < 2x), the kernel the same; on a CPU, short documents'
attention runs in float32, where SDPA's kernel is faster than in bfloat16. Measured on the demo's
rows (``spiritlm bench train``): docs/benchmarks.md.

Registered with transformers' ``AttentionInterface`` as ``"sdpa_varlen"`` (importing this module
registers it). The model gets the documents' boundaries the way flash-attn varlen gets them
(``cu_seq_lens_q``; ``packing.isolation_plan`` -> ``"varlen"``), or finds them in the position ids
(a restart at 0 starts a document; every row start does). Anything else -- a padding or tree mask,
decoding with a KV cache, unpacked rows -- is plain SDPA (``sdpa_attention_forward``), so the same
model evaluates and generates as under ``"sdpa"``.

    q_BHND, k_BHkND, v_BHkND -> out_BNHD   (transformers' attention-function convention)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from spiritlm.components.packing import cu_seqlens_of, segment_starts_BT

NAME = "sdpa_varlen"
MIN_BUCKET = 16  # documents shorter than this share one bucket: padding them costs nothing measurable
FP32_UP_TO = 256  # CPU: buckets this long or shorter compute their attention in float32 (below)


def _plan(cu: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For sequence boundaries ``cu`` (``[0, ..., N]``): per length bucket, the token index of each
    (document, slot) ``idx_SL`` (pads repeat the document's last token: they only feed pad rows,
    whose outputs are dropped) and the flat positions of the real slots ``keep``; plus, last, the
    permutation that puts the buckets' real outputs back in token order."""
    cu_l = cu.tolist()
    starts, lengths = cu_l[:-1], [b - a for a, b in zip(cu_l[:-1], cu_l[1:])]
    buckets: dict[int, list[int]] = {}
    for s, n in enumerate(lengths):
        if n > 0:
            b = max(MIN_BUCKET, 1 << (n - 1).bit_length())
            buckets.setdefault(b, []).append(s)
    plan, order = [], []
    for b in sorted(buckets):
        segs = buckets[b]
        L = max(lengths[s] for s in segs)
        st = torch.tensor([starts[s] for s in segs])
        ln = torch.tensor([lengths[s] for s in segs])
        slot = torch.arange(L)
        idx_SL = st[:, None] + torch.minimum(slot[None, :], ln[:, None] - 1)
        keep = (slot[None, :] < ln[:, None]).reshape(-1).nonzero().flatten()
        plan.append((idx_SL, keep))
        order.append(idx_SL.reshape(-1)[keep])
    inverse = torch.empty(int(cu_l[-1]), dtype=torch.long)
    allpos = torch.cat(order)
    inverse[allpos] = torch.arange(allpos.numel())
    return plan + [(inverse, None)]


_cache: dict[tuple, list] = {}


def plan_for(cu: torch.Tensor, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``_plan`` on ``device``, cached for the last boundaries seen (every layer of one forward
    and its backward share them)."""
    key = (str(device), tuple(cu.tolist()))
    if key not in _cache:
        _cache.clear()
        _cache[key] = [(a.to(device), b.to(device) if b is not None else None) for a, b in _plan(cu.cpu())]
    return _cache[key]


def cu_from_position_ids(position_ids_BT: torch.Tensor) -> torch.Tensor | None:
    """Document boundaries over the flattened rows when the position ids restart inside a row
    (packed rows); None when every row is one sequence counting up from its start."""
    if position_ids_BT.dim() != 2 or position_ids_BT.shape[1] < 2:
        return None
    if not bool(segment_starts_BT(position_ids_BT)[:, 1:].any()):
        return None
    return cu_seqlens_of(position_ids_BT.cpu())[0].to(position_ids_BT.device)


# Not traced by torch.compile (model.compile): the bucket plan is host-side Python whose shapes
# change every micro-batch; the compiled graphs end and resume around it.
@torch.compiler.disable
def varlen_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    if getattr(module, "sliding_window", None):
        # the buckets are whole causal blocks and the mask function below builds no window
        raise ValueError(f"model.attn_implementation={NAME!r} has no sliding-window attention, which this "
                         f"backbone's layer {getattr(module, 'layer_idx', '?')} uses (window "
                         f"{module.sliding_window}); set model.attn_implementation='sdpa'")
    q_len, kv_len = query.shape[2], key.shape[2]
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None and attention_mask is None and q_len == kv_len and kwargs.get("position_ids") is not None:
        cu = cu_from_position_ids(kwargs["position_ids"])
    if cu is None or attention_mask is not None or q_len != kv_len or not getattr(module, "is_causal", True):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    B, H, T, D = query.shape
    Hk = key.shape[1]
    # the flattened tokens, head-major: [H, B*T, D]
    q_HND = query.transpose(0, 1).reshape(H, B * T, D)
    k_HND = key.transpose(0, 1).reshape(Hk, B * T, D)
    v_HND = value.transpose(0, 1).reshape(Hk, B * T, -1)
    *buckets, (inverse, _) = plan_for(cu, query.device)
    outs = []
    for idx_SL, keep in buckets:
        S, L = idx_SL.shape
        flat = idx_SL.reshape(-1)
        # On a CPU, SDPA's bfloat16 kernel has ~13 ms of fixed work per 2048 tokens (forward +
        # backward, one thread, 4 heads of 32) whatever the length: float32 takes 3.6 ms at 32
        # tokens a document, 13.5 at 256, the same 25 at 512; with 6 heads of 64, bf16 wins from
        # 512 on (58 vs 67 ms). Buckets up to 256 run in float32 (more exact too), cast back.
        work = torch.float32 if query.device.type == "cpu" and L <= FP32_UP_TO else query.dtype
        qb = q_HND.index_select(1, flat).to(work).reshape(H, S, L, D).transpose(0, 1)
        kb = k_HND.index_select(1, flat).to(work).reshape(Hk, S, L, D).transpose(0, 1)
        vb = v_HND.index_select(1, flat).to(work).reshape(Hk, S, L, -1).transpose(0, 1)
        ob = F.scaled_dot_product_attention(qb, kb, vb, dropout_p=dropout if module.training else 0.0,
                                            scale=scaling, is_causal=True, enable_gqa=Hk != H)
        # the bucket's real tokens: [tokens, H, Dv]
        outs.append(ob.transpose(1, 2).reshape(S * L, H, -1).index_select(0, keep).to(query.dtype))
    out_NHD = torch.cat(outs).index_select(0, inverse)
    return out_NHD.reshape(B, T, H, -1), None


def varlen_mask(*args, attention_mask=None, **kwargs):
    """No mask where there is no padding (the attention function finds the documents itself);
    SDPA's mask otherwise, for the plain-SDPA path."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


ALL_ATTENTION_FUNCTIONS.register(NAME, varlen_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, varlen_mask)
