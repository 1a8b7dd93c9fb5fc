"""``spiritlm bench gpu``: every GPU measurement the project owes, in one run, into one JSON + table.

``bench_gpu(out_dir)`` runs, one after another, each guarded (a measurement that fails is
recorded with its error and the others still run), and writes ``<out_dir>/gpu_check.json`` and
``<out_dir>/gpu_check.md`` after every measurement, so that a run cut off by a timeout keeps
what it measured:

Order: isolation, loss, tokenizer, mfu (the largest last, so that its memory cannot crowd the
others). At toy size each measurement's ``goal_met`` is None (``goal_met_at_toy_size`` keeps
what the toy figures gave): the goals are for the full sizes on a GPU.

* ``isolation``: flash-attention varlen isolation -- a small LLaMA in the recipe's
  ``flash_attention_2`` layout (``packing.isolation_plan`` -> ``varlen``: the micro-batch
  flattened, ``cu_seq_lens``), each packed document's logits against the same document run
  alone through the same model. Goal: equal (fp32: 1e-4; bf16: 2e-2), and far from what the
  same kernel gives without the boundaries (the control). Without flash-attn (and on CPU) the
  kernel is a plain-torch stand-in of flash's varlen kernel, and the goal is recorded as not
  measured on flash.
* ``mfu``: ``bench_mfu`` -- a ~1B LLaMA, seq 4096, bf16, activation checkpointing off and on
  side by side. Goal: MFU >= 40 %. If the pair does not fit, each setting runs alone.
* ``loss``: the LM head's cross-entropy at V = 32000 / 128256 / 151936 over a 16384-token
  micro-batch (bf16 on CUDA): ``plain`` vs ``chunked`` vs liger-kernel's fused kernel (when
  installed; CUDA only). Goal: peak memory cut (the CUDA allocator's peak over one forward +
  backward) with the same per-token losses (fp32: 1e-5; bf16: 5e-2).
* ``tokenizer``: ``bench_tokenizer`` -- HuBERT-base, 60 s of audio in 12 files, our batched
  path vs the naive per-file loop. Goal: >= 3x with the same units (100 % of frames on CPU,
  >= 99 % on GPU where bf16 may be chosen).

``size="full"`` is sized to finish in under 8 minutes on one H100; ``size="toy"`` (and any run on
a CPU) runs every measurement at toy sizes in well under a minute -- which the tests do, so that
the check cannot rot. Library only: ``spiritlm bench gpu`` is the command.
"""

from __future__ import annotations

import gc
import json
import math
import time
import traceback
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

GOALS = {
    "isolation": "packed logits equal the per-document logits (flash-attn varlen)",
    "mfu": "MFU >= 40 % (~1B model, seq 4096, bf16, one GPU)",
    "loss": "fused/chunked loss cuts peak memory, with identical per-token losses",
    "tokenizer": ">= 3x the naive loop, with identical units",
    "backbones": "every LLM family trains 2 steps on the device (bf16, fastest safe attention), finite losses, ties kept",
    "t2u": "T2U decoding units/s at the paper-scale estimate's size (for docs/synthetic_interleaving.md); ours >= HF generate",
}
ORDER = ("isolation", "loss", "tokenizer", "backbones", "t2u", "mfu")  # the largest last: its memory cannot crowd the others
MFU_GOAL, TOKENIZER_GOAL = 0.40, 3.0


# ---- environment ---------------------------------------------------------------------------------
def _version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def environment(dev: torch.device) -> dict:
    """Device, versions, and whether the optional GPU kernels are installed."""
    import platform
    import subprocess

    env = {"device": str(dev), "device_name": platform.processor() or platform.machine(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "transformers": _version("transformers"), "deepspeed": _version("deepspeed"),
           "flash_attn": _version("flash-attn") if _installed("flash_attn") else None,
           "liger_kernel": _version("liger-kernel") if _installed("liger_kernel") else None,
           "flash_attn_installed": _installed("flash_attn"), "liger_kernel_installed": _installed("liger_kernel"),
           "cpu_count": __import__("os").cpu_count(), "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        env.update(device_name=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                   cudnn=torch.backends.cudnn.version(), capability=f"{p.major}.{p.minor}")
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).resolve().parent, timeout=10, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    return env


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


# ---- isolation -----------------------------------------------------------------------------------
REF_KERNEL = "spiritlm_bench_varlen_reference"


def _varlen_reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    """Flash's varlen kernel in plain torch: causal attention within each ``cu_seq_lens_q``
    sequence of one flattened row (one sequence when none are given)."""
    T = query.shape[2]
    cu = kw.get("cu_seq_lens_q")
    bounds = cu.tolist() if cu is not None else [0, T]
    out = torch.empty_like(query)
    for a, b in zip(bounds[:-1], bounds[1:]):
        out[:, :, a:b] = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def _register_reference_kernel() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(REF_KERNEL, _varlen_reference_attention)
    AttentionMaskInterface.register(REF_KERNEL, flash_attention_mask)
    return REF_KERNEL


def measure_isolation(dev: torch.device, toy: bool) -> dict:
    import numpy as np
    from transformers import LlamaConfig, LlamaForCausalLM

    from spiritlm.components.packing import (
        Packer,
        isolation_plan,
        packed_inputs,
        segment_ids_BT,
    )

    flash = dev.type == "cuda" and _installed("flash_attn")
    kernel = "flash_attention_2" if flash else _register_reference_kernel()
    dtype = torch.bfloat16 if flash else torch.float32
    B, T = (3, 16) if toy else (4, 1024)
    shape = (dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2) if toy else
             dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300 if toy else 4000, max_position_embeddings=T, **shape)
    cfg._attn_implementation = kernel
    model = LlamaForCausalLM(cfg).to(dev, dtype).eval()
    rng = np.random.default_rng(0)
    hi = T if toy else T // 2
    docs = [{"input_ids": rng.integers(3, cfg.vocab_size, int(n)), "kind": "text"}
            for n in rng.integers(3, hi, 64)]
    batch = Packer(iter(docs), seq_len=T).next_batch(B)
    inputs = packed_inputs(batch, isolation_plan("flash_attention_2", "position_ids", dev.type, training=False), dev)
    with torch.no_grad():
        packed = model(**inputs, use_cache=False).logits.float().reshape(B, T, -1)
        seg = segment_ids_BT(batch["position_ids_BT"])
        err, scale, n_segments = 0.0, 0.0, 0
        for b in range(B):
            for s in seg[b].unique():
                where = (seg[b] == s).nonzero().flatten()
                ids = batch["input_ids_BT"][b, where][None].to(dev)
                alone = model(input_ids=ids, use_cache=False).logits.float()[0]
                err = max(err, (packed[b, where.to(dev)] - alone).abs().max().item())
                scale = max(scale, alone.abs().max().item())
                n_segments += 1
        # the control: the same kernel over the whole flattened micro-batch as one sequence
        n = B * T
        cu = torch.tensor([0, n], dtype=torch.int32, device=dev)
        whole = {**inputs, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": n, "max_length_k": n}
        mixed = model(**whole, use_cache=False).logits.float().reshape(B, T, -1)
        control = (mixed - packed).abs().max().item()
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    met = bool(err <= tol and control > 10 * err)
    return {"kernel": kernel, "flash_attn": flash, "dtype": str(dtype).replace("torch.", ""),
            "micro_batch": B, "seq_len": T, "segments": n_segments, "max_abs_logit_diff": err,
            "max_abs_logit": scale, "control_max_abs_diff_without_boundaries": control, "tolerance": tol,
            "goal_met": met if flash else None,
            "note": None if flash else ("flash-attn not installed (or no GPU): a plain-torch stand-in of its "
                                        f"varlen kernel ran; equal within tolerance: {met}")}


# ---- MFU -----------------------------------------------------------------------------------------
def measure_mfu(dev: torch.device, toy: bool) -> dict:
    from spiritlm.train.bench_mfu import bench_mfu

    size = "toy" if toy else "1b"
    harness = {"rounds": 2, "min_round_s": 0.05} if toy else {"rounds": 5, "min_round_s": 2.0}
    note, rows = None, None
    try:
        rows = bench_mfu(size=size, **harness)
    except torch.cuda.OutOfMemoryError as e:  # the two trainers together do not fit: one at a time
        note = f"both trainers did not fit together ({str(e).splitlines()[0][:160]}); each setting ran alone"
    if rows is None:  # outside the except block: its traceback no longer holds the trainers' memory
        rows = []
        for ck in (False, True):
            _free(dev)
            try:
                rows += bench_mfu(size=size, checkpointing=(ck,), **harness)
            except torch.cuda.OutOfMemoryError as e2:
                rows.append({"activation_checkpointing": ck, "error": f"OutOfMemoryError: {str(e2).splitlines()[0]}"})
    mfus = [r["mfu"] for r in rows if r.get("mfu") is not None]
    best = max(mfus) if mfus else None
    return {"size": size, "settings": rows, "best_mfu": best,
            "tokens_per_s": {("checkpointing on" if r["activation_checkpointing"] else "checkpointing off"):
                             r.get("tokens_per_s") for r in rows},
            "goal_met": (best >= MFU_GOAL) if best is not None else None,
            "note": note or (None if best is not None else "no peak FLOP/s known for this device: no MFU")}


# ---- loss ----------------------------------------------------------------------------------------
def measure_loss(dev: torch.device, toy: bool) -> dict:
    from spiritlm.bench_harness import Side, run_sides
    from spiritlm.components.linear_ce import liger_cross_entropy
    from spiritlm.train.bench_loss import make_inputs, per_token_loss

    vocabs, tokens, dim, chunk = ((1000,), 64, 32, 16) if toy else ((32000, 128256, 151936), 16384, 896, 4096)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    harness = {"rounds": 2, "min_round_s": 0.05} if toy else {"rounds": 5, "min_round_s": 1.0}
    liger = dev.type == "cuda" and _installed("liger_kernel")
    kinds = ("plain", "chunked") + (("liger",) if liger else ())
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-5

    def losses(kind, h, W, t):
        return liger_cross_entropy(h, W, t) if kind == "liger" else per_token_loss(kind, h, W, t, chunk)

    rows = []
    for V in vocabs:
        h, W, t = (x.detach() for x in make_inputs(V, tokens, dim))
        h = h.to(dev, dtype).requires_grad_()
        W = W.to(dev, dtype).requires_grad_()
        t = t.to(dev)
        step_of = _loss_steps(losses, h, W, t, dev)

        with torch.no_grad():
            k = min(tokens, 1024)
            ref = losses("plain", h[:k], W, t[:k])
            diffs = {kind: (losses(kind, h[:k], W, t[:k]) - ref).abs().max().item() for kind in kinds if kind != "plain"}
            del ref
        peaks = {}
        if dev.type == "cuda":
            for kind in kinds:
                _free(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                base = torch.cuda.memory_allocated(dev)
                step_of(kind)()
                peaks[kind] = torch.cuda.max_memory_allocated(dev) - base
        sides = [Side(kind, step_of(kind), work=tokens, unit="tok", warmup=0) for kind in kinds]
        m = run_sides(sides, peak=False, **harness)
        pairs = [(kind, "plain") for kind in kinds if kind != "plain"]
        print(m.report(pairs, f"bench gpu / loss: V={V:,}, {tokens} tokens x {dim}, {dtype}, chunk {chunk}, {dev}"),
              flush=True)
        fused = {kind: peaks[kind] for kind in kinds if kind != "plain" and kind in peaks}
        rows.append({"vocab": V, "rates_tok_per_s": {kind: m.rate(kind) for kind in kinds},
                     "speed_vs_plain": {kind: m.ratio(kind, "plain").as_dict() for kind in kinds if kind != "plain"},
                     "max_abs_loss_diff_vs_plain": diffs, "peak_bytes": peaks or None,
                     "memory_cut_vs_plain": ({kind: peaks["plain"] / max(p, 1) for kind, p in fused.items()}
                                             if "plain" in peaks else None),
                     "logits_bytes_fp32": tokens * V * 4})
        del h, W, t, sides, m, step_of
        _free(dev)
    same = all(d <= tol for r in rows for d in r["max_abs_loss_diff_vs_plain"].values())
    cut = [c for r in rows if r["memory_cut_vs_plain"] for c in r["memory_cut_vs_plain"].values()]
    met = (same and bool(cut) and min(cut) > 1.0) if cut else None
    return {"tokens": tokens, "dim": dim, "chunk": chunk, "dtype": str(dtype).replace("torch.", ""), "kinds": list(kinds),
            "liger_ran": liger, "loss_tolerance": tol, "same_losses": same, "vocabs": rows, "goal_met": met,
            "note": "; ".join(x for x in (
                None if liger else "liger-kernel not installed or no GPU: liger not measured",
                None if dev.type == "cuda" else "peak memory on CUDA only (on CPU: spiritlm bench loss)") if x) or None}


def _loss_steps(losses: Callable, h, W, t, dev: torch.device) -> Callable[[str], Callable[[], None]]:
    """kind -> one forward + backward of the mean loss; the gradients are dropped after each call
    (every call allocates them again, as a training step after zero_grad does)."""
    n = max(int((t != -100).sum()), 1)

    def step_of(kind: str) -> Callable[[], None]:
        def step() -> None:
            (losses(kind, h, W, t).sum() / n).backward()
            h.grad = W.grad = None
            _sync(dev)
        return step

    return step_of


# ---- tokenizer -----------------------------------------------------------------------------------
def measure_tokenizer(dev: torch.device, toy: bool) -> dict:
    from spiritlm.tokenizer.bench import bench_tokenizer

    kw = (dict(seconds=4.0, n_files=3, size="tiny", rounds=2, min_round_s=0.05) if toy
          else dict(seconds=60.0, n_files=12, size="base"))
    r = bench_tokenizer(device=dev.type, verbose=True, **kw)
    need = 1.0 if dev.type == "cpu" else 0.99
    return {**{k: r.get(k) for k in ("device", "size", "audio_s", "files", "layer", "ours_audio_s_per_s",
                                      "naive_audio_s_per_s", "speedup", "ratio", "unit_agreement")},
            "unit_agreement_needed": need,
            "goal_met": bool(r["speedup"] >= TOKENIZER_GOAL and r["unit_agreement"] >= need)}


# ---- backbones -------------------------------------------------------------------------------------
def measure_backbones(dev: torch.device, toy: bool) -> dict:
    """Each family's tiny stand-in (spiritlm.models.unit_lm.families: its own transformers config,
    a tokenizer of its kind) trained 2 steps by our trainer on ``dev``: bf16 and the fastest
    isolation-safe attention on a GPU (flash-attn varlen where installed), fp32 sdpa on a CPU.
    The architectures differ where kernels do (Qwen2's q/k/v biases, Qwen3's and OLMo-2's q/k
    norms, tied heads), so each is run, not only LLaMA."""
    import tempfile

    from spiritlm.models.unit_lm.families import FAMILIES, TINY_TEXT, make_tiny_checkpoint
    from spiritlm.text_tokenizer import SpiritTokenizer
    from spiritlm.train.bench_mfu import fastest_safe_backend
    from spiritlm.train.tiny import tiny_config
    from spiritlm.train.trainer import Trainer

    attn = fastest_safe_backend(dev.type)
    precision = "bf16" if dev.type == "cuda" else "fp32"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, fam in FAMILIES.items():
            t0 = time.perf_counter()
            row = {"family": name, "model_type": fam.model_type}
            try:
                ckpt = make_tiny_checkpoint(name, Path(tmp) / name, TINY_TEXT, vocab_size=300)
                bos = SpiritTokenizer.from_pretrained(ckpt).bos_id
                t = Trainer(tiny_config(f"{tmp}/{name}_run", [
                    "steps=2", f"model.checkpoint={ckpt}", "model.pitch_size=0", "model.style_size=0",
                    f"data.bos_id={bos}", f"deepspeed.precision={precision}", f"model.attn_implementation={attn}"]))
                m = t.engine.module
                tied = m.get_output_embeddings().weight is m.get_input_embeddings().weight
                t.fit()
                losses = [r["loss"] for r in t.history]
                row.update(ok=all(math.isfinite(x) for x in losses) and tied == fam.tie, losses=losses, tied=tied,
                           isolation=t.plan.isolation)
                del t, m
            except Exception as e:  # noqa: BLE001 -- one family's failure is a result, the others still run
                row.update(ok=False, error=f"{type(e).__name__}: {e}"[:400])
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            _free(dev)
    return {"attention": attn, "precision": precision, "families": rows,
            "goal_met": all(r["ok"] for r in rows)}


def measure_t2u(dev: torch.device, toy: bool) -> dict:
    """The T2U model's decoding rate (``spiritlm.models.t2u.bench``): size ``base`` (~85 M) with
    1024 spans at batch 256 on the GPU, ``toy`` on CPU; ours vs HF generate on the same spans."""
    from spiritlm.models.t2u.bench import bench_t2u

    r = bench_t2u(size="toy" if toy else "base", spans=64 if toy else 1024, batch_size=32 if toy else 256,
                  device=str(dev), rounds=2 if toy else 3, min_round_s=0.2 if toy else 2.0)
    r.pop("measurement", None)
    q = r["ratio_vs_hf_generate"]
    return {**r, "goal_met": bool(q and q["min"] >= 1.0)}


MEASURES: dict[str, Callable[[torch.device, bool], dict]] = {
    "isolation": measure_isolation, "loss": measure_loss, "tokenizer": measure_tokenizer,
    "backbones": measure_backbones, "t2u": measure_t2u, "mfu": measure_mfu}


# ---- the run -------------------------------------------------------------------------------------
def bench_gpu(out_dir, size: str = "full", device: Optional[str] = None,
              only: Optional[Sequence[str]] = None) -> dict:
    """Run every measurement (``only``: a subset of ``ORDER``) -> the report written to
    ``<out_dir>/gpu_check.json`` and ``gpu_check.md``. ``device``: None = cuda when available;
    a CPU (or ``size="toy"``) runs toy sizes."""
    if size not in ("full", "toy"):
        raise ValueError(f"size={size!r}: 'full' or 'toy'")
    names = list(only) if only else list(ORDER)
    unknown = sorted(set(names) - set(MEASURES))
    if unknown:
        raise ValueError(f"unknown measurement(s) {unknown}: one of {list(ORDER)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    toy = size == "toy" or dev.type != "cuda"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"size": "toy" if toy else "full", "requested_size": size, "environment": environment(dev),
              "goals": {k: GOALS[k] for k in names}, "measurements": {}, "total_s": None}
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        print(f"\n=== bench gpu: {name} ({'toy' if toy else 'full'} size, {dev}) ===", flush=True)
        try:
            entry = {"status": "ok", **MEASURES[name](dev, toy)}
        except Exception as e:  # noqa: BLE001 -- one failing measurement must not stop the others
            entry = {"status": "error", "error": f"{type(e).__name__}: {e}",
                     "traceback": traceback.format_exc()[-4000:], "goal_met": None}
            print(f"bench gpu: {name} failed: {entry['error']}", flush=True)
        entry["goal"] = GOALS[name]
        if toy and entry.get("goal_met") is not None:  # the goals are for the full sizes on a GPU
            entry["goal_met_at_toy_size"], entry["goal_met"] = entry["goal_met"], None
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        report["measurements"][name] = entry
        report["total_s"] = round(time.perf_counter() - t_all, 1)
        write(report, out)  # after every measurement: a run cut off keeps what it measured
        _free(dev)
    print(format_markdown(report), flush=True)
    return report


def write(report: dict, out: Path) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "gpu_check.md").write_text(format_markdown(report))


def _pct(x) -> str:
    return f"{100 * x:.1f} %" if x is not None else "n/a"


def _mib(b) -> str:
    return f"{b / 2**20:,.0f} MiB" if b is not None else "n/a"


def figure(name: str, e: dict) -> str:
    """One line of the measured figures of a measurement (its error when it failed)."""
    if e.get("status") != "ok":
        return f"ERROR: {e.get('error', '?')}"[:300]
    if name == "isolation":
        return (f"{e['kernel']}, {e['dtype']}, {e['segments']} documents: max abs logit diff {e['max_abs_logit_diff']:.2e} "
                f"(tol {e['tolerance']:g}; without boundaries {e['control_max_abs_diff_without_boundaries']:.2e})")
    if name == "mfu":
        parts = [f"ckpt {'on' if r['activation_checkpointing'] else 'off'}: "
                 + (f"{r['tokens_per_s']:,.0f} tok/s, MFU {_pct(r.get('mfu'))}" if "tokens_per_s" in r else r["error"])
                 for r in e["settings"]]
        return f"{e['size']}: " + "; ".join(parts)
    if name == "loss":
        parts = []
        for r in e["vocabs"]:
            pk = r["peak_bytes"] or {}
            mem = ", ".join(f"{k} {_mib(v)}" for k, v in pk.items()) or "peak not measured"
            speed = ", ".join(f"{k} {d['median']:.2f}x" for k, d in r["speed_vs_plain"].items())
            diff = ", ".join(f"{k} {d:.1e}" for k, d in r["max_abs_loss_diff_vs_plain"].items())
            parts.append(f"V={r['vocab']:,}: {mem}; speed vs plain {speed}; loss diff {diff}")
        return f"{e['tokens']} tok x {e['dim']}, {e['dtype']}: " + " / ".join(parts)
    if name == "tokenizer":
        q = e["ratio"]
        return (f"{e['size']}, {e['audio_s']} s audio: ours / naive {q['median']:.2f}x ({q['min']:.2f}-{q['max']:.2f}), "
                f"units identical on {100 * e['unit_agreement']:.3f} % of frames")
    if name == "backbones":
        return (f"{e['precision']}, {e['attention']}: " + ", ".join(
            f"{r['family']} {'ok' if r['ok'] else 'FAILED' + (': ' + r['error'][:80] if 'error' in r else '')}"
            for r in e["families"]))
    if name == "t2u":
        q = e["ratio_vs_hf_generate"] or {}
        return (f"{e['size']} ({e['non_embedding_params']:,} params), {e['dtype']}, batch {e['batch_size']}: "
                f"{e['units_per_s']:,.0f} units/s, {_pct(e.get('share_of_matmul_peak'))} of the matmul peak; ours / HF "
                f"generate {q.get('median', float('nan')):.2f}x ({q.get('min', float('nan')):.2f}-{q.get('max', float('nan')):.2f})")
    return json.dumps({k: v for k, v in e.items() if k not in ("goal", "traceback")}, default=str)[:300]


def format_markdown(report: dict) -> str:
    env, toy = report["environment"], report["size"] == "toy"
    lines = [f"# GPU check ({report['size']} size)", "",
             (f"Device: {env.get('device_name')} ({env['device']}); torch {env['torch']}, CUDA {env['cuda']}, "
             f"transformers {env.get('transformers')}, deepspeed {env.get('deepspeed')}; flash-attn "
             f"{env.get('flash_attn') or 'not installed'}; liger-kernel {env.get('liger_kernel') or 'not installed'}; "
             f"commit {env.get('commit')}; {env['time']}; total {report.get('total_s')} s."), "",
             "| measurement | figures | goal | goal met | s |", "|---|---|---|---|---|"]
    for name, e in report["measurements"].items():
        met = {True: "yes", False: "**no**", None: "not judged (toy size)" if toy else "not measured"}[e.get("goal_met")]
        cell = figure(name, e).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {name} | {cell} | {e['goal']} | {met} | {e.get('seconds')} |")
    notes = [f"- {name}: {e['note']}" for name, e in report["measurements"].items() if e.get("note")]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"
