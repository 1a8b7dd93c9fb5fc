"""The continuous-input model in the shared trainer (DeepSpeed ZeRO, checkpoints, export):
loss goes down deterministically, resume is exact, cached frozen-encoder features give the
same losses as recomputing them, the two-stage recipe (projector, then LoRA) chains."""

import json

import pytest

from spiritlm.config import load_config
from spiritlm.models.continuous.config import ContinuousTrainConfig
from spiritlm.models.continuous.data import synthetic_utterances

RECIPE = "train/continuous_tiny.toml"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from spiritlm.text_tokenizer import train_sentencepiece

    d = tmp_path_factory.mktemp("tok")
    train_sentencepiece([t for _, t, _ in synthetic_utterances(60)] + ["the cat sat"] * 3, d, vocab_size=300)
    return d


def _run(tok_dir, run_dir, overrides=(), until=None):
    from spiritlm.train.trainer import Trainer

    cfg = load_config(ContinuousTrainConfig, RECIPE, [f"model.tokenizer={tok_dir}", f"run_dir={run_dir}",
                                                      "continuous.data.synthetic=24", *overrides])
    t = Trainer(cfg)
    t.fit(until_step=until)
    return t


def _losses(run_dir):
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_goes_down(tok_dir, tmp_path):
    # (same seed -> same losses: the resume test compares two runs loss for loss)
    a = _run(tok_dir, tmp_path / "a", ["steps=8", "log.every=1"])
    la = [h["loss"] for h in a.history]
    assert sum(la[-3:]) / 3 < 0.8 * sum(la[:3]) / 3
    counts = json.loads((tmp_path / "a" / "param_counts.json").read_text())
    assert set(counts) >= {"encoder", "projector", "lm", "lora", "ctc"}
    hf = tmp_path / "a" / "hf"
    assert (hf / "continuous.json").is_file() and (hf / "model.safetensors").is_file()
    assert (tmp_path / "a" / "parts" / "projector.safetensors").is_file()


def test_resume_gives_uninterrupted_losses(tok_dir, tmp_path):
    over = ["steps=6", "checkpoint.export_hf=false", "log.every=1"]
    _run(tok_dir, tmp_path / "full", over)
    _run(tok_dir, tmp_path / "part", over, until=3)
    # the checkpoint holds the parts on their own too (projector, conformer, CTC head)
    assert (tmp_path / "part" / "checkpoints" / "step_00000003" / "parts" / "projector.safetensors").is_file()
    _run(tok_dir, tmp_path / "part", over)  # resumes from its step-3 checkpoint
    assert len(_losses(tmp_path / "full")) == 6
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")


def test_cached_features_same_losses_and_two_stage(tok_dir, tmp_path):
    frozen = ["continuous.trainable=projector", "continuous.train_encoder=false", "continuous.encoder.ctc_weight=0",
              "steps=4", "log.every=1"]
    cached = _run(tok_dir, tmp_path / "cached", frozen + ["continuous.data.cache_features=true"])
    assert list((tmp_path / "cached" / "features").rglob("features-*.parquet"))
    again = _run(tok_dir, tmp_path / "recomputed", frozen + ["continuous.data.cache_features=false"])
    assert [h["loss"] for h in cached.history] == pytest.approx([h["loss"] for h in again.history], abs=1e-5)
    # stage 2: LoRA from the stage-1 projector
    parts = tmp_path / "cached" / "parts"
    s2 = _run(tok_dir, tmp_path / "stage2", ["continuous.trainable=lora", "continuous.train_encoder=false",
                                              "continuous.encoder.ctc_weight=0", "steps=2",
                                              f"continuous.projector.checkpoint={parts / 'projector.safetensors'}",
                                              f"continuous.encoder.checkpoint={parts / 'encoder.safetensors'}"])
    counts = json.loads((tmp_path / "stage2" / "param_counts.json").read_text())
    assert counts["lora"]["trainable"] > 0 and counts["lm"]["trainable"] == 0
    assert counts["encoder"]["trainable"] == 0
    assert (tmp_path / "stage2" / "parts" / "adapter" / "adapter_model.safetensors").is_file()
    assert s2.history[0]["loss"] < cached.history[0]["loss"]  # it starts from the trained projector


def test_cli_picks_the_recipe_model_type(capsys):
    from spiritlm.cli import main

    assert main(["train", RECIPE, "--print-config", "--set", "continuous.projector.kind=qformer"]) == 0
    out = capsys.readouterr().out
    assert "model_type: continuous" in out and "kind: qformer" in out


def test_seq_len_beyond_the_lm_is_a_config_error(tok_dir, tmp_path):
    from spiritlm.config import ConfigError
    from spiritlm.models.continuous.spec import build

    cfg = load_config(ContinuousTrainConfig, RECIPE, [f"model.tokenizer={tok_dir}", f"run_dir={tmp_path}",
                                                      "data.seq_len=200", "model.tiny.max_position_embeddings=128"])
    with pytest.raises(ConfigError, match="exceeds the LM's max_position_embeddings=128"):
        build(cfg)
