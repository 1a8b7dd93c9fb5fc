"""Robust audio loading for the speech tokenizer.

``load_audio(path)`` reads WAV/FLAC/OGG through soundfile (8/16/24/32-bit PCM and float), mixes
multi-channel audio down to mono, resamples to 16 kHz with soxr (a real band-limited resampler)
and rejects what cannot be tokenized -- unreadable or truncated files, empty audio, audio shorter
than one frame hop, NaN/inf samples -- with an :class:`AudioError` naming the file and the reason.
``check_waveform`` applies the same checks to arrays handed in directly.

A header whose sample rate is outside ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]`` is corrupt (seen: a
WAV claiming 1,092,676 Hz, which turned 7 s of speech into 4 units); it is rejected before any
sample is read. :func:`probe_audio` reads only the header (duration, rate; same checks), and
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
