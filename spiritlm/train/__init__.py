"""Continual pretraining of a LLaMA-architecture LM with the Spirit LM speech vocabulary.

    from spiritlm.config import load_config
    from spiritlm.train import TrainConfig, train
    run_dir = train(load_config(TrainConfig, "train/tiny_cpu.toml", ["steps=20"]))

The trainer receives a model family's ``ModelSpec`` (``spiritlm.models``) and never names a
family. Modules: ``engine`` (DeepSpeed JSON, process setup, LR schedule), ``trainer`` (the loop),
``tiny`` (the tests' tiny config), ``bench``/``bench_mfu``. What every family shares (the recipe
dataclasses, mixture, packing, checkpoints, metrics) is in ``spiritlm.components``; the unit LM is
the family ``spiritlm.models.unit_lm``. Heavy imports (torch, deepspeed) happen only when
``train``/``Trainer`` are used.
"""

from spiritlm.components.config import TrainConfig


def train(cfg, **kwargs):
    """See ``spiritlm.train.trainer.train``; returns the run directory."""
    from spiritlm.train.trainer import train as _train

    return _train(cfg, **kwargs)


__all__ = ["TrainConfig", "train"]
