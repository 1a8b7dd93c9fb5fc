"""The trainer hooks of the hybrid-input family (``model_type = "hybrid"``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from spiritlm.config import ConfigError
from spiritlm.models.spec import Capabilities, ModelSpec

log = logging.getLogger(__name__)


def _config_cls():
    from spiritlm.models.hybrid.config import HybridTrainConfig

    return HybridTrainConfig


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def _frame_rate(cfg) -> float:
    from spiritlm.models.hybrid.features import shard_frame_rate

    f = cfg.hybrid.features
    if f.frame_rate:
        return float(f.frame_rate)
    aligned = [s.path for s in cfg.data.sources if s.kind != "text"]
    return shard_frame_rate(aligned[0]) if aligned else 50.0


def build(cfg, ds_config=None, dtype=torch.float32):
    from spiritlm.models.hybrid.model import build_hybrid

    if cfg.deepspeed.zero_stage == 3:
        raise ConfigError("the hybrid model trains with deepspeed.zero_stage 0, 1 or 2; set deepspeed.zero_stage=1")
    if cfg.model.attn_implementation not in ("sdpa", "eager"):
        raise ConfigError(f"model.attn_implementation={cfg.model.attn_implementation!r}: the hybrid model keeps "
                          "packed documents apart with an explicit block mask; use 'sdpa' or 'eager'")
    if not cfg.data.sources:
        raise ConfigError("the hybrid family needs [[data.sources]]: shard folders of the data stage (aligned "
                          "records read as 'speech' or 'interleaved', text rows as 'text')")
    model = build_hybrid(cfg, ds_config, dtype, _frame_rate(cfg))
    if cfg.data.seq_len > model.lm.config.max_position_embeddings:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds max_position_embeddings="
                          f"{model.lm.config.max_position_embeddings}; lower data.seq_len")
    counts = model.param_counts()
    if _rank() == 0:
        log.info("parameters by part: %s", ", ".join(f"{k} {v['total']:,}" for k, v in counts.items()))
        out = Path(cfg.run_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "param_counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    return model, None


def feature_table(cfg, rank: int = 0, progress: bool = True):
    """The data stage's feature store for the recipe's sources (rank 0 builds what is missing)."""
    import torch.distributed as dist

    from spiritlm.models.continuous.data import FeatureCache
    from spiritlm.models.hybrid.data import FeatureTable
    from spiritlm.models.hybrid.features import (aligned_frame_counts, build_feature_store, feature_identity,
                                                 fit_frames, store_dir_for)

    h = cfg.hybrid
    if h.features.kind == "none":
        return None
    aligned = [s.path for s in cfg.data.sources if s.kind != "text"]
    rate = _frame_rate(cfg)
    out = store_dir_for(cfg.run_dir, h.features, rate, h.data.features_dir)
    if rank == 0:
        cache = build_feature_store(aligned, h.data.manifests, out, h.features, rate, progress=progress)
    if dist.is_initialized():
        dist.barrier()
    if rank != 0:
        cache = FeatureCache(out, feature_identity(h.features, rate))
        cache.load()
        for uid, n in aligned_frame_counts(aligned).items():
            cache.feats[uid] = fit_frames(cache.feats[uid], n)
    dim = next(iter(cache.feats.values())).shape[1] if cache.feats else 0
    return FeatureTable(cache.feats, dim)


def make_batches(cfg, model, rank: int = 0, world: int = 1, progress: bool = True):
    from spiritlm.models.hybrid.data import make_hybrid_batches

    table = feature_table(cfg, rank, progress)
    if table is not None and table.dim != model.feat_dim:
        raise ConfigError(f"the feature store holds {table.dim}-dim frames but the model expects {model.feat_dim}; "
                          "rebuild it (hybrid.data.features_dir) with the recipe's feature settings")
    rows = model.lm.get_input_embeddings().weight.shape[0]
    return make_hybrid_batches(cfg.data.sources, cfg.data.seq_len, table, cfg.seed, rank, world,
                               cfg.data.bos_id if cfg.data.add_bos else -1, cfg.data.eos_id,
                               cfg.data.mixture_unit, max_id=rows)


def loss(engine, batch, device):
    from spiritlm.components.metrics import token_losses

    logits = engine(batch)
    return token_losses(logits, batch["targets_BT"].to(logits.device), getattr(engine, "module", engine).layout)


def export(trainer, out_dir: Path) -> Path:
    from spiritlm.config import dump_config
    from spiritlm.components import checkpoint as ckpt

    model = trainer.engine.module
    if ckpt._rank() == 0:
        tok = trainer.cfg.model.tokenizer or None
        model.save(Path(out_dir), tok, extra_files={"spiritlm_train_config.yaml": dump_config(trainer.cfg)})
    ckpt._barrier()
    return Path(out_dir)


def detect(d: Path) -> bool:
    from spiritlm.models.hybrid.model import CONFIG_FILE

    return (d / CONFIG_FILE).is_file()


def load(directory, device: str = "cpu", dtype=None):
    from spiritlm.models.hybrid.model import load_hybrid

    return load_hybrid(directory, device)


def make_scorer(model, tokenizer, encoder, scoring, eval_cfg):
    return model.make_scorer(tokenizer, encoder, scoring)  # its features at the speech frames


# scores every setting with its features; generation (which would need features for the units
# it writes) is not built, so no STSP, few-shot ASR/TTS or `generate`
CAPABILITIES = Capabilities(speech_in=True, speech_out=False, text_out=True, generate=False)

SPEC = ModelSpec("hybrid", _config_cls, build, make_batches, loss,
                 param_counts=lambda m: m.param_counts(), export=export,
                 detect=detect, detect_priority=20, load=load, scorer=make_scorer, capabilities=CAPABILITIES,
                 description="hybrid speech input: unit embedding + projected continuous frame per step, "
                             "next-unit prediction (Whisper-GPT)")
