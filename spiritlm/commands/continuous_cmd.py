"""``spiritlm continuous wer|compare``: the continuous-input family's evaluation tools.

    spiritlm continuous wer --model RUN/hf (--manifest M [--split heldout] | --dir D) [--beams 4]
    spiritlm continuous compare unit=runs/demo/eval_unit projector=runs/eval_proj --out runs/compare.md

Thin wrappers over :func:`spiritlm.models.continuous.asr.evaluate_asr` and
:func:`spiritlm.models.continuous.compare.summarize` / ``table``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spiritlm.commands import add_asr_items_args, asr_items


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("continuous", help="continuous-input models: ASR WER of one model, comparison table "
                                          "of several `spiritlm eval` runs",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_subparsers(dest="continuous_command", metavar="ACTION")

    w = s.add_parser("wer", help="ASR WER (jiwer) of a continuous-input model on a manifest split or a folder")
    w.add_argument("--model", required=True, help="a continuous export (<run_dir>/hf)")
    add_asr_items_args(w)
    w.add_argument("--beams", type=int, default=1, help="1 = greedy; > 1 = beam search")
    w.add_argument("--batch-size", type=int, default=8)
    w.add_argument("--max-new-tokens", type=int, default=64)
    w.add_argument("--out", default="", help="write the result JSON (with every hypothesis) here")
    w.set_defaults(func=_wer)

    c = s.add_parser("compare", help="markdown table: ASR WER, StoryCloze S->T (bootstrap 95%% CIs), trainable "
                                     "params and tokens/s of several `spiritlm eval` runs")
    c.add_argument("runs", nargs="+", metavar="NAME=EVAL_DIR", help="a `spiritlm eval` output folder, named")
    c.add_argument("--out", default="", help="write the markdown table here too (and its rows as .json)")
    c.set_defaults(func=_compare)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _wer(args) -> int:
    from spiritlm.models.continuous.asr import evaluate_asr
    from spiritlm.models.continuous.model import load_continuous

    res = evaluate_asr(load_continuous(args.model), asr_items(args), args.batch_size, args.beams, args.max_new_tokens)
    print(f"WER {100 * res['wer']:.2f}% over {res['words']} words, {res['n']} utterances "
          f"({len(res['skipped'])} skipped), {'greedy' if args.beams == 1 else f'beam {args.beams}'}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def _compare(args) -> int:
    from spiritlm.commands import named_paths
    from spiritlm.models.continuous.compare import summarize, table

    rows = {name: summarize(path) for name, path in named_paths(args.runs, "NAME=EVAL_DIR").items()}
    text = table(rows)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0
