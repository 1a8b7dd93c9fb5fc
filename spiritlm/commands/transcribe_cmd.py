"""``spiritlm transcribe [--stream] RUN_DIR AUDIO``: speech to text with a trained model.

* ``--stream`` (a streaming model trained with ``streaming.encoder = "chunked"``): the audio is
  read block by block (a file, or ``-`` for stdin: raw 16 kHz mono 16-bit PCM or a WAV stream),
  the chunked encoder and the bounded-cache decoder run as each chunk completes, and every chunk's
  text is printed as soon as it is decoded, with its compute time and real-time factor; a summary
  ends the run. Memory stays flat however long the audio is.
* without ``--stream``: the whole audio is read first; a streaming model decodes it chunk by chunk
  (bounded cache), a continuous-input model (``model_type = "continuous"``) greedily in one pass.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="speech to text with a trained streaming or continuous-input model",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a streaming or continuous training run dir (or its hf/ export)")
    p.add_argument("audio", help="an audio file (WAV/FLAC/...), or - for stdin (raw 16 kHz mono s16le PCM, or WAV)")
    p.add_argument("--stream", action="store_true", help="decode chunk by chunk as the audio arrives")
    p.add_argument("--window", type=int, default=None, help="decoder window b in chunks (default: the model's)")
    p.add_argument("--max-chunk-tokens", type=int, default=None, help="tokens per chunk at most (default: the model's)")
    p.add_argument("--block-ms", type=float, default=100.0, help="--stream: audio read per step, ms (default 100)")
    p.add_argument("--max-new-tokens", type=int, default=0,
                   help="continuous model: tokens at most (default: 8 per second of audio, at least 64)")
    p.add_argument("--json", default="", help="also write the result (text, per-chunk timings) to this file")
    p.set_defaults(func=_run)


def _load(run_dir: str):
    """-> ("streaming" | "continuous", model)."""
    from spiritlm.config import ConfigError
    from spiritlm.models.streaming.model import STREAMING_FILE, load_streaming

    d = Path(run_dir)
    if not d.exists():
        raise FileNotFoundError(f"{d}: no such run dir")
    if (d / STREAMING_FILE).is_file() or (d / "hf" / STREAMING_FILE).is_file():
        return "streaming", load_streaming(d)
    for e in (d, d / "hf"):
        if (e / "continuous.json").is_file():
            from spiritlm.models.continuous.model import load_continuous

            return "continuous", load_continuous(e)
    raise ConfigError(f"{d}: neither a streaming nor a continuous-input model (no {STREAMING_FILE} or "
                      "continuous.json in it or its hf/); point at the run dir of a `spiritlm train` with a "
                      "train/streaming_*.toml or train/continuous_*.toml recipe")


def _run(args) -> int:
    if args.audio != "-":  # a bad file fails before the model loads (stdin is checked as it streams)
        from spiritlm.audio import AudioError, probe_audio

        if not Path(args.audio).exists():
            raise AudioError(args.audio, "file not found")
        probe_audio(args.audio)
    kind, model = _load(args.run_dir)
    if args.stream:
        if kind != "streaming":
            from spiritlm.config import ConfigError

            raise ConfigError(f"{args.run_dir} is a continuous-input model: it reads the whole utterance before it "
                              "writes; transcribe it without --stream, or train a streaming model (train/streaming_*.toml)")
        res = _stream(model, args)
    else:
        res = _offline(kind, model, args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def _stream(model, args) -> dict:
    from spiritlm.models.streaming.infer import audio_blocks, transcribe_blocks

    block = max(1, int(16000 * args.block_ms / 1000))
    rows, t0 = [], time.perf_counter()
    print(f"streaming: chunks of {model.scfg.chunk_s:g} s, decoder window "
          f"{model.scfg.window if args.window is None else args.window} chunk(s), encoder left context "
          f"{model.encoder.left_chunks} chunk(s)", file=sys.stderr, flush=True)
    for r in transcribe_blocks(model, audio_blocks(args.audio, block), args.window, args.max_chunk_tokens):
        rows.append(r)
        print(f"[chunk {r.index:4d} {r.start_s:8.2f}-{r.end_s:7.2f} s | {1000 * r.compute_s:7.1f} ms, RTF "
              f"{r.rtf:5.3f}, state {r.state_bytes / 1024:7.1f} KiB] {r.text.strip()}", flush=True)
    wall = time.perf_counter() - t0
    text = model.tok.decode([t for r in rows for t in r.tokens])
    audio_s = rows[-1].end_s if rows else 0.0
    compute = [r.compute_s for r in rows]
    summary = {"mode": "stream", "text": text, "chunks": len(rows), "audio_s": audio_s, "wall_s": wall,
               "compute_s": sum(compute), "rtf": sum(compute) / audio_s if audio_s else None,
               "chunk_compute_ms": {"median": 1000 * statistics.median(compute), "max": 1000 * max(compute)} if rows else {},
               "state_kib_max": max((r.state_bytes for r in rows), default=0) / 1024,
               "per_chunk": [{"index": r.index, "start_s": r.start_s, "end_s": r.end_s, "compute_s": r.compute_s,
                              "rtf": r.rtf, "text": r.text, "state_bytes": r.state_bytes} for r in rows]}
    if not rows:
        print("summary: the audio was shorter than one projector stack; no chunk decoded", flush=True)
        return summary
    print(f"summary: {audio_s:.2f} s of audio in {len(rows)} chunks; compute {summary['compute_s']:.2f} s "
          f"(RTF {summary['rtf']:.3f}); per chunk median {summary['chunk_compute_ms']['median']:.1f} ms, max "
          f"{summary['chunk_compute_ms']['max']:.1f} ms; state held at most {summary['state_kib_max']:.1f} KiB; "
          f"wall {wall:.2f} s incl. reading", flush=True)
    print(f"transcript: {text}", flush=True)
    return summary


def _offline(kind: str, model, args) -> dict:
    import numpy as np

    from spiritlm.models.streaming.infer import audio_blocks

    wav = np.concatenate(list(audio_blocks(args.audio, 1 << 16)))  # the same readers and checks as --stream
    if model.frames_for(wav.size) < 1:
        from spiritlm.audio import AudioError

        raise AudioError(str(args.audio), f"too short: {wav.size} samples give no projected frame")
    seconds = wav.size / 16000
    t0 = time.perf_counter()
    if kind == "streaming":
        from spiritlm.models.streaming.infer import transcribe_offline

        text, chunks = transcribe_offline(model, wav, args.window, args.max_chunk_tokens)
        extra = {"chunks": len(chunks)}
    else:
        from spiritlm.eval.asr import transcribe

        budget = args.max_new_tokens or max(64, int(8 * seconds))
        text = transcribe(model, [wav], batch_size=1, max_new_tokens=budget)[0]
        extra = {"max_new_tokens": budget}
    dt = time.perf_counter() - t0
    print(text, flush=True)
    print(f"summary: {seconds:.2f} s of audio, {kind} model, whole utterance; compute {dt:.2f} s (RTF "
          f"{dt / seconds:.3f})", file=sys.stderr, flush=True)
    return {"mode": "offline", "model": kind, "text": text, "audio_s": seconds, "compute_s": dt,
            "rtf": dt / seconds, **extra}
