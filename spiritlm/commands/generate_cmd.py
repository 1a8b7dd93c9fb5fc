"""``spiritlm generate``: interleaved speech/text generation restricted to one modality.

The output is printed as it is produced (``[text] ...`` / ``[speech] [Hu3]...``, one line per
output segment). The new-token budget (``--max-new-tokens``, default 50 text / 300 speech tokens)
is clamped to what the model's context (``max_position_embeddings``) leaves after the prompt, with
one line on stderr; a prompt that fills the context is refused. Every argument and the model's
family are checked before the model loads.
"""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_ENCODER = "spiritlm.tokenizer.speech_tokenizer:SpeechTokenizer.load"


def register(sub) -> None:
    g = sub.add_parser("generate", help="interleaved speech/text generation restricted to one modality")
    g.add_argument("--model", required=True, help="checkpoint directory")
    g.add_argument("--text", dest="inputs", action="append", type=lambda s: ("text", s), default=[],
                   help="a text input segment (repeatable; order kept with --speech)")
    g.add_argument("--speech", dest="inputs", action="append", type=lambda s: ("speech", s),
                   help="a speech input: wav path or a speech string '[Hu3][Hu7]...'")
    g.add_argument("--output-modality", choices=("text", "speech", "arbitrary"), default="text")
    g.add_argument("--max-new-tokens", type=int,
                   help="tokens to generate at most (>= 1; default 50 text, 300 speech); clamped to the model's "
                        "context left after the prompt")
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--greedy", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--speech-encoder", default=DEFAULT_ENCODER,
                   help="package.module:factory for wav inputs (used only when a --speech is a wav)")
    g.add_argument("--speech-encoder-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="argument of the factory, e.g. directory=runs/demo/speech_tokenizer/tokenizer")
    g.add_argument("--expressive", action="store_true", help="pitch + style tokens (Expressive)")
    g.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    g.add_argument("--audio-out", metavar="FILE.wav",
                   help="vocode the generated speech into this wav (needs --vocoder or --vocoder-release)")
    g.add_argument("--vocoder", metavar="DIR", help="a vocoder directory written by `spiritlm vocoder fit`")
    g.add_argument("--vocoder-release", metavar="DIR",
                   help="the release's speech_tokenizer/ folder (its hifigan_* vocoders)")
    g.add_argument("--vocoder-variant", choices=("base", "expressive"), default=None,
                   help="release vocoder variant (default: expressive with --expressive, else base)")
    g.add_argument("--speaker", help="vocoder speaker index or name")
    g.set_defaults(func=_generate)


def _check_device(device: str) -> str:
    import torch

    from spiritlm.eval.model import resolve_device

    dev = resolve_device(device)
    try:
        kind = torch.device(dev).type
    except RuntimeError:
        raise ValueError(f"--device {device}: use auto, cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device here; use --device cpu (or auto)")
    return dev


def _generate(args) -> int:
    from spiritlm.eval.generate import TokenPrinter, check_sampling, generate, output_speech_ids, vocode_ids
    from spiritlm.eval.model import load_speech_encoder
    from spiritlm.models import locate_model, require

    if not args.inputs:
        print("spiritlm generate: give at least one --text or --speech input", file=sys.stderr)
        return 2
    # every check on the arguments before the model is loaded
    check_sampling(args.temperature, args.top_p, args.max_new_tokens)
    spec, model_dir = locate_model(args.model)  # the family, from its own marker file
    # e.g. a hybrid model: generation needs features it cannot make
    require(spec, "generate", args.model)
    if args.output_modality != "text":
        require(spec, "speech_out", args.model)
    device = _check_device(args.device)
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
        for flag, d in (("--vocoder", args.vocoder), ("--vocoder-release", args.vocoder_release)):
            if d and not Path(d).is_dir():
                raise FileNotFoundError(f"{flag} {d}: no such directory")
    wavs = [v for k, v in args.inputs if k == "speech" and not v.lstrip().startswith("[")]
    for w in wavs:
        if not Path(w).is_file():
            raise FileNotFoundError(f"--speech {w}: no such file (a wav path, or a speech string '[Hu3][Hu7]...')")
    bad = [a for a in args.speech_encoder_arg if "=" not in a or not a.split("=", 1)[0]]
    if bad:
        raise ValueError(f"--speech-encoder-arg {bad[0]}: give KEY=VALUE, e.g. directory=out/tokenizer-demo")
    enc_args = dict(a.split("=", 1) for a in args.speech_encoder_arg)
    if wavs and args.speech_encoder == DEFAULT_ENCODER and not enc_args:
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
    model, tok = spec.load(model_dir, device, "float32")
    try:
        enc = load_speech_encoder(args.speech_encoder, enc_args) if wavs else None
    except TypeError as e:  # the factory's own signature: name it instead of a traceback
        raise ValueError(f"--speech-encoder {args.speech_encoder} with --speech-encoder-arg {enc_args}: {e}") from None
    printer = TokenPrinter(tok)  # each token is printed as it is sampled
    try:
        outs = generate(model, tok, args.inputs, args.output_modality, encoder=enc,
                        has_pitch=args.expressive, has_style=args.expressive,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        do_sample=not args.greedy, seed=args.seed, on_token=printer)
    finally:
        printer.close()
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
