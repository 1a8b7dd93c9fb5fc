"""Precision follows the hardware (issue 33, item 0): ``precision = "auto"`` trains in bf16 only
where the device runs bf16 natively. A CPU that emulates bf16 (AVX2 only: 1 GFLOP/s bf16 against
75 fp32, the demo 19x slower) must train the demo in fp32."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from spiritlm import precision as prec  # noqa: E402
from spiritlm.demo.main import DemoConfig, precision_choice  # noqa: E402


@pytest.fixture
def fake_cpu(monkeypatch):
    """Replace the CPU probe (flags, bf16 GFLOP/s, fp32 GFLOP/s) with a given machine."""
    def set_cpu(flags, bf16, fp32):
        monkeypatch.setattr(prec, "_cpu_probe", lambda: (tuple(flags), bf16, fp32))
    return set_cpu


def test_avx2_only_cpu_resolves_auto_to_fp32(fake_cpu):
    fake_cpu([], 1.0, 74.8)  # the AMD EPYC of the issue
    c = prec.resolve_precision("auto", "cpu")
    assert c.precision == "fp32" and not c.native_bf16
    assert "no bf16 instructions" in c.reason and "1.0 vs fp32 74.8" in c.reason


def test_flags_without_speed_still_fp32(fake_cpu):
    # a CPU that reports AVX512_BF16 but runs the bf16 matmul slower than fp32
    fake_cpu(["AVX512_BF16"], 40.0, 60.0)
    assert prec.resolve_precision("auto", "cpu").precision == "fp32"


def test_native_cpu_resolves_auto_to_bf16(fake_cpu):
    fake_cpu(["AMX", "AVX512_BF16"], 420.0, 100.0)
    c = prec.resolve_precision("auto", "cpu")
    assert c.precision == "bf16" and c.native_bf16 and "AMX+AVX512_BF16" in c.reason


def test_explicit_precision_is_honoured_with_a_warning(fake_cpu, caplog):
    fake_cpu([], 1.0, 74.8)
    c = prec.resolve_precision("bf16", "cpu")
    assert c.precision == "bf16"
    with caplog.at_level("WARNING"):
        prec.log_choice(c)
    assert "deepspeed.precision=auto" in caplog.text
    assert prec.resolve_precision("fp32", "cpu").precision == "fp32"
    with pytest.raises(ValueError, match="fp16"):
        prec.resolve_precision("fp16", "cpu")


def test_demo_is_fp32_where_bf16_matmul_is_slower(fake_cpu, tmp_path):
    """The demo's resolved precision on a CPU whose bf16 matmul is slower than fp32: fp32, in the
    report and in every model's config (hence its cache key)."""
    from spiritlm.demo.main import train_config

    fake_cpu([], 1.0, 74.8)
    cfg = DemoConfig(out_dir=str(tmp_path))
    assert precision_choice(cfg).precision == "fp32"
    shards = {"dir": str(tmp_path / "shards")}
    tcfg = train_config(cfg, "interleaved", shards, {"dir": str(tmp_path / "tok")}, tmp_path / "m")
    assert tcfg.deepspeed.precision == "fp32"
    fake_cpu(["AMX"], 420.0, 100.0)
    tcfg = train_config(cfg, "interleaved", shards, {"dir": str(tmp_path / "tok")}, tmp_path / "m")
    assert tcfg.deepspeed.precision == "bf16"  # the earlier bf16 keys stay valid where bf16 is native


def test_demo_precision_on_this_cpu_matches_its_measurement():
    """On the machine running the tests: the demo trains in bf16 only if bf16 is measured faster."""
    prec._cpu_probe.cache_clear()
    c = precision_choice(DemoConfig())
    flags, bf16, fp32 = prec._cpu_probe()
    if c.precision == "bf16":
        assert flags and bf16 > fp32, c.reason
    else:
        assert not flags or bf16 <= fp32, c.reason


def test_trainer_records_the_resolved_precision(fake_cpu, tmp_path):
    pytest.importorskip("deepspeed")
    from spiritlm.train.tiny import tiny_config
    from spiritlm.train.trainer import Trainer

    fake_cpu([], 1.0, 74.8)
    t = Trainer(tiny_config(str(tmp_path), ["steps=1", "deepspeed.precision=auto"]))
    t.fit()
    assert t.cfg.deepspeed.precision == "fp32"
    assert next(p.dtype for p in t.model.parameters()) == torch.float32
    assert "precision: fp32" in (tmp_path / "config.yaml").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["precision"]["requested"] == "auto" and summary["precision"]["precision"] == "fp32"


def test_eval_dtype_auto_follows_the_training_rule(fake_cpu):
    """Scoring: "auto" is bfloat16 exactly where training's "auto" is bf16; named dtypes are kept."""
    fake_cpu([], 1.0, 74.8)
    dtype, why = prec.resolve_eval_dtype("auto", "cpu")
    assert dtype == "float32" and why.startswith("auto -> float32") and "no bf16 instructions" in why
    fake_cpu(["AVX512_BF16"], 380.0, 80.0)
    assert prec.resolve_eval_dtype("auto", "cpu")[0] == "bfloat16"
    assert prec.resolve_eval_dtype("float32", "cpu") == ("float32", "float32 as the config asks")
    with pytest.raises(ValueError, match="dtype='fp32'"):
        prec.resolve_eval_dtype("fp32", "cpu")


def test_suite_scores_in_the_resolved_dtype_and_says_so(fake_cpu, tmp_path):
    """dtype = "auto" loads the model in what it resolves to; results.json records it and why."""
    from spiritlm.config import load_config
    from spiritlm.eval.suite import EvalConfig, run_suite
    from spiritlm.eval.testing import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "model")
    (tmp_path / "t.csv").write_text(
        "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,RandomFifthSentenceQuiz1,"
        "RandomFifthSentenceQuiz2,AnswerRightEnding\ns0,Tom had a dog.,It was small.,It ran.,It sat.,"
        "Tom was happy.,The dog was a cake.,1\n")
    got = {}
    for flags, want in (([], "float32"), (["AVX512_BF16"], "bfloat16")):
        fake_cpu(flags, 380.0 if flags else 1.0, 80.0)
        out = tmp_path / want
        cfg = load_config(EvalConfig, None, [f"model={model}", f"output_dir={out}", f"data_root={tmp_path}",
                                             "dtype=auto", "device=cpu", "storycloze.text=t.csv",
                                             'storycloze.settings=["T"]'])
        run_suite(cfg)
        res = json.loads((out / "results.json").read_text())
        assert res["dtype"] == want and res["dtype_reason"].startswith(f"auto -> {want}")
        items = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
        got[want] = (items[0]["good_sum"], items[0]["bad_sum"])
    # the same item, scored with bf16 hidden states: close to the fp32 log-likelihoods, not equal
    assert got["float32"] != got["bfloat16"]
    assert max(abs(a - b) for a, b in zip(got["float32"], got["bfloat16"])) < 2.0


def test_bench_eval_dtype_runs_a_finished_evaluation_in_both_dtypes(tmp_path, capsys):
    """`spiritlm bench eval-dtype --config`: a finished evaluation's config, scored in float32 and
    bfloat16 alternately (toy size, one round): the harness report and the items compared."""
    from spiritlm.cli import main
    from spiritlm.config import load_config
    from spiritlm.eval.suite import EvalConfig, run_suite
    from spiritlm.eval.testing import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "model")
    rows = "".join(f"s{i},Tom had a dog.,It was small.,It ran.,It sat.,Tom was happy {i}.,The dog was a cake.,1\n"
                   for i in range(3))
    (tmp_path / "t.csv").write_text("InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
                                    "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\n" + rows)
    cfg = load_config(EvalConfig, None, [f"model={model}", f"output_dir={tmp_path / 'ev'}", f"data_root={tmp_path}",
                                         "device=cpu", "storycloze.text=t.csv", 'storycloze.settings=["T"]'])
    run_suite(cfg)
    from spiritlm.eval.bench import bench_eval_dtype

    r = bench_eval_dtype(tmp_path / "ev" / "config.yaml", rounds=1, min_round_s=0.01)
    assert r["items"] == 3 and 0 <= r["items_changed"] <= 3 and r["speedup"] > 0
    assert set(r["seconds_per_eval"]) == {"float32", "bfloat16"}
    assert "bfloat16" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="give --config"):
        main(["bench", "eval-dtype"])
