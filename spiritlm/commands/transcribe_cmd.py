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
    p.add_argument("--window", type=int, default=None,
                   help="decoder window b in chunks, >= 0 (0: the current chunk only; default: the model's)")
    p.add_argument("--max-chunk-tokens", type=int, default=None,
                   help="tokens per chunk at most, >= 1 (default: the model's)")
    p.add_argument("--block-ms", type=float, default=100.0,
                   help=f"--stream: audio read per step, {BLOCK_MS[0]}-{BLOCK_MS[1]} ms (default 100)")
    p.add_argument("--max-new-tokens", type=int, default=0,
                   help="continuous model: tokens at most, >= 1 (default 0: 8 per second of audio, at least 64)")
    p.add_argument("--json", default="", help="also write the result (text, per-chunk timings) to this file "
                                              "(its folder must exist)")
    p.set_defaults(func=_run)


BLOCK_MS = (1, 60_000)  # --block-ms: from 16 samples to a minute of audio per read


def check_args(args) -> None:
    """Every number and output path in range, before the audio or the model is read."""
    import math

    if args.window is not None and args.window < 0:
        raise ValueError(f"--window {args.window}: use an integer >= 0 (the decoder's window in chunks before the "
                         "current one; 0 = the current chunk only; default: the model's)")
    if args.max_chunk_tokens is not None and args.max_chunk_tokens < 1:
        raise ValueError(f"--max-chunk-tokens {args.max_chunk_tokens}: use an integer >= 1 (tokens per chunk at "
                         "most; default: the model's)")
    if not (math.isfinite(args.block_ms) and BLOCK_MS[0] <= args.block_ms <= BLOCK_MS[1]):
        raise ValueError(f"--block-ms {args.block_ms:g}: use a number of milliseconds from {BLOCK_MS[0]} to "
                         f"{BLOCK_MS[1]} (audio read per step; default 100)")
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens}: use an integer >= 1, or leave it out for the "
                         "default (8 per second of audio, at least 64)")
    if args.json:
        out = Path(args.json)
        if out.is_dir():
            raise ValueError(f"--json {out}: a folder; give a file path, e.g. {out / 'transcript.json'}")
        if not out.parent.is_dir():
            raise FileNotFoundError(f"--json {out}: the folder {out.parent} does not exist; create it "
                                    f"(mkdir -p {out.parent}) or write the result elsewhere")


def _run(args) -> int:
    from spiritlm.models import locate_model, require

    check_args(args)
    if args.audio != "-":  # a bad file fails before the model loads (stdin is checked as it streams)
        from spiritlm.audio import AudioError, probe_audio

        if not Path(args.audio).exists():
            raise AudioError(args.audio, "file not found")
        probe_audio(args.audio)
    spec, model_dir = locate_model(args.run_dir)  # the family, from its own marker file
    # before the model loads: a family that cannot is refused, naming what it can do instead
    if args.stream:
        require(spec, "stream", args.run_dir, "transcribe a stream chunk by chunk (--stream)")
    else:
        require(spec, "transcribe", args.run_dir)
    model, _tokenizer = spec.load(model_dir, "cpu", None)
    res = _stream(spec, model, args) if args.stream else _offline(spec, model, args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def _stream(spec, model, args) -> dict:
    from spiritlm.audio_blocks import audio_blocks
    from spiritlm.config import ConfigError

    block = max(1, int(16000 * args.block_ms / 1000))
    rows, t0 = [], time.perf_counter()
    try:  # a model that cannot stream (e.g. a full-context encoder) is refused before any audio is read
        header, chunks, transcript = spec.stream(model, audio_blocks(args.audio, block), args.window,
                                                 args.max_chunk_tokens)
    except ConfigError as e:
        raise ConfigError(f"{args.run_dir}: {e}") from None
    print(header, file=sys.stderr, flush=True)
    for r in chunks:
        rows.append(r)
        print(f"[chunk {r.index:4d} {r.start_s:8.2f}-{r.end_s:7.2f} s | {1000 * r.compute_s:7.1f} ms, RTF "
              f"{r.rtf:5.3f}, state {r.state_bytes / 1024:7.1f} KiB] {r.text.strip()}", flush=True)
    wall = time.perf_counter() - t0
    text = transcript(rows)
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


def _offline(spec, model, args) -> dict:
    import numpy as np

    from spiritlm.audio_blocks import audio_blocks

    wav = np.concatenate(list(audio_blocks(args.audio, 1 << 16)))  # the same readers and checks as --stream
    if model.frames_for(wav.size) < 1:
        from spiritlm.audio import AudioError

        raise AudioError(str(args.audio), f"too short: {wav.size} samples give no projected frame")
    seconds = wav.size / 16000
    t0 = time.perf_counter()
    text, extra = spec.transcribe(model, wav, window=args.window, max_chunk_tokens=args.max_chunk_tokens,
                                  max_new_tokens=args.max_new_tokens)
    dt = time.perf_counter() - t0
    print(text, flush=True)
    print(f"summary: {seconds:.2f} s of audio, {spec.name} model, whole utterance; compute {dt:.2f} s (RTF "
          f"{dt / seconds:.3f})", file=sys.stderr, flush=True)
    return {"mode": "offline", "model": spec.name, "text": text, "audio_s": seconds, "compute_s": dt,
            "rtf": dt / seconds, **extra}
