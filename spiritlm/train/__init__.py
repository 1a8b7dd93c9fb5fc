"""Continual pretraining of a LLaMA-architecture LM with the Spirit LM speech vocabulary.

    from spiritlm.config import load_config
    from spiritlm.train import TrainConfig, train
    run_dir = train(load_config(TrainConfig, "train/tiny_cpu.toml", ["steps=20"]))

Modules: ``config`` (dataclasses), ``model`` (load/extend LLaMA), ``data`` (sources, mixture,
Parquet schema), ``packing``, ``engine`` (DeepSpeed JSON, process setup, LR schedule),
``trainer`` (the loop), ``checkpoint`` (atomic save/resume, HF export), ``metrics``, ``bench``,
``cli``. Heavy imports (torch, deepspeed) happen only when ``train``/``Trainer`` are used.
"""

from spiritlm.train.config import TrainConfig


def train(cfg, **kwargs):
    """See ``spiritlm.train.trainer.train``; returns the run directory."""
    from spiritlm.train.trainer import train as _train

    return _train(cfg, **kwargs)


__all__ = ["TrainConfig", "train"]
