"""The data stage's speech unit encoders (the protocol: :class:`spiritlm.unit_encoder.UnitEncoder`).

The data stage calls ``encode_many`` on batches of audio paths; every encoder here also has
``encode`` (one file or waveform), so the same object serves the evaluation. ``frame_rates``
gives the true frame rate of every stream (used to place frames in time; the merge order of the
speech string uses the vocabulary's rates), and ``name`` identifies the encoder in shard metadata.

:class:`HashUnitEncoder` is a deterministic stand-in for tests and demos (a hash of the audio
samples of each frame); :class:`SpeechTokenizerEncoder` is a saved ``spiritlm tokenizer fit``
directory; :class:`TokenizerEncoder` adapts any object with ``encode(path)``.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Sequence

import numpy as np

# One audio error for the whole project: the data stage reads audio through the tokenizer's
# loader (sample-rate, truncation, NaN/inf checks, with the file named in the message).
from spiritlm.audio import AudioError  # noqa: F401  (re-exported)

from spiritlm.unit_encoder import DEFAULT_FRAME_RATES, AudioInput


def read_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Mono float32 audio at ``sample_rate``; raises :class:`AudioError` with the reason (the
    speech tokenizer's :func:`~spiritlm.audio.load_audio`, so that every reader of
    audio rejects the same files with the same messages)."""
    from spiritlm.audio import load_audio

    return load_audio(path, target_rate=sample_rate)


class HashUnitEncoder:
    """Deterministic fake units: every frame's 16-bit samples hashed, modulo the codebook size.

    HuBERT frames are 640 samples (25 Hz at 16 kHz), pitch 1280 (12.5 Hz), style 16000 (1 Hz).
    Same file -> same units on any machine. Not a speech model: for tests and plumbing only.
    """

    name = "hash-fake-v1"

    def __init__(self, expressive: bool = True, sample_rate: int = 16000, runs: int = 2):
        self.expressive = expressive
        self.sample_rate = sample_rate
        self.runs = runs  # repeat each HuBERT frame value over `runs` frames so dedup has work
        streams = ("hubert", "pitch", "style") if expressive else ("hubert",)
        self.frame_rates = {s: DEFAULT_FRAME_RATES[s] for s in streams}

    def _stream(self, pcm: bytes, hop: int, size: int, n: int, runs: int) -> np.ndarray:
        out = np.empty(n, dtype=np.int64)
        for i in range(n):
            g = i // runs
            h = hashlib.blake2b(pcm[2 * g * runs * hop: 2 * (g * runs + 1) * hop], digest_size=4)
            out[i] = int.from_bytes(h.digest(), "little") % size
        return out

    def encode_array(self, audio: np.ndarray) -> dict[str, np.ndarray]:
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        n_samples = len(audio)
        out = {}
        sizes = {"hubert": 501, "pitch": 64, "style": 100}
        for s, rate in self.frame_rates.items():
            hop = int(round(self.sample_rate / rate))
            n = max(1, n_samples // hop)
            out[s] = self._stream(pcm, hop, sizes[s], n, self.runs if s == "hubert" else 3)
        return out

    def encode(self, audio: AudioInput) -> dict[str, np.ndarray]:
        wav = audio if isinstance(audio, np.ndarray) else read_audio(audio, self.sample_rate)
        return self.encode_array(np.asarray(wav, dtype=np.float32))

    def encode_many(self, paths: Sequence[str | Path]) -> list[dict[str, np.ndarray]]:
        # a bad file raises for the whole batch; the data stage's workers then retry one by one
        return [self.encode_array(read_audio(p, self.sample_rate)) for p in paths]


class SpeechTokenizerEncoder:
    """``spiritlm.tokenizer.SpeechTokenizer`` (a saved tokenizer directory), batched through
    ``encode_many``; a bad file comes back as its exception (counted as ``audio_unreadable``)."""

    def __init__(self, directory: str | Path, expressive: bool = False, device: str | None = None):
        import json as _json

        from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

        d = Path(directory)
        self.tok = SpeechTokenizer.load(d, device=device or None)
        man = _json.loads((d / "manifest.json").read_text())
        rates = {k: float(v["rate"]) for k, v in man["streams"].items()}
        streams = ("hubert", "pitch", "style") if expressive else ("hubert",)
        missing = [s for s in streams if s not in rates]
        if missing:
            raise ValueError(f"speech tokenizer {d} has no {missing} stream(s): set "
                             "speech.expressive=false or fit an Expressive tokenizer")
        self.frame_rates = {s: rates[s] for s in streams}
        digest = hashlib.sha256((d / "manifest.json").read_bytes()).hexdigest()[:12]
        self.name = f"speech-tokenizer:{man.get('name', d.name)}:{digest}"

    @classmethod
    def from_tokenizer(cls, tok, expressive: bool = False, name: str | None = None):
        """Wrap an already loaded ``SpeechTokenizer`` object."""
        self = cls.__new__(cls)
        self.tok = tok
        rates = {"hubert": float(tok.featurizer.frame_rate), "pitch": 12.5, "style": 1.0}
        self.frame_rates = {s: rates[s] for s in (("hubert", "pitch", "style") if expressive
                                                   else ("hubert",))}
        self.name = name or f"speech-tokenizer:{getattr(getattr(tok, 'cfg', None), 'name', 'custom')}"
        return self

    def encode(self, audio: AudioInput) -> dict[str, np.ndarray]:
        units = self.tok.encode(audio if isinstance(audio, np.ndarray) else str(audio))
        return {s: np.asarray(units[s], dtype=np.int64) for s in self.frame_rates}

    def encode_many(self, paths):
        out = []
        # Ask only for the streams we keep when the tokenizer can skip the others (ours can; a
        # duck-typed one with a plain encode_many(paths) still works).
        many = self.tok.encode_many
        kw = {"streams": tuple(self.frame_rates)} if "streams" in inspect.signature(many).parameters else {}
        for r in many([str(p) for p in paths], **kw):
            out.append(r if isinstance(r, Exception) else
                       {s: np.asarray(r[s], dtype=np.int64) for s in self.frame_rates})
        return out


def speech_tokenizer(speech_cfg) -> SpeechTokenizerEncoder:
    """Factory for recipes: ``speech.encoder = "spiritlm.data.encoders:speech_tokenizer"`` with
    ``speech.tokenizer_dir`` (a directory saved by ``spiritlm tokenizer fit``)."""
    if not speech_cfg.tokenizer_dir:
        raise ValueError("speech.tokenizer_dir is not set: point it at a speech tokenizer "
                         "directory (made by `spiritlm tokenizer fit`)")
    return SpeechTokenizerEncoder(speech_cfg.tokenizer_dir, speech_cfg.expressive,
                                  speech_cfg.device or None)


class TokenizerEncoder:
    """Adapter: an object with ``encode(path) -> {"hubert": ..., "pitch": ..., "style": ...}``."""

    def __init__(self, tokenizer, name: str = "speech-tokenizer", frame_rates=None,
                 expressive: bool = False):
        self.tokenizer = tokenizer
        self.name = name
        streams = ("hubert", "pitch", "style") if expressive else ("hubert",)
        rates = dict(frame_rates or getattr(tokenizer, "frame_rates", None) or DEFAULT_FRAME_RATES)
        self.frame_rates = {s: float(rates[s]) for s in streams}

    def encode(self, audio: AudioInput) -> dict[str, np.ndarray]:
        units = self.tokenizer.encode(audio if isinstance(audio, np.ndarray) else str(audio))
        return {s: np.asarray(units[s], dtype=np.int64) for s in self.frame_rates}

    def encode_many(self, paths):
        return [self.encode(p) for p in paths]
