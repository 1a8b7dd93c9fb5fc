"""`spiritlm bench stream` at toy size: runs end to end on the harness, each streaming call decodes
exactly one chunk, the streaming state is flat in the audio's length while the non-streaming
model's cache and peak memory grow (memory is deterministic; times are reported, never asserted)."""

import numpy as np
import torch

from spiritlm.models.streaming.bench import bench_stream, format_table, peak_alloc_bytes


def test_peak_alloc_bytes_sees_transient_tensors():
    def f():
        a = torch.ones(256, 256)
        b = a @ a  # noqa: F841  (two 256 KiB tensors alive at once)
        return None

    assert peak_alloc_bytes(f) >= 2 * 256 * 256 * 4


def test_bench_stream_toy_flat_stream_growing_full(capsys):
    r = bench_stream("toy", factors=(1, 3), train_s=2.0, chunk_s=0.64, tokens=2, rounds=1, min_round_s=0.01)
    a, b = r["rows"]
    assert a["stream_state_bytes"] == b["stream_state_bytes"] > 0  # bounded caches: the same bytes
    assert b["full_state_bytes"] > 2.5 * a["full_state_bytes"]  # the whole sequence's cache grows ~3x
    assert b["full_peak_bytes"] > 2 * a["full_peak_bytes"]
    assert b["stream_peak_bytes"] <= 1.2 * a["stream_peak_bytes"]
    assert all(np.isfinite(x["stream_ms"]) and np.isfinite(x["full_ms"]) for x in r["rows"])
    assert set(r["measurement"]["ratios"]) >= {"stream 1x/full 1x", "stream 3x/full 3x", "stream 1x/stream 3x"}
    out = capsys.readouterr().out
    assert "ratio stream 3x / full 3x" in out and "| 3x (6 s) |" in out and "growth 3x audio" in out
    assert format_table(r).count("\n") == 4


def test_bench_stream_is_registered():
    from spiritlm.commands.bench_cmd import BENCHES

    assert "stream" in BENCHES
