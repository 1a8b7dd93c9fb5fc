"""Batched, multi-process espeak synthesis for :mod:`spiritlm.eval.mini`.

The builders first *plan* every wav (a :class:`Job`: text, voice, style, target path) while they
draw their items serially, then :meth:`SynthPool.run` synthesises the jobs in batches through
:meth:`spiritlm.corpus.espeak.ESpeak.synthesize_many`. Each synthesis runs in a fresh fork of a
pristine espeak process, so the output is a pure function of the job (and the build seed) and is
byte-identical for any number of processes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
LEAD_SILENCE = 1600  # 0.1 s at 16 kHz


@dataclass(eq=False)
class Job:
    text: str
    path: Path | None = None  # where the wav goes; may be set after synthesis (see SynthPool.write)
    voice: str = "en-us"
    rate: int = 165
    pitch: int = 50
    range_: int = 50
    phones: list[str] | None = None  # espeak phones without pauses, filled in by SynthPool.run
    failed: bool = False  # synthesis raised (only in non-strict runs)
    audio: np.ndarray | None = field(default=None, repr=False)  # kept only while path is None


def espeak_seed(seed: int, text: str, voice: str) -> int:
    return int(hashlib.sha256(f"{seed}/{text}/{voice}".encode()).hexdigest()[:7], 16)


def _post(es, req, syn) -> tuple[np.ndarray, list[str]]:
    """Runs in the synthesis child: resample to 16 kHz PCM (int16), prepend 0.1 s of silence."""
    import soxr

    y = soxr.resample(syn.audio.astype(np.float32) / 32768.0, syn.sample_rate, SAMPLE_RATE, quality="HQ")
    y = np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)
    audio = np.concatenate([np.zeros(LEAD_SILENCE, np.int16), y])
    return audio, [p.label for p in syn.phones if not p.label.startswith("_")]


def write_wav(path: Path, audio: np.ndarray) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16")


class SynthPool:
    """Synthesise planned :class:`Job` s ``processes`` at a time, with a tqdm bar (unit "wav")."""

    def __init__(self, seed: int, processes: int = 2, total: int = 0, batch: int = 16, progress: bool = True):
        import soxr  # noqa: F401 - imported once here, not in every forked child
        from tqdm.auto import tqdm

        self.seed = seed
        self.processes = max(1, int(processes))
        self.batch = max(1, int(batch)) * self.processes
        self.bar = tqdm(total=total, unit="wav", desc="mini benchmarks", disable=not progress)

    def close(self) -> None:
        self.bar.close()

    def _request(self, job: Job):
        from spiritlm.corpus.espeak import SynthRequest

        return SynthRequest(job.text, job.voice, job.rate, job.pitch, job.range_,
                            espeak_seed(self.seed, job.text, job.voice))

    def _finish(self, job: Job, result) -> None:
        job.audio, job.phones = result
        if job.path is not None:
            write_wav(job.path, job.audio)
            job.audio = None

    def run(self, jobs: list[Job], strict: bool = True) -> None:
        """Synthesise ``jobs``; write those with a path. ``strict=False``: a job whose synthesis
        fails is marked ``failed`` instead of raising (the batch is then redone one by one)."""
        from spiritlm.corpus.espeak import get_espeak

        es = get_espeak()
        if self.bar.n + len(jobs) > self.bar.total:  # more than expected (e.g. redrawn pairs)
            self.bar.total = self.bar.n + len(jobs)
            self.bar.refresh()
        for i in range(0, len(jobs), self.batch):
            chunk = jobs[i: i + self.batch]
            try:
                results = es.synthesize_many([self._request(j) for j in chunk], self.processes, post=_post)
            except (RuntimeError, ValueError):
                if strict:
                    raise
                results = []
                for j in chunk:
                    try:
                        results.append(es.synthesize_many([self._request(j)], 1, post=_post)[0])
                    except (RuntimeError, ValueError):
                        results.append(None)
            for j, r in zip(chunk, results):
                if r is None:
                    j.failed = True
                else:
                    self._finish(j, r)
            self.bar.update(len(chunk))

    def write(self, job: Job, path: Path) -> None:
        """Write the audio of a job synthesised without a path."""
        job.path = path
        write_wav(path, job.audio)
        job.audio = None
