"""``spiritlm corpus demo``: build (or reuse) the deterministic synthetic demo corpus."""

from __future__ import annotations

import argparse

from spiritlm.commands import add_recipe_args, recipe_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corpus", help="corpora: the synthetic demo corpus (espeak-ng)")
    csub = p.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)
    demo = csub.add_parser(
        "demo",
        help="synthesize the demo corpus: speech with exact word/phone times + a text corpus",
        description="Builds the embedded default corpus (cached: a second run with the same "
        "config costs nothing). Settings: spiritlm.corpus.demo.DemoCorpusConfig.",
    )
    add_recipe_args(demo, out_key="out_dir")
    demo.set_defaults(func=_demo)


def _demo(args) -> int:
    from pathlib import Path

    from spiritlm.config import load_config, save_config
    from spiritlm.corpus.demo import DemoCorpusConfig, build_demo_corpus

    cfg = load_config(DemoCorpusConfig, args.recipe, recipe_overrides(args))
    corpus = build_demo_corpus(cfg)
    save_config(cfg, Path(corpus.root) / "config.resolved.yaml")
    s = corpus.stats
    state = "cached" if corpus.cached else "built"
    print(f"{state}: {corpus.manifest_path} ({s.get('n_utterances')} utterances, "
          f"{s.get('total_minutes', 0):.1f} min), text corpus {corpus.text_corpus_path}")
    return 0
