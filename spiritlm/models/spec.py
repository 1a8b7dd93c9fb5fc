"""The model-family registry (torchtitan's ``protocols/train_spec.py``): what the trainer, the eval
suite, ``generate`` and ``transcribe`` need from a family, so that none of them names one.

    from spiritlm.models import model_spec, model_spec_of, detect_family
    spec = model_spec_of(cfg)                            # cfg.model_type, default "unit_lm"
    plan = spec.plan(cfg, sources, weights, fns) if spec.plan else None   # checks before weights
    model, keepalive = spec.build(cfg, ds_config, dtype)
    batches = spec.batches(cfg, model, rank, world, plan=plan)    # .next_batch(B), state_dict, ...
    loss, sums, counts = spec.loss(engine, batch, device, plan=plan)
    spec.export(trainer, out_dir)                                # trainer.plan holds the plan
    spec = detect_family("runs/x/hf")                    # the family of a saved directory
    model, tokenizer = spec.load(dir, device, dtype)
    scorer = spec.scorer(model, tokenizer, encoder, scoring_cfg, eval_cfg)

A family lives in one folder, ``spiritlm/models/<name>/``, whose ``__init__`` defines ``SPEC`` and
calls :func:`register` (the built-in ones are imported by :func:`load_builtin`; a family defined
elsewhere, e.g. in a test file or a user's package, registers itself the same way). This module
imports nothing from ``spiritlm.train``, ``spiritlm.eval`` or the demo.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from spiritlm.config import ConfigError

# The evaluation settings a family may be asked for (spiritlm.eval): the input -> output
# modalities of a scored item. "S" speech -> speech, "T" text -> text, "T2S" text context with
# speech endings, "S2T" speech context with text endings.
SETTINGS = ("S", "T", "T2S", "S2T")


@dataclass(frozen=True)
class Capabilities:
    """What a trained model of the family can do; every command checks these before any work."""

    speech_in: bool = True  # reads speech (units or audio) in a context
    speech_out: bool = False  # writes speech tokens (speech continuations, TTS, speech STSP)
    text_out: bool = True  # writes text
    generate: bool = False  # `spiritlm generate` (free-running decoding) is built
    transcribe: bool = False  # `spiritlm transcribe` (audio -> text)
    stream: bool = False  # `spiritlm transcribe --stream` (chunk by chunk as audio arrives)
    settings: tuple[str, ...] = SETTINGS  # eval settings it can score (S, T, T2S, S2T)
    tasks: Optional[tuple[str, ...]] = None  # eval tasks it can run (None: every task of the suite)

    def can_score(self, task: str, setting: str) -> bool:
        return setting in self.settings and (self.tasks is None or task in self.tasks)

    def why_not(self, family: str, task: str, setting: str) -> str:
        if self.tasks is not None and task not in self.tasks:
            return f"the {family} family does not run {task} (it runs {', '.join(self.tasks)})"
        return f"the {family} family scores {', '.join(self.settings)} only, not {setting}"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config_cls: Callable[[], type]  # the recipe dataclass (lazy: no heavy import at lookup)
    build: Callable[..., Any]  # (cfg, ds_config, dtype) -> (model, keepalive)
    batches: Optional[Callable[..., Any]] = None  # (cfg, model, rank, world, plan=) -> batch maker
    loss: Optional[Callable[..., Any]] = None  # (engine, batch, device, plan=) -> (loss, sums, counts)
    param_counts: Optional[Callable[[Any], dict]] = None  # model -> {part: {trainable, total}}
    export: Optional[Callable[..., Any]] = None  # (trainer, out_dir) -> out_dir
    save_parts: Optional[Callable[..., Any]] = None  # (trainer, checkpoint_dir): parts beside a checkpoint
    # (cfg, sources, weights, interleave_fns) -> plan: checks and data made before any weight is
    # loaded (the process group does not exist yet); the trainer keeps it as ``trainer.plan``
    plan: Optional[Callable[..., Any]] = None
    mixture: Optional[Callable[..., dict]] = None  # (trainer) -> realised token share per source
    summary: Optional[Callable[..., dict]] = None  # (trainer) -> extra fields of summary.json
    # ---- a saved model ------------------------------------------------------------------------
    detect: Optional[Callable[[Path], bool]] = None  # does this directory hold a model of the family
    detect_priority: int = 0  # checked from high to low: a more specific marker first
    load: Optional[Callable[..., Any]] = None  # (dir, device, dtype) -> (model, tokenizer or None)
    scorer: Optional[Callable[..., Any]] = None  # (model, tokenizer, encoder, scoring, eval_cfg) -> scorer
    asr: Optional[Callable[..., dict]] = None  # (model, [(id, wav, text)], max_new_tokens) -> zero-shot ASR result
    # (model, wav, window=, max_chunk_tokens=, max_new_tokens=) -> (text, extra): one whole utterance
    transcribe: Optional[Callable[..., tuple]] = None
    # (model, blocks, window=, max_chunk_tokens=) -> (header line, iterator of chunk results, rows -> text)
    stream: Optional[Callable[..., tuple]] = None
    capabilities: Capabilities = field(default_factory=Capabilities)
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}
# the families shipped with the package: each folder's __init__ registers its SPEC
BUILTIN = ("unit_lm", "continuous", "streaming", "hybrid", "t2u")


def register(spec: ModelSpec) -> ModelSpec:
    """Add a family (a later registration of the same name replaces the earlier one)."""
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def load_builtin() -> None:
    for name in BUILTIN:
        if name not in _REGISTRY:
            importlib.import_module(f"spiritlm.models.{name}")


def model_spec(name: str) -> ModelSpec:
    load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"model_type={name!r}: use one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def model_spec_of(cfg) -> ModelSpec:
    return model_spec(getattr(cfg, "model_type", "unit_lm"))


def names() -> list[str]:
    load_builtin()
    return sorted(_REGISTRY)


def config_class_of_recipe(data: dict) -> type:
    """The config dataclass a recipe's ``model_type`` asks for (TrainConfig when absent)."""
    return model_spec(str(data.get("model_type", "unit_lm"))).config_cls()


def detect_family(directory: str | Path) -> ModelSpec:
    """The family of a saved model directory (an export, or a run dir holding ``hf/``): the first
    family, by ``detect_priority``, whose ``detect`` accepts it. A clear error if none does."""
    load_builtin()
    d = Path(directory)
    if not d.exists():
        raise FileNotFoundError(f"{d}: no such model directory")
    specs = sorted((s for s in _REGISTRY.values() if s.detect is not None), key=lambda s: -s.detect_priority)
    for s in specs:
        if s.detect(d):
            return s
    raise ConfigError(f"{d}: no model family recognises this directory (tried {', '.join(s.name for s in specs)}); "
                      "point at a training run's hf/ export (config.json + model.safetensors, plus the family's "
                      "own file such as continuous.json / streaming.json / hybrid.json)")


def locate_model(directory: str | Path) -> tuple[ModelSpec, Path]:
    """(family, directory) of a saved model given its export or the training run dir above it
    (``<run_dir>/hf``): the directory itself first, then its ``hf/``."""
    d = Path(directory)
    hf = d / "hf"
    try:
        return detect_family(d), d
    except ConfigError:
        if not hf.is_dir():
            ck = d / "checkpoints"
            if ck.is_dir():  # a training run that has not exported yet
                latest = ck / "latest"
                tag = latest.read_text().strip() if latest.is_file() else ""
                recipe = d / "config.yaml" if (d / "config.yaml").is_file() else "RECIPE"
                raise ConfigError(
                    f"{d}: a training run with checkpoints{f' (latest {tag})' if tag else ''} but no export "
                    f"yet ({hf} does not exist): finish training with `spiritlm train {recipe}` (it resumes from "
                    "checkpoints/latest and writes hf/ at the last step; add --set checkpoint.export_hf=true if "
                    f"the recipe turned the export off), then point at {d}") from None
            raise
    return detect_family(hf), hf


def load_model_dir(directory: str | Path, device: str = "cpu", dtype: Any = None):
    """(spec, model, tokenizer) of a saved directory (or a run dir holding ``hf/``), whatever its family."""
    spec, d = locate_model(directory)
    if spec.load is None:
        raise ConfigError(f"{directory}: the {spec.name} family has no loader for saved models")
    model, tokenizer = spec.load(d, device, dtype)
    return spec, model, tokenizer


def what_it_can_do(spec: ModelSpec) -> str:
    """The commands a family's capabilities offer, for a refusal to name what to do instead."""
    caps, can = spec.capabilities, []
    if caps.transcribe:
        can.append("transcribe audio (`spiritlm transcribe DIR AUDIO`)")
    if caps.stream:
        can.append("transcribe a stream chunk by chunk (`spiritlm transcribe --stream DIR AUDIO`)")
    if caps.generate:
        can.append("generate (`spiritlm generate --model DIR ...`)")
    if spec.scorer is not None and caps.settings and caps.tasks != ():
        tasks = f"; tasks {', '.join(caps.tasks)}" if caps.tasks else ""
        can.append(f"be scored by `spiritlm eval RECIPE --model DIR` (settings {', '.join(caps.settings)}{tasks})")
    elif spec.asr is not None:
        can.append("be scored on ASR by `spiritlm eval RECIPE --model DIR`")
    return " or ".join(can) or "nothing these commands offer"


def require(spec: ModelSpec, what: str, directory: str | Path = "", action: str = "") -> None:
    """Refuse, before any work, an action the family does not offer (``what``: a Capabilities
    field; ``action``: how the refusal words it): the directory, the family, what it cannot do,
    which families can, and what it can do instead."""
    if getattr(spec.capabilities, what):
        return
    verbs = {"generate": "generate (free-running decoding)", "speech_out": "write speech",
             "transcribe": "transcribe audio", "stream": "transcribe a stream chunk by chunk",
             "speech_in": "read speech", "text_out": "write text"}
    able = sorted(s.name for s in _REGISTRY.values() if getattr(s.capabilities, what))
    raise ConfigError(f"{directory or spec.name}: a {spec.name} model cannot {action or verbs.get(what, what)}, "
                      f"only a {' or '.join(able) or 'no'} model can; instead it can {what_it_can_do(spec)}")
