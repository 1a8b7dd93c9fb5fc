"""``spiritlm bench NAME``: side-by-side benchmarks that print ratios measured in one run."""

from __future__ import annotations

import argparse
import importlib

# name -> (module, function, help). Each function runs the benchmark and prints its report.
BENCHES = {
    "vocab": ("spiritlm.commands.bench_cmd", "_bench_vocab", "units <-> ids, string vs direct path"),
    "tokenizer": ("spiritlm.tokenizer.bench", "main", "speech tokenizer: batched vs naive loop"),
    "interleave": ("spiritlm.data.bench", "main", "interleaved id materialisation vs per-word Python"),
    "train": ("spiritlm.train.bench", "main", "our training loop vs HF Trainer, tokens/s"),
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
