"""The text-to-unit family and synthetic interleaving (issue 36): T2U documents made with the data
stage's own interleaving rule, the loss mask, training through the trainer (exact resume, export
with its marker), constrained seeded decoding, ``prepare synth-interleave`` (byte-identical reruns,
resume after a kill, counted skips, metadata the trainer checks) and the quality report."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from spiritlm.config import ConfigError, load_config
from spiritlm.data.interleave import SPEECH, TEXT, InterleaveConfig, Interleaver, SpanDist, synthetic_records
from spiritlm.models.t2u.pairs import pair_ids, t2u_targets, window, window_units
from spiritlm.vocab import SPIRITLM, units_to_ids
from test_hybrid import prepared  # noqa: F401  (the data stage's tiny shards)


# ---- documents and the loss mask ------------------------------------------------------------------
def test_a_window_over_the_whole_record_is_the_release_speech_string():
    recs = synthetic_records(6, seed=3, expressive=False)
    il = Interleaver(InterleaveConfig())
    got = window_units(recs, [(0, len(r.words)) for r in recs], il)
    for r, u in zip(recs, got):
        assert np.array_equal(u, units_to_ids(r.units, False, False, SPIRITLM))


def test_window_units_are_the_speech_span_interleaving_writes():
    recs = synthetic_records(20, seed=1, expressive=True)
    il = Interleaver(InterleaveConfig(), has_pitch=True, has_style=True)
    wins = [window(r, SpanDist("uniform", 1, 6), 0, e) for e, r in enumerate(recs)]
    for r, (a, n), u in zip(recs, wins, window_units(recs, wins, il)):
        parts = [(k, m) for k, m in ((a, TEXT), (n, SPEECH), (len(r.words) - a - n, TEXT)) if k]
        ref = il.reference.__func__  # the per-word reference implementation, spans given
        from spiritlm.data.interleave import interleave_reference

        ids = interleave_reference(r, [k for k, _ in parts], [m for _, m in parts], il)
        start = int(np.flatnonzero(ids == SPIRITLM.speech_id)[0]) + 1
        end = start + len(u)
        assert np.array_equal(ids[start:end], u) and (end == len(ids) or ids[end] == SPIRITLM.text_id), ref
        assert 1 <= n <= 6 and 0 <= a <= len(r.words) - n
    assert wins == [window(r, SpanDist("uniform", 1, 6), 0, e) for e, r in enumerate(recs)]  # seeded


def test_pair_layout_and_cut():
    lay = SPIRITLM
    units = np.arange(lay.streams["hubert"].offset, lay.streams["hubert"].offset + 5)
    ids = pair_ids(np.array([7, 8]), units, lay, 100)
    assert ids.tolist() == [lay.text_id, 7, 8, lay.speech_id, *units.tolist(), lay.text_id]
    assert pair_ids(np.array([7, 8]), units, lay, 6).tolist() == [lay.text_id, 7, 8, lay.speech_id, *units[:2]]


def test_loss_mask_keeps_units_and_the_closing_marker_of_segments_holding_their_text():
    lay = SPIRITLM
    T, S = lay.text_id, lay.speech_id
    u = lay.streams["hubert"].offset
    # one row: a whole pair, then the cut-off rest of another (no [Speech] in its segment)
    ids = [1, T, 5, 6, S, u + 1, u + 2, T, u + 3, u + 4, T]
    pos = [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2]
    tgt = [T, 5, 6, S, u + 1, u + 2, T, -100, u + 4, T, -100]
    got = t2u_targets(torch.tensor([ids]), torch.tensor([tgt]), torch.tensor([pos]), lay)[0].tolist()
    assert got == [-100, -100, -100, -100, u + 1, u + 2, T, -100, -100, -100, -100]


# ---- a tiny T2U model trained through the trainer -------------------------------------------------
@pytest.fixture(scope="module")
def t2u_run(prepared):  # noqa: F811  (the data stage's tiny shards, shared with the hybrid tests)
    from spiritlm.train.trainer import Trainer

    c, shards, root = prepared["c"], prepared["shards"], prepared["root"]
    t = Trainer(_cfg(c, shards, root / "t2u_run", "steps=4", "checkpoint.every=2"))
    t.fit()
    return {"c": c, "shards": shards, "root": root, "hf": root / "t2u_run" / "hf", "run": root / "t2u_run",
            "trainer": t}


def _cfg(c, shards, run_dir, *extra):
    from spiritlm.models.t2u.config import T2UConfig

    return load_config(T2UConfig, None, [
        f"run_dir={run_dir}", f"model.tokenizer={c['tokenizer'].parent}", "model.pad_multiple=64",
        "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "model.tiny.num_hidden_layers=1",
        "model.tiny.num_attention_heads=2", "model.tiny.num_key_value_heads=2", "model.tiny.max_position_embeddings=256",
        "data.seq_len=128", "micro_batch_size=2", "global_batch_size=2", "optim.lr=3e-3", "log.progress_bar=false",
        "log.tensorboard=false", "log.plots=false", "deepspeed.precision=fp32", *extra],
        base={"data": {"sources": [{"name": "aligned", "path": str(shards / "aligned")}]}})


def _losses(run_dir):
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_trains_on_units_only_resumes_exactly_and_exports_its_marker(t2u_run, tmp_path):
    from spiritlm.models import detect_family
    from spiritlm.models.t2u.spec import MARKER
    from spiritlm.train.trainer import Trainer

    p = t2u_run
    rec = p["trainer"].history[-1]
    assert rec["loss/text"] is None and rec["loss/speech"] > 0  # the text is the condition, not a target
    part = tmp_path / "part"
    Trainer(_cfg(p["c"], p["shards"], part, "steps=4", "checkpoint.every=2", "checkpoint.export_hf=false")).fit(until_step=2)
    Trainer(_cfg(p["c"], p["shards"], part, "steps=4", "checkpoint.every=2", "checkpoint.export_hf=false")).fit()
    assert _losses(part) == _losses(p["run"])
    assert detect_family(p["hf"]).name == "t2u"
    meta = json.loads((p["hf"] / MARKER).read_text())
    assert meta["streams"] == ["hubert"] and meta["unit_family"] == "hubert" and meta["text_ids"]
    assert meta["frame_rates"]["hubert"] == 25.0 and meta["tokens_per_word_p99"] > 0 and meta["steps"] == 4


def test_refuses_shards_without_aligned_records(t2u_run, tmp_path):
    from spiritlm.train.trainer import Trainer

    cfg = _cfg(t2u_run["c"], t2u_run["shards"], tmp_path / "r")
    cfg.data.sources[0].path = str(t2u_run["shards"] / "text")
    with pytest.raises(ConfigError, match="holds no aligned records"):
        Trainer(cfg)
    with pytest.raises(ConfigError, match="model_type"):
        load_config(_cfg(t2u_run["c"], t2u_run["shards"], tmp_path / "r").__class__, None, ["model_type=unit_lm"])


def test_decoding_writes_only_speech_tokens_and_is_seeded(t2u_run):
    from spiritlm.data.records import encode_words
    from spiritlm.models.t2u.decode import T2U, DecodeConfig

    t2u = T2U(t2u_run["hf"])
    first = [w["word"] for w in json.loads(t2u_run["c"]["manifest"].read_text().splitlines()[0])["words"][:3]]
    bpe, _ = encode_words(t2u.tokenizer, first)
    assert t2u.unseen_ids(bpe).size == 0
    spans = [bpe, bpe[:1], bpe[1:]]
    a, cut = t2u.generate(spans, seed=3)
    b, _ = t2u.generate(spans, seed=3)
    c, _ = t2u.generate(spans, seed=4)
    lay = t2u.layout
    for u in a:
        assert ((u >= lay.streams["hubert"].offset) & (u < lay.streams["hubert"].offset + lay.hubert_size)).all()
        assert len(u) <= t2u._cap(len(bpe), DecodeConfig())
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and not all(np.array_equal(x, y) for x, y in zip(a, c))
    g1, _ = t2u.generate(spans, seed=3, cfg=DecodeConfig(mode="greedy"))
    g2, _ = t2u.generate(spans[::-1], seed=9, cfg=DecodeConfig(mode="greedy", batch_size=1))
    assert all(np.array_equal(x, y) for x, y in zip(g1, g2[::-1]))  # greedy: no seed, no batch dependence
    assert t2u.unseen_ids(np.array([t2u.layout.base_vocab_size - 1, -3])).size >= 1


# ---- synthetic interleaving -----------------------------------------------------------------------
def _synth_cfg(p, out, *extra):
    from spiritlm.models.t2u.synth import SynthConfig

    return load_config(SynthConfig, None, [f"output_dir={out}", f"t2u={p['hf']}", f"inputs.text_corpora=[{p['text']}]",
                                           "chunk_size=3", "progress=false", "shards.target_mb=0.01",
                                           "shards.row_group_mb=0.004", *extra])


@pytest.fixture(scope="module")
def corpus_text(t2u_run):
    """The fixture's text corpus plus an empty-ish document and one in a script the model never saw."""
    f = t2u_run["root"] / "texts.jsonl"
    lines = [{"id": f"d{i}", "text": t} for i, t in enumerate(t2u_run["c"]["text"].read_text().splitlines())]
    lines += [{"id": "short", "text": "one"}, {"id": "greek", "text": "αβγ δεζ ηθι κλμ νξο πρσ τυφ χψω " * 12}]
    f.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return {**t2u_run, "text": f}


def test_synth_interleave_is_deterministic_resumable_and_counts_what_it_skips(corpus_text, tmp_path, monkeypatch):
    from test_data_fixtures import shard_bytes

    from spiritlm.data import work
    from spiritlm.models.t2u.synth import synth_interleave

    p = corpus_text
    rep = synth_interleave(_synth_cfg(p, tmp_path / "a"))
    syn = rep["synthetic"]
    assert rep["dropped"] == {"too_few_words": 1} and syn["documents"] == 11
    assert syn["spans_speech"] > 0 and syn["units"] > 0 and rep["throughput"]["text_words_per_s"] > 0
    assert syn["spans_unseen_text"] >= 1  # the Greek document's speech spans stay text
    a = shard_bytes(tmp_path / "a")
    assert list(a) == ["interleaved/shard-00000.parquet"]
    # byte-identical rerun elsewhere; a run killed after its first chunk resumes to the same bytes
    calls = []
    real = work.write_chunk

    def dies_after_one(ctx, index, items, wdir):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(index)
        return real(ctx, index, items, wdir)

    monkeypatch.setattr(work, "write_chunk", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        synth_interleave(_synth_cfg(p, tmp_path / "b"))
    assert not (tmp_path / "b" / "index.json").exists()
    monkeypatch.setattr(work, "write_chunk", real)
    rep_b = synth_interleave(_synth_cfg(p, tmp_path / "b"))
    assert shard_bytes(tmp_path / "b") == a and rep_b["synthetic"] == {**syn, "seconds": rep_b["synthetic"]["seconds"]}
    assert synth_interleave(_synth_cfg(p, tmp_path / "b")).get("up_to_date")
    # every document is interleaved ids of the T2U model's vocabulary, marked synthetic
    t = pq.read_table(tmp_path / "a" / "interleaved" / "shard-00000.parquet")
    meta = json.loads(pq.read_schema(tmp_path / "a" / "interleaved" / "shard-00000.parquet").metadata[b"spiritlm"])
    assert meta["synthetic"]["t2u_sha256"] and meta["vocab_layout"]["unit_family"] == "hubert"
    assert set(t.column("kind").to_pylist()) == {"interleaved"}
    assert all(i.startswith("synth/") for i in t.column("id").to_pylist())
    lay = SPIRITLM.__class__(**meta["vocab_layout"])
    ids = t.column("input_ids")[0].as_py()
    assert ids[0] in (lay.text_id, lay.speech_id) and max(ids) < lay.vocab_size
    # another seed: other spans and units
    assert shard_bytes(synth_interleave(_synth_cfg(p, tmp_path / "c", "seed=1")) and tmp_path / "c") != a


def test_workers_and_ray_give_the_same_synthetic_shards(corpus_text, tmp_path):
    """Two local worker processes (each loads the T2U model: spawn) and the Ray Data backend write
    the bytes one process writes."""
    from test_data_fixtures import shard_bytes

    from spiritlm.models.t2u.synth import synth_interleave

    p = corpus_text
    synth_interleave(_synth_cfg(p, tmp_path / "one"))
    synth_interleave(_synth_cfg(p, tmp_path / "two", "workers=2"))
    assert shard_bytes(tmp_path / "two") == shard_bytes(tmp_path / "one")
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        synth_interleave(_synth_cfg(p, tmp_path / "ray", "backend=ray", "workers=2"))
    finally:
        ray.shutdown()
    assert shard_bytes(tmp_path / "ray") == shard_bytes(tmp_path / "one")


def test_synth_refusals_name_the_fix(corpus_text, tmp_path):
    from spiritlm.models.t2u.synth import synth_interleave

    p = corpus_text
    with pytest.raises(ConfigError, match="t2u is not set"):
        synth_interleave(_synth_cfg(p, tmp_path / "x", "t2u="))
    with pytest.raises(ConfigError, match="not a T2U export"):
        synth_interleave(_synth_cfg(p, tmp_path / "x", f"t2u={p['shards']}"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "the words are under another key"}\n')
    with pytest.raises(ConfigError, match="no document was written"):
        synth_interleave(_synth_cfg(p, tmp_path / "y", f"inputs.text_corpora=[{bad}]"))
    other = tmp_path / "other_tok"
    from spiritlm.text_tokenizer import train_sentencepiece

    train_sentencepiece(p["c"]["text"].read_text().splitlines() * 3, other, vocab_size=300)
    with pytest.raises(ConfigError, match="not the text tokenizer the T2U model"):
        synth_interleave(_synth_cfg(p, tmp_path / "z", f"text_tokenizer={other / 'tokenizer.model'}"))


def test_the_trainer_mixes_synthetic_shards_only_when_told(corpus_text, tmp_path):
    from spiritlm.components.config import TrainConfig
    from spiritlm.models.t2u.synth import synth_interleave
    from spiritlm.train.trainer import Trainer

    p = corpus_text
    synth_interleave(_synth_cfg(p, tmp_path / "s"))

    def cfg(synthetic):
        return load_config(TrainConfig, None, [
            f"run_dir={tmp_path / ('run%d' % synthetic)}", f"model.tokenizer={p['c']['tokenizer'].parent}",
            "model.pad_multiple=64", "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64",
            "model.tiny.num_hidden_layers=1", "model.tiny.num_attention_heads=2", "model.tiny.num_key_value_heads=2",
            "model.tiny.max_position_embeddings=256", "data.seq_len=128", "micro_batch_size=2", "global_batch_size=2",
            "steps=2", "log.progress_bar=false", "log.tensorboard=false", "log.plots=false", "deepspeed.precision=fp32"],
            base={"data": {"sources": [
                {"name": "interleaved", "path": str(p["shards"] / "aligned"), "kind": "interleaved"},
                {"name": "synthetic", "path": str(tmp_path / "s" / "interleaved"), "kind": "interleaved",
                 "synthetic": synthetic}]}})

    with pytest.raises(ConfigError, match="set synthetic = true"):
        Trainer(cfg(False))
    t = Trainer(cfg(True))
    t.fit()
    assert t.history[-1]["mix/synthetic"] > 0 and t.history[-1]["mix/interleaved"] > 0
    wrong = cfg(True)
    wrong.data.sources[0].synthetic = True
    with pytest.raises(ConfigError, match="holds no shards of `spiritlm prepare synth-interleave`"):
        Trainer(wrong)


def test_quality_report_compares_t2u_with_real_units(t2u_run, tmp_path):
    from spiritlm.models.t2u.quality import QualityConfig, quality_report

    p = t2u_run
    q = quality_report(QualityConfig(t2u=str(p["hf"]), shards=str(p["shards"] / "aligned"), lm=str(p["hf"]),
                                     max_windows=5), tmp_path / "q")
    t, r = q["rows"]["t2u"], q["rows"]["real"]
    assert q["windows"] == 5 and t["unit_edit_rate"] > 0 and r["units_per_word"] > 0
    assert np.isfinite(t["lm_nll"]) and np.isfinite(r["lm_nll"])
    assert "| T2U |" in (tmp_path / "q" / "quality.md").read_text()


def test_cli_fit_units_and_synth(corpus_text, tmp_path):
    p = corpus_text
    over = [f"run_dir={tmp_path / 'run'}", f"model.tokenizer={p['c']['tokenizer'].parent}", "steps=2",
            "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "model.tiny.num_hidden_layers=1",
            "model.tiny.num_attention_heads=2", "model.tiny.num_key_value_heads=2", "data.seq_len=128",
            "model.tiny.max_position_embeddings=256", "log.progress_bar=false", "log.plots=false",
            f"data.sources=[{{name=\"aligned\", path=\"{p['shards'] / 'aligned'}\"}}]"]
    args = [sys.executable, "-m", "spiritlm", "t2u", "fit", "train/t2u_demo.toml"]
    for o in over:
        args += ["--set", o]
    from test_faults import _env

    r = subprocess.run(args, capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr[-2000:]
    hf = tmp_path / "run" / "hf"
    word = json.loads(p["c"]["manifest"].read_text().splitlines()[0])["words"][0]["word"]
    r = subprocess.run([sys.executable, "-m", "spiritlm", "t2u", "units", "--t2u", str(hf), word],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "[Hu" in r.stdout, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "spiritlm", "prepare", "synth-interleave",
                        "data_prep/synth_interleave_demo.toml", "--set", f"t2u={hf}", "--set",
                        f"output_dir={tmp_path / 'syn'}", "--set", f"inputs.text_corpora=[{p['text']}]",
                        "--set", "progress=false"], capture_output=True, text=True)
    assert r.returncode == 0 and "speech spans:" in r.stdout, r.stderr[-2000:]


def test_bench_decodes_the_same_spans_on_both_sides_and_reports_the_ratio():
    from spiritlm.models.t2u.bench import bench_t2u

    r = bench_t2u(size="toy", spans=16, words=4, batch_size=8, rounds=1, min_round_s=0.05, verbose=False)
    assert r["units"] > 0 and r["units_per_s"] > 0 and r["ratio_vs_hf_generate"]["median"] > 0
    assert r["measurement"]["sides"]["ours"]["rate_median"] == r["units_per_s"]


def test_expressive_shards_give_a_t2u_that_writes_pitch_and_style_too(tmp_path):
    from test_data_fixtures import make_corpus, prepare_overrides

    from spiritlm.data.prepare import PrepareConfig, prepare_shards
    from spiritlm.models.t2u.decode import T2U
    from spiritlm.train.trainer import Trainer

    c = make_corpus(tmp_path / "corpus", n=4, max_words=8)
    prepare_shards(load_config(PrepareConfig, None, prepare_overrides(c, tmp_path / "shards", "speech.expressive=true")))
    Trainer(_cfg(c, tmp_path / "shards", tmp_path / "run", "steps=2")).fit()
    t2u = T2U(tmp_path / "run" / "hf")
    assert t2u.meta["streams"] == ["hubert", "pitch", "style"] and t2u.meta["has_pitch"]
    lay = t2u.layout
    assert set(t2u.allowed.tolist()) == set(range(lay.streams["hubert"].offset, lay.vocab_size)) | {lay.text_id}
