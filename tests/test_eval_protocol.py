"""Dev/test draws: fresh recorded seeds, pooling draws x seeds, and a comparison whose claims come
only from the test draws (the dev draw reported, labelled dev)."""

import json

import numpy as np
import pytest

from spiritlm.eval.protocol import SEEDS_FILE, choose_test_seeds, pool_draws
from spiritlm.eval.report import paired_compare


def test_test_seeds_are_fresh_per_directory_recorded_and_reused(tmp_path):
    a = choose_test_seeds(tmp_path / "a", 3, dev_seed=0)
    b = choose_test_seeds(tmp_path / "b", 3, dev_seed=0)
    assert len(set(a)) == 3 and 0 not in a and a != b  # 1 in ~2^31 to collide
    assert json.loads((tmp_path / "a" / SEEDS_FILE).read_text())["seeds"] == a
    assert choose_test_seeds(tmp_path / "a", 3, dev_seed=0) == a  # a resumed run keeps its draws
    more = choose_test_seeds(tmp_path / "a", 4, dev_seed=0)
    assert more[:3] == a and len(set(more)) == 4
    assert choose_test_seeds(tmp_path / "c", 3, given=[5, 6], dev_seed=0) == [5, 6]
    with pytest.raises(ValueError, match="differ from the dev draw"):
        choose_test_seeds(tmp_path / "d", 2, given=[0, 6], dev_seed=0)
    with pytest.raises(ValueError, match="distinct"):
        choose_test_seeds(tmp_path / "d", 2, given=[6, 6], dev_seed=0)


def _items(scores, task="topic_storycloze", setting="T2S"):
    return [{"task": task, "setting": setting, "id": f"s{k:04d}", "voice": "v", "score": float(x)}
            for k, x in enumerate(scores)]


def test_pooling_keeps_same_named_items_of_two_draws_apart():
    rng = np.random.default_rng(0)
    draws_a = {d: [_items(rng.integers(0, 2, 40)) for _ in range(2)] for d in ("test1", "test2", "test3")}
    draws_b = {d: [_items(rng.integers(0, 2, 40)) for _ in range(2)] for d in ("test1", "test2", "test3")}
    pa, pb = pool_draws(draws_a), pool_draws(draws_b)
    assert len(pa) == 2 and len(pa[0]) == 120  # 2 training seeds, 3 draws x 40 items each
    cmp = paired_compare(pa, pb)["topic_storycloze/T2S"]
    assert cmp["n"] == 120 and cmp["runs"] == [2, 2]
    want = np.mean([np.mean([it["score"] for it in run]) for d in draws_a.values() for run in d])
    assert cmp["acc_a"] == pytest.approx(want)
    with pytest.raises(ValueError, match="same training seeds"):
        pool_draws({"test1": draws_a["test1"], "test2": draws_a["test2"][:1]})


def test_demo_comparison_reads_claims_from_the_test_draws_only(tmp_path):
    """The interleaved model is far ahead on the dev draw and at chance on the test draws: the
    check must come from the test draws (no claim holds) and the dev table must be labelled dev."""
    from spiritlm.demo.main import compare_step

    rng = np.random.default_rng(1)
    evals, draws = {"interleaved": {}, "no_interleaving": {}}, {}
    for label, seed, p_a in (("dev", 0, 0.9), ("test1", 11, 0.5), ("test2", 12, 0.5), ("test3", 13, 0.5)):
        draws[label] = {"seed": seed}
        for v, p in (("interleaved", p_a), ("no_interleaving", 0.5)):
            d = tmp_path / f"{v}_{label}"
            d.mkdir()
            items = [it for s in ("S", "T2S", "S2T") for it in _items(rng.random(200) < p, setting=s)]
            (d / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
            evals[v][label] = [{"dir": str(d)}]
    out = tmp_path / "compare"
    out.mkdir()
    res = compare_step(evals, draws, [0], out)
    assert "3 test draws (mini seeds 11, 12, 13" in res["protocol"]
    assert "Holm-adjusted over these 5 tests, 0 hold" in res["check"]
    assert "5 hold" in res["dev_check"]
    full = json.loads((out / "comparison.json").read_text())
    assert full["pooled"]["topic_storycloze/T2S"]["n"] == 600
    assert full["protocol"]["test_draws"] == {"test1": 11, "test2": 12, "test3": 13}
    md = (out / "comparison.md").read_text()
    assert md.index("## Test draws pooled") < md.index("## Dev draw (mini seed 0; settings were chosen on it")
    assert "dev check (topic_storycloze" in md and "| test2 | 12 | 200 |" in md
