"""``spiritlm train RECIPE [--set key=value ...]``: continual pretraining (see train/README.md).

One process: ``spiritlm train train/tiny_cpu.toml``. Several: ``torchrun --nproc_per_node=8 -m
spiritlm train RECIPE`` or ``deepspeed --num_gpus 8 --module spiritlm train RECIPE``.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from spiritlm.commands import add_recipe_args

    p = subparsers.add_parser(
        "train",
        help="continual pretraining of a LLaMA checkpoint with the speech vocabulary (DeepSpeed)",
        description="Train on packed speech/interleaved/text shards; resumes from "
        "<run_dir>/checkpoints/latest; writes metrics, plots, checkpoints and an HF export.",
    )
    add_recipe_args(p)
    # the deepspeed launcher passes --local_rank=N (LOCAL_RANK is read from the environment)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_run)


def _config_class(args):
    """TrainConfig, or the config of the recipe's ``model_type`` (spiritlm.models registry)."""
    from spiritlm.config import apply_overrides, read_recipe
    from spiritlm.models import config_class_of_recipe

    data = read_recipe(args.recipe) if args.recipe else {}
    return config_class_of_recipe(apply_overrides(data, args.overrides))


def _run(args) -> int:
    import os

    from spiritlm.config import dump_config, load_config

    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    cfg = load_config(_config_class(args), args.recipe, args.overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from spiritlm.eval.during_training import DuringTrainingEval
    from spiritlm.train.trainer import train

    # evaluation while training is a component the command hands to the trainer (train/ never
    # imports eval/)
    run_dir = train(cfg, evaluator=DuringTrainingEval if cfg.eval_every else None)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run directory: {run_dir}")
    return 0
