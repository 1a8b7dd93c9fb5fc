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


@pytest.mark.skipif(available_cores() < 2, reason="one core: steps run in this process")
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


@pytest.mark.skipif(available_cores() < 2, reason="one core: steps run in this process")
def test_a_failed_side_step_names_itself_and_shows_its_log(tmp_path):
    pipe = Pipeline(tmp_path, workers=2)
    with pytest.raises(RuntimeError, match=r"(?s)\[bad\] failed.*ValueError: bad input 7"):
        pipe.run_jobs([Job("good", 1, report_process, (1,)), Job("bad", 2, fail, (7,))])
    assert (tmp_path / "good" / DONE).is_file() and not (tmp_path / "bad" / DONE).exists()


def sleep_with_pid(step_dir):
    (step_dir / "pid").write_text(str(os.getpid()))
    time.sleep(120)
    return {}


@pytest.mark.skipif(available_cores() < 2, reason="one core: steps run in this process")
def test_sigterm_to_the_parent_stops_the_side_processes(tmp_path):
    """A scheduler's or `timeout`'s SIGTERM must not leave side processes writing into step
    directories that a rerun resumes."""
    import signal
    import subprocess
    import sys

    script = ("import sys; from pathlib import Path; from spiritlm.pipeline import Job, Pipeline; "
              "from test_pipeline import sleep_with_pid; "
              f"Pipeline(Path({str(tmp_path)!r}), workers=2).run_jobs("
              "[Job('a', 1, sleep_with_pid), Job('b', 2, sleep_with_pid)])")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    parent = subprocess.Popen([sys.executable, "-c", script], env=env)
    pids = [tmp_path / s / "pid" for s in ("a", "b")]
    deadline = time.time() + 60
    while not all(p.is_file() and p.read_text() for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    children = [int(p.read_text()) for p in pids]
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) != 0

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.time() + 30  # a loaded machine may take a while to end and reap them
    while any(alive(pid) for pid in children) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in children)
    assert not (tmp_path / "a" / DONE).exists()


def test_demo_reads_training_progress_and_names_exports(tmp_path):
    from pathlib import Path

    from spiritlm.demo.main import last_logged_step
    from spiritlm.eval.suite import _model_name

    m = tmp_path / "metrics.jsonl"
    assert last_logged_step(m) == 0  # not written yet
    m.write_text('{"step": 5, "loss": 1.0}\n{"step": 10, "loss": 0.9}\n{"step": 1')  # last line half written
    assert last_logged_step(m) == 10
    assert _model_name(Path("runs/demo/train_interleaved/run/hf")) == "train_interleaved"
    assert _model_name(Path("runs/spiritlm_base_7b/hf")) == "spiritlm_base_7b"
    assert _model_name(Path("/ckpt/spirit-lm-base-7b")) == "spirit-lm-base-7b"
