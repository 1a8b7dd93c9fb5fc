"""Dev and test draws of the mini benchmarks, and a comparison read only from the test draws.

Settings of the demo (steps, item counts, spans, precision) were chosen while watching the items
of one draw of the mini benchmarks (``mini.seed = 0``). Numbers from that *dev* draw are biased
toward whatever those choices happened to favour: on two fresh draws the demo's 5-of-5 claims fell
to 1 of 5 (issue 25). So a run also builds *test* draws that no choice has seen: fresh seeds per
output directory (recorded in ``test_draws.json`` there and in the report), disjoint from the dev
draw and from each other (no shared sentence or story). The claims are read from the test draws
pooled (every draw's items side by side, each item averaged over the training seeds); the dev
draw is still reported, labelled dev.

    seeds = choose_test_seeds(out_dir, n=3, given=[], dev_seed=0)
    pooled = pool_draws({"test1": runs1, "test2": runs2})  # runs: one item list per training seed
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Mapping, Sequence

SEEDS_FILE = "test_draws.json"


def choose_test_seeds(out_dir: str | Path, n: int, given: Sequence[int] = (), dev_seed: int = 0) -> list[int]:
    """The test draws' mini-benchmark seeds for the run in ``out_dir``.

    ``given``: used as they are (a rerun of a recorded draw). Otherwise the seeds recorded in
    ``out_dir/test_draws.json`` by an earlier run of this directory (so a resumed run keeps its
    draws and its cache), completed to ``n`` with fresh random seeds, and recorded."""
    seeds = [int(s) for s in given]
    path = Path(out_dir) / SEEDS_FILE
    if not seeds:
        recorded = json.loads(path.read_text())["seeds"] if path.is_file() else []
        seeds = [int(s) for s in recorded][:n]
        rng = secrets.SystemRandom()  # fresh per output directory: no one can have tuned on them
        while len(seeds) < n:
            s = rng.randrange(1, 2**31)
            if s != dev_seed and s not in seeds:
                seeds.append(s)
    if len(set(seeds)) != len(seeds) or dev_seed in seeds:
        raise ValueError(f"test_seeds {seeds} must be distinct and differ from the dev draw's seed "
                         f"{dev_seed}; e.g. --set 'test_seeds=[101, 102, 103]', or leave them empty "
                         "to draw fresh ones")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"seeds": seeds, "dev_seed": dev_seed}, indent=1) + "\n")
    return seeds


def pool_draws(runs_by_draw: Mapping[str, Sequence[Sequence[dict]]]) -> list[list[dict]]:
    """One item list per training seed, holding every draw's items, each item's key prefixed with
    its draw's label (two draws may both hold an item ``s0000``; they are different items).
    ``runs_by_draw[label][i]``: the items of training seed i on that draw."""
    n_runs = {len(r) for r in runs_by_draw.values()}
    if len(n_runs) != 1:
        raise ValueError(f"every draw needs the same training seeds; got run counts {sorted(n_runs)}")
    pooled: list[list[dict]] = [[] for _ in range(n_runs.pop())]
    for label, runs in runs_by_draw.items():
        for i, items in enumerate(runs):
            pooled[i].extend({**it, "key": [label, it.get("key", it.get("id"))], "draw": label} for it in items)
    return pooled


def draws_markdown(cmps: Mapping[str, Mapping], seeds: Mapping[str, int], name_a: str, name_b: str,
                   task: str = "topic_storycloze", settings: Sequence[str] = ("S", "T2S", "S2T")) -> str:
    """One row per draw: its seed, items, and both models' accuracy on ``task``'s speech settings
    (pooled over training seeds), to show the spread between draws next to the pooled table."""
    head = " | ".join(f"{s} {name_a} / {name_b}" for s in settings)
    lines = [f"| draw | mini seed | n | {head} |", "|---|---:|---:|" + "---|" * len(settings)]
    for label, cmp in cmps.items():
        cells, n = [], 0
        for s in settings:
            r = cmp.get(f"{task}/{s}")
            cells.append("--" if r is None else f"{100 * r['acc_a']:.1f} / {100 * r['acc_b']:.1f}")
            n = max(n, r["n"] if r else 0)
        lines.append(f"| {label} | {seeds.get(label, '')} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
