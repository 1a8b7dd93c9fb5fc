"""Side-by-side benchmark harness used by every ``spiritlm bench``: interleaved rounds, median
ratio with its min-max, the machine's load, and achieved FLOP/s against a matmul peak.

Why: one timing of A then one of B measures the machine's noise as much as the code (timings
here vary +-20% between runs, more when other processes run). Alternating A and B in rounds of a
few seconds each puts both under the same noise; the spread of the per-round ratios says how far
the median can be trusted, and a second run should land inside it.

API (everything a benchmark needs)::

    from spiritlm.bench_harness import Side, run_sides, compare, matmul_peak

    a = Side("batched", lambda: encode_all(wavs), work=audio_seconds, unit="audio-s")
    b = Side("naive", lambda: encode_one_by_one(wavs), work=audio_seconds, unit="audio-s")
    r = compare(a, b)                       # ABAB... rounds; prints the report; -> Comparison
    r.ratio.median, r.ratio.lo, r.ratio.hi  # rate(a) / rate(b) per round: median, min, max
    r.as_dict()                             # JSON-able, for tests and result files

* ``Side(name, fn, work=1.0, unit="calls", flops=None, warmup=1, reps=None)``: ``fn()`` does one
  repetition of the work; ``work`` is how many ``unit`` one call does (the rate is work/s);
  ``flops`` the floating-point operations one call does (then achieved FLOP/s is printed against
  the matmul peak); ``warmup`` untimed calls before calibration; ``reps`` fixes the calls per
  round (default: calibrated so that a round lasts ``min_round_s``). ``fn`` may keep state (a
  training step): it is called warmup + 1 (calibration) + rounds x reps times, no more.
* ``run_sides(sides, rounds=5, min_round_s=2.0)`` -> :class:`Measurement`: the sides in turn
  (A B C A B C ...) for ``rounds`` rounds; ``m.ratio("a", "b")`` -> :class:`RatioStats` for any
  pair, ``m.report(pairs)`` the printed text.
* ``compare(a, b, ...)``: ``run_sides`` for two sides + print; ``higher_is_better`` is implied:
  ratios are always rate(a)/rate(b), so ``> 1`` means ``a`` does more work per second.
* ``matmul_peak(dtype, n, shape=(m, k, n))`` -> FLOP/s of a short timed ``torch.mm`` (this
  process's torch threads); ``run_sides(peak=lambda: matmul_peak(...))`` times it after every
  round, so that the peak sees the load the rounds saw (its median and range are printed).
* ``from_timings(seconds, work)`` -> :class:`Measurement` from rounds timed elsewhere (e.g. in
  other processes), for the same statistics and report.
* ``machine_load()`` -> dict of the 1/5/15-min load averages, CPU count, usable CPUs, torch
  threads; printed before and after the rounds.

Defaults can be changed without code for quick smoke runs: ``SPIRITLM_BENCH_ROUNDS`` and
``SPIRITLM_BENCH_MIN_ROUND_S`` (env), or ``--rounds`` / ``--min-round-s`` of ``spiritlm bench``.
``SPIRITLM_BENCH_CLOCK=cpu`` (``--clock cpu``) times with this process's CPU time instead of the
wall clock: on a loaded machine, with ``--threads 1``, it counts the work, not the waits.
Fewer than 5 rounds or rounds under 2 s are marked "(smoke run)" in the report.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

SPREAD_WARN = 0.20  # (max - min) / median of the per-round ratios above which the report warns
MIN_ROUNDS = 5
MIN_ROUND_S = 2.0


@dataclass
class Side:
    """One contender: ``fn()`` does one repetition of ``work`` units (see module docstring)."""

    name: str
    fn: Callable[[], object]
    work: float = 1.0
    unit: str = "calls"
    flops: float | None = None
    warmup: int = 1
    reps: int | None = None


@dataclass
class RatioStats:
    """rate(a) / rate(b), one value per round."""

    a: str
    b: str
    per_round: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.per_round)

    @property
    def lo(self) -> float:
        return min(self.per_round)

    @property
    def hi(self) -> float:
        return max(self.per_round)

    @property
    def spread(self) -> float:
        """(max - min) / median: the relative width of the range the rounds gave."""
        return (self.hi - self.lo) / self.median if self.median else math.inf

    @property
    def noisy(self) -> bool:
        return self.spread > SPREAD_WARN + 1e-9  # exactly 20% (up to rounding) does not warn

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "median": self.median, "min": self.lo, "max": self.hi,
                "spread": self.spread, "per_round": list(self.per_round), "noisy": self.noisy}


@dataclass
class Measurement:
    sides: list[Side]
    rounds: int
    min_round_s: float
    reps: dict[str, list[int]]  # per side, per round: calls timed
    seconds: dict[str, list[float]]  # per side, per round: wall seconds of those calls
    order: list[str]  # the order the timed rounds ran in (A B A B ...)
    load_before: dict
    load_after: dict
    peak_flops: float | None = None  # median over the rounds when measured per round
    peak_desc: str = ""
    peak_per_round: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def side(self, name: str) -> Side:
        return next(s for s in self.sides if s.name == name)

    def rates(self, name: str) -> list[float]:
        s = self.side(name)
        return [s.work * n / t if t > 0 else math.inf for n, t in zip(self.reps[name], self.seconds[name])]

    def rate(self, name: str) -> float:
        return statistics.median(self.rates(name))

    def ratio(self, a: str, b: str) -> RatioStats:
        return RatioStats(a, b, [x / y for x, y in zip(self.rates(a), self.rates(b))])

    def flops_per_s(self, name: str) -> float | None:
        s = self.side(name)
        return None if s.flops is None else s.flops * self.rate(name) / s.work

    @property
    def smoke(self) -> bool:
        return self.rounds < MIN_ROUNDS or self.min_round_s < MIN_ROUND_S

    def report(self, pairs: Sequence[tuple[str, str]] = (), title: str = "") -> str:
        lines = [title] if title else []
        lb, la = self.load_before, self.load_after
        lines.append(f"  machine: {la['cpus']} CPUs ({la['usable_cpus']} usable), torch threads "
                     f"{la['torch_threads']}; load avg 1/5/15 min {_load(lb)} before, {_load(la)} after")
        lines.append(f"  {self.rounds} rounds, order {' '.join(self.order[:2 * len(self.sides)])} ..., "
                     f"each side >= {self.min_round_s:g} s per round"
                     + (" (smoke run: too short to trust)" if self.smoke else ""))
        for s in self.sides:
            rs = self.rates(s.name)
            per_call = statistics.median(t / n for n, t in zip(self.reps[s.name], self.seconds[s.name]))
            calls = self.reps[s.name]
            calls_txt = str(calls[0]) if min(calls) == max(calls) else f"{min(calls)}-{max(calls)}"
            line = (f"  {s.name:<24} {_num(self.rate(s.name))} {s.unit}/s  (min {_num(min(rs))}, max "
                    f"{_num(max(rs))}; {calls_txt} calls/round, {_dur(per_call)}/call)")
            f = self.flops_per_s(s.name)
            if f is not None:
                line += f"  {f / 1e9:.2f} GFLOP/s"
                if self.peak_flops:
                    line += f" = {f / self.peak_flops:.0%} of the matmul peak"
            lines.append(line)
        if self.peak_flops:
            rng = (f", min {min(self.peak_per_round) / 1e9:.1f}, max {max(self.peak_per_round) / 1e9:.1f} over "
                   f"{len(self.peak_per_round)} rounds" if len(self.peak_per_round) > 1 else "")
            lines.append(f"  matmul peak, same run: {self.peak_flops / 1e9:.1f} GFLOP/s ({self.peak_desc}{rng})")
        for a, b in pairs:
            r = self.ratio(a, b)
            lines.append(f"  ratio {a} / {b}: {r.median:.2f}x  (min {r.lo:.2f}, max {r.hi:.2f} over "
                         f"{len(r.per_round)} rounds; spread {r.spread:.0%})")
            if r.noisy:
                lines.append(f"  WARNING: spread {r.spread:.0%} > {SPREAD_WARN:.0%}: the machine's noise is "
                             f"as large as the effect; rerun on a quieter machine or with more rounds")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def as_dict(self, pairs: Sequence[tuple[str, str]] = ()) -> dict:
        return {
            "rounds": self.rounds, "min_round_s": self.min_round_s, "smoke": self.smoke,
            "order": list(self.order), "reps": {k: list(v) for k, v in self.reps.items()},
            "sides": {s.name: {"unit": s.unit, "work_per_call": s.work, "rate_median": self.rate(s.name),
                               "rates": self.rates(s.name), "seconds": list(self.seconds[s.name]),
                               "flops_per_s": self.flops_per_s(s.name)} for s in self.sides},
            "ratios": {f"{a}/{b}": self.ratio(a, b).as_dict() for a, b in pairs},
            "load_before": self.load_before, "load_after": self.load_after,
            "peak_flops": self.peak_flops, "peak_per_round": list(self.peak_per_round), "notes": list(self.notes),
        }


@dataclass
class Comparison:
    """``compare``'s result: the measurement and the a/b ratio."""

    measurement: Measurement
    ratio: RatioStats

    def as_dict(self) -> dict:
        return self.measurement.as_dict([(self.ratio.a, self.ratio.b)])


def _num(x: float) -> str:
    return f"{x:,.3g}" if x < 1000 else f"{x:,.0f}"


def _dur(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _load(d: dict) -> str:
    return "/".join(f"{x:.2f}" for x in d["loadavg"])


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)  # 2.0 / 0.4 is 5.000000000000001 in floating point


def machine_load() -> dict:
    import torch

    cpus = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"loadavg": [round(x, 2) for x in load], "cpus": cpus, "usable_cpus": usable,
            "torch_threads": torch.get_num_threads()}


def default_rounds() -> int:
    return int(os.environ.get("SPIRITLM_BENCH_ROUNDS", MIN_ROUNDS))


def default_clock() -> str:
    """``wall`` (default) or ``cpu``: this process's CPU time (all its threads). On a machine
    loaded by others, CPU time of a 1-thread run counts the work and not the waits for a core;
    with several threads it also counts OpenMP spin-waits, so use it with ``--threads 1``."""
    name = os.environ.get("SPIRITLM_BENCH_CLOCK", "wall")
    if name not in ("wall", "cpu"):
        raise ValueError(f"SPIRITLM_BENCH_CLOCK={name!r}: use 'wall' or 'cpu'")
    return name


def default_min_round_s() -> float:
    return float(os.environ.get("SPIRITLM_BENCH_MIN_ROUND_S", MIN_ROUND_S))


def matmul_peak(dtype=None, n: int = 1024, seconds: float = 1.0, device: str = "cpu",
                clock: Callable[[], float] | None = None,
                shape: tuple[int, int, int] | None = None) -> tuple[float, str]:
    """FLOP/s of ``torch.mm`` on (n, n) x (n, n) -- or (m, k) x (k, n) for ``shape=(m, k, n)``,
    the benchmark's representative matmul -- in ``dtype`` -> (FLOP/s, description).

    Timed for about ``seconds`` after one untimed call, with this process's torch threads: the
    ceiling dense compute reaches on this machine, under the load there is right now."""
    import torch

    if clock is None:  # the harness's clock (SPIRITLM_BENCH_CLOCK), so that peak and rounds compare
        clock = time.process_time if default_clock() == "cpu" else time.perf_counter
    dtype = dtype or torch.float32
    m, k, n = shape or (n, n, n)
    x = torch.randn(m, k, device=device).to(dtype)
    y = torch.randn(k, n, device=device).to(dtype)

    def sync():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    torch.mm(x, y)
    sync()
    calls, t0 = 0, clock()
    while True:
        torch.mm(x, y)
        calls += 1
        if calls % 4 == 0:
            sync()
            if clock() - t0 >= seconds:
                break
    dt = clock() - t0
    size = f"{n}x{n}" if shape is None else f"({m}x{k})@({k}x{n})"
    return 2.0 * m * k * n * calls / dt, f"torch.mm {size} {str(dtype).replace('torch.', '')}, {device}"


def run_sides(sides: Sequence[Side], rounds: int | None = None, min_round_s: float | None = None,
              peak: tuple[float, str] | Callable[[], tuple[float, str]] | None | bool = None,
              clock: Callable[[], float] | None = None,
              notes: Sequence[str] = (), agree: Callable[[int], int] | None = None) -> Measurement:
    """Warm up each side, calibrate its calls per round, then run the sides in turn for ``rounds``.

    ``peak``: a function -> (FLOP/s, description), e.g. ``lambda: matmul_peak(shape=...)``, timed
    after every round (the median is the peak: it sees the load the rounds saw); True for the
    fp32 1024^3 matmul; None for that only when a side declares ``flops``; False never; or a
    (FLOP/s, description) the caller measured.
    ``agree``: for sides that are collective across processes (each rank runs this function on
    its own clock), maps this rank's calls-per-round to the one all ranks use (e.g. the max over
    ranks), so that every rank makes the same calls in the same order.
    """
    agree = agree or (lambda n: n)
    clock_name = "fake" if clock is not None else default_clock()
    if clock is None:
        clock = time.process_time if clock_name == "cpu" else time.perf_counter
    if peak is True or (peak is None and any(s.flops is not None for s in sides)):
        peak = lambda: matmul_peak(clock=clock)  # noqa: E731
    peaks: list[tuple[float, str]] = []
    rounds = default_rounds() if rounds is None else int(rounds)
    min_round_s = default_min_round_s() if min_round_s is None else float(min_round_s)
    if rounds < 1:
        raise ValueError(f"rounds={rounds}: need at least 1 (5 or more to trust the spread)")
    names = [s.name for s in sides]
    if len(set(names)) != len(names) or not sides:
        raise ValueError(f"sides need distinct names, got {names}")
    load_before = machine_load()
    reps: dict[str, int] = {}
    for s in sides:  # warm-up: caches, allocator, lazy init; then one timed call to calibrate
        for _ in range(max(0, s.warmup)):
            s.fn()
        if s.reps is not None:
            reps[s.name] = max(1, int(s.reps))
            continue
        t0 = clock()
        s.fn()
        dt = clock() - t0
        reps[s.name] = agree(max(1, _ceil(min_round_s / dt)) if dt > 0 else 1)
    seconds: dict[str, list[float]] = {s.name: [] for s in sides}
    done: dict[str, list[int]] = {s.name: [] for s in sides}
    order: list[str] = []
    for _ in range(rounds):
        for s in sides:
            n = reps[s.name]
            t0 = clock()
            for _ in range(n):
                s.fn()
            dt = clock() - t0
            seconds[s.name].append(dt)
            done[s.name].append(n)
            order.append(s.name)
            if s.reps is None:  # a slow calibration call: lengthen the next rounds
                reps[s.name] = agree(_ceil(n * min_round_s / dt) if 0 < dt < min_round_s * (1 - 1e-9) else n)
        if callable(peak):
            peaks.append(peak())
    short = [s.name for s in sides if min(seconds[s.name]) < 0.5 * min_round_s]
    notes = [*notes, *([f"rounds of {', '.join(short)} shorter than {min_round_s / 2:g} s "
                        f"(fixed calls per round)"] if short else [])]
    load_after = machine_load()
    if clock_name == "cpu":
        notes = [*notes, "clock: this process's CPU time (SPIRITLM_BENCH_CLOCK=cpu), not wall time; rates are "
                         "work per CPU-second"]
    m = Measurement(list(sides), rounds, min_round_s, done, seconds, order, load_before, load_after,
                    notes=list(notes))
    if isinstance(peak, tuple):
        m.peak_flops, m.peak_desc = peak
    elif peaks:
        m.peak_per_round = [f for f, _ in peaks]
        m.peak_flops, m.peak_desc = statistics.median(m.peak_per_round), peaks[0][1]
    return m


def compare(a: Side, b: Side, title: str = "", rounds: int | None = None, min_round_s: float | None = None,
            peak: tuple[float, str] | Callable[[], tuple[float, str]] | None | bool = None, verbose: bool = True,
            clock: Callable[[], float] | None = None, notes: Sequence[str] = ()) -> Comparison:
    """A and B alternating (A B A B ...): -> :class:`Comparison` with rate(a)/rate(b) per round."""
    m = run_sides([a, b], rounds, min_round_s, peak, clock, notes)
    c = Comparison(m, m.ratio(a.name, b.name))
    if verbose:
        print(m.report([(a.name, b.name)], title), flush=True)
    return c


def from_timings(seconds: dict[str, list[float]], work: dict[str, float], unit: str = "calls",
                 flops: dict[str, float] | None = None, min_round_s: float = 0.0,
                 notes: Sequence[str] = (), load_before: dict | None = None) -> Measurement:
    """A :class:`Measurement` from rounds timed elsewhere (other processes, e.g. a distributed run
    where every rank must take part in each round): ``seconds[name]`` one wall time per round of
    one call doing ``work[name]`` units, the rounds interleaved by the caller in the dict's order."""
    flops = flops or {}
    sides = [Side(n, lambda: None, work=work[n], unit=unit, flops=flops.get(n)) for n in seconds]
    rounds = min(len(v) for v in seconds.values())
    order = [n for _ in range(rounds) for n in seconds]
    now = machine_load()
    return Measurement(sides, rounds, min_round_s, {n: [1] * rounds for n in seconds},
                       {n: list(v[:rounds]) for n, v in seconds.items()}, order, load_before or now, now,
                       notes=list(notes))
