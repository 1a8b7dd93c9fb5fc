"""Cross-entropy of an LM head without the ``[tokens, vocab]`` logits wall (``model.linear_ce``).

The plain loss asks the model for its logits (``h_ND @ W_VD.T``), casts them to fp32 and calls
``F.cross_entropy``: at a Llama-3 / Qwen2.5 vocabulary (128k-152k rows) one micro-batch of 16k
tokens holds ~10 GB of fp32 logits, and autograd keeps more of that size for the backward
(log-softmax output, the logits' gradient). Here the head's matmul and the cross-entropy run
``chunk_tokens`` tokens at a time:

* forward: each chunk's logits, their log-softmax (F.cross_entropy's kernel) at the target and at
  the row's max; kept: the per-token loss and the logsumexp (two floats a token);
* backward: each chunk's logits again (one more matmul than the plain path: ~1.33x its FLOPs),
  ``softmax - onehot`` scaled by the upstream gradient of each token's loss, then ``grad_h`` of the
  chunk and ``grad_W`` / ``grad_b`` summed over the chunks.

Exactness: each chunk's logits are computed as the plain path computes them -- ``F.linear`` in the
model's dtype, then ``.float()`` -- and the gradient leaves the fp32 logits in the model's dtype,
as the backward of ``.float()`` hands it back; the losses come from F.cross_entropy's own kernel
(log-softmax). In fp32 the per-token losses are the plain path's bits wherever a chunk's logits
are (they were, on this CPU) and the gradients match to ~6e-7 (tests/test_linear_ce.py asserts
1e-5 on both). In bf16 the tolerance is the plain bf16 path's own rounding: the test asserts
per-token losses within 1e-2 and gradients within 1e-2 of their largest entry; measured here, the
losses and ``grad_h`` agree bit for bit, ``grad_W`` to 4e-3 of its largest entry (one bf16 ulp:
each chunk's product is rounded to bf16 and summed in fp32, where the plain path rounds one
product). fp64 inputs run in fp64 (for ``gradcheck``).

Where the model's logits come from (``head_loss``): a forward pre-hook on the model's output
embeddings (``get_output_embeddings()``, an ``nn.Linear``) takes the head's input, computes the
per-token losses from it, and hands the head an empty slice, so HF's forward computes no logits;
a forward hook on the model returns ``{"ce_N": ...}``. The model is still called through its
DeepSpeed engine, whose forward registers its backward hooks (gradient-accumulation bookkeeping)
on what the model returns: on the per-token losses, so they fire before any gradient is made --
calling the base model directly would skip them. ZeRO-3 is refused by config validation: it
frees the head's weight after the forward, and the backward here reads it.

``model.linear_ce = "liger"`` runs liger-kernel's fused linear cross-entropy (a Triton kernel,
CUDA only) behind the same hooks.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from spiritlm.components.packing import IGNORE

KINDS = ("plain", "chunked", "liger")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # the plain path's `.float()`: fp32 for fp32/bf16/fp16 models; fp64 stays fp64 (gradcheck)
    return torch.promote_types(dtype, torch.float32)


def _chunk_logits(h_CD: torch.Tensor, W_VD: torch.Tensor, b_V: Optional[torch.Tensor], acc: torch.dtype):
    # nn.Linear's own call in the model's dtype, then the plain path's cast: same values row by row
    return F.linear(h_CD, W_VD, b_V).to(acc)


class LinearCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy ``ce_N`` of ``F.linear(h_ND, W_VD, b_V)`` against ``t_N``, computed
    ``chunk`` tokens at a time (module docstring); ``ignore_index`` rows give 0 and no gradient."""

    @staticmethod
    def forward(ctx, h_ND, W_VD, b_V, t_N, chunk: int, ignore_index: int):
        N = h_ND.shape[0]
        acc = _acc_dtype(h_ND.dtype)
        valid_N = t_N != ignore_index
        # ignored rows gather column 0 and are zeroed; any other bad target fails in gather, as in
        # F.cross_entropy
        tsafe_N = t_N.masked_fill(~valid_N, 0)
        ce_N = torch.empty(N, dtype=acc, device=h_ND.device)
        lse_N = torch.empty(N, dtype=acc, device=h_ND.device)
        for s in range(0, N, chunk):
            e = min(s + chunk, N)
            logits_CV = _chunk_logits(h_ND[s:e], W_VD, b_V, acc)
            # F.cross_entropy's own kernel (log_softmax, then the target's entry): the plain path's
            # per-token losses bit for bit. A torch.logsumexp version was less exact: 3e-5 off an
            # fp64 reference in some processes (2e-6 in others), where log_softmax stays at 2e-6.
            logp_CV = torch.log_softmax(logits_CV, dim=-1)
            ce_C = -logp_CV.gather(1, tsafe_N[s:e, None])[:, 0]
            # logsumexp = max - log_softmax at the max: log_softmax there is -log(sum exp(x - max)),
            # in [-log V, 0], so the subtraction loses nothing
            max_C, arg_C = logits_CV.max(dim=-1)
            lse_N[s:e] = max_C - logp_CV.gather(1, arg_C[:, None])[:, 0]
            del logits_CV, logp_CV  # before the next chunk's: one chunk's [C, V] tensors alive at a time
            ce_N[s:e] = torch.where(valid_N[s:e], ce_C, torch.zeros_like(ce_C))
        ctx.save_for_backward(h_ND, W_VD, b_V, tsafe_N, valid_N, lse_N)
        ctx.chunk = chunk
        return ce_N

    @staticmethod
    def backward(ctx, g_N):
        h_ND, W_VD, b_V, tsafe_N, valid_N, lse_N = ctx.saved_tensors
        need_h, need_W, need_b = ctx.needs_input_grad[:3]
        acc, dt, chunk = lse_N.dtype, h_ND.dtype, ctx.chunk
        N = h_ND.shape[0]
        # the upstream gradient of each token's loss; ignored rows get none (their loss is a constant 0)
        g_N = torch.where(valid_N, g_N.to(acc), torch.zeros((), dtype=acc, device=g_N.device))
        grad_h = torch.empty_like(h_ND) if need_h else None
        # summed over chunks in fp32 (one rounding to the model's dtype at the end)
        grad_W = torch.zeros(W_VD.shape, dtype=acc, device=W_VD.device) if need_W else None
        grad_b = torch.zeros(b_V.shape, dtype=acc, device=b_V.device) if need_b and b_V is not None else None
        for s in range(0, N, chunk):
            e = min(s + chunk, N)
            h_CD = h_ND[s:e]
            # dCE/dlogits = softmax - onehot(target), in place on the chunk's recomputed logits
            p_CV = _chunk_logits(h_CD, W_VD, b_V, acc).sub_(lse_N[s:e, None]).exp_()
            # -1 at each valid row's target (ignored rows: -0 at column 0, and their g is 0);
            # a scatter, not boolean indexing, so that a GPU does not sync on every chunk
            p_CV.scatter_add_(1, tsafe_N[s:e, None], -valid_N[s:e, None].to(acc))
            p_CV.mul_(g_N[s:e, None])
            # the backward of the plain path's `.float()` hands the logits' gradient back in the
            # model's dtype; the head's matmuls then run in that dtype, as autograd runs them
            gl_CV = p_CV.to(dt)
            if grad_h is not None:
                grad_h[s:e] = gl_CV @ W_VD
            if grad_W is not None:
                if dt == acc:
                    grad_W.addmm_(gl_CV.t(), h_CD)  # in place: no [V, D] temporary per chunk
                else:
                    grad_W += (gl_CV.t() @ h_CD).to(acc)
            if grad_b is not None:
                grad_b += gl_CV.sum(0).to(acc)
            del p_CV, gl_CV
        return (grad_h, None if grad_W is None else grad_W.to(W_VD.dtype),
                None if grad_b is None else grad_b.to(b_V.dtype), None, None, None)


def linear_cross_entropy(h_ND: torch.Tensor, W_VD: torch.Tensor, t_N: torch.Tensor,
                         b_V: Optional[torch.Tensor] = None, chunk_tokens: int = 4096,
                         ignore_index: int = IGNORE) -> torch.Tensor:
    """Per-token cross-entropy (fp32; 0 at ``ignore_index``) of the head ``W_VD`` (+ ``b_V``) over
    hidden states ``h_ND``: ``F.cross_entropy(F.linear(h, W, b).float(), t, reduction="none")``
    without the ``[N, V]`` logits."""
    if h_ND.dim() != 2 or W_VD.dim() != 2 or h_ND.shape[1] != W_VD.shape[1]:
        raise ValueError(f"hidden states {tuple(h_ND.shape)} and head weight {tuple(W_VD.shape)}: need "
                         "[tokens, dim] and [vocab, dim]")
    if t_N.shape != h_ND.shape[:1]:
        raise ValueError(f"{t_N.numel()} targets for {h_ND.shape[0]} hidden states")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens}: set 1 or more (model.ce_chunk_tokens)")
    return LinearCrossEntropy.apply(h_ND.contiguous(), W_VD, b_V, t_N, int(chunk_tokens), int(ignore_index))


def liger_cross_entropy(h_ND, W_VD, t_N, b_V=None, ignore_index: int = IGNORE) -> torch.Tensor:
    """liger-kernel's fused linear cross-entropy, per token (CUDA; config validation checks it).

    ``reduction="none"``: the per-token losses feed the per-type sums. liger computes the gradients
    in its forward and scales them by the upstream gradient in backward; releases before its
    per-token fix read one scalar from that gradient, which is right here because the training
    loss is ``ce_N.sum() / n``: every token's upstream gradient is the same ``1 / n`` (times the
    engine's accumulation factor)."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    out = liger_fused_linear_cross_entropy(h_ND.contiguous(), W_VD, t_N, bias=b_V, ignore_index=ignore_index,
                                           reduction="none")
    ce_N = out[0] if isinstance(out, (tuple, list)) else getattr(out, "loss", out)
    return ce_N.float()


def ce_function(kind: str, chunk_tokens: int) -> Callable:
    """``fn(h_ND, W_VD, b_V, t_N) -> ce_N`` for ``model.linear_ce`` = ``chunked`` or ``liger``."""
    if kind == "chunked":
        return lambda h, W, b, t: linear_cross_entropy(h, W, t, b, chunk_tokens)
    if kind == "liger":
        return lambda h, W, b, t: liger_cross_entropy(h, W, t, b)
    raise ValueError(f"model.linear_ce={kind!r}: head_loss runs 'chunked' or 'liger' (one of {KINDS})")


@contextmanager
def head_loss(model: torch.nn.Module, t_N: torch.Tensor, ce_fn: Callable) -> Iterator[None]:
    """While active, a forward of ``model`` (a HF causal LM, or its DeepSpeed engine around it)
    returns ``{"ce_N": per-token losses}`` computed by ``ce_fn(h_ND, W_VD, b_V, t_N)`` from the
    input of its output embeddings, and computes no logits (module docstring)."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"model.linear_ce needs the model's output embeddings to be an nn.Linear, got "
                         f"{type(head).__name__}; set model.linear_ce=plain")
    held: dict = {}

    def take_hidden(mod, args):
        if "ce_N" in held:
            raise RuntimeError("the model called its output embeddings twice in one forward; "
                               "set model.linear_ce=plain")
        h = args[0]
        h_ND = h.reshape(-1, h.shape[-1])
        if h_ND.shape[0] != t_N.numel():
            raise RuntimeError(f"the head saw {h_ND.shape[0]} positions for {t_N.numel()} targets (does the "
                               "model keep logits of only some positions?); set model.linear_ce=plain")
        held["ce_N"] = ce_fn(h_ND, mod.weight, mod.bias, t_N.reshape(-1))
        return (h[..., :0, :], *args[1:])  # the head multiplies no position: no logits

    def give_losses(mod, args, output):
        if "ce_N" not in held:
            raise RuntimeError("the model's forward never called its output embeddings; set model.linear_ce=plain")
        return {"ce_N": held.pop("ce_N")}

    handles = [head.register_forward_pre_hook(take_hidden), model.register_forward_hook(give_losses)]
    try:
        yield
    finally:
        for hd in handles:
            hd.remove()
