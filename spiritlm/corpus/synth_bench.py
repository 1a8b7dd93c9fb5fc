"""``spiritlm bench synth``: espeak synthesis forked directly vs through the zygote, side by side.

A process that has trained models holds gigabytes of small Python objects; each ``fork()`` of it
makes the kernel mark that heap copy-on-write again, and the parent's next garbage collection
faults on it page by page. This benchmark builds such a process (``ballast_gib`` of small
objects), then synthesises the same requests both ways, alternating, and reports wavs/s and the
ratio, next to the same synthesis done before the ballast existed. The bytes must agree.
"""

from __future__ import annotations

import time

SENTENCES = ("The old farmer walks to the river, and the dog sleeps.",
             "Tom found a small red box in the kitchen.",
             "There are four birds in the attic.",
             "What a charming song it was!")


def _requests(n: int):
    from spiritlm.corpus.espeak import SynthRequest

    voices = ("en-us", "en-us+f2")
    return [(SynthRequest(SENTENCES[i % len(SENTENCES)], voices[i % 2], seed=i), None, None, True)
            for i in range(n)]


def _timed(es, items, direct: bool, processes: int) -> tuple[float, list]:
    from spiritlm.corpus.espeak import _request_job

    t0 = time.perf_counter()
    out = es.map_forked(_request_job, items, processes, direct=direct)
    return time.perf_counter() - t0, out


def bench_synth(n_wavs: int = 120, ballast_gib: float = 2.0, repeat: int | None = None, processes: int = 2,
                min_round_s: float | None = None, verbose: bool = False) -> dict:
    """Direct and zygote forks alternate on the benchmark harness for ``repeat`` rounds (default
    5) of one synthesis of all ``n_wavs`` each (>= ``min_round_s``: more calls when faster)."""
    from spiritlm.bench_harness import Side, run_sides
    from spiritlm.corpus.espeak import get_espeak
    from spiritlm.corpus.espeak_zygote import resident_bytes

    es = get_espeak()
    items = _requests(n_wavs)
    small_s, reference = _timed(es, items, True, processes)
    # ~2 objects of ~50 bytes each per entry: a heap of small objects like a trained-model process
    ballast = [[i, str(i)] for i in range(int(ballast_gib * 2**30 / 180))]
    rss = resident_bytes()
    same = [True]

    def side(direct: bool):
        def call():
            _, out = _timed(es, items, direct, processes)
            same[0] &= all(a[1].audio.tobytes() == b[1].audio.tobytes() for a, b in zip(reference, out))
        return call

    m = run_sides([Side("zygote", side(False), work=n_wavs, unit="wav", warmup=0),
                   Side("direct", side(True), work=n_wavs, unit="wav", warmup=0)],
                  rounds=repeat, min_round_s=min_round_s, peak=False)
    del ballast
    r = m.ratio("zygote", "direct")
    out = {"n_wavs": n_wavs, "rss_gib": rss / 2**30, "small_process_s": small_s,
           "direct_s": n_wavs / m.rate("direct"), "zygote_s": n_wavs / m.rate("zygote"), "speedup": r.median,
           "ratio": r.as_dict(), "same_bytes": same[0], "measurement": m.as_dict([("zygote", "direct")])}
    if verbose:
        print(m.report([("zygote", "direct")], f"espeak synthesis of {n_wavs} wavs, {processes} forks at a time, "
                                               f"from a process with {out['rss_gib']:.1f} GiB resident"), flush=True)
    return out


def print_report(r: dict) -> None:
    n = r["n_wavs"]
    print(f"  small process (before the ballast, one run) {r['small_process_s']:6.2f} s  "
          f"{n / r['small_process_s']:7.1f} wav/s")
    st = r["ratio"]
    print(f"  zygote vs direct: {st['median']:.1f}x faster (min {st['min']:.1f}, max {st['max']:.1f}); "
          f"same bytes on both paths: {r['same_bytes']}")
