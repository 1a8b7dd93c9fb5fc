"""Benchmark: units <-> token ids for a 10-minute utterance, string path vs direct path.

The string path is what the release does (units -> speech string -> tokenizer -> ids, and back
through the string). The direct path (``units_to_ids`` / ``ids_to_units``) skips strings. A plain
per-token Python implementation of the same rule is timed too, as the naive baseline; every path
is checked to give identical ids/units before anything is timed.
"""

from __future__ import annotations

import random
import tempfile

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


def bench_vocab(seconds: float = 600.0, rounds: int | None = None, seed: int = 0,
                min_round_s: float | None = None, verbose: bool = False) -> dict:
    """All five paths alternate on the benchmark harness (>= 5 rounds of >= 2 s by default), per
    variant; -> {variant: {"tokens", "tok_per_s": {path: median}, "ratios": {...}}}."""
    from spiritlm.bench_harness import Side, run_sides

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
        n = float(ids.size)
        fns = {
            "naive units->ids": lambda: _naive_units_to_ids(listed, L, hp, hs),
            "string units->ids": lambda: tok.encode(units_to_string(units, hp, hs, L), bos=False),
            "direct units->ids": lambda: units_to_ids(units, hp, hs, L),
            "string ids->units": lambda: string_to_units(tok.speech_ids_to_string(ids), L),
            "direct ids->units": lambda: ids_to_units(ids, L),
        }
        m = run_sides([Side(k, f, work=n, unit="tok") for k, f in fns.items()], rounds, min_round_s, peak=False)
        pairs = [("direct units->ids", "string units->ids"), ("direct units->ids", "naive units->ids"),
                 ("direct ids->units", "string ids->units")]
        if verbose:
            print(m.report(pairs, f"units <-> ids, {variant}: {ids.size} tokens for one {seconds / 60:g}-minute "
                                  "utterance (one process)"), flush=True)
        results[variant] = {"tokens": int(ids.size), "tok_per_s": {k: m.rate(k) for k in fns},
                            "seconds": {k: n / m.rate(k) for k in fns},
                            "ratios": {f"{a} / {b}": m.ratio(a, b).as_dict() for a, b in pairs},
                            "measurement": m.as_dict(pairs)}
    return results


def print_report(results: dict, seconds: float) -> None:
    """A short summary after the harness reports (medians over the rounds)."""
    print(f"units <-> ids for one {seconds / 60:g}-minute utterance: median ratios (min-max)")
    for variant, r in results.items():
        for name, st in r["ratios"].items():
            print(f"  {variant:<10} {name:<42} {st['median']:6.1f}x  ({st['min']:.1f}-{st['max']:.1f})")
