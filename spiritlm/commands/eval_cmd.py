"""``spiritlm eval``, ``spiritlm eval-compare`` and ``spiritlm mini-bench`` (``spiritlm generate``:
``generate_cmd.py``)."""

from __future__ import annotations

import json


def register(sub) -> None:
    from spiritlm.commands import add_recipe_args

    p = sub.add_parser("eval", help="zero-shot / few-shot evaluation suite -> report.md, results.json, "
                                    "items.jsonl, chart.png")
    add_recipe_args(p, recipe_required=True)
    p.add_argument("--model", help="checkpoint directory (HF LLaMA + tokenizer.model); overrides model=")
    p.add_argument("--out", help="output directory; overrides output_dir=")
    p.add_argument("--name", help="model name shown in the report")
    p.set_defaults(func=_eval)

    c = sub.add_parser("eval-compare", help="paired comparison of two `spiritlm eval` runs on the same items")
    c.add_argument("run_a", help="output directory of run A (holds items.jsonl); several runs of one "
                   "model (e.g. training seeds) as DIR1,DIR2,...: items are averaged over them")
    c.add_argument("run_b", help="output directory (or DIR1,DIR2,...) of run B")
    c.add_argument("--out", help="write comparison.md and comparison.json here (default: print)")
    c.add_argument("--names", nargs=2, default=("A", "B"), metavar=("A", "B"))
    c.set_defaults(func=_compare)

    m = sub.add_parser("mini-bench", help="build the mini benchmarks (demo grammar + espeak) in the real layouts")
    m.add_argument("out_dir")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--size", action="append", default=[], metavar="NAME=N", help="e.g. --size swuggy=40")
    m.set_defaults(func=_mini)


def _eval(args) -> int:
    from spiritlm.config import load_config
    from spiritlm.eval.suite import EvalConfig, run_suite

    overrides = list(args.overrides)
    for flag, key in ((args.model, "model"), (args.out, "output_dir"), (args.name, "name")):
        if flag:
            overrides.append(f"{key}={flag}")
    cfg = load_config(EvalConfig, args.recipe, overrides)
    res = run_suite(cfg)
    print(res["paths"]["markdown"].read_text())
    print(f"wrote {cfg.output_dir}/report.md, results.json, items.jsonl, chart.png")
    return 0


def _compare(args) -> int:
    from pathlib import Path

    from spiritlm.eval.report import (comparison_markdown, paired_compare, plot_comparison, read_items,
                                      transfer_check)

    def runs(arg: str) -> list[list[dict]]:
        return [read_items(d) for d in arg.split(",") if d]

    cmp = paired_compare(runs(args.run_a), runs(args.run_b))
    md = comparison_markdown(cmp, *args.names)
    if any(k.startswith("topic_storycloze/") for k in cmp):
        md += "\n" + transfer_check(cmp, *args.names)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.md").write_text(md)
        (out / "comparison.json").write_text(json.dumps(cmp, indent=2) + "\n")
        plot_comparison(cmp, out / "comparison.png", *args.names)
    print(md)
    return 0


def _mini(args) -> int:
    from spiritlm.eval.mini import build_mini_benchmarks

    sizes = {}
    for s in args.size:
        k, _, v = s.partition("=")
        sizes[k] = int(v)
    paths = build_mini_benchmarks(args.out_dir, seed=args.seed, sizes=sizes or None)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0
