"""Recipe of a continuous-input speech LM (``train/continuous_*.toml``): typed dataclasses.

A continuous recipe is a :class:`~spiritlm.components.config.TrainConfig` (same trainer, DeepSpeed,
checkpoint and log sections; ``model`` names the LM: a local HF causal-LM directory, or the tiny
LLaMA builder) plus ``model_type = "continuous"`` and a ``[continuous]`` section::

    encoder -> frames (T, D_enc) -> stack k -> (T // k, k * D_enc) -> projector -> (T // k, D_lm)
            -> placed before ``<BOS> transcript <EOS>`` ("prepend", SpeechLLM) or at ``<audio>``
               placeholder ids ("placeholder", Tiny Audio); loss on the transcript only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from spiritlm.config import ConfigError
from spiritlm.components.config import TrainConfig
from spiritlm.tokenizer.conformer import ConformerConfig  # noqa: F401  (re-exported: recipes' [continuous.encoder.conformer])


@dataclass
class EncoderConfig:
    # "hubert": our HF HubertModel (a tokenizer dir's hubert/, a HF dir, or a fairseq .pt);
    # "hf": any local HF speech encoder (AutoModel); "conformer": trained here with CTC.
    kind: Literal["hubert", "hf", "conformer"] = "conformer"
    path: str = ""  # hubert/hf: the local directory (a tokenizer dir: its hubert/ is used)
    layer: int = 0  # hubert/hf: 1-based hidden layer to read; 0 = the last
    conformer: ConformerConfig = field(default_factory=ConformerConfig)
    checkpoint: str = ""  # conformer: a trained encoder.safetensors (+ encoder.json) to start from
    # What the recipe expects (checked against the loaded encoder; 0 = take what it has).
    dim: int = 0
    frame_rate: float = 0.0
    # Auxiliary CTC on the encoder (SpeechLLM trains its conformer with CTC); 0 = no CTC head.
    ctc_weight: float = 0.0
    ctc_vocab: str = "chars"  # "chars" (letters, apostrophe, space) or "lm" (the LM's text pieces)


@dataclass
class ProjectorConfig:
    kind: Literal["linear", "mlp", "qformer", "moe", "mosa"] = "mlp"
    stack: int = 4  # frames stacked into one LM embedding (SpeechLLM 3, Tiny Audio 4)
    hidden: int = 0  # 0 = the LM width
    # qformer: learned queries per window of `window` encoder frames, `layers` layers
    queries: int = 3
    window: int = 15
    layers: int = 2
    heads: int = 4
    # moe: a shared expert + top_k of n_experts; balance loss weight
    n_experts: int = 4
    top_k: int = 2
    balance_weight: float = 0.01
    # mosa: 2 strided convs (total stride = stack) + a dense router over n_experts adapters
    checkpoint: str = ""  # projector.safetensors to start from (stage 2 after stage 1)


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    checkpoint: str = ""  # a peft adapter dir to start from


@dataclass
class ContinuousDataConfig:
    # data stage manifests (JSON Lines of utterances: audio_path + text); split filter
    manifests: list[str] = field(default_factory=list)
    split: str = "train"
    # precomputed frozen-encoder features: a folder of feature shards (written on first use when
    # `cache_features` and the encoder is frozen; "" = <run_dir>/features)
    cache_features: bool = True
    features_dir: str = ""
    max_audio_s: float = 30.0
    max_uncovered: float = 0.2  # transcripts with a larger share of byte/unk pieces are skipped
    synthetic: int = 0  # > 0 and no manifests: tone utterances (smoke tests)
    lowercase: bool = False


@dataclass
class ContinuousConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    placement: Literal["prepend", "placeholder"] = "prepend"
    audio_token: str = "<audio>"  # placeholder piece; its id (else unk) marks audio positions
    # what trains: "all"; "lora" (projector + LoRA on the LM, encoder frozen); "projector" (alone)
    trainable: Literal["all", "lora", "projector"] = "projector"
    train_encoder: bool = False  # with "all"/"lora": the encoder trains too (conformer)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: ContinuousDataConfig = field(default_factory=ContinuousDataConfig)


@dataclass
class ContinuousTrainConfig(TrainConfig):
    model_type: str = "continuous"
    continuous: ContinuousConfig = field(default_factory=ContinuousConfig)


def encoder_frozen(c: ContinuousConfig) -> bool:
    return c.trainable == "projector" or not c.train_encoder


def validate_continuous(c: ContinuousConfig) -> None:
    p = c.projector
    if p.stack < 1:
        raise ConfigError(f"continuous.projector.stack={p.stack}: stack 1 or more frames")
    if p.kind == "moe" and not 1 <= p.top_k <= p.n_experts:
        raise ConfigError(f"continuous.projector.top_k={p.top_k} must lie in 1..n_experts={p.n_experts}")
    if p.kind == "qformer" and (p.window < 1 or p.queries < 1):
        raise ConfigError("continuous.projector: qformer needs window >= 1 and queries >= 1")
    e = c.encoder
    if e.kind in ("hubert", "hf") and not e.path:
        raise ConfigError(f"continuous.encoder.path is empty: point it at a local {e.kind} directory")
    if c.trainable == "projector" and c.train_encoder:
        raise ConfigError("continuous.trainable='projector' freezes the encoder: set train_encoder=false "
                          "or trainable='all'/'lora'")
    if e.ctc_weight > 0 and e.kind != "conformer":
        raise ConfigError("continuous.encoder.ctc_weight > 0 needs the conformer encoder (a frozen "
                          "pretrained encoder gets no CTC head)")
