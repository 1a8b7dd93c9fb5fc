"""The demo's step runner: caching, and independent steps side by side in their own processes."""

import json
import os
import time

import pytest

from spiritlm.pipeline import DONE, LOG, Job, Pipeline, available_cores


def report_process(x, step_dir):  # module level: a spawned process imports it by name
    import torch

    (step_dir / "made.txt").write_text(str(x))
    print(f"working on {x}")
    return {"x": x, "pid": os.getpid(), "threads": torch.get_num_threads(),
            "master_port": os.environ.get("MASTER_PORT")}


def fail(x, step_dir):
    raise ValueError(f"bad input {x}")


def test_side_by_side_runs_each_step_in_its_own_process_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "12345")  # as an earlier in-process DeepSpeed run leaves it
    pipe = Pipeline(tmp_path, workers=2)
    jobs = [Job(f"step{i}", {"i": i}, report_process, (i,)) for i in range(3)]
    out = pipe.run_jobs(jobs)
    assert [o["x"] for o in out] == [0, 1, 2]  # in the order given
    assert [r.name for r in pipe.results] == ["step0", "step1", "step2"]
    assert len({o["pid"] for o in out}) == 3 and os.getpid() not in {o["pid"] for o in out}
    assert all(o["threads"] == max(1, available_cores() // 2) for o in out)
    assert all(o["master_port"] is None for o in out)  # each picks its own port
    assert os.environ["MASTER_PORT"] == "12345"  # the parent's environment is restored
    for i in range(3):
        assert (tmp_path / f"step{i}" / "made.txt").read_text() == str(i)
        assert "working on" in (tmp_path / f"step{i}" / LOG).read_text()
        assert json.loads((tmp_path / f"step{i}" / DONE).read_text())["outputs"]["x"] == i
    table = pipe.report()
    assert "| step0 |" in table and "side by side" in table and "**wall time**" in table
    again = Pipeline(tmp_path, workers=2)
    assert again.run_jobs(jobs) == out and all(r.cached for r in again.results)


def test_one_worker_runs_in_this_process(tmp_path):
    pipe = Pipeline(tmp_path, workers=1)
    out = pipe.run_jobs([Job("a", 1, report_process, (1,)), Job("b", 2, report_process, (2,))])
    assert {o["pid"] for o in out} == {os.getpid()}
    pipe.run("nap", 0, lambda d: time.sleep(0.2) or {})
    assert pipe.results[-1].seconds >= 0.2  # the step's own time, not the time before it


def test_a_failed_side_step_names_itself_and_shows_its_log(tmp_path):
    pipe = Pipeline(tmp_path, workers=2)
    with pytest.raises(RuntimeError, match=r"(?s)\[bad\] failed.*ValueError: bad input 7"):
        pipe.run_jobs([Job("good", 1, report_process, (1,)), Job("bad", 2, fail, (7,))])
    assert (tmp_path / "good" / DONE).is_file() and not (tmp_path / "bad" / DONE).exists()
