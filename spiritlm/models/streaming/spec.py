"""The trainer hooks of the streaming family (``model_type = "streaming"``).

Data stage, in order (rank 0 computes, other ranks wait and read the caches):
1. the manifests' utterances of the split (the continuous reader: same skips and counts);
2. the CTC forced alignment of every utterance's LM tokens (``streaming.align_model``'s encoder and
   CTC head), cached under ``<run_dir>/alignment`` (or ``streaming.align_dir``);
3. frozen-encoder features cached like the continuous family's;
4. chunked sequences (:class:`StreamingBatches`), packed whole into rows of ``data.seq_len``.

Loss: next-token cross-entropy on the text tokens and every ``$`` (the continuous family's
``text_loss``), plus the weighted CTC loss when the encoder trains with a CTC head.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import torch

from spiritlm.artifacts import load_state, typed_section
from spiritlm.config import ConfigError
from spiritlm.models.spec import Capabilities, ModelSpec
from spiritlm.models.continuous import spec as cspec

log = logging.getLogger(__name__)
loss = cspec.loss  # text CE (transcript tokens and every `$`) + the auxiliary losses the model returns


def _config_cls():
    from spiritlm.models.streaming.config import StreamingTrainConfig

    return StreamingTrainConfig


def build(cfg, ds_config=None, dtype=torch.float32):
    from spiritlm.models.streaming.model import build_streaming

    if cfg.deepspeed.zero_stage == 3:
        raise ConfigError("the streaming model trains with deepspeed.zero_stage 0, 1 or 2; set deepspeed.zero_stage=2")
    if cfg.model.attn_implementation not in ("sdpa", "eager", "flex_attention"):
        raise ConfigError(f"model.attn_implementation={cfg.model.attn_implementation!r}: the window mask needs "
                          "'sdpa' or 'eager' (explicit mask), or 'flex_attention' on CUDA (block mask)")
    if cfg.model.attn_implementation == "flex_attention" and not torch.cuda.is_available():
        raise ConfigError("model.attn_implementation='flex_attention' has no CPU backward in this torch: use 'sdpa' "
                          "on CPU (the same window as an explicit mask)")
    model = build_streaming(cfg, dtype)
    counts = model.param_counts()
    if cspec._rank() == 0:
        log.info("parameters by part (trainable / total): %s", ", ".join(
            f"{k} {v['trainable']:,} / {v['total']:,}" for k, v in counts.items()))
        out = Path(cfg.run_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "param_counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    return model, None


def load_aligner(directory: str | Path):
    """(encoder, CTC head) of a continuous model's parts: an export (``<run_dir>/hf``) or a
    checkpoint's ``parts/`` (encoder.safetensors + ctc.safetensors + continuous.json); the LM is
    not needed to align, so it is not loaded."""
    from spiritlm.models.continuous.encoders import CharVocab, CTCHead, build_encoder
    from spiritlm.models.continuous.model import CONFIG_FILE, _continuous_from_dict

    d = Path(directory)
    if not (d / "ctc.safetensors").is_file() or not (d / CONFIG_FILE).is_file():
        raise ConfigError(f"streaming.align_model={d} has no ctc.safetensors + {CONFIG_FILE}: point it at a "
                          "continuous export or checkpoint parts/ trained with continuous.encoder.ctc_weight > 0 "
                          "(train/streaming_ctc_demo.toml)")
    c = typed_section(d / CONFIG_FILE, _continuous_from_dict, "continuous")
    if c.encoder.kind == "conformer":
        c.encoder.checkpoint = str(d / "encoder.safetensors")
    enc = build_encoder(c.encoder).eval()
    ctc = CTCHead(enc.dim, len(CharVocab()))
    load_state(ctc, d / "ctc.safetensors", "CTC head", "streaming.align_model")
    return enc, ctc.eval()


def aligner(cfg, model):
    """(encoder, ctc head, source) giving the alignment posteriors."""
    s = cfg.streaming
    if s.align_model:
        enc, ctc = load_aligner(s.align_model)
        if abs(enc.frame_rate - model.encoder.frame_rate) > 1e-6:
            raise ConfigError(f"the alignment model's encoder runs at {enc.frame_rate:g} Hz but this model's "
                              f"at {model.encoder.frame_rate:g} Hz: align with an encoder of the same frame rate")
        return enc, ctc, s.align_model
    if model.ctc is None:
        raise ConfigError("streaming.align_model is empty and the model has no CTC head: point align_model at a "
                          "continuous export with ctc.safetensors (train/streaming_ctc_demo.toml's <run_dir>/hf)")
    return model.encoder, model.ctc, cfg.continuous.encoder.checkpoint or "(own encoder)"


def read_stream_utterances(cfg, model, rank: int = 0, progress: bool = True, split: str | None = None):
    """Utterances of the split with their token end frames (alignment cached); skips counted."""
    import torch.distributed as dist

    from spiritlm.models.continuous.data import read_utterances
    from spiritlm.models.streaming.data import AlignmentCache, StreamUtt, alignment_identity, n_chunks

    c = cfg.continuous
    utts, skips = read_utterances(c.data, model.tok, model.frames_for, cfg.data.seq_len, "prepend",
                                  chars=model.chars, split=split, seed=cfg.seed)
    enc, ctc, src = aligner(cfg, model)
    adir = Path(cfg.streaming.align_dir or Path(cfg.run_dir) / "alignment")
    cache = AlignmentCache(adir, alignment_identity(src, str(model.tok.directory), cfg.seed))
    if rank == 0:
        cache.load(utts)  # drops entries whose audio or transcript changed since they were aligned
        todo = [u for u in utts if u.id not in cache.ends]
        if todo:
            from spiritlm.models.streaming.data import align_utterances

            enc.eval()
            cache.ends.update(align_utterances(todo, enc, ctc, model.tok, model.chars, progress=progress))
            cache.save()
    if dist.is_initialized():
        dist.barrier()
    if rank != 0:
        cache.load()
    out, skips = [], Counter(skips)
    extra = 0 if not cfg.streaming.eoc_input else 1
    for u in utts:
        if u.id not in cache.ends:
            skips["unaligned"] += 1
            continue
        K = n_chunks(u.n_slots, model.slots_per_chunk)
        if u.n_slots + len(u.text_ids) + extra * K > cfg.data.seq_len:
            skips["too_long"] += 1
            continue
        out.append(StreamUtt(**{**u.__dict__, "token_end_frames": cache.ends[u.id]}))
    if skips:
        log.warning("streaming data: %d utterances kept, skipped %s", len(out),
                    ", ".join(f"{v} {k}" for k, v in sorted(skips.items())))
    return out, skips


def make_batches(cfg, model, rank: int = 0, world: int = 1, progress: bool = True):
    import torch.distributed as dist

    from spiritlm.models.continuous.config import encoder_frozen
    from spiritlm.models.continuous.data import FeatureCache, encoder_identity
    from spiritlm.models.streaming.data import StreamingBatches

    c, s = cfg.continuous, cfg.streaming
    if not c.data.manifests and not c.data.synthetic:
        raise ConfigError("continuous.data.manifests is empty: list the data stage's manifests (JSON Lines with "
                          "audio_path + text), or set continuous.data.synthetic=N for a smoke test")
    utts, _ = read_stream_utterances(cfg, model, rank, progress)
    cache = None
    if encoder_frozen(c) and c.data.cache_features:
        ident = {**encoder_identity(c.encoder, cfg.seed), "streaming_encoder": s.encoder}
        if s.encoder == "chunked":
            ident.update(chunk_s=s.chunk_s, left_chunks=s.encoder_left_chunks)
        import hashlib

        h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
        d = Path(c.data.features_dir) if c.data.features_dir else Path(cfg.run_dir) / "features" / h
        cache = FeatureCache(d, ident)
        if rank == 0:
            cache.load()
            n = cache.build(utts, model.encoder, progress=progress)
            if n:
                log.info("encoder features of %d utterances cached in %s", n, cache.dir)
        if dist.is_initialized():
            dist.barrier()
        if rank != 0:
            cache.load()
    return StreamingBatches(utts, cfg.data.seq_len, model.chunk_frames, c.projector.stack, model.eoc_id,
                            model.tok.audio_id, s.eoc_input, seed=cfg.seed, rank=rank, world=world, cache=cache)


def detect(d: Path) -> bool:
    """Before the continuous family: a streaming export also holds continuous.json."""
    from spiritlm.models.streaming.model import STREAMING_FILE

    return (d / STREAMING_FILE).is_file()


def load(directory, device: str = "cpu", dtype=None):
    from spiritlm.models.streaming.model import load_streaming

    return load_streaming(directory, device), None


def transcribe(model, wav, window=None, max_chunk_tokens=None, max_new_tokens: int = 0):
    """The whole utterance, decoded chunk by chunk with the bounded cache."""
    from spiritlm.models.streaming.infer import transcribe_offline

    text, chunks = transcribe_offline(model, wav, window, max_chunk_tokens)
    return text, {"chunks": len(chunks)}


def stream(model, blocks, window=None, max_chunk_tokens=None):
    """(header, chunk results as each chunk completes, rows -> the transcript)."""
    from spiritlm.models.streaming.infer import check_streamable, transcribe_blocks

    check_streamable(model, window, max_chunk_tokens)  # a full-context encoder is refused before the header
    header = (f"streaming: chunks of {model.scfg.chunk_s:g} s, decoder window "
              f"{model.scfg.window if window is None else window} chunk(s), encoder left context "
              f"{model.encoder.left_chunks} chunk(s)")
    return (header, transcribe_blocks(model, blocks, window, max_chunk_tokens),
            lambda rows: model.tok.decode([t for r in rows for t in r.tokens]))


# transcribes (offline and chunk by chunk); the eval suite's scored tasks need its chunked layout,
# which no scorer implements yet: `spiritlm transcribe` and `spiritlm bench stream` measure it
CAPABILITIES = Capabilities(speech_in=True, speech_out=False, text_out=True, generate=False, transcribe=True,
                            stream=True, settings=(), tasks=())

SPEC = ModelSpec("streaming", _config_cls, build, make_batches, loss,
                 param_counts=lambda m: m.param_counts(), export=cspec.export, save_parts=cspec.save_parts,
                 detect=detect, detect_priority=30, load=load, capabilities=CAPABILITIES,
                 transcribe=transcribe, stream=stream,
                 description="chunk-synchronous streaming speech LM: audio chunks + their CTC-aligned text + `$`, "
                             "limited attention window (SpeechLLM-XL)")
