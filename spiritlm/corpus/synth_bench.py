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


def bench_synth(n_wavs: int = 120, ballast_gib: float = 2.0, repeat: int = 2, processes: int = 2) -> dict:
    from spiritlm.corpus.espeak import get_espeak
    from spiritlm.corpus.espeak_zygote import resident_bytes

    es = get_espeak()
    items = _requests(n_wavs)
    small_s, reference = _timed(es, items, True, processes)
    # ~2 objects of ~50 bytes each per entry: a heap of small objects like a trained-model process
    ballast = [[i, str(i)] for i in range(int(ballast_gib * 2**30 / 180))]
    rss = resident_bytes()
    times: dict[str, list[float]] = {"direct": [], "zygote": []}
    same = True
    for _ in range(max(1, repeat)):
        for name, direct in (("direct", True), ("zygote", False)):
            s, out = _timed(es, items, direct, processes)
            times[name].append(s)
            same &= all(a[1].audio.tobytes() == b[1].audio.tobytes() for a, b in zip(reference, out))
    del ballast
    best = {k: min(v) for k, v in times.items()}
    return {"n_wavs": n_wavs, "rss_gib": rss / 2**30, "small_process_s": small_s, "direct_s": best["direct"],
            "zygote_s": best["zygote"], "speedup": best["direct"] / best["zygote"], "same_bytes": same}


def print_report(r: dict) -> None:
    n = r["n_wavs"]
    print(f"espeak synthesis of {n} wavs, 2 forks at a time, best of the runs:")
    print(f"  small process ({'before ballast':>18})  {r['small_process_s']:6.2f} s  {n / r['small_process_s']:7.1f} wav/s")
    print(f"  direct forks  ({r['rss_gib']:5.1f} GiB resident)  {r['direct_s']:6.2f} s  {n / r['direct_s']:7.1f} wav/s")
    print(f"  zygote forks  ({r['rss_gib']:5.1f} GiB resident)  {r['zygote_s']:6.2f} s  {n / r['zygote_s']:7.1f} wav/s")
    print(f"  zygote vs direct: {r['speedup']:.1f}x faster; same bytes on both paths: {r['same_bytes']}")
