"""``spiritlm bench NAME``: side-by-side benchmarks that print ratios measured in one run."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (ratios measured side by side in one run)")
    p.add_argument("name", choices=sorted(BENCHES), help="; ".join(f"{k}: {v[1]}" for k, v in BENCHES.items()))
    p.add_argument("--seconds", type=float, default=600.0, help="vocab: utterance length in seconds")
    p.add_argument("--repeat", type=int, default=5)
    p.set_defaults(func=lambda args: int(BENCHES[args.name][0](args) or 0))


def _bench_vocab(args) -> int:
    from spiritlm.vocab_bench import bench_vocab, print_report

    print_report(bench_vocab(args.seconds, args.repeat), args.seconds)
    return 0


def _bench_interleave(args) -> int:
    from spiritlm.data.interleave import bench_interleave

    print("interleaved ids from aligned records, one core: vectorised vs per-word Python reference")
    for expressive in (False, True):
        r = bench_interleave(expressive=expressive, seconds=2.0)
        v, ref = r["vectorised"]["tokens_per_s"], r["reference"]["tokens_per_s"]
        print(f"  {'expressive' if expressive else 'base':<11} vectorised {v / 1e6:6.2f} M tok/s   "
              f"reference {ref / 1e6:6.2f} M tok/s   ratio {r['speedup']:5.1f}x   "
              f"(target >= 1M tok/s: {'met' if r['target_met'] else 'NOT met'})")
    return 0


def _bench_train(args) -> int:
    from spiritlm.train.bench import bench_train

    bench_train()  # prints its own side-by-side report
    return 0


def _bench_side_by_side(args) -> int:
    from spiritlm.train.bench import bench_side_by_side

    r = bench_side_by_side()  # prints its own report
    return 0 if r["same_losses"] else 1


def _bench_precision(args) -> int:
    from spiritlm.train.bench import bench_precision

    bench_precision()  # prints its own report
    return 0


def _bench_tokenizer(args) -> int:
    from spiritlm.tokenizer.bench import bench_tokenizer

    bench_tokenizer()  # prints its own side-by-side report (see `spiritlm tokenizer bench`)
    return 0


def _bench_synth(args) -> int:
    from spiritlm.corpus.synth_bench import bench_synth, print_report

    print_report(bench_synth(repeat=max(1, min(args.repeat, 3))))
    return 0


def _bench_mfu(args) -> int:
    from spiritlm.train.bench_mfu import bench_mfu

    # ~1B at seq 4096 in bf16 on a GPU, a toy size on CPU; checkpointing off/on side by side
    bench_mfu(rounds=getattr(args, "rounds", None), min_round_s=getattr(args, "min_round_s", None))
    return 0


def _bench_eval(args) -> int:
    from spiritlm.eval.bench import main

    return main(args)


def _bench_continuous(args) -> int:
    from spiritlm.models.continuous.bench import bench_continuous

    bench_continuous()  # prints its own side-by-side report (spiritlm.bench_harness)
    return 0


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
    "mfu": (_bench_mfu, "tokens/s and MFU of a ~1B model, seq 4096, bf16, checkpointing off/on"),
    "synth": (_bench_synth, "espeak forks of a 2 GiB process: direct vs zygote"),
    "continuous": (_bench_continuous, "continuous-input training step: frozen-encoder features cached vs recomputed"),
}
