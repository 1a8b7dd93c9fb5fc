"""Reading the release's unit HiFi-GAN files (``hifigan_spiritlm_base/``,
``hifigan_spiritlm_expressive_w2v2/``) without running pickled code.

Facts used (from the published layout, not from its code):

* ``config.json``: the HiFi-GAN training config; the generator fields are those of
  :class:`~spiritlm.vocoder.model.GeneratorCfg` (``multispkr``/``multistyle`` may be a string
  such as ``"from_input_file"``: any true value means "on"); ``f0`` (continuous F0 input) and
  ``embedder_params`` (d-vector speakers) are other variants of the family, refused clearly.
* ``generator.pt``: ``{"generator": state_dict}`` (a bare state_dict is accepted too), convs
  saved under weight normalisation as ``<name>.weight_g`` / ``<name>.weight_v`` (older torch) or
  ``<name>.parametrizations.weight.original0`` / ``original1`` (newer torch):
  ``weight = g * v / ||v||``, the norm taken over every axis but the one ``g`` keeps.
* ``speakers.txt`` / ``styles.txt``: one label per line, the index is the embedding row. The
  release decodes with speaker 2 by default and, for Base, global style 8 ("conv-default").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from spiritlm.vocoder.model import GeneratorCfg

VARIANT_DIRS = {"base": "hifigan_spiritlm_base", "expressive": "hifigan_spiritlm_expressive_w2v2"}
RELEASE_DEFAULTS = {"base": {"speaker": 2, "style": 8}, "expressive": {"speaker": 2, "style": None}}


class VocoderFileError(ValueError):
    """A vocoder file that is missing or not what it claims; the message names the file."""


def generator_cfg_from_json(cfg: dict[str, Any], where: str = "config.json") -> GeneratorCfg:
    if cfg.get("f0"):
        raise VocoderFileError(f"{where}: 'f0': true (continuous F0 input) is a speech-resynthesis variant this "
                               "loader does not support; Spirit LM's vocoders take pitch codes (num_f0_tokens)")
    if cfg.get("embedder_params"):
        raise VocoderFileError(f"{where}: 'embedder_params' (speaker d-vectors) is not supported; Spirit LM's "
                               "vocoders use a speaker table (multispkr)")
    missing = [k for k in ("upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel",
                           "resblock_kernel_sizes", "resblock_dilation_sizes", "num_embeddings", "embedding_dim")
               if k not in cfg]
    if missing:
        raise VocoderFileError(f"{where}: missing HiFi-GAN generator field(s) {missing}")
    if str(cfg.get("resblock", "1")) != "1":
        raise VocoderFileError(f"{where}: resblock {cfg['resblock']!r}: only HiFi-GAN's type-1 residual block "
                               "(the one the unit vocoders use) is implemented")
    g = GeneratorCfg(
        num_embeddings=int(cfg["num_embeddings"]), embedding_dim=int(cfg["embedding_dim"]),
        model_in_dim=int(cfg.get("model_in_dim", 0)),
        upsample_rates=[int(x) for x in cfg["upsample_rates"]],
        upsample_kernel_sizes=[int(x) for x in cfg["upsample_kernel_sizes"]],
        upsample_initial_channel=int(cfg["upsample_initial_channel"]),
        resblock_kernel_sizes=[int(x) for x in cfg["resblock_kernel_sizes"]],
        resblock_dilation_sizes=[[int(d) for d in ds] for ds in cfg["resblock_dilation_sizes"]],
        code_hop_size=int(cfg.get("code_hop_size", 0)) or 0,
        sampling_rate=int(cfg.get("sampling_rate", 16000)),
        num_f0_tokens=int(cfg.get("num_f0_tokens") or 0), f0_hop_size=int(cfg.get("f0_hop_size", 1280)),
        num_style_tokens=int(cfg.get("num_style_tokens") or 0), style_hop_size=int(cfg.get("style_hop_size", 16000)),
        multispkr=bool(cfg.get("multispkr")), num_speakers=int(cfg.get("num_speakers", 200)),
        multistyle=bool(cfg.get("multistyle")), num_styles=int(cfg.get("num_styles", 100)),
        dur_predictor_params=dict(cfg["dur_predictor_params"]) if cfg.get("dur_predictor_params") else None,
    )
    if not g.code_hop_size:
        g.code_hop_size = g.hop
    if g.code_hop_size != g.hop:
        raise VocoderFileError(f"{where}: code_hop_size {g.code_hop_size} but the upsampling rates "
                               f"{g.upsample_rates} multiply to {g.hop}")
    try:
        return g.validate()
    except ValueError as e:
        raise VocoderFileError(f"{where}: {e}") from None


def fold_weight_norm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every weight-normalised pair by its plain ``weight``."""
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        for g_suffix, v_suffix in ((".weight_g", ".weight_v"),
                                   (".parametrizations.weight.original0", ".parametrizations.weight.original1")):
            if k.endswith(g_suffix):
                pairs.setdefault(k[: -len(g_suffix)], {})["g"] = v
                break
            if k.endswith(v_suffix):
                pairs.setdefault(k[: -len(v_suffix)], {})["v"] = v
                break
        else:
            out[k] = v
    for name, p in pairs.items():
        if set(p) != {"g", "v"}:
            raise VocoderFileError(f"weight-normalised {name}: only one of magnitude/direction is present")
        g, v = p["g"].float(), p["v"].float()
        keep = [d for d in range(v.dim()) if g.shape[d] != 1] if g.dim() == v.dim() else []
        if g.dim() != v.dim() or len(keep) > 1 or (keep and g.shape[keep[0]] != v.shape[keep[0]]):
            raise VocoderFileError(f"weight-normalised {name}: magnitude {tuple(g.shape)} does not fit direction "
                                   f"{tuple(v.shape)}")
        dims = [d for d in range(v.dim()) if d not in keep]
        out[f"{name}.weight"] = g * v / torch.linalg.vector_norm(v, dim=dims, keepdim=True)
    return out


def read_generator_state(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise VocoderFileError(f"{path} not found: a release vocoder folder holds generator.pt")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickled code, or not a torch file at all
        raise VocoderFileError(f"{path}: not loadable as tensors with weights_only=True ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200]}); expected {{'generator': state_dict}}") from None
    if isinstance(obj, dict) and "generator" in obj:
        obj = obj["generator"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VocoderFileError(f"{path}: expected {{'generator': state_dict}} (tensors by name), got "
                               f"{type(obj).__name__} with keys {list(obj)[:5] if isinstance(obj, dict) else '-'}")
    return fold_weight_norm(obj)


def read_labels(path: Path) -> list[str]:
    return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]


def release_dir(directory: str | Path, variant: str) -> Path:
    """``speech_tokenizer/`` (or the vocoder folder itself) -> the variant's vocoder folder."""
    if variant not in VARIANT_DIRS:
        raise ValueError(f"variant={variant!r}: use 'base' or 'expressive'")
    d = Path(directory)
    if (d / "generator.pt").is_file():
        return d
    sub = d / VARIANT_DIRS[variant]
    if not (sub / "generator.pt").is_file():
        raise VocoderFileError(f"{sub / 'generator.pt'} not found: point at the release's speech_tokenizer/ folder "
                               f"(holding {VARIANT_DIRS[variant]}/) or at the vocoder folder itself")
    return sub


def read_release_config(d: Path) -> GeneratorCfg:
    p = d / "config.json"
    if not p.is_file():
        raise VocoderFileError(f"{p} not found: the release's vocoder folder has config.json beside generator.pt")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise VocoderFileError(f"{p}: not JSON ({e})") from None
    if not isinstance(raw, dict):
        raise VocoderFileError(f"{p}: expected a JSON object of HiFi-GAN settings")
    return generator_cfg_from_json(raw, str(p))
