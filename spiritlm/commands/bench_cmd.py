"""``spiritlm bench NAME``: side-by-side benchmarks that print ratios measured in one run."""

from __future__ import annotations

import argparse
import importlib

# name -> (module, function, help). Each function runs the benchmark and prints its report.
BENCHES = {
    "vocab": ("spiritlm.commands.bench_cmd", "_bench_vocab", "units <-> ids, string vs direct path"),
    "tokenizer": ("spiritlm.tokenizer.bench", "main", "speech tokenizer: batched vs naive loop"),
    "interleave": ("spiritlm.commands.bench_cmd", "_bench_interleave", "interleaved id materialisation vs per-word Python"),
    "train": ("spiritlm.commands.bench_cmd", "_bench_train", "our training loop vs HF Trainer, tokens/s"),
    "eval": ("spiritlm.eval.bench", "main", "pairs scored per second vs one at a time"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (ratios measured side by side in one run)")
    p.add_argument("name", choices=sorted(BENCHES), help="; ".join(f"{k}: {v[2]}" for k, v in BENCHES.items()))
    p.add_argument("--seconds", type=float, default=600.0, help="vocab: utterance length in seconds")
    p.add_argument("--repeat", type=int, default=5)
    p.set_defaults(func=_run)


def _run(args) -> int:
    module, fn, _ = BENCHES[args.name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ValueError(f"benchmark {args.name!r} needs {e.name}, which is not installed/built yet") from None
    return int(getattr(mod, fn)(args) or 0)


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
