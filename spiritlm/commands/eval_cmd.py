"""``spiritlm eval``, ``spiritlm eval-compare``, ``spiritlm generate`` and ``spiritlm mini-bench``."""

from __future__ import annotations

import json
import sys


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
    g.add_argument("--audio-out", metavar="FILE.wav",
                   help="vocode the generated speech into this wav (needs --vocoder or --vocoder-release)")
    g.add_argument("--vocoder", metavar="DIR", help="a vocoder directory written by `spiritlm vocoder fit`")
    g.add_argument("--vocoder-release", metavar="DIR",
                   help="the release's speech_tokenizer/ folder (its hifigan_* vocoders)")
    g.add_argument("--vocoder-variant", choices=("base", "expressive"), default=None,
                   help="release vocoder variant (default: expressive with --expressive, else base)")
    g.add_argument("--speaker", help="vocoder speaker index or name")
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
    from pathlib import Path

    from spiritlm.eval.generate import check_sampling, generate, output_speech_ids, vocode_ids
    from spiritlm.eval.model import load_speech_encoder, resolve_device
    from spiritlm.models import locate_model, require

    if not args.inputs:
        print("spiritlm generate: give at least one --text or --speech input", file=sys.stderr)
        return 2
    # every check on the arguments before the model is loaded
    check_sampling(args.temperature, args.top_p, args.max_new_tokens)
    spec, model_dir = locate_model(args.model)  # the family, from its own marker file
    require(spec, "generate", args.model)  # e.g. a hybrid model: generation needs features it cannot make
    if args.output_modality != "text":
        require(spec, "speech_out", args.model)
    audio_out = Path(args.audio_out) if args.audio_out else None
    if (args.vocoder or args.vocoder_release) and not audio_out:
        raise ValueError("--vocoder/--vocoder-release given without --audio-out FILE.wav: say where to write the audio")
    if audio_out is not None:
        if args.output_modality == "text":
            raise ValueError("--audio-out needs speech output: use --output-modality speech (or arbitrary)")
        if not (args.vocoder or args.vocoder_release):
            raise ValueError("--audio-out needs a vocoder: --vocoder DIR (`spiritlm vocoder fit`) or "
                             "--vocoder-release DIR (the release's speech_tokenizer/ folder)")
        if args.vocoder and args.vocoder_release:
            raise ValueError("give one of --vocoder and --vocoder-release, not both")
        if audio_out.suffix.lower() != ".wav" or not audio_out.parent.is_dir():
            raise ValueError(f"--audio-out {audio_out}: a .wav path in an existing folder")
    wavs = [v for k, v in args.inputs if k == "speech" and not v.lstrip().startswith("[")]
    for w in wavs:
        if not Path(w).is_file():
            raise FileNotFoundError(f"--speech {w}: no such file (a wav path, or a speech string '[Hu3][Hu7]...')")
    enc_args = dict(a.split("=", 1) for a in args.speech_encoder_arg)
    default_encoder = _is_default_encoder(args)
    if wavs and default_encoder and not enc_args:
        raise ValueError(f"--speech {wavs[0]} is audio: say which speech tokenizer encodes it, e.g. "
                         "--speech-encoder-arg directory=out/tokenizer-demo (a `spiritlm tokenizer fit` output), "
                         "or pass a speech string '[Hu3][Hu7]...' instead")
    voc = None
    if audio_out is not None:
        from spiritlm.vocoder.vocoder import Vocoder

        variant = args.vocoder_variant or ("expressive" if args.expressive else "base")
        voc = (Vocoder.load(args.vocoder) if args.vocoder else Vocoder.from_release(args.vocoder_release, variant))
        if args.speaker is not None:
            voc.default_speaker = args.speaker
    model, tok = spec.load(model_dir, resolve_device(args.device), "float32")
    try:
        enc = load_speech_encoder(args.speech_encoder, enc_args) if wavs else None
    except TypeError as e:  # the factory's own signature: name it instead of a traceback
        raise ValueError(f"--speech-encoder {args.speech_encoder} with --speech-encoder-arg {enc_args}: {e}") from None
    outs = generate(model, tok, args.inputs, args.output_modality, encoder=enc,
                    has_pitch=args.expressive, has_style=args.expressive,
                    max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                    do_sample=not args.greedy, seed=args.seed)
    for o in outs:
        text = o.content if o.content_type == "text" else tok.speech_ids_to_string(o.token_ids)
        print(f"[{o.content_type}] {text}")
    if voc is not None:
        import soundfile as sf

        ids = output_speech_ids(outs)
        if not ids:
            print(f"spiritlm generate: no speech was generated; {audio_out} not written", file=sys.stderr)
            return 1
        wav = vocode_ids(voc, ids, tok)
        sf.write(str(audio_out), wav, 16000, subtype="PCM_16")
        print(f"wrote {audio_out} ({len(wav) / 16000:.2f} s, {len(ids)} speech tokens)")
    return 0


def _is_default_encoder(args) -> bool:
    """True when --speech-encoder is the built-in SpeechTokenizer.load (which needs directory=)."""
    return args.speech_encoder == "spiritlm.tokenizer.speech_tokenizer:SpeechTokenizer.load"


def _mini(args) -> int:
    from spiritlm.eval.mini import build_mini_benchmarks

    sizes = {}
    for s in args.size:
        k, _, v = s.partition("=")
        sizes[k] = int(v)
    paths = build_mini_benchmarks(args.out_dir, seed=args.seed, sizes=sizes or None)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0
