"""A tiny, fast configuration for tests, the benchmark and CPU smoke runs (same as train/tiny_cpu.toml
in spirit, built in code so tests need no file)."""

from __future__ import annotations

from typing import Sequence

from spiritlm.config import load_config
from spiritlm.components.config import TrainConfig

TINY = {
    "steps": 8,
    "micro_batch_size": 2,
    "global_batch_size": 4,
    "data": {"seq_len": 64, "synthetic_docs": 64},
    "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "num_key_value_heads": 2,
                       "max_position_embeddings": 128, "base_vocab_size": 256},
              "vocab_rows": "padded", "pad_multiple": 64},
    "optim": {"lr": 1e-3, "schedule": "cosine", "warmup_steps": 2},
    "deepspeed": {"zero_stage": 1, "precision": "fp32"},
    "checkpoint": {"every": 0, "export_hf": False},
    "log": {"tensorboard": False, "progress_bar": False, "plots": False},
}


def tiny_config(run_dir: str, overrides: Sequence[str] = ()) -> TrainConfig:
    return load_config(TrainConfig, None, [f"run_dir={run_dir}", *overrides], base=TINY)
