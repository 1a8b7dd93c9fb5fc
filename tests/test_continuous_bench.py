"""`spiritlm bench continuous` at toy size: it runs both sides on the same batches and reports
the cache fill; the ratio itself is a benchmark result, not asserted beyond being measured.
Slow (~15 s CPU, more on a loaded machine): cached features giving the same losses as
recomputing them is covered fast in test_continuous_train.py."""

import pytest


@pytest.mark.slow

def test_bench_continuous_toy_size():
    from spiritlm.models.continuous.bench import bench_continuous

    r = bench_continuous(rounds=1, min_round_s=0.0, n_utts=4, seconds=1.0, rows=1)
    d = r["comparison"].as_dict()
    assert r["n_utts"] == 4 and r["utts_per_step"] >= 1 and r["fill_s"] > 0
    assert r["comparison"].ratio.median > 0 and d
