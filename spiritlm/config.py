"""Typed configuration: dataclasses loaded from TOML/YAML recipes, overridable from the CLI.

Every stage describes its settings as a (nested) dataclass. ``load_config(Cls, recipe, overrides)``
reads a recipe file, applies ``--set section.key=value`` overrides (values parsed as YAML
scalars/lists), checks every key and type, and returns the dataclass. ``save_config`` writes the
resolved config (YAML) beside an output so a run can be repeated exactly.

    @dataclass
    class Train:
        lr: float = 3e-5
        model: ModelCfg = field(default_factory=ModelCfg)

    cfg = load_config(Train, "train/tiny.toml", ["lr=1e-4", "model.n_layers=2"])
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override that does not fit the config's schema; the message says what to fix."""


def read_recipe(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml", ".json"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{p}: recipes are .toml, .yaml/.yml or .json files")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{p}: cannot parse recipe: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a recipe must be a table/mapping at top level")
    return data


def parse_override_value(raw: str) -> Any:
    """A ``--set`` value: a TOML inline table or array when it parses as one (``{a = 1, b =
    "x"}``, as recipes write them; YAML would read ``{a = 1}`` as the key ``"a = 1"``), else a
    YAML scalar/list/mapping (``[1,2]``, ``true``, ``null``, ``{a: 1}``), else the raw string."""
    text = raw.strip()
    if not text:
        return ""
    if text[0] in "{[":
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            pass  # YAML flow style ({a: 1}, [a, b]) below
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """``a.b=value`` -> data["a"]["b"] = the parsed value (``x=[1,2]``, ``flag=true``, ``p=null``,
    ``t={a = 1}``): see :func:`parse_override_value`."""
    data = _deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value")
        value = parse_override_value(raw)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def load_config(
    cls: type[T],
    recipe: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: Mapping | None = None,
) -> T:
    data = dict(base or {})
    if recipe is not None:
        data = _merge(data, read_recipe(recipe))
    data = apply_overrides(data, overrides)
    where = str(recipe) if recipe else "config"
    return from_dict(cls, data, where)


def from_dict(cls: type[T], data: Mapping, where: str = "config") -> T:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(fields)}"
        )
    kwargs = {name: _coerce(hints[name], _over_factory_default(fields[name], data[name]), f"{where}.{name}")
              for name in data}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _over_factory_default(f: dataclasses.Field, value: Any) -> Any:
    """A partial table for a nested dataclass field updates the field's own default instance.

    ``corpus: CorpusCfg = field(default_factory=lambda: CorpusCfg(out_dir=""))`` with the
    override ``corpus.minutes=5`` keeps ``out_dir=""``; building ``CorpusCfg(minutes=5)`` would
    silently fall back to the class default instead.
    """
    if not isinstance(value, Mapping) or f.default_factory is dataclasses.MISSING:
        return value
    default = f.default_factory()
    if not dataclasses.is_dataclass(default):
        return value
    init = {g.name for g in dataclasses.fields(default) if g.init}
    base = {k: v for k, v in to_dict(default).items() if k in init}
    return _merge(base, value)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {args}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, where)
    if origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple or tp is tuple else out
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "3e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    return value


def to_dict(cfg: Any) -> Any:
    """Dataclass -> plain YAML-able data (Paths become strings, tuples lists)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def dotted(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: a (nested) config dict by the keys ``--set`` takes."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(dotted(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically); reload with ``load_config(Cls, path)``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(dump_config(cfg), encoding="utf-8")
    tmp.replace(p)
    return p


def _merge(a: dict, b: Mapping) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d
