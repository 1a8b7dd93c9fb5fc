"""The train benchmarks run end to end on the harness (ours vs HF Trainer on the same rows, both
real loops paused per step; side by side vs in a row; fp32 vs bf16), at toy size."""

from __future__ import annotations

import pytest

pytest.importorskip("deepspeed")
pytest.importorskip("accelerate")


def test_paused_loop_runs_exactly_one_step_per_call():
    from spiritlm.train.bench_loops import PausedLoop, StopLoop

    done = []
    loop: list[PausedLoop] = []

    def run():
        while True:
            done.append(len(done))
            if loop[0].pause():
                raise StopLoop

    loop.append(PausedLoop(run))
    for k in range(3):
        loop[0].step()
        assert len(done) == k + 1
    loop[0].close()
    assert len(done) == 3 and not loop[0]._thread.is_alive() and loop[0].error is None


def test_paused_loop_reraises_the_loop_error():
    from spiritlm.train.bench_loops import PausedLoop

    def run():
        raise ValueError("boom")

    loop = PausedLoop(run)
    with pytest.raises(RuntimeError, match="boom"):
        loop.step()
    loop.close()


@pytest.mark.slow
def test_bench_train_runs(capsys):
    from spiritlm.train.bench import bench_train

    out = bench_train(size="tiny", rounds=2, min_round_s=0.01, warmup=1, steps=1)
    assert out["ours_tokens_per_s"] > 0 and out["hf_tokens_per_s"] > 0 and out["ratio"] > 0
    assert out["measurement"]["order"] == ["ours", "hf_trainer"] * 2
    text = capsys.readouterr().out
    assert "ratio ours / hf_trainer" in text and "matmul peak" in text


@pytest.mark.slow
def test_bench_train_bf16_gives_our_settings_to_our_side_only(capsys):
    """--precision bf16 reaches both sides; --set model.attn_implementation=sdpa_varlen only ours
    (HF Trainer keeps the stock SDPA an HF user has)."""
    from spiritlm.train.bench import bench_train

    out = bench_train(size="tiny", rounds=1, min_round_s=0.01, warmup=1, steps=1, precision="bf16",
                      overrides=["model.attn_implementation=sdpa_varlen"])
    assert out["precision"] == "bf16" and out["ours_attention"] == "sdpa_varlen" and out["hf_attention"] == "sdpa"
    assert "bf16" in capsys.readouterr().out
    with pytest.raises(ValueError, match="precision='fp16'"):
        bench_train(size="tiny", precision="fp16")


@pytest.mark.slow
def test_bench_side_by_side_runs_and_losses_match(capsys):
    from spiritlm.train.bench import bench_side_by_side

    out = bench_side_by_side(steps=2, rounds=1, min_round_s=0.01)
    assert out["same_losses"] and out["speedup"] > 0 and len(out["threads"]) == 4
    assert "ratio side_by_side / in_a_row" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_precision_runs(capsys):
    from spiritlm.train.bench import bench_precision

    out = bench_precision(steps=1, warmup=1, rounds=2, min_round_s=0.01)
    assert out["fp32_s_per_step"] > 0 and out["bf16_s_per_step"] > 0 and out["speedup"] > 0
    assert out["fp32_steps"] == out["bf16_steps"] == 3  # 1 warm-up step + 2 rounds of 1 (fixed: no calibration)
    assert abs(out["fp32_last_loss"] - out["bf16_last_loss"]) < 0.1  # same data, close losses
    assert "ratio bf16 / fp32" in capsys.readouterr().out


def test_a_side_that_fails_in_its_process_raises_with_its_traceback():
    """A side whose process cannot build its trainer: the bench raises, naming the side and
    carrying the child's error (here the recipe mistake), instead of waiting forever."""
    from spiritlm.train.bench_loops import ProcessLoop

    with pytest.raises(RuntimeError, match="the ours side failed:(.|\n)*attn_implementation='no_such_kernel'"):
        ProcessLoop("ours", ["model.attn_implementation=no_such_kernel"], "fp32", 1)
