"""Robust audio loading for the speech tokenizer.

``load_audio(path)`` reads WAV/FLAC/OGG through soundfile (8/16/24/32-bit PCM and float), mixes
multi-channel audio down to mono, resamples to 16 kHz with soxr (a real band-limited resampler)
and rejects what cannot be tokenized -- unreadable or truncated files, empty audio, audio shorter
than one frame hop, NaN/inf samples -- with an :class:`AudioError` naming the file and the reason.
``check_waveform`` applies the same checks to arrays handed in directly.

A header whose sample rate is outside ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]`` is corrupt (seen: a
WAV claiming 1,092,676 Hz, which turned 7 s of speech into 4 units); it is rejected before any
sample is read. A WAV whose header declares 0 data bytes was written by a program that could not
seek back to fill it in (a pipe, a recorder stopped hard): its samples run to the end of the file,
and every reader here (:func:`probe_audio`, :func:`load_audio`, ``audio_blocks`` from a file or
from stdin) reads them so (16-bit PCM or 32-bit float, :data:`STREAM_FORMATS`); with nothing after
the header it is empty audio. :func:`probe_audio` reads only the header (duration, rate; same checks), and
:func:`is_silent` answers whether a file holds nothing but digital silence -- the data stage
uses both to drop such files with a reason instead of keeping them as speech.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

SAMPLE_RATE = 16_000
# Plausible header rates: telephone 8 kHz (4 kHz allows old archives) up to 384 kHz studio audio.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4_000, 384_000
# Digital silence: no sample above one 16-bit step (dithered silence toggles the last bit).
SILENCE_PEAK = 1.0 / 32768

AudioInput = Union[str, Path, np.ndarray]
# WAV (format tag, bits) -> sample dtype readable without a length in the header (a streamed WAV)
STREAM_FORMATS = {(1, 16): np.dtype("<i2"), (3, 32): np.dtype("<f4")}


class AudioError(ValueError):
    """Audio that cannot be tokenized. ``source`` is the file (or "<array>"), ``reason`` why."""

    def __init__(self, source: str, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


def check_waveform(wav: np.ndarray, source: str = "<array>", min_samples: int = 1) -> np.ndarray:
    """Validate a mono/multi-channel float waveform; return it as contiguous float32 mono 1-D.

    Multi-channel arrays are (samples, channels) as soundfile returns them; they are averaged.
    """
    wav = np.asarray(wav)
    if wav.dtype.kind not in "fiu":
        raise AudioError(source, f"samples must be numbers, got dtype {wav.dtype}")
    if wav.dtype.kind in "iu":  # integer PCM given as an array: scale to [-1, 1)
        info = np.iinfo(wav.dtype)
        wav = (wav.astype(np.float64) - (info.max + info.min + 1) / 2) / (2.0 ** (info.bits - 1))
    if wav.ndim == 2:
        if wav.shape[1] > wav.shape[0]:
            raise AudioError(
                source,
                f"2-D audio must be (samples, channels), got shape {wav.shape}; transpose it",
            )
        wav = wav.mean(axis=1)
    elif wav.ndim != 1:
        raise AudioError(source, f"audio must be 1-D (or samples x channels), got shape {wav.shape}")
    if wav.size == 0:
        raise AudioError(source, "empty audio (0 samples)")
    bad = ~np.isfinite(wav)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise AudioError(
            source,
            f"{int(bad.sum())} NaN/inf samples (first at sample {first}); fix or re-export the file",
        )
    if wav.size < min_samples:
        raise AudioError(
            source,
            f"too short: {wav.size} samples at 16 kHz ({wav.size / SAMPLE_RATE * 1000:.1f} ms), "
            f"need at least {min_samples} (one frame hop)",
        )
    return np.ascontiguousarray(wav, dtype=np.float32)


def resample(wav: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    if sr_in == sr_out:
        return wav
    if sr_in <= 0:
        raise ValueError(f"sample rate must be positive, got {sr_in}")
    import soxr

    return soxr.resample(wav, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def load_audio(
    source: AudioInput,
    sample_rate: int | None = None,
    min_samples: int = 1,
    target_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Path or array -> float32 mono waveform at ``target_rate`` (16 kHz).

    ``sample_rate`` is required for arrays not already at ``target_rate``; for files the header
    rate is used. ``min_samples`` (after resampling) is usually the model's frame hop.
    """
    if isinstance(source, np.ndarray) or hasattr(source, "__array__") and not isinstance(source, (str, Path)):
        wav = np.asarray(source)
        sr = target_rate if sample_rate is None else int(sample_rate)
        name = "<array>"
        if wav.dtype.kind in "fiu" and wav.size and sr != target_rate:
            wav = check_waveform(wav, name, 1)
            wav = resample(wav, sr, target_rate)
        return check_waveform(wav, name, min_samples)

    path = Path(source)
    name = str(path)
    if not path.exists():
        raise AudioError(name, "file not found")
    if path.is_dir():
        raise AudioError(name, "is a directory, not an audio file")
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            frames = f.frames
            check_sample_rate(sr, name)
            wav = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        if isinstance(e, AudioError):
            raise
        raise AudioError(name, f"unreadable or not a supported audio file ({e})") from None
    declared = _wav_declared_bytes(path)
    if declared is not None and declared[0] > declared[1]:
        raise AudioError(
            name,
            f"truncated: the WAV header declares {declared[0]} data bytes, the file holds "
            f"{declared[1]}; re-export or re-download it",
        )
    if frames == 0:
        streamed = wav_of_unknown_length(path)
        if streamed is not None and streamed.nbytes:
            wav = read_unknown_length(path, streamed)
    if frames > 0 and wav.shape[0] < frames:
        raise AudioError(name, f"truncated: header says {frames} frames, only {wav.shape[0]} readable")
    if wav.shape[0] == 0:
        raise AudioError(name, "empty audio (0 samples)")
    wav = check_waveform(wav, name, 1)  # downmix + finite check before resampling
    wav = resample(wav, sr, target_rate)
    return check_waveform(wav, name, min_samples)


def check_sample_rate(sr: int, source: str = "<array>") -> int:
    if not MIN_SAMPLE_RATE <= int(sr) <= MAX_SAMPLE_RATE:
        raise AudioError(
            source,
            f"implausible sample rate {int(sr)} Hz in the header (expected {MIN_SAMPLE_RATE}-"
            f"{MAX_SAMPLE_RATE} Hz): the header is corrupt; re-export or re-download the file",
        )
    return int(sr)


@dataclass(frozen=True)
class AudioInfo:
    duration: float  # seconds, from the header
    sample_rate: int
    frames: int
    channels: int


def probe_audio(path: str | Path) -> AudioInfo:
    """The header of an audio file, checked (readable, plausible rate, not empty, not truncated),
    without decoding it; raises :class:`AudioError` with the reason."""
    import soundfile as sf

    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise AudioError(name, "file not found" if not path.exists() else "not a regular file")
    try:
        info = sf.info(name)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(name, f"unreadable or not a supported audio file ({e})") from None
    check_sample_rate(info.samplerate, name)
    if info.frames <= 0:
        streamed = wav_of_unknown_length(path)
        if streamed is not None and streamed.nbytes:
            frames = streamed.nbytes // stream_dtype(streamed, name).itemsize // streamed.channels
            _check_whole_frames(streamed, name)
            return AudioInfo(frames / streamed.rate, streamed.rate, frames, streamed.channels)
        raise AudioError(name, "empty audio (0 samples)")
    declared = _wav_declared_bytes(path)
    if declared is not None and declared[0] > declared[1]:
        raise AudioError(name, f"truncated: the WAV header declares {declared[0]} data bytes, the "
                               f"file holds {declared[1]}; re-export or re-download it")
    return AudioInfo(info.frames / info.samplerate, int(info.samplerate), int(info.frames),
                     int(info.channels))


def is_silent(source: str | Path | np.ndarray, peak: float = SILENCE_PEAK) -> bool:
    """True when no sample exceeds ``peak`` (digital silence). Files are read in blocks and the
    read stops at the first block with sound, so a normal file costs one block."""
    if isinstance(source, np.ndarray):
        return bool(source.size == 0 or float(np.nanmax(np.abs(source))) <= peak)
    import soundfile as sf

    try:
        for block in sf.blocks(str(source), blocksize=1 << 16, dtype="float32", always_2d=True):
            if block.size and float(np.nanmax(np.abs(block))) > peak:
                return False
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(str(source), f"unreadable or not a supported audio file ({e})") from None
    return True


@dataclass(frozen=True)
class StreamedWav:
    """A WAV file whose data chunk declares 0 bytes: the samples run from ``offset`` to the end."""

    offset: int  # the first data byte
    nbytes: int  # bytes from there to the end of the file
    tag: int  # format tag (1 PCM, 3 float; WAVE_FORMAT_EXTENSIBLE resolved)
    channels: int
    rate: int
    bits: int


def parse_fmt_chunk(body: bytes) -> tuple[int, int, int, int]:
    """A WAV ``fmt `` chunk's body -> (format tag, channels, rate, bits)."""
    import struct

    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real format in the sub-GUID
        tag = struct.unpack("<H", body[24:26])[0]
    return tag, channels, rate, bits


def stream_dtype(fmt, source: str) -> np.dtype:
    """The sample dtype of a WAV read without a length (stdin, or a header declaring 0 bytes)."""
    dt = STREAM_FORMATS.get((fmt.tag, fmt.bits))
    if dt is None:
        raise AudioError(source, f"a WAV without a data length (streamed) must be 16-bit PCM or 32-bit float "
                                 f"(format {fmt.tag}, {fmt.bits} bits given); convert it, e.g. `sox in.wav -b 16 "
                                 "out.wav`")
    return dt


def stray_bytes_reason(n: int, frame_bytes: int) -> str:
    return f"the audio ends inside a sample frame ({n} stray bytes of {frame_bytes}): truncated audio"


def _check_whole_frames(w: StreamedWav, source: str) -> None:
    fb = stream_dtype(w, source).itemsize * w.channels
    if w.nbytes % fb:
        raise AudioError(source, stray_bytes_reason(w.nbytes % fb, fb))


def wav_of_unknown_length(path: str | Path) -> StreamedWav | None:
    """The data layout of a WAV file whose header declares 0 data bytes; None for any other file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            pos, fmt = 12, None
            while pos + 8 <= size:
                f.seek(pos)
                cid, n = f.read(4), int.from_bytes(f.read(4), "little")
                if cid == b"fmt " and 16 <= n <= 64:
                    fmt = parse_fmt_chunk(f.read(n))
                elif cid == b"data":
                    if n != 0 or fmt is None:
                        return None
                    tag, channels, rate, bits = fmt
                    if channels < 1:
                        return None
                    return StreamedWav(pos + 8, size - pos - 8, tag, channels, rate, bits)
                pos += 8 + n + (n & 1)
    except OSError:
        return None
    return None


def read_unknown_length(path: str | Path, w: StreamedWav) -> np.ndarray:
    """The samples of a :class:`StreamedWav`, (samples, channels) float32, checked as stdin's are."""
    name = str(path)
    check_sample_rate(w.rate, name)
    dt = stream_dtype(w, name)
    _check_whole_frames(w, name)
    with open(path, "rb") as f:
        f.seek(w.offset)
        data = f.read(w.nbytes)
    x = np.frombuffer(data, dtype=dt).reshape(-1, w.channels).astype(np.float32)
    return x / 32768.0 if dt.kind == "i" else x


def _wav_declared_bytes(path: Path) -> tuple[int, int] | None:
    """(declared, available) byte counts of a RIFF/WAVE ``data`` chunk; None for other files."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = path.stat().st_size
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                cid, n = f.read(4), int.from_bytes(f.read(4), "little")
                if cid == b"data":
                    if n in (0, 0xFFFFFFFF):  # streamed WAV with unknown length
                        return None
                    return n, size - pos - 8
                pos += 8 + n + (n & 1)
    except OSError:
        return None
    return None


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the header (no decoding); 0.0 when unreadable."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
        return float(info.frames) / float(info.samplerate)
    except Exception:  # noqa: BLE001 -- unreadable files are reported later by load_audio
        return 0.0
