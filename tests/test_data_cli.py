"""`spiritlm prepare shards|align`, the recipes in data_prep/, prepare_demo_shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_data_fixtures import make_corpus, shard_bytes

from spiritlm.cli import main
from spiritlm.config import load_config
from spiritlm.data.prepare import PrepareConfig, prepare_demo_shards

RECIPES = sorted((Path(__file__).parent.parent / "data_prep").glob("*.toml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipes_load(recipe):
    import tomllib

    from spiritlm.models.t2u.synth import SynthConfig

    # `prepare synth-interleave` recipes name a T2U model; the others are `prepare shards` recipes
    cls = SynthConfig if "t2u" in tomllib.loads(recipe.read_text()) else PrepareConfig
    cfg = load_config(cls, recipe)
    assert cfg.interleave.speech_span.max == 15 and cfg.interleave.text_span.min == 10
    assert not (recipe.parent / "__init__.py").exists()


def test_cli_shards_and_align(tmp_path, capsys):
    c = make_corpus(tmp_path / "c", n=4)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'output_dir = "{tmp_path / "out"}"\ntext_tokenizer = "{c["tokenizer"]}"\n'
                      f'progress = false\n[inputs]\nmanifests = ["{c["manifest"]}"]\n')
    assert main(["prepare", "shards", str(recipe), "--set", "speech.expressive=true"]) == 0
    out = capsys.readouterr().out
    assert "hours in" in out and "kept: aligned=4" in out
    assert json.loads((tmp_path / "out" / "report.json").read_text())["kept"] == {"aligned": 4}
    # a bad override is a one-line error, not a traceback
    assert main(["prepare", "shards", str(recipe), "--set", "records.mode=nope"]) == 1
    assert "records.mode" in capsys.readouterr().err
    # align via an imported CTM
    from spiritlm.data.textgrid import write_ctm

    (tmp_path / "a.ctm").write_text(write_ctm(
        {u.id: [(w.word, w.start, w.end) for w in u.words] for u in c["utts"][:3]}))
    assert main(["prepare", "align", str(c["manifest"]), "-o", str(tmp_path / "al.jsonl"),
                 "--method", "ctm", "--source", str(tmp_path / "a.ctm")]) == 0
    rep = json.loads((tmp_path / "al.jsonl.report.json").read_text())
    assert rep["aligned"] == 3 and rep["failed_reasons"] == {"no_alignment": 1}


def test_prepare_demo_shards_function(tmp_path):
    from spiritlm.data.encoders import HashUnitEncoder
    from spiritlm.text_tokenizer import SpiritTokenizer

    c = make_corpus(tmp_path / "c", n=4)
    tok = SpiritTokenizer(c["tokenizer"])
    cfg = PrepareConfig(progress=False)
    d = prepare_demo_shards(cfg, c["manifest"], HashUnitEncoder(expressive=False), tok,
                            text_corpus=c["text"], output_dir=tmp_path / "s1")
    assert (d / "aligned").is_dir() and (d / "text").is_dir()
    d2 = prepare_demo_shards(cfg, c["manifest"], None, c["tokenizer"], text_corpus=c["text"],
                             output_dir=tmp_path / "s2")  # config's "hash" encoder, a path
    import pyarrow.parquet as pq

    assert shard_bytes(d).keys() == shard_bytes(d2).keys()
    for name in shard_bytes(d):  # same rows; metadata differs only in config.text_tokenizer
        assert pq.read_table(d / name).equals(pq.read_table(d2 / name))


def test_prepare_demo_shards_with_a_speech_tokenizer_object(tmp_path):
    """The SpeechTokenizer contract: encode_many -> units dicts, or the AudioError of a bad file."""
    from types import SimpleNamespace

    from spiritlm.data.encoders import HashUnitEncoder

    c = make_corpus(tmp_path / "c", n=4)
    (c["root"] / "u0002.wav").write_bytes(b"not audio")
    fake_enc = HashUnitEncoder(expressive=True)

    class FakeSpeechTokenizer:
        featurizer = SimpleNamespace(frame_rate=25.0)
        cfg = SimpleNamespace(name="fake")

        def encode_many(self, paths):
            out = []
            for p in paths:
                try:
                    out.append({**fake_enc.encode_many([p])[0], "duration": 1.0})
                except ValueError as e:
                    out.append(e)
            return out

    cfg = PrepareConfig(progress=False)
    cfg.speech.expressive = True
    d = prepare_demo_shards(cfg, c["manifest"], FakeSpeechTokenizer(), c["tokenizer"],
                            output_dir=tmp_path / "s")
    rep = json.loads((d / "report.json").read_text())
    assert rep["kept"] == {"aligned": 3} and rep["dropped"] == {"audio_unreadable": 1}
    from spiritlm.data.shards import read_metadata

    meta = read_metadata(next((d / "aligned").glob("*.parquet")))
    assert meta["speech_encoder"] == "speech-tokenizer:fake" and meta["has_style"]


def test_a_full_disk_while_writing_shards_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch, capsys):
    """ENOSPC in the middle of the shard writes: one line naming the folder and how to resume,
    no index.json (so no reader takes the folder as complete), the encoded chunks kept; the rerun
    after space is freed encodes nothing again and gives the same shards as an undisturbed build."""
    import errno

    from spiritlm.data import shards as shards_mod

    c = make_corpus(tmp_path / "c", n=4)
    recipe = tmp_path / "r.toml"
    out = tmp_path / "out"
    recipe.write_text(f'output_dir = "{out}"\ntext_tokenizer = "{c["tokenizer"]}"\nprogress = false\n'
                      f'[inputs]\nmanifests = ["{c["manifest"]}"]\n')
    real = shards_mod.ShardWriter._flush_row_group

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards_mod.ShardWriter, "_flush_row_group", full)
    capsys.readouterr()
    assert main(["prepare", "shards", str(recipe), "--set", "workers=1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on device" in err[0] and "rerun the same command" in err[0], err
    assert not (out / "index.json").exists() and list((out / "_work").glob("chunk-*.parquet"))
    monkeypatch.setattr(shards_mod.ShardWriter, "_flush_row_group", real)
    import spiritlm.data.work as work_mod

    calls, write_chunk = [], work_mod.write_chunk
    monkeypatch.setattr(work_mod, "write_chunk", lambda *a: (calls.append(a[1]), write_chunk(*a))[1])
    assert main(["prepare", "shards", str(recipe), "--set", "workers=1"]) == 0
    assert (out / "index.json").is_file() and calls == []  # every chunk was kept: none encoded again
    assert main(["prepare", "shards", str(recipe), "--set", "workers=1",
                 "--set", f"output_dir={tmp_path / 'ref'}"]) == 0
    assert calls and shard_bytes(out) == shard_bytes(tmp_path / "ref")  # the reference did encode
