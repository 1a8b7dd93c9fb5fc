"""``spiritlm eval``, ``spiritlm eval-compare``, ``spiritlm generate`` and ``spiritlm mini-bench``."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    from spiritlm.cli import add_recipe_args

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

    g = sub.add_parser("generate", help="interleaved speech/text generation restricted to one modality")
    g.add_argument("--model", required=True, help="checkpoint directory")
    g.add_argument("--text", dest="inputs", action="append", type=lambda s: ("text", s), default=[],
                   help="a text input segment (repeatable; order kept with --speech)")
    g.add_argument("--speech", dest="inputs", action="append", type=lambda s: ("speech", s),
                   help="a speech input: wav path or a speech string '[Hu3][Hu7]...'")
    g.add_argument("--output-modality", choices=("text", "speech", "arbitrary"), default="text")
    g.add_argument("--max-new-tokens", type=int)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--greedy", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--speech-encoder", default="spiritlm.tokenizer.speech_tokenizer:SpeechTokenizer.load",
                   help="package.module:factory for wav inputs (used only when a --speech is a wav)")
    g.add_argument("--speech-encoder-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="argument of the factory, e.g. directory=runs/demo/speech_tokenizer/tokenizer")
    g.add_argument("--expressive", action="store_true", help="pitch + style tokens (Expressive)")
    g.add_argument("--device", default="auto")
    g.set_defaults(func=_generate)

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


def _generate(args) -> int:
    from spiritlm.eval.generate import generate
    from spiritlm.eval.model import load_model, load_speech_encoder, resolve_device

    if not args.inputs:
        print("spiritlm generate: give at least one --text or --speech input", file=sys.stderr)
        return 2
    model, tok = load_model(args.model, resolve_device(args.device))
    needs_wav = any(k == "speech" and not v.startswith("[") for k, v in args.inputs)
    enc_args = dict(a.split("=", 1) for a in args.speech_encoder_arg)
    enc = load_speech_encoder(args.speech_encoder, enc_args) if needs_wav else None
    outs = generate(model, tok, args.inputs, args.output_modality, encoder=enc,
                    has_pitch=args.expressive, has_style=args.expressive,
                    max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                    do_sample=not args.greedy, seed=args.seed)
    for o in outs:
        text = o.content if o.content_type == "text" else tok.speech_ids_to_string(o.token_ids)
        print(f"[{o.content_type}] {text}")
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
