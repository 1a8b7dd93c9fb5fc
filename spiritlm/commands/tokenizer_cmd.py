"""``spiritlm tokenizer {fit,encode,consistency,report,bench}``.

    spiritlm tokenizer fit tokenizers/demo.toml --corpus data/demo_corpus/manifest.jsonl --out out/tokenizer-demo
    spiritlm tokenizer encode --tokenizer out/tokenizer-demo a.wav b.flac           # speech strings
    spiritlm tokenizer encode --tokenizer out/tokenizer-demo --jsonl units.jsonl *.wav
    spiritlm tokenizer encode --release checkpoints/speech_tokenizer --variant expressive a.wav  # Meta's files
    spiritlm tokenizer fit tokenizers/base.toml --set release.path=checkpoints/speech_tokenizer --out out/tok-release
    spiritlm tokenizer report --corpus data/demo_corpus/manifest.jsonl --tokenizer hubert=out/tokenizer-demo \
        --tokenizer semantic=out/tokenizer-semantic --real-speech ../shared/data/real_speech/librivox --out out/units
    spiritlm tokenizer bench --seconds 60
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from spiritlm.commands import add_recipe_args

    p = subparsers.add_parser("tokenizer", help="speech tokenizer: fit codebooks, encode audio, benchmark")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")

    f = sub.add_parser("fit", help="train k-means / VQ-VAE / style codebooks and write a tokenizer directory")
    add_recipe_args(f, recipe_required=True)
    f.add_argument("--corpus", default=None,
                   help="manifest.jsonl of the training audio (not needed when the recipe sets release.path)")
    f.add_argument("--out", required=True, help="output tokenizer directory")
    f.add_argument("--no-eval", action="store_true", help="demo recipes: skip the PNMI evaluation")
    f.set_defaults(func=_fit)

    e = sub.add_parser("encode", help="audio files -> speech strings (stdout) or JSONL units")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokenizer", help="tokenizer directory written by `fit`")
    src.add_argument("--release", metavar="DIR", help="the release's checkpoints/speech_tokenizer/ folder, used as shipped")
    e.add_argument("--variant", choices=["base", "expressive"], default="base", help="with --release: which tokenizer")
    e.add_argument("--f0-method", choices=["yaapt", "fcpe"], default="yaapt",
                   help="with --release --variant expressive: F0 extractor (fcpe, the release's default, needs "
                        "torchaudio and cannot run on this stack)")
    e.add_argument("files", nargs="+", help="audio files (wav/flac/...)")
    e.add_argument("--jsonl", default=None, help="write {file, units, string, ids} lines here instead of printing")
    e.add_argument("--device", default=None, help="cpu | cuda (default: the tokenizer's setting)")
    e.set_defaults(func=_encode)

    c = sub.add_parser("consistency", help="how alike the units of repeated words are (needs word times)")
    c.add_argument("--tokenizer", required=True, help="tokenizer directory written by `fit`")
    c.add_argument("--corpus", required=True, help="manifest.jsonl with word alignments")
    c.add_argument("--split", default="train", help="manifest split ('' = all rows)")
    c.add_argument("--max-files", type=int, default=150)
    c.add_argument("--mfcc-baseline", action="store_true",
                   help="also report k-means units of MFCCs at the tokenizer's frame rate (k = its unit count)")
    c.set_defaults(func=_consistency)

    r = sub.add_parser("report", help="unit quality of several tokenizers side by side: PNMI, ABX, bitrate, "
                                      "word distance (+ MFCC and random-init baselines)")
    r.add_argument("--corpus", required=True, help="manifest.jsonl with phone alignments (e.g. the demo corpus)")
    r.add_argument("--tokenizer", action="append", required=True, metavar="NAME=DIR",
                   help="a row: a tokenizer directory written by `fit` (repeat for each unit family)")
    r.add_argument("--out", required=True, help="output directory (report.json, report.md)")
    r.add_argument("--split", default="heldout", help="manifest split measured (no fit saw it)")
    r.add_argument("--max-files", type=int, default=120)
    r.add_argument("--real-speech", default="", metavar="DIR",
                   help="also the word distance on real speech: <id>.wav + <id>.json word times (LibriVox format); "
                        "with <id>.txt transcripts also PNMI and ABX against pocketsphinx's phone alignment")
    r.add_argument("--vocoder", action="append", default=[], metavar="NAME=DIR",
                   help="a `spiritlm vocoder fit` output trained on row NAME's units: its WER joins the table")
    r.add_argument("--no-baselines", action="store_true", help="skip the MFCC and random-init k-means rows")
    r.add_argument("--save-baselines", default="", metavar="DIR",
                   help="write each baseline row as a tokenizer directory DIR/<row name>, to train a vocoder on "
                        "its units (`spiritlm vocoder fit ... --set data.tokenizer=DIR/mfcc_kmeans`)")
    r.add_argument("--layers", type=int, nargs="+", default=[], metavar="L",
                   help="also k-means on these layers of each tokenizer's encoder (rows NAME_layerL): to choose a layer")
    r.set_defaults(func=_report)

    b = sub.add_parser("bench", help="audio-seconds per wall-second: batched path vs a naive loop")
    b.add_argument("--seconds", type=float, default=60.0, help="total audio to tokenize")
    b.add_argument("--files", type=int, default=12, help="number of files (varied lengths)")
    b.add_argument("--size", choices=["base", "tiny"], default="base", help="random HuBERT size")
    b.add_argument("--device", default="auto")
    b.add_argument("--long-file-minutes", type=float, nargs="+", default=None, metavar="MIN",
                   help="instead: peak memory of encoding one file of each length, e.g. 6 60")
    b.set_defaults(func=_bench)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _fit(args: argparse.Namespace) -> int:
    from spiritlm.config import load_config
    from spiritlm.tokenizer.config import TokenizerCfg

    cfg = load_config(TokenizerCfg, args.recipe, args.overrides)
    if cfg.release.path:  # nothing to train: a directory that points at the release's files
        from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

        out = SpeechTokenizer.from_config(cfg).save(args.out)
        print(f"tokenizer written to {out} (release files used in place from {cfg.release.path})")
        return 0
    if not args.corpus:
        raise ValueError("--corpus is required to fit a tokenizer (or set release.path in the recipe to use "
                         "the release's files)")
    if cfg.demo.enabled:
        from spiritlm.tokenizer.tiny_hubert import fit_demo_tokenizer

        out = fit_demo_tokenizer(cfg, args.corpus, args.out, evaluate=not args.no_eval)
        metrics = out / "metrics.json"
        if metrics.is_file():
            print(metrics.read_text())
    else:
        from spiritlm.tokenizer.fit import fit_tokenizer

        out = fit_tokenizer(cfg, args.corpus, args.out)
    print(f"tokenizer written to {out}")
    return 0


def _named_dirs(pairs: list[str], flag: str) -> dict[str, str]:
    out = {}
    for p in pairs:
        name, sep, d = p.partition("=")
        if not sep or not name or not d:
            raise ValueError(f"{flag} {p!r}: write NAME=DIR, e.g. {flag} semantic=out/tokenizer-semantic")
        if name in out:
            raise ValueError(f"{flag}: the name {name!r} is given twice; each row needs its own name")
        out[name] = d
    return out


def _report(args: argparse.Namespace) -> int:
    from spiritlm.tokenizer.report import ReportConfig, unit_report

    cfg = ReportConfig(corpus=args.corpus, tokenizers=_named_dirs(args.tokenizer, "--tokenizer"), split=args.split,
                       max_files=args.max_files, baselines=not args.no_baselines, real_speech=args.real_speech,
                       vocoder_dirs=_named_dirs(args.vocoder, "--vocoder"), layers=args.layers,
                       save_baselines=args.save_baselines)
    unit_report(cfg, args.out)
    print((Path(args.out) / "report.md").read_text())
    return 0


def _check_output_path(path: str) -> None:
    """Fail before any (slow) encoding if the output cannot be written."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        raise ValueError(f"--jsonl {p} is a directory: give a file path")
    if not p.parent.is_dir():
        raise ValueError(f"--jsonl {p}: folder {p.parent} does not exist (create it first)")
    import os

    if not os.access(p if p.exists() else p.parent, os.W_OK):  # checked without creating the file
        raise ValueError(f"--jsonl {p}: no permission to write there")


def _encode(args: argparse.Namespace) -> int:
    import json
    import sys

    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    if args.jsonl:
        _check_output_path(args.jsonl)
    if args.release:
        tok = SpeechTokenizer.from_release(args.release, variant=args.variant, device=args.device,
                                           f0_method=args.f0_method)
    else:
        tok = SpeechTokenizer.load(args.tokenizer, device=args.device)
    results = tok.encode_many(args.files, progress=True)
    sink = open(args.jsonl, "w", encoding="utf-8") if args.jsonl else None
    failed = []
    try:
        for path, res in zip(args.files, results):
            if isinstance(res, Exception):
                failed.append(path)
                print(f"error: {res}", file=sys.stderr)
                continue
            string = tok.to_string(res)
            if sink is None:
                print(f"{path}\t{string}")
            else:
                rec = {"file": path, "duration": res["duration"], "string": string,
                       "ids": tok.to_ids(res).tolist(),
                       **{k: v.tolist() for k, v in res.items() if k in ("hubert", "pitch", "style")}}
                sink.write(json.dumps(rec) + "\n")
    finally:
        if sink is not None:
            sink.close()
    if failed:
        print(f"{len(failed)} of {len(args.files)} files failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _consistency(args: argparse.Namespace) -> int:
    import json

    from spiritlm.tokenizer.corpus_audio import corpus_files
    from spiritlm.tokenizer.metrics import word_unit_consistency
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.load(args.tokenizer, streams=["hubert"])
    rows = [(u, p) for u, p in corpus_files(args.corpus, args.split, args.max_files) if u.words]
    if not rows:
        raise SystemExit(f"{args.corpus}: no rows with word alignments in split {args.split!r}")
    res = tok.encode_many([str(p) for _, p in rows], progress=True)
    ok = [(u, r) for (u, _), r in zip(rows, res) if not isinstance(r, Exception)]
    rep = word_unit_consistency([r["hubert"] for _, r in ok], [u.words for u, _ in ok],
                                [u.speaker for u, _ in ok], tok.featurizer.frame_rate)
    out = {"files": len(ok), "normalized_edit_distance": rep}
    if args.mfcc_baseline:
        import numpy as np

        from spiritlm.tokenizer.corpus_audio import iter_wavs
        from spiritlm.tokenizer.kmeans import KMeansQuantizer, train_kmeans
        from spiritlm.tokenizer.mfcc_units import mfcc

        wavs = list(iter_wavs([(u, p) for (u, p), r in zip(rows, res) if not isinstance(r, Exception)], 1280))
        feats = [mfcc(w, tok.featurizer.hop) for _, w in wavs]
        q = KMeansQuantizer(train_kmeans(np.concatenate(feats), tok.quantizer.size, 20, 0), use_gpu=False)
        out["mfcc_kmeans_baseline"] = word_unit_consistency(
            [q(f) for f in feats], [u.words for u, _ in wavs], [u.speaker for u, _ in wavs], tok.featurizer.frame_rate)
    print(json.dumps(out, indent=1))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from spiritlm.tokenizer.bench import bench_long_file_memory, bench_tokenizer

    if args.long_file_minutes:
        bench_long_file_memory(tuple(args.long_file_minutes), size=args.size, device=args.device)
    else:
        bench_tokenizer(seconds=args.seconds, n_files=args.files, size=args.size, device=args.device)
    return 0
