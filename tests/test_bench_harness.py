"""The benchmark harness: statistics on fake timed functions with known durations (a fake clock,
so exact), the spread warning, the A B A B order, calibration to the round length."""

from __future__ import annotations

import pytest

from spiritlm.bench_harness import Side, compare, from_timings, matmul_peak, run_sides


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _side(clock: FakeClock, name: str, durations, log: list, **kw) -> Side:
    """A side whose k-th call 'takes' durations(k) seconds on the fake clock."""
    calls = [0]

    def fn():
        clock.now += durations(calls[0])
        calls[0] += 1
        log.append(name)

    return Side(name, fn, **kw)


def test_known_durations_give_exact_rates_and_ratio(capsys):
    clock, log = FakeClock(), []
    a = _side(clock, "fast", lambda k: 0.1, log, work=10.0, unit="items")
    b = _side(clock, "slow", lambda k: 0.4, log, work=10.0, unit="items")
    r = compare(a, b, title="fake", rounds=5, min_round_s=2.0, clock=clock, peak=False)
    m = r.measurement
    assert m.reps == {"fast": [20] * 5, "slow": [5] * 5}  # calibrated to 2 s rounds
    assert m.seconds["fast"] == pytest.approx([2.0] * 5) and m.seconds["slow"] == pytest.approx([2.0] * 5)
    assert m.rate("fast") == pytest.approx(100.0) and m.rate("slow") == pytest.approx(25.0)
    assert r.ratio.median == pytest.approx(4.0) and r.ratio.lo == pytest.approx(4.0)
    assert r.ratio.spread == pytest.approx(0.0) and not r.ratio.noisy
    out = capsys.readouterr().out
    assert "ratio fast / slow: 4.00x" in out and "WARNING" not in out and "load avg" in out
    d = r.as_dict()
    assert d["ratios"]["fast/slow"]["median"] == pytest.approx(4.0) and not d["smoke"]
    assert len(d["load_before"]["loadavg"]) == 3 and d["load_after"]["cpus"] >= 1


def test_abab_order_after_warmup_and_calibration():
    clock, log = FakeClock(), []
    a = _side(clock, "A", lambda k: 1.0, log, warmup=2)
    b = _side(clock, "B", lambda k: 1.0, log, warmup=1)
    m = run_sides([a, b], rounds=6, min_round_s=2.0, clock=clock, peak=False)
    # warm-up + calibration of A, then of B, then rounds of 2 calls each, alternating
    assert log[:5] == ["A", "A", "A", "B", "B"]
    assert log[5:] == ["A", "A", "B", "B"] * 6
    assert m.order == ["A", "B"] * 6


def test_median_min_max_and_spread_warning(capsys):
    clock, log = FakeClock(), []
    # B's call takes 1 s, 1 s, 2 s, 1 s, 1.5 s in the five rounds (after its warm-up call; with
    # fixed calls per round there is no calibration call)
    slow = [1.0, 1.0, 1.0, 2.0, 1.0, 1.5]
    a = _side(clock, "A", lambda k: 0.5, log, reps=1)
    b = _side(clock, "B", lambda k: slow[k], log, reps=1)
    r = compare(a, b, rounds=5, min_round_s=0.1, clock=clock, peak=False)
    # ratio per round = rate(A)/rate(B) = t_B / t_A
    assert r.ratio.per_round == pytest.approx([2.0, 2.0, 4.0, 2.0, 3.0])
    assert (r.ratio.median, r.ratio.lo, r.ratio.hi) == pytest.approx((2.0, 2.0, 4.0))
    assert r.ratio.spread == pytest.approx(1.0) and r.ratio.noisy
    out = capsys.readouterr().out
    assert "WARNING: spread 100% > 20%" in out and "min 2.00, max 4.00" in out
    assert "smoke run" in out  # 0.1 s rounds are marked as too short to trust


def test_spread_at_the_threshold_does_not_warn():
    clock, log = FakeClock(), []
    durs = [1.0, 1.0, 1.1, 0.9, 1.0, 1.0]  # ratios 1.0, 1.1, 0.9, 1.0, 1.0: spread 20%
    a = _side(clock, "A", lambda k: 1.0, log, reps=1)
    b = _side(clock, "B", lambda k: durs[k], log, reps=1)
    r = compare(a, b, rounds=5, min_round_s=2.0, clock=clock, peak=False, verbose=False)
    assert r.ratio.spread == pytest.approx(0.2) and not r.ratio.noisy


def test_slow_calibration_call_is_corrected_in_later_rounds():
    clock, log = FakeClock(), []
    first = [1.0, 4.0]  # warm-up 1 s, calibration call 4 s (a hiccup), then 0.5 s per call
    a = _side(clock, "A", lambda k: first[k] if k < 2 else 0.5, log)
    b = _side(clock, "B", lambda k: 0.5, log)
    m = run_sides([a, b], rounds=5, min_round_s=2.0, clock=clock, peak=False)
    assert m.reps["A"] == [1, 4, 4, 4, 4] and m.reps["B"] == [4] * 5
    assert m.rates("A") == pytest.approx([2.0] * 5)  # the rate is per round, whatever the calls


def test_flops_reported_against_the_matmul_peak(capsys):
    clock, log = FakeClock(), []
    a = _side(clock, "A", lambda k: 0.5, log, flops=1e9)
    b = _side(clock, "B", lambda k: 1.0, log, flops=1e9)
    r = compare(a, b, rounds=5, min_round_s=2.0, clock=clock, peak=(4e9, "fake peak"))
    assert r.measurement.flops_per_s("A") == pytest.approx(2e9)
    assert "2.00 GFLOP/s = 50% of the matmul peak" in capsys.readouterr().out


def test_matmul_peak_is_measured():
    flops, desc = matmul_peak(n=128, seconds=0.05)
    assert flops > 1e6 and "128x128" in desc


def test_real_clock_round_trip():
    import time

    a = Side("sleep1", lambda: time.sleep(0.004), reps=5)
    b = Side("sleep2", lambda: time.sleep(0.008), reps=5)
    r = compare(a, b, rounds=5, min_round_s=0.02, verbose=False)
    assert 1.2 < r.ratio.median < 2.5  # sleeps overshoot a little; the order is what matters


def test_from_timings_and_bad_arguments():
    m = from_timings({"ours": [1.0, 1.0, 2.0], "hf": [2.0, 2.0, 2.0]}, {"ours": 10.0, "hf": 10.0}, unit="tok")
    assert m.ratio("ours", "hf").per_round == pytest.approx([2.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="distinct names"):
        run_sides([Side("x", lambda: None), Side("x", lambda: None)], rounds=1, min_round_s=0.0)
    with pytest.raises(ValueError, match="at least 1"):
        run_sides([Side("x", lambda: None)], rounds=0)


# ---- every `spiritlm bench` at toy size, through the CLI (rounds of a few ms: smoke runs) --------
def _cli(*argv: str) -> int:
    from spiritlm.cli import main

    return main(["bench", *argv, "--rounds", "2", "--min-round-s", "0.01"])


def test_bench_interleave_cli_reports_ratio(capsys):
    assert _cli("interleave") == 0
    out = capsys.readouterr().out
    assert out.count("ratio vectorised / reference") == 2 and "smoke run" in out and "load avg" in out


def test_bench_vocab_toy_size(capsys):
    from spiritlm.vocab_bench import bench_vocab, print_report

    r = bench_vocab(seconds=20.0, rounds=2, min_round_s=0.01, verbose=True)
    assert set(r) == {"base", "expressive"} and r["base"]["tokens"] > 0
    assert r["expressive"]["ratios"]["direct units->ids / naive units->ids"]["median"] > 0
    print_report(r, 20.0)
    assert "ratio direct units->ids / string units->ids" in capsys.readouterr().out


def test_bench_eval_toy_size(tmp_path, capsys):
    from spiritlm.eval.bench import bench_eval

    r = bench_eval(n_pairs=2, context_len=10, ending_len=4, item_len=4, story_len=20, tmp_dir=tmp_path,
                   tiny_hidden=32, tiny_layers=1, rounds=2, min_round_s=0.01, verbose=True)
    assert r["max_abs_logprob_diff"] < 1e-3 and r["ratios"]["batched/one_at_a_time"]["median"] > 0
    assert r["measurement"]["order"][:3] == ["batched", "one_at_a_time", "pack_all"]
    assert "ratio batched / pack_all" in capsys.readouterr().out


def test_bench_eval_against_lm_eval_harness_toy_size(tmp_path, capsys):
    """The harness side: lm-evaluation-harness's HFLM.loglikelihood on the same requests, same
    model; same token ids on every request, log-probs within 1e-4 (no timing assertion)."""
    pytest.importorskip("lm_eval")
    from spiritlm.eval.bench import bench_eval

    r = bench_eval(n_pairs=2, context_len=10, ending_len=4, item_len=4, story_len=20, tmp_dir=tmp_path,
                   tiny_hidden=32, tiny_layers=1, rounds=1, min_round_s=0.01, verbose=True, harness_batch_size=4)
    assert "harness_skipped" not in r
    assert r["harness_items_compared"] == r["requests"] == 12
    assert r["max_abs_logprob_diff_harness"] <= 1e-4
    assert set(r["max_abs_logprob_diff_harness_by_kind"]) == {"storycloze", "swuggy", "story"}
    assert r["ratios"]["ours/harness"]["median"] > 0 and r["pairs_per_s_harness"] > 0
    assert "batched/one_at_a_time" in r["ratios"] and "batched/pack_all" in r["ratios"]  # the old keys stay
    assert r["measurement"]["order"] == ["batched", "one_at_a_time", "pack_all", "harness"]
    assert "ratio batched / harness" in capsys.readouterr().out


def test_bench_eval_without_lm_eval_skips_the_harness_side(tmp_path, monkeypatch, capsys):
    import sys

    from spiritlm.eval.bench import bench_eval

    for name in ("lm_eval", "lm_eval.api.instance", "lm_eval.models.huggingface"):
        monkeypatch.setitem(sys.modules, name, None)  # import -> ImportError
    r = bench_eval(n_pairs=1, context_len=6, ending_len=4, item_len=4, story_len=8, tmp_dir=tmp_path,
                   tiny_hidden=32, tiny_layers=1, rounds=1, min_round_s=0.01, verbose=True)
    assert "not importable" in r["harness_skipped"] and "ours/harness" not in r["ratios"]
    assert "max_abs_logprob_diff_harness" not in r and r["max_abs_logprob_diff"] < 1e-3
    assert "harness side skipped" in capsys.readouterr().out


def test_bench_synth_toy_size(capsys):
    pytest.importorskip("espeakng_loader")
    from spiritlm.corpus.synth_bench import bench_synth, print_report

    r = bench_synth(n_wavs=2, ballast_gib=0.01, repeat=2, min_round_s=0.01, verbose=True)
    assert r["same_bytes"] and r["ratio"]["median"] > 0
    print_report(r)
    assert "ratio zygote / direct" in capsys.readouterr().out


def test_peak_function_is_timed_after_every_round(capsys):
    clock, log = FakeClock(), []
    peaks = iter([4e9, 2e9, 8e9, 4e9, 4e9])
    a = _side(clock, "A", lambda k: 0.5, log, flops=1e9, reps=1)
    b = _side(clock, "B", lambda k: 1.0, log, flops=1e9, reps=1)
    r = compare(a, b, rounds=5, min_round_s=0.1, clock=clock, peak=lambda: (next(peaks), "fake"))
    m = r.measurement
    assert m.peak_per_round == [4e9, 2e9, 8e9, 4e9, 4e9] and m.peak_flops == 4e9  # the median
    assert "4.0 GFLOP/s (fake, min 2.0, max 8.0 over 5 rounds)" in capsys.readouterr().out


def test_cpu_clock_counts_work_not_waits(monkeypatch):
    import time

    def busy(s):
        t = time.process_time()
        while time.process_time() - t < s:
            pass

    monkeypatch.setenv("SPIRITLM_BENCH_CLOCK", "cpu")
    a = Side("busy", lambda: busy(0.01), reps=3)
    b = Side("busy_then_sleep", lambda: (busy(0.01), time.sleep(0.03)), reps=3)
    m = run_sides([a, b], rounds=3, min_round_s=0.01, peak=False)
    assert 0.5 < m.ratio("busy", "busy_then_sleep").median < 1.5  # the sleep costs no CPU time
    assert any("CPU time" in n for n in m.notes)
    monkeypatch.setenv("SPIRITLM_BENCH_CLOCK", "gpu")
    with pytest.raises(ValueError, match="wall"):
        run_sides([a], rounds=1, min_round_s=0.0)
