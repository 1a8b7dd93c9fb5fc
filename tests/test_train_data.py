"""Data input: Parquet shards, mixture weights, determinism, per-rank sharding, exact resume,
per-epoch interleaving hook."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from spiritlm.config import ConfigError  # noqa: E402
from spiritlm.components.mixture import (  # noqa: E402
    DataError,
    MixtureStream,
    ParquetSource,
    SyntheticSource,
    check_meta,
)
from spiritlm.vocab import VocabLayout  # noqa: E402

LAYOUT = VocabLayout(base_vocab_size=256)


def _write_shards(d, kind, n_files=3, rows=10, start=0, meta=True):
    d.mkdir(parents=True, exist_ok=True)
    k = start
    for f in range(n_files):
        ids = [np.arange(k + i, k + i + 5, dtype=np.int32) % 256 for i in range(rows)]
        docid = list(range(k, k + rows))
        t = pa.table({"input_ids": pa.array(ids, type=pa.list_(pa.int32())), "kind": [kind] * rows, "doc": docid})
        if meta:
            t = t.replace_schema_metadata({"spiritlm": json.dumps({"base_vocab_size": 256, "vocab_size": 923})})
        pq.write_table(t, d / f"part-{f:03d}.parquet")
        k += rows
    return d


def test_parquet_source_reads_every_document_once_per_epoch(tmp_path):
    src = ParquetSource(_write_shards(tmp_path / "text", "text"))
    assert len(src) == 30
    order = src.order(seed=0, epoch=0)
    assert sorted(order.tolist()) == list(range(30))
    assert order.tolist() != src.order(seed=0, epoch=1).tolist()
    doc = src.read(13, 0, 0)
    assert doc["kind"] == "text" and doc["input_ids"].tolist() == list(range(13, 18))
    check_meta([src], LAYOUT, 960)
    with pytest.raises(ConfigError, match="base_vocab_size=256"):
        check_meta([src], VocabLayout(base_vocab_size=320), 1024)


def test_missing_column_message(tmp_path):
    d = tmp_path / "x"
    d.mkdir()
    pq.write_table(pa.table({"tokens": [[1, 2]], "kind": ["text"]}), d / "a.parquet")
    with pytest.raises(DataError, match="input_ids"):
        ParquetSource(d)


def test_mixture_weights_and_determinism():
    srcs = [SyntheticSource(k, LAYOUT, num_docs=50, max_len=8) for k in ("speech", "interleaved", "text")]
    a = MixtureStream(srcs, [1, 1, 1], seed=3, unit="documents")
    kinds = Counter(next(a)["kind"] for _ in range(1500))
    for k in ("speech", "interleaved", "text"):
        assert kinds[k] / 1500 == pytest.approx(1 / 3, abs=0.05)
    b = MixtureStream(srcs, [0.6, 0.2, 0.2], seed=3, unit="documents")
    assert Counter(next(b)["kind"] for _ in range(1500))["speech"] / 1500 == pytest.approx(0.6, abs=0.05)
    x = [next(MixtureStream(srcs, seed=5))["input_ids"].tolist() for _ in range(1)]
    y = [next(MixtureStream(srcs, seed=5))["input_ids"].tolist() for _ in range(1)]
    assert x == y


def test_ranks_take_disjoint_documents_covering_an_epoch(tmp_path):
    src = ParquetSource(_write_shards(tmp_path / "s", "speech", n_files=2, rows=12))
    seen = []
    for rank in range(3):
        s = MixtureStream([src], seed=1, rank=rank, world_size=3)
        seen.append([int(next(s)["input_ids"][0]) for _ in range(8)])  # 24 docs / 3 ranks
    flat = sorted(sum(seen, []))
    assert flat == list(range(24))


def test_stream_state_resumes_exactly(tmp_path):
    srcs = [ParquetSource(_write_shards(tmp_path / "t", "text", rows=4)),
            SyntheticSource("speech", LAYOUT, num_docs=7)]
    a = MixtureStream(srcs, [1, 2], seed=9, rank=1, world_size=2)
    for _ in range(17):  # crosses epochs (6 docs per rank in the Parquet source)
        next(a)
    state = json.loads(json.dumps(a.state_dict()))  # JSON-able
    ref = [next(a)["input_ids"].tolist() for _ in range(20)]
    b = MixtureStream(srcs, [1, 2], seed=9, rank=1, world_size=2)
    b.load_state_dict(state)
    assert [next(b)["input_ids"].tolist() for _ in range(20)] == ref
    with pytest.raises(ConfigError, match="same settings"):
        MixtureStream(srcs, [1, 2], seed=9, rank=0, world_size=1).load_state_dict(state)


def test_interleave_fn_resampled_each_epoch(tmp_path):
    d = tmp_path / "inter"
    d.mkdir()
    pq.write_table(pa.table({"words": [["a", "b", "c"]] * 3, "kind": ["interleaved"] * 3}), d / "p.parquet")
    calls = []

    def fn(record, seed, epoch):
        calls.append((seed, epoch))
        rng = np.random.default_rng([seed, epoch])
        return [LAYOUT.text_id, *rng.integers(3, 256, size=4).tolist()]

    src = ParquetSource(d, interleave_fn=fn)
    s = MixtureStream([src], seed=0)
    ep0 = sorted(tuple(next(s)["input_ids"].tolist()) for _ in range(3))
    ep1 = sorted(tuple(next(s)["input_ids"].tolist()) for _ in range(3))
    assert ep0 != ep1
    assert {e for _, e in calls} == {0, 1} and len({sd for sd, _ in calls}) == 3


def test_ids_outside_model_vocab_rejected(tmp_path):
    src = ParquetSource(_write_shards(tmp_path / "t", "text", meta=False))
    with pytest.raises(DataError, match="outside"):
        next(MixtureStream([src], max_id=4))


def test_aligned_rows_are_found_from_the_index_or_the_files(tmp_path, monkeypatch):
    from spiritlm.components import mixture as data_mod

    out = tmp_path / "shards"
    _write_shards(out / "aligned", "aligned", n_files=2)
    _write_shards(out / "text", "text", n_files=2)
    assert data_mod.holds_aligned_records(out / "aligned") and not data_mod.holds_aligned_records(out / "text")
    files = sorted(out.glob("*/*.parquet"))
    entries = [{"name": str(f.relative_to(out)), "bytes": f.stat().st_size,
                "kinds": {f.parent.name: 10}} for f in files]
    (out / "index.json").write_text(json.dumps({"schema_version": 1, "shards": entries}))
    read = []
    real_read = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: read.append(a[0]) or real_read(*a, **k))
    assert data_mod.holds_aligned_records(out / "aligned") and not data_mod.holds_aligned_records(out / "text")
    assert read == []  # the data stage's index answered for every file
    pq.write_table(pa.table({"input_ids": [[1, 2]], "kind": ["aligned"]}), out / "text" / "part-000.parquet")
    assert data_mod.holds_aligned_records(out / "text")  # a file changed since the index: read it
    assert read == [out / "text" / "part-000.parquet"]


class _FixedLength:
    """Documents of one kind, all ``n`` tokens long (a source of short or long documents)."""

    def __init__(self, name, n, docs=40):
        self.name, self.n, self.docs = name, n, docs

    def __len__(self):
        return self.docs

    def order(self, seed, epoch):
        return np.random.default_rng([seed, epoch]).permutation(self.docs)

    def read(self, index, seed, epoch):
        return {"input_ids": np.full(self.n, 3 + index, dtype=np.int64), "kind": "text"}


def _token_shares(stream, docs):
    tokens = Counter()
    for _ in range(docs):
        d = next(stream)
        tokens[d["source"]] += d["input_ids"].size
    total = sum(tokens.values())
    return {k: v / total for k, v in tokens.items()}


def test_mixture_shares_tokens_by_default_documents_as_an_option():
    """Short utterances (12 tokens) against long text (300): per document, text takes ~85% of
    the tokens; per token (the paper's unit, the default) each source gets its weight's share."""
    srcs = [_FixedLength("speech", 12), _FixedLength("interleaved", 40), _FixedLength("text", 300)]
    by_tokens = _token_shares(MixtureStream(srcs, [1, 1, 1], seed=0), 3000)
    for name in ("speech", "interleaved", "text"):
        assert by_tokens[name] == pytest.approx(1 / 3, abs=0.01)
    by_docs = _token_shares(MixtureStream(srcs, [1, 1, 1], seed=0, unit="documents"), 3000)
    assert by_docs["text"] > 0.8 and by_docs["speech"] < 0.05
    weighted = _token_shares(MixtureStream(srcs, [0.5, 0.3, 0.2], seed=0), 3000)
    assert [round(weighted[n], 2) for n in ("speech", "interleaved", "text")] == [0.5, 0.3, 0.2]
    assert "speech" not in _token_shares(MixtureStream(srcs, [0, 1, 1], seed=0), 200)  # weight 0: never
    with pytest.raises(ConfigError, match="mixture_unit"):
        MixtureStream(srcs, unit="sequences")


def test_token_mixture_resumes_exactly():
    srcs = [_FixedLength("speech", 12), _FixedLength("text", 300)]
    a = MixtureStream(srcs, seed=2)
    for _ in range(37):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))
    ref = [next(a)["input_ids"].tolist() for _ in range(30)]
    b = MixtureStream(srcs, seed=2)
    b.load_state_dict(state)
    assert [next(b)["input_ids"].tolist() for _ in range(30)] == ref
    with pytest.raises(ConfigError, match="mixture_unit"):
        MixtureStream(srcs, seed=2, unit="documents").load_state_dict(state)


def test_base_layout_synthetic_documents():
    """The Base layout (no pitch/style streams) used to crash the synthetic speech source
    (``ValueError: high <= 0``): its documents hold [Speech] and HuBERT ids only."""
    base = VocabLayout(base_vocab_size=256, pitch_size=0, style_size=0)
    for kind in ("speech", "interleaved", "text"):
        src = SyntheticSource(kind, base, num_docs=20, max_len=60)
        for i in range(20):
            ids = src.read(i, 0, 0)["input_ids"]
            assert ids.max() < base.vocab_size
            speech = ids[base.is_speech_id(ids)]
            assert ((speech >= base.streams["hubert"].offset) & (speech < base.vocab_size)).all()


def test_shards_of_another_layout_refused(tmp_path):
    import dataclasses

    base = VocabLayout(base_vocab_size=256, pitch_size=0, style_size=0)

    def source(name, written_with, expressive):
        d = _write_shards(tmp_path / name, "speech", meta=False)
        (d / "metadata.json").write_text(json.dumps({
            "base_vocab_size": 256, "vocab_size": written_with.vocab_size, "has_pitch": expressive,
            "has_style": expressive, "vocab_layout": dataclasses.asdict(written_with)}))
        return ParquetSource(d)

    expressive_data = source("e", LAYOUT, True)
    check_meta([expressive_data], LAYOUT, LAYOUT.padded_vocab_size(64))  # its own layout: fine
    with pytest.raises(ConfigError, match=r"another vocabulary \(pitch 64, style 100\).*Base.*"
                                          r"model.pitch_size=64 model.style_size=100"):
        check_meta([expressive_data], base, base.padded_vocab_size(64))  # a Base model
    # Base data written with the full layout (the data stage's default tokenizer) fits a Base model
    check_meta([source("b", LAYOUT, False)], base, base.padded_vocab_size(64))
    other_hubert = VocabLayout(base_vocab_size=256, hubert_size=200)
    with pytest.raises(ConfigError, match=r"hubert 200.*model.hubert_size=200"):
        check_meta([source("h", other_hubert, False)], LAYOUT, LAYOUT.padded_vocab_size(64))


def test_shards_of_another_tokenizer_refused(tmp_path):
    d = _write_shards(tmp_path / "s", "text", meta=False)
    (d / "metadata.json").write_text(json.dumps({"base_vocab_size": 256, "tokenizer_sha256": "ab" * 32}))
    src = ParquetSource(d)
    check_meta([src], LAYOUT, 1024, tokenizer_sha256="ab" * 32)
    check_meta([src], LAYOUT, 1024)  # the run has no tokenizer.model: nothing to compare
    with pytest.raises(ConfigError, match=r"another tokenizer.model \(sha256 ababababab"):
        check_meta([src], LAYOUT, 1024, tokenizer_sha256="cd" * 32)
