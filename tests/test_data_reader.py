"""ShardReader: rank/worker split, resumable state, materialisation; datasets.load_dataset."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_data_fixtures import make_corpus, prepare_overrides

from spiritlm.config import load_config
from spiritlm.data.prepare import PrepareConfig, prepare_shards
from spiritlm.data.reader import ShardReader, shard_files
from spiritlm.data.shards import ShardError
from spiritlm.vocab import ids_to_units, units_to_ids


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    c = make_corpus(root / "corpus", n=16, max_words=40)
    out = root / "shards"
    prepare_shards(load_config(PrepareConfig, None, prepare_overrides(
        c, out, "speech.expressive=true", "shards.target_mb=0.004", "shards.row_group_mb=0.001")))
    return out


def test_splits_cover_every_row_once(shards):
    every = sorted(r["id"] for r in ShardReader(shards))
    assert len(every) == 26 and len(shard_files(shards)) >= 2
    for world, workers in ((2, 1), (2, 3), (3, 2)):
        got = []
        for rank in range(world):
            for w in range(workers):
                got += [r["id"] for r in ShardReader(shards, rank=rank, world_size=world,
                                                      worker_id=w, num_workers=workers, epoch=4)]
        assert sorted(got) == every


def test_resume_from_state_dict(shards):
    full = [(r["id"], r["input_ids"].tolist()) for r in ShardReader(shards, seed=3, epoch=2)]
    for cut in (0, 1, 7, 13, len(full) - 1):
        rd = ShardReader(shards, seed=3, epoch=2)
        it = iter(rd)
        head = [(r["id"], r["input_ids"].tolist()) for r in itertools.islice(it, cut)]
        state = rd.state_dict()
        rd2 = ShardReader(shards, seed=3)
        rd2.load_state_dict(state)
        tail = [(r["id"], r["input_ids"].tolist()) for r in rd2]
        assert head + tail == full
        assert rd2.state_dict()["epoch"] == 3  # the epoch rolls over after the last row


def test_epochs_reshuffle_and_reinterleave(shards):
    a = {r["id"]: r["input_ids"] for r in ShardReader(shards, epoch=0)}
    b = {r["id"]: r["input_ids"] for r in ShardReader(shards, epoch=1)}
    inter = [k for k in a if not k.startswith("text")]
    changed = sum(not np.array_equal(a[k], b[k]) for k in inter)
    assert changed >= len(inter) // 2
    order0 = [r["id"] for r in ShardReader(shards, epoch=0)]
    order1 = [r["id"] for r in ShardReader(shards, epoch=1)]
    assert order0 != order1 and sorted(order0) == sorted(order1)
    assert order0 == [r["id"] for r in ShardReader(shards, epoch=0)]


def test_aligned_as_other_formats(shards):
    rd = ShardReader(shards, aligned_as="speech", kinds=["speech"])
    lay = rd.layout
    assert lay.base_vocab_size == 320
    rows = list(rd)
    assert rows and all(r["input_ids"][0] == lay.speech_id for r in rows)
    u = ids_to_units(rows[0]["input_ids"][1:], lay)
    assert set(u) == {"hubert", "pitch", "style"}
    asr = list(ShardReader(shards, aligned_as="asr", kinds=["asr"]))
    assert all(lay.text_id in r["input_ids"] for r in asr)
    text = list(ShardReader(shards, kinds=["text"]))
    assert len(text) == 10 and all(r["input_ids"][0] == lay.text_id for r in text)


def test_load_dataset_parquet(shards, tmp_path):
    datasets = pytest.importorskip("datasets")
    files = [str(p) for p in shard_files(shards)]
    ds = datasets.load_dataset("parquet", data_files=files, split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 26
    row = next(r for r in ds if r["kind"] == "aligned")
    reader = ShardReader(shards, aligned_as="speech")
    rd = {r["id"]: r for r in reader}
    units = {k: np.array(row[k]) for k in ("hubert", "pitch", "style")}
    want = units_to_ids(units, True, True, reader.layout)
    assert np.array_equal(rd[row["id"]]["input_ids"][1:], want)
    text = next(r for r in ds if r["kind"] == "text")
    assert text["input_ids"][0] == reader.layout.text_id


def test_reader_errors(shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare shards"):
        ShardReader(tmp_path)
    with pytest.raises(ValueError, match="rank"):
        ShardReader(shards, rank=2, world_size=2)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), tmp_path / "shard-00000.parquet")
    with pytest.raises(ShardError, match="not a spiritlm shard"):
        ShardReader(tmp_path)


def test_trainer_parquet_source_reads_the_shards(shards):
    data = pytest.importorskip("spiritlm.components.mixture")
    from spiritlm.data.reader import interleave_fn_for

    text = data.ParquetSource(shards / "text", name="text")
    assert len(text) == 10 and text.meta["base_vocab_size"] == 320
    doc = text.read(0, seed=0, epoch=0)
    assert doc["kind"] == "text" and doc["input_ids"][0] == 320
    fn = interleave_fn_for(shards)
    aligned = data.ParquetSource(shards / "aligned", name="aligned", interleave_fn=fn)
    a0, a1 = aligned.read(0, seed=1, epoch=0), aligned.read(0, seed=1, epoch=1)
    assert a0["input_ids"][0] in (320, 321) and len(aligned) == 16
    assert not np.array_equal(a0["input_ids"], a1["input_ids"]) or len(a0["input_ids"]) < 30
    assert a0["kind"] == "interleaved"  # aligned rows count as interleaved documents
    # the no-interleaving ablation: aligned rows read as speech only, the same every epoch
    speech = data.ParquetSource(shards / "aligned", name="aligned",
                                interleave_fn=interleave_fn_for(shards, aligned_as="speech"))
    s0, s1 = speech.read(0, seed=1, epoch=0)["input_ids"], speech.read(0, seed=1, epoch=1)["input_ids"]
    assert s0[0] == 321 and np.array_equal(s0, s1) and 320 not in s0.tolist()


def test_torch_dataloader_workers_split_the_rows(shards):
    torch = pytest.importorskip("torch")
    every = sorted(r["id"] for r in ShardReader(shards))
    ds = ShardReader(shards, seed=2).as_torch_dataset()
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2,
                                     collate_fn=lambda x: x, multiprocessing_context="fork")
    assert sorted(r["id"] for r in dl) == every


def test_more_readers_than_row_groups_warns_once(shards, caplog):
    groups = len(ShardReader(shards).groups)
    r = ShardReader(shards, rank=0, world_size=groups + 2)
    with caplog.at_level("WARNING", logger="spiritlm.data.reader"):
        r.my_groups()
        r.my_groups(epoch=1)
    msgs = [m for m in caplog.messages if "read nothing" in m]
    assert len(msgs) == 1 and f"share {groups} row groups" in msgs[0] and "row_group_mb" in msgs[0]


def test_prepare_refuses_a_tokenizer_dir_with_stand_in_units():
    from spiritlm.config import ConfigError

    with pytest.raises(ConfigError, match="speech.encoder=spiritlm.data.encoders:speech_tokenizer"):
        load_config(PrepareConfig, None, ["speech.encoder=hash", "speech.tokenizer_dir=out/tok"])
    load_config(PrepareConfig, None, ["speech.encoder=hash"])  # stand-in units on purpose: fine
