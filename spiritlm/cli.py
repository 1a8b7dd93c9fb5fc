"""The ``spiritlm`` console script: one subcommand per stage.

Each stage contributes a module with ``register(subparsers)`` that adds its subcommand and sets
``func`` on its parser; heavy imports (torch, transformers) stay inside the handlers so that
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
    "spiritlm.tokenizer.cli",
    "spiritlm.commands.vocoder_cmd",
    "spiritlm.data.cli",
    "spiritlm.train.cli",
    "spiritlm.eval.cli",
    "spiritlm.commands.transcribe_cmd",
    "spiritlm.commands.bench_cmd",
    "spiritlm.commands.demo_cmd",
]


def add_recipe_args(p: argparse.ArgumentParser, recipe_required: bool = False, out_key: str | None = None) -> None:
    """The common ``RECIPE`` + ``--set key=value`` pair every configurable command takes; with
    ``out_key``, also ``--out DIR`` as a shorthand for ``--set <out_key>=DIR``."""
    p.add_argument(
        "recipe",
        nargs=None if recipe_required else "?",
        help="recipe file (.toml/.yaml) mapping onto the command's config dataclass",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set seed=3 --set model.n_layers=2 (repeatable)",
    )
    if out_key:
        p.add_argument("--out", help=f"output directory (same as --set {out_key}=...)")
        p.set_defaults(out_key=out_key)


def recipe_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides plus the one ``--out`` stands for, in that order."""
    out = getattr(args, "out", None)
    return list(args.overrides) + ([f"{args.out_key}={out}"] if out and getattr(args, "out_key", None) else [])


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


if __name__ == "__main__":
    sys.exit(main())
