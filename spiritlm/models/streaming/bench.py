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

import json
import math
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
                    "num_key_value_heads=4"], "train_s": 14.75},  # the demo corpus: its longest training utterance
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




# ---- quality on long inputs (the streaming demo part) ------------------------------------------------
def training_length_s(manifest: str | Path, split: str = "train", max_audio_s: float = 20.0) -> float:
    """The longest utterance a model saw in training (the x-axis unit of the long-form table)."""
    from spiritlm.manifest import read_manifest

    d = [u.duration for u in read_manifest(Path(manifest)) if u.split == split and u.duration <= max_audio_s]
    if not d:
        from spiritlm.config import ConfigError

        raise ConfigError(f"{manifest}: no {split!r} utterance up to {max_audio_s} s")
    return max(d)


def longform_items(manifest: str | Path, seconds: float, split: str = "heldout", gap_s: float = 0.3) -> list[dict]:
    """The ``split``'s utterances in manifest order, concatenated (``gap_s`` of silence between)
    into recordings of at least ``seconds`` each; a short remainder joins the last recording, so
    every length covers exactly the same words. -> [{"id", "wav", "ref", "seconds", "n_utts"}]."""
    from spiritlm.data.encoders import read_audio
    from spiritlm.manifest import read_manifest

    m = Path(manifest)
    utts = [u for u in read_manifest(m) if u.split == split]
    groups: list[list] = [[]]
    total = 0.0
    for u in utts:
        total += u.duration + (gap_s if groups[-1] else 0.0)
        groups[-1].append(u)
        if total >= seconds:
            groups.append([])
            total = 0.0
    if not groups[-1]:
        groups.pop()
    elif len(groups) > 1:  # a remainder shorter than `seconds` joins the last recording
        rest = groups.pop()
        groups[-1] += rest
    gap = np.zeros(int(gap_s * 16000), np.float32)
    items = []
    for g in groups:
        parts = []
        for u in g:
            parts += [read_audio(u.audio_file(m.parent)), gap]
        wav = np.concatenate(parts[:-1])
        items.append({"id": "+".join(u.id for u in g), "wav": wav, "ref": " ".join(u.text for u in g),
                      "seconds": wav.size / 16000, "n_utts": len(g)})
    return items


def load_any(path: str | Path):
    """-> (family name, model) of a run dir or its export, for any family that transcribes."""
    from spiritlm.models.spec import locate_model, require

    spec, d = locate_model(path)
    require(spec, "transcribe", path)
    return spec.name, spec.load(d, "cpu", None)[0]


@torch.no_grad()
def transcribe_item(kind: str, model, wav: np.ndarray) -> str:
    """One utterance through its family's transcriber (``ModelSpec.transcribe``: the streaming
    model's bounded-cache decoder, which equals the reference decoder; the continuous model's
    greedy decoding with a budget the transcript never hits, 8 pieces per second)."""
    from spiritlm.models.spec import model_spec

    return model_spec(kind).transcribe(model, wav)[0]


def score(items: list[dict], hyps: list[str]) -> dict:
    from spiritlm.models.continuous.compare import wer_with_ci

    r = wer_with_ci([{"ref": it["ref"], "hyp": h} for it, h in zip(items, hyps)])
    return {"wer": r["wer"], "ci95": r["ci95"], "items": len(items),
            "mean_s": float(np.mean([it["seconds"] for it in items])) if items else 0.0}


def longform_wer(models: dict[str, str], manifest: str | Path, factors: Sequence[float] = (1, 2, 5, 10),
                 split: str = "heldout", train_s: float | None = None, progress: bool = True) -> dict:
    """Corpus WER (bootstrap 95% CI over recordings) of each model on the ``split`` concatenated
    into recordings of f x the training length, for every f: {"train_s", "rows": [{model, factor,
    wer, ci95, items, mean_s}], "hyps": {model: {factor: [...]}}}."""
    from tqdm.auto import tqdm

    L = train_s or training_length_s(manifest)
    sets = {f: longform_items(manifest, f * L, split) for f in factors}
    rows, hyps = [], {}
    for name, path in models.items():
        kind, model = load_any(path)
        hyps[name] = {}
        for f in factors:
            hs = [transcribe_item(kind, model, it["wav"]) for it in tqdm(sets[f], desc=f"{name} {f:g}x", disable=not progress)]
            hyps[name][f"{f:g}"] = [{"id": it["id"], "ref": it["ref"], "hyp": h} for it, h in zip(sets[f], hs)]
            rows.append({"model": name, "kind": kind, "factor": f, **score(sets[f], hs)})
            if progress:
                print(f"  {name} at {f:g}x ({rows[-1]['mean_s']:.0f} s per recording): WER {100 * rows[-1]['wer']:.1f}%", flush=True)
    return {"train_s": L, "split": split, "rows": rows, "hyps": hyps}


def set_chunking(model, chunk_s: float, window: int) -> None:
    """Decode ``model`` (a streaming model) with another chunk length / window at inference; the
    chunked encoder's chunk follows the decoder's."""
    from spiritlm.models.streaming.config import chunk_frames
    from spiritlm.models.streaming.stream_encoder import ChunkedConformerEncoder, _at

    model.scfg.chunk_s, model.scfg.window = float(chunk_s), int(window)
    model.chunk_frames = chunk_frames(model.scfg, model.encoder.frame_rate, model.cfg.projector.stack)
    model.slots_per_chunk = model.chunk_frames // model.cfg.projector.stack
    if isinstance(model.encoder, ChunkedConformerEncoder):
        _at(model.encoder, model.chunk_frames)


def chunk_table(model_path: str | Path, manifest: str | Path, chunks_s: Sequence[float] = (0.64, 1.28, 2.56),
                windows: Sequence[int] = (0, 1, 2), split: str = "heldout", progress: bool = True) -> dict:
    """WER of one streaming model on the ``split``'s utterances for every (chunk length, window)
    AT INFERENCE (the model trained at one setting: the others show how far it transfers)."""
    from tqdm.auto import tqdm

    from spiritlm.transcripts import manifest_items
    from spiritlm.data.encoders import read_audio

    kind, model = load_any(model_path)
    if kind != "streaming":
        from spiritlm.config import ConfigError

        raise ConfigError(f"{model_path}: the chunk table needs a streaming model")
    trained = (model.scfg.chunk_s, model.scfg.window)
    items = [{"id": i, "wav": read_audio(p), "ref": r, "seconds": 0.0} for i, p, r in manifest_items(manifest, split)]
    for it in items:
        it["seconds"] = it["wav"].size / 16000
    rows = []
    for c in chunks_s:
        for b in windows:
            set_chunking(model, c, b)
            hs = [transcribe_item(kind, model, it["wav"]) for it in tqdm(items, desc=f"chunk {c:g} s, b={b}", disable=not progress)]
            rows.append({"chunk_s": c, "window": b, "trained": (c, b) == trained, **score(items, hs)})
            if progress:
                print(f"  chunk {c:g} s, window {b}: WER {100 * rows[-1]['wer']:.1f}%", flush=True)
    set_chunking(model, *trained)
    return {"model": str(model_path), "trained_chunk_s": trained[0], "trained_window": trained[1], "rows": rows}


def format_longform(res: dict) -> str:
    names = list(dict.fromkeys(r["model"] for r in res["rows"]))
    factors = list(dict.fromkeys(r["factor"] for r in res["rows"]))
    cell = {(r["model"], r["factor"]): r for r in res["rows"]}
    lines = ["| model | " + " | ".join(f"{f:g}x ({cell[(names[0], f)]['mean_s']:.0f} s)" for f in factors) + " |",
             "|---|" + "---|" * len(factors)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{100 * cell[(n, f)]['wer']:.1f} [{100 * cell[(n, f)]['ci95'][0]:.1f}, "
                                               f"{100 * cell[(n, f)]['ci95'][1]:.1f}]" for f in factors) + " |")
    lines.append(f"WER % [bootstrap 95% CI over recordings]; training length L = {res['train_s']:.2f} s (the longest "
                 f"training utterance); recordings = held-out utterances concatenated to >= f x L")
    return "\n".join(lines)


def format_chunk_table(res: dict) -> str:
    windows = list(dict.fromkeys(r["window"] for r in res["rows"]))
    chunks = list(dict.fromkeys(r["chunk_s"] for r in res["rows"]))
    cell = {(r["chunk_s"], r["window"]): r for r in res["rows"]}
    lines = ["| chunk | " + " | ".join(f"b = {b}" for b in windows) + " |", "|---|" + "---|" * len(windows)]
    for c in chunks:
        lines.append(f"| {c:g} s | " + " | ".join(
            f"{100 * cell[(c, b)]['wer']:.1f}{' (trained)' if cell[(c, b)]['trained'] else ''}" for b in windows) + " |")
    lines.append(f"WER % on the held-out utterances; one model trained at chunk {res['trained_chunk_s']:g} s, b = "
                 f"{res['trained_window']}, decoded at the other settings at inference")
    return "\n".join(lines)


# ---- the streaming demo part's tables ----------------------------------------------------------------
FACTORS = (1, 2, 5, 10)


def demo_tables(ctx, chunked: dict, baseline: dict, ctc: dict, factors: Sequence[float] = FACTORS,
                distil_steps: int = 240) -> dict:
    """Called by ``demo_part.run`` after its WER step, every step cached through ``ctx.pipe``:

    1. ``streaming_chunk_encoder``: the stage-1 conformer distilled into the chunked encoder
       (chunk 1.28 s, 2 chunks of left context), and a copy of the chunked model that streams
       end to end with it;
    2. ``streaming_longform``: WER at 1x/2x/5x/10x the training length for the streaming model with
       the chunked encoder, with the full-context encoder, and the non-streaming twin;
    3. ``streaming_chunk_table``: WER vs chunk length and window at inference.
    """
    from spiritlm.models.streaming.stream_encoder import DistillConfig, distill, export_chunked

    part = ctx.out / "parts" / "streaming"
    manifest = str(ctx.manifest)  # the aligned training records: what the encoder is distilled on
    heldout = str(ctx.corpus["manifest"])  # its 'heldout' split: what every WER here is read on
    h = ctx.file_hash

    def chunk_encoder(step_dir: Path) -> dict:
        cfg = DistillConfig(teacher=ctc["hf"], manifest=manifest, out=str(step_dir / "student"), chunk_frames=[32],
                            left_chunks=2, steps=distil_steps)
        rep = distill(cfg)
        hf = export_chunked(chunked["hf"], step_dir / "student", part / "chunked_stream" / "hf")
        return {"hf": str(hf), "distill": {k: v for k, v in rep.items() if k != "config"}}

    enc = ctx.pipe.run("streaming_chunk_encoder", [h(Path(ctc["hf"]) / "encoder.safetensors"),
                                                   h(Path(chunked["hf"]) / "model.safetensors"), h(Path(manifest)),
                                                   distil_steps], chunk_encoder)
    models = {"streaming, chunked encoder": enc["hf"], "streaming, full-context encoder": chunked["hf"],
              "non-streaming twin": baseline["hf"]}

    def longform(step_dir: Path) -> dict:
        res = longform_wer(models, heldout, factors)
        (step_dir / "longform.json").write_text(json.dumps(res, indent=1) + "\n")
        return {"markdown": format_longform(res), "rows": res["rows"], "train_s": res["train_s"]}

    def chunks(step_dir: Path) -> dict:
        res = chunk_table(chunked["hf"], heldout)
        return {"markdown": format_chunk_table(res), "rows": res["rows"]}

    deps = [h(Path(p) / "model.safetensors") for p in models.values()] + [h(Path(enc["hf"]) / "encoder.safetensors"),
                                                                            h(Path(heldout)), list(factors)]
    lf = ctx.pipe.run("streaming_longform", deps, longform)
    ct = ctx.pipe.run("streaming_chunk_table", [h(Path(chunked["hf"]) / "model.safetensors"), h(Path(heldout))], chunks)
    print("\n" + lf["markdown"] + "\n\n" + ct["markdown"], flush=True)
    return {"chunk_encoder": enc, "longform": lf, "chunk_table": ct}
