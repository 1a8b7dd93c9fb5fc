"""The trainer and evaluation hooks of the Spirit LM unit model (``model_type = "unit_lm"``, the
default): LLaMA + the speech vocabulary (``model.py``), trained on packed documents drawn from a
token-share mixture of shard folders (``spiritlm.components.mixture`` / ``packing``), loss split by
token type (text / speech / switch), exported as a HF directory with ``tokenizer.model`` and
``spiritlm_vocab.json`` and loaded back by ``load.py``.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from spiritlm.components import checkpoint as ckpt
from spiritlm.components.config import TrainConfig
from spiritlm.components.linear_ce import ce_function, head_loss
from spiritlm.components.metrics import losses_by_type, mixture_record, token_losses
from spiritlm.components.mixture import MixtureStream, check_meta, make_sources
from spiritlm.components.packing import Packer, isolation_plan, packed_inputs
from spiritlm.components.scoring import Scorer
from spiritlm.config import ConfigError, dump_config
from spiritlm.models.spec import Capabilities, ModelSpec
from spiritlm.models.unit_lm.load import load_model
from spiritlm.models.unit_lm.model import build_model, load_run_tokenizer, plan_model, tokenizer_sha256
from spiritlm.text_tokenizer import has_text_tokenizer
from spiritlm.vocab import VocabLayout

log = logging.getLogger(__name__)


@dataclass
class UnitPlan:
    """What the unit LM settles before any weight is loaded."""

    isolation: str  # how packed documents are kept apart on this attention backend
    layout: VocabLayout
    rows: int  # embedding rows (the layout, padded)
    sources: Sequence[Any]
    weights: Optional[Sequence[float]]
    dtype: torch.dtype
    linear_ce: str = "plain"  # model.linear_ce: how the loss meets the LM head (spiritlm.components.linear_ce)
    ce_chunk_tokens: int = 4096
    compile: bool = False  # model.compile: the loss on the logits compiled too (one fused kernel on CPU)


def plan(cfg: TrainConfig, sources=None, weights=None, interleave_fns=None) -> UnitPlan:
    """Checks before any weight is loaded, and the document sources (refused here if unusable)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    isolation = isolation_plan(cfg.model.attn_implementation, cfg.model.packed_attention, device)
    mc, layout, rows = plan_model(cfg.model)
    rank0 = int(os.environ.get("RANK", "0")) == 0  # the process group starts later
    if rank0:
        log.info("attention %s: packed documents kept apart by %s", cfg.model.attn_implementation,
                 {"varlen": "one varlen row per micro-batch (cu_seq_lens)", "block_mask": "an explicit block mask",
                  "position_ids": "position ids restarting per document"}[isolation])
    if cfg.data.seq_len > mc.max_position_embeddings:
        raise ConfigError(
            f"data.seq_len={cfg.data.seq_len} exceeds the model's max_position_embeddings="
            f"{mc.max_position_embeddings}; lower data.seq_len (paper: 4096 with LLaMA-2)"
        )
    if sources is None:
        sources, weights = make_sources(cfg.data, layout, interleave_fns, text_vocab=layout.base_vocab_size)
        if not cfg.data.sources and rank0:
            log.warning("no [[data.sources]] in the recipe: training on SYNTHETIC random documents "
                        "(a smoke test); list your shard folders under [[data.sources]] "
                        "(train/README.md, Data)")
    check_meta(sources, layout, rows, tokenizer_sha256(cfg.model))
    check_bos(cfg, load_run_tokenizer(cfg.model, layout))
    shares = list(weights) if weights is not None else [1.0] * len(sources)
    total = sum(shares)
    if rank0 and total > 0:  # MixtureStream rejects the rest
        log.info("data: %s", ", ".join(
            f"{getattr(s, 'name', '?')} ({len(s)} documents, weight {w / total:.2f}"
            f"{', read through an interleave_fn' if getattr(s, 'interleave_fn', None) else ''})"
            for s, w in zip(sources, shares)))
    dtype = torch.bfloat16 if cfg.deepspeed.precision == "bf16" else torch.float32
    return UnitPlan(isolation, layout, rows, sources, weights, dtype, cfg.model.linear_ce, cfg.model.ce_chunk_tokens,
                    cfg.model.compile)


def check_bos(cfg: TrainConfig, tokenizer) -> None:
    """The documents' first token (``data.bos_id``) must be the one the tokenizer starts a
    document with -- evaluation and generation prepend that one (``SpiritTokenizer.bos_id``:
    its BOS, or its EOS for a family without one, like Qwen's ``<|endoftext|>``)."""
    if tokenizer is None or not cfg.data.add_bos or cfg.data.bos_id == tokenizer.bos_id:
        return
    if tokenizer.bos_id < 0:
        raise ConfigError(f"data.bos_id={cfg.data.bos_id}: the tokenizer has neither a BOS nor an EOS token to "
                          "start documents with; set --set data.add_bos=false")
    raise ConfigError(
        f"data.bos_id={cfg.data.bos_id}, but the tokenizer ({tokenizer.text.kind}) starts a document with id "
        f"{tokenizer.bos_id} ({tokenizer.text.decode([tokenizer.bos_id])!r}), as evaluation and generation will: "
        f"--set data.bos_id={tokenizer.bos_id}")


def build(cfg: TrainConfig, ds_config=None, dtype=torch.float32):
    # ZeRO-3 builds the model partitioned (deepspeed.zero.Init): only then does it need the config
    model, _layout, keepalive = build_model(cfg.model, ds_config if cfg.deepspeed.zero_stage == 3 else None,
                                            dtype or torch.float32)
    return model, keepalive


def make_batches(cfg: TrainConfig, model, rank: int = 0, world: int = 1, plan: UnitPlan | None = None) -> Packer:
    """This rank's share of the mixture, packed into rows (the packer holds its stream)."""
    assert plan is not None and model.config.vocab_size == plan.rows, "the unit LM needs its plan"
    stream = MixtureStream(plan.sources, plan.weights, seed=cfg.seed, rank=rank, world_size=world,
                           max_id=plan.rows, unit=cfg.data.mixture_unit)
    return Packer(stream, cfg.data.seq_len, cfg.data.bos_id if cfg.data.add_bos else -1, cfg.data.eos_id)


def loss(engine, batch, device, plan: UnitPlan | None = None):
    inputs = packed_inputs(batch, plan.isolation, device, plan.dtype)  # flash: one varlen row
    targets_BT = batch["targets_BT"].to(device)
    if plan.linear_ce == "plain":
        out = engine(**inputs, use_cache=False)
        return (_compiled_token_losses() if plan.compile else token_losses)(out.logits, targets_BT, plan.layout)
    # no [tokens, vocab] logits: the head's input goes to the chunked (or liger) cross-entropy, still
    # through the engine's forward, whose backward hooks then sit on the per-token losses
    with head_loss(getattr(engine, "module", engine), targets_BT, ce_function(plan.linear_ce, plan.ce_chunk_tokens)):
        out = engine(**inputs, use_cache=False)
    return losses_by_type(out["ce_N"], targets_BT, plan.layout)


@functools.lru_cache(maxsize=1)
def _compiled_token_losses():
    """``token_losses`` through torch.compile: the fp32 cast, log-softmax, gather and the per-type
    sums in one pass over the [tokens, vocab] logits instead of several."""
    return torch.compile(token_losses)


def mixture(trainer) -> dict:
    """Realised token share of each source over the run so far, all ranks (``mix/<source>``)."""
    import torch.distributed as dist

    packer = trainer.packer
    names = [s.name for s in packer.stream.sources]
    counts = torch.tensor([float(packer.tokens_by_source.get(n, 0)) for n in names],
                          dtype=torch.float64, device=trainer.device)
    dist.all_reduce(counts)
    return mixture_record(names, counts.tolist())


def summary(trainer) -> dict:
    return {"attention_isolation": trainer.plan.isolation, "mixture_unit": trainer.cfg.data.mixture_unit}


def export(trainer, out_dir: Path) -> Path:
    cfg = trainer.cfg
    tok = cfg.model.tokenizer or (cfg.model.checkpoint if cfg.model.checkpoint and
                                  has_text_tokenizer(cfg.model.checkpoint) else "")
    if not tok and ckpt._rank() == 0:
        log.warning("%s gets no tokenizer: neither model.tokenizer nor model.checkpoint has one, so "
                    "`spiritlm eval`/`generate` cannot load it; train with --set model.tokenizer=DIR "
                    "(a directory holding tokenizer.model or tokenizer.json), or copy one in", out_dir)
    return ckpt.export_hf(trainer.engine, trainer.engine.module, out_dir, tok or None, trainer.plan.layout,
                          cfg.deepspeed.zero_stage, extra_files={"spiritlm_train_config.yaml": dump_config(cfg)})


def detect(d: Path) -> bool:
    """A HF causal-LM directory (the fallback: other families look for their own file first)."""
    return (d / "config.json").is_file()


def load(directory, device: str = "cpu", dtype: Any = None):
    return load_model(directory, device, dtype if isinstance(dtype, str) else "float32")


def make_scorer(model, tokenizer, encoder, scoring, eval_cfg) -> Scorer:
    return Scorer(model, tokenizer, encoder, eval_cfg.has_pitch, eval_cfg.has_style, scoring.batch_tokens,
                  scoring.max_row_tokens, scoring.share_context,
                  share_prefixes=scoring.share_prefixes,
                  min_shared_prefix=scoring.min_shared_prefix)


SPEC = ModelSpec(
    "unit_lm", lambda: TrainConfig, build, make_batches, loss, export=export, plan=plan, mixture=mixture,
    summary=summary, detect=detect, detect_priority=0, load=load, scorer=make_scorer,
    capabilities=Capabilities(speech_in=True, speech_out=True, text_out=True, generate=True),
    description="Spirit LM: LLaMA + speech units interleaved with text (spiritlm.models.unit_lm)")
