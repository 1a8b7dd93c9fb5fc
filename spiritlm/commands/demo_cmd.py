"""``spiritlm demo``: the main job on the embedded default (see spiritlm.demo); ``spiritlm demo-parts``:
named parts on a finished demo folder's cached steps (see spiritlm.demo.parts)."""

from __future__ import annotations

import argparse

from spiritlm.commands import add_recipe_args, recipe_overrides


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
                   "see spiritlm.demo.parts.PARTS)")
    p.set_defaults(func=_run)

    q = sub.add_parser(
        "demo-parts",
        help="run named demo parts on a finished demo folder's cached steps (no main demo rerun)",
        description="Named comparisons (spiritlm.demo.parts.PARTS) on the cached steps of a demo folder, "
        "without running or waiting for the main demo.",
    )
    q.add_argument("--out", required=True, help="the demo's output folder (its out_dir)")
    q.add_argument("--part", dest="parts", action="append", required=True, metavar="NAME",
                   help="a part (repeatable): one of spiritlm.demo.parts.PARTS, e.g. streaming, hybrid, continuous")
    q.add_argument("--set", dest="overrides", action="append", default=[], metavar="PART.KEY=VALUE",
                   help="an option of one part (as part_overrides.PART in the demo), e.g. --set streaming.steps=200")
    q.set_defaults(func=_run_parts)


def _run_parts(args) -> int:
    from spiritlm.demo.cached import run_cached_parts

    run_cached_parts(args.out, args.parts, args.overrides)
    return 0


def _run(args) -> int:
    from spiritlm.config import load_config
    from spiritlm.demo.main import DemoConfig, run_demo

    overrides = recipe_overrides(args)
    if args.parts:  # --part A --part B is --set 'parts=[A, B]'
        overrides.append("parts=[" + ", ".join(args.parts) + "]")
    run_demo(load_config(DemoConfig, args.recipe, overrides))
    return 0
