"""``spiritlm demo``: the main job on the embedded default (see spiritlm.demo)."""

from __future__ import annotations

import argparse

from spiritlm.cli import add_recipe_args, recipe_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on the synthetic demo corpus (cached, resumable)",
        description="Corpus -> tokenizers -> alignment -> shards -> training -> evaluation on "
        "the embedded demo corpus. Settings: spiritlm.demo.DemoConfig.",
    )
    add_recipe_args(p, out_key="out_dir")
    p.add_argument("--part", dest="parts", action="append", default=[], metavar="NAME",
                   help="also run this named comparison on the demo's cached steps (repeatable; "
                   "see spiritlm.demo_parts.PARTS)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from spiritlm.config import load_config
    from spiritlm.demo import DemoConfig, run_demo

    overrides = recipe_overrides(args)
    if args.parts:  # --part A --part B is --set 'parts=[A, B]'
        overrides.append("parts=[" + ", ".join(args.parts) + "]")
    run_demo(load_config(DemoConfig, args.recipe, overrides))
    return 0
