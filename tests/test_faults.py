"""Interruptions and bad resumes (issue 19): `prepare shards`, `train` and `eval` killed (SIGKILL)
at seeded points; a rerun ends with the uninterrupted run's outputs, or the next stage refuses
the partial output with a message that says what to rerun. Also: a checkpoint folder whose
`latest` is gone, a run folder of another model size, an eval folder over an earlier result.

The default run kills `prepare shards` and `eval` at a few seeded points; `-m slow` kills
`train` too (each start of a DeepSpeed subprocess costs ~30 s here) and tries more points. The
exactness of a resumed training run is also tested in-process in tests/test_train_loop.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_data_fixtures import make_corpus, prepare_overrides, shard_bytes

from spiritlm.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    """This process's environment without the torch.distributed variables an in-process
    training run left (a child would try to listen on the same MASTER_PORT)."""
    drop = {"MASTER_PORT", "MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"}
    return {**{k: v for k, v in os.environ.items() if k not in drop},
            "PYTHONPATH": str(REPO / "tests")}


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "spiritlm", *args]


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env=_env())
    return r


# ---- checkpoints: latest, other model sizes -----------------------------------------------------
def test_latest_falls_back_to_the_newest_complete_step(tmp_path, caplog):
    from spiritlm.components.checkpoint import latest_tag

    ck = tmp_path / "checkpoints"
    assert latest_tag(ck) is None
    for step in (2, 4):
        (ck / f"step_{step:08d}").mkdir(parents=True)
        (ck / f"step_{step:08d}" / "trainer_state.json").write_text("{}")
    (ck / "step_00000006").mkdir()  # renamed but incomplete: never taken
    (ck / "latest").write_text("step_00000004")
    assert latest_tag(ck) == "step_00000004"
    (ck / "latest").write_text("step_00000008")  # deleted by hand, or a copy that lost it
    assert latest_tag(ck) == "step_00000004"
    assert "newest complete checkpoint" in caplog.text
    (ck / "latest").unlink()
    assert latest_tag(ck) == "step_00000004"
    for step in (2, 4):
        (ck / f"step_{step:08d}" / "trainer_state.json").unlink()
    (ck / "latest").write_text("step_00000004")
    with pytest.raises(ConfigError, match="no other checkpoint .* is complete: remove"):
        latest_tag(ck)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 4-step tiny training run (the uninterrupted reference of the kill test)."""
    pytest.importorskip("deepspeed")
    from spiritlm.train.tiny import tiny_config
    from spiritlm.train.trainer import Trainer

    d = tmp_path_factory.mktemp("train") / "ref"
    Trainer(tiny_config(str(d), TRAIN_SET)).fit()
    return d


TRAIN_SET = ["steps=4", "checkpoint.every=1", "checkpoint.export_hf=true"]


def test_resuming_a_run_of_another_model_size_is_one_clear_error(tiny_run, tmp_path):
    import shutil

    from spiritlm.train.tiny import tiny_config
    from spiritlm.train.trainer import Trainer

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with pytest.raises(ConfigError, match=r"holds a model of another shape \(model.tiny.hidden_size: "
                                          r"32 there, 64 here\).*new run_dir"):
        Trainer(tiny_config(str(run), [*TRAIN_SET, "steps=6", "model.tiny.hidden_size=64"]))


def _kill_when(cmd: list[str], when, timeout: float = 240) -> bool:
    """Start ``cmd`` in its own session and SIGKILL it (children too) as soon as ``when()`` holds;
    -> whether it was killed (False: it ended by itself first)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, env=_env())
    deadline = time.time() + timeout
    while p.poll() is None and time.time() < deadline:
        if when():
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return True
        time.sleep(0.02)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise AssertionError(f"{cmd} neither finished nor reached the kill point in {timeout} s")
    return False


# ---- prepare shards -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("faults"), n=12)


SHARD_SET = ("chunk_size=1", "shards.target_mb=0.002", "shards.row_group_mb=0.001")


def _shard_kills(corpus, tmp_path, seed: int, n_kills: int):
    """Kill `prepare shards` at seeded progress points (k chunks done, or k shards written),
    each run resuming the last; after every kill the trainer's sources must refuse the folder
    (naming the command to rerun) unless it is complete and equal to an uninterrupted run."""
    from spiritlm.data.prepare import PrepareConfig, prepare_shards
    from spiritlm.data.shards import ShardError
    from spiritlm.components.mixture import ParquetSource

    ref = tmp_path / "ref"
    prepare_shards(load_config(PrepareConfig, None, prepare_overrides(corpus, ref, *SHARD_SET)))
    want, want_index = shard_bytes(ref), json.loads((ref / "index.json").read_text())
    out = tmp_path / "out"
    recipe = tmp_path / "r.toml"
    recipe.write_text("")
    cmd = _cli(["prepare", "shards", str(recipe)]
               + [f"--set={o}" for o in prepare_overrides(corpus, out, *SHARD_SET)])
    n_chunks = 12 + 10  # utterances + text documents, one per chunk
    rng = np.random.default_rng(seed)
    points = []
    for _ in range(n_kills):
        if rng.random() < 0.6:
            k = int(rng.integers(1, n_chunks))
            points.append(("chunks", k, lambda k=k: len(list((out / "_work").glob("chunk-*.parquet"))) >= k))
        else:
            k = int(rng.integers(1, len(want)))
            points.append(("shards", k, lambda k=k: len(list(out.rglob("shard-*.parquet"))) >= k))
    outcomes = []
    for what, k, when in points:
        killed = _kill_when(cmd, when)
        try:
            ParquetSource(out / "aligned")
            ParquetSource(out / "text")
            state = "complete"
            assert shard_bytes(out) == want  # a folder accepted is the uninterrupted one
        except ShardError as e:
            state = "refused"
            assert "rerun `spiritlm prepare shards" in str(e), e
        except Exception as e:  # noqa: BLE001 -- nothing else may come out of a partial folder
            raise AssertionError(f"killed at {what}>={k}: {type(e).__name__}: {e}") from e
        outcomes.append((what, k, killed, state))
    r = _run(cmd)
    assert r.returncode == 0, r.stderr[-2000:]
    assert shard_bytes(out) == want and json.loads((out / "index.json").read_text()) == want_index
    assert not list(out.rglob(".*.tmp")) and not (out / "_work").exists()
    print("prepare shards kill points (phase, k, killed, next stage):", outcomes)
    return outcomes


def test_prepare_shards_killed_at_seeded_points(corpus, tmp_path):
    outcomes = _shard_kills(corpus, tmp_path, seed=19, n_kills=2)
    assert any(killed and state == "refused" for _, _, killed, state in outcomes)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_prepare_shards_killed_at_more_points(corpus, tmp_path, seed):
    _shard_kills(corpus, tmp_path, seed=seed, n_kills=4)


# ---- train ----------------------------------------------------------------------------------------
def _train_kills(tiny_run, tmp_path, seed: int, n_kills: int):
    """Kill `spiritlm train` when a seeded step's checkpoint is written (or at a seeded delay
    after start-up), rerun it, and compare the exported model with the uninterrupted run's;
    before the rerun, evaluation refuses the run's missing export."""
    from safetensors.torch import load_file

    from spiritlm.config import save_config
    from spiritlm.eval.model import ModelDirError, load_model
    from spiritlm.train.tiny import tiny_config

    run = tmp_path / "run"
    recipe = tmp_path / "train.yaml"
    save_config(tiny_config(str(run), TRAIN_SET), recipe)
    cmd = _cli(["train", str(recipe)])
    rng = np.random.default_rng(seed)
    latest = run / "checkpoints" / "latest"
    outcomes = []
    for _ in range(n_kills):
        if rng.random() < 0.7:
            step = int(rng.integers(1, 4))
            when = (lambda s=step: latest.is_file() and latest.read_text().strip() >= f"step_{s:08d}")
            what = f"checkpoint of step {step} written"
        else:
            delay = float(rng.uniform(0.5, 3.0))
            t0 = time.time()
            when = (lambda d=delay, t0=t0: (run / "metrics.jsonl").is_file() and time.time() - t0 > d)
            what = f"{delay:.1f} s after start"
        killed = _kill_when(cmd, when)
        if killed and not (run / "hf" / "config.json").is_file():
            with pytest.raises(ModelDirError, match="config.json not found.*exported by `spiritlm train`"):
                load_model(run / "hf")
        outcomes.append((what, killed))
    r = _run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(run / "hf" / "model.safetensors"), load_file(tiny_run / "hf" / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    print("train kill points:", outcomes)
    return outcomes


@pytest.mark.slow  # two DeepSpeed start-ups in subprocesses: ~70 s on a loaded 2-core machine
def test_train_killed_at_a_seeded_point(tiny_run, tmp_path):
    _train_kills(tiny_run, tmp_path, seed=19, n_kills=1)


@pytest.mark.slow
def test_train_killed_at_more_points(tiny_run, tmp_path):
    _train_kills(tiny_run, tmp_path, seed=7, n_kills=3)


# ---- eval ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    """A tiny model, the suite test's fixture benchmarks, and one uninterrupted evaluation."""
    from test_eval_report import _fixture_data, _recipe

    from spiritlm.cli import main
    from spiritlm.eval.testing import make_tiny_model_dir

    root = tmp_path_factory.mktemp("eval")
    model = make_tiny_model_dir(root / "model")
    _fixture_data(root / "data")
    recipe = _recipe(root, "")
    ref = root / "ref"
    assert main(["eval", str(recipe), "--model", str(model), "--out", str(ref), "--name", "m"]) == 0
    return {"root": root, "model": model, "recipe": recipe, "ref": ref}


def _results(d: Path) -> dict:
    r = json.loads((d / "results.json").read_text())
    return {"results": r["results"], "status": r["status"], "model": r["model"]}


def _eval_kills(s, tmp_path, seed: int, n_kills: int):
    """`spiritlm eval --out DIR` over an earlier result, killed at seeded points after it
    started: the folder never shows the earlier results as this run's (they move to previous/,
    an IN_PROGRESS marker says to rerun), and the rerun writes the uninterrupted results."""
    import shutil

    from spiritlm.eval.suite import IN_PROGRESS

    out = tmp_path / "out"
    shutil.copytree(s["ref"], out)  # an earlier, complete result in the folder
    cmd = _cli(["eval", str(s["recipe"]), "--model", str(s["model"]), "--out", str(out), "--name", "m"])
    rng = np.random.default_rng(seed)
    outcomes = []
    for _ in range(n_kills):
        delay = float(rng.uniform(0.0, 1.5))  # after the run marked the folder
        started: list[float] = []

        def when(delay=delay, started=started):
            if not (out / IN_PROGRESS).is_file():
                return False
            if not started:
                started.append(time.time())
            return time.time() - started[0] > delay

        killed = _kill_when(cmd, when)
        if killed and (out / IN_PROGRESS).is_file():
            assert not (out / "results.json").exists() or not (out / "report.md").exists() or \
                _results(out) == _results(s["ref"])  # killed while writing the final files
            assert "rerun `spiritlm eval`" in (out / IN_PROGRESS).read_text()
            assert _results(out / "previous") == _results(s["ref"])  # nothing lost
        outcomes.append((round(delay, 2), killed))
    r = _run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (out / IN_PROGRESS).exists() and _results(out) == _results(s["ref"])
    print("eval kill points (delay after start, killed):", outcomes)
    return outcomes


def test_eval_killed_over_an_earlier_result(eval_setup, tmp_path):
    _eval_kills(eval_setup, tmp_path, seed=19, n_kills=1)


@pytest.mark.slow
def test_eval_killed_at_more_points(eval_setup, tmp_path):
    _eval_kills(eval_setup, tmp_path, seed=5, n_kills=4)


def test_a_checkpoint_without_its_tokenizer_says_so(tiny_run):
    """An export of `spiritlm train` made without a tokenizer: its rows include the speech
    vocabulary, so continuing from it needs the tokenizer, not a vocabulary-size guess."""
    from spiritlm.components.config import ModelConfig
    from spiritlm.models.unit_lm.model import plan_model

    assert not (tiny_run / "hf" / "tokenizer.model").exists()
    with pytest.raises(ConfigError, match=r"has no tokenizer.model and model.tokenizer is not set.*"
                                          r"Set model.tokenizer=DIR"):
        plan_model(ModelConfig(checkpoint=str(tiny_run / "hf")))
