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

Layouts: the release's "converted" ``mhubert_base_25hz.pt`` is a dict ``{model_cfg, task_cfg,
model_weight, dictionaries_symbols}`` (plain option dicts, fairseq parameter names); original
fairseq checkpoints are ``{args | cfg, model, ...}``. Config fields read from ``model_cfg`` /
``cfg["model"]`` / ``args``: encoder_layers, encoder_embed_dim, encoder_ffn_embed_dim,
encoder_attention_heads, conv_feature_layers, conv_pos, conv_pos_groups, extractor_mode,
layer_norm_first, conv_bias, activation_fn; from ``task_cfg`` / ``cfg["task"]`` / ``args``:
``normalize`` (layer-norm the waveform first), kept as ``config.normalize_waveform``.
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


def numpy_safe_globals() -> list:
    """numpy's array/scalar rebuild functions, allow-listed for ``torch.load(weights_only=True)``
    under both module names numpy 1.x and 2.x pickle them with (k-means ``.pt`` files hold
    ``cluster_centers`` as a numpy array). Rebuilding an array runs no user code."""
    import numpy

    mod = numpy._core.multiarray if hasattr(numpy, "_core") else numpy.core.multiarray
    out: list = [numpy.ndarray, numpy.dtype]
    for name in ("_reconstruct", "scalar"):
        fn = getattr(mod, name)
        out += [(fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    for t in ("Float16DType", "Float32DType", "Float64DType", "Int32DType", "Int64DType", "BoolDType"):
        if hasattr(numpy, "dtypes") and hasattr(numpy.dtypes, t):
            out.append(getattr(numpy.dtypes, t))
    return out


def safe_load_checkpoint(path: str | Path) -> Any:
    """Load a ``.pt`` checkpoint (fairseq, the release's converted files, k-means dicts with numpy
    arrays) without executing arbitrary pickled code: ``weights_only=True`` with
    ``argparse.Namespace`` and numpy arrays allowed, else the restricted unpickler above."""
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace, *numpy_safe_globals()]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # e.g. omegaconf DictConfig in cfg: use the restricted unpickler below
    except Exception as e:  # noqa: BLE001 -- not a torch file at all (text, truncated zip, ...)
        raise ValueError(f"{path}: cannot read as a PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: cannot read as a PyTorch checkpoint ({type(e).__name__}: {e})") from None


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


def fairseq_task_cfg(ckpt: dict) -> dict:
    """The task options (``normalize``, ``sample_rate``) of a fairseq checkpoint ({} when absent)."""
    if ckpt.get("cfg") is not None:
        cfg = _plain(ckpt["cfg"])
        task = cfg.get("task") if isinstance(cfg, dict) else None
        if isinstance(task, dict):
            return task
    if ckpt.get("args") is not None:
        return _plain(ckpt["args"])  # old fairseq: one namespace for model and task
    return {}


CONVERTED_KEYS = ("model_cfg", "task_cfg", "model_weight")  # + "dictionaries_symbols" (pre-training labels)


def read_hubert_checkpoint(path: str | Path) -> tuple[dict, dict, dict, str]:
    """A HuBERT ``.pt`` -> (fairseq-named state_dict, model config, task config, layout).

    Two layouts: the release's "converted" dict ``{model_cfg, task_cfg, model_weight,
    dictionaries_symbols}`` (plain dicts, fairseq parameter names) and original fairseq
    checkpoints ``{args | cfg, model, ...}``. Nothing pickled is executed (``safe_load_checkpoint``).
    """
    ckpt = safe_load_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a HuBERT checkpoint (a {type(ckpt).__name__}, expected a dict)")
    if any(k in ckpt for k in CONVERTED_KEYS):
        missing = [k for k in CONVERTED_KEYS if k not in ckpt]
        if missing:
            raise ValueError(f"{path}: a converted HuBERT checkpoint (the release's layout) needs the keys "
                             f"{list(CONVERTED_KEYS)} (+ dictionaries_symbols); {missing} missing")
        mcfg, tcfg, sd, layout = _plain(ckpt["model_cfg"]), _plain(ckpt["task_cfg"] or {}), ckpt["model_weight"], "converted"
        if not isinstance(mcfg, dict) or not isinstance(tcfg, dict):
            raise ValueError(f"{path}: model_cfg and task_cfg must be dicts of options, got "
                             f"{type(mcfg).__name__} and {type(tcfg).__name__}")
    elif "model" in ckpt:
        mcfg, tcfg, sd, layout = fairseq_model_cfg(ckpt), fairseq_task_cfg(ckpt), ckpt["model"], "fairseq"
    else:
        raise ValueError(
            f"{path}: not a HuBERT checkpoint: expected the release's converted layout {{model_cfg, task_cfg, "
            f"model_weight, dictionaries_symbols}} or a fairseq checkpoint {{args | cfg, model}}; found keys "
            f"{sorted(map(str, ckpt))[:10]}")
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: the {'model_weight' if layout == 'converted' else 'model'} entry must be a "
                         "non-empty state_dict of tensors")
    if mcfg.get("conv_pos_batch_norm"):
        raise ValueError(f"{path}: conv_pos_batch_norm=True (batch-norm positional conv) is not supported; "
                         "only fairseq's default weight-normed positional conv maps onto HF HubertModel")
    if mcfg.get("layer_type", "transformer") != "transformer":
        raise ValueError(f"{path}: layer_type={mcfg.get('layer_type')!r}: only 'transformer' encoders are supported")
    return sd, mcfg, tcfg, layout


def load_fairseq_hubert(path: str | Path):
    """HuBERT checkpoint (release "converted" or fairseq layout) -> HF HubertModel (eval mode).

    Every HF weight must be filled. The task's ``normalize`` flag is kept as
    ``model.config.normalize_waveform`` (``HubertFeaturizer`` then layer-normalises each chunk).
    """
    from transformers import HubertModel

    fs_sd, mcfg, tcfg, _layout = read_hubert_checkpoint(path)
    config = hubert_config_from_fairseq(mcfg)
    config.normalize_waveform = bool(tcfg.get("normalize", False))
    model = HubertModel(config)
    sd, _dropped = convert_state_dict(fs_sd)
    if "feature_projection.projection.weight" not in sd:  # fairseq has no post_extract_proj when
        dim = config.hidden_size  # conv dim == encoder dim: HF always projects, so use the identity
        if config.conv_dim[-1] == dim:
            sd["feature_projection.projection.weight"] = torch.eye(dim)
            sd["feature_projection.projection.bias"] = torch.zeros(dim)
    sd.setdefault("masked_spec_embed", torch.zeros(config.hidden_size))  # training-only mask vector
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatch: weights and config disagree
        raise ValueError(f"{path}: weights do not fit the HuBERT its config describes: {str(e)[:400]}") from None
    if missing or unexpected:
        raise ValueError(
            f"{path}: fairseq -> HF conversion mismatch; missing {missing[:8]}, unexpected "
            f"{unexpected[:8]} (is this a HuBERT checkpoint with the shapes its config names?)"
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
