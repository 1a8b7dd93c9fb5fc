"""Model families the trainer can train, by name (torchtitan's ``ModelSpec`` idea, small).

    spec = model_spec("continuous")     # or model_spec_of(cfg): cfg.model_type, default "unit_lm"
    model, keepalive = spec.build(cfg, ds_config, dtype)
    batches = spec.batches(cfg, model, rank, world)     # .next_batch(B), state_dict, load_state_dict
    loss, sums, counts = spec.loss(engine, batch, device)
    spec.export(trainer, out_dir)

A spec says how to build the model, how to make its batches, how to compute its loss, which parts
train (``param_counts``) and how to export it. ``unit_lm`` is the Spirit LM unit model of
``spiritlm.train``: the trainer keeps its own code path for it (behaviour unchanged) and the spec
only points at that builder. Other families plug into the same trainer (DeepSpeed, checkpoints,
exact resume, logs) through these hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from spiritlm.config import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config_cls: Callable[[], type]  # the recipe dataclass (lazy: no heavy import at lookup)
    build: Callable[..., Any]  # (cfg, ds_config, dtype) -> (model, keepalive)
    batches: Optional[Callable[..., Any]] = None  # (cfg, model, rank, world) -> batch maker
    loss: Optional[Callable[..., Any]] = None  # (engine, batch, device) -> (loss, sums, counts)
    param_counts: Optional[Callable[[Any], dict]] = None  # model -> {part: {trainable, total}}
    export: Optional[Callable[..., Any]] = None  # (trainer, out_dir) -> out_dir
    save_parts: Optional[Callable[..., Any]] = None  # (trainer, checkpoint_dir): parts beside a checkpoint
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    _REGISTRY[spec.name] = spec
    return spec


def model_spec(name: str) -> ModelSpec:
    _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"model_type={name!r}: use one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def model_spec_of(cfg) -> ModelSpec:
    return model_spec(getattr(cfg, "model_type", "unit_lm"))


def names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def config_class_of_recipe(data: dict) -> type:
    """The config dataclass a recipe's ``model_type`` asks for (TrainConfig when absent)."""
    return model_spec(str(data.get("model_type", "unit_lm"))).config_cls()


def _unit_config():
    from spiritlm.train.config import TrainConfig

    return TrainConfig


def _unit_build(cfg, ds_config=None, dtype=None):
    import torch

    from spiritlm.train.model import build_model

    model, _layout, keepalive = build_model(cfg.model, ds_config, dtype or torch.float32)
    return model, keepalive


def _load_builtin() -> None:
    if "unit_lm" not in _REGISTRY:
        register(ModelSpec("unit_lm", _unit_config, _unit_build,
                           description="Spirit LM: LLaMA + speech units interleaved with text (spiritlm.train)"))
    if "continuous" not in _REGISTRY:
        from spiritlm.models.continuous import SPEC

        register(SPEC)
    if "streaming" not in _REGISTRY:
        from spiritlm.models.streaming import SPEC as STREAMING_SPEC

        register(STREAMING_SPEC)
    if "hybrid" not in _REGISTRY:
        register(__import__("spiritlm.models.hybrid.spec", fromlist=["SPEC"]).SPEC)
