"""Cached, timed pipeline steps (what ``spiritlm demo`` runs on), some of them side by side.

A step is a function of its dependencies. Its output directory holds ``STEP_DONE.json`` with a
hash of those dependencies; a rerun skips a step whose hash matches, so a pipeline resumes where
it stopped and a second run costs nothing. Every step is timed.

Independent steps (the demo's language models) can run side by side, each in its own process
with an equal share of the cores. On 2 CPU cores two 1-thread
trainings of the demo's model finish sooner than one 2-thread training after the other (1.19x in
fp32, 1.10x in bf16: `spiritlm bench side-by-side`): small matrices keep two threads of one
process from being twice as fast as one. Each side process writes its
console output to ``<step>/step.log``; the parent shows one progress bar per step.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from spiritlm.config import to_dict

DONE = "STEP_DONE.json"
STARTED = "STEP_STARTED"
LOG = "step.log"
_OUTPUTS = "step_outputs.json"  # a side process's return value, read by the parent


@dataclass
class StepResult:
    name: str
    seconds: float
    cached: bool
    outputs: dict[str, Any]
    side_by_side: bool = False  # ran in a side process, overlapping other steps


@dataclass
class Job:
    """One step to run side by side with others. ``fn(*args, step_dir)`` runs in another process,
    so it and its arguments must pickle (a module-level function, dataclass configs)."""

    name: str
    deps: Any
    fn: Callable[..., dict[str, Any]]
    args: tuple = ()
    # (done, total) read from the step directory while the step runs, for the progress bar
    progress: Optional[Callable[[Path], tuple[int, int]]] = None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Pipeline:
    """Runs named steps with hash-based caching and timing; ``workers`` > 1 lets ``run_jobs`` run
    independent steps side by side."""

    def __init__(self, out_dir: Path, workers: int = 1):
        self.out_dir = out_dir
        self.workers = max(1, workers)
        self.results: list[StepResult] = []
        self.t0 = time.perf_counter()

    # ---- one step, in this process ----------------------------------------------------------------
    def run(self, name: str, deps: Any, fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        key = _key(deps)
        cached = self._cached(name, key)
        return cached if cached is not None else self._run_here(name, key, fn)

    def _run_here(self, name: str, key: str, fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        print(f"[{name}] running ...", flush=True)
        t0 = time.perf_counter()
        outputs = fn(self._start(name, key))
        return self._finish(name, key, time.perf_counter() - t0, outputs)

    # ---- independent steps, side by side ----------------------------------------------------------
    def run_jobs(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """Outputs of every job, in order. Cached jobs are skipped; the others run ``workers`` at
        a time in side processes (in this process when only one is left to run)."""
        first = len(self.results)
        done: dict[str, dict[str, Any]] = {}
        todo = []
        for job in jobs:
            key = _key(job.deps)
            cached = self._cached(job.name, key)
            if cached is None:
                todo.append((job, key))
            else:
                done[job.name] = cached
        if len(todo) == 1 or min(self.workers, available_cores()) == 1:  # one core: nothing to share
            for job, key in todo:
                done[job.name] = self._run_here(job.name, key, lambda d, j=job: j.fn(*j.args, d))
        elif todo:
            done.update(self._run_side_by_side(todo))
        order = {job.name: i for i, job in enumerate(jobs)}  # the report lists jobs as given, not as they ended
        self.results[first:] = sorted(self.results[first:], key=lambda r: order[r.name])
        return [done[job.name] for job in jobs]

    def _run_side_by_side(self, todo: list) -> dict[str, dict[str, Any]]:
        from tqdm.auto import tqdm

        n = min(self.workers, len(todo))
        threads = max(1, available_cores() // n)
        ctx = mp.get_context("spawn")  # not fork: the parent's torch thread pools do not survive it
        pending, running, outputs, failed = list(todo), {}, {}, []
        bars: dict[str, Any] = {}
        free_rows = list(range(n))  # a bar takes a free terminal row and gives it back when done
        # SIGTERM (timeout, a scheduler) would skip `finally` and orphan the side processes
        try:
            old_term = signal.signal(signal.SIGTERM, _raise_exit)
        except ValueError:  # not the main thread: signals stay as they are
            old_term = None
        try:
            while pending or running:
                while pending and len(running) < n:
                    job, key = pending.pop(0)
                    step_dir = self._start(job.name, key)
                    (step_dir / _OUTPUTS).unlink(missing_ok=True)  # from an interrupted run
                    tqdm.write(f"[{job.name}] running side by side ({threads} thread{'s' * (threads > 1)}; "
                               f"log: {step_dir / LOG})")
                    proc = _spawn(ctx, job, step_dir, threads)
                    running[job.name] = (proc, job, key, step_dir, time.perf_counter())
                    # disable=None: no bar when the output is not a terminal (a log file)
                    bars[job.name] = tqdm(desc=job.name, total=None, unit="step", position=free_rows.pop(0),
                                          leave=False, dynamic_ncols=True, disable=None)
                time.sleep(0.5)
                for name, (proc, job, key, step_dir, t0) in list(running.items()):
                    _update_bar(bars[name], job, step_dir)
                    if proc.is_alive():
                        continue
                    proc.join()
                    del running[name]
                    free_rows.append(bars[name].pos if bars[name].pos is not None else 0)
                    free_rows.sort()
                    bars.pop(name).close()
                    if proc.exitcode == 0 and (step_dir / _OUTPUTS).is_file():
                        out = json.loads((step_dir / _OUTPUTS).read_text())
                        outputs[name] = self._finish(name, key, time.perf_counter() - t0, out, side=True)
                    else:
                        failed.append((name, proc.exitcode, step_dir / LOG))
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            for proc, *_ in running.values():  # interrupted: stop the others too (they resume)
                proc.terminate()
                proc.join()
            for bar in bars.values():
                bar.close()
        if failed:
            lines = []
            for name, code, log in failed:
                tail = log.read_text(errors="replace").splitlines()[-15:] if log.is_file() else []
                lines.append(f"[{name}] failed (exit code {code}); log: {log}\n    " + "\n    ".join(tail))
            raise RuntimeError("side-by-side steps failed:\n" + "\n".join(lines))
        return outputs

    # ---- bookkeeping --------------------------------------------------------------------------------
    def _cached(self, name: str, key: str) -> Optional[dict[str, Any]]:
        done = self.out_dir / name / DONE
        if done.is_file():
            rec = json.loads(done.read_text())
            if rec.get("key") == key:
                self.results.append(StepResult(name, 0.0, True, rec["outputs"]))
                print(f"[{name}] cached ({rec['seconds']:.1f} s when built)")
                return rec["outputs"]
        return None

    def _start(self, name: str, key: str) -> Path:
        step_dir = self.out_dir / name
        started = step_dir / STARTED
        if step_dir.exists() and not (started.is_file() and started.read_text() == key):
            # Outputs of other settings must not leak in (training would resume from them);
            # an interrupted run of the same settings is kept, so it resumes.
            shutil.rmtree(step_dir)
        step_dir.mkdir(parents=True, exist_ok=True)
        started.write_text(key)
        return step_dir

    def _finish(self, name: str, key: str, seconds: float, outputs: dict[str, Any],
                side: bool = False) -> dict[str, Any]:
        done = self.out_dir / name / DONE
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "seconds": seconds, "outputs": outputs}, indent=1, default=str))
        tmp.replace(done)  # written last: a killed step reruns
        self.results.append(StepResult(name, seconds, False, outputs, side))
        print(f"[{name}] done in {seconds:.1f} s")
        return outputs

    def report(self) -> str:
        """Markdown table of step times. Side-by-side steps overlap, so the wall time since the
        pipeline started is less than the sum of the steps."""
        lines = ["| step | time (s) | ran |", "|---|---:|---|"]
        for r in self.results:
            how = "cached" if r.cached else "side by side" if r.side_by_side else "yes"
            lines.append(f"| {r.name} | {r.seconds:.1f} | {how} |")
        lines.append(f"| sum of steps | {sum(r.seconds for r in self.results):.1f} | |")
        lines.append(f"| **wall time** | {time.perf_counter() - self.t0:.1f} | |")
        return "\n".join(lines)


def _key(deps: Any) -> str:
    return hashlib.sha256(json.dumps(to_dict(deps), sort_keys=True, default=str).encode()).hexdigest()


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def _spawn(ctx, job: Job, step_dir: Path, threads: int):
    # A spawned child takes its environment from os.environ at start: thread counts for the
    # OpenMP/MKL pools it creates, and no inherited MASTER_PORT, so two single-process DeepSpeed
    # runs do not both bind the port an earlier in-process run chose. Only these keys change.
    changed = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "MASTER_PORT": None}
    saved = {k: os.environ.get(k) for k in changed}
    for k, v in changed.items():
        _setenv(k, v)
    try:
        proc = ctx.Process(target=_child, args=(job.fn, job.args, str(step_dir), threads, os.getpid()),
                           name=job.name)
        proc.start()
    finally:
        for k, v in saved.items():
            _setenv(k, v)
    return proc


def _setenv(key: str, value: Optional[str]) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def _child(fn, args: tuple, step_dir: str, threads: int, parent: int) -> None:
    _die_with_parent(parent)
    log = open(Path(step_dir) / LOG, "a", buffering=1)
    os.dup2(log.fileno(), 1)  # C-level output (DeepSpeed, OpenMP warnings) too
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    import logging  # the library's INFO lines (data sources, resumption) into the step's log

    logging.basicConfig(level=logging.INFO, stream=log, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import torch

        torch.set_num_threads(threads)
        out = fn(*args, Path(step_dir))
        (Path(step_dir) / _OUTPUTS).write_text(json.dumps(out, default=str))
    except BaseException:
        traceback.print_exc()
        log.flush()
        raise SystemExit(1)


def _die_with_parent(parent: int) -> None:
    """Linux: SIGTERM this process when its parent dies, even by SIGKILL, so no orphan keeps
    writing into a step directory that a rerun resumes."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        raise SystemExit(1)


def _update_bar(bar, job: Job, step_dir: Path) -> None:
    if job.progress is None:
        bar.refresh()  # elapsed time
        return
    try:
        done, total = job.progress(step_dir)
    except (OSError, ValueError):  # the file is being written
        return
    if total and bar.total != total:
        bar.total = total
    if done > bar.n:
        bar.update(done - bar.n)
