"""Typed configuration of a speech tokenizer (recipes in ``tokenizers/*.toml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from spiritlm.tokenizer.conformer import ConformerConfig
from spiritlm.tokenizer.hubert import HubertCfg
from spiritlm.tokenizer.pitch import PitchCfg
from spiritlm.tokenizer.style import StyleCfg


@dataclass
class UnitsCfg:
    kind: Literal["kmeans", "linear"] = "kmeans"
    path: str = ""  # centroids (.npy; joblib only with allow_pickle) or LinearQuantizer weights; "" = train on fit
    k: int = 500
    niter: int = 50
    max_frames: int = 200_000  # reservoir of frames for k-means training (memory bound: max_frames x dim x 4 B)
    allow_pickle: bool = False
    # linear kind: how CTC blanks become units. "" = the file's own rule: "wrap_left" for the
    # release's {model_cfg, model_weight} files, "left_then_right" for ours (see kmeans.fill_blanks)
    blank_rule: str = ""


@dataclass
class DemoHubertCfg:
    """Tiny HuBERT trained by masked prediction of MFCC k-means targets (HuBERT iteration 1)."""

    enabled: bool = False
    hidden: int = 128
    layers: int = 3
    heads: int = 4
    ffn: int = 256
    conv_dim: int = 128
    hop: int = 320  # 320 = 50 Hz frames (default, finer for a tiny model); 640 = 25 Hz like mHuBERT-25hz
    mfcc_k: int = 100  # k-means clusters on MFCC(+deltas) frames = the prediction targets
    steps: int = 600
    batch_size: int = 8
    crop_s: float = 4.0
    lr: float = 1e-3
    mask_prob: float = 0.08  # span starts (HuBERT: 8% starts x 10-frame spans ~ 50% masked)
    mask_length: int = 5
    # Wall-clock cap for the training loop; 0 = none. A cap that bites makes the units depend on
    # the machine's load (it cut a 1800-step run to 37 steps on a loaded machine), so it is off
    # by default and reported loudly when it stops a run.
    max_minutes: float = 0.0
    threads: int = 0  # torch threads (0 = leave as is)
    eval_max_files: int = 0  # held-out files for the PNMI report (0 = all); bounds its time


@dataclass
class SemanticCfg:
    """Semantic units (issue 35): an ASR-supervised encoder whose layer is quantised instead of
    HuBERT's. ``enabled`` replaces the ``[hubert]`` section; units, dedup, ids and the data stage
    are the same (``[Hu*]`` rows; the vocabulary layout records ``unit_family = "semantic"``)."""

    enabled: bool = False
    # "conformer": the CTC conformer over log-mel (trained here when ``path`` is empty, else a
    # directory with encoder.safetensors + ctc.safetensors + encoder.json, or a continuous /
    # streaming export with continuous.json); "hf": a local HF ``*ForCTC`` directory (wav2vec2,
    # HuBERT, WavLM ... fine-tuned for ASR).
    kind: Literal["conformer", "hf"] = "conformer"
    path: str = ""
    layer: int = 0  # 1-based block (conformer) / hidden layer (hf) that is quantised; 0 = the last
    # Units per second: 0 = the encoder's own (25 Hz for the conformer's 40-ms frames); else the
    # encoder's rate / k for a whole k (k frames averaged): 12.5 from a 25-Hz encoder (GLM-4-Voice's rate)
    frame_rate: float = 0.0
    device: str = "auto"
    max_chunk_s: float = 100.0  # long audio is encoded in chunks of at most this length (as HuBERT)
    conformer: ConformerConfig = field(default_factory=lambda: ConformerConfig(dim=144, layers=4, heads=4, subsample=4))
    # training (conformer kind, empty path): character CTC on the corpus' transcripts
    steps: int = 1500
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 100
    max_audio_s: float = 20.0  # longer training utterances are skipped (attention memory)
    # Training crops at word boundaries: a random run of whole words of at most this many seconds
    # and their transcript (needs the manifest's word times; utterances without them train whole).
    # 0 = whole utterances. The demo's are ~11 s: 4-s crops make a step ~3x cheaper.
    crop_s: float = 0.0
    max_minutes: float = 0.0  # wall-clock cap on training, 0 = none (a cap that bites makes units load-dependent)
    threads: int = 0  # torch threads while training (0 = leave as is)
    heldout_max: int = 40  # held-out utterances decoded greedily for the encoder's WER in metrics.json


@dataclass
class MfccCfg:
    """MFCC k-means units (:mod:`spiritlm.tokenizer.mfcc_units`): no encoder; the baseline a trained
    encoder is measured against. ``enabled`` replaces the ``[hubert]`` section like ``[semantic]``."""

    enabled: bool = False
    hop: int = 320  # samples between frames: 320 = 50 Hz (the demo HuBERT's rate), 640 = 25 Hz


@dataclass
class FitCfg:
    split: str = "train"  # manifest split used to fit codebooks ("" = all rows)
    max_files: int = 0  # 0 = all
    batch_seconds: float = 60.0  # audio per featurizer call while fitting


@dataclass
class ReleaseCfg:
    """Meta's released speech tokenizer files, used where they lie (no repackaging)."""

    path: str = ""  # the release's checkpoints/speech_tokenizer/ folder; when set, every stream comes from it
    variant: Literal["base", "expressive"] = "base"  # expressive adds pitch (F0 VQ-VAE) and style
    f0_method: Literal["yaapt", "fcpe"] = "yaapt"  # fcpe (the release's default) needs torchaudio: not here


@dataclass
class TokenizerCfg:
    name: str = "custom"
    seed: int = 0
    hubert: HubertCfg = field(default_factory=HubertCfg)
    units: UnitsCfg = field(default_factory=UnitsCfg)
    pitch: PitchCfg = field(default_factory=PitchCfg)
    style: StyleCfg = field(default_factory=StyleCfg)
    demo: DemoHubertCfg = field(default_factory=DemoHubertCfg)
    semantic: SemanticCfg = field(default_factory=SemanticCfg)
    mfcc: MfccCfg = field(default_factory=MfccCfg)
    fit: FitCfg = field(default_factory=FitCfg)
    release: ReleaseCfg = field(default_factory=ReleaseCfg)


def unit_family(cfg: TokenizerCfg) -> str:
    """The unit family a recipe fills the ``[Hu*]`` rows with: "semantic", "mfcc" or "hubert"."""
    return "semantic" if cfg.semantic.enabled else ("mfcc" if cfg.mfcc.enabled else "hubert")


def check_one_unit_family(cfg: TokenizerCfg) -> None:
    """A tokenizer has one unit family: refuse a recipe that asks for two, before any training."""
    if cfg.semantic.enabled and cfg.mfcc.enabled:
        raise ValueError("semantic.enabled and mfcc.enabled are both set; a tokenizer has one unit family: "
                         "drop one of them")
    if cfg.mfcc.enabled:
        if cfg.demo.enabled or cfg.release.path:
            raise ValueError("mfcc.enabled (MFCC k-means units, no encoder) is set with "
                             f"{'demo.enabled (a tiny HuBERT)' if cfg.demo.enabled else 'release.path (HuBERT units)'}"
                             "; a tokenizer has one unit family: drop one of them")
        if cfg.style.enabled and cfg.style.kind == "kmeans":
            raise ValueError("mfcc.enabled with style.kind = 'kmeans': style k-means pools an encoder layer, which "
                             "MFCC units have none of; use style.kind = 'classifier' or disable style")
        return
    if not cfg.semantic.enabled:
        return
    if cfg.demo.enabled:
        raise ValueError("demo.enabled (train a tiny HuBERT) and semantic.enabled (an ASR-supervised encoder) are "
                         "both set; a tokenizer has one unit family: drop one of them")
    if cfg.release.path:
        raise ValueError("semantic.enabled and release.path are both set: the release's files are HuBERT units; "
                         "drop one of them")


def preset_config(name: str, **paths: str) -> TokenizerCfg:
    """``base``: HuBERT layer 11 + 500 units. ``expressive``: plus YAAPT pitch (64) and style (100)."""
    if name not in ("base", "expressive"):
        raise ValueError(f"unknown preset {name!r}: choose 'base' or 'expressive'")
    cfg = TokenizerCfg(name=name)
    cfg.hubert.path = paths.get("hubert", "")
    cfg.units.path = paths.get("units", "")
    if name == "expressive":
        cfg.pitch.enabled = True
        cfg.pitch.path = paths.get("pitch", "")
        cfg.style.enabled = True
        cfg.style.path = paths.get("style", "")
        cfg.style.kind = "classifier" if cfg.style.path and not cfg.style.path.endswith(".npy") else "kmeans"
    return cfg
