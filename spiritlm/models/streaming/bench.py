"""``spiritlm bench stream``: time and memory per chunk as the audio grows, streaming vs not.

For audio of 1x, 2x, 5x, 10x the training length L, two sides are timed on
:mod:`spiritlm.bench_harness`'s statistics (sides interleaved round by round, median ratio with its
min-max):

* ``stream fx``: the chunk that ends an f x L recording, through the streaming model -- the chunked
  encoder's stream step (bounded left context) + projector + the bounded-cache decoder (window + 1
  chunks) generating ``tokens`` text tokens. The state after the first f x L - c seconds is built
  once, untimed, and restored (untimed) before every timed call, so every call decodes exactly
  that chunk.
* ``full fx``: what a non-streaming SpeechLLM pays to put out that chunk's text: its full-context
  encoder's frames all change when audio is appended, so it re-reads everything -- encoder over
  f x L seconds, projector, LM prefill over all audio embeddings, then the same ``tokens`` greedy
  steps with a KV cache (generous: re-generating the whole transcript would cost more).

Memory per chunk: ``peak`` = the most bytes torch held at once during one call above what it held
before (``torch.profiler`` allocation events: CPU has no max_memory_allocated), ``state`` = the
bytes kept between chunks (stream: encoder caches + decoder cache; full: the LM cache of the
whole sequence). Streaming should stay flat in f; the full model grows.

Models: random weights at ``size`` ``toy`` (seconds on CPU; the test) or ``demo`` (the demo's
dimensions: conformer 144 x 4, LLaMA 128 x 4) -- cost, not quality, is measured (as in ``spiritlm
bench continuous``). Quality on long inputs is :func:`longform_wer` (the streaming demo part).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

SIZES = {
    "toy": {"conformer": ["n_mels=16", "dim=32", "layers=1", "heads=2", "conv_kernel=5"],
            "lm": ["hidden_size=32", "intermediate_size=64", "num_hidden_layers=2", "num_attention_heads=4",
                   "num_key_value_heads=2"], "train_s": 4.0},
    "demo": {"conformer": ["dim=144", "layers=4", "heads=4", "conv_kernel=15"],
             "lm": ["hidden_size=128", "intermediate_size=352", "num_hidden_layers=4", "num_attention_heads=4",
                    "num_key_value_heads=4"], "train_s": 11.2},  # the demo corpus' longest training utterance
}


# ---- memory ------------------------------------------------------------------------------------------
def peak_alloc_bytes(fn) -> int:
    """Peak bytes torch allocated at once during ``fn()`` above what was held before: the running
    sum of allocation/free events (``torch.profiler``, ``profile_memory``) in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                     if e.self_cpu_memory_usage), key=lambda x: x[0])
    cur = peak = 0
    for _, b in events:
        cur += b
        peak = max(peak, cur)
    return int(peak)


# ---- models -------------------------------------------------------------------------------------------
def _tokenizer(root: Path) -> Path:
    from spiritlm.text_tokenizer import train_sentencepiece

    words = "the cat sat on a mat and dog ran far away under one big red tree".split()
    rng = np.random.default_rng(0)
    train_sentencepiece([" ".join(rng.choice(words, 8)) for _ in range(80)], root / "tok", vocab_size=300)
    return root / "tok"


def random_models(size: str, root: Path, chunk_s: float = 1.28, window: int = 1, left_chunks: int = 1):
    """(streaming model with the chunked encoder, its non-streaming twin with the full-context
    conformer): same dimensions, random weights, eval mode."""
    from spiritlm.config import ConfigError, load_config
    from spiritlm.models.streaming.config import StreamingTrainConfig
    from spiritlm.models.streaming.model import build_streaming

    if size not in SIZES:
        raise ConfigError(f"bench stream --size {size!r}: use one of {sorted(SIZES)}")
    s = SIZES[size]
    base = [f"model.tokenizer={_tokenizer(root)}", f"run_dir={root / 'run'}", "continuous.encoder.kind=conformer",
            "continuous.projector.kind=mlp", "continuous.projector.stack=2", "model.tiny.max_position_embeddings=4096",
            f"streaming.chunk_s={chunk_s}", f"streaming.window={window}", f"streaming.encoder_left_chunks={left_chunks}"]
    base += [f"continuous.encoder.conformer.{x}" for x in s["conformer"]] + [f"model.tiny.{x}" for x in s["lm"]]
    out = []
    for enc in ("chunked", "full"):
        cfg = load_config(StreamingTrainConfig, None, base + [f"streaming.encoder={enc}"])
        with torch.random.fork_rng():
            torch.manual_seed(0)
            out.append(build_streaming(cfg).eval())
    return out[0], out[1]


def _wav(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.1 * np.sin(t))) + 0.05 * rng.standard_normal(n)).astype(np.float32)


# ---- the two sides ---------------------------------------------------------------------------------
class StreamChunk:
    """The last chunk of a recording through the streaming model, from a restored state."""

    def __init__(self, model, wav: np.ndarray, tokens: int):
        from spiritlm.models.streaming.infer import BoundedCacheDecoder

        self.model, self.tokens = model, tokens
        self.chunk_samples = model.encoder.chunk_samples()
        tail = model.encoder.mel.win - model.encoder.mel.hop  # a filterbank window reaches past its hop
        cut = ((len(wav) - tail) // self.chunk_samples - 1) * self.chunk_samples  # the last whole chunk's start
        # the state after every chunk before `cut`; the timed call's samples complete exactly one chunk
        self.last = wav[cut + tail:cut + tail + self.chunk_samples]
        enc, dec = model.encoder, BoundedCacheDecoder(model)
        st = enc.stream_state()
        with torch.no_grad():
            for i in range(0, cut + tail, self.chunk_samples):
                for x in self._chunks(enc.stream_step(st, wav[i:min(i + self.chunk_samples, cut + tail)])):
                    dec.feed_chunk(x, tokens)
        assert dec.chunks == cut // self.chunk_samples, (dec.chunks, cut)
        self.saved = (st, [(layer.keys.clone(), layer.values.clone()) for layer in dec.cache.layers],
                      list(dec.chunk_lens), dec.pos, dec.chunks)
        self.dec, self.st = dec, st
        self.stream_s = cut / 16000

    def _chunks(self, frames_TD):
        cf, k = self.model.chunk_frames, self.model.cfg.projector.stack
        for i in range(0, frames_TD.shape[0], cf):
            x = frames_TD[i:i + cf]
            y, _, _ = self.model.projector(x[None], torch.tensor([x.shape[0]]))
            yield y[0, : x.shape[0] // k]

    def restore(self) -> None:
        import copy

        st, kv, lens, pos, chunks = self.saved
        self.st = copy.deepcopy(st)
        for layer, (k, v) in zip(self.dec.cache.layers, kv):
            layer.keys, layer.values = k.clone(), v.clone()
        self.dec.chunk_lens, self.dec.pos, self.dec.chunks = list(lens), pos, chunks

    @torch.no_grad()
    def __call__(self) -> None:
        frames = self.model.encoder.stream_step(self.st, self.last)
        assert frames.shape[0] == self.model.chunk_frames, frames.shape  # exactly one chunk per call
        for x in self._chunks(frames):
            self.dec.feed_chunk(x, self.tokens)

    def state_bytes(self) -> int:
        return self.dec.cache_bytes() + self.st.nbytes()


class FullPass:
    """A non-streaming model's pass over the whole recording: encoder, projector, LM prefill over
    every audio embedding, ``tokens`` greedy steps with a KV cache."""

    def __init__(self, model, wav: np.ndarray, tokens: int):
        self.model, self.wav, self.tokens = model, wav, tokens
        self.cache_bytes = 0

    @torch.no_grad()
    def __call__(self) -> None:
        from transformers import DynamicCache

        m = self.model
        embs, _ = m.audio_embeddings({"wavs": [self.wav]})
        table = m.lm.get_input_embeddings()
        x = torch.cat([embs[0], table(torch.tensor([m.tok.bos_id]))])[None]
        cache = DynamicCache(config=m.lm.config)
        logits = m.lm(inputs_embeds=x, cache=cache, use_cache=True, logits_to_keep=1).logits
        for _ in range(self.tokens):
            t = logits[0, -1].argmax().view(1, 1)
            logits = m.lm(input_ids=t, cache=cache, use_cache=True, logits_to_keep=1).logits
        self.cache_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))

    def state_bytes(self) -> int:
        return self.cache_bytes


# ---- the bench ------------------------------------------------------------------------------------
def bench_stream(size: str = "toy", factors: Sequence[float] = (1, 2, 5, 10), train_s: float | None = None,
                 chunk_s: float = 1.28, window: int = 1, tokens: int = 4, rounds: int | None = None,
                 min_round_s: float | None = None, verbose: bool = True) -> dict:
    from spiritlm.bench_harness import default_clock, default_min_round_s, default_rounds, from_timings, machine_load

    rounds = default_rounds() if rounds is None else int(rounds)
    min_round_s = default_min_round_s() if min_round_s is None else float(min_round_s)
    clock = time.process_time if default_clock() == "cpu" else time.perf_counter
    train_s = float(train_s or SIZES.get(size, SIZES["toy"])["train_s"])
    load_before = machine_load()
    with tempfile.TemporaryDirectory() as tmp:
        stream_model, full_model = random_models(size, Path(tmp), chunk_s, window)
        sides: dict[str, object] = {}
        for f in factors:
            wav = _wav(f * train_s, seed=int(f * 10))
            sides[f"stream {f:g}x"] = StreamChunk(stream_model, wav, tokens)
            sides[f"full {f:g}x"] = FullPass(full_model, wav, tokens)

        def call(name):
            s = sides[name]
            if isinstance(s, StreamChunk):
                s.restore()  # untimed: every call decodes the same last chunk
            t0 = clock()
            s()
            return clock() - t0

        reps = {}
        for name in sides:  # warm-up, then calls per round so that a round lasts min_round_s
            call(name)
            reps[name] = max(1, math.ceil(min_round_s / max(call(name), 1e-6)))
        seconds: dict[str, list[float]] = {n: [] for n in sides}
        for _ in range(rounds):
            for name in sides:
                seconds[name].append(sum(call(name) for _ in range(reps[name])))
        memory = {}
        for name, s in sides.items():
            if isinstance(s, StreamChunk):
                s.restore()
            memory[name] = {"peak_bytes": peak_alloc_bytes(s), "state_bytes": s.state_bytes()}
    notes = [f"random weights at {size} size (cost, not quality); chunk {chunk_s:g} s, decoder window {window}, "
             f"{tokens} text tokens per chunk; training length L = {train_s:g} s",
             "full fx = a non-streaming model re-reading the whole f x L recording to emit the newest chunk"]
    m = from_timings(seconds, {n: 1.0 for n in sides}, unit="chunk", min_round_s=min_round_s,
                     notes=notes, load_before=load_before)
    m.reps = {n: [reps[n]] * rounds for n in sides}  # each round timed reps[n] calls of one chunk each
    labels = [f"{f:g}x" for f in factors]
    pairs = [(f"stream {x}", f"full {x}") for x in labels]
    pairs += [(f"stream {labels[0]}", f"stream {labels[-1]}"), (f"full {labels[0]}", f"full {labels[-1]}")]
    rows = []
    for x, f in zip(labels, factors):
        s, fu = f"stream {x}", f"full {x}"
        rows.append({"factor": f, "audio_s": f * train_s, "stream_ms": 1000 / m.rate(s), "full_ms": 1000 / m.rate(fu),
                     "speedup": m.ratio(s, fu).as_dict(), "stream_peak_bytes": memory[s]["peak_bytes"],
                     "stream_state_bytes": memory[s]["state_bytes"], "full_peak_bytes": memory[fu]["peak_bytes"],
                     "full_state_bytes": memory[fu]["state_bytes"]})
    result = {"size": size, "train_s": train_s, "chunk_s": chunk_s, "window": window, "tokens": tokens,
              "rows": rows, "measurement": m.as_dict(pairs)}
    if verbose:
        print(m.report(pairs, "streaming vs non-streaming: time and memory per chunk as the audio grows"), flush=True)
        print(format_table(result), flush=True)
    return result


def format_table(result: dict) -> str:
    lines = [f"| audio | stream ms/chunk | full ms/chunk | stream speed-up (min-max) | stream peak / state | "
             f"full peak / state |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        sp = r["speedup"]
        lines.append(f"| {r['factor']:g}x ({r['audio_s']:.0f} s) | {r['stream_ms']:.1f} | {r['full_ms']:.1f} | "
                     f"{sp['median']:.1f}x ({sp['min']:.1f}-{sp['max']:.1f}) | {_mib(r['stream_peak_bytes'])} / "
                     f"{_mib(r['stream_state_bytes'])} | {_mib(r['full_peak_bytes'])} / {_mib(r['full_state_bytes'])} |")
    first, last = result["rows"][0], result["rows"][-1]
    lines.append(f"growth {last['factor'] / first['factor']:g}x audio: stream time x"
                 f"{last['stream_ms'] / first['stream_ms']:.2f}, peak x{last['stream_peak_bytes'] / max(first['stream_peak_bytes'], 1):.2f}; "
                 f"full time x{last['full_ms'] / first['full_ms']:.2f}, peak "
                 f"x{last['full_peak_bytes'] / max(first['full_peak_bytes'], 1):.2f}")
    return "\n".join(lines)


def _mib(b: int) -> str:
    return f"{b / 2**20:.2f} MiB" if b >= 2**20 else f"{b / 1024:.0f} KiB"


def main(args) -> int:
    """``spiritlm bench stream [--size toy|demo] [--seconds L]``."""
    bench_stream(size=args.size or "toy", train_s=args.seconds, rounds=args.rounds, min_round_s=args.min_round_s)
    return 0
