"""Streaming inference of the chunk-synchronous speech LM (issue 22, deliverable 4).

Audio arrives block by block through :func:`spiritlm.audio_blocks.audio_blocks`; this module turns
blocks into chunks, chunks into text with a bounded key/value cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from spiritlm.config import ConfigError

from spiritlm.audio_blocks import STDIN, audio_blocks  # noqa: F401  (the readers moved to the base layer)


# ---- argument checks ---------------------------------------------------------------------------------
def check_decode_args(window: int | None = None, max_chunk_tokens: int | None = None) -> None:
    """Refuse a decoder window or a per-chunk token cap outside its range (None: the model's own)."""
    import operator

    def bad(x, lo: int) -> bool:
        try:
            return isinstance(x, bool) or operator.index(x) < lo
        except TypeError:
            return True

    if window is not None and bad(window, 0):
        raise ValueError(f"window={window}: use an integer >= 0 (the decoder's window in chunks before the current "
                         "one; 0 = the current chunk only; default: the model's streaming.window)")
    if max_chunk_tokens is not None and bad(max_chunk_tokens, 1):
        raise ValueError(f"max_chunk_tokens={max_chunk_tokens}: use an integer >= 1 (tokens per chunk at most; "
                         "default: the model's streaming.max_chunk_tokens)")


def check_streamable(model, window: int | None = None, max_chunk_tokens: int | None = None) -> None:
    """Everything :class:`StreamingTranscriber` needs, checked before any audio is read: a chunked
    encoder, a per-stack projector, and decoding arguments in range."""
    from spiritlm.models.streaming.stream_encoder import ChunkedConformerEncoder

    if not isinstance(model.encoder, ChunkedConformerEncoder):
        raise ConfigError("this model's encoder reads the whole utterance (streaming.encoder='full'), so it "
                          "cannot stream: transcribe without --stream (the decoder still runs chunk by chunk), "
                          "or train with streaming.encoder='chunked'")
    kind = model.cfg.projector.kind
    if kind not in CHUNK_LOCAL_PROJECTORS:
        raise ConfigError(f"continuous.projector.kind={kind!r} mixes frames across chunk boundaries; streaming "
                          f"needs a per-stack projector ({', '.join(CHUNK_LOCAL_PROJECTORS)})")
    check_decode_args(window, max_chunk_tokens)


# ---- the bounded key/value cache decoder ------------------------------------------------------------
class BoundedCacheDecoder:
    """Greedy chunk-synchronous decoding with a key/value cache of at most ``window + 1`` chunks.

    ``feed_chunk(emb_NH)`` appends one chunk's audio embeddings, generates greedily until ``$``
    (or ``max_chunk_tokens``: the same rule as the reference decoder in ``decode.py``) and returns
    the chunk's token ids. Before a chunk is read, the entries of chunks older than ``window``
    chunks are dropped from the front of every layer's cache, so the cache holds the current chunk
    and the ``window`` before it -- exactly what the window mask lets a query of this chunk see, so
    a plain causal mask over the cache is the window mask.

    Positions: every token keeps the absolute position it had in the stream (the model trains with
    positions counting from 0 through the utterance), and cached keys keep the rotation they were
    computed with. RoPE scores depend only on the query-key distance, so truncating the front of the
    cache changes nothing for the entries kept: logits equal the full-recompute reference (tested).
    """

    def __init__(self, model, window: int | None = None, max_chunk_tokens: int | None = None):
        from transformers import DynamicCache

        check_decode_args(window, max_chunk_tokens)
        self.model = model
        self.lm = model.lm
        self.window = model.scfg.window if window is None else int(window)
        self.limit = max_chunk_tokens or model.scfg.max_chunk_tokens
        self.table = self.lm.get_input_embeddings()
        self.device, self.dtype = self.table.weight.device, self.table.weight.dtype
        self.cache = DynamicCache(config=self.lm.config)
        self.chunk_lens: list[int] = []  # cache entries per chunk held, oldest first
        self.pos = 0  # absolute position of the next input
        self.chunks = 0
        self.peak_cache = 0  # the most entries the cache ever held
        self.last_logits: list[torch.Tensor] = []  # per generation step of the last chunk (tests)

    def cache_len(self) -> int:
        return sum(self.chunk_lens)

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.cache.layers
                   for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)

    def _evict(self) -> None:
        drop = 0
        while len(self.chunk_lens) > self.window:
            drop += self.chunk_lens.pop(0)
        if drop:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, drop:]
                layer.values = layer.values[:, :, drop:]

    def _step(self, x_1NH: torch.Tensor) -> torch.Tensor:
        n, held = x_1NH.shape[1], self.cache_len()
        pos = torch.arange(self.pos, self.pos + n, device=self.device)[None]
        # explicit (1, 1, n, held + n) mask: causal over the cache (HF would infer positions from the
        # truncated cache's length otherwise); every held entry is inside the window
        allowed = torch.ones(n, held + n, dtype=torch.bool, device=self.device).tril(held)
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        mask = mask.masked_fill(~allowed, torch.finfo(self.dtype).min)[None, None]
        out = self.lm(inputs_embeds=x_1NH.to(self.dtype), position_ids=pos, attention_mask=mask,
                      cache=self.cache, use_cache=True, logits_to_keep=1)
        self.pos += n
        self.chunk_lens[-1] += n
        self.peak_cache = max(self.peak_cache, self.cache_len())
        return out.logits[0, -1].float()

    def _token(self, t: int) -> torch.Tensor:
        return self.table(torch.tensor([[t]], device=self.device))

    @torch.no_grad()
    def feed_chunk(self, emb_NH: torch.Tensor, n_tokens: int | None = None) -> list[int]:
        """One chunk's audio embeddings (N slots, projected) -> its text token ids (no ``$``).
        ``n_tokens``: generate exactly that many, whatever the model says (benchmarks: a fixed
        amount of work per chunk)."""
        self._evict()
        self.chunk_lens.append(0)
        logits = self._step(emb_NH.to(self.device)[None])
        self.last_logits = [logits]
        toks: list[int] = []
        eoc = self.model.eoc_id
        while True:
            t = int(logits.argmax())
            if n_tokens is not None:
                if len(toks) >= n_tokens:
                    break
            elif t == eoc or len(toks) >= self.limit:
                if self.model.scfg.eoc_input:
                    self._step(self._token(eoc))
                break
            toks.append(t)
            logits = self._step(self._token(t))
            self.last_logits.append(logits)
        self.chunks += 1
        return toks


def decode_embeddings(model, emb_NH: torch.Tensor, window: int | None = None,
                      max_chunk_tokens: int | None = None) -> list[list[int]]:
    """An utterance's audio embeddings, chunk by chunk through :class:`BoundedCacheDecoder` ->
    token ids per chunk (the fast twin of ``decode.greedy_decode_embeddings``)."""
    dec = BoundedCacheDecoder(model, window, max_chunk_tokens)
    spc = model.slots_per_chunk
    return [dec.feed_chunk(emb_NH[i:i + spc]) for i in range(0, emb_NH.shape[0], spc)]


# ---- audio in, text out -----------------------------------------------------------------------------
CHUNK_LOCAL_PROJECTORS = ("linear", "mlp", "moe")  # one output per stack of frames, nothing across stacks


@dataclass
class ChunkResult:
    """One decoded chunk: its tokens and the text they added, where it lies in the audio, what it
    cost (encoder + projector + decoder compute for this chunk, wall clock) and the state held."""

    index: int
    tokens: list[int]
    text: str
    start_s: float
    end_s: float
    compute_s: float
    cache_entries: int  # decoder key/value entries held after the chunk (per layer)
    state_bytes: int  # decoder cache + encoder stream state, bytes

    @property
    def rtf(self) -> float:
        """Real-time factor of this chunk: compute time / audio time (< 1: faster than real time)."""
        return self.compute_s / max(self.end_s - self.start_s, 1e-9)


class StreamingTranscriber:
    """Live transcription: ``push(samples)`` -> the chunks these samples completed, decoded;
    ``finish()`` -> the last, partial chunk. The chunked encoder streams with its bounded caches
    and the decoder keeps at most ``window + 1`` chunks: memory is flat in the audio's length."""

    def __init__(self, model, window: int | None = None, max_chunk_tokens: int | None = None):
        check_streamable(model, window, max_chunk_tokens)
        model.eval()
        self.model = model
        self.enc = model.encoder
        self.enc_state = self.enc.stream_state()
        self.dec = BoundedCacheDecoder(model, window, max_chunk_tokens)
        self.stack = model.cfg.projector.stack
        self.cf = model.chunk_frames
        self.frame_s = 1.0 / self.enc.frame_rate
        self.pending = self.enc._empty()
        self.carry_s = 0.0  # encoder time not yet charged to a chunk
        self.tokens: list[int] = []
        self.text = ""
        self.samples = 0

    def _new_text(self, toks: list[int]) -> str:
        """The text ``toks`` add after what was printed: decoded with the last few tokens before
        them (a piece's leading space depends on its left neighbour), not the whole transcript."""
        if not toks:
            return ""
        tail = self.tokens[-8:]
        before = self.model.tok.decode(tail)
        after = self.model.tok.decode(tail + toks)
        return after[len(before):] if after.startswith(before) else after

    def push(self, samples) -> list[ChunkResult]:
        t0 = time.perf_counter()
        frames = self.enc.stream_step(self.enc_state, samples)
        self.samples += len(samples)
        return self._decode(frames, time.perf_counter() - t0, final=False)

    def finish(self) -> list[ChunkResult]:
        t0 = time.perf_counter()
        frames = self.enc.stream_flush(self.enc_state)
        return self._decode(frames, time.perf_counter() - t0, final=True)

    @torch.no_grad()
    def _decode(self, frames_TD: torch.Tensor, enc_s: float, final: bool) -> list[ChunkResult]:
        self.pending = torch.cat([self.pending, frames_TD])
        self.carry_s += enc_s
        ready = self.pending.shape[0] // self.cf
        if final and self.pending.shape[0] - ready * self.cf >= self.stack:
            ready += 1  # the last, partial chunk (a remainder under one stack is dropped, as in training)
        out = []
        for _ in range(ready):
            t0 = time.perf_counter()
            x = self.pending[: self.cf]
            self.pending = self.pending[self.cf:]
            n = x.shape[0] // self.stack
            y, _, _ = self.model.projector(x[None].to(next(self.model.projector.parameters()).dtype),
                                           torch.tensor([x.shape[0]], device=x.device))
            toks = self.dec.feed_chunk(y[0, :n])
            new = self._new_text(toks)
            self.tokens += toks
            self.text += new
            k = self.dec.chunks - 1
            compute = time.perf_counter() - t0 + self.carry_s / ready
            start = k * self.cf * self.frame_s
            out.append(ChunkResult(k, toks, new, start, start + x.shape[0] * self.frame_s, compute,
                                   self.dec.cache_len(), self.dec.cache_bytes() + self.enc_state.nbytes()))
        if ready:
            self.carry_s = 0.0
        if final:
            self.pending = self.pending[:0]
        return out


def transcribe_blocks(model, blocks, window: int | None = None, max_chunk_tokens: int | None = None):
    """Yield :class:`ChunkResult` as audio ``blocks`` (float32 16 kHz pieces) stream in."""
    tr = StreamingTranscriber(model, window, max_chunk_tokens)
    for b in blocks:
        yield from tr.push(b)
    yield from tr.finish()


@torch.no_grad()
def transcribe_offline(model, wav: np.ndarray, window: int | None = None,
                       max_chunk_tokens: int | None = None) -> tuple[str, list[list[int]]]:
    """The whole waveform through the model's encoder (any kind), then the bounded-cache decoder
    chunk by chunk -> (text, token ids per chunk)."""
    model.eval()
    embs, _ = model.audio_embeddings({"wavs": [np.asarray(wav, dtype=np.float32)]})
    chunks = decode_embeddings(model, embs[0], window, max_chunk_tokens)
    return model.tok.decode([t for c in chunks for t in c]), chunks
