"""Recipe of a hybrid-input speech LM (Whisper-GPT style; ``train/hybrid_*.toml``): typed dataclasses.

A hybrid recipe is a :class:`~spiritlm.components.config.TrainConfig` (same ``model``: the unit LM's
LLaMA with the speech vocabulary; same trainer, DeepSpeed, checkpoint and log sections) plus
``model_type = "hybrid"`` and a ``[hybrid]`` section. At every speech position ``t`` the input is

    fuse( embedding(unit_t), projector(feature_t) )          -> predicts unit_{t+1}

with ``feature_t`` the continuous frame aligned with the unit (``features``), the projector a few
light blocks (``projector``), and ``fuse`` concatenation + linear (the paper) or a sum. Units are
*not* deduplicated (one position per frame, so units and features stay aligned); text and marker
positions are the plain token embedding. ``features.kind = "none"`` is the tokens-only model on
the very same sequences (the baseline of the comparison).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from spiritlm.config import ConfigError
from spiritlm.components.config import TrainConfig


@dataclass
class FeatureConfig:
    # "logmel": n_mels log-mel bins, averaged over the mel frames that end with the unit's own
    # CNN window (no sample later than the unit itself saw); "hubert": features of the speech
    # tokenizer's HuBERT at `layer` (the frames the units were quantised from; a transformer's
    # frame sees the whole utterance, so it carries future context: see docs/hybrid.md);
    # "none": tokens only.
    kind: Literal["logmel", "hubert", "none"] = "logmel"
    n_mels: int = 64  # the paper's 64 bins
    mel_hop_ms: float = 10.0
    hubert: str = ""  # kind = "hubert": a speech tokenizer directory (its hubert/) or a HF HuBERT dir
    layer: int = 0  # 1-based hidden layer; 0 = the last
    frame_rate: float = 0.0  # unit frames per second; 0 = the shards' recorded HuBERT rate


@dataclass
class ProjectorConfig:
    dim: int = 0  # width of the light blocks; 0 = the LM width
    blocks: int = 2  # residual pre-norm MLP blocks (a couple of light blocks, as in the paper)
    mult: int = 2  # MLP expansion


@dataclass
class HybridDataConfig:
    # the speech tokenizer's aligned manifests (audio_path per record id) of the shards' records
    manifests: list[str] = field(default_factory=list)
    # per-frame features in Parquet shards (spiritlm.models.continuous.data.FeatureCache layout);
    # "" = <run_dir>/features/<hash of the feature settings>
    features_dir: str = ""


@dataclass
class HybridConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    fusion: Literal["concat", "sum"] = "concat"
    data: HybridDataConfig = field(default_factory=HybridDataConfig)


@dataclass
class HybridTrainConfig(TrainConfig):
    model_type: str = "hybrid"
    hybrid: HybridConfig = field(default_factory=HybridConfig)


def validate_hybrid(cfg: HybridTrainConfig) -> None:
    h = cfg.hybrid
    if h.features.kind == "hubert" and not h.features.hubert:
        raise ConfigError("hybrid.features.kind='hubert' needs hybrid.features.hubert: a speech tokenizer "
                          "directory (its hubert/) or a HF HuBERT directory")
    if h.projector.blocks < 0 or h.projector.mult < 1:
        raise ConfigError("hybrid.projector: blocks >= 0 and mult >= 1")
    if h.features.kind != "none" and not h.data.manifests and cfg.data.sources:
        raise ConfigError("hybrid.data.manifests is empty: list the aligned manifests (audio_path per record "
                          "id) of the shards' records, so their features can be computed")
    for s in cfg.data.sources:
        if s.kind == "any":
            raise ConfigError(f"data source {s.name or s.path}: give kind = 'speech', 'interleaved' or 'text' "
                              "(the hybrid family reads aligned records as one of them)")
