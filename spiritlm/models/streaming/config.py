"""Recipe of the chunk-synchronous streaming speech LM (SpeechLLM-XL; ``train/streaming_*.toml``).

A streaming recipe is a continuous recipe (:class:`ContinuousTrainConfig`: the same encoder,
projector, LM, trainable parts and manifests in ``[continuous]``) plus ``model_type = "streaming"``
and a ``[streaming]`` section::

    audio -> encoder frames (T, D) -> cut into chunks of ``chunk_s`` seconds (``chunk_frames``
    encoder frames, a multiple of projector.stack) -> per chunk k: its audio embeddings X_k, the
    text tokens y_k whose CTC end frame lies in chunk k, then the end-of-chunk token ``$``.
    Attention: chunk k sees itself (causally) and the ``window`` chunks before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from spiritlm.config import ConfigError
from spiritlm.models.continuous.config import ContinuousTrainConfig


@dataclass
class StreamingConfig:
    chunk_s: float = 1.28  # the paper's chunk (0.32-2.56 s studied)
    window: int = 1  # b: previous chunks every position attends to (the paper's figure: 1)
    # `$` (end of chunk): predicted after each chunk's text. SpeechLLM-XL's figure 1 feeds the LM
    # audio encodings interleaved with text embeddings and lists `$` among the targets only, so it
    # is NOT fed back by default (the next chunk's audio follows the chunk's last text token);
    # true = `$` also enters the sequence as an input token after each chunk.
    eoc_input: bool = False
    eoc_id: int = -1  # the `$` token id; -1 = the LM tokenizer's EOS (no new embedding row)
    # Alignment (data stage): a continuous-model export (<run_dir>/hf of train/streaming_ctc_demo.toml)
    # whose encoder + ctc.safetensors give the CTC posteriors; "" = this model's own encoder and
    # CTC head (only sensible when continuous.encoder.checkpoint and ctc_checkpoint are trained).
    align_model: str = ""
    align_dir: str = ""  # alignment cache; "" = <run_dir>/alignment
    ctc_checkpoint: str = ""  # a ctc.safetensors for this model's CTC head ("" = fresh / none)
    # Encoder: "full" = the continuous family's encoder over the whole utterance (frozen features
    # can be cached); "chunked" = spiritlm.models.streaming.stream_encoder.ChunkedConformerEncoder
    # (chunk attention with encoder_left_chunks chunks of left context; same weights as the conformer)
    encoder: Literal["full", "chunked"] = "full"
    encoder_left_chunks: int = 1
    max_chunk_tokens: int = 32  # decoding: a chunk's text is cut here if `$` never comes


@dataclass
class StreamingTrainConfig(ContinuousTrainConfig):
    model_type: str = "streaming"
    streaming: StreamingConfig = field(default_factory=StreamingConfig)


def chunk_frames(s: StreamingConfig, frame_rate: float, stack: int) -> int:
    """Encoder frames per chunk; a ConfigError saying the nearest valid chunk sizes otherwise."""
    n = round(s.chunk_s * frame_rate)
    if n < stack or n % stack or abs(n - s.chunk_s * frame_rate) > 1e-6:
        unit = stack / frame_rate
        lo = max(1, int(s.chunk_s / unit)) * unit
        raise ConfigError(f"streaming.chunk_s={s.chunk_s}: a chunk must hold a whole number of projector "
                          f"stacks ({stack} frames at {frame_rate:g} Hz = {unit:g} s); use e.g. "
                          f"chunk_s={lo:g} or {lo + unit:g}")
    return n


def validate_streaming(s: StreamingConfig) -> None:
    if s.window < 0:
        raise ConfigError(f"streaming.window={s.window}: use 0 (the chunk alone) or more previous chunks")
    if s.chunk_s <= 0:
        raise ConfigError(f"streaming.chunk_s={s.chunk_s}: use a positive chunk length in seconds")
    if s.encoder_left_chunks < 0:
        raise ConfigError("streaming.encoder_left_chunks must be 0 or more")
    if s.max_chunk_tokens < 1:
        raise ConfigError("streaming.max_chunk_tokens must be 1 or more")
