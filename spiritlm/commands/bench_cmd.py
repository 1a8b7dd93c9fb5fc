"""``spiritlm bench NAME``: side-by-side benchmarks that print ratios measured in one run.

Every bench runs on :mod:`spiritlm.bench_harness`: its contenders alternate (A B A B ...) for
``--rounds`` rounds (default 5) of at least ``--min-round-s`` seconds (default 2) after warm-up,
and the report gives the median ratio with its min-max, the machine's load before and after, and
a warning when the spread is over 20 %. ``--threads N`` sets torch's threads for the run (printed
in the report): on a machine loaded by other processes, 1 thread per process avoids OpenMP
barriers waiting on descheduled threads, which can slow small ops 10x and swamp the comparison.
A new bench: add ``name: (function, help)`` to ``BENCHES``; its function reads ``args.rounds`` and
``args.min_round_s`` (None = the harness's defaults) and prints the harness report."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (ratios measured side by side in one run)")
    p.add_argument("name", choices=sorted(BENCHES), help="; ".join(f"{k}: {v[1]}" for k, v in BENCHES.items()))
    p.add_argument("--seconds", type=float, default=None,
                   help="vocab: utterance length (default 600); tokenizer: total audio (default 60)")
    p.add_argument("--files", type=int, default=12, help="tokenizer: number of files (varied lengths)")
    p.add_argument("--size", default=None,
                   help="train: tiny | demo | 10x (default demo); tokenizer: base | tiny (default base); "
                        "gpu: full | toy (default full)")
    p.add_argument("--repeat", type=int, default=5, help="rounds, for benches without --rounds (mfu: steps)")
    p.add_argument("--rounds", type=int, default=None, help="harness rounds (default 5; fewer = a smoke run)")
    p.add_argument("--min-round-s", type=float, default=None,
                   help="harness: seconds per side per round (default 2; shorter = a smoke run)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for this run (default: torch's)")
    p.add_argument("--clock", choices=["wall", "cpu"], default=None,
                   help="harness clock: wall (default) or this process's CPU time (with --threads 1 on a "
                        "machine loaded by others: counts the work, not the waits for a core)")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="train: both sides in fp32 (default), bf16 (ours DeepSpeed bf16, HF bf16=True autocast), "
                        "or auto (bf16 where the device runs it natively)")
    p.add_argument("--world", type=int, default=1,
                   help="train: processes (2: ours on DeepSpeed ZeRO-1 vs HF Trainer's DDP, half the cores each)")
    p.add_argument("--model", default=None, help="eval: a checkpoint dir (HF LLaMA) instead of the tiny random one; "
                                                 "t2u: a trained T2U export instead of random weights")
    p.add_argument("--device", default=None, help="eval: cpu | cuda | auto (default auto)")
    p.add_argument("--config", default=None, help="eval-dtype: a finished evaluation's config.yaml (e.g. a demo "
                                                  "step's, runs/demo/eval_interleaved_test1/config.yaml)")
    p.add_argument("--tokens", type=int, default=512, help="loss: tokens per batch (default 512)")
    p.add_argument("--chunk", type=int, default=128, help="loss: tokens per cross-entropy chunk (default 128)")
    p.add_argument("--out", default=None, help="gpu: folder for gpu_check.json and gpu_check.md (default bench_out)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="train: a TrainConfig setting, e.g. --set model.compile=true (repeatable); how ours trains "
                        "(compile, attention, ZeRO stage, loss) is ours only, the model's shape and the data "
                        "(data.sources=[...]) both sides'")
    p.set_defaults(func=_run)


def _run(args) -> int:
    if args.clock:
        import os

        os.environ["SPIRITLM_BENCH_CLOCK"] = args.clock
    if args.threads:
        import os

        import torch

        # the env too: accelerate (HF Trainer) resets torch's threads from it when it is unset
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    return int(BENCHES[args.name][0](args) or 0)


def _harness(args) -> dict:
    return {"rounds": args.rounds, "min_round_s": args.min_round_s}


def _bench_vocab(args) -> int:
    from spiritlm.vocab_bench import bench_vocab, print_report

    seconds = args.seconds or 600.0
    print_report(bench_vocab(seconds, verbose=True, **_harness(args)), seconds)
    return 0


def _bench_interleave(args) -> int:
    import os

    import numpy as np

    from spiritlm.bench_harness import Side, run_sides
    from spiritlm.data.interleave import Interleaver, synthetic_records

    saved = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
    try:
        if saved:  # one core, as the target (>= 1 M tok/s) is per core
            os.sched_setaffinity(0, {min(saved)})
        for expressive in (False, True):
            recs = synthetic_records(300, 0, expressive=expressive)
            il = Interleaver(has_pitch=expressive, has_style=expressive)
            flat, off = il.batch(recs, 0, 7)
            for i, rec in enumerate(recs):  # identical ids before anything is timed
                if not np.array_equal(flat[off[i]:off[i + 1]], il.reference(rec, 0, 7)):
                    raise AssertionError(f"implementations disagree on {rec.id}")
            epoch = [0]

            def vectorised():  # a new epoch per call: new span draws, as in training
                epoch[0] += 1
                for i in range(0, len(recs), 256):
                    il.batch(recs[i:i + 256], 0, epoch[0])

            def reference():
                epoch[0] += 1
                for rec in recs:
                    il.reference(rec, 0, epoch[0])

            sides = [Side("vectorised", vectorised, work=len(flat), unit="tok"),
                     Side("reference", reference, work=len(flat), unit="tok")]
            m = run_sides(sides, peak=False, **_harness(args))
            v = m.rate("vectorised")
            print(m.report([("vectorised", "reference")],
                           f"interleaved ids from {len(recs)} aligned records ({'expressive' if expressive else 'base'}), "
                           f"one core: vectorised vs per-word Python reference; target >= 1 M tok/s: "
                           f"{'met' if v >= 1e6 else 'NOT met'} ({v / 1e6:.2f} M)"), flush=True)
    finally:
        if saved:
            os.sched_setaffinity(0, saved)
    return 0


def _bench_train(args) -> int:
    from spiritlm.train.bench import bench_train

    bench_train(size=args.size or "demo", world=args.world, overrides=args.overrides, precision=args.precision,
                **_harness(args))  # prints the harness report
    return 0


def _bench_side_by_side(args) -> int:
    from spiritlm.train.bench import bench_side_by_side

    r = bench_side_by_side(**_harness(args))  # prints the harness report
    return 0 if r["same_losses"] else 1


def _bench_eval_dtype(args) -> int:
    from spiritlm.eval.bench import bench_eval_dtype

    if not args.config:
        raise SystemExit("bench eval-dtype: give --config, a finished evaluation's config.yaml")
    bench_eval_dtype(args.config, **_harness(args))  # prints the harness report
    return 0


def _bench_precision(args) -> int:
    from spiritlm.train.bench import bench_precision

    bench_precision(**_harness(args))  # prints the harness report
    return 0


def _bench_tokenizer(args) -> int:
    from spiritlm.tokenizer.bench import bench_tokenizer

    bench_tokenizer(seconds=args.seconds or 60.0, n_files=args.files, size=args.size or "base",
                    **_harness(args))  # prints the harness report (also `spiritlm tokenizer bench`)
    return 0


def _bench_synth(args) -> int:
    from spiritlm.corpus.synth_bench import bench_synth, print_report

    print_report(bench_synth(repeat=args.rounds, min_round_s=args.min_round_s, verbose=True))
    return 0


def _bench_t2u(args) -> int:
    import json

    import torch

    from spiritlm.models.t2u.bench import bench_t2u

    device = args.device if args.device and args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    r = bench_t2u(size=args.size or "demo", device=device, model_dir=args.model or "", **_harness(args))
    print(json.dumps({k: v for k, v in r.items() if k != "measurement"}, indent=1, default=float))
    return 0


def _bench_mfu(args) -> int:
    from spiritlm.train.bench_mfu import bench_mfu

    # ~1B at seq 4096 in bf16 on a GPU, a toy size on CPU; checkpointing off/on side by side
    bench_mfu(rounds=getattr(args, "rounds", None), min_round_s=getattr(args, "min_round_s", None))
    return 0


def _bench_eval(args) -> int:
    """``spiritlm bench eval [--model DIR] [--device D]``: a tiny random model (or ``--model``) on
    this machine's default device (or ``--device``)."""
    from spiritlm.eval.bench import bench_eval

    r = bench_eval(model_dir=getattr(args, "model", None), device=getattr(args, "device", None) or "auto",
                   rounds=getattr(args, "rounds", None), min_round_s=getattr(args, "min_round_s", None), verbose=True)
    print(f"  max |log-prob difference| batched vs one at a time {r['max_abs_logprob_diff']:.2e}, vs pack_all "
          f"{r['max_abs_logprob_diff_pack_all']:.2e}; context tokens not recomputed per pass: "
          f"{r['context_tokens_saved']}")
    if "max_abs_logprob_diff_harness" in r:
        print(f"  vs lm-evaluation-harness on the same {r['harness_items_compared']} requests: max |log-prob difference| "
              f"{r['max_abs_logprob_diff_harness']:.2e} (relative {r['max_rel_logprob_diff_harness']:.1e})")
    elif r.get("harness_skipped"):
        print(f"  lm-evaluation-harness side skipped: {r['harness_skipped']}")
    return 0


def _bench_continuous(args) -> int:
    from spiritlm.models.continuous.bench import bench_continuous

    bench_continuous(rounds=getattr(args, "rounds", None), min_round_s=getattr(args, "min_round_s", None))
    return 0


def _bench_stream(args) -> int:
    """``spiritlm bench stream [--size toy|demo] [--seconds L]`` (L: the training length)."""
    from spiritlm.models.streaming.bench import bench_stream

    bench_stream(size=args.size or "toy", train_s=args.seconds, rounds=args.rounds, min_round_s=args.min_round_s)
    return 0


def _bench_loss(args) -> int:
    """``spiritlm bench loss [--tokens N] [--chunk C]``: the LM head's cross-entropy, plain vs chunked,
    at vocabularies 32000, 128256 and 151936 (width 896), fp32, on this machine's CPU."""
    from spiritlm.train.bench_loss import bench_loss

    bench_loss(tokens=args.tokens, chunk=args.chunk, **_harness(args))  # prints the reports and the table
    return 0


def _bench_gpu(args) -> int:
    """``spiritlm bench gpu [--out DIR] [--size full|toy] [--device cuda|cpu]``: every GPU measurement the
    project owes (flash-attn varlen isolation, LM head loss, speech tokenizer, MFU) in one run, written to
    DIR/gpu_check.json and DIR/gpu_check.md; exit 1 if a measurement failed (its error is in both)."""
    from spiritlm.train.bench_gpu import bench_gpu

    device = None if args.device in (None, "auto") else args.device
    report = bench_gpu(args.out or "bench_out", size=args.size or "full", device=device)
    return 1 if any(e["status"] != "ok" for e in report["measurements"].values()) else 0


# name -> (function, help). Each function runs the benchmark and prints its report; heavy
# imports stay inside so `spiritlm --help` stays fast.
BENCHES = {
    "vocab": (_bench_vocab, "units <-> ids, string vs direct path"),
    "tokenizer": (_bench_tokenizer, "speech tokenizer: batched vs naive loop"),
    "interleave": (_bench_interleave, "interleaved id materialisation vs per-word Python"),
    "train": (_bench_train, "our training loop vs HF Trainer, tokens/s"),
    "side-by-side": (_bench_side_by_side, "two trainings side by side vs in a row (the demo's models)"),
    "precision": (_bench_precision, "the demo's model in fp32 vs bf16, time per step"),
    "eval": (_bench_eval, "pairs scored per second vs one at a time"),
    "eval-dtype": (_bench_eval_dtype, "one real evaluation (--config) scored in bfloat16 vs float32: time, items changed"),
    "mfu": (_bench_mfu, "tokens/s and MFU of a ~1B model, seq 4096, bf16, checkpointing off/on"),
    "synth": (_bench_synth, "espeak forks of a 2 GiB process: direct vs zygote"),
    "continuous": (_bench_continuous, "continuous-input training step: frozen-encoder features cached vs recomputed"),
    "loss": (_bench_loss, "LM head cross-entropy, chunked vs plain: time and peak memory at vocab 32k/128k/152k"),
    "gpu": (_bench_gpu, "every GPU measurement owed (isolation, loss, tokenizer, MFU) -> one JSON + markdown table"),
    "t2u": (_bench_t2u, "T2U decoding units/s: our KV-cached loop vs HF generate (size demo | base | toy)"),
    "stream": (_bench_stream, "streaming vs non-streaming speech LM: time and memory per chunk at 1-10x the training length"),
}
