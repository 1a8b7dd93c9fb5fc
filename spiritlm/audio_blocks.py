"""Audio read block by block (a WAV/FLAC file, or stdin: raw 16 kHz mono 16-bit PCM or a WAV
stream), so that a long recording is never held in memory; every malformed input is an
:class:`~spiritlm.audio.AudioError` naming the reason. Used by streaming transcription and by
any command that reads audio as it arrives.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from spiritlm.audio import (SAMPLE_RATE, AudioError, check_sample_rate, parse_fmt_chunk, stray_bytes_reason,
                            stream_dtype, wav_of_unknown_length)

STDIN = "<stdin>"


# ---- audio sources --------------------------------------------------------------------------------
def _read_exact(f: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes (fewer only at the end of the stream): pipes return short reads."""
    parts, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _skip(f: BinaryIO, n: int) -> bool:
    """Skip ``n`` bytes; False when the stream ends first."""
    while n > 0:
        b = f.read(min(n, 1 << 16))
        if not b:
            return False
        n -= len(b)
    return True


class _WavFormat:
    def __init__(self, tag: int, channels: int, rate: int, bits: int, source: str = STDIN):
        self.tag, self.channels, self.rate, self.bits = tag, channels, rate, bits
        if source == STDIN and (tag, bits) not in ((1, 16), (3, 32)):
            raise AudioError(STDIN, f"WAV on stdin must be 16-bit PCM or 32-bit float (format {tag}, {bits} bits "
                                    "given); convert it, e.g. `sox in.wav -b 16 -t wav - | spiritlm transcribe ...`")
        self.dtype = stream_dtype(self, source)  # one rule for every WAV read without a length

    @property
    def frame_bytes(self) -> int:
        return self.dtype.itemsize * self.channels


def _wav_header(f: BinaryIO, head: bytes) -> tuple[_WavFormat, int | None]:
    """Parse a RIFF/WAVE header from a stream (after its first 12 bytes ``head``) up to the data
    chunk -> (format, data bytes or None when the writer could not know them: 0 / 0xFFFFFFFF)."""
    if head[8:12] != b"WAVE":
        raise AudioError(STDIN, "a RIFF stream that is not WAVE audio")
    fmt = None
    while True:
        ch = _read_exact(f, 8)
        if len(ch) < 8:
            raise AudioError(STDIN, "the WAV header ends before its data chunk (truncated or corrupt header)")
        cid, size = ch[:4], struct.unpack("<I", ch[4:])[0]
        if cid == b"fmt ":
            if not 16 <= size <= 64:
                raise AudioError(STDIN, f"corrupt WAV header: a fmt chunk of {size} bytes (16-40 expected)")
            body = _read_exact(f, size + size % 2)
            if len(body) < size:
                raise AudioError(STDIN, "the WAV header ends inside its fmt chunk (truncated)")
            tag, channels, rate, bits = parse_fmt_chunk(body[:size])
            check_sample_rate(rate, STDIN)
            if channels < 1:
                raise AudioError(STDIN, f"corrupt WAV header: {channels} channels")
            fmt = _WavFormat(tag, channels, rate, bits)
        elif cid == b"data":
            if fmt is None:
                raise AudioError(STDIN, "corrupt WAV header: the data chunk comes before the fmt chunk")
            return fmt, (None if size in (0, 0xFFFFFFFF) else size)
        elif not _skip(f, size + size % 2):
            raise AudioError(STDIN, f"the WAV header ends before its data chunk (a {cid!r} chunk of {size} "
                                    "bytes runs past the end: truncated or corrupt header)")


def _stdin_blocks(f: BinaryIO, block: int) -> Iterator[np.ndarray]:
    head = _read_exact(f, 12)
    if not head:
        raise AudioError(STDIN, "no audio on stdin (0 bytes); pipe raw 16 kHz mono 16-bit PCM or a WAV stream")
    if head[:4] in (b"fLaC", b"OggS", b"ID3\x03", b"ID3\x04"):
        raise AudioError(STDIN, "compressed audio on stdin: pipe raw 16 kHz mono 16-bit PCM or WAV, e.g. "
                                "`ffmpeg -i in.mp3 -ar 16000 -ac 1 -f wav - | spiritlm transcribe ... -`")
    if head[:4] == b"RIFF":
        fmt, remaining = _wav_header(f, head)
        lead = b""
    else:  # raw s16le mono 16 kHz: the 12 bytes read are samples
        fmt, remaining, lead = _WavFormat(1, 1, SAMPLE_RATE, 16), None, head
    yield from _pcm_blocks(f, fmt, remaining, lead, block)


def _pcm_blocks(f: BinaryIO, fmt: _WavFormat, remaining: int | None, lead: bytes, block: int,
                source: str = STDIN) -> Iterator[np.ndarray]:
    resampler = None
    if fmt.rate != SAMPLE_RATE:
        import soxr

        resampler = soxr.ResampleStream(fmt.rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    want = max(1, block * fmt.rate // SAMPLE_RATE) * fmt.frame_bytes
    buf, total = lead, 0
    while True:
        n = want - len(buf) if remaining is None else min(want - len(buf), remaining)
        more = _read_exact(f, max(0, n))
        if remaining is not None:
            remaining -= len(more)
        buf += more
        end = not more or remaining == 0
        usable = len(buf) - len(buf) % fmt.frame_bytes
        if usable:
            x = np.frombuffer(buf[:usable], dtype=fmt.dtype).reshape(-1, fmt.channels)
            x = x.astype(np.float32) / (32768.0 if fmt.dtype.kind == "i" else 1.0)
            buf = buf[usable:]
            out = _mono_checked(x, total, source)
            total += len(out)
            if resampler is not None:
                out = resampler.resample_chunk(out, last=end)
            if len(out):
                yield out
        elif end and resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                yield tail
        if end:
            break
    if buf:
        raise AudioError(source, stray_bytes_reason(len(buf), fmt.frame_bytes))
    if total == 0:
        raise AudioError(source, "empty audio (0 samples)")


def _mono_checked(x_SC: np.ndarray, offset: int, source: str = STDIN) -> np.ndarray:
    m = x_SC.mean(axis=1) if x_SC.shape[1] > 1 else x_SC[:, 0]
    bad = ~np.isfinite(m)
    if bad.any():
        raise AudioError(source, f"NaN/inf samples (first at sample {offset + int(np.flatnonzero(bad)[0])})")
    return np.ascontiguousarray(m, dtype=np.float32)


def _file_blocks(path: Path, block: int) -> Iterator[np.ndarray]:
    import soundfile as sf

    from spiritlm.audio import probe_audio

    info = probe_audio(path)  # readable, plausible rate, not empty, not truncated: or AudioError
    streamed = wav_of_unknown_length(path)
    if streamed is not None:  # the header declares 0 data bytes: read to the end, as from stdin
        fmt = _WavFormat(streamed.tag, streamed.channels, streamed.rate, streamed.bits, str(path))
        with open(path, "rb") as f:
            f.seek(streamed.offset)
            yield from _pcm_blocks(f, fmt, None, b"", block, str(path))
        return
    resampler = None
    if info.sample_rate != SAMPLE_RATE:
        import soxr

        resampler = soxr.ResampleStream(info.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    step = max(1, block * info.sample_rate // SAMPLE_RATE)
    done = 0
    try:
        for x in sf.blocks(str(path), blocksize=step, dtype="float32", always_2d=True):
            out = _mono_checked(x, done, str(path))
            done += len(out)
            last = done >= info.frames
            if resampler is not None:
                out = resampler.resample_chunk(out, last=last)
            if len(out):
                yield out
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(str(path), f"unreadable or not a supported audio file ({e})") from None
    if done < info.frames:
        raise AudioError(str(path), f"truncated: header says {info.frames} frames, only {done} readable")


def audio_blocks(source: str | Path, block: int = 4000, stdin: BinaryIO | None = None) -> Iterator[np.ndarray]:
    """Float32 mono 16-kHz blocks of about ``block`` samples from a file or ``"-"`` (stdin: raw
    16 kHz mono s16le PCM, or a WAV stream -- any rate, resampled as it arrives). Malformed input
    raises :class:`AudioError` with the reason, before or while the audio streams."""
    if str(source) == "-":
        import sys

        return _stdin_blocks(stdin if stdin is not None else sys.stdin.buffer, block)
    p = Path(source)
    if not p.exists():
        raise AudioError(str(p), "file not found")
    if p.is_dir():
        raise AudioError(str(p), "is a directory, not an audio file")
    return _file_blocks(p, block)
