"""The trainer hooks of the text-to-unit family (``model_type = "t2u"``).

The model is the unit LM's (a LLaMA with the speech vocabulary, ``spiritlm.models.unit_lm``), so
build, batches (the mixture stream and the packer: exact resume), the cross-entropy and the HF
export are the unit LM's. What is the family's own: the documents (one window of an aligned record
per epoch, ``pairs.pair_fn``), the loss mask (units and the closing ``[Text]`` only), and the
marker file ``spiritlm_t2u.json`` beside the export, which says which speech tokens the model
writes -- vocabulary layout, unit family, frame rates, speech encoder, text tokenizer -- so that
``spiritlm prepare synth-interleave`` writes shards the trainer can mix with the real ones and
refuses a checkpoint made for another vocabulary.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spiritlm.config import ConfigError, dump_config
from spiritlm.models.spec import Capabilities, ModelSpec
from spiritlm.models.t2u.config import FORMAT, MARKER
from spiritlm.models.unit_lm import spec as unit_spec

log = logging.getLogger(__name__)


def _config_cls():
    from spiritlm.models.t2u.config import T2UConfig

    return T2UConfig


@dataclass
class T2UPlan(unit_spec.UnitPlan):
    marker: dict[str, Any] = field(default_factory=dict)  # what the export's spiritlm_t2u.json says


def _sources(cfg):
    """One ParquetSource per aligned shard folder, read through the pair maker; and the marker."""
    from spiritlm.components.mixture import ParquetSource, holds_aligned_records
    from spiritlm.data.reader import ShardReader
    from spiritlm.models.t2u.pairs import pair_fn

    if not cfg.data.sources:
        raise ConfigError("a T2U recipe needs [[data.sources]]: the data stage's aligned shard folders "
                          "(e.g. path = \"runs/demo/shards/aligned\"), whose words, times and units it learns from")
    srcs, weights, metas = [], [], []
    for i, s in enumerate(cfg.data.sources):
        name = s.name or f"source{i}"
        if not Path(s.path).is_dir() or not holds_aligned_records(s.path):
            raise ConfigError(f"data source {name}: {s.path} holds no aligned records; a T2U model learns from the "
                              "data stage's aligned/ folder (records with words, word times and frame units)")
        reader = ShardReader(s.path, shuffle=False)  # the shards' own interleaver: their layout and frame rates
        fn = pair_fn(reader.interleaver, cfg.t2u.span, min(cfg.t2u.max_tokens, cfg.data.seq_len))
        srcs.append(ParquetSource(s.path, name=name, kind="speech", interleave_fn=fn))
        weights.append(s.weight)
        metas.append(reader.meta)
    keys = ("frame_rates", "has_pitch", "has_style", "speech_encoder")
    for m, s in zip(metas[1:], cfg.data.sources[1:]):
        diff = [k for k in keys if m.get(k) != metas[0].get(k)]
        if diff:
            raise ConfigError(f"data source {s.path}: its shards differ from {cfg.data.sources[0].path} in {diff}; "
                              "a T2U model writes the units of one speech tokenizer: list shards made with one")
    return srcs, weights, metas[0]


def training_words_and_rates(paths, layout, has_pitch: bool, has_style: bool, n: int = 512) -> tuple[list[int], float]:
    """One pass over the training shards: every BPE id of their words (a span holding another is
    not given to the model), and the 99th percentile over the first ``n`` aligned records of speech
    tokens per word, each record written as one speech span by the vocabulary's rule (decoding
    stops a span that runs well past it: ``decode.T2U``)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from spiritlm.data.reader import verified_shard_files
    from spiritlm.vocab import units_to_ids

    seen: set[int] = set()
    rates: list[float] = []
    for p in paths:
        for f in verified_shard_files(p):
            pf = pq.ParquetFile(f)
            seen.update(pc.unique(pc.list_flatten(pf.read(columns=["word_bpe"]).column("word_bpe"))).to_pylist())
            if len(rates) >= n:
                continue
            for row in pf.read(columns=["kind", "words", "hubert", "pitch", "style"]).slice(0, n).to_pylist():
                if row["kind"] == "aligned" and row["words"]:
                    units = {k: np.asarray(row[k]) for k in ("hubert", "pitch", "style") if row[k] is not None}
                    rates.append(len(units_to_ids(units, has_pitch, has_style, layout)) / len(row["words"]))
    return sorted(int(x) for x in seen if x is not None), float(np.percentile(rates, 99)) if rates else 0.0


def plan(cfg, sources=None, weights=None, interleave_fns=None) -> T2UPlan:
    meta: dict = {}
    if sources is None:
        sources, weights, meta = _sources(cfg)
    p = unit_spec.plan(cfg, sources, weights)
    streams = ["hubert"] + (["pitch", "style"] if meta.get("has_pitch") else [])
    layout_meta = dict(meta.get("vocab_layout") or asdict(p.layout))
    paths = [s.path for s in cfg.data.sources]
    text_ids, p99 = (training_words_and_rates(paths, p.layout, bool(meta.get("has_pitch")), bool(meta.get("has_style")))
                     if paths else ([], 0.0))
    marker = {"format": FORMAT, "vocab_layout": layout_meta, "unit_family": layout_meta.get("unit_family", "hubert"),
              "streams": streams, "frame_rates": meta.get("frame_rates"), "has_pitch": bool(meta.get("has_pitch")),
              "has_style": bool(meta.get("has_style")), "speech_encoder": meta.get("speech_encoder"),
              "tokenizer_sha256": meta.get("tokenizer_sha256"), "base_vocab_size": p.layout.base_vocab_size,
              "bos_id": cfg.data.bos_id if cfg.data.add_bos else -1,
              "span": asdict(cfg.t2u.span), "max_tokens": min(cfg.t2u.max_tokens, cfg.data.seq_len),
              "text_ids": text_ids, "tokens_per_word_p99": round(p99, 3), "sources": paths}
    return T2UPlan(**{k: getattr(p, k) for k in p.__dataclass_fields__}, marker=marker)


def loss(engine, batch, device, plan: T2UPlan | None = None):
    from spiritlm.models.t2u.pairs import t2u_targets

    batch = dict(batch)
    batch["targets_BT"] = t2u_targets(batch["input_ids_BT"], batch["targets_BT"], batch["position_ids_BT"],
                                      plan.layout)
    return unit_spec.loss(engine, batch, device, plan=plan)


def export(trainer, out_dir: Path) -> Path:
    from spiritlm.components import checkpoint as ckpt

    cfg = trainer.cfg
    marker = {**trainer.plan.marker, "seed": cfg.seed, "steps": trainer.step}
    return ckpt.export_hf(trainer.engine, trainer.engine.module, out_dir, cfg.model.tokenizer or None,
                          trainer.plan.layout, cfg.deepspeed.zero_stage,
                          extra_files={"spiritlm_train_config.yaml": dump_config(cfg),
                                       MARKER: json.dumps(marker, indent=1, sort_keys=True) + "\n"})


def detect(d: Path) -> bool:
    return (Path(d) / MARKER).is_file()


def load(directory, device: str = "cpu", dtype: Any = None):
    from spiritlm.models.t2u.decode import T2U

    t2u = T2U(directory, device, dtype if isinstance(dtype, str) else "float32")
    return t2u.model, t2u.tokenizer


# writes speech tokens from text; it is not a language model of the suite's tasks
CAPABILITIES = Capabilities(speech_in=False, speech_out=True, text_out=False, generate=False, settings=(), tasks=())

SPEC = ModelSpec("t2u", _config_cls, unit_spec.build, unit_spec.make_batches, loss, export=export, plan=plan,
                 mixture=unit_spec.mixture, summary=unit_spec.summary, detect=detect, detect_priority=30, load=load,
                 capabilities=CAPABILITIES,
                 description="text-to-unit: a window's words -> its speech tokens, for synthetic interleaved "
                             "data (Zeng et al. 2024)")
