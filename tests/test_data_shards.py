"""prepare shards: report, metadata, determinism, parallel == serial, kill -9 + restart, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_data_fixtures import make_corpus, prepare_overrides, shard_bytes

from spiritlm.config import load_config
from spiritlm.data.prepare import PrepareConfig, format_report, prepare_shards
from spiritlm.data.shards import SCHEMA, ShardError, read_metadata


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), n=12)


def run(corpus, out, *extra):
    return prepare_shards(load_config(PrepareConfig, None, prepare_overrides(corpus, out, *extra)))


def test_end_to_end_report_and_metadata(corpus, tmp_path):
    out = tmp_path / "out"
    rep = run(corpus, out, "speech.expressive=true", "records.parallel=[asr, tts]")
    assert rep["kept"] == {"aligned": 12, "asr": 12, "text": 10, "tts": 12}
    assert rep["dropped"] == {} and rep["items"] == 22 and rep["rows"] == 46
    assert rep["shards"] >= 2 and rep["tokens"]["speech"] > 0 and rep["units_per_s"] > 0
    assert rep["hours_in"] == pytest.approx(sum(u.duration for u in corpus["utts"]) / 3600, abs=1e-5)
    assert "hours in" in format_report(rep)
    files = sorted(out.rglob("shard-*.parquet"))
    assert {f.parent.name for f in files} == {"aligned", "asr", "text", "tts"}
    meta = read_metadata(files[0])
    assert meta["schema_version"] == 1 and meta["has_pitch"] and meta["frame_rates"]["hubert"] == 25.0
    assert meta["vocab_layout"]["base_vocab_size"] == 320 and len(meta["tokenizer_sha256"]) == 64
    assert meta["config"]["interleave"]["speech_span"]["max"] == 15
    assert pq.read_schema(files[0]).remove_metadata().equals(SCHEMA)
    assert pq.ParquetFile(files[0]).num_row_groups >= 2  # row groups smaller than shards
    index = json.loads((out / "index.json").read_text())
    assert sorted(s["name"] for s in index["shards"]) == [f.relative_to(out).as_posix() for f in files]
    assert (out / "config.yaml").is_file() and not (out / "_work").exists()
    again = load_config(PrepareConfig, out / "config.yaml")  # the saved config reloads
    assert again.speech.expressive


def test_byte_identical_and_parallel_equals_serial(corpus, tmp_path):
    run(corpus, tmp_path / "a")
    run(corpus, tmp_path / "b", "workers=2")
    run(corpus, tmp_path / "c", "workers=2", "start_method=spawn")  # ctx pickled to workers
    a, b = shard_bytes(tmp_path / "a"), shard_bytes(tmp_path / "b")
    assert a and a == b == shard_bytes(tmp_path / "c")
    ia = json.loads((tmp_path / "a" / "index.json").read_text())
    ib = json.loads((tmp_path / "b" / "index.json").read_text())
    assert ia == ib


def test_materialised_mode(corpus, tmp_path):
    from spiritlm.data.reader import ShardReader

    run(corpus, tmp_path / "m", "records.mode=materialised", "seed=5")
    run(corpus, tmp_path / "a", "seed=5")
    mat = {r["id"]: r["input_ids"] for r in ShardReader(tmp_path / "m", seed=5)}
    live = {r["id"]: r["input_ids"] for r in ShardReader(tmp_path / "a", seed=5, epoch=0)}
    assert mat.keys() == live.keys()
    assert all(np.array_equal(mat[k], live[k]) for k in mat)  # epoch 0 == materialised epoch 0


def _bad_corpus(corpus, root: Path) -> dict:
    from spiritlm.manifest import Utterance, Word, read_manifest, write_manifest

    utts = read_manifest(corpus["manifest"])
    for u in utts:
        u.audio_path = str(corpus["root"] / u.audio_path)
    (root / "garbage.wav").write_bytes(b"not a wav file at all")
    w = [Word("hello", 0.1, 0.4)]
    utts[0].audio_path = str(root / "missing.wav")  # audio_missing
    utts[1].audio_path = str(root / "garbage.wav")  # audio_unreadable
    utts[2].text = ""  # empty_transcript -> speech-only
    utts[3].words = utts[3].words[:-1]  # alignment_incomplete -> speech-only
    utts[4].words = []  # alignment_empty -> speech-only
    utts[5].duration = 100.0  # the manifest is wrong: the words run past the real audio
    utts[5].words = utts[5].words[:-1] + [Word(utts[5].words[-1].word, 50.0, 50.5)]
    extra = [Utterance("u0006", utts[6].audio_path, 1.0, 16000, "hello", "s", words=w)]  # dup id
    write_manifest(root / "m1.jsonl", utts)
    write_manifest(root / "m2.jsonl", extra)
    (root / "text.txt").write_bytes(b"a good line\n\xff\xfe bad bytes\nanother line\n")
    (root / "docs.jsonl").write_text('{"id": "d1", "text": "fine"}\n{"text": ""}\n{oops\n')
    return {"manifests": [root / "m1.jsonl", root / "m2.jsonl"],
            "text": [root / "text.txt", root / "docs.jsonl"]}


@pytest.mark.parametrize("policy", ["speech_only", "drop"])
def test_bad_inputs_are_counted_with_reasons(corpus, tmp_path, policy):
    bad = _bad_corpus(corpus, tmp_path)
    out = tmp_path / "out"
    cfg = load_config(PrepareConfig, None, [
        f"output_dir={out}", f"text_tokenizer={corpus['tokenizer']}", "progress=false",
        f"inputs.manifests=[{bad['manifests'][0]}, {bad['manifests'][1]}]",
        f"inputs.text_corpora=[{bad['text'][0]}, {bad['text'][1]}]",
        f"records.on_alignment_failure={policy}"])
    rep = prepare_shards(cfg)
    failures = {"empty_transcript": 1, "alignment_incomplete": 1, "alignment_empty": 1}
    dropped = {"audio_missing": 1, "audio_unreadable": 1, "duplicate_id": 1, "non_utf8": 1,
               "empty_text": 1, "invalid_json": 1, "duration_mismatch": 1}  # 100 s for ~3 s
    if policy == "speech_only":
        assert rep["fallback"] == failures and rep["kept"]["speech"] == 3
    else:
        dropped.update(failures)
        assert "speech" not in rep["kept"]
    assert rep["dropped"] == dropped
    assert rep["kept"]["aligned"] == 6 and rep["kept"]["text"] == 3
    log = [json.loads(x) for x in (out / "drops.jsonl").read_text().splitlines()]
    assert len(log) == 10  # every drop and fallback is listed with its reason and message
    assert all(d["reason"] and d["message"] for d in log)


def test_all_speech_dropped_fails_after_writing_the_report(corpus, tmp_path):
    """A manifest whose audio moved: text alone must not pass as finished shards."""
    from spiritlm.manifest import read_manifest, write_manifest

    utts = read_manifest(corpus["manifest"])
    for u in utts:
        u.audio_path = str(tmp_path / "moved" / Path(u.audio_path).name)
    write_manifest(tmp_path / "m.jsonl", utts)
    out = tmp_path / "out"
    cfg = load_config(PrepareConfig, None, [
        f"output_dir={out}", f"text_tokenizer={corpus['tokenizer']}", "progress=false",
        f"inputs.manifests=[{tmp_path / 'm.jsonl'}]"])
    with pytest.raises(ValueError, match="every speech item was dropped.*audio file not found"):
        prepare_shards(cfg)
    rep = json.loads((out / "report.json").read_text())  # nothing lost: report and drop log exist
    assert rep["dropped"] == {"audio_missing": len(utts)}
    assert len((out / "drops.jsonl").read_text().splitlines()) == len(utts)


def test_config_errors_tell_the_fix(corpus, tmp_path):
    from spiritlm.config import ConfigError

    with pytest.raises(ConfigError, match="text_tokenizer is not set"):
        prepare_shards(load_config(PrepareConfig, None, [f"output_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match="asr"):
        load_config(PrepareConfig, None, ["records.parallel=[foo]"])
    with pytest.raises(ShardError, match="not a spiritlm shard"):
        pq.write_table(pq.read_table(next((tmp_path).glob("*"), None) or _tiny(tmp_path)),
                       tmp_path / "x.parquet")
        read_metadata(tmp_path / "x.parquet")


def _tiny(tmp_path):
    import pyarrow as pa

    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1]}), p)
    return p


def _cli(recipe_args):
    code = ("import sys; from spiritlm.cli import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, "prepare", "shards", *recipe_args]


def _wait_for(pred, proc, timeout=60.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


def test_kill_9_and_restart_gives_the_same_shards(corpus, tmp_path):
    """kill -9 the whole job (parent + workers) at three points, restart, compare bytes."""
    ref = tmp_path / "ref"
    extra = ("chunk_size=1", "workers=2", "shards.target_mb=0.002", "shards.row_group_mb=0.001")
    run(corpus, ref, *extra)
    want = shard_bytes(ref)
    assert len(want) >= 3
    recipe = tmp_path / "r.toml"
    recipe.write_text("")
    out = tmp_path / "out"
    args = [str(recipe)] + [f"--set={o}" for o in prepare_overrides(corpus, out, *extra)]
    n_chunks = lambda: len(list((out / "_work").glob("chunk-*.parquet")))  # noqa: E731
    n_shards = lambda: len(list(out.rglob("shard-*.parquet")))  # noqa: E731
    points = [lambda: n_chunks() >= 3, lambda: n_chunks() >= 15, lambda: n_shards() >= 1]
    states = []
    for when in points:
        p = subprocess.Popen(_cli(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        hit = _wait_for(when, p)
        os.killpg(p.pid, signal.SIGKILL)  # the job and its worker processes
        p.wait()
        states.append((hit, n_chunks(), n_shards()))
    print("killed at (hit, chunks done, shards written):", states)
    assert states[0][0] and states[1][0]  # killed mid-way at least in the chunk phase
    r = subprocess.run(_cli(args), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert shard_bytes(out) == want
    assert not list(out.rglob(".*.tmp"))


def test_restart_after_partial_work_dir(corpus, tmp_path):
    """Deterministic kill points: chunks done, a half-written chunk, stale temp shards."""
    ref = tmp_path / "ref"
    run(corpus, ref)
    out = tmp_path / "out"
    run(corpus, out, "keep_work=true")
    work = out / "_work"
    for p in sorted(work.glob("chunk-*.parquet"))[1::2]:
        p.unlink()  # as if killed before these chunks finished
    (work / ".chunk-000002.parquet.tmp").write_bytes(b"partial")
    (out / "aligned" / ".shard-00001.parquet.tmp").write_bytes(b"partial")
    (out / "aligned" / "shard-00000.parquet").write_bytes(b"truncated?")  # rewritten anyway
    run(corpus, out)
    assert shard_bytes(out) == shard_bytes(ref)
    assert not work.exists() and not list(out.rglob(".*.tmp"))


def test_ray_backend_gives_the_same_shards(corpus, tmp_path):
    """The Ray Data backend, actually run: a local Ray instance with 2 CPUs (started once here,
    ~20-30 s on 2 cores), 2 workers, byte-identical shards and index to the local backend."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    run(corpus, tmp_path / "local", "workers=2")
    t0 = time.time()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        rep = run(corpus, tmp_path / "ray", "backend=ray", "workers=2")
    finally:
        ray.shutdown()
    print(f"ray run: {time.time() - t0:.1f}s")
    assert rep["kept"] == {"aligned": 12, "text": 10}
    assert shard_bytes(tmp_path / "ray") == shard_bytes(tmp_path / "local")
    index = lambda d: json.loads((tmp_path / d / "index.json").read_text())  # noqa: E731
    assert index("ray") == index("local")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(n_words=st.integers(1, 12), n_frames=st.integers(0, 60), expressive=st.booleans(),
       seed=st.integers(0, 10**6), text_ids=st.lists(st.integers(0, 2**31 - 1), max_size=5),
       word=st.text(min_size=1, max_size=6))
def test_row_round_trip(n_words, n_frames, expressive, seed, text_ids, word):
    """Records -> Arrow rows -> Parquet -> records, exactly (aligned and pre-materialised)."""
    import io

    from spiritlm.data.records import AlignedRecord
    from spiritlm.data.shards import aligned_row, ids_row, row_to_record, rows_to_table

    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 10, 2 * n_words))
    lens = rng.integers(1, 4, n_words).astype(np.int32)
    units = {"hubert": rng.integers(0, 501, n_frames)}
    if expressive:
        units |= {"pitch": rng.integers(0, 64, n_frames // 2), "style": rng.integers(0, 100, 3)}
    rec = AlignedRecord(f"r{seed}", [word] * n_words, t[0::2], t[1::2],
                        rng.integers(0, 32000, int(lens.sum())), lens, units, 10.0, "spk")
    rows = [aligned_row(rec), ids_row("t", "text", np.array(text_ids, dtype=np.int64) % 2**31)]
    buf = io.BytesIO()
    pq.write_table(rows_to_table(rows), buf)
    back = pq.read_table(io.BytesIO(buf.getvalue())).to_pylist()
    r2 = row_to_record(back[0])
    assert r2.words == rec.words and r2.speaker == "spk" and r2.duration == 10.0
    for f in ("word_start", "word_end", "word_bpe", "word_bpe_len"):
        assert np.array_equal(getattr(r2, f), getattr(rec, f))
    assert r2.units.keys() == rec.units.keys()
    assert all(np.array_equal(r2.units[k], rec.units[k]) for k in rec.units)
    assert back[1]["input_ids"] == [x % 2**31 for x in text_ids] and back[1]["words"] is None


def test_held_out_splits_are_excluded_and_counted(corpus, tmp_path):
    from dataclasses import replace

    from spiritlm.manifest import read_manifest, write_manifest

    utts = read_manifest(corpus["manifest"])
    utts = [replace(u, split="heldout") if i % 4 == 0 else u for i, u in enumerate(utts)]
    root = corpus["root"]
    write_manifest(root / "split_manifest.jsonl", utts)
    c = dict(corpus, manifest=root / "split_manifest.jsonl")
    rep = prepare_shards(load_config(PrepareConfig, None, prepare_overrides(c, tmp_path / "o")))
    assert rep["kept"]["aligned"] == 9 and rep["dropped"] == {"split_excluded": 3}
    rep = prepare_shards(load_config(PrepareConfig, None, prepare_overrides(
        c, tmp_path / "o2", "inputs.splits=[train, heldout]")))
    assert rep["kept"]["aligned"] == 12 and rep["dropped"] == {}


def test_written_forms_take_case_and_punctuation_from_the_transcript():
    from spiritlm.data.records import written_forms

    assert written_forms(["the", "garden", "her"], "The garden. Her") == ["The", "garden.", "Her"]
    assert written_forms(["wait", "go"], "Wait — go!") == ["Wait —", "go!"]  # a lone dash joins
    assert written_forms(["hello", "world"], '" Hello world "') == ['" Hello', 'world "']  # leading ones too
    assert written_forms(["hello"], "- Hello") == ["- Hello"]
    assert written_forms(["there", "s"], "there's") is None  # not one to one: keep the aligned words
    assert written_forms(["the", "cat"], "The dog.") is None
    assert written_forms([], "") == []


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.from_regex(r"[a-z]{1,6}", fullmatch=True), min_size=1, max_size=8),
       marks=st.lists(st.sampled_from(["", ".", ",", "!", "?", '"', " -"]), min_size=8, max_size=8),
       caps=st.lists(st.booleans(), min_size=8, max_size=8))
def test_written_forms_round_trip(words, marks, caps):
    """Any transcript made of the words plus case and punctuation maps back onto them."""
    from spiritlm.data.records import written_forms

    tokens = [(w.capitalize() if c else w) + m for w, m, c in zip(words, marks, caps)]
    got = written_forms(words, " ".join(tokens))
    assert got == tokens


def test_word_form_transcript_writes_interleaved_text_as_the_transcript_does(corpus, tmp_path):
    rep = run(corpus, tmp_path / "t", "records.word_form=transcript")
    assert rep["word_form"] == {"transcript": 12}
    rows = pq.read_table(sorted((tmp_path / "t" / "aligned").glob("*.parquet"))[0]).to_pylist()
    by_id = {u.id: u for u in corpus["utts"]}
    for r in rows:
        assert " ".join(r["words"]) == by_id[r["id"]].text  # "The cat ... mat."
    base = run(corpus, tmp_path / "a")
    assert base["word_form"] == {}
    plain = pq.read_table(sorted((tmp_path / "a" / "aligned").glob("*.parquet"))[0]).to_pylist()
    assert plain[0]["words"][-1].isalpha() and rows[0]["words"][-1].endswith(".")
    assert len(rows[0]["word_bpe"]) > len(plain[0]["word_bpe"])  # the "." (and maybe the capital) add pieces
