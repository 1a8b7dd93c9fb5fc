"""``spiritlm bench gpu`` at toy size on CPU, so the one-command GPU check cannot rot."""

from __future__ import annotations

import json
import numbers

import pytest

torch = pytest.importorskip("torch")


def _has_numbers(x) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, numbers.Number):
        return True
    if isinstance(x, dict):
        return any(_has_numbers(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return any(_has_numbers(v) for v in x)
    return False


def test_bench_gpu_toy_size_writes_json_and_markdown(tmp_path):
    from spiritlm.train.bench_gpu import GOALS, ORDER, bench_gpu

    report = bench_gpu(tmp_path, size="toy", device="cpu")
    on_disk = json.loads((tmp_path / "gpu_check.json").read_text())
    assert on_disk["measurements"].keys() == report["measurements"].keys() == set(ORDER)
    assert on_disk["size"] == "toy" and set(on_disk["goals"]) == set(GOALS)
    env = on_disk["environment"]
    for key in ("device", "device_name", "torch", "cuda", "flash_attn_installed", "liger_kernel_installed"):
        assert key in env
    assert env["device"] == "cpu" and isinstance(env["flash_attn_installed"], bool)
    for name, e in on_disk["measurements"].items():
        assert e["status"] in ("ok", "error") and e["goal"] == GOALS[name] and e["seconds"] >= 0
        assert e["goal_met"] is None  # goals are judged at full size on a GPU only
        if e["status"] == "ok":  # numbers, or an error string: never an empty entry
            figures = {k: v for k, v in e.items() if k not in ("seconds", "goal", "goal_met", "goal_met_at_toy_size")}
            assert _has_numbers(figures), name
        else:
            assert isinstance(e["error"], str) and e["error"], name
    bb = on_disk["measurements"]["backbones"]  # every family trains on the CPU too (fp32, sdpa)
    assert bb["status"] == "ok" and bb["goal_met_at_toy_size"] is True, bb
    assert [r["family"] for r in bb["families"]] == ["llama2", "llama3", "smollm2", "qwen2.5", "qwen3", "mistral", "olmo2"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| measurement |" in md and all(f"| {name} |" in md for name in ORDER)
    for line in md.splitlines():  # one row per measurement, five cells each: no stray "|" in a figure
        if line.startswith("| ") and not line.startswith("| measurement"):
            assert line.replace("\\|", "").count("|") == 6, line


def test_a_failing_measurement_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    import spiritlm.train.bench_gpu as bg

    def boom(dev, toy):
        raise RuntimeError("simulated failure")

    monkeypatch.setitem(bg.MEASURES, "loss", boom)
    report = bg.bench_gpu(tmp_path, size="toy", device="cpu", only=["isolation", "loss"])
    m = json.loads((tmp_path / "gpu_check.json").read_text())["measurements"]
    assert report["measurements"]["loss"]["status"] == m["loss"]["status"] == "error"
    assert "simulated failure" in m["loss"]["error"] and m["isolation"]["status"] == "ok"
    assert "ERROR: RuntimeError: simulated failure" in (tmp_path / "gpu_check.md").read_text()
    with pytest.raises(ValueError):
        bg.bench_gpu(tmp_path, size="toy", device="cpu", only=["nope"])


def test_the_gpu_check_is_a_bench_command():
    from spiritlm.commands.bench_cmd import BENCHES

    assert "gpu" in BENCHES
