"""Typed recipes: TOML/YAML -> dataclasses, CLI overrides, resolved config round trip."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from spiritlm.config import ConfigError, load_config, save_config


@dataclass
class Inner:
    n_layers: int = 2
    dims: list[int] = field(default_factory=lambda: [8, 16])
    act: Literal["relu", "gelu"] = "gelu"


@dataclass
class Outer:
    lr: float = 3e-5
    name: str = "run"
    out_dir: Path = Path("runs/x")
    resume: Optional[str] = None
    bf16: bool = False
    model: Inner = field(default_factory=Inner)


def test_toml_yaml_and_overrides(tmp_path):
    (tmp_path / "r.toml").write_text('lr = 1e-4\n[model]\nn_layers = 4\nact = "relu"\n')
    cfg = load_config(Outer, tmp_path / "r.toml", ["model.dims=[1,2,3]", "bf16=true", "lr=3e-5"])
    assert cfg.lr == 3e-5 and cfg.bf16 is True
    assert cfg.model == Inner(n_layers=4, dims=[1, 2, 3], act="relu")
    (tmp_path / "r.yaml").write_text("name: demo\nresume: null\nmodel: {n_layers: 1}\n")
    cfg2 = load_config(Outer, tmp_path / "r.yaml")
    assert cfg2.name == "demo" and cfg2.model.n_layers == 1 and cfg2.resume is None


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(Outer, None, ["model.act=relu", "out_dir=/tmp/o"])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert load_config(Outer, path) == cfg
    assert isinstance(load_config(Outer, path).out_dir, Path)


@pytest.mark.parametrize(
    "overrides, msg",
    [
        (["lrr=1"], r"unknown key\(s\) \['lrr'\].*valid keys"),
        (["model.n_layers=two"], "model.n_layers: expected an integer"),
        (["model.act=tanh"], "not one of"),
        (["bf16=1"], "expected true/false"),
        (["lr"], "section.key=value"),
        (["model=3"], "expected a table"),
    ],
)
def test_bad_settings_say_what_to_fix(overrides, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(Outer, None, overrides)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("lr = = 1")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(Outer, tmp_path / "bad.toml")
    (tmp_path / "r.ini").write_text("")
    with pytest.raises(ConfigError, match=".toml"):
        load_config(Outer, tmp_path / "r.ini")


@dataclass
class WithCustomDefault:
    # the field's own default differs from the nested class's defaults
    model: Inner = field(default_factory=lambda: Inner(n_layers=7, act="relu"))


def test_partial_nested_table_keeps_the_fields_own_default():
    cfg = load_config(WithCustomDefault, None, ["model.dims=[4]"])
    assert cfg.model == Inner(n_layers=7, dims=[4], act="relu")
    assert load_config(WithCustomDefault).model == Inner(n_layers=7, act="relu")


def test_toml_inline_tables_in_overrides():
    """`--set` takes tables the way recipes write them (TOML) as well as YAML flow style."""
    from spiritlm.config import apply_overrides, parse_override_value

    assert parse_override_value('{swuggy = 4, sblimp = 2}') == {"swuggy": 4, "sblimp": 2}
    assert parse_override_value('{a = {b = "x y"}, c = [1, 2]}') == {"a": {"b": "x y"}, "c": [1, 2]}
    assert parse_override_value("{swuggy: 4}") == {"swuggy": 4}  # YAML flow style still works
    assert parse_override_value("[a, b]") == ["a", "b"]
    assert parse_override_value('["a", 2]') == ["a", 2]
    assert parse_override_value("3e-5") == "3e-5" and parse_override_value("true") is True
    assert apply_overrides({}, ["x.y={k = 1}"]) == {"x": {"y": {"k": 1}}}
