"""A tiny, fast training configuration for tests, the benchmarks and CPU smoke runs, built in code
so tests need no file: the unit LM's named size "test" (spiritlm/models/unit_lm/sizes.py) and a
few steps without checkpoints or logs."""

from __future__ import annotations

from typing import Sequence

from spiritlm.components.config import TrainConfig
from spiritlm.config import load_config
from spiritlm.models.unit_lm.sizes import tiny_size

_TEST = tiny_size("test")  # the model and batch: the unit LM family's named size "test"
TINY = {
    "steps": 8,
    "micro_batch_size": _TEST.micro_batch_size,
    "global_batch_size": _TEST.global_batch_size,
    "data": {"seq_len": _TEST.seq_len, "synthetic_docs": 64},
    "model": {"tiny": {**_TEST.model_fields(), "base_vocab_size": _TEST.text_vocab_size},
              "vocab_rows": "padded", "pad_multiple": 64},
    "optim": {"lr": 1e-3, "schedule": "cosine", "warmup_steps": 2},
    "deepspeed": {"zero_stage": 1, "precision": "fp32"},
    "checkpoint": {"every": 0, "export_hf": False},
    "log": {"tensorboard": False, "progress_bar": False, "plots": False},
}


def tiny_config(run_dir: str, overrides: Sequence[str] = ()) -> TrainConfig:
    return load_config(TrainConfig, None, [f"run_dir={run_dir}", *overrides], base=TINY)
