"""A saved file that is damaged, foreign or of another shape is refused in one line naming the
file, what is wrong and the fix (issue 32, the "poor" class): no JSONDecodeError, SafetensorError
or state_dict RuntimeError reaches the user, and a suggested --set fix parses when pasted."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spiritlm.artifacts import ArtifactError
from spiritlm.config import ConfigError, load_config
from spiritlm.models.continuous.config import ContinuousTrainConfig
from spiritlm.models.continuous.data import synthetic_utterances
from spiritlm.models.continuous.model import build_continuous, load_continuous

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from spiritlm.text_tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("cont")
    train_sentencepiece([t for _, t, _ in synthetic_utterances(60)] + ["the cat sat on the mat"] * 3,
                        root / "tok", vocab_size=300)
    cfg = load_config(ContinuousTrainConfig, REPO / "train" / "continuous_tiny.toml",
                      [f"model.tokenizer={root / 'tok'}", f"run_dir={root}"])
    return root, cfg, build_continuous(cfg).export_merged(root / "hf")


def _copy(export, tmp_path) -> Path:
    d = tmp_path / "hf"
    shutil.copytree(export[2], d)
    return d


def test_a_damaged_or_foreign_metadata_file_is_named(export, tmp_path):
    d = _copy(export, tmp_path)
    meta = json.loads((d / "continuous.json").read_text())
    (d / "continuous.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"continuous\.json: not valid JSON .*re-export"):
        load_continuous(d)
    meta["continuous"]["projector"]["no_such_field"] = 1
    (d / "continuous.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"continuous\.json: its continuous does not load .*no_such_field"):
        load_continuous(d)
    (d / "continuous.json").write_text(json.dumps({"other": {}}))
    with pytest.raises(ArtifactError, match=r"has no 'continuous' section"):
        load_continuous(d)


def test_a_truncated_weights_file_is_named(export, tmp_path):
    d = _copy(export, tmp_path)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ArtifactError, match=r"a weights file cannot be read .*truncated"):
        load_continuous(d)
    d2 = _copy(export, tmp_path / "b")
    (d2 / "config.json").write_text("{bad")
    with pytest.raises(ArtifactError, match=r"not a valid JSON file"):
        load_continuous(d2)


def test_a_truncated_unit_lm_export_is_named(tmp_path):
    from spiritlm.eval.model import load_model
    from spiritlm.eval.testing import make_tiny_model_dir

    d = make_tiny_model_dir(tmp_path / "m")
    w = next(d.glob("*.safetensors"))
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ArtifactError, match=str(d)):
        load_model(d)


def test_a_projector_checkpoint_of_another_shape_names_file_and_setting(export, tmp_path):
    root, cfg, _ = export
    wrong = tmp_path / "projector.safetensors"
    proj = build_continuous(cfg).projector
    save_file({k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in proj.state_dict().items()}, str(wrong))
    cfg2 = load_config(ContinuousTrainConfig, REPO / "train" / "continuous_tiny.toml",
                       [f"model.tokenizer={root / 'tok'}", f"run_dir={tmp_path / 'run'}",
                        f"continuous.projector.checkpoint={wrong}"])
    with pytest.raises(ArtifactError, match=r"projector\.safetensors \(set by continuous\.projector\.checkpoint\): "
                                            r"does not fit the .*projector"):
        build_continuous(cfg2)
    wrong.write_bytes(b"\x00" * 10)
    with pytest.raises(ArtifactError, match="cannot read its tensors"):
        build_continuous(cfg2)


def test_the_layout_fix_parses_when_pasted(tmp_path):
    from spiritlm.cli import build_parser
    from spiritlm.components.config import ModelConfig
    from spiritlm.models.unit_lm.model import check_checkpoint_layout
    from spiritlm.text_tokenizer import LAYOUT_FILE
    from spiritlm.vocab import VocabLayout

    base = VocabLayout(base_vocab_size=32000, hubert_size=501, pitch_size=0, style_size=0)
    (tmp_path / LAYOUT_FILE).write_text(json.dumps({"layout": base.__dict__}))
    cfg = ModelConfig(checkpoint=str(tmp_path))
    expressive = VocabLayout(base_vocab_size=32000, hubert_size=501, pitch_size=64, style_size=100)
    with pytest.raises(ConfigError) as e:
        check_checkpoint_layout(cfg, expressive)
    fix = str(e.value).rsplit(": ", 1)[1].split()
    args = build_parser().parse_args(["train", "train/tiny_cpu.toml", *fix])
    assert args.overrides == ["model.hubert_size=501", "model.pitch_size=0", "model.style_size=0"]
    (tmp_path / LAYOUT_FILE).write_text(json.dumps({"layout": {**base.__dict__, "extra": 1}}))
    with pytest.raises(ArtifactError, match=LAYOUT_FILE):
        check_checkpoint_layout(cfg, expressive)
