"""Accuracy over training steps from saved checkpoints: a checkpoint becomes an HF directory with
exactly the weights the final export writes, and the per-step table and chart read what they are
given (mean over seeds, each seed shown)."""

import json

import numpy as np
import pytest

from spiritlm.config import ConfigError


def _tiny_run(tmp_path):
    pytest.importorskip("deepspeed")
    from spiritlm.train.tiny import tiny_config
    from spiritlm.train.trainer import Trainer

    cfg = tiny_config(str(tmp_path / "run"), ["steps=4", "checkpoint.every=2", "checkpoint.keep=0",
                                               "checkpoint.export_hf=true"])
    t = Trainer(cfg)
    t.fit()
    return tmp_path / "run"


def test_checkpoint_to_hf_holds_the_exported_weights(tmp_path):
    from safetensors.numpy import load_file

    from spiritlm.demo.over_steps import checkpoint_to_hf, saved_steps

    run = _tiny_run(tmp_path)
    assert saved_steps(run) == [2, 4]
    final = load_file(str(run / "hf" / "model.safetensors"))
    last = checkpoint_to_hf(run / "checkpoints" / "step_00000004", run / "hf", tmp_path / "s4")
    got = load_file(str(last / "model.safetensors"))
    assert set(got) == set(final) and all(np.array_equal(got[k], final[k]) for k in final)  # bit for bit
    assert (last / "config.json").read_text() == (run / "hf" / "config.json").read_text()
    mid = load_file(str(checkpoint_to_hf(run / "checkpoints" / "step_00000002", run / "hf", tmp_path / "s2")
                        / "model.safetensors"))
    assert any(not np.array_equal(mid[k], final[k]) for k in final)  # an earlier model, not a copy

    from transformers import AutoModelForCausalLM  # it loads as the export does

    AutoModelForCausalLM.from_pretrained(str(last))
    # another run's export (other shapes) is refused with the reason
    from spiritlm.eval.testing import make_tiny_model_dir

    other = make_tiny_model_dir(tmp_path / "other", hidden=16)
    with pytest.raises(ConfigError, match="does not hold the export's tensors"):
        checkpoint_to_hf(run / "checkpoints" / "step_00000002", other, tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="step_N folder"):
        checkpoint_to_hf(run / "checkpoints", run / "hf", tmp_path / "bad")


def test_table_and_chart_over_steps(tmp_path):
    from spiritlm.demo.over_steps import ROWS, accuracies, markdown, plot

    res = {"results": {"swuggy": {"S": {"accuracy": 0.6}, "T": {"accuracy": 0.9}},
                       "topic_storycloze": {"T2S": {"accuracy": 0.55}, "S2T": {"accuracy": None}}}}
    (tmp_path / "results.json").write_text(json.dumps(res))
    assert accuracies(tmp_path / "results.json") == {"swuggy/S": 0.6, "topic_storycloze/T2S": 0.55}
    table = {"interleaved": [{0: {"swuggy/S": 0.5}, 600: {"swuggy/S": 0.6}, 800: {"swuggy/S": 0.7}},
                             {0: {"swuggy/S": 0.5}, 600: {"swuggy/S": 0.5}, 800: {"swuggy/S": 0.6}}],
             "random_init": [{200: {"swuggy/S": 0.4}, 800: {"swuggy/S": 0.52}}]}
    md = markdown(table, ("swuggy/S", "sblimp/S"))
    assert "| interleaved | 600 | 2 | 55.0 (60, 50) | -- |" in md
    assert "| interleaved | 800 | 2 | 65.0 (70, 60) | -- |" in md
    assert "| random_init | 200 | 1 | 40.0 | -- |" in md
    png = plot(table, tmp_path / "c.png", ROWS)
    assert png.stat().st_size > 10_000


def test_part_config_names_the_seeds_it_can_use(tmp_path):
    from spiritlm.demo.main import DemoConfig
    from spiritlm.demo.parts import DemoContext
    from spiritlm.demo.over_steps import part_config

    ctx = DemoContext(cfg=DemoConfig(), out=tmp_path, pipe=None, corpus={}, text_tok={}, speech_tok={},
                      manifest="", shards={}, start=None, seeds=[0, 1], models={}, draws={}, units={}, evals={},
                      comparison={})
    assert part_config(ctx, ["seeds=[1]"]).seeds == [1]
    with pytest.raises(ConfigError, match="not trained in this demo"):
        part_config(ctx, ["seeds=[5]"])
