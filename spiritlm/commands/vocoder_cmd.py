"""``spiritlm vocoder fit|decode``: train a unit HiFi-GAN, or turn units into a wav.

    spiritlm vocoder fit tokenizers/vocoder_demo.toml --set data.tokenizer=out/tokenizer-demo --out runs/vocoder
    spiritlm vocoder decode --vocoder runs/vocoder '[Hu12][Hu7][Hu93]' --out a.wav
    spiritlm vocoder decode --release ckpt/speech_tokenizer --variant expressive units.json --out a.wav
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from spiritlm.commands import add_recipe_args

    p = sub.add_parser("vocoder", help="unit HiFi-GAN vocoder: train one, or decode units to a wav")
    vsub = p.add_subparsers(dest="vocoder_command", metavar="ACTION", required=True)

    f = vsub.add_parser("fit", help="train a unit HiFi-GAN on a corpus + speech tokenizer; reports "
                                    "pocketsphinx WER of vocoded vs original held-out audio",
                        description="Settings: spiritlm.vocoder.fit.VocoderFitConfig.")
    add_recipe_args(f, recipe_required=True, out_key="output_dir")
    f.set_defaults(func=_fit)

    g = vsub.add_parser("diagnose", help="no-training diagnosis of a tokenizer's units for vocoding: pocketsphinx "
                                         "WER and MCD of the originals, Griffin-Lim of the true spectrogram and "
                                         "per-unit mean spectra (spiritlm/vocoder/measure.py)",
                        description="Settings: spiritlm.vocoder.fit.VocoderFitConfig (data.*, model.n_fft, "
                                    "model.stft_hop, model.griffin_lim_iters, eval.n_files).")
    add_recipe_args(g, recipe_required=True, out_key="output_dir")
    g.set_defaults(func=_diagnose)

    d = vsub.add_parser("decode", help="units (speech string, token ids, or a JSON units dict) -> wav")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--vocoder", help="a directory written by `spiritlm vocoder fit`")
    src.add_argument("--release", help="the release's speech_tokenizer/ folder (or a hifigan_* folder)")
    d.add_argument("--variant", choices=("base", "expressive"), default="base", help="with --release")
    d.add_argument("units", help="a speech string '[Hu3][Hu7]...', a JSON object {\"hubert\": ..., \"pitch\": "
                                 "..., \"style\": ...} (inline or a .json file), or '-' to read stdin")
    d.add_argument("--out", required=True, help="output .wav")
    d.add_argument("--speaker", help="speaker index or name (speakers.txt); default: the vocoder's")
    d.add_argument("--style", help="global style index or name (styles.txt; Base release vocoder)")
    mode = d.add_mutually_exclusive_group()
    mode.add_argument("--deduplicated", dest="dedup", action="store_true", default=None,
                      help="the units are deduplicated (durations predicted); default: guessed")
    mode.add_argument("--frame-level", dest="dedup", action="store_false",
                      help="the units are frame-level, as `tokenizer encode` gives them")
    d.add_argument("--device", default=None)
    d.set_defaults(func=_decode)


def _fit(args) -> int:
    from spiritlm.commands import recipe_overrides
    from spiritlm.config import load_config
    from spiritlm.vocoder.fit import VocoderFitConfig, fit_vocoder

    cfg = load_config(VocoderFitConfig, args.recipe, recipe_overrides(args))
    out = fit_vocoder(cfg)
    m = json.loads((out / "metrics.json").read_text())
    t = m["train"]
    what = "mel" if "heldout_mel_l1_before" in t else "spec"  # hifigan: log-mel L1; spectral: log-magnitude L1
    print(f"wrote {out} ({t['steps']} steps in {t['seconds']} s; held-out {what} L1 "
          f"{t[f'heldout_{what}_l1_before']} -> {t[f'heldout_{what}_l1_after']})")
    if "intelligibility" in m:
        i = m["intelligibility"]
        orig = "not measured" if i["wer_original"] is None else f"{i['wer_original']:.3f}"
        print(f"pocketsphinx WER on {i['n']} held-out utterances: original {orig}, "
              f"vocoded {i['wer_vocoded']:.3f}" + (f", deduplicated + predicted durations "
                                                   f"{i['wer_vocoded_dedup']:.3f}" if "wer_vocoded_dedup" in i else "")
              + f"; MCD {i['mcd_db_vocoded']:.2f} dB")
    return 0


def _diagnose(args) -> int:
    from spiritlm.commands import recipe_overrides
    from spiritlm.config import load_config
    from spiritlm.vocoder.fit import VocoderFitConfig
    from spiritlm.vocoder.measure import diagnose

    cfg = load_config(VocoderFitConfig, args.recipe, recipe_overrides(args))
    r = diagnose(cfg)
    u = r["units"]
    print(f"units: {u['frames_per_s']:.1f} frames/s, mean run {u['mean_run_length_frames']:.2f} frames, "
          f"{u['deduplicated_units_per_s']:.1f} deduplicated units/s, {u['distinct_units']} distinct")
    for name, c in r["intelligibility"]["conditions"].items():
        extra = f", MCD {c['mcd_db']:.2f} dB, mel L1 {c['mel_l1']:.3f}" if "mcd_db" in c else ""
        print(f"{name}: WER {c['wer']:.3f}{extra}")
    print(f"wrote {cfg.output_dir}/diagnosis.json")
    return 0


def read_units_arg(text: str):
    """A speech string, an inline JSON object or a .json file -> what Vocoder.decode takes."""
    if text == "-":
        text = sys.stdin.read().strip()
    s = text.strip()
    if s.startswith("["):
        return s
    if not s.startswith("{"):
        p = Path(s)
        if not p.is_file():
            raise ValueError(f"units {s[:40]!r}: not a speech string ('[Hu..]...'), a JSON object, nor a file")
        s = p.read_text(encoding="utf-8").strip()
        if s.startswith("["):
            return s
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        raise ValueError(f"units: not valid JSON ({e})") from None
    if isinstance(obj, dict) and "units" in obj and "hubert" not in obj:  # `tokenizer encode --jsonl` lines
        obj = obj["units"]
    if not isinstance(obj, dict):
        raise ValueError("units JSON must be an object with a 'hubert' stream (and optional 'pitch', 'style')")
    return obj


def _decode(args) -> int:
    import soundfile as sf

    from spiritlm.vocoder.vocoder import Vocoder

    out = Path(args.out)
    if out.suffix.lower() != ".wav":
        raise ValueError(f"--out {out}: write a .wav file")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: folder {out.parent} does not exist")
    units = read_units_arg(args.units)
    voc = Vocoder.load(args.vocoder, args.device) if args.vocoder else Vocoder.from_release(
        args.release, args.variant, args.device)
    wav, sr = voc.decode(units, speaker=args.speaker, style=args.style, deduplicated=args.dedup)
    sf.write(str(out), wav, sr, subtype="PCM_16")
    print(f"wrote {out} ({len(wav) / sr:.2f} s at {sr} Hz)")
    return 0
