"""A shard folder is used only when it is complete and intact (issue 19): the trainer's sources
and the reader check every shard against index.json (presence, size, SHA-256) and refuse a
folder a killed `prepare shards` left, naming the file and what to rerun; a finished run is
"up to date" on a rerun; bad shard sizes and output paths are refused before any work."""

from __future__ import annotations

import json
import shutil

import pytest
from test_data_fixtures import make_corpus, prepare_overrides

from spiritlm.config import ConfigError, load_config
from spiritlm.data import work
from spiritlm.data.prepare import PrepareConfig, prepare_shards
from spiritlm.data.reader import ShardReader
from spiritlm.data.shards import ShardError
from spiritlm.components.mixture import ParquetSource


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("integrity"), n=8)


def _cfg(corpus, out, *extra):
    return load_config(PrepareConfig, None, prepare_overrides(corpus, out, "shards.target_mb=0.002", *extra))


def test_missing_truncated_corrupt_and_unindexed_shards_are_refused(corpus, tmp_path):
    out = tmp_path / "out"
    prepare_shards(_cfg(corpus, out))
    src = ParquetSource(out / "aligned")
    files = sorted((out / "aligned").glob("shard-*.parquet"))
    assert len(files) >= 2 and src.files == files and len(src) == 8
    assert len(list(ShardReader(out, shuffle=False))) == 8 + 10  # the whole folder
    saved = tmp_path / "saved"
    shutil.copytree(out, saved)

    def restore():
        shutil.rmtree(out)
        shutil.copytree(saved, out)

    files[1].unlink()  # a deleted shard: the rest would be trained on without a word
    for read in (ParquetSource, ShardReader):
        with pytest.raises(ShardError, match=rf"{files[1].name} listed in .*index.json is missing.*"
                                             r"rerun `spiritlm prepare shards .*config.yaml`"):
            read(out / "aligned")
    restore()
    data = files[0].read_bytes()
    files[0].write_bytes(data[:-100])  # truncated
    with pytest.raises(ShardError, match=rf"{files[0].name} has {len(data) - 100} bytes"):
        ParquetSource(out / "aligned")
    files[0].write_bytes(data[:500] + bytes([data[500] ^ 1]) + data[501:])  # one bit flipped
    with pytest.raises(ShardError, match=rf"{files[0].name} does not match its SHA-256"):
        ParquetSource(out / "aligned")
    restore()
    shutil.copy(files[0], out / "aligned" / "shard-00099.parquet")  # not part of this output
    with pytest.raises(ShardError, match="shard-00099.parquet is not listed"):
        ParquetSource(out / "aligned")
    restore()
    # what a run killed while writing leaves: complete-looking shards, _work/, no index.json
    (out / "index.json").unlink()
    (out / "_work").mkdir()
    for read in (ParquetSource, ShardReader):
        with pytest.raises(ShardError, match=r"no index.json.*did not finish.*_work.*rerun "
                                             r"`spiritlm prepare shards .*config.yaml`"):
            read(out / "aligned")
    (out / "_work").rmdir()
    restore()  # a finished run that kept its work folder (keep_work=true) reads as any other
    (out / "_work").mkdir()
    shutil.copy(files[0], out / "_work" / "chunk-000000.parquet")
    from spiritlm.data.reader import verified_shard_files

    assert len(verified_shard_files(out)) == len(json.loads((out / "index.json").read_text())["shards"])
    shutil.rmtree(out / "_work")
    (out / "index.json").unlink()
    with pytest.raises(ShardError, match="no index.json"):  # the data stage's metadata says so
        ParquetSource(out / "text")


def test_rerun_of_a_finished_run_is_up_to_date(corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = prepare_shards(_cfg(corpus, out))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}

    def no_work(*a, **k):
        raise AssertionError("recomputed chunks of an up-to-date folder")

    monkeypatch.setattr(work, "run_chunks_local", no_work)
    again = prepare_shards(_cfg(corpus, out, "workers=1"))  # runtime keys do not matter
    assert again["up_to_date"] and again["rows"] == first["rows"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == before
    monkeypatch.undo()
    # an edited input, a broken shard: the work is done again
    text = tmp_path / "text.txt"
    text.write_text(corpus["text"].read_text() + "one more line\n")
    changed = prepare_shards(_cfg(corpus, out, f"inputs.text_corpora=[{text}]"))
    assert not changed.get("up_to_date") and changed["kept"]["text"] == first["kept"]["text"] + 1
    f = sorted(out.rglob("shard-*.parquet"))[0]
    f.write_bytes(f.read_bytes()[:-10])
    repaired = prepare_shards(_cfg(corpus, out, f"inputs.text_corpora=[{text}]"))
    assert not repaired.get("up_to_date")
    ParquetSource(f.parent)  # intact again


def test_bad_sizes_and_output_paths_are_refused_before_any_work(corpus, tmp_path):
    for k in ("shards.target_mb=-1", "shards.row_group_mb=0"):
        with pytest.raises(ConfigError, match=k.split("=")[0] + ".*must be > 0"):
            _cfg(corpus, tmp_path / "o", k)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        prepare_shards(_cfg(corpus, tmp_path / "file"))
    with pytest.raises(ValueError, match="cannot be created"):
        prepare_shards(_cfg(corpus, tmp_path / "file" / "sub"))


def test_spiritlm_train_refuses_an_unfinished_folder_in_one_line(corpus, tmp_path, capsys):
    """What the user sees: `spiritlm train` on the folder a killed `prepare shards` left."""
    pytest.importorskip("deepspeed")
    from spiritlm.cli import main

    out = tmp_path / "out"
    prepare_shards(_cfg(corpus, out))
    (out / "index.json").unlink()  # as a run killed while writing leaves it
    recipe = tmp_path / "train.toml"
    recipe.write_text(f"""
run_dir = "{tmp_path / 'run'}"
steps = 1
micro_batch_size = 1
global_batch_size = 1
[model]
tokenizer = "{corpus['tokenizer'].parent}"
[model.tiny]
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 1
num_attention_heads = 2
num_key_value_heads = 2
[[data.sources]]
name = "aligned"
path = "{out / 'aligned'}"
kind = "interleaved"
""")
    capsys.readouterr()
    assert main(["train", str(recipe)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no index.json" in err[0] and "rerun `spiritlm prepare shards" in err[0]
