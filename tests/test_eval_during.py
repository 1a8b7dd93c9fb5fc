"""Evaluation while training: eval rows at every eval_every steps (held-out loss per source and
token type, a two-way speech task and a cross-modal one through the suite), in metrics.jsonl and
the curves; training losses identical with and without it (no RNG or data order touched)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from spiritlm.config import ConfigError  # noqa: E402
from spiritlm.eval.during_training import DuringTrainingEval  # noqa: E402
from spiritlm.train.tiny import tiny_config  # noqa: E402


def _light_suite(root: Path) -> Path:
    """mini-sWUGGY-shaped lexical pairs (speech) + cross-modal story items (T->S), tones as audio."""
    from spiritlm.eval.testing import write_tone

    lex = root / "zs" / "lexical" / "dev"
    lex.mkdir(parents=True)
    rows = []
    for i, (w, nw) in enumerate([("cat", "cag"), ("dog", "dop"), ("bird", "berd")]):
        for stem, word, ok, f in ((f"w{i}", w, 1, 300 + 40 * i), (f"n{i}", nw, 0, 500 + 40 * i)):
            write_tone(lex / f"{stem}.wav", 0.3, f)
            rows.append([i, stem, "V1", 10, word, "x", 3, ok])
    with open(lex / "gold.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "filename", "voice", "frequency", "word", "phones", "length", "correct"], *rows])
    cross = root / "tsc" / "cross"
    cross.mkdir(parents=True)
    for k in range(2):
        for j, (part, text) in enumerate((("mutual", "the cat sat on the mat"), ("correct", "and slept"),
                                          ("incorrect", "the beach was wet"))):
            write_tone(cross / f"{k}_{part}.wav", 0.2 + 0.1 * j, 250 + 60 * k + 30 * j)
            (cross / f"{k}_{part}.txt").write_text(text)
    recipe = root / "light.toml"
    recipe.write_text(f'''data_root = "{root}"
speech_encoder = "spiritlm.eval.testing:FakeSpeechEncoder"
[zerospeech]
root = "zs"
modalities = ["S"]
syntactic = false
lexical_metric = "all"
submission = false
[topic_storycloze]
cross = "tsc/cross"
settings = ["T2S"]
[storycloze]
settings = []
''')
    return recipe


def _tokenizer(d: Path) -> Path:
    from spiritlm.eval.testing import TINY_TEXT
    from spiritlm.text_tokenizer import train_sentencepiece

    train_sentencepiece(TINY_TEXT, d, vocab_size=300)  # = model.tiny.base_vocab_size below
    return d


def test_eval_rows_at_eval_every_and_identical_training(tmp_path):
    from spiritlm.components.metrics import read_metrics
    from spiritlm.train.trainer import Trainer

    tok = _tokenizer(tmp_path / "tok")
    suite = _light_suite(tmp_path / "bench")
    common = ["steps=4", f"model.tokenizer={tok}", "model.tiny.base_vocab_size=300"]
    with_eval = Trainer(tiny_config(str(tmp_path / "a"), common + [
        "eval_every=2", f"eval.suite={suite}", "eval.heldout_docs=8", "log.plots=true"]),
        evaluator=DuringTrainingEval)
    with_eval.fit()
    plain = Trainer(tiny_config(str(tmp_path / "b"), common))
    plain.fit()
    assert [r["loss"] for r in with_eval.history] == [r["loss"] for r in plain.history]
    assert [r["grad_norm"] for r in with_eval.history] == [r["grad_norm"] for r in plain.history]

    rows = read_metrics(tmp_path / "a")
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        for name in ("heldout-text", "heldout-speech", "heldout-interleaved"):
            assert r[f"eval/loss/{name}"] > 0
        assert r["eval/loss/speech_tokens"] > 0 and r["eval/loss/text_tokens"] > 0
        assert 0 <= r["eval/swuggy/S"] <= 1 and 0 <= r["eval/topic_storycloze/T2S"] <= 1
    # the model learns: held-out loss goes down between the two evaluations
    assert evals[1]["eval/loss"] < evals[0]["eval/loss"]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert (tmp_path / "a" / "eval" / "step_0000002" / "report.md").is_file()
    assert (tmp_path / "a" / "curves.png").is_file()
    # same held-out rows every time: an evaluation of the final model repeats its numbers, and
    # leaves every RNG where it was
    import random

    import numpy as np

    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    again = with_eval.evaluator(4)
    assert torch.equal(torch.get_rng_state(), states[0]) and (np.random.get_state()[1] == states[1]).all()
    assert random.getstate() == states[2]
    assert again["eval/loss"] == evals[1]["eval/loss"] and again["eval/swuggy/S"] == evals[1]["eval/swuggy/S"]


def test_preserved_rng_restores_every_generator():
    import random

    import numpy as np

    from spiritlm.eval.during_training import preserved_rng

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expect = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    with preserved_rng():
        torch.rand(5), np.random.rand(5), random.random()  # an evaluation that draws
    got = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(got[0], expect[0]) and (got[1] == expect[1]).all() and got[2] == expect[2]


def test_eval_suite_needs_the_tokenizer(tmp_path):
    from spiritlm.train.trainer import Trainer

    suite = _light_suite(tmp_path / "bench")
    with pytest.raises(ConfigError, match="model.tokenizer"):
        Trainer(tiny_config(str(tmp_path / "a"), ["steps=2", "eval_every=1", f"eval.suite={suite}"]),
                evaluator=DuringTrainingEval)
    with pytest.raises(ConfigError, match="needs an evaluator"):  # a component passed in, never imported
        Trainer(tiny_config(str(tmp_path / "c"), ["steps=2", "eval_every=1"]))
    from spiritlm.components.config import validate_config

    with pytest.raises(ConfigError, match="eval_every"):
        validate_config(tiny_config(str(tmp_path / "b"), ["eval_every=-1"]))


def _two_rank_worker(rank: int, world: int, port: int, out_dir: str, tok: str, suite: str) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from spiritlm.train.trainer import Trainer

    res = {}
    for stage in (2, 3):  # ZeRO-2: rank 0 runs the suite alone; ZeRO-3: every rank, collectively
        t = Trainer(tiny_config(os.path.join(out_dir, f"z{stage}"), [
            "steps=2", f"deepspeed.zero_stage={stage}", "micro_batch_size=2", "global_batch_size=4",
            f"model.tokenizer={tok}", "model.tiny.base_vocab_size=300", "eval_every=1",
            f"eval.suite={suite}", "eval.heldout_docs=6"]), evaluator=DuringTrainingEval)
        t.fit()
        res[stage] = [r["loss"] for r in t.history]
    if rank == 0:
        Path(out_dir, "losses.json").write_text(json.dumps(res))


@pytest.mark.slow
def test_two_ranks_zero2_and_zero3_evaluate_without_hanging(tmp_path):
    """Two gloo processes: no rank waits forever in a collective, the eval rows are those of one
    model (ZeRO-2 and ZeRO-3 train the same fp32 weights here, so their numbers agree)."""
    import torch.multiprocessing as mp

    from spiritlm.train.engine import free_port
    from spiritlm.components.metrics import read_metrics

    tok = _tokenizer(tmp_path / "tok")
    suite = _light_suite(tmp_path / "bench")
    mp.spawn(_two_rank_worker, args=(2, free_port(), str(tmp_path), str(tok), str(suite)), nprocs=2, join=True)
    losses = json.loads((tmp_path / "losses.json").read_text())
    assert losses["2"] == pytest.approx(losses["3"], abs=1e-4)
    ev = {s: [r for r in read_metrics(tmp_path / f"z{s}") if "eval/loss" in r] for s in (2, 3)}
    assert [r["step"] for r in ev[2]] == [r["step"] for r in ev[3]] == [1, 2]
    for a, b in zip(ev[2], ev[3]):
        assert a["eval/loss"] == pytest.approx(b["eval/loss"], abs=1e-4)
        assert a["eval/swuggy/S"] == b["eval/swuggy/S"] and a["eval/topic_storycloze/T2S"] == b["eval/topic_storycloze/T2S"]
