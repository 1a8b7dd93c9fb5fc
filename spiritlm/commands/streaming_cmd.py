"""``spiritlm streaming ACTION``: the streaming speech LM's tools beside training and ``transcribe``.

    spiritlm streaming distill [RECIPE] --set teacher=RUN/hf --set manifest=M --set out=STUDENT
    spiritlm streaming export MODEL_DIR STUDENT_DIR OUT [--left-chunks L]
    spiritlm streaming align --model CTC_EXPORT --manifest M [--split train] [--limit N]
    spiritlm streaming decode --model RUN (--manifest M [--split heldout] | --dir D)
    spiritlm streaming longform --model NAME=DIR ... --manifest M [--factors 1 2 5 10]
    spiritlm streaming chunks --model DIR --manifest M [--chunks 0.64 1.28 2.56] [--windows 0 1 2]

Thin wrappers: the work is in :mod:`spiritlm.models.streaming.stream_encoder` (distill, export),
:mod:`~spiritlm.models.streaming.align`, :mod:`~spiritlm.models.streaming.decode` and
:mod:`~spiritlm.models.streaming.bench` (long-form and chunk tables).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spiritlm.commands import add_asr_items_args, asr_items


def register(sub: argparse._SubParsersAction) -> None:
    from spiritlm.commands import add_recipe_args

    p = sub.add_parser("streaming", help="streaming model tools: distil/export the chunked encoder, CTC "
                                         "alignment check, reference-decoder WER, long-form and chunk tables",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_subparsers(dest="streaming_command", metavar="ACTION")

    d = s.add_parser("distill", help="distil the full-context conformer (teacher) into the chunked streaming "
                                     "encoder; prints the held-out frame error before/after",
                     description="Settings: spiritlm.models.streaming.stream_encoder.DistillConfig "
                                 "(teacher, manifest, out, chunk_frames, left_chunks, steps, ...).")
    add_recipe_args(d)
    d.set_defaults(func=_distill)

    e = s.add_parser("export", help="copy a streaming model export with the distilled chunked encoder in it "
                                    "(streams end to end)")
    e.add_argument("model_dir", help="a streaming run dir or its hf/ export")
    e.add_argument("student_dir", help="the `streaming distill` output (encoder.safetensors + distill.json)")
    e.add_argument("out", help="the new export directory")
    e.add_argument("--left-chunks", type=int, default=None, help="encoder left context in chunks (default: distill's)")
    e.set_defaults(func=_export)

    a = s.add_parser("align", help="CTC forced alignment vs the manifest's reference word end times (JSON report)")
    a.add_argument("--model", required=True, help="a continuous export or checkpoint parts/ with ctc.safetensors")
    a.add_argument("--manifest", required=True, help="a manifest with word times (e.g. the demo corpus's)")
    a.add_argument("--split", default="train", help="manifest split ('' = all)")
    a.add_argument("--limit", type=int, default=50, help="utterances at most")
    a.add_argument("--chunk-s", type=float, default=1.28, help="also report how many words land in another chunk")
    a.add_argument("--out", default="", help="also write the JSON report here")
    a.set_defaults(func=_align)

    c = s.add_parser("decode", help="WER of a streaming model with the reference (full-recompute) greedy decoder")
    c.add_argument("--model", required=True, help="a streaming run dir or its hf/ export")
    add_asr_items_args(c)
    c.add_argument("--limit", type=int, default=0, help="first N utterances only (0 = all)")
    c.add_argument("--out", default="", help="write the result JSON (with every hypothesis) here")
    c.set_defaults(func=_decode)

    lf = s.add_parser("longform", help="WER of several models on recordings of f x the training length")
    lf.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                    help="a streaming or continuous model (repeatable)")
    lf.add_argument("--factors", type=float, nargs="+", default=[1, 2, 5, 10], help="multiples of the training length")
    ch = s.add_parser("chunks", help="WER of one streaming model vs chunk length and window at inference")
    ch.add_argument("--model", required=True, help="a streaming run dir or its hf/ export")
    ch.add_argument("--chunks", type=float, nargs="+", default=[0.64, 1.28, 2.56], help="chunk lengths, s")
    ch.add_argument("--windows", type=int, nargs="+", default=[0, 1, 2], help="decoder windows b, in chunks")
    for q in (lf, ch):
        q.add_argument("--manifest", required=True, help="a data-stage manifest")
        q.add_argument("--split", default="heldout", help="manifest split")
        q.add_argument("--out", default="", help="also write the result JSON (with the markdown table) here")
    lf.set_defaults(func=_longform)
    ch.set_defaults(func=_chunks)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _distill(args) -> int:
    from spiritlm.commands import recipe_overrides
    from spiritlm.config import load_config
    from spiritlm.models.streaming.stream_encoder import DistillConfig, distill

    rep = distill(load_config(DistillConfig, args.recipe, recipe_overrides(args)))
    print(json.dumps({k: v for k, v in rep.items() if k != "config"}, indent=1))
    return 0


def _export(args) -> int:
    from spiritlm.models.streaming.stream_encoder import export_chunked

    print(export_chunked(args.model_dir, args.student_dir, args.out, args.left_chunks))
    return 0


def _align(args) -> int:
    from spiritlm.models.streaming.align import measure_word_ends

    res = measure_word_ends(args.model, args.manifest, args.split, args.limit, args.chunk_s)
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


def _decode(args) -> int:
    from spiritlm.models.streaming.decode import evaluate_stream_asr
    from spiritlm.models.streaming.model import load_streaming

    items = asr_items(args)
    if args.limit:
        items = items[: args.limit]
    res = evaluate_stream_asr(load_streaming(args.model), items)
    print(f"WER {100 * res['wer']:.2f}% over {res['words']} words, {res['n']} utterances "
          f"({len(res['skipped'])} skipped), chunk {res['chunk_s']} s, window {res['window']}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def _write_table(res: dict, text: str, out: str) -> int:
    print(text, flush=True)
    if out:
        Path(out).write_text(json.dumps({**res, "markdown": text}, indent=1) + "\n")
    return 0


def _longform(args) -> int:
    from spiritlm.models.streaming.bench import format_longform, longform_wer

    from spiritlm.commands import named_paths

    res = longform_wer(named_paths(args.model, "--model NAME=DIR"), args.manifest, args.factors, args.split)
    return _write_table(res, format_longform(res), args.out)


def _chunks(args) -> int:
    from spiritlm.models.streaming.bench import chunk_table, format_chunk_table

    res = chunk_table(args.model, args.manifest, args.chunks, args.windows, args.split)
    return _write_table(res, format_chunk_table(res), args.out)
