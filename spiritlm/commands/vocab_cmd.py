"""``spiritlm vocab``: inspect the id layout, convert units <-> speech strings, extend a tokenizer."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vocab", help="the speech vocabulary: ids, speech strings, tokenizer export")
    vsub = p.add_subparsers(dest="vocab_command", metavar="ACTION", required=True)

    show = vsub.add_parser("show", help="print the id layout (default: released Spirit LM)")
    show.add_argument("--base-vocab-size", type=int, default=32000)
    show.set_defaults(func=_show)

    enc = vsub.add_parser("units-to-string", help="unit streams -> speech string (release format)")
    enc.add_argument("--hubert", required=True, help='space-separated units, e.g. "78 42 81"')
    enc.add_argument("--pitch", help="pitch units at 12.5 Hz (Expressive)")
    enc.add_argument("--style", help="style units at 1 Hz (Expressive)")
    enc.set_defaults(func=_units_to_string)

    dec = vsub.add_parser("string-to-units", help="speech string -> units (JSON)")
    dec.add_argument("string", help="e.g. '[St81][Hu78][Pi13][Hu42]' ('-' reads stdin)")
    dec.set_defaults(func=_string_to_units)

    ext = vsub.add_parser(
        "extend-tokenizer",
        help="add the speech vocabulary to a text tokenizer: LLaMA-2's tokenizer.model or a tokenizer.json (Llama-3, Qwen2.5/3, ...)",
    )
    ext.add_argument("sp_model", help="tokenizer.model, tokenizer.json, or a model directory holding one")
    ext.add_argument("--out", required=True, help="output directory (HF-loadable)")
    ext.add_argument("--no-legacy", action="store_true", help="HF legacy=False text splitting")
    ext.add_argument("--layout", choices=("expressive", "base"), default="expressive",
                     help="speech tokens to add: expressive ([Hu*], [Pi*], [St*]; 32768 rows released) "
                          "or base ([Hu*] only; 32512 rows released)")
    ext.set_defaults(func=_extend)


def _show(args) -> int:
    from spiritlm.vocab import VocabLayout

    L = VocabLayout(base_vocab_size=args.base_vocab_size)
    print(f"{'token':<12}{'id':>8}")
    print(f"{L.text_marker:<12}{L.text_id:>8}")
    print(f"{L.speech_marker:<12}{L.speech_id:>8}")
    for s in L.streams.values():
        first, last = f"[{s.prefix}0]", f"[{s.prefix}{s.size - 1}]"
        print(f"{first + '..' + last:<20}{s.offset:>6}..{s.offset + s.size - 1}  "
              f"{s.name}, {s.rate:g} Hz, dedup={s.dedup}")
    print(f"vocab size {L.vocab_size} (padded to 256: {L.padded_vocab_size(256)})")
    return 0


def _units_to_string(args) -> int:
    from spiritlm.vocab import units_to_string

    units = {"hubert": args.hubert, "pitch": args.pitch or "", "style": args.style or ""}
    print(units_to_string(units, has_pitch=args.pitch is not None, has_style=args.style is not None))
    return 0


def _string_to_units(args) -> int:
    from spiritlm.vocab import string_to_units

    s = sys.stdin.read().strip() if args.string == "-" else args.string
    print(json.dumps(string_to_units(s), indent=1))
    return 0


def _extend(args) -> int:
    from dataclasses import replace
    from pathlib import Path

    from spiritlm.hf_text import HF_FILE, HFText
    from spiritlm.text_tokenizer import SP_FILE, SentencePieceText, SpiritTokenizer
    from spiritlm.vocab import SPIRITLM, SPIRITLM_BASE

    src = Path(args.sp_model)
    if src.is_dir() and not (src / SP_FILE).is_file() and (src / HF_FILE).is_file() or src.name == HF_FILE:
        text = HFText.from_dir(src)  # a byte-level BPE family (Llama-3, Qwen2.5/3, SmolLM2, OLMo-2)
    else:
        sp_file = src / SP_FILE if src.is_dir() else src
        if not sp_file.is_file():
            raise SystemExit(f"{src}: neither {SP_FILE} nor {HF_FILE} found; give a tokenizer file or a model directory")
        text = SentencePieceText(sp_file.read_bytes(), legacy=not args.no_legacy)
    layout = replace(SPIRITLM_BASE if args.layout == "base" else SPIRITLM, base_vocab_size=text.size)
    tok = SpiritTokenizer(text, layout=layout, legacy=not args.no_legacy)
    out = tok.save_pretrained(args.out)
    L = tok.layout
    print(f"wrote {out}: {L.base_vocab_size} text ids + {L.vocab_size - L.base_vocab_size} speech/marker "
          f"tokens ([Text]={L.text_id}, [Speech]={L.speech_id}, [Hu0]={L.streams['hubert'].offset})")
    return 0
