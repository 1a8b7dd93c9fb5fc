"""Convert a fairseq HuBERT checkpoint (``mhubert_base_25hz.pt`` kind) into a HF ``HubertModel``.

Loading never executes pickled code. We first try ``torch.load(weights_only=True)`` with
``argparse.Namespace`` allowed (older fairseq stores its options as ``args``). Newer checkpoints
store an omegaconf ``cfg``; omegaconf classes are not importable here, so we fall back to a
restricted unpickler in which only tensor-rebuild functions, plain containers and numpy scalars
resolve to real objects and every other global (omegaconf nodes, enums, ...) becomes an inert
:class:`_Inert` placeholder that merely records its constructor arguments and state. The config
values are then read back out of those placeholders (``DictConfig._content`` -> node ``_val``).

Key mapping (fairseq ``model`` state_dict -> HF ``HubertModel``)::

    feature_extractor.conv_layers.{i}.0.weight       -> feature_extractor.conv_layers.{i}.conv.weight
    feature_extractor.conv_layers.0.2.{weight,bias}  -> feature_extractor.conv_layers.0.layer_norm.*   (GroupNorm, "default" mode)
    feature_extractor.conv_layers.{i}.2.1.*          -> feature_extractor.conv_layers.{i}.layer_norm.* ("layer_norm" mode)
    layer_norm.*                                     -> feature_projection.layer_norm.*
    post_extract_proj.*                              -> feature_projection.projection.*
    encoder.pos_conv.0.weight_g / weight_v / bias    -> encoder.pos_conv_embed.conv.parametrizations.weight.original0 / original1 / bias
    encoder.layer_norm.*                             -> encoder.layer_norm.*
    encoder.layers.{i}.self_attn.{q,k,v,out}_proj.*  -> encoder.layers.{i}.attention.{q,k,v,out}_proj.*
    encoder.layers.{i}.self_attn_layer_norm.*        -> encoder.layers.{i}.layer_norm.*
    encoder.layers.{i}.fc1.* / fc2.*                 -> encoder.layers.{i}.feed_forward.intermediate_dense.* / output_dense.*
    encoder.layers.{i}.final_layer_norm.*            -> encoder.layers.{i}.final_layer_norm.*
    mask_emb                                         -> masked_spec_embed
    final_proj.*, label_embs_concat, ...             -> dropped (pre-training heads)

Config fields read from ``cfg["model"]`` (or ``args``): encoder_layers, encoder_embed_dim,
encoder_ffn_embed_dim, encoder_attention_heads, conv_feature_layers, conv_pos, conv_pos_groups,
extractor_mode, layer_norm_first, conv_bias, activation_fn.
"""

from __future__ import annotations

import argparse
import ast
import collections
import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch

_DROP_PREFIXES = ("final_proj.", "label_embs_concat", "label_embs", "target_glu.", "encoder.pos_conv.0.weight_g_")

_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): argparse.Namespace,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
}


class _Inert:
    """Stand-in for any non-whitelisted global: records args/state, runs nothing."""

    _qualname = "?"

    def __init__(self, *args, **kwargs):
        self._args, self._kwargs, self._state = args, kwargs, None

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj._args, obj._kwargs, obj._state = args, kwargs, None
        return obj

    def __setstate__(self, state):
        self._state = state

    def __setitem__(self, k, v):  # SETITEM(S) on dict subclasses
        if self._state is None:
            self._state = {}
        if isinstance(self._state, dict):
            self._state.setdefault("_items", {})[k] = v

    def append(self, v):  # APPEND(S) on list subclasses
        self.extend([v])

    def extend(self, vs):
        if self._state is None:
            self._state = {}
        self._state.setdefault("_list", []).extend(vs)

    def __repr__(self):
        return f"<inert {self._qualname}>"


def _inert_class(module: str, name: str) -> type:
    return type(name, (_Inert,), {"_qualname": f"{module}.{name}"})


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        key = (module, name)
        if key in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[key]
        if module == "torch" and re.fullmatch(r"(float|bfloat|int|uint|complex)\d*|bool|half|double|long", name):
            return getattr(torch, name)  # dtype objects
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in ("scalar", "_reconstruct"):
            import numpy

            mod = numpy.core.multiarray if hasattr(numpy, "core") else numpy._core.multiarray
            return getattr(mod, name)
        if module == "numpy" and name in ("dtype", "ndarray"):
            import numpy

            return getattr(numpy, name)
        return _inert_class(module, name)


class _RestrictedPickleModule:
    Unpickler = _RestrictedUnpickler
    __name__ = "spiritlm_restricted_pickle"

    @staticmethod
    def load(f, **kw):
        return _RestrictedUnpickler(f, **kw).load()

    @staticmethod
    def loads(b, **kw):
        return _RestrictedUnpickler(io.BytesIO(b), **kw).load()


def safe_load_checkpoint(path: str | Path) -> dict:
    """Load a fairseq checkpoint without executing arbitrary pickled code."""
    path = str(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # e.g. omegaconf DictConfig in cfg: use the restricted unpickler below
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: cannot read as a fairseq checkpoint ({type(e).__name__}: {e})") from None


def _plain(obj: Any) -> Any:
    """Placeholders/Namespaces -> plain dicts/lists/values (omegaconf containers and nodes)."""
    if isinstance(obj, argparse.Namespace):
        return {k: _plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, _Inert):
        st = obj._state
        if isinstance(st, tuple) and len(st) == 2 and isinstance(st[1], dict):
            st = {**(st[0] or {}), **st[1]}  # (dict state, slot state)
        if isinstance(st, dict):
            if "_content" in st:  # omegaconf DictConfig/ListConfig
                return _plain(st["_content"])
            if "_val" in st:  # omegaconf value node
                return _plain(st["_val"])
            if "_items" in st:
                return _plain(st["_items"])
            if "_list" in st:
                return _plain(st["_list"])
        if obj._args:
            return _plain(obj._args[0]) if len(obj._args) == 1 else [_plain(a) for a in obj._args]
        return None
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` string, e.g. "[(512,10,5)] + [(512,3,2)] * 4", without eval."""
    out: list[tuple[int, int, int]] = []
    for term in spec.split("+"):
        term = term.strip()
        m = re.fullmatch(r"(\[.*\])\s*(?:\*\s*(\d+))?", term, flags=re.S)
        if not m:
            raise ValueError(f"cannot parse conv_feature_layers term {term!r} in {spec!r}")
        items = ast.literal_eval(m.group(1))
        out.extend([tuple(int(v) for v in it) for it in items] * int(m.group(2) or 1))
    return out


def fairseq_model_cfg(ckpt: dict) -> dict:
    if ckpt.get("cfg") is not None:
        cfg = _plain(ckpt["cfg"])
        model_cfg = cfg.get("model") if isinstance(cfg, dict) else None
        if isinstance(model_cfg, dict):
            return model_cfg
    if ckpt.get("args") is not None:
        return _plain(ckpt["args"])
    raise ValueError("fairseq checkpoint has neither cfg['model'] nor args: cannot build the HuBERT config")


def hubert_config_from_fairseq(mcfg: dict):
    from transformers import HubertConfig

    layers = parse_conv_layers(mcfg.get("conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"))
    mode = mcfg.get("extractor_mode", "default")
    return HubertConfig(
        hidden_size=int(mcfg.get("encoder_embed_dim", 768)),
        num_hidden_layers=int(mcfg.get("encoder_layers", 12)),
        num_attention_heads=int(mcfg.get("encoder_attention_heads", 12)),
        intermediate_size=int(mcfg.get("encoder_ffn_embed_dim", 3072)),
        hidden_act=mcfg.get("activation_fn", "gelu"),
        conv_dim=tuple(c for c, _, _ in layers),
        conv_kernel=tuple(k for _, k, _ in layers),
        conv_stride=tuple(s for _, _, s in layers),
        conv_bias=bool(mcfg.get("conv_bias", False)),
        num_conv_pos_embeddings=int(mcfg.get("conv_pos", 128)),
        num_conv_pos_embedding_groups=int(mcfg.get("conv_pos_groups", 16)),
        feat_extract_norm="layer" if mode == "layer_norm" else "group",
        do_stable_layer_norm=bool(mcfg.get("layer_norm_first", False)),
        feat_proj_layer_norm=True,
    )


_LAYER_RULES = [
    (r"self_attn\.(q|k|v|out)_proj\.", r"attention.\1_proj."),
    (r"self_attn_layer_norm\.", "layer_norm."),
    (r"fc1\.", "feed_forward.intermediate_dense."),
    (r"fc2\.", "feed_forward.output_dense."),
    (r"final_layer_norm\.", "final_layer_norm."),
]


def map_fairseq_key(key: str) -> str | None:
    """fairseq HuBERT parameter name -> HF HubertModel name (None = not part of HubertModel)."""
    if key.startswith(_DROP_PREFIXES):
        return None
    m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(.+)", key)
    if m:
        i, rest = m.groups()
        rest = {"0.weight": "conv.weight", "0.bias": "conv.bias", "2.weight": "layer_norm.weight",
                "2.bias": "layer_norm.bias", "2.1.weight": "layer_norm.weight",
                "2.1.bias": "layer_norm.bias"}.get(rest)
        return f"feature_extractor.conv_layers.{i}.{rest}" if rest else None
    if key.startswith("layer_norm."):
        return "feature_projection." + key
    if key.startswith("post_extract_proj."):
        return key.replace("post_extract_proj.", "feature_projection.projection.")
    if key == "mask_emb":
        return "masked_spec_embed"
    if key.startswith("encoder.pos_conv.0."):
        leaf = key[len("encoder.pos_conv.0."):]  # newer torch: parametrizations.weight.original0/1
        leaf = {"weight_g": "parametrizations.weight.original0",
                "weight_v": "parametrizations.weight.original1"}.get(leaf, leaf)
        return f"encoder.pos_conv_embed.conv.{leaf}"
    if key.startswith("encoder.layer_norm."):
        return key
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key)
    if m:
        i, rest = m.groups()
        for pat, rep in _LAYER_RULES:
            if re.match(pat, rest):
                return f"encoder.layers.{i}." + re.sub(pat, rep, rest, count=1)
        return None
    return None


def convert_state_dict(fs_sd: dict) -> tuple[dict, list[str]]:
    out, dropped = {}, []
    for k, v in fs_sd.items():
        hk = map_fairseq_key(k)
        if hk is None:
            dropped.append(k)
        else:
            out[hk] = v
    return out, dropped


def load_fairseq_hubert(path: str | Path):
    """fairseq HuBERT checkpoint -> HF HubertModel (eval mode); every HF weight must be filled."""
    from transformers import HubertModel

    ckpt = safe_load_checkpoint(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path}: not a fairseq checkpoint (expected a dict with a 'model' state_dict)")
    config = hubert_config_from_fairseq(fairseq_model_cfg(ckpt))
    model = HubertModel(config)
    sd, _dropped = convert_state_dict(ckpt["model"])
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: fairseq -> HF conversion mismatch; missing {missing[:8]}, unexpected "
            f"{unexpected[:8]} (is this a HuBERT checkpoint?)"
        )
    return model.eval()


def to_fairseq_state_dict(model) -> dict:
    """Inverse mapping, HF HubertModel -> fairseq names (used to build test checkpoints)."""
    inv = {}
    fs_keys = []
    cfg = model.config
    for i in range(len(cfg.conv_dim)):
        fs_keys.append(f"feature_extractor.conv_layers.{i}.0.weight")
        if cfg.conv_bias:
            fs_keys.append(f"feature_extractor.conv_layers.{i}.0.bias")
        if cfg.feat_extract_norm == "layer" or i == 0:
            sub = "2.1" if cfg.feat_extract_norm == "layer" else "2"
            fs_keys += [f"feature_extractor.conv_layers.{i}.{sub}.weight", f"feature_extractor.conv_layers.{i}.{sub}.bias"]
    fs_keys += ["layer_norm.weight", "layer_norm.bias", "post_extract_proj.weight", "post_extract_proj.bias",
                "mask_emb", "encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_v", "encoder.pos_conv.0.bias",
                "encoder.layer_norm.weight", "encoder.layer_norm.bias"]
    for i in range(cfg.num_hidden_layers):
        for name in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                     "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm"]:
            fs_keys += [f"encoder.layers.{i}.{name}.weight", f"encoder.layers.{i}.{name}.bias"]
    for k in fs_keys:
        inv[map_fairseq_key(k)] = k
    sd = model.state_dict()
    return {inv[k]: v.clone() for k, v in sd.items() if k in inv}
