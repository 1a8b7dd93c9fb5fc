"""Benchmark: units <-> token ids for a 10-minute utterance, string path vs direct path.

The string path is what the release does (units -> speech string -> tokenizer -> ids, and back
through the string). The direct path (``units_to_ids`` / ``ids_to_units``) skips strings. A plain
per-token Python implementation of the same rule is timed too, as the naive baseline; every path
is checked to give identical ids/units before anything is timed.
"""

from __future__ import annotations

import random
import tempfile
import time

import numpy as np

from spiritlm.text_tokenizer import SpiritTokenizer, train_sentencepiece
from spiritlm.vocab import VocabLayout, ids_to_units, string_to_units, units_to_ids, units_to_string


def _naive_units_to_ids(units: dict, layout: VocabLayout, has_pitch: bool, has_style: bool) -> list[int]:
    """Token-by-token reference: dedup with a loop, list of (time, id), sorted."""
    toks = []
    for name in ("style", "pitch", "hubert"):
        if (name == "pitch" and not has_pitch) or (name == "style" and not has_style):
            continue
        spec = layout.streams[name]
        prev = None
        for i, u in enumerate(units[name]):
            if not spec.dedup or u != prev:
                toks.append((i / spec.rate, spec.offset + int(u)))
            prev = u
    return [t for _, t in sorted(toks, key=lambda x: x[0])]


def _synthetic_units(seconds: float, seed: int) -> dict:
    """Unit streams with realistic run lengths (HuBERT runs ~1.4 frames, pitch ~2, style ~5 s)."""
    rng = np.random.default_rng(seed)

    def runs(n, vocab, mean_run):
        lens = rng.geometric(1.0 / mean_run, size=n)
        vals = rng.integers(0, vocab, size=n)
        return np.repeat(vals, lens)[:n]

    n_hu = int(seconds * 25)
    return {"hubert": runs(n_hu, 501, 1.4), "pitch": runs(n_hu // 2, 64, 2.0),
            "style": runs(int(seconds), 100, 5.0)}


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_vocab(seconds: float = 600.0, repeat: int = 5, seed: int = 0) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        rng = random.Random(seed)
        words = "the cat sat on a mat and ran far away".split()
        sp = train_sentencepiece([" ".join(rng.choices(words, k=8)) for _ in range(500)], tmp, 280)
        tok = SpiritTokenizer(sp)
    L = tok.layout
    units = _synthetic_units(seconds, seed)
    results = {}
    for variant, hp, hs in (("base", False, False), ("expressive", True, True)):
        ids = units_to_ids(units, hp, hs, L)
        string = units_to_string(units, hp, hs, L)
        assert tok.encode(string, bos=False) == ids.tolist()
        assert _naive_units_to_ids({k: v.tolist() for k, v in units.items()}, L, hp, hs) == ids.tolist()
        via_string = string_to_units(string, L)
        direct = ids_to_units(ids, L)
        assert all(via_string[k] == " ".join(map(str, direct[k].tolist())) for k in direct)
        listed = {k: v.tolist() for k, v in units.items()}
        t = {
            "naive units->ids": _best(lambda: _naive_units_to_ids(listed, L, hp, hs), repeat),
            "string units->ids": _best(lambda: tok.encode(units_to_string(units, hp, hs, L), bos=False), repeat),
            "direct units->ids": _best(lambda: units_to_ids(units, hp, hs, L), repeat),
            "string ids->units": _best(lambda: string_to_units(tok.speech_ids_to_string(ids), L), repeat),
            "direct ids->units": _best(lambda: ids_to_units(ids, L), repeat),
        }
        results[variant] = {"tokens": int(ids.size), "seconds": t}
    return results


def print_report(results: dict, seconds: float) -> None:
    print(f"units <-> ids for one {seconds / 60:g}-minute utterance (best of N, one process)")
    for variant, r in results.items():
        t = r["seconds"]
        print(f"\n{variant}: {r['tokens']} tokens")
        for name, sec in t.items():
            print(f"  {name:<20} {sec * 1e3:9.2f} ms   {r['tokens'] / sec / 1e6:7.2f} M tok/s")
        print(f"  direct vs string, units->ids: {t['string units->ids'] / t['direct units->ids']:6.1f}x")
        print(f"  direct vs naive,  units->ids: {t['naive units->ids'] / t['direct units->ids']:6.1f}x")
        print(f"  direct vs string, ids->units: {t['string ids->units'] / t['direct ids->units']:6.1f}x")
