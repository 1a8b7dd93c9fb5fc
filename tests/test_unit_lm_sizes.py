"""The unit LM's named sizes are the one definition of the tiny models: the CPU recipe spells out
the "cpu" size, the demo's train overrides and the train bench's demo size use "demo", and the
tests' tiny config uses "test"."""

from pathlib import Path

import pytest

from spiritlm.components.config import TrainConfig
from spiritlm.config import load_config
from spiritlm.demo.main import DemoConfig
from spiritlm.models.unit_lm import sizes

REPO = Path(__file__).resolve().parents[1]


def _size_of(cfg: TrainConfig) -> sizes.TinySize:
    t = cfg.model.tiny
    return sizes.TinySize(t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads,
                          t.num_key_value_heads, t.max_position_embeddings, seq_len=cfg.data.seq_len,
                          micro_batch_size=cfg.micro_batch_size, global_batch_size=cfg.global_batch_size,
                          text_vocab_size=t.base_vocab_size)


def test_cpu_recipe_is_the_cpu_size():
    assert _size_of(load_config(TrainConfig, REPO / "train" / "tiny_cpu.toml")) == sizes.tiny_size("cpu")


def test_demo_trains_the_demo_size_and_the_bench_measures_it():
    from spiritlm.train.bench import demo_model

    demo = DemoConfig()
    cfg = load_config(TrainConfig, REPO / demo.train_recipe,
                      [*demo.train_overrides, f"model.tiny.base_vocab_size={demo.text_vocab_size}"])
    assert _size_of(cfg) == sizes.tiny_size("demo")
    bench = load_config(TrainConfig, None, demo_model())
    assert _size_of(bench) == sizes.tiny_size("demo")


def test_tests_tiny_config_is_the_test_size(tmp_path):
    from spiritlm.train.tiny import tiny_config

    assert _size_of(tiny_config(str(tmp_path))) == sizes.tiny_size("test")


def test_unknown_size_names_the_known_ones():
    with pytest.raises(KeyError, match="'cpu', 'demo', 'test'"):
        sizes.tiny_size("huge")
