"""The trainer hooks of the continuous-input family (``model_type = "continuous"``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from spiritlm.config import ConfigError
from spiritlm.models.spec import Capabilities, ModelSpec
from spiritlm.components.packing import IGNORE

log = logging.getLogger(__name__)


def _config_cls():
    from spiritlm.models.continuous.config import ContinuousTrainConfig

    return ContinuousTrainConfig


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def build(cfg, ds_config=None, dtype=torch.float32):
    from spiritlm.models.continuous.model import build_continuous

    if cfg.deepspeed.zero_stage == 3:
        raise ConfigError("the continuous-input model trains with deepspeed.zero_stage 0, 1 or 2 (its frozen "
                          "encoder and LM are not partitioned); set deepspeed.zero_stage=2")
    if cfg.model.attn_implementation not in ("sdpa", "eager"):
        raise ConfigError(f"model.attn_implementation={cfg.model.attn_implementation!r}: the continuous model keeps "
                          "packed utterances apart with an explicit block mask, which flash attention drops; "
                          "use 'sdpa' or 'eager'")
    model = build_continuous(cfg, dtype)
    max_pos = getattr(model.lm_config, "max_position_embeddings", None)
    if max_pos and cfg.data.seq_len > max_pos:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds the LM's max_position_embeddings={max_pos}; "
                          "lower data.seq_len")
    counts = model.param_counts()
    if _rank() == 0:
        log.info("parameters by part (trainable / total): %s", ", ".join(
            f"{k} {v['trainable']:,} / {v['total']:,}" for k, v in counts.items()))
        out = Path(cfg.run_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "param_counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    return model, None


def make_batches(cfg, model, rank: int = 0, world: int = 1, progress: bool = True):
    """The reader over the recipe's manifests; frozen-encoder features cached in shards (rank 0
    encodes, the others wait and read)."""
    import torch.distributed as dist

    from spiritlm.models.continuous.config import encoder_frozen
    from spiritlm.models.continuous.data import (ContinuousBatches, FeatureCache, cache_dir_for,
                                                 encoder_identity, read_utterances)

    c = cfg.continuous
    if not c.data.manifests and not c.data.synthetic:
        raise ConfigError("continuous.data.manifests is empty: list the data stage's manifests (JSON Lines "
                          "with audio_path + text), or set continuous.data.synthetic=N for a smoke test")
    utts, _skips = read_utterances(c.data, model.tok, model.frames_for, cfg.data.seq_len, c.placement,
                                   chars=model.chars if model.ctc is not None else None, seed=cfg.seed)
    cache = None
    if encoder_frozen(c) and c.data.cache_features:
        ident = encoder_identity(c.encoder, cfg.seed)
        cache = FeatureCache(cache_dir_for(cfg.run_dir, c.encoder, c.data.features_dir, cfg.seed), ident)
        if rank == 0:
            cache.load()
            n = cache.build(utts, model.encoder, progress=progress)
            if n:
                log.info("encoder features of %d utterances cached in %s", n, cache.dir)
        if dist.is_initialized():
            dist.barrier()
        if rank != 0:
            cache.load()
    return ContinuousBatches(utts, cfg.data.seq_len, c.placement, model.tok.bos_id, model.tok.eos_id,
                             model.tok.audio_id, pad_id=model.tok.eos_id, seed=cfg.seed, rank=rank, world=world,
                             cache=cache)


def text_loss(logits_BTV: torch.Tensor, targets_BT: torch.Tensor):
    """Mean CE over transcript targets, and (sums, counts) in the trainer's TYPES order
    (text, speech, switch): every target here is text."""
    V = logits_BTV.shape[-1]
    t = targets_BT.reshape(-1)
    ce = F.cross_entropy(logits_BTV.reshape(-1, V).float(), t, ignore_index=IGNORE, reduction="sum")
    n = (t != IGNORE).sum()
    zero = ce.new_zeros(())
    return ce / n.clamp(min=1), torch.stack([ce.detach(), zero, zero]), torch.stack([n.to(ce.dtype), zero, zero])


def loss(engine, batch, device):
    logits, aux = engine(batch)
    ce, sums, counts = text_loss(logits, batch["targets_BT"].to(logits.device))
    return ce + aux, sums, counts


def export(trainer, out_dir: Path) -> Path:
    from spiritlm.config import dump_config
    from spiritlm.components import checkpoint as ckpt

    model = trainer.engine.module
    if ckpt._rank() == 0:
        model.export_merged(Path(out_dir), extra_files={"spiritlm_train_config.yaml": dump_config(trainer.cfg)})
        model.save_parts(Path(trainer.run_dir) / "parts")
    ckpt._barrier()
    return Path(out_dir)


def save_parts(trainer, ckpt_path: Path) -> None:
    """Every checkpoint also holds ``parts/``: the projector (+ CTC head, conformer) as
    safetensors and the LoRA adapters in peft's layout, usable without DeepSpeed."""
    from spiritlm.components import checkpoint as ckpt

    if ckpt._rank() == 0:
        trainer.engine.module.save_parts(Path(ckpt_path) / "parts")
    ckpt._barrier()


def detect(d: Path) -> bool:
    from spiritlm.models.continuous.model import CONFIG_FILE

    return (d / CONFIG_FILE).is_file()


def load(directory, device: str = "cpu", dtype=None):
    from spiritlm.models.continuous.model import load_continuous

    return load_continuous(directory, device), None


def make_scorer(model, tokenizer, encoder, scoring, eval_cfg):
    from spiritlm.models.continuous.scoring import ContinuousScorer

    return ContinuousScorer(model)


def transcribe_items(model, items, max_new_tokens: int = 0) -> dict:
    """Zero-shot ASR (the model is trained to transcribe): batched greedy decoding and WER."""
    from spiritlm.models.continuous.asr import evaluate_asr

    return evaluate_asr(model, items, max_new_tokens=max_new_tokens)


def transcribe(model, wav, window=None, max_chunk_tokens=None, max_new_tokens: int = 0):
    """Greedy decoding of the whole utterance (default budget: 8 tokens per second, at least 64)."""
    from spiritlm.models.continuous.asr import transcribe as greedy

    budget = max_new_tokens or max(64, int(8 * wav.size / 16000))
    return greedy(model, [wav], batch_size=1, max_new_tokens=budget)[0], {"max_new_tokens": budget}


# reads speech as audio embeddings and writes text only: speech continuations (S, T2S), STSP,
# TTS and speech classification are not its tasks
CAPABILITIES = Capabilities(speech_in=True, speech_out=False, text_out=True, generate=False, transcribe=True,
                            settings=("T", "S2T"),
                            tasks=("swuggy", "sblimp", "storycloze", "topic_storycloze", "asr", "lm_eval"))

SPEC = ModelSpec("continuous", _config_cls, build, make_batches, loss,
                 param_counts=lambda m: m.param_counts(), export=export, save_parts=save_parts,
                 detect=detect, detect_priority=10, load=load, scorer=make_scorer, asr=transcribe_items,
                 transcribe=transcribe,
                 capabilities=CAPABILITIES,
                 description="continuous speech input: encoder -> stack -> projector -> LM (SpeechLLM, Tiny Audio)")
