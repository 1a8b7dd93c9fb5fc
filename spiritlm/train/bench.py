"""Training benchmarks on the benchmark harness (:mod:`spiritlm.bench_harness`): A and B alternate
in rounds of >= 2 s, the median ratio with its min-max and the machine's load are printed.

* ``bench_train()``: tokens/s of our DeepSpeed loop (``Trainer.fit``) against a plain HF
  ``Trainer`` on the same model, the same packed rows (our ``Packer``; for HF the shifted
  ``targets`` become ``labels`` and ``position_ids`` keep documents apart the same way), same
  micro-batch, accumulation, optimizer (AdamW), LR, clipping and precision (``precision``: fp32,
  or bf16 where ours is DeepSpeed bf16 and HF's ``bf16=True``). Both real loops run paused after
  every optimizer step, each in the main thread of a process of its own, or in threads of each
  rank for the distributed bench, so that their steps alternate (:mod:`spiritlm.train.bench_loops`).
  ``size="demo"`` is the demo's model and batch, ``"10x"`` a model with ~10x its non-embedding
  parameters; ``--set data.sources=[...]`` trains both on real shards (the demo's).
  Achieved FLOP/s (6N + attention per token) is printed against a matmul peak measured in the
  same run.
* ``bench_side_by_side()``, ``bench_precision()``: see their docstrings.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Sequence

import torch

from spiritlm.models.unit_lm import sizes as unit_lm_sizes
from spiritlm.models.unit_lm.sizes import tiny_size
from spiritlm.train import bench_loops as loops
from spiritlm.train.tiny import tiny_config

# the demo's model (DemoConfig.train_overrides) and one with ~10x its non-embedding parameters
SIZES = {
    "tiny": ["data.seq_len=128", "model.tiny.max_position_embeddings=256", "micro_batch_size=4",
             "global_batch_size=8"],
    "demo": [],  # demo_model() below
    "10x": ["model.tiny.hidden_size=384", "model.tiny.intermediate_size=1056", "model.tiny.num_attention_heads=6",
            "model.tiny.num_key_value_heads=6"],
}


def bench_train(size: str = "tiny", overrides: Sequence[str] = (), rounds: int | None = None,
                min_round_s: float | None = None, warmup: int = 2, verbose: bool = True,
                steps: int | None = None, world: int = 1, precision: str = "fp32") -> dict:
    """Ours vs HF ``Trainer`` at ``size`` (tiny | demo | 10x), both in ``precision``: "fp32" (like
    for like), "bf16" (ours: DeepSpeed bf16 -- bf16 weights and activations, fp32 master weights in
    the optimizer, what the demo trains in where the CPU has bf16; HF: ``bf16=True``, autocast over
    fp32 weights, what an HF user sets), or "auto" (bf16 where the device runs it natively,
    :func:`spiritlm.precision.resolve_precision`).
    ``steps``: fixed optimizer steps per round (default: calibrated to ``min_round_s``).
    ``world=2``: two processes (gloo; each with half the cores), ours on DeepSpeed ZeRO-1 against
    HF Trainer's DDP; every rank runs the same rounds (calls per round agreed as the max).
    Returns ``{"ours_tokens_per_s", "hf_tokens_per_s", "ratio", "ratio_stats", ...}``."""
    if world > 1:
        return _bench_train_distributed(size, overrides, rounds, min_round_s, warmup, verbose, steps, world,
                                        precision)
    return _bench_train_here(size, overrides, rounds, min_round_s, warmup, verbose, steps, precision)


def _bench_train_distributed(size, overrides, rounds, min_round_s, warmup, verbose, steps, world,
                             precision) -> dict:
    import multiprocessing as mp

    from spiritlm.train.engine import free_port

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    threads = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) // world)
    procs = [ctx.Process(target=_train_rank, args=(r, world, port, threads, q, size, list(overrides), rounds,
                                                   min_round_s, warmup, verbose, steps, precision))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"distributed train bench failed: exit codes {[p.exitcode for p in procs]}")
    return q.get(timeout=10)


def _train_rank(rank, world, port, threads, q, size, overrides, rounds, min_round_s, warmup, verbose, steps,
                precision):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads))  # accelerate resets threads without it
    torch.set_num_threads(threads)
    out = _bench_train_here(size, overrides, rounds, min_round_s, warmup, verbose and rank == 0, steps, precision)
    if rank == 0:
        q.put(out)


def _bench_overrides(size: str, overrides: Sequence[str], precision: str) -> list[str]:
    """The bench's TrainConfig settings: the size's model and batch, a constant LR, then ``overrides``."""
    base = [*demo_model(), *SIZES[size]] if size != "tiny" else SIZES["tiny"]
    return [*base, "steps=1000000", "optim.schedule=constant", "optim.warmup_steps=0",
            f"deepspeed.precision={precision}", "checkpoint.resume=false", *overrides]


def _bench_train_here(size, overrides, rounds, min_round_s, warmup, verbose, steps, precision="fp32") -> dict:
    import torch.distributed as dist

    from spiritlm.bench_harness import Side, matmul_peak, run_sides
    from spiritlm.precision import resolve_precision

    if size not in SIZES:
        raise ValueError(f"size={size!r}: choose one of {sorted(SIZES)}")
    precision = resolve_precision(precision, "cuda" if torch.cuda.is_available() else "cpu").precision
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # a rank of _bench_train_distributed
    with tempfile.TemporaryDirectory() as tmp:
        train_overrides = _bench_overrides(size, overrides, precision)
        cfg = tiny_config(f"{tmp}/ours", train_overrides)
        if distributed:  # every rank a process already: both loops in threads of it, as before
            ours_loop, hf, facts = _thread_sides(cfg, precision, tmp)
        else:  # each side in the main thread of a process of its own
            ours_loop = hf = None
            try:
                ours_loop = loops.ProcessLoop("ours", train_overrides, precision, torch.get_num_threads())
                hf = loops.ProcessLoop("hf_trainer", train_overrides, precision, torch.get_num_threads())
            except BaseException:
                for side in (ours_loop, hf):
                    if side is not None:
                        side.close()
                raise
            facts = {"ours": ours_loop.info, "hf": hf.info}
        try:
            tokens_per_step, fpt = facts["ours"]["tokens_per_step"], facts["ours"]["flops_per_token"]
            world = facts["ours"]["world"]
            sides = [Side("ours", ours_loop.step, work=tokens_per_step, unit="tok", flops=fpt * tokens_per_step,
                          warmup=warmup, reps=steps),
                     Side("hf_trainer", hf.step, work=tokens_per_step, unit="tok", flops=fpt * tokens_per_step,
                          warmup=warmup, reps=steps)]
            mt = cfg.model.tiny  # the MLP's up projection over one micro-batch: the model's typical matmul
            shape = (cfg.micro_batch_size * cfg.data.seq_len, max(256, mt.hidden_size), max(256, mt.intermediate_size))

            def peak():  # >= 256: a toy model's matmul is all overhead; every process can reach it
                f, desc = matmul_peak(torch.bfloat16 if precision == "bf16" else torch.float32, shape=shape)
                return f * world, desc + (f" x {world} processes" if world > 1 else "")
            agree = None
            if distributed:  # the same calls per round on every rank: the collectives pair up
                def agree(n: int) -> int:
                    t = torch.tensor([n], dtype=torch.int64)
                    dist.all_reduce(t, op=dist.ReduceOp.MAX)
                    return int(t.item())
            m = run_sides(sides, rounds, min_round_s, peak=peak, agree=agree)
        finally:
            hf.close()
            ours_loop.close()
    r = m.ratio("ours", "hf_trainer")
    n_params = facts["hf"]["non_embedding_params"]
    out = {"size": size, "ours_tokens_per_s": m.rate("ours"), "hf_tokens_per_s": m.rate("hf_trainer"),
           "ratio": r.median, "ratio_stats": r.as_dict(), "tokens_per_step": tokens_per_step,
           "non_embedding_params": n_params, "device": "cuda" if torch.cuda.is_available() else "cpu",
           "threads": torch.get_num_threads(), "world": world, "zero_stage": facts["ours"]["zero_stage"],
           "precision": precision, "ours_attention": facts["ours"]["attention"],
           "hf_attention": facts["hf"]["attention"], "sides_in": "threads" if distributed else "processes",
           "measurement": m.as_dict([("ours", "hf_trainer")])}
    if verbose:
        title = (f"train bench, size {size} ({n_params / 1e6:.2f} M non-embedding params, {tokens_per_step} tokens "
                 f"per optimizer step, {precision}, {out['device']}): our loop vs HF Trainer, "
                 f"each in {'a thread' if distributed else 'a process of its own'}"
                 + (f"; {out['world']} processes: ours DeepSpeed ZeRO-{out['zero_stage']}, HF DDP, rates: "
                    "tokens of both processes together, on rank 0's clock" if out["world"] > 1 else ""))
        print(m.report([("ours", "hf_trainer")], title), flush=True)
    return out


def _thread_sides(cfg, precision: str, tmp: str):
    """Both loops in threads of this (rank's) process: the distributed bench (world > 1)."""
    from spiritlm.train.trainer import Trainer

    ours = Trainer(cfg)
    built = {}

    def make_hf(callbacks):
        built["trainer"], built["model"] = loops.hf_trainer(cfg, ours.gas, ours.world > 1, precision, tmp, callbacks)
        return built["trainer"]

    hf = loops.paused_hf(make_hf)
    facts = {"ours": loops.side_info(cfg, ours.model, ours.gas, ours.world, ours.flops_per_token),
             "hf": loops.side_info(cfg, built["model"], ours.gas, ours.world, 0.0)}
    return loops.paused_ours(ours), hf, facts


def demo_model() -> list[str]:
    """The demo's language model and batch (the unit LM's named size "demo", which the demo's
    ``train_overrides`` use) on synthetic documents over the demo's text vocabulary."""
    size = tiny_size("demo")
    return [*unit_lm_sizes.overrides("demo"), "deepspeed.precision=auto",
            f"model.tiny.base_vocab_size={size.text_vocab_size}", "data.synthetic_docs=2000", "log.every=5"]


def _train_job(overrides: list[str], step_dir) -> dict:
    """One training run (a pipeline job): its losses, and its wall time in its own process."""
    from spiritlm.train.trainer import Trainer

    t0 = time.perf_counter()
    t = Trainer(tiny_config(str(step_dir / "run"), overrides))
    t.fit()
    return {"losses": [r["loss"] for r in t.history], "seconds": time.perf_counter() - t0,
            "threads": torch.get_num_threads()}


def bench_side_by_side(steps: int = 20, verbose: bool = True, rounds: int | None = None,
                       min_round_s: float | None = None) -> dict:
    """Two demo-sized trainings (data seeds 0 and 1) one after the other in this process, then
    side by side in two processes with half the cores each (spiritlm.pipeline), as the demo
    trains its two models, alternating on the harness (one pair of trainings per call). Prints
    the median wall-time ratio and whether every loss is the same."""
    from pathlib import Path

    from spiritlm.bench_harness import Side, run_sides
    from spiritlm.pipeline import Job, Pipeline

    jobs = [Job(f"seed{s}", s, _train_job, ([*demo_model(), f"steps={steps}", f"seed={s}"],)) for s in (0, 1)]
    outs: dict[str, list] = {"in_a_row": [], "side_by_side": []}
    with tempfile.TemporaryDirectory() as tmp:
        def run(name: str, workers: int):
            def call():
                k = len(outs[name])
                outs[name].append(Pipeline(Path(tmp) / f"{name}{k}", workers=workers).run_jobs(jobs))
            return call

        m = run_sides([Side("side_by_side", run("side_by_side", 2), work=2, unit="trainings", warmup=0, reps=1),
                       Side("in_a_row", run("in_a_row", 1), work=2, unit="trainings", warmup=0, reps=1)],
                      rounds, min_round_s, peak=False)
    ref = outs["in_a_row"][0]
    same = all(a["losses"] == b["losses"] for runs in outs.values() for o in runs for a, b in zip(ref, o))
    r = m.ratio("side_by_side", "in_a_row")
    out = {"in_a_row_s": 2 / m.rate("in_a_row"), "side_by_side_s": 2 / m.rate("side_by_side"),
           "speedup": r.median, "ratio": r.as_dict(), "same_losses": same, "steps": steps,
           "threads": [o["threads"] for o in outs["in_a_row"][0]] + [o["threads"] for o in outs["side_by_side"][0]],
           "measurement": m.as_dict([("side_by_side", "in_a_row")])}
    if verbose:
        t = out["threads"]
        print(m.report([("side_by_side", "in_a_row")],
                       f"side-by-side bench (2 demo-sized trainings x {steps} steps, CPU): in a row ({t[0]} threads) "
                       f"vs side by side ({t[2]} thread(s) each); same losses: {'yes' if same else 'NO'}"), flush=True)
    return out


def bench_precision(steps: int | None = None, warmup: int = 3, verbose: bool = True, rounds: int | None = None,
                    min_round_s: float | None = None) -> dict:
    """The demo's model and batch (synthetic documents) in fp32 and in bf16 (DeepSpeed bf16:
    bf16 weights and activations, fp32 optimizer state), this process, same data, optimizer steps
    alternating on the harness after ``warmup``: seconds per step and the loss of the last step
    of each. ``steps``: fixed steps per round (default: calibrated)."""
    from spiritlm.bench_harness import Side, run_sides
    from spiritlm.train.trainer import Trainer

    out: dict = {"threads": torch.get_num_threads()}
    last: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {p: Trainer(tiny_config(f"{tmp}/{p}", [*demo_model(), "steps=1000000",
                                                          f"deepspeed.precision={p}"])) for p in ("fp32", "bf16")}

        def step(p):
            return lambda: last.__setitem__(p, trainers[p].train_step())

        m = run_sides([Side(p, step(p), work=1, unit="steps", warmup=warmup, reps=steps) for p in ("bf16", "fp32")],
                      rounds, min_round_s, peak=False)
        for p in ("fp32", "bf16"):
            out[f"{p}_s_per_step"] = 1 / m.rate(p)
            out[f"{p}_last_loss"] = float(last[p]["loss"])
            out[f"{p}_steps"] = trainers[p].step
        del trainers
    r = m.ratio("bf16", "fp32")
    out.update(speedup=r.median, ratio=r.as_dict(), measurement=m.as_dict([("bf16", "fp32")]))
    if verbose:
        print(m.report([("bf16", "fp32")], f"precision bench (demo model, {out['threads']} threads): optimizer "
                                           f"steps, bf16 vs fp32; after {out['fp32_steps']} steps each the last "
                                           f"loss is fp32 {out['fp32_last_loss']:.4f}, bf16 "
                                           f"{out['bf16_last_loss']:.4f}"), flush=True)
    return out

