"""The hybrid-input LM: unit embedding fused with a projected continuous frame at speech positions.

    model = build_hybrid(cfg)                      # a HybridTrainConfig
    logits_BTV = model(batch)                      # batch: spiritlm.models.hybrid.data

``batch``: ``input_ids_BT``, ``position_ids_BT`` (restarting per packed document), ``feats_BTD``
and ``feat_mask_BT`` (True where the position is a speech frame with a feature). The LM is the
unit LM's (``spiritlm.models.unit_lm.model.build_model``: LLaMA + the speech vocabulary), so a hybrid and a
tokens-only model (``features.kind = "none"``) differ by the feature path only.

Fusion at feature positions (elsewhere the plain token embedding):

* ``concat`` (Whisper-GPT): ``W [e_t ; p_t]`` with ``W`` initialised to ``[I | 0]``;
* ``sum``: ``e_t + W p_t`` with ``W`` initialised to 0.

Either way a freshly built hybrid model computes exactly the tokens-only model's logits (tested):
the features start from "no effect" and the comparison measures what training makes of them.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from spiritlm.artifacts import ArtifactError, load_tensors, read_json, typed_section
from spiritlm.components.checkpoint import replace_dir
from spiritlm.config import ConfigError
from spiritlm.models.hybrid.config import HybridConfig, HybridTrainConfig

log = logging.getLogger(__name__)
CONFIG_FILE = "hybrid.json"
PARTS_FILE = "hybrid_parts.safetensors"


class _Block(nn.Module):
    """Pre-norm residual MLP on one frame (light: no attention, so trivially causal)."""

    def __init__(self, d: int, mult: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, mult * d)
        self.down = nn.Linear(mult * d, d)

    def forward(self, x):
        return x + self.down(nn.functional.gelu(self.up(self.norm(x))))


class FrameProjector(nn.Module):
    """``(..., D_feat) -> (..., P)``: per-frame input norm (log-mel scales differ by bin), a
    linear map, ``blocks`` light blocks, a final norm."""

    def __init__(self, d_in: int, d: int, blocks: int = 2, mult: int = 2):
        super().__init__()
        self.norm_in = nn.LayerNorm(d_in)
        self.inp = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList([_Block(d, mult) for _ in range(blocks)])
        self.norm_out = nn.LayerNorm(d)

    def forward(self, x):
        h = self.inp(self.norm_in(x))
        for b in self.blocks:
            h = b(h)
        return self.norm_out(h)


class HybridLM(nn.Module):
    def __init__(self, cfg: HybridConfig, lm: nn.Module, layout, feat_dim: int, seed: int = 0):
        super().__init__()
        self.cfg, self.lm, self.layout, self.feat_dim = cfg, lm, layout, feat_dim
        H = lm.config.hidden_size
        self.config = lm.config  # the trainer reads model.config (FLOPs per token)
        self.projector = self.fuse = None
        if cfg.features.kind != "none":
            P = cfg.projector.dim or H
            with torch.random.fork_rng():  # the feature path's initial weights depend on the seed only
                torch.manual_seed(seed)
                self.projector = FrameProjector(feat_dim, P, cfg.projector.blocks, cfg.projector.mult)
                self.fuse = nn.Linear(H + P if cfg.fusion == "concat" else P, H, bias=False)
            with torch.no_grad():  # start as the tokens-only model
                self.fuse.weight.zero_()
                if cfg.fusion == "concat":
                    self.fuse.weight[:, :H] = torch.eye(H)

    @property
    def hybrid(self) -> bool:
        return self.projector is not None

    def embed(self, input_ids_BT, feats_BTD=None, feat_mask_BT=None) -> torch.Tensor:
        e_BTH = self.lm.get_input_embeddings()(input_ids_BT)
        if not self.hybrid or feat_mask_BT is None or not bool(feat_mask_BT.any()):
            return e_BTH
        m = feat_mask_BT.to(e_BTH.device)
        p_NP = self.projector(feats_BTD.to(e_BTH.device, e_BTH.dtype)[m])
        e_NH = e_BTH[m]
        fused_NH = self.fuse(torch.cat([e_NH, p_NP], -1)) if self.cfg.fusion == "concat" else e_NH + self.fuse(p_NP)
        return e_BTH.masked_scatter(m[..., None], fused_NH.to(e_BTH.dtype))

    def hidden(self, input_ids_BT, feats_BTD=None, feat_mask_BT=None, position_ids_BT=None, attention_mask=None):
        x = self.embed(input_ids_BT, feats_BTD, feat_mask_BT)
        base = getattr(self.lm, self.lm.base_model_prefix)
        return base(inputs_embeds=x, position_ids=position_ids_BT, attention_mask=attention_mask,
                    use_cache=False).last_hidden_state

    def forward(self, batch: dict) -> torch.Tensor:
        from spiritlm.components.packing import block_mask_B1TT

        dev = self.lm.get_input_embeddings().weight.device
        pos = batch["position_ids_BT"].to(dev)
        h = self.hidden(batch["input_ids_BT"].to(dev), batch.get("feats_BTD"), batch.get("feat_mask_BT"), pos,
                        block_mask_B1TT(pos, self.lm.get_input_embeddings().weight.dtype))
        return self.lm.get_output_embeddings()(h)

    def gradient_checkpointing_enable(self, **kw):
        self.lm.gradient_checkpointing_enable(**kw)

    # ---- parts ----------------------------------------------------------------------------------
    def param_counts(self) -> dict[str, dict[str, int]]:
        parts = {"lm": list(self.lm.parameters())}
        if self.hybrid:
            parts["projector"] = list(self.projector.parameters())
            parts["fusion"] = list(self.fuse.parameters())
        out = {k: {"trainable": sum(p.numel() for p in ps if p.requires_grad), "total": sum(p.numel() for p in ps)}
               for k, ps in parts.items()}
        out["all"] = {k: sum(v[k] for v in out.values()) for k in ("trainable", "total")}
        return out

    def feature_state(self) -> dict:
        if not self.hybrid:
            return {}
        sd = {f"projector.{k}": v for k, v in self.projector.state_dict().items()}
        sd.update({f"fuse.{k}": v for k, v in self.fuse.state_dict().items()})
        return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}

    def save(self, out: Path, tokenizer_dir: str | None = None, extra_files: dict | None = None) -> Path:
        """``out``: the LM as a HF checkpoint (the unit LM's export, so ``spiritlm eval`` tools read
        it), ``hybrid.json`` (settings, feature dim, frame rate) and the feature path's weights."""
        from safetensors.torch import save_file

        from spiritlm.components.checkpoint import add_legacy_config_fields

        out = Path(out)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.lm.state_dict().items()}
        self.lm.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        add_legacy_config_fields(tmp / "config.json")
        if tokenizer_dir:
            from spiritlm.text_tokenizer import SpiritTokenizer

            SpiritTokenizer.from_pretrained(tokenizer_dir, layout=self.layout).save_pretrained(tmp)
        if self.hybrid:
            save_file(self.feature_state(), tmp / PARTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps({"hybrid": asdict(self.cfg), "feat_dim": self.feat_dim,
                                                   "frame_rate": self.frame_rate}, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        return replace_dir(tmp, out)  # out is the old export, the new one or absent, never partial

    frame_rate: float = 0.0  # unit frames per second (set by the builder from the shards)

    def make_scorer(self, tokenizer, encoder, scoring=None):
        """The evaluation suite's scorer for this model (``spiritlm.eval.suite`` calls it)."""
        from spiritlm.models.hybrid.scoring import make_scorer

        return make_scorer(self, tokenizer, encoder, scoring)


def feature_dim(cfg: HybridConfig) -> int:
    f = cfg.features
    if f.kind == "logmel":
        return f.n_mels
    if f.kind == "hubert":
        import json as _json

        p = Path(f.hubert)
        p = p / "hubert" if (p / "hubert" / "config.json").is_file() else p
        return int(_json.loads((p / "config.json").read_text())["hidden_size"])
    return 0


def build_hybrid(cfg: HybridTrainConfig, ds_config=None, dtype=torch.float32, frame_rate: float = 0.0) -> HybridLM:
    from spiritlm.models.hybrid.config import validate_hybrid
    from spiritlm.models.unit_lm.model import build_model

    validate_hybrid(cfg)
    lm, layout, _ = build_model(cfg.model, None, dtype)
    model = HybridLM(cfg.hybrid, lm, layout, feature_dim(cfg.hybrid), seed=cfg.seed)
    model.frame_rate = frame_rate
    return model.to(dtype)


def load_hybrid(directory: str | Path, device: str = "cpu", dtype=torch.float32):
    """A directory written by :meth:`HybridLM.save` -> (model in eval mode, SpiritTokenizer)."""
    from spiritlm.models.unit_lm.load import load_model

    d = Path(directory)
    f = d / CONFIG_FILE
    if not f.is_file():
        raise ConfigError(f"{d}: no {CONFIG_FILE}; not a hybrid-input model export (spiritlm train with a "
                          "train/hybrid_*.toml recipe writes one to <run_dir>/hf)")
    meta = read_json(f)
    from spiritlm.config import load_config

    hc = typed_section(f, lambda h: load_config(HybridTrainConfig, None, [], base={"hybrid": h}).hybrid, "hybrid")
    if "feat_dim" not in meta:
        raise ArtifactError(f"{f}: has no 'feat_dim'; it was not written by this version's export: re-export the model")
    lm, tok = load_model(d, "cpu", {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype])
    model = HybridLM(hc, lm, tok.layout, int(meta["feat_dim"]))
    model.frame_rate = float(meta.get("frame_rate", 0.0))
    if model.hybrid:
        state = load_tensors(d / PARTS_FILE)
        model.projector.load_state_dict({k[len("projector."):]: v for k, v in state.items() if k.startswith("projector.")})
        model.fuse.load_state_dict({k[len("fuse."):]: v for k, v in state.items() if k.startswith("fuse.")})
    return model.to(device=device, dtype=dtype).eval(), tok
