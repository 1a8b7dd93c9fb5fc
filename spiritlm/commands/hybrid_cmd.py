"""``spiritlm hybrid features``: the hybrid family's data-stage step.

    spiritlm hybrid features --shards DIR/aligned --manifest aligned.jsonl --out FEATS [--kind hubert --hubert TOK]

Per-frame continuous features of every aligned record of prepared shards, written once as a
feature store (:func:`spiritlm.models.hybrid.features.build_feature_store`). The hybrid demo part
itself runs with ``spiritlm demo-parts --out DEMO_DIR --part hybrid``.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hybrid", help="hybrid (units + continuous features) models: build the per-frame feature store",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_subparsers(dest="hybrid_command", metavar="ACTION")
    f = s.add_parser("features", help="per-frame features (log-mel or HuBERT) of the aligned records of prepared "
                                      "shards -> a feature store")
    f.add_argument("--shards", nargs="+", required=True, help="shard folders holding aligned records")
    f.add_argument("--manifest", nargs="+", required=True, help="aligned manifests (audio_path per id)")
    f.add_argument("--out", required=True, help="the feature store's directory")
    f.add_argument("--kind", default="logmel", choices=["logmel", "hubert"])
    f.add_argument("--n-mels", type=int, default=64, help="logmel: mel bins")
    f.add_argument("--hubert", default="", help="hubert: a speech tokenizer directory or a HF HuBERT dir")
    f.set_defaults(func=_features)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _features(args) -> int:
    from spiritlm.models.hybrid.config import FeatureConfig
    from spiritlm.models.hybrid.features import build_feature_store

    cache = build_feature_store(args.shards, args.manifest, args.out,
                                FeatureConfig(kind=args.kind, n_mels=args.n_mels, hubert=args.hubert))
    print(f"{len(cache.feats)} records -> {cache.dir}")
    return 0
