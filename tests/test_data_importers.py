"""Importers: LibriSpeech, folder, lhotse (read/write), demo, text-only; each bad input."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from test_data_fixtures import make_corpus

from spiritlm.data.importers import (export_lhotse, import_demo, import_folder, import_librispeech,
                                     import_lhotse, iter_text_corpus)
from spiritlm.manifest import read_manifest


def _wav(path, seconds=0.5, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(16000 * seconds), np.float32), 16000, format=fmt)


def test_librispeech_layout_and_bad_inputs(tmp_path):
    ch = tmp_path / "ls" / "103" / "1240"
    for i in range(4):
        _wav(ch / f"103-1240-{i:04d}.flac", 0.5 + i / 10, "FLAC")
    (ch / "103-1240-0003.flac").write_bytes(b"garbage")  # unreadable
    (ch / "103-1240.trans.txt").write_text(
        "103-1240-0000 CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED\n"
        "103-1240-0001 THAT HAD ITS SOURCE AWAY BACK IN THE WOODS\n"
        "103-1240-0002\n"  # empty transcript
        "103-1240-0003 UNREADABLE AUDIO\n"
        "103-1240-0009 NO AUDIO FILE\n"
        "103-1240-0000 DUPLICATE ID\n")
    utts, rep = import_librispeech(tmp_path / "ls", manifest_dir=tmp_path)
    assert [u.id for u in utts] == ["103-1240-0000", "103-1240-0001"]
    assert utts[0].speaker == "103" and utts[0].duration == pytest.approx(0.5)
    assert utts[0].audio_file(tmp_path).is_file() and not utts[0].audio_path.startswith("/")
    assert rep.dropped == {"audio_missing": 1, "audio_unreadable": 1, "duplicate_id": 1,
                           "empty_transcript": 1}
    assert all(d["message"] for d in rep.drop_log)
    with pytest.raises(FileNotFoundError, match="dev-clean"):
        import_librispeech(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        import_librispeech(tmp_path / "nope")


def test_folder_layout_and_bad_inputs(tmp_path):
    root = tmp_path / "f"
    _wav(root / "alice" / "a.wav")
    (root / "alice" / "a.txt").write_text("  hello   world \n")
    _wav(root / "bob" / "b.wav")
    (root / "bob" / "b.lab").write_text("a lab file")
    _wav(root / "c.wav")  # no transcript
    _wav(root / "d.wav")
    (root / "d.txt").write_bytes(b"caf\xe9")  # latin-1, not UTF-8
    _wav(root / "e.wav")
    (root / "e.txt").write_text("   ")
    utts, rep = import_folder(root, manifest_dir=tmp_path)
    assert [(u.id, u.text, u.speaker) for u in utts] == [
        ("alice-a", "hello world", "alice"), ("bob-b", "a lab file", "bob")]
    assert rep.dropped == {"empty_transcript": 1, "no_transcript": 1, "non_utf8": 1}
    assert "re-encode" in next(d for d in rep.drop_log if d["reason"] == "non_utf8")["message"]


def test_lhotse_round_trip_and_partial_recordings(tmp_path):
    from dataclasses import replace

    from spiritlm.manifest import Style

    c = make_corpus(tmp_path / "c", n=3)
    c["utts"][1] = replace(c["utts"][1], split="heldout", kind="story", style=Style(160, 50, 40))
    rec, sup = export_lhotse(c["utts"], c["root"], tmp_path / "lh")
    assert rec.read_bytes() == export_lhotse(c["utts"], c["root"], tmp_path / "lh2")[0].read_bytes()
    utts, rep = import_lhotse(rec, sup, manifest_dir=c["root"])
    assert rep.dropped == {}
    for a, b in zip(utts, c["utts"]):
        assert (a.id, a.text, a.speaker, a.audio_path) == (b.id, b.text, b.speaker, b.audio_path)
        assert (a.split, a.kind, a.style) == (b.split, b.kind, b.style)  # held out stays held out
        assert [(w.word, w.start, w.end) for w in a.words] == [(w.word, w.start, w.end) for w in b.words]
    rows = [json.loads(x) for x in gzip.open(sup, "rt")]
    rows[0]["start"], rows[1]["recording_id"], rows[2]["text"] = 0.5, "nope", ""
    with gzip.open(tmp_path / "bad.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    utts, rep = import_lhotse(rec, tmp_path / "bad.jsonl.gz")
    assert utts == [] and rep.dropped == {"empty_transcript": 1, "no_recording": 1,
                                          "partial_recording": 1}


def test_demo_manifest_import(tmp_path):
    c = make_corpus(tmp_path / "c", n=3)
    (c["root"] / "u0001.wav").unlink()
    utts, rep = import_demo(c["manifest"])
    assert [u.id for u in utts] == ["u0000", "u0002"] and rep.dropped == {"audio_missing": 1}


def test_text_corpora(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"first doc\n\n\xc3\x28 broken\nsecond doc\n")
    got = list(iter_text_corpus(tmp_path / "a.txt"))
    assert [(i, t) for i, t, r in got if r is None] == [("a:1", "first doc"), ("a:4", "second doc")]
    assert [r for *_, r in got if r] == ["non_utf8"]
    (tmp_path / "b.jsonl").write_text('{"id": 7, "body": "x y"}\n{"body": ""}\n[1]\n{"body": 3}\n')
    got = list(iter_text_corpus(tmp_path / "b.jsonl", text_field="body"))
    assert got[0] == ("7", "x y", None)
    assert [r for *_, r in got[1:]] == ["empty_text", "invalid_json", "invalid_json"]
    with pytest.raises(FileNotFoundError):
        list(iter_text_corpus(tmp_path / "missing.txt"))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1,
                        max_size=30).filter(lambda s: s.strip()), max_size=5))
def test_text_jsonl_round_trip(docs):
    import tempfile
    from pathlib import Path

    p = Path(tempfile.mkdtemp()) / "d.jsonl"
    p.write_text("".join(json.dumps({"id": f"d{i}", "text": d}, ensure_ascii=False) + "\n"
                         for i, d in enumerate(docs)), encoding="utf-8")
    assert [(i, t) for i, t, _ in iter_text_corpus(p)] == [(f"d{i}", d) for i, d in enumerate(docs)]


def test_cli_prepare_manifest(tmp_path, capsys):
    from spiritlm.cli import main

    c = make_corpus(tmp_path / "c", n=2)
    out = tmp_path / "m" / "demo.jsonl"
    assert main(["prepare", "manifest", "demo", str(c["manifest"]), "-o", str(out),
                 "--export-lhotse", str(tmp_path / "lh")]) == 0
    utts = read_manifest(out)
    assert len(utts) == 2 and utts[0].audio_file(out.parent).is_file()
    assert json.loads((tmp_path / "m" / "demo.jsonl.report.json").read_text())["kept"] == 2
    assert main(["prepare", "manifest", "lhotse", str(tmp_path / "lh" / "recordings.jsonl.gz"),
                 "-o", str(tmp_path / "lh.jsonl")]) == 1  # needs --supervisions: clear error
    assert "--supervisions" in capsys.readouterr().err
