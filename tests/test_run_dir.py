"""The run directory's contract (train/README.md, "The run directory"): one writer (a flock on
``<run_dir>/.lock``), a fresh start owns fresh logs, a resume truncates them to its checkpoint,
the export is complete or absent, a checkpoint that cannot be written (disk full) leaves the last
one loadable, and sizes that make no sense are refused before DeepSpeed sees them."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from spiritlm.components.config import grad_accum_steps, validate_config  # noqa: E402
from spiritlm.config import ConfigError  # noqa: E402
from spiritlm.train.tiny import tiny_config  # noqa: E402


def _steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


# ---- one writer per run directory --------------------------------------------------------------
# another process holding the lock the way a trainer does: flock, then its pid/host/start inside
HOLDER = """
import fcntl, json, os, socket, sys
f = open(sys.argv[1], "a+")
fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
f.seek(0); f.truncate()
f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start": "2026-01-02 03:04:05 +0000"}) + "\\n")
f.flush()
print("locked", flush=True)
sys.stdin.read()  # hold until the test closes stdin, then exit without emptying the file
"""


def test_second_trainer_refused_then_stale_lock_taken_over(tmp_path, caplog):
    from spiritlm.train.trainer import Trainer

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run / ".lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError) as e:
            Trainer(tiny_config(str(run), ["steps=2"]))
        msg = str(e.value)
        assert f"run_dir {run} is in use by another trainer (pid {holder.pid} on " in msg
        assert "started 2026-01-02 03:04:05 +0000" in msg and "wait for it to finish" in msg
        assert "--set run_dir=DIR" in msg and "\n" not in msg
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # refused before writing anything
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # the holder died without releasing: the kernel dropped its flock, its line is still in the file
    assert str(holder.pid) in (run / ".lock").read_text()
    caplog.set_level("WARNING")
    t = Trainer(tiny_config(str(run), ["steps=2"]))
    assert f"took over the stale lock of pid {holder.pid} on " in caplog.text
    assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    t.fit()
    assert _steps(run) == [1, 2]
    assert (run / ".lock").read_text() == ""  # released: emptied, not deleted


def test_two_trainers_in_one_process_and_release_on_error(tmp_path):
    from spiritlm.train.trainer import Trainer

    run = str(tmp_path / "run")
    a = Trainer(tiny_config(run, ["steps=2"]))
    with pytest.raises(ConfigError, match=rf"in use by another trainer \(pid {os.getpid()} on "):
        Trainer(tiny_config(run, ["steps=2"]))
    a.fit()  # the end of fit releases the lock
    # a trainer that fails while it sets up gives the lock back too
    with pytest.raises(ConfigError, match="config.json"):
        Trainer(tiny_config(run, ["steps=3", "model.checkpoint=/nonexistent"]))
    c = Trainer(tiny_config(run, ["steps=3"]))
    assert c.step == 2  # resumed a's last checkpoint
    c.fit()
    assert _steps(Path(run)) == [1, 2, 3]


# ---- logs: a fresh start owns fresh ones, a resume truncates them to its checkpoint -----------------
def test_fresh_start_removes_an_earlier_runs_logs(tmp_path, caplog):
    from spiritlm.train.trainer import Trainer

    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    # a run killed before its first checkpoint: steps 1..9 logged, a summary, plots, tb events
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in range(1, 10)))
    (run / "summary.json").write_text(json.dumps({"step": 9, "from_the_killed_run": True}))
    (run / "curves.png").write_bytes(b"old plot")
    stale_tb = run / "tensorboard" / "events.out.tfevents.1.killed"
    stale_tb.write_bytes(b"old events")
    caplog.set_level("WARNING")
    t = Trainer(tiny_config(str(run), ["steps=3", "log.tensorboard=true"]))
    t.fit()
    assert _steps(run) == [1, 2, 3]
    assert "removed the logs of an earlier run" in caplog.text
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 3 and "from_the_killed_run" not in summary
    assert not (run / "curves.png").exists()  # log.plots=false in the tiny config: nothing new drawn
    assert not stale_tb.exists() and list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_truncates_logs_to_its_checkpoint(tmp_path):
    from spiritlm.train.trainer import Trainer

    run = tmp_path / "run"
    Trainer(tiny_config(str(run), ["steps=4"])).fit(until_step=2)  # checkpoint step_2
    with open(run / "metrics.jsonl", "a") as f:  # killed after logging steps past the checkpoint
        f.writelines(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in range(3, 10))
    t = Trainer(tiny_config(str(run), ["steps=4"]))
    assert t.step == 2
    t.fit()
    assert _steps(run) == [1, 2, 3, 4]


# ---- the export: complete or absent -------------------------------------------------------------
def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_interrupted_export_never_leaves_a_partial_hf(tmp_path, monkeypatch):
    import shutil

    from spiritlm.components import checkpoint as ckpt
    from spiritlm.train.trainer import Trainer

    run = tmp_path / "run"
    t = Trainer(tiny_config(str(run), ["steps=2", "checkpoint.export_hf=true"]))
    t.fit()
    hf = run / "hf"
    done = _files(hf)
    assert "model.safetensors" in done and "config.json" in done

    # killed while writing the new export: hf/ is still the old, complete one
    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "add_legacy_config_fields", killed)
    with pytest.raises(KeyboardInterrupt):
        t.export(hf)
    assert _files(hf) == done
    monkeypatch.undo()

    # killed while the old export is being deleted (it dies after the first file): hf/ must not be
    # a folder with config.json and half its weights
    real_rmtree = shutil.rmtree

    def dies_in_rmtree(path, *a, **k):
        p = Path(path)
        if p.name in ("hf", "hf.old") and p.is_dir():
            (p / "model.safetensors").unlink()
            raise KeyboardInterrupt
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(shutil, "rmtree", dies_in_rmtree)
    with pytest.raises(KeyboardInterrupt):
        t.export(hf)
    monkeypatch.undo()
    assert _files(hf) == done  # the new export (same weights), whole

    # killed between moving the old export aside and moving the new one in: no hf/ at all
    real_replace = os.replace

    def dies_before_the_new_one(src, dst):
        if Path(src).name == "hf.tmp":
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dies_before_the_new_one)
    with pytest.raises(KeyboardInterrupt):
        t.export(hf)
    monkeypatch.undo()
    assert not hf.exists()
    t.export(hf)  # the next export puts a complete one back and clears what the crash left
    assert _files(hf) == done
    assert not (run / "hf.old").exists() and not (run / "hf.tmp").exists()


# ---- disk full while checkpointing --------------------------------------------------------------
TORCH_ENOSPC = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"  # torch.save on a full disk


@pytest.mark.parametrize("where", ["deepspeed", "torch.save", "latest"])
def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(tmp_path, monkeypatch, where):
    from spiritlm.components import checkpoint as ckpt
    from spiritlm.train.trainer import Trainer

    run = tmp_path / "run"
    cfg = ["steps=4", "checkpoint.every=1"]
    t = Trainer(tiny_config(str(run), cfg))
    t.fit(until_step=1)
    ckdir = run / "checkpoints"
    assert (ckdir / "latest").read_text() == "step_00000001"

    if where == "deepspeed":  # DeepSpeed writes part of its files, then the disk is full
        real = t.engine.save_checkpoint

        def full(save_dir, tag, **k):
            real(save_dir, tag=tag, **k)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(save_dir) / tag / "mp_rank_00_model_states.pt"))

        monkeypatch.setattr(t.engine, "save_checkpoint", full)
    elif where == "torch.save":  # what torch itself raises (a C++ RuntimeError) when the disk is full
        def full(obj, f, *a, **k):
            Path(f).write_bytes(b"PK\x03\x04 partial")
            raise RuntimeError(TORCH_ENOSPC)

        monkeypatch.setattr(torch, "save", full)
    else:  # the folder is renamed into place, then `latest` cannot be written
        def full(*a, **k):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(ckpt, "_write_latest", full)
    with pytest.raises(ckpt.CheckpointWriteError) as e:
        t.fit(until_step=2)
    monkeypatch.undo()
    msg = str(e.value)
    assert isinstance(e.value, ConfigError)  # `spiritlm train` prints it as one line
    assert "\n" not in msg
    head = f"checkpoint step_00000002 could not be written to {ckdir}: "
    if where == "torch.save":  # torch passes no errno on: the free space decides the words
        assert msg.startswith(head + "a write failed (") or msg.startswith(head + "No space left on device (")
        assert "MiB free there; torch said: [enforce fail at inline_container.cc:672]" in msg
    else:
        assert msg.startswith(head + "No space left on device; ")
    assert msg.endswith("the last complete checkpoint is step_00000001 (latest), a rerun resumes there; "
                        "free space there and rerun (a save needs room for one more checkpoint beside the "
                        "checkpoint.keep=2 kept)")
    # `latest` unchanged, and nothing of step 2 left to be taken for a checkpoint (or to fill the disk)
    assert (ckdir / "latest").read_text() == "step_00000001"
    assert sorted(p.name for p in ckdir.iterdir() if p.is_dir()) == ["step_00000001"]  # no .tmp-step_2
    assert ckpt.latest_tag(ckdir) == "step_00000001"
    # the rerun resumes there and finishes
    resumed = Trainer(tiny_config(str(run), cfg))
    assert resumed.step == 1
    resumed.fit()
    assert ckpt.latest_tag(ckdir) == "step_00000004" and _steps(run) == [1, 2, 3, 4]


# ---- sizes that make no sense, refused before DeepSpeed asserts ----------------------------------
@pytest.mark.parametrize("override, match", [
    ("global_batch_size=-2", "global_batch_size=-2: set global_batch_size to the rows per optimizer step"),
    ("global_batch_size=-4", "global_batch_size=-4: set global_batch_size"),  # a "multiple": gas -1 before
    ("global_batch_size=1", "global_batch_size=1 is not a multiple of .* set global_batch_size to 2, or"),
    ("micro_batch_size=0", "micro_batch_size=0: set micro_batch_size to the rows per device"),
    ("micro_batch_size=-1", "micro_batch_size=-1: set micro_batch_size"),
    ("steps=-1", "steps=-1: set steps to a positive number"),
    ("steps=0", "steps=0: set steps to a positive number"),
    ("data.seq_len=0", "data.seq_len=0: set data.seq_len to 2 or more"),
    ("optim.lr=-1", "optim.lr=-1.0: set a positive learning rate"),
    ("optim.lr=.nan", "optim.lr=nan: set a positive learning rate"),
    ("optim.eps=0", "optim.eps=0.0, .* set eps > 0"),
    ("optim.betas=[0.9, 1.5]", r"optim.betas=\[0.9, 1.5\]: set two numbers in \[0, 1\)"),
    ("log.every=0", "log.every=0: set log.every to 1 or more"),
    ("checkpoint.keep=-1", "checkpoint.keep=-1: set the number of newest checkpoints"),
    ("max_nonfinite=-1", "max_nonfinite=-1: set 0 or more"),
    ("data.synthetic_docs=0", "data.synthetic_docs=0: set it to 1 or more"),
    ("model.pad_multiple=0", "model.pad_multiple=0: set 1 or more"),
    ("model.tiny.num_hidden_layers=0", "model.tiny.num_hidden_layers=0: set each model size to 1 or more"),
    ("model.tiny.num_key_value_heads=3", "num_key_value_heads=3: hidden_size must be a multiple"),
])
def test_nonsense_sizes_are_one_line_config_errors(override, match):
    with pytest.raises(ConfigError, match=match) as e:
        validate_config(tiny_config("unused", [override]))
    assert "\n" not in str(e.value)


def test_global_batch_size_zero_means_one_micro_batch_per_device():
    cfg = tiny_config("unused", ["global_batch_size=0", "micro_batch_size=2"])
    validate_config(cfg, world_size=2)
    assert grad_accum_steps(cfg, 2) == 1


def test_trainer_refuses_a_negative_global_batch_before_deepspeed(tmp_path):
    from spiritlm.train.trainer import Trainer

    with pytest.raises(ConfigError, match="global_batch_size=-2: set global_batch_size"):
        Trainer(tiny_config(str(tmp_path / "run"), ["global_batch_size=-2"]))
    assert not (tmp_path / "run").exists()  # refused before the lock, before anything is written


def _two_rank_worker(rank: int, world: int, port: int, run: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from spiritlm.components.checkpoint import CheckpointWriteError
    from spiritlm.train.trainer import Trainer

    cfg = tiny_config(run, ["steps=3", "checkpoint.every=1", "deepspeed.zero_stage=2"])
    t = Trainer(cfg)  # only rank 0 locks: rank 1 shares its folder
    t.fit(until_step=1)
    if rank == 1:  # rank 1's disk is full (its ZeRO shard's torch.save fails, after DeepSpeed's own
        # collectives): both ranks must stop with the error, neither may wait for the other
        def full(*a, **k):
            raise RuntimeError(TORCH_ENOSPC)

        torch.save = full
    try:
        t.fit(until_step=2)
        got = "no error"
    except CheckpointWriteError as e:
        got = str(e)
    with open(os.path.join(run, f"rank{rank}.txt"), "w") as f:
        f.write(got)


@pytest.mark.slow  # one spawn of two processes (~15 s on a loaded 2-core machine)
def test_disk_full_on_one_rank_stops_every_rank(tmp_path):
    import torch.multiprocessing as mp

    from spiritlm.components.checkpoint import latest_tag
    from spiritlm.train.engine import free_port

    run = tmp_path / "run"
    mp.spawn(_two_rank_worker, args=(2, free_port(), str(run)), nprocs=2, join=True)
    r0, r1 = (run / "rank0.txt").read_text(), (run / "rank1.txt").read_text()
    assert r1.startswith(f"checkpoint step_00000002 could not be written to {run / 'checkpoints'}: "
                         "a write failed (") and "the last complete checkpoint is step_00000001" in r1
    assert "another rank failed to write its part; the last complete checkpoint is step_00000001" in r0
    assert latest_tag(run / "checkpoints") == "step_00000001"
    assert not list((run / "checkpoints").glob(".tmp-*"))
