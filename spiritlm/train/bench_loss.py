"""``spiritlm bench loss``: the LM head's cross-entropy, plain vs chunked, at large vocabularies.

One side is one forward + backward of the head and its loss over ``tokens`` hidden states of width
``dim`` (896: Qwen2.5-0.5B's), in fp32:

* ``plain``: ``F.cross_entropy(F.linear(h, W).float(), t)`` -- the model's logits, then the loss
  (what ``model.linear_ce = "plain"`` runs);
* ``chunked``: ``spiritlm.components.linear_ce.linear_cross_entropy`` with ``chunk`` tokens per chunk.

At each vocabulary (32000 Llama-2, 128256 Llama-3, 151936 Qwen2.5) the two sides alternate on
:mod:`spiritlm.bench_harness` (median ratio chunked / plain with its min-max over the rounds), and
each side's peak memory is measured once in a fresh process: the growth of its peak resident set
(``VmHWM``) over one call, after its inputs are allocated. Both sides allocate the weight's
gradient ([V, D] fp32) in that call; the rest is the logits wall: the plain side's [N, V] tensors
(logits, log-softmax, their gradients), the chunked side's [chunk, V] ones. The analytic sizes of
one [N, V] and one [chunk, V] fp32 tensor are printed beside them. Before timing, the per-token
losses of the two sides on the first 128 tokens are compared (the tests check the gradients).

Defaults (512 tokens, chunk 128, 5 rounds of >= 2 s a side) take ~2 minutes on 2 cores; a
smaller ``tokens`` / ``rounds`` / ``min_round_s`` is a smoke run (the tests use tiny sizes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Sequence

import torch
import torch.nn.functional as F

from spiritlm.components.linear_ce import linear_cross_entropy

VOCABS = (32000, 128256, 151936)  # Llama-2, Llama-3, Qwen2.5
IGNORED_SHARE = 0.05  # targets set to ignore_index, as packing leaves some


def make_inputs(vocab: int, tokens: int, dim: int, seed: int = 0):
    """(h_ND, W_VD, t_N): hidden states and head weight that require grad, fp32, written in place
    (no temporary of the weight's size: the memory child measures from after this)."""
    g = torch.Generator().manual_seed(seed)
    h_ND = torch.empty(tokens, dim).normal_(0, 1, generator=g).requires_grad_()
    W_VD = torch.empty(vocab, dim).normal_(0, dim ** -0.5, generator=g).requires_grad_()
    t_N = torch.randint(0, vocab, (tokens,), generator=g)
    t_N[torch.rand(tokens, generator=g) < IGNORED_SHARE] = -100
    return h_ND, W_VD, t_N


def per_token_loss(kind: str, h_ND, W_VD, t_N, chunk: int):
    if kind == "plain":
        return F.cross_entropy(F.linear(h_ND, W_VD).float(), t_N, ignore_index=-100, reduction="none")
    if kind == "chunked":
        return linear_cross_entropy(h_ND, W_VD, t_N, chunk_tokens=chunk)
    raise ValueError(f"unknown side {kind!r}: plain or chunked")


def step_fn(kind: str, h_ND, W_VD, t_N, chunk: int):
    """One forward + backward of the mean loss; the gradients are dropped after each call, so that
    every call allocates them again, as a training step does after zero_grad."""
    n = max(int((t_N != -100).sum()), 1)

    def step():
        (per_token_loss(kind, h_ND, W_VD, t_N, chunk).sum() / n).backward()
        h_ND.grad = W_VD.grad = None

    return step


def peak_resident_bytes() -> int:
    """This process's peak resident set: ``VmHWM`` of /proc/self/status (the address space's own
    high-water mark, new at exec), else ``ru_maxrss`` -- which a child started by fork + exec
    inherits from its parent's size at the fork on Linux, so it would hide a smaller child's peak."""
    import resource

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def peak_child(kind: str, vocab: int, tokens: int, dim: int, chunk: int, threads: int) -> dict:
    """In a fresh process (``peak_rss``): bytes the peak resident set grew by during one call."""
    import gc

    torch.set_num_threads(threads)
    h_ND, W_VD, t_N = make_inputs(vocab, tokens, dim)
    step = step_fn(kind, h_ND, W_VD, t_N, chunk)
    gc.collect()
    before = peak_resident_bytes()
    step()
    return {"peak_bytes": peak_resident_bytes() - before, "base_bytes": before}


def peak_rss(kind: str, vocab: int, tokens: int, dim: int, chunk: int) -> dict:
    """``peak_child`` run in a fresh Python process (a high-water mark cannot be reset in this one)."""
    args = [kind, vocab, tokens, dim, chunk, torch.get_num_threads()]
    code = ("import json, sys; from spiritlm.train.bench_loss import peak_child; "
            "print(json.dumps(peak_child(*json.loads(sys.argv[1]))))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mib(b: float) -> str:
    return f"{b / 2 ** 20:,.0f} MiB"


def bench_loss(vocabs: Sequence[int] = VOCABS, tokens: int = 512, dim: int = 896, chunk: int = 128,
               rounds: int | None = None, min_round_s: float | None = None, memory: bool = True,
               verbose: bool = True) -> dict:
    """Time (harness: chunked / plain) and peak memory of both sides at each vocabulary -> report
    ``{"tokens", "dim", "chunk", "vocabs": [{"vocab", "ratio", "rates", "peak_bytes", ...}]}``."""
    from spiritlm.bench_harness import Side, run_sides

    if tokens < 1 or dim < 1 or chunk < 1 or not vocabs:
        raise ValueError(f"tokens={tokens}, dim={dim}, chunk={chunk}, vocabs={list(vocabs)}: need positive sizes")
    rows = []
    for V in vocabs:
        h_ND, W_VD, t_N = make_inputs(V, tokens, dim)
        with torch.no_grad():  # the two sides' losses agree before either is timed
            k = min(tokens, 128)
            diff = (per_token_loss("plain", h_ND[:k], W_VD, t_N[:k], chunk)
                    - per_token_loss("chunked", h_ND[:k], W_VD, t_N[:k], chunk)).abs().max().item()
        # warmup 0: the calibration call warms up; every timed call allocates its tensors afresh anyway
        sides = [Side(kind, step_fn(kind, h_ND, W_VD, t_N, chunk), work=tokens, unit="tok", warmup=0)
                 for kind in ("chunked", "plain")]
        m = run_sides(sides, rounds=rounds, min_round_s=min_round_s, peak=False)
        del h_ND, W_VD, t_N, sides
        r = m.ratio("chunked", "plain")
        row = {"vocab": V, "ratio": {"median": r.median, "min": r.lo, "max": r.hi, "spread": r.spread},
               "rates": {s: m.rate(s) for s in ("chunked", "plain")}, "max_abs_loss_diff": diff,
               "logits_bytes": tokens * V * 4, "chunk_logits_bytes": min(chunk, tokens) * V * 4,
               "weight_grad_bytes": V * dim * 4, "measurement": m.as_dict([("chunked", "plain")])}
        if memory:
            row["peak_bytes"] = {s: peak_rss(s, V, tokens, dim, chunk)["peak_bytes"] for s in ("plain", "chunked")}
        rows.append(row)
        if verbose:
            print(m.report([("chunked", "plain")], f"LM head + cross-entropy, fp32, V={V:,}, {tokens} tokens x "
                           f"{dim}, chunk {chunk}: chunked vs plain (forward + backward)"), flush=True)
            print(f"  max |per-token loss chunked - plain| (first {min(tokens, 128)} tokens): {diff:.2e}", flush=True)
    report = {"tokens": tokens, "dim": dim, "chunk": chunk, "dtype": "float32", "vocabs": rows}
    if verbose:
        print(format_table(report), flush=True)
    return report


def format_table(report: dict) -> str:
    lines = [f"\nLM head + cross-entropy, {report['tokens']} tokens x {report['dim']}, fp32, chunk {report['chunk']} "
             "(speed: tokens/s chunked / plain, median (min-max) over rounds; memory: peak RSS growth over one call, "
             "fresh process)",
             "| vocab | speed chunked / plain | plain tok/s | chunked tok/s | plain peak | chunked peak | "
             "one [N, V] fp32 | one [chunk, V] fp32 | grad W |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["vocabs"]:
        q, pk = r["ratio"], r.get("peak_bytes")
        mem = (f"{_mib(pk['plain'])} | {_mib(pk['chunked'])}" if pk else "-- | --")
        lines.append(f"| {r['vocab']:,} | {q['median']:.2f}x ({q['min']:.2f}-{q['max']:.2f}) | "
                     f"{r['rates']['plain']:,.0f} | {r['rates']['chunked']:,.0f} | {mem} | {_mib(r['logits_bytes'])} | "
                     f"{_mib(r['chunk_logits_bytes'])} | {_mib(r['weight_grad_bytes'])} |")
    return "\n".join(lines)
