"""``spiritlm prepare manifest|align|measure-aligner|shards`` (thin wrappers over the library functions)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    from spiritlm.commands import add_recipe_args

    p = subparsers.add_parser("prepare", help="data preparation: manifests, alignment (and measuring it), shards")
    sub = p.add_subparsers(dest="prepare_command", metavar="STEP")

    m = sub.add_parser("manifest", help="import a corpus into a JSONL manifest")
    m.add_argument("format", choices=["librispeech", "folder", "lhotse", "demo"])
    m.add_argument("source", help="corpus directory; lhotse: recordings.jsonl.gz; demo: manifest")
    m.add_argument("-o", "--output", required=True, help="manifest to write (.jsonl)")
    m.add_argument("--supervisions", help="lhotse: supervisions.jsonl.gz")
    m.add_argument("--split", default="train")
    m.add_argument("--export-lhotse", metavar="DIR", help="also write lhotse recordings+supervisions")
    m.set_defaults(func=_manifest)

    a = sub.add_parser("align", help="add word alignments to a manifest")
    a.add_argument("manifest")
    a.add_argument("-o", "--output", required=True)
    a.add_argument("--method", choices=["pocketsphinx", "mfa", "textgrid", "ctm", "lhotse"],
                   default="pocketsphinx")
    a.add_argument("--source", help="textgrid: directory of <id>.TextGrid; ctm: file; lhotse: "
                   "supervisions.jsonl.gz; mfa: output directory")
    a.add_argument("--mfa-dictionary", help="mfa: pronunciation dictionary")
    a.add_argument("--mfa-acoustic-model", help="mfa: acoustic model")
    a.add_argument("--failed", choices=["keep", "drop"], default="keep",
                   help="utterances that fail to align: keep without words (speech-only) or drop")
    a.set_defaults(func=_align)

    ma = sub.add_parser("measure-aligner", help="pocketsphinx word boundary errors against a manifest's "
                        "reference word times (JSON report)")
    ma.add_argument("manifest", help="a manifest with word times (e.g. the demo corpus's)")
    ma.add_argument("--limit", type=int, default=200, help="utterances with reference times to measure")
    ma.add_argument("--out", help="also write the JSON report here")
    ma.set_defaults(func=_measure_aligner)

    s = sub.add_parser("shards", help="manifests + text -> Parquet shards (restartable)")
    add_recipe_args(s, recipe_required=True)
    s.set_defaults(func=_shards)

    si = sub.add_parser("synth-interleave", help="text corpora + a T2U model -> synthetic interleaved shards "
                                                 "(Zeng et al. 2024; restartable, byte-identical reruns)")
    add_recipe_args(si, recipe_required=True)
    si.set_defaults(func=_synth_interleave)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _write_report(path: Path, report: dict) -> Path:
    out = path.with_name(path.name + ".report.json")
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return out


def _manifest(args: argparse.Namespace) -> int:
    from spiritlm.data import importers
    from spiritlm.manifest import write_manifest

    out = Path(args.output)
    mdir = out.parent
    if args.format == "librispeech":
        utts, rep = importers.import_librispeech(args.source, mdir, args.split)
    elif args.format == "folder":
        utts, rep = importers.import_folder(args.source, mdir, args.split)
    elif args.format == "lhotse":
        if not args.supervisions:
            raise ValueError("lhotse import needs --supervisions supervisions.jsonl.gz")
        utts, rep = importers.import_lhotse(args.source, args.supervisions, mdir, args.split)
    else:
        utts, rep = importers.import_demo(args.source)
        src_dir = Path(args.source).resolve().parent
        if src_dir != mdir.resolve():  # keep audio paths valid from the new manifest's directory
            for u in utts:
                u.audio_path = str(u.audio_file(src_dir).resolve())
    write_manifest(out, utts)
    rpath = _write_report(out, rep.to_dict())
    if args.export_lhotse:
        importers.export_lhotse(utts, mdir, args.export_lhotse)
    print(f"{len(utts)} utterances -> {out}; dropped: {rep.dropped or 'none'} (details: {rpath})")
    return 0


def _align(args: argparse.Namespace) -> int:
    from spiritlm.data.align import align_manifest, make_aligner

    aligner = make_aligner(args.method, source=args.source, dictionary=args.mfa_dictionary,
                           acoustic_model=args.mfa_acoustic_model)
    report = align_manifest(args.manifest, args.output, aligner, keep_failed=args.failed == "keep")
    rpath = _write_report(Path(args.output), report)
    print(f"aligned {report['aligned']}, failed {report['failed']} ({report['failed_reasons']}); "
          f"details: {rpath}")
    return 0


def _measure_aligner(args: argparse.Namespace) -> int:
    from spiritlm.data.align import measure_manifest

    print(json.dumps(measure_manifest(args.manifest, args.limit, args.out), indent=2))
    return 0


def _shards(args: argparse.Namespace) -> int:
    from spiritlm.config import load_config
    from spiritlm.data.prepare import PrepareConfig, format_report, prepare_shards

    cfg = load_config(PrepareConfig, args.recipe, args.overrides)
    report = prepare_shards(cfg)
    if report.get("up_to_date"):
        print(f"{cfg.output_dir} is up to date (same config, inputs, tokenizers; shards checked "
              "against index.json): nothing recomputed. Its report:")
    print(format_report(report))
    print(f"shards, index.json, config.yaml, report.json, drops.jsonl in {cfg.output_dir}")
    return 0


def _synth_interleave(args: argparse.Namespace) -> int:
    from spiritlm.config import load_config
    from spiritlm.models.t2u.synth import SynthConfig, format_synth_report, synth_interleave

    cfg = load_config(SynthConfig, args.recipe, args.overrides)
    report = synth_interleave(cfg)
    print(format_synth_report(report))
    print(f"shards ({cfg.output_dir}/interleaved), index.json, config.yaml, report.json, drops.jsonl in {cfg.output_dir}; "
          "train on them as a [[data.sources]] entry with kind = \"interleaved\" and synthetic = true")
    return 0
