"""Other engine settings in one process: ZeRO 0/2/3, bf16, activation checkpointing, the explicit
block mask, optimizer CPU offload; the recipes in train/ load; the CLI runs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from spiritlm.config import load_config  # noqa: E402
from spiritlm.components.config import TrainConfig, validate_config  # noqa: E402
from spiritlm.train.tiny import tiny_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("overrides", [
    ["deepspeed.zero_stage=0"],
    ["deepspeed.zero_stage=2", "deepspeed.precision=bf16", "model.activation_checkpointing=true"],
    ["deepspeed.zero_stage=3", "model.packed_attention=block_mask"],
    ["deepspeed.zero_stage=2", "deepspeed.offload_optimizer=true"],
])
def test_engine_variants_train(tmp_path, overrides):
    from spiritlm.train.trainer import Trainer

    t = Trainer(tiny_config(str(tmp_path / "v"), ["steps=2", *overrides]))
    t.fit()
    assert t.step == 2 and all(math.isfinite(r["loss"]) for r in t.history)
    if "deepspeed.precision=bf16" in overrides:
        assert next(t.engine.module.parameters()).dtype == torch.bfloat16
    ref = [6.87187, 6.86071]  # the fp32 ZeRO-1 golden losses (tests/test_train_loop.py)
    tol = 2e-2 if "deepspeed.precision=bf16" in overrides else 1e-4
    assert [r["loss"] for r in t.history] == pytest.approx(ref, abs=tol)


@pytest.mark.parametrize("recipe", sorted((REPO / "train").glob("*.toml")), ids=lambda p: p.name)
def test_recipes_load(recipe):
    cfg = _load_recipe(recipe)
    continuous = getattr(cfg, "model_type", "unit_lm") == "continuous"
    one_process = continuous or any(k in recipe.name for k in ("single", "tiny", "demo"))
    validate_config(cfg, world_size=1 if one_process else 64)
    if continuous:
        from spiritlm.models.continuous.config import validate_continuous

        if not cfg.continuous.encoder.path:  # recipes that say "--set continuous.encoder.path=..."
            cfg.continuous.encoder.path = "a/local/encoder"
        validate_continuous(cfg.continuous)


def _load_recipe(recipe: Path):
    """A train recipe loaded into the config class its ``model_type`` names (as `spiritlm train` does)."""
    from spiritlm.config import read_recipe
    from spiritlm.models import config_class_of_recipe

    return load_config(config_class_of_recipe(read_recipe(recipe)), recipe)


def _prepared_folders() -> dict[Path, set[str]]:
    """Each data_prep recipe's output directory -> the kind folders `prepare shards` writes there."""
    from spiritlm.data.prepare import PrepareConfig

    out = {}
    import tomllib

    for recipe in sorted((REPO / "data_prep").glob("*.toml")):
        if "t2u" in tomllib.loads(recipe.read_text()):  # `prepare synth-interleave`: interleaved/ only
            out[Path(tomllib.loads(recipe.read_text())["output_dir"])] = {"interleaved"}
            continue
        p = load_config(PrepareConfig, recipe)
        first = "aligned" if p.records.mode == "aligned" else "interleaved"
        out[Path(p.output_dir)] = {first, "speech", "text", *p.records.parallel}
    return out


@pytest.mark.parametrize("recipe", sorted((REPO / "train").glob("*.toml")), ids=lambda p: p.name)
def test_recipe_sources_are_what_data_prep_writes(recipe):
    """A train recipe's sources name folders that a data_prep recipe writes, and aligned records
    are read with an explicit kind (the same folder serves as interleaved and as speech-only)."""
    cfg = _load_recipe(recipe)
    if getattr(cfg, "model_type", "unit_lm") != "unit_lm":  # other families read manifests, not shards
        pytest.skip(f"{recipe.name}: model_type={cfg.model_type} reads no unit-LM mixture (its own sources or manifests)")
    prepared = _prepared_folders()
    for src in cfg.data.sources:
        path = Path(src.path)
        assert path.parent in prepared, f"{recipe.name}: {src.path} is no data_prep recipe's output_dir"
        assert path.name in prepared[path.parent], f"{recipe.name}: data prep writes no {path.name}/"
        if path.name == "aligned":
            assert src.kind in ("interleaved", "speech"), f"{recipe.name}: {src.name} needs a kind"


def test_no_init_py_in_train_folder():
    assert not (REPO / "train" / "__init__.py").exists()


def test_cli_train(tmp_path, capsys):
    from spiritlm.cli import main

    rc = main(["train", str(REPO / "train" / "tiny_cpu.toml"), "--set", f"run_dir={tmp_path / 'cli'}",
               "--set", "steps=2", "--set", "data.seq_len=64", "--set", "micro_batch_size=2",
               "--set", "global_batch_size=2", "--set", "log.progress_bar=false",
               "--set", "checkpoint.export_hf=false", "--set", "log.tensorboard=false",
               "--set", "log.plots=false"])
    assert rc == 0
    assert "run directory" in capsys.readouterr().out
    assert (tmp_path / "cli" / "checkpoints" / "latest").read_text() == "step_00000002"
    rc = main(["train", str(REPO / "train" / "tiny_cpu.toml"), "--set", "global_batch_size=7"])
    assert rc == 1
    assert "global_batch_size=7 is not a multiple" in capsys.readouterr().err


def test_zero3_loads_checkpoint_partitioned_and_matches_zero1(tmp_path):
    """ZeRO-3 path of a real checkpoint: zero.Init loading, resize + new-row init under
    GatheredParameters; same losses as ZeRO-1 on the same checkpoint."""
    from transformers import LlamaForCausalLM

    from spiritlm.models.unit_lm.model import tiny_llama_config
    from spiritlm.train.trainer import Trainer

    torch.manual_seed(0)
    base = tmp_path / "base"
    LlamaForCausalLM(tiny_llama_config(tiny_config("x").model.tiny)).save_pretrained(base)
    losses = {}
    for stage in (1, 3):
        t = Trainer(tiny_config(str(tmp_path / f"z{stage}"), ["steps=2", f"model.checkpoint={base}",
                                                              f"deepspeed.zero_stage={stage}"]))
        t.fit()
        losses[stage] = [r["loss"] for r in t.history]
        del t
    assert losses[3] == pytest.approx(losses[1], abs=1e-5)


def test_deepspeed_json_generated_and_user_json_merged(tmp_path):
    import json

    from spiritlm.config import ConfigError
    from spiritlm.train.engine import deepspeed_config

    cfg = tiny_config(str(tmp_path), ["deepspeed.zero_stage=3", "deepspeed.precision=bf16",
                                      "micro_batch_size=2", "global_batch_size=8"])
    ds = deepspeed_config(cfg, world_size=2)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (2, 2, 8)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["torch_adam"]
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage": 3, "overlap_comm": True}, "wall_clock_breakdown": True}))
    cfg.deepspeed.json = str(user)
    merged = deepspeed_config(cfg, world_size=2)
    assert merged["zero_optimization"]["overlap_comm"] is True and merged["wall_clock_breakdown"] is True
    assert merged["zero_optimization"]["contiguous_gradients"] is True  # ours kept
    user.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigError, match="set deepspeed.zero_stage=2"):
        deepspeed_config(cfg, world_size=2)
    user.write_text(json.dumps({"train_batch_size": 64}))
    with pytest.raises(ConfigError, match="global_batch_size"):
        deepspeed_config(cfg, world_size=2)
    for shipped in sorted((REPO / "train").glob("ds_*.json")):  # the examples merge cleanly
        cfg.deepspeed.json = str(shipped)
        cfg.deepspeed.zero_stage = json.loads(shipped.read_text())["zero_optimization"]["stage"]
        deepspeed_config(cfg, world_size=2)


def test_fused_adamw_matches_foreach(tmp_path):
    """optim.fused=true reaches torch's AdamW as fused=True and trains as the foreach kernel does
    (fp32, three steps: losses and weights within rounding); without torch_adam it is refused."""
    from spiritlm.config import ConfigError
    from spiritlm.train.engine import deepspeed_config
    from spiritlm.train.trainer import Trainer

    def run(name, fused):
        t = Trainer(tiny_config(str(tmp_path / name), ["steps=3", "deepspeed.precision=fp32", f"optim.fused={fused}"]))
        losses = [t.train_step()["loss"] for _ in range(3)]
        inner = getattr(t.engine.optimizer, "optimizer", t.engine.optimizer)
        return losses, inner.defaults.get("fused"), {k: v.detach().clone() for k, v in t.model.state_dict().items()}

    ref, ref_fused, ref_w = run("foreach", "false")
    got, fused, w = run("fused", "true")
    assert fused is True and not ref_fused
    assert got == pytest.approx(ref, rel=1e-6)
    assert max((w[k] - ref_w[k]).abs().max().item() for k in w) < 1e-5
    with pytest.raises(ConfigError, match="deepspeed.torch_adam=true"):
        deepspeed_config(tiny_config(str(tmp_path / "x"), ["optim.fused=true", "deepspeed.torch_adam=false"]), 1)
