"""Run config of the ``train`` stage (typed dataclasses; recipes in ``train/*.toml``).

    cfg = load_config(TrainConfig, "train/tiny_cpu.toml", ["optim.lr=1e-4"])
    run_dir = train(cfg)

Sections: ``model`` (checkpoint or tiny builder, speech vocabulary, RoPE), ``data`` (sources,
mixture weights, packing), ``optim`` (AdamW, schedule, clipping), ``deepspeed`` (ZeRO stage,
precision, offload, extra JSON merged on top), ``checkpoint``, ``log``. ``validate_config``
checks the parts that can be checked before any model is loaded; the trainer checks the rest
(model length, vocabulary vs shard metadata) once the model and data are known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from spiritlm.config import ConfigError


@dataclass
class TinyModelConfig:
    """A LLaMA-architecture model built from scratch (tests, the CPU demo)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    base_vocab_size: int = 32000  # text pieces; speech ids are added on top of this


@dataclass
class ModelConfig:
    # HF LLaMA checkpoint directory (config.json + safetensors + tokenizer.model); "" = build tiny.
    checkpoint: str = ""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    # Directory with tokenizer.model for the export; "" = the checkpoint's own (if any).
    tokenizer: str = ""
    # Speech vocabulary: sizes of the release (501 HuBERT, 64 pitch, 100 style units).
    hubert_size: int = 501
    pitch_size: int = 64
    style_size: int = 100
    # Embedding rows: "padded" rounds up to pad_multiple (32768 for 7B Expressive), "exact" = 32667.
    vocab_rows: Literal["padded", "exact"] = "padded"
    pad_multiple: int = 256
    # New rows: "mean" = mean of existing rows + noise_std * N(0,1) (mean-resizing, Hewitt 2021);
    # "hf_mean" = HF's resize_token_embeddings(mean_resizing=True); "normal" = N(0, init_std), the
    # paper's "randomly initialised" (see spiritlm/models/unit_lm/model.py).
    new_rows_init: Literal["mean", "hf_mean", "normal"] = "mean"
    noise_std: float = 0.01
    init_std: float = 0.02
    rope_theta: Optional[float] = None  # paper: 100000 (LLaMA-2 default 10000)
    # "sdpa" | "eager" | "flash_attention_2" | "sdpa_varlen" (CPU: each packed document's own causal
    # block only, spiritlm.components.varlen_attention) | "flex_attention" (GPU)
    attn_implementation: str = "sdpa"
    # How packed rows keep documents apart: position ids reset per document (transformers builds
    # the block-diagonal mask, flash-attention uses varlen) or an explicit 4-D block mask.
    packed_attention: Literal["position_ids", "block_mask"] = "position_ids"
    activation_checkpointing: bool = False
    # The unit LM's cross-entropy (spiritlm.components.linear_ce): "plain" = the model's full
    # [tokens, vocab] fp32 logits, then F.cross_entropy; "chunked" = ce_chunk_tokens tokens' logits
    # at a time, recomputed in the backward (no [tokens, vocab] tensor; per-token losses within 1e-5
    # of plain in fp32, ~1.33x the head's FLOPs); "liger" = liger-kernel's fused kernel (CUDA only).
    linear_ce: Literal["plain", "chunked", "liger"] = "plain"
    ce_chunk_tokens: int = 4096
    # torch.compile the model in place (nn.Module.compile: state_dict, checkpoints and exports keep
    # their keys) with inductor -- on CPU now, the same path on GPU. The first step pays the
    # compilation (~30-45 s for the demo's model on one core); `spiritlm bench train` measures the
    # steady state against HF Trainer. Packed documents stay apart (transformers builds the
    # block mask from the position ids under tracing too; tested).
    compile: bool = False


@dataclass
class SourceConfig:
    """One data source: a directory of Parquet shards (see ``spiritlm.components.mixture``)."""

    name: str = ""
    path: str = ""
    weight: float = 1.0
    kind: Literal["speech", "text", "interleaved", "any"] = "any"
    # shards made by `spiritlm prepare synth-interleave` (speech spans written by a T2U model, no
    # audio): say so here, so that a recipe never mixes them in unawares (checked against the
    # shards' metadata at start)
    synthetic: bool = False


@dataclass
class DataConfig:
    # Empty = the synthetic demo sources (random ids of each kind), for tests and smoke runs.
    sources: list[SourceConfig] = field(default_factory=list)
    seq_len: int = 256
    synthetic_docs: int = 512  # per synthetic source
    add_bos: bool = True  # prepend BOS when a document lacks it
    bos_id: int = 1
    eos_id: int = -1  # append EOS to every document if >= 0 (the release adds BOS only)
    # What the source weights share out: "tokens" (the paper: each kind a third of the tokens
    # seen) or "documents" (a source drawn per document; token shares then follow document
    # lengths). See MixtureStream in spiritlm/components/mixture.py.
    mixture_unit: Literal["tokens", "documents"] = "tokens"


@dataclass
class OptimConfig:
    lr: float = 3e-5
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    # torch's fused AdamW kernel (one kernel over all parameters, CPU and GPU) instead of its
    # foreach one; needs deepspeed.torch_adam. Off by default: it rounds differently (1e-7 a step in
    # fp32), and the demo's cached trainings keep their keys.
    fused: bool = False


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 1
    # "auto": bf16 only where the device runs it natively (spiritlm.precision), fp32 otherwise;
    # the trainer resolves it at start, logs why and saves the concrete value in config.yaml
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    offload_optimizer: bool = False
    offload_params: bool = False  # ZeRO-3 only
    torch_adam: bool = True  # torch's AdamW: no DeepSpeed op to compile
    json: str = ""  # a user DeepSpeed JSON merged over the generated one
    # CPU only: DeepSpeed compiles a shared-memory all-reduce op (~1 min) used only for
    # inference; off by default. Compiled ops are cached in torch_extensions_dir.
    cpu_shm_comm_op: bool = False
    torch_extensions_dir: str = ".torch_extensions"
    dist_backend: str = ""  # "" = nccl on CUDA, gloo on CPU


@dataclass
class CheckpointConfig:
    every: int = 0  # steps between checkpoints; 0 = only at the end
    keep: int = 2  # newest checkpoints kept (0 = all)
    resume: bool = True  # continue from <run_dir>/checkpoints/latest if present
    export_hf: bool = True  # HF save_pretrained (safetensors + tokenizer) at the end


@dataclass
class EvalDuringConfig:
    """Evaluation while training (``spiritlm.eval.during_training``), every ``eval_every`` steps."""

    # held-out shard folders, one per modality (kind); [] with synthetic data = synthetic held-out
    heldout: list[SourceConfig] = field(default_factory=list)
    heldout_docs: int = 64  # first documents of each held-out source
    suite: str = ""  # a light eval recipe (eval/during_training.toml); "" = held-out loss only
    suite_overrides: list[str] = field(default_factory=list)  # --set style, e.g. ["data_root=DIR"]


@dataclass
class LogConfig:
    every: int = 1
    tensorboard: bool = True
    progress_bar: bool = True
    plots: bool = True
    peak_flops: float = 0.0  # per device, for MFU on CUDA; 0 = guess from the device name


@dataclass
class TrainConfig:
    run_dir: str = "runs/train"
    seed: int = 0
    steps: int = 100
    micro_batch_size: int = 4  # rows per device per micro-step (paper: 4)
    global_batch_size: int = 0  # rows per optimizer step; 0 = micro_batch_size * world size
    on_nonfinite: Literal["skip", "stop"] = "skip"
    max_nonfinite: int = 100  # stop anyway after this many skipped micro-batches
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval_every: int = 0  # steps between evaluations while training (0 = none)
    eval: EvalDuringConfig = field(default_factory=EvalDuringConfig)


def grad_accum_steps(cfg: TrainConfig, world_size: int) -> int:
    # checked here as well as in validate_config: the DeepSpeed JSON (engine.deepspeed_config)
    # is built from this number, and a zero or negative one only fails later as an assert there
    if cfg.micro_batch_size < 1:
        raise ConfigError(f"micro_batch_size={cfg.micro_batch_size}: set micro_batch_size to the rows per "
                          "device per micro-step, 1 or more (paper: 4)")
    if cfg.global_batch_size < 0:
        raise ConfigError(f"global_batch_size={cfg.global_batch_size}: set global_batch_size to the rows per "
                          "optimizer step, a positive multiple of micro_batch_size * world_size, or 0 for "
                          "micro_batch_size * world_size")
    per_step = cfg.micro_batch_size * world_size
    gbs = cfg.global_batch_size or per_step
    if gbs % per_step:
        lo, hi = (gbs // per_step) * per_step, (gbs // per_step + 1) * per_step
        raise ConfigError(
            f"global_batch_size={gbs} is not a multiple of micro_batch_size * world_size = "
            f"{cfg.micro_batch_size} * {world_size} = {per_step}; set global_batch_size to "
            + (f"{lo} or {hi}" if lo else f"{per_step}") + ", or change micro_batch_size"
        )
    return gbs // per_step


def validate_config(cfg: TrainConfig, world_size: int = 1) -> None:
    """Checks that need no model or data; raise ConfigError saying what to change."""
    # every number checked here would otherwise fail later, and less clearly: a DeepSpeed assert
    # (batch sizes), a ZeroDivisionError in the loop (log.every) or a silent no-op (keep < 0)
    if cfg.steps < 1:
        raise ConfigError(f"steps={cfg.steps}: set steps to a positive number of optimizer steps")
    grad_accum_steps(cfg, world_size)  # micro_batch_size and global_batch_size
    if cfg.data.seq_len < 2:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len}: set data.seq_len to 2 or more (tokens per row)")
    if not cfg.data.sources and cfg.data.synthetic_docs < 1:
        raise ConfigError(f"data.synthetic_docs={cfg.data.synthetic_docs}: set it to 1 or more, or list "
                          "shard folders under [[data.sources]]")
    if cfg.max_nonfinite < 0:
        raise ConfigError(f"max_nonfinite={cfg.max_nonfinite}: set 0 or more (skipped micro-batches "
                          "tolerated before stopping)")
    if cfg.log.every < 1:
        raise ConfigError(f"log.every={cfg.log.every}: set log.every to 1 or more (steps between log lines)")
    if cfg.checkpoint.keep < 0:
        raise ConfigError(f"checkpoint.keep={cfg.checkpoint.keep}: set the number of newest checkpoints "
                          "to keep, or 0 to keep all")
    if cfg.model.pad_multiple < 1:
        raise ConfigError(f"model.pad_multiple={cfg.model.pad_multiple}: set 1 or more (256 pads the "
                          "embedding rows to a multiple of 256)")
    if not cfg.model.checkpoint:
        _check_tiny(cfg.model.tiny)
    _check_linear_ce(cfg)
    ds = cfg.deepspeed
    if ds.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"deepspeed.zero_stage={ds.zero_stage}: use 0, 1, 2 or 3")
    if ds.offload_params and ds.zero_stage != 3:
        raise ConfigError("deepspeed.offload_params needs deepspeed.zero_stage=3 (or set it false)")
    if ds.offload_optimizer and ds.zero_stage == 0:
        raise ConfigError("deepspeed.offload_optimizer needs deepspeed.zero_stage >= 1")
    o = cfg.optim
    if not o.lr > 0:  # `not >` also refuses nan
        raise ConfigError(f"optim.lr={o.lr}: set a positive learning rate (paper: 3e-5)")
    if not o.eps > 0 or not o.weight_decay >= 0 or not o.grad_clip >= 0:
        raise ConfigError(f"optim.eps={o.eps}, optim.weight_decay={o.weight_decay}, optim.grad_clip="
                          f"{o.grad_clip}: set eps > 0, weight_decay >= 0 and grad_clip >= 0 (0 = no clipping)")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ConfigError(f"optim.betas={list(o.betas)}: set two numbers in [0, 1), e.g. [0.9, 0.95]")
    if cfg.optim.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps={cfg.optim.warmup_steps}: set 0 or more")
    if not 0 <= cfg.optim.min_lr_ratio <= 1:
        raise ConfigError(f"optim.min_lr_ratio={cfg.optim.min_lr_ratio} must lie in [0, 1]")
    if cfg.eval_every < 0 or cfg.eval.heldout_docs < 1:
        raise ConfigError(f"eval_every={cfg.eval_every}, eval.heldout_docs={cfg.eval.heldout_docs}: use "
                          "eval_every >= 0 (0 = no evaluation while training) and heldout_docs >= 1")
    if cfg.checkpoint.every < 0:
        raise ConfigError("checkpoint.every must be >= 0 (0 = save only at the end)")
    weights = [s.weight for s in cfg.data.sources]
    if any(w < 0 for w in weights) or (weights and sum(weights) <= 0):
        raise ConfigError(f"data.sources weights {weights}: use non-negative weights, not all zero")
    for s in cfg.data.sources:
        if not s.path:
            raise ConfigError(f"data source {s.name or '?'}: set its path to a shard directory")
    if not cfg.model.checkpoint and cfg.model.tiny.max_position_embeddings < cfg.data.seq_len:
        raise ConfigError(
            f"data.seq_len={cfg.data.seq_len} exceeds model.tiny.max_position_embeddings="
            f"{cfg.model.tiny.max_position_embeddings}; lower data.seq_len or raise the model's"
        )


def _check_linear_ce(cfg: TrainConfig) -> None:
    m = cfg.model
    if m.ce_chunk_tokens < 1:
        raise ConfigError(f"model.ce_chunk_tokens={m.ce_chunk_tokens}: set the tokens per cross-entropy chunk, "
                          "1 or more (4096; fewer = less memory, smaller matmuls)")
    if m.compile and m.linear_ce != "plain":
        raise ConfigError(f"model.compile=true with model.linear_ce={m.linear_ce}: the chunked loss hooks the LM "
                          "head with a hook; the two together under torch.compile are untested, so refused: use one or "
                          "the other (--set model.linear_ce=plain, or --set model.compile=false)")
    if m.linear_ce == "plain":
        return
    family = getattr(cfg, "model_type", "unit_lm")
    if family != "unit_lm":  # the other families compute their own logits: the setting would do nothing
        raise ConfigError(f"model.linear_ce={m.linear_ce} applies to the unit LM only, not model_type={family}; "
                          "set model.linear_ce=plain")
    if cfg.deepspeed.zero_stage == 3:  # ZeRO-3 frees the head's weight after the forward; the backward reads it
        raise ConfigError(f"model.linear_ce={m.linear_ce} needs the LM head's weight in the backward, which "
                          "ZeRO-3 partitions away; use deepspeed.zero_stage=1 or 2, or model.linear_ce=plain")
    if m.linear_ce == "liger":
        import importlib.util

        import torch

        if not torch.cuda.is_available():
            raise ConfigError("model.linear_ce=liger runs liger-kernel's Triton kernel, which needs a CUDA GPU; "
                              "on CPU use model.linear_ce=chunked")
        if importlib.util.find_spec("liger_kernel") is None:
            raise ConfigError("model.linear_ce=liger: liger_kernel is not installed; `pip install liger-kernel`, "
                              "or use model.linear_ce=chunked")


def _check_tiny(t: TinyModelConfig) -> None:
    """A from-scratch model's shape: transformers builds it without checking and fails in the
    first forward with a shape error that names no setting."""
    sizes = {k: getattr(t, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                        "num_attention_heads", "num_key_value_heads", "base_vocab_size")}
    bad = {k: v for k, v in sizes.items() if v < 1}
    if bad:
        raise ConfigError("model.tiny." + ", model.tiny.".join(f"{k}={v}" for k, v in bad.items())
                          + ": set each model size to 1 or more")
    if t.hidden_size % t.num_attention_heads or t.num_attention_heads % t.num_key_value_heads:
        raise ConfigError(f"model.tiny.hidden_size={t.hidden_size}, num_attention_heads={t.num_attention_heads}, "
                          f"num_key_value_heads={t.num_key_value_heads}: hidden_size must be a multiple of "
                          "num_attention_heads and num_attention_heads of num_key_value_heads")
