"""The paper's other ablations at demo scale: ASR/TTS pairs instead of word-level interleaving
(interleave.mode = "pairs", built by the data stage from the same aligned records) and random
initialisation instead of the text start -- recipes that differ from the demo's interleaved model
only where the ablation says, and a pair-mode data stage read by the trainer."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from spiritlm.config import dotted
from spiritlm.data.interleave import InterleaveConfig, Interleaver, synthetic_records
from spiritlm.data.records import asr_ids, tts_ids

REPO = Path(__file__).resolve().parents[1]


def _form(ids, rec, hp=False, hs=False, layout=None) -> str:
    kw = {"layout": layout} if layout is not None else {}
    for name, f in (("asr", asr_ids), ("tts", tts_ids)):
        if np.array_equal(ids, f(rec, hp, hs, **kw)):
            return name
    return "other"


def test_pair_mode_whole_records_both_directions_resampled_per_epoch():
    recs = synthetic_records(40, expressive=True)
    il = Interleaver(InterleaveConfig(mode="pairs"), has_pitch=True, has_style=True)
    flat, off = il.batch(recs, seed=3, epoch=0)
    forms = [_form(flat[off[i]:off[i + 1]], r, True, True) for i, r in enumerate(recs)]
    assert set(forms) == {"asr", "tts"} and 10 < forms.count("asr") < 30
    for i, r in enumerate(recs):  # batch == per record == reference; direction per (record, seed, epoch)
        assert np.array_equal(flat[off[i]:off[i + 1]], il(r, 3, 0))
        assert np.array_equal(il.reference(r, 3, 0), il(r, 3, 0))
        assert forms[i] == il.pair_direction(r, 3, 0)
    ep1 = [il.pair_direction(r, 3, 1) for r in recs]
    assert ep1 != forms and ep1 == [il.pair_direction(r, 3, 1) for r in recs]
    assert {_form(il(r), r) for r in recs[:5]
            for il in [Interleaver(InterleaveConfig(mode="pairs", asr_fraction=1.0))]} == {"asr"}
    assert {_form(il(r), r) for r in recs[:5]
            for il in [Interleaver(InterleaveConfig(mode="pairs", asr_fraction=0.0))]} == {"tts"}
    with pytest.raises(ValueError, match="asr_fraction"):
        InterleaveConfig(mode="pairs", asr_fraction=1.5)


def _diff(a: dict, b: dict) -> set:
    fa, fb = dotted(a), dotted(b)
    return {k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k)}


def test_ablation_recipes_change_only_what_the_ablation_says():
    from spiritlm.config import load_config, to_dict
    from spiritlm.data.prepare import PrepareConfig
    from spiritlm.demo.main import DemoConfig, train_config
    from spiritlm.components.config import TrainConfig, validate_config
    from spiritlm.precision import resolve_precision

    # data: the same records and settings, read as pairs
    base = load_config(PrepareConfig, REPO / "data_prep" / "demo.toml")
    pairs = load_config(PrepareConfig, REPO / "data_prep" / "demo_pairs.toml")
    assert pairs.interleave.mode == "pairs" and base.interleave.mode == "words"
    assert _diff(to_dict(base), to_dict(pairs)) == {"output_dir", "interleave.mode", "records.parallel"}
    ls = [tomllib.loads((REPO / "data_prep" / f).read_text()) for f in ("librispeech.toml", "librispeech_pairs.toml")]
    assert _diff(*ls) == {"output_dir", "interleave.mode", "interleave.asr_fraction"}

    # training: the demo's interleaved model (its own config builder) vs each ablation
    demo = to_dict(train_config(DemoConfig(), "interleaved", {"dir": "data/demo_shards"},
                                 {"dir": "runs/demo/text_tokenizer/tokenizer"}, Path("runs/demo/x"),
                                 start={"hf": "runs/demo/text_pretrain/run/hf"}))
    rnd = load_config(TrainConfig, REPO / "train" / "demo_ablation_random_init.toml")
    prs = load_config(TrainConfig, REPO / "train" / "demo_ablation_pairs.toml")
    for c in (rnd, prs):
        validate_config(c)
        # the recipes say precision "auto"; the demo resolves it before hashing: the same value here
        assert c.deepspeed.precision == "auto"
        c.deepspeed.precision = resolve_precision("auto", "cpu").precision
    assert _diff(demo, to_dict(rnd)) == {"run_dir", "model.checkpoint"} and rnd.model.checkpoint == ""
    assert _diff(demo, to_dict(prs)) == {"run_dir", "data.sources"}
    assert [s.path.replace("demo_shards_pairs", "demo_shards") for s in prs.data.sources] == \
        [s["path"] for s in demo["data"]["sources"]]
    # 7B: the paper recipe vs its ablations
    b7, r7, p7 = (tomllib.loads((REPO / "train" / f).read_text()) for f in
                  ("llama2_7b.toml", "llama2_7b_random_init.toml", "llama2_7b_asr_tts_pairs.toml"))
    assert _diff(b7, r7) == {"run_dir", "model.checkpoint", "model.tokenizer", "model.tiny.hidden_size",
                             "model.tiny.intermediate_size", "model.tiny.num_hidden_layers",
                             "model.tiny.num_attention_heads", "model.tiny.num_key_value_heads",
                             "model.tiny.max_position_embeddings", "model.tiny.base_vocab_size"}
    assert _diff(b7, p7) == {"run_dir", "data.sources"}


def test_pair_shards_from_the_data_stage_train(tmp_path):
    pytest.importorskip("deepspeed")
    from test_data_fixtures import make_corpus, prepare_overrides

    from spiritlm.config import load_config
    from spiritlm.data.prepare import PrepareConfig, prepare_shards
    from spiritlm.data.reader import row_to_record
    from spiritlm.components.mixture import make_sources
    from spiritlm.train.tiny import tiny_config
    from spiritlm.train.trainer import Trainer

    c = make_corpus(tmp_path / "c", n=6)
    out = tmp_path / "shards"
    cfg = load_config(PrepareConfig, REPO / "data_prep" / "demo_pairs.toml",
                      prepare_overrides(c, out, "speech.encoder=hash", "speech.tokenizer_dir=", "workers=1"))
    prepare_shards(cfg)
    tcfg = tiny_config(str(tmp_path / "run"), [
        "steps=2", f"model.tokenizer={c['tokenizer'].parent}", "eval_every=2",  # held-out = the pair rows
        f"eval.heldout=[{{name = \"pairs\", path = \"{out / 'aligned'}\", kind = \"interleaved\"}}]",
        f"data.sources=[{{name = \"pairs\", path = \"{out / 'aligned'}\", kind = \"interleaved\"}}, "
        f"{{name = \"text\", path = \"{out / 'text'}\", kind = \"text\"}}]"])
    import pyarrow.parquet as pq

    from spiritlm.models.unit_lm.model import plan_model

    layout = plan_model(tcfg.model)[1]
    src = make_sources(tcfg.data, layout)[0][0]

    rows = pq.read_table(sorted((out / "aligned").glob("*.parquet"))[0]).to_pylist()
    forms = []
    for i, row in enumerate(rows):
        ids = src.read(i, 0, 0)["input_ids"]
        rec = row_to_record(row)
        forms.append(_form(ids.astype(np.int32), rec, layout=layout))
    assert set(forms) == {"asr", "tts"} and len(forms) == 6
    from spiritlm.eval.during_training import DuringTrainingEval

    t = Trainer(tcfg, evaluator=DuringTrainingEval)
    t.fit()
    assert len(t.history) == 2 and all(np.isfinite(r["loss"]) for r in t.history)
    from spiritlm.components.metrics import read_metrics

    ev = [r for r in read_metrics(tmp_path / "run") if "eval/loss" in r]
    assert [r["step"] for r in ev] == [2] and np.isfinite(ev[0]["eval/loss/pairs"])
