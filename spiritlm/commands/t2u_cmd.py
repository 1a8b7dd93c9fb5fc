"""``spiritlm t2u {fit,units,report}``: the text-to-unit model of synthetic interleaving.

    spiritlm t2u fit train/t2u_demo.toml --set 'data.sources=[{path="runs/demo/shards/aligned"}]'
    spiritlm t2u units --t2u runs/t2u/run/hf "the cat sat on the mat"        # speech string of a text span
    spiritlm t2u report --t2u runs/t2u/run/hf --shards runs/demo/heldout_shards/aligned --out runs/t2u_quality
"""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    from spiritlm.commands import add_recipe_args

    p = subparsers.add_parser("t2u", help="text-to-unit model: train it, write units from text, measure them")
    sub = p.add_subparsers(dest="t2u_command", metavar="ACTION")

    f = sub.add_parser("fit", help="train a T2U model on the data stage's aligned shards (the trainer: ZeRO, "
                                   "exact resume, HF export with spiritlm_t2u.json)")
    add_recipe_args(f, recipe_required=True)
    f.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    f.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    f.set_defaults(func=_fit)

    u = sub.add_parser("units", help="text -> the speech string a T2U model writes for it")
    u.add_argument("--t2u", required=True, help="a T2U export (hf/ of `spiritlm t2u fit`)")
    u.add_argument("text", nargs="+", help="text spans (one per argument)")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--greedy", action="store_true", help="greedy decoding (default: sampled with --seed)")
    u.set_defaults(func=_units)

    r = sub.add_parser("report", help="T2U units vs real units on held-out aligned records: unit edit distance, "
                                      "a speech LM's NLL, vocoder WER")
    r.add_argument("--t2u", required=True, help="a T2U export")
    r.add_argument("--shards", required=True, help="held-out aligned shards no training saw (an aligned/ folder)")
    r.add_argument("--out", required=True, help="output directory (quality.json, quality.md)")
    r.add_argument("--lm", default="", help="a unit LM export: its NLL per unit on T2U vs real units")
    r.add_argument("--vocoder", default="", help="a `spiritlm vocoder fit` output: pocketsphinx WER of both vocoded")
    r.add_argument("--max-windows", type=int, default=200)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--greedy", action="store_true", help="greedy decoding (default: sampled with --seed)")
    r.set_defaults(func=_report)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _fit(args) -> int:
    from spiritlm.config import dump_config, load_config
    from spiritlm.models.t2u.config import T2UConfig
    from spiritlm.train.trainer import train

    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    cfg = load_config(T2UConfig, args.recipe, args.overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    run_dir = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run directory: {run_dir}; the T2U export: {run_dir}/hf")
    return 0


def _units(args) -> int:
    from spiritlm.data.records import encode_words, written_tokens
    from spiritlm.models.t2u.decode import T2U, DecodeConfig

    t2u = T2U(args.t2u)
    spans, n_words = [], []
    for text in args.text:
        words = written_tokens(text)
        bpe, _ = encode_words(t2u.tokenizer, words)
        bad = t2u.unseen_ids(bpe)
        if bad.size:
            raise SystemExit(f"{text!r}: text ids {bad.tolist()[:8]} never occurred in the T2U model's training data; "
                             "it cannot write speech for them")
        spans.append(bpe)
        n_words.append(len(words))
    units, cut = t2u.generate(spans, args.seed, DecodeConfig(mode="greedy" if args.greedy else "sample"), n_words)
    for text, u, c in zip(args.text, units, cut):
        print(f"{text}\t{t2u.tokenizer.decode(u.tolist())}" + ("\t(cut at the length cap)" if c else ""))
    return 0


def _report(args) -> int:
    from spiritlm.models.t2u.quality import QualityConfig, quality_report

    q = quality_report(QualityConfig(t2u=args.t2u, shards=args.shards, lm=args.lm, vocoder=args.vocoder,
                                     max_windows=args.max_windows, seed=args.seed,
                                     mode="greedy" if args.greedy else "sample"), args.out)
    print(q["markdown"])
    return 0
