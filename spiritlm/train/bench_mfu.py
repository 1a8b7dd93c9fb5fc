"""``spiritlm bench mfu``: tokens/s and model FLOPs utilisation of our training loop on one device.

The workload of the GPU recipes: a ~1B LLaMA-architecture model (TinyLlama-1.1B's shape: hidden
2048, 22 layers, 32 heads, 4 KV heads, SwiGLU 5632) with the Expressive vocabulary (32768 rows),
seq 4096, bf16, packed synthetic documents, the fastest attention backend installed that keeps
packed documents apart (``fastest_safe_backend``), activation checkpointing off and on. Each
setting is a real ``Trainer`` (DeepSpeed engine, ZeRO-1, AdamW, our packing and loss); the two
run side by side on ``spiritlm.bench_harness`` (alternating rounds of optimizer steps, median
rate), so both see the same machine. Both trainers live at once: on a GPU with less than ~80 GB
pass ``checkpointing=(True,)`` alone if the pair does not fit.

MFU = tokens/s x training FLOPs per token (``model_flops_per_token``: 6N + attention, at the
full sequence length, PaLM's convention -- packed documents do less attention work than that,
so this slightly overstates the FLOPs done) / the device's peak (``guess_peak_flops``, dense
bf16; or ``peak_flops=``). The compass goal is >= 40% on one GPU.

On CPU it runs a toy size (``TOY``) in fp32 with sdpa: tokens/s only (no peak is known), which
is what its test checks so the benchmark cannot rot.
"""

from __future__ import annotations

import contextlib
import tempfile
from typing import Optional, Sequence

import torch

# TinyLlama-1.1B's architecture (a LLaMA-2-style ~1.1B model with the LLaMA-2 tokenizer)
ONE_B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
         "num_key_value_heads": 4, "max_position_embeddings": 4096, "base_vocab_size": 32000}
TOY = {"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
       "num_key_value_heads": 2, "max_position_embeddings": 256, "base_vocab_size": 1000}


def fastest_safe_backend(device_type: str) -> str:
    """The fastest attention backend installed here that keeps packed documents apart
    (``spiritlm.components.packing.isolation_plan``): flash-attn's varlen kernel, else FlexAttention
    with a document mask (CUDA only: no backward on CPU), else sdpa with the block mask."""
    if device_type != "cuda":
        return "sdpa"
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        return "flash_attention_2"
    import importlib.util

    if importlib.util.find_spec("torch.nn.attention.flex_attention") is not None:
        return "flex_attention"
    return "sdpa"


def _overrides(shape: dict, seq_len: int, micro_batch: int, attn: str, precision: str, ckpt: bool) -> list[str]:
    tiny = [f"model.tiny.{k}={v}" for k, v in shape.items()]
    return [*tiny, f"data.seq_len={seq_len}", f"micro_batch_size={micro_batch}",
            f"global_batch_size={micro_batch}", f"model.attn_implementation={attn}",
            f"model.activation_checkpointing={'true' if ckpt else 'false'}",
            f"deepspeed.precision={precision}", "deepspeed.zero_stage=1", "model.pad_multiple=256",
            "data.synthetic_docs=256", "optim.lr=1e-4", "optim.schedule=constant", "optim.warmup_steps=0",
            "checkpoint.resume=false", "checkpoint.export_hf=false"]


def _trainer(shape: dict, seq_len: int, micro_batch: int, attn: str, precision: str, ckpt: bool, run_dir: str):
    from spiritlm.train.tiny import tiny_config
    from spiritlm.train.trainer import Trainer

    return Trainer(tiny_config(run_dir, _overrides(shape, seq_len, micro_batch, attn, precision, ckpt)))


def bench_mfu(size: str = "auto", attn: Optional[str] = None, micro_batch: Optional[int] = None,
              peak_flops: float = 0.0, checkpointing: Sequence[bool] = (False, True),
              rounds: Optional[int] = None, min_round_s: Optional[float] = None, warmup: int = 1,
              verbose: bool = True) -> list[dict]:
    """Both checkpointing settings as two live trainers, alternating on the side-by-side harness
    (``spiritlm.bench_harness``: A B A B ... rounds, median rate); one dict per setting.
    ``mfu`` is against ``peak_flops`` (default: the device's dense bf16 peak, ``guess_peak_flops``;
    None on a CPU, where the harness's report gives the share of its measured matmul peak)."""
    from spiritlm.bench_harness import Side, run_sides

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if size == "auto":
        size = "1b" if device_type == "cuda" else "toy"
    if size not in ("1b", "toy"):
        raise ValueError(f"size={size!r}: use '1b', 'toy' or 'auto'")
    shape, seq_len = (ONE_B, 4096) if size == "1b" else (TOY, 128)
    precision = "bf16" if device_type == "cuda" else "fp32"
    attn = attn or fastest_safe_backend(device_type)
    mb = micro_batch or (4 if size == "1b" else 2)
    tokens = mb * seq_len  # per optimizer step (no accumulation)
    with contextlib.ExitStack() as stack:
        trainers = {ck: _trainer(shape, seq_len, mb, attn, precision, ck,
                                 stack.enter_context(tempfile.TemporaryDirectory())) for ck in checkpointing}
        first = next(iter(trainers.values()))
        peak = peak_flops or first.peak_flops
        sides = [Side(f"checkpointing {'on' if ck else 'off'}", t.train_step, work=tokens, unit="tokens",
                      flops=t.flops_per_token * tokens, warmup=warmup) for ck, t in trainers.items()]
        m = run_sides(sides, rounds, min_round_s, peak=(peak, "the device's dense bf16 peak") if peak else None)
        params = sum(p.numel() for p in first.model.parameters())
        results = []
        for (ck, t), side in zip(trainers.items(), sides):
            tps = m.rate(side.name)
            results.append({"attn": attn, "isolation": t.isolation, "activation_checkpointing": ck,
                            "precision": precision, "seq_len": seq_len, "micro_batch": mb, "params": params,
                            "tokens_per_s": tps, "tokens_per_s_rounds": m.rates(side.name),
                            "flops_per_token": t.flops_per_token, "peak_flops": peak or None,
                            "mfu": tps * t.flops_per_token / peak if peak else None})
        if device_type == "cuda":
            results[0]["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if verbose:
        dev = torch.cuda.get_device_name() if device_type == "cuda" else "CPU"
        title = (f"bench mfu: {size} LLaMA-architecture model ({params / 1e6:,.1f}M parameters), seq {seq_len}, "
                 f"micro-batch {mb}, {precision}, attention {attn} (documents kept apart by "
                 f"{results[0]['isolation']}), on {dev}")
        pairs = [(sides[0].name, sides[1].name)] if len(sides) == 2 else []
        print(m.report(pairs, title))
        for r in results:
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (no peak known for this device)"
            print(f"  activation checkpointing {'on ' if r['activation_checkpointing'] else 'off'}: "
                  f"{r['tokens_per_s']:,.0f} tokens/s, MFU {mfu}"
                  + (" (goal >= 40%)" if r["mfu"] is not None else ""))
        if "max_memory_gib" in results[0]:
            print(f"  peak GPU memory, both trainers together: {results[0]['max_memory_gib']:.1f} GiB")
    return results
