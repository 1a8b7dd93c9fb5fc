"""``spiritlm bench mfu`` at toy size on CPU, so the GPU benchmark cannot rot."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_bench_mfu_toy_size_runs_both_checkpointing_settings(capsys):
    from spiritlm.train.bench_mfu import bench_mfu, fastest_safe_backend

    assert fastest_safe_backend("cpu") == "sdpa"  # flex has no backward on CPU
    assert fastest_safe_backend("cuda") in ("flash_attention_2", "flex_attention")  # never plain sdpa
    results = bench_mfu(size="toy", rounds=2, min_round_s=0.05, peak_flops=1e12)  # no known CPU peak
    assert [r["activation_checkpointing"] for r in results] == [False, True]
    for r in results:
        assert r["tokens_per_s"] > 0 and r["isolation"] == "position_ids" and r["seq_len"] == 128
        assert r["flops_per_token"] > 6 * r["params"] * 0.5  # 6N (N without the input embedding) + attention
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * r["flops_per_token"] / 1e12)
        assert len(r["tokens_per_s_rounds"]) == 2  # side by side: one rate per harness round
    out = capsys.readouterr().out
    assert "ratio checkpointing off / checkpointing on" in out and "MFU" in out


def test_bench_mfu_is_a_registered_benchmark():
    from spiritlm.commands.bench_cmd import BENCHES

    assert "mfu" in BENCHES
