"""The model: a HF LLaMA-architecture checkpoint extended with the Spirit LM speech vocabulary.

``build_model(cfg.model)`` loads ``LlamaForCausalLM`` from a local directory (LLaMA-2-7B is the
reference) or builds a tiny one, optionally raises RoPE θ (paper: 10k -> 100k), then
``add_speech_vocab`` resizes input embeddings and LM head so that the ids of
``spiritlm.vocab.VocabLayout`` exist ([Text] = base, [Speech] = base + 1, [Hu0] = base + 2, ...),
either exactly (``layout.vocab_size``) or padded (``layout.padded_vocab_size``). Under ZeRO-3
the resize runs inside ``deepspeed.zero.GatheredParameters`` so every rank sees full tensors.

New rows (``model.new_rows_init``):

* ``"mean"`` (default): the mean of the existing rows plus small isotropic noise. This is the
  usual "mean-resizing" of new vocabulary (Hewitt 2021, "Initializing New Word Embeddings for
  Pretrained Language Models"; HF transformers' ``resize_token_embeddings(mean_resizing=True)``):
  a new row starting at the mean keeps the first steps' softmax close to the pretrained model's
  (a random row of the wrong scale can dominate or vanish in the LM head), the noise makes the
  rows distinct.
* ``"hf_mean"``: HF's own mean-resizing, N(mean, 1e-5 * covariance of the old rows).
* ``"normal"``: N(0, init_std) -- the paper's choice as we read it ("new embeddings randomly
  initialised", REFERENCE.md; the paper gives no distribution, 0.02 is LLaMA's init std). We
  could not re-read the paper's full text here, so the default stays the standard mean-resizing.

Released checkpoints: a Spirit LM checkpoint keeps its rows; its layout (from
``spiritlm_vocab.json`` or the added tokens of its tokenizer: Base = ``[Hu*]`` only, 32512 rows;
Expressive, 32768 rows) must be the one the config describes, else the run is refused with the
settings to use.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PretrainedConfig

from spiritlm.components import varlen_attention  # noqa: F401  registers attn_implementation "sdpa_varlen"
from spiritlm.artifacts import hf_directory, typed_section
from spiritlm.config import ConfigError
from spiritlm.components.config import ModelConfig, TinyModelConfig
from spiritlm.models.unit_lm.backbone import load_backbone_config
from spiritlm.text_tokenizer import (LAYOUT_FILE, SP_FILE, SpiritTokenizer, has_text_tokenizer, layout_of_hf_dir,
                                     text_sha256_of_dir, text_size_of_dir)
from spiritlm.vocab import LayoutMismatchError, VocabLayout, describe_layout, expected_rows_text, rows_fit

log = logging.getLogger(__name__)


def layout_for(cfg: ModelConfig, base_vocab_size: int) -> VocabLayout:
    return VocabLayout(
        base_vocab_size=base_vocab_size,
        hubert_size=cfg.hubert_size,
        pitch_size=cfg.pitch_size,
        style_size=cfg.style_size,
    )


def tiny_llama_config(t: TinyModelConfig, vocab_size: int | None = None) -> LlamaConfig:
    """A small LLaMA config (same architecture as LLaMA-2: RMSNorm, SwiGLU, RoPE, GQA)."""
    return LlamaConfig(
        vocab_size=vocab_size or t.base_vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
        max_position_embeddings=t.max_position_embeddings,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )


def rope_theta_of(config: LlamaConfig) -> float:
    rp = getattr(config, "rope_parameters", None) or {}
    return float(rp.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _set_rope_theta(config: LlamaConfig, theta: float) -> None:
    rp = dict(getattr(config, "rope_parameters", None) or {"rope_type": "default"})
    rp["rope_theta"] = float(theta)
    config.rope_parameters = rp


def tokenizer_dir(cfg: ModelConfig) -> Path | None:
    """The run's text tokenizer directory (``model.tokenizer``, else the checkpoint's), if any:
    ``tokenizer.model`` (SentencePiece) or ``tokenizer.json``."""
    d = cfg.tokenizer or cfg.checkpoint
    if not d:
        return None
    if not has_text_tokenizer(d):
        if cfg.tokenizer:
            raise ConfigError(f"model.tokenizer={d} has neither tokenizer.model nor tokenizer.json: point it "
                              "at a tokenizer directory (the base model's, or one `spiritlm train` exported)")
        return None
    return Path(d)


def tokenizer_size(cfg: ModelConfig) -> int | None:
    """Ids of the text tokenizer, reserved/special ones included and our speech tokens left out."""
    d = tokenizer_dir(cfg)
    return None if d is None else _guard(text_size_of_dir, d)


def tokenizer_sha256(cfg: ModelConfig) -> str | None:
    """The run's text tokenizer identity (SentencePiece: the file's SHA-256; tokenizer.json: its
    canonical JSON's, our tokens left out): the data stage records the same in its shards."""
    d = tokenizer_dir(cfg)
    return None if d is None else _guard(text_sha256_of_dir, d)


def load_run_tokenizer(cfg: ModelConfig, layout: VocabLayout):
    """The run's SpiritTokenizer at ``layout``, or None without a tokenizer."""
    d = tokenizer_dir(cfg)
    return None if d is None else _guard(lambda x: SpiritTokenizer.from_pretrained(x, layout=layout), d)


def _guard(fn, d: Path):
    try:
        return fn(d)
    except (ValueError, FileNotFoundError) as e:  # TokenizerError, HFTextError, LayoutMismatchError
        raise ConfigError(f"tokenizer {d}: {e}") from None


def load_base_config(cfg: ModelConfig) -> PretrainedConfig:
    if not cfg.checkpoint:
        # a tiny model takes its text vocabulary from the tokenizer when one is given
        config = tiny_llama_config(cfg.tiny, vocab_size=tokenizer_size(cfg))
    else:
        config = load_backbone_config(cfg.checkpoint)
    if cfg.rope_theta is not None:
        _set_rope_theta(config, cfg.rope_theta)
    config.use_cache = False
    return config


def base_vocab_size_of(cfg: ModelConfig, config: PretrainedConfig) -> int:
    """Where [Text] goes: the text tokenizer's size (a Spirit LM checkpoint keeps its own rows)."""
    n = tokenizer_size(cfg)
    if n is not None:
        return n
    if cfg.checkpoint and (Path(cfg.checkpoint) / "spiritlm_train_config.yaml").is_file():
        # a `spiritlm train` export: its rows include the speech vocabulary, so they do not say
        # where the text pieces end (taking them as text gave a misleading vocabulary error)
        raise ConfigError(
            f"model.checkpoint={cfg.checkpoint} has no tokenizer.model and model.tokenizer is not set (nor a tokenizer.json): "
            f"its {config.vocab_size} embedding rows include the speech vocabulary, so the text "
            "vocabulary is unknown. Set model.tokenizer=DIR (the tokenizer it was trained with) or "
            "copy that tokenizer.model / tokenizer.json into the checkpoint")
    return cfg.tiny.base_vocab_size if not cfg.checkpoint else config.vocab_size


def target_rows(cfg: ModelConfig, layout: VocabLayout) -> int:
    if cfg.vocab_rows == "exact":
        return layout.vocab_size
    return layout.padded_vocab_size(cfg.pad_multiple)


def check_vocab(current_rows: int, layout: VocabLayout, rows: int, free_padding: bool = False) -> str:
    """'extend' (add speech rows), 'keep' (already a Spirit LM model); raise on a mismatch.
    ``free_padding``: rows past the text ids are the family's padding, not ours (a base model
    with a tokenizer.json: Qwen2.5 has 151936 rows for 151665 ids) -- they are taken over."""
    if current_rows == layout.base_vocab_size or (free_padding and current_rows > layout.base_vocab_size):
        return "extend"
    if current_rows == rows or rows_fit(layout, current_rows):
        return "keep"
    raise ConfigError(
        f"the checkpoint has {current_rows} embedding rows but the text tokenizer has "
        f"{layout.base_vocab_size} pieces and the configured speech layout is {describe_layout(layout)}: "
        f"expected {expected_rows_text(layout.base_vocab_size)}. Use the tokenizer.model that came with "
        f"the checkpoint (model.tokenizer), set model.hubert_size/pitch_size/style_size to the "
        f"checkpoint's layout (Base: --set model.pitch_size=0 --set model.style_size=0), or start from a base "
        f"LLaMA checkpoint with {layout.base_vocab_size} rows"
    )


def checkpoint_layout(cfg: ModelConfig) -> VocabLayout | None:
    """The speech layout a Spirit LM checkpoint directory declares (our ``spiritlm_vocab.json``, or
    the added tokens of a released checkpoint's tokenizer files); None for a text-only one."""
    if not cfg.checkpoint:
        return None
    d = Path(cfg.checkpoint)
    f = d / LAYOUT_FILE
    if f.is_file():
        return typed_section(f, lambda d: VocabLayout(**d), "layout")
    if not has_text_tokenizer(d):
        return None
    try:
        return layout_of_hf_dir(d)
    except LayoutMismatchError as e:
        raise ConfigError(str(e)) from None


def check_checkpoint_layout(cfg: ModelConfig, layout: VocabLayout) -> None:
    """A Spirit LM checkpoint continues only with its own layout (the ids its rows were trained at)."""
    found = checkpoint_layout(cfg)
    if found is None or found == layout:
        return
    settings = (f"model.hubert_size={found.hubert_size} model.pitch_size={found.pitch_size} "
                f"model.style_size={found.style_size}")
    # the fix as it is pasted on the command line: one --set per setting
    fix = " ".join(f"--set {kv}" for kv in settings.split())
    if found.base_vocab_size != layout.base_vocab_size:
        fix = f"use the checkpoint's own tokenizer (leave model.tokenizer empty), and {fix}"
    raise ConfigError(
        f"model.checkpoint={cfg.checkpoint} is a Spirit LM {describe_layout(found)} checkpoint, but the "
        f"run is configured for {describe_layout(layout)}; continue it with its own layout ({settings}): {fix}"
    )


def free_padding(cfg: ModelConfig) -> bool:
    """A base checkpoint (no speech layout of its own) whose text tokenizer is a tokenizer.json:
    its rows past the tokenizer's ids are padding the speech tokens may take."""
    d = tokenizer_dir(cfg)
    return (bool(cfg.checkpoint) and d is not None and not (d / SP_FILE).is_file()
            and checkpoint_layout(cfg) is None)


def plan_model(cfg: ModelConfig) -> tuple[PretrainedConfig, VocabLayout, int]:
    """(config, layout, embedding rows after the speech vocabulary), reading no weights: the
    trainer checks seq_len and shard metadata against these before loading anything big."""
    config = load_base_config(cfg)
    layout = layout_for(cfg, base_vocab_size_of(cfg, config))
    check_checkpoint_layout(cfg, layout)
    rows = target_rows(cfg, layout)
    if check_vocab(config.vocab_size, layout, rows, free_padding(cfg)) == "keep":
        rows = config.vocab_size
    return config, layout, max(rows, config.vocab_size)


def build_model(cfg: ModelConfig, ds_config: dict | None = None, dtype=torch.float32):
    """Return (model, layout, keepalive).

    With a ZeRO-3 ``ds_config`` the weights are created partitioned (``deepspeed.zero.Init``
    through transformers' ``HfDeepSpeedConfig``, which transformers also uses to gather the
    embeddings while resizing); keep ``keepalive`` referenced until training ends.
    """
    config = load_base_config(cfg)
    layout = layout_for(cfg, base_vocab_size_of(cfg, config))
    check_checkpoint_layout(cfg, layout)
    config._attn_implementation = cfg.attn_implementation
    zero3 = bool(ds_config) and int(ds_config.get("zero_optimization", {}).get("stage", 0)) == 3
    keepalive = None
    if zero3 and cfg.checkpoint:
        from transformers.integrations import HfDeepSpeedConfig

        try:
            keepalive = HfDeepSpeedConfig(ds_config)  # transformers holds a weak reference only
        except Exception as e:  # transformers requires accelerate for its DeepSpeed integration
            raise ConfigError(f"ZeRO-3 model loading needs the 'accelerate' package ({e}); "
                              "pip install accelerate, or use deepspeed.zero_stage <= 2") from None
        # from_pretrained enters zero.Init itself; a tiny model is built whole on every rank
        # (same init as without ZeRO) and deepspeed.initialize partitions it.
    if cfg.checkpoint:
        with hf_directory(Path(cfg.checkpoint)):
            model = AutoModelForCausalLM.from_pretrained(
                cfg.checkpoint, config=config, dtype=dtype, attn_implementation=cfg.attn_implementation,
                trust_remote_code=False)
    else:
        torch.manual_seed(0)  # the tiny model's initial weights do not depend on the run seed
        model = LlamaForCausalLM(config).to(dtype)
    add_speech_vocab(model, layout, cfg, zero3=keepalive is not None, free_padding=free_padding(cfg))
    model.config.use_cache = False
    return model, layout, keepalive


@torch.no_grad()
def _init_rows(weight: torch.Tensor, start: int, how: str, noise_std: float, init_std: float,
               generator: torch.Generator) -> None:
    n = weight.shape[0] - start
    if n <= 0:
        return
    noise = torch.randn(n, weight.shape[1], generator=generator, dtype=torch.float32)
    if how == "mean":
        mean = weight[:start].float().mean(dim=0, keepdim=True)
        new = mean + noise_std * noise
    else:
        new = init_std * noise
    weight[start:] = new.to(weight.dtype)


def add_speech_vocab(model, layout: VocabLayout, cfg: ModelConfig,
                     zero3: bool = False, seed: int = 1234, free_padding: bool = False) -> int:
    """Resize embeddings and LM head to hold the speech ids; returns the number of rows.

    A family's padding rows (``free_padding``) are cut first, so the new rows are initialised
    from the text rows alone, exactly as for a model without padding; a model with more padding
    than the layout needs keeps its row count. Tied embeddings stay one tensor (checked)."""
    rows = target_rows(cfg, layout)
    emb = model.get_input_embeddings()
    current = int(getattr(emb.weight, "ds_shape", emb.weight.shape)[0])  # ZeRO-3: full shape
    if check_vocab(current, layout, rows, free_padding) == "keep":
        log.info("checkpoint already has %d rows (>= %d speech-text ids); kept", current, layout.vocab_size)
        return current
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is emb.weight
    if current > layout.base_vocab_size:
        rows = max(rows, current)
        model.resize_token_embeddings(layout.base_vocab_size, mean_resizing=False)
        log.info("the checkpoint's %d rows past its %d text ids are padding: taken for the speech vocabulary",
                 current - layout.base_vocab_size, layout.base_vocab_size)
    # resize_token_embeddings gathers ZeRO-3 parameters itself when deepspeed is active
    hf_mean = cfg.new_rows_init == "hf_mean"
    if hf_mean:
        torch.manual_seed(seed)  # HF samples the new rows from torch's global generator
    model.resize_token_embeddings(rows, mean_resizing=hf_mean)
    _check_still_tied(model, tied)
    if hf_mean:
        model.config.vocab_size = rows
        log.info("speech vocabulary added: %d -> %d rows (HF mean-resizing)", current, rows)
        return rows
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    params = [emb.weight] + ([head.weight] if head is not None else [])
    gather = contextlib.nullcontext()
    if zero3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    g = torch.Generator().manual_seed(seed)
    with gather:
        _init_rows(emb.weight, layout.base_vocab_size, cfg.new_rows_init, cfg.noise_std, cfg.init_std, g)
        if head is not None and head.weight is not emb.weight:
            _init_rows(head.weight, layout.base_vocab_size, cfg.new_rows_init, cfg.noise_std, cfg.init_std, g)
    model.config.vocab_size = rows
    log.info("speech vocabulary added: %d -> %d rows ([Text]=%d, [Speech]=%d, [Hu0]=%d)", current, rows,
             layout.text_id, layout.speech_id, layout.streams["hubert"].offset)
    return rows


def _check_still_tied(model, tied: bool) -> None:
    head = model.get_output_embeddings()
    if tied and (head is None or head.weight is not model.get_input_embeddings().weight):
        raise RuntimeError("resizing untied the input and output embeddings of a tied-embedding model")
