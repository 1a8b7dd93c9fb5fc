"""Training precision that follows the hardware: ``precision = "auto"`` resolves to bf16 only
where the device runs bf16 natively, fp32 otherwise.

Why: a CPU without bf16 instructions (AVX2-only: many laptops and cloud CPUs) emulates bf16
matmuls, measured 1.0 GFLOP/s against 74.8 GFLOP/s in fp32 on a 2-core AMD EPYC, and the demo's
tiny LM trained 19x slower there in bf16 (shared/MACHINE_FACTS.md). Where the CPU has AMX or
AVX512_BF16 bf16 is faster than fp32 (here: ~4-6x on a 256-512 matmul).

    choice = resolve_precision("auto")          # PrecisionChoice(precision, requested, reason, ...)
    choice.precision                             # "bf16" | "fp32"

The rule: on CUDA, bf16 where the GPU supports it natively (Ampere and newer). On CPU, bf16 where
torch reports AMX tiles or AVX512_BF16 *and* a short bf16 matmul (one thread, 256x256, best of 3)
is faster than the same fp32 matmul; fp32 otherwise. The flags decide first so the choice is the
same on every machine of one kind; the timing guards against a CPU that reports the flags but
runs bf16 slowly. An explicit ``"bf16"`` is honoured, with a warning where it is not native.
The result is cached per process (~10 ms on a native CPU, ~0.1 s on an emulating one).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # "bf16" | "fp32": what training runs in
    requested: str  # what the recipe asked for: "auto" | "bf16" | "fp32"
    reason: str  # one line a person can read: why this precision on this device
    device: str  # "cpu" | "cuda"
    native_bf16: bool  # the device runs bf16 natively (instructions / GPU capability)
    bf16_gflops: float | None = None  # CPU only: the measured matmul rates (one thread)
    fp32_gflops: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def cpu_bf16_flags() -> list[str]:
    """The bf16-capable instruction sets torch reports on this CPU (empty: bf16 is emulated)."""
    flags = []
    for name, probe in (("AMX", "_is_amx_tile_supported"), ("AVX512_BF16", "_is_avx512_bf16_supported")):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                flags.append(name)
        except RuntimeError:  # an old build without the probe's backend: treat as absent
            pass
    return flags


def cpu_matmul_gflops(dtype: torch.dtype, n: int = 256, reps: int = 3) -> float:
    """One thread, an ``n x n`` matmul, best of ``reps`` after one warm-up: GFLOP/s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        a @ b
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return 2 * n**3 / max(best, 1e-9) / 1e9


@functools.lru_cache(maxsize=None)
def _cpu_probe() -> tuple[tuple[str, ...], float, float]:
    return tuple(cpu_bf16_flags()), cpu_matmul_gflops(torch.bfloat16), cpu_matmul_gflops(torch.float32)


def resolve_precision(requested: str, device: str | None = None) -> PrecisionChoice:
    """The precision to train in. ``device``: "cpu" / "cuda" (default: cuda when available)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision={requested!r}: use one of {', '.join(PRECISIONS)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = fp32 = None
    if device == "cuda":
        native = bool(torch.cuda.is_bf16_supported(including_emulation=False))
        why = f"{torch.cuda.get_device_name()} {'supports' if native else 'does not support'} bf16 natively"
    else:
        flags, bf16, fp32 = _cpu_probe()
        native = bool(flags) and bf16 > fp32
        rates = f"bf16 matmul {bf16:.1f} vs fp32 {fp32:.1f} GFLOP/s (1 thread, 256x256)"
        bf16, fp32 = round(bf16, 2), round(fp32, 2)  # as recorded in summary.json
        why = (f"this CPU has {'+'.join(flags)}: {rates}" if flags else
               f"this CPU has no bf16 instructions (no AMX/AVX512_BF16; torch reports "
               f"{torch.backends.cpu.get_cpu_capability()}): {rates}")
    precision = requested if requested != "auto" else ("bf16" if native else "fp32")
    if requested == "auto":
        reason = f"auto -> {precision}: {why}"
    elif requested == "bf16" and not native:
        reason = (f"bf16 as the recipe asks, although {why}; it will train far slower than fp32 "
                  "here: set deepspeed.precision=auto (or fp32)")
    else:
        reason = f"{requested} as the recipe asks ({why})"
    return PrecisionChoice(precision, requested, reason, device, native, bf16, fp32)


def log_choice(choice: PrecisionChoice, logger: logging.Logger = log) -> None:
    """Log the choice: a warning where the recipe forces bf16 on hardware that emulates it."""
    if choice.requested == "bf16" and not choice.native_bf16:
        logger.warning("precision: %s", choice.reason)
    else:
        logger.info("precision: %s", choice.reason)


def pin_precision(tcfg, device: str = "cpu"):
    """Replace ``deepspeed.precision = "auto"`` in a training config by the concrete choice on
    ``device`` (and return the config). For callers that key a cache on the resolved config
    (the demo's steps): the key then holds the precision the weights are trained in, so a bf16
    machine and an fp32 one never share a cached model."""
    tcfg.deepspeed.precision = resolve_precision(tcfg.deepspeed.precision, device).precision
    return tcfg


EVAL_DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_eval_dtype(requested: str, device: str | None = None) -> tuple[str, str]:
    """The dtype to score in, and why: "auto" is bfloat16 where the device runs it natively (the
    same probe as training's ``auto``), else float32; any other value is kept. Log-probs are
    normalised in fp32 either way (the scorer upcasts the logits); bf16 hidden states move a
    log-prob by ~1e-2, so an item whose two scores are that close can flip."""
    if requested not in EVAL_DTYPES:
        raise ValueError(f"dtype={requested!r}: use one of {', '.join(EVAL_DTYPES)}")
    if requested != "auto":
        return requested, f"{requested} as the config asks"
    choice = resolve_precision("auto", device)
    dtype = "bfloat16" if choice.precision == "bf16" else "float32"
    return dtype, choice.reason.replace(f"auto -> {choice.precision}", f"auto -> {dtype}", 1)

