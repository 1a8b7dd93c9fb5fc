"""The train benchmark runs end to end (ours vs HF Trainer on the same rows)."""

from __future__ import annotations

import pytest

pytest.importorskip("deepspeed")
pytest.importorskip("accelerate")


@pytest.mark.slow
def test_bench_train_runs(capsys):
    from spiritlm.train.bench import bench_train

    out = bench_train(steps=2, warmup=1)
    assert out["ours_tokens_per_s"] > 0 and out["hf_tokens_per_s"] > 0 and out["ratio"] > 0
    assert "ratio" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_side_by_side_runs_and_losses_match(capsys):
    from spiritlm.train.bench import bench_side_by_side

    out = bench_side_by_side(steps=2)
    assert out["same_losses"] and out["speedup"] > 0 and len(out["threads"]) == 4
    assert "speedup" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_precision_runs(capsys):
    from spiritlm.train.bench import bench_precision

    out = bench_precision(steps=1, warmup=1)
    assert out["fp32_s_per_step"] > 0 and out["bf16_s_per_step"] > 0 and out["speedup"] > 0
    assert abs(out["fp32_last_loss"] - out["bf16_last_loss"]) < 0.1  # same data, close losses
    assert "speedup" in capsys.readouterr().out
