"""The ``spiritlm`` console script (also ``python -m spiritlm``): one subcommand per stage.

Every command lives in ``spiritlm/commands/<name>_cmd.py``: a ``register(subparsers)`` that adds
its argparse parser (with a one-line ``help``) and sets ``func`` to a thin handler, which calls a
library function below it (library modules never import ``spiritlm.commands`` and keep no
``__main__`` block). Heavy imports (torch, transformers) stay inside the handlers so that
``spiritlm --help`` answers at once. A stage whose module is not there yet is simply absent.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# In pipeline order; each module defines register(subparsers).
STAGE_MODULES = [
    "spiritlm.commands.vocab_cmd",
    "spiritlm.commands.corpus_cmd",
    "spiritlm.commands.tokenizer_cmd",
    "spiritlm.commands.vocoder_cmd",
    "spiritlm.commands.prepare_cmd",
    "spiritlm.commands.hybrid_cmd",
    "spiritlm.commands.train_cmd",
    "spiritlm.commands.t2u_cmd",
    "spiritlm.commands.eval_cmd",
    "spiritlm.commands.generate_cmd",
    "spiritlm.commands.transcribe_cmd",
    "spiritlm.commands.streaming_cmd",
    "spiritlm.commands.continuous_cmd",
    "spiritlm.commands.bench_cmd",
    "spiritlm.commands.demo_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spiritlm",
        description="Spirit LM-style speech-text pretraining: corpora, speech tokenizers, "
        "interleaved shards, continual pretraining and evaluation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # The deepspeed launcher passes --local_rank=N before the subcommand; LOCAL_RANK is also set.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):  # the stage is not in this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:  # faiss logs each SIMD build it tries and fails to find at INFO, with a traceback-like line
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from spiritlm.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        # User mistakes: one clear line, no traceback (use -v for the traceback).
        if args.verbose:
            raise
        print(f"spiritlm {args.command}: error: {e}", file=sys.stderr)
        return 1
