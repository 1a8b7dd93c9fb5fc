"""Interleaving: vectorised == reference, the straddling rule, partition, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spiritlm.data.interleave import (InterleaveConfig, Interleaver, RecordRng, SpanDist,
                                      bench_interleave, sample_spans, synthetic_records)
from spiritlm.data.records import AlignedRecord, RecordError, asr_ids, text_ids, tts_ids
from spiritlm.vocab import SPIRITLM, VocabLayout, ids_to_units, units_to_ids

DISTS = [SpanDist("uniform", 10, 30), SpanDist("uniform", 1, 3), SpanDist("fixed", 2, 2),
         SpanDist("poisson", 1, 12, mean=4.0)]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), epoch=st.integers(0, 50), expressive=st.booleans(),
       td=st.sampled_from(DISTS), sd=st.sampled_from(DISTS),
       start=st.sampled_from(["random", "text", "speech"]))
def test_vectorised_equals_reference(seed, epoch, expressive, td, sd, start):
    recs = synthetic_records(6, seed=seed % 1000, words_per_record=(1, 40), expressive=expressive)
    il = Interleaver(InterleaveConfig(td, sd, start), has_pitch=expressive, has_style=expressive)
    flat, off = il.batch(recs, seed, epoch)
    for i, rec in enumerate(recs):
        ref = il.reference(rec, seed, epoch)
        assert np.array_equal(flat[off[i]:off[i + 1]], ref)
        assert np.array_equal(il(rec, seed, epoch), ref)  # batch composition does not matter


def _rec(words, starts, ends, units, bpe_len=None):
    n = len(words)
    bpe_len = bpe_len or [1] * n
    return AlignedRecord("r", words, starts, ends, np.arange(3, 3 + sum(bpe_len)), bpe_len, units,
                         duration=float(ends[-1]) if n else 0.0)


def test_one_speech_span_is_units_to_ids():
    for rec in synthetic_records(10, seed=3):
        cfg = InterleaveConfig(speech_span=SpanDist("fixed", 10_000, 10_000), start="speech")
        il = Interleaver(cfg, has_pitch=True, has_style=True)
        want = np.concatenate(([SPIRITLM.speech_id], units_to_ids(rec.units, True, True)))
        assert np.array_equal(il(rec), want)
        cfg = InterleaveConfig(text_span=SpanDist("fixed", 10_000, 10_000), start="text")
        assert np.array_equal(Interleaver(cfg)(rec), text_ids(rec.word_bpe))


def test_straddling_frames_go_to_the_side_of_their_midpoint():
    # word 0 [0, 0.5], word 1 [0.58, 1.0]: cut at 0.54. HuBERT frame 12 = [0.48, 0.52) mid 0.50
    # -> word 0; frame 13 = [0.52, 0.56) mid 0.54 -> word 1 (a midpoint on the cut goes right).
    # Pitch frame 6 = [0.48, 0.56) mid 0.52 -> word 0. Style frame 0 mid 0.5 -> word 0.
    lay = VocabLayout(hubert_dedup=False, pitch_dedup=False)
    units = {"hubert": np.arange(25) % 501, "pitch": np.arange(13) % 64, "style": np.array([7])}
    rec = _rec(["a", "b"], [0.0, 0.58], [0.5, 1.0], units)
    cfg = InterleaveConfig(SpanDist("fixed", 1, 1), SpanDist("fixed", 1, 1), start="speech")
    ids = Interleaver(cfg, lay, has_pitch=True, has_style=True)(rec)
    assert ids[0] == lay.speech_id and lay.text_id in ids
    speech = ids[1:list(ids).index(lay.text_id)]
    got = ids_to_units(speech, lay)
    assert got["hubert"].tolist() == list(range(13))
    assert sorted(set(got["pitch"].tolist())) == list(range(7))
    assert set(got["style"].tolist()) == {7}
    assert ids[-1] == 4  # then [Text] + word b's single BPE id


def _segments(ids, lay):
    out, cur = [], None
    for t in ids.tolist():
        if t in (lay.text_id, lay.speech_id):
            cur = [t]
            out.append(cur)
        else:
            cur.append(t)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_spans_partition_the_frames(seed):
    lay = VocabLayout(hubert_dedup=False, pitch_dedup=False)
    for rec in synthetic_records(5, seed=seed, words_per_record=(5, 60)):
        d = SpanDist("fixed", 3, 3)
        runs = [Interleaver(InterleaveConfig(d, d, s), lay, has_pitch=True, has_style=True)(rec)
                for s in ("speech", "text")]
        segs = [[s[1:] for s in _segments(r, lay) if s[0] == lay.speech_id] for r in runs]
        order = [x for pair in zip(segs[0], segs[1] + [[]]) for x in pair]  # A0 B0 A1 B1 ...
        allids = np.array([t for s in order for t in s], dtype=np.int64)
        kinds = lay.stream_of_ids(allids)
        for k, name in enumerate(("hubert", "pitch", "style")):
            want = rec.units[name] + lay.streams[name].offset
            assert np.array_equal(allids[kinds == k], want), name  # nothing lost or duplicated


def test_spans_follow_the_distributions_and_markers():
    cfg = InterleaveConfig()
    firsts = set()
    for i in range(200):
        lengths, mods = sample_spans(200, cfg, RecordRng(f"r{i}", 0, 0))
        assert sum(lengths) == 200
        firsts.add(mods[0])
        for ln, m in list(zip(lengths, mods))[:-1]:
            assert (10 <= ln <= 30) if m == 0 else (5 <= ln <= 15)
        assert all(a != b for a, b in zip(mods, mods[1:]))
    assert firsts == {0, 1}
    il = Interleaver(has_pitch=True, has_style=True)
    for rec in synthetic_records(20, seed=1):
        ids = il(rec, 0, 0)
        lengths, mods = il.spans(rec, 0, 0)
        markers = np.isin(ids, [SPIRITLM.text_id, SPIRITLM.speech_id]).sum()
        assert markers == len(lengths) and ids[0] == (SPIRITLM.text_id, SPIRITLM.speech_id)[mods[0]]


def test_resampled_per_epoch_and_deterministic():
    il = Interleaver(has_pitch=True, has_style=True)
    recs = synthetic_records(10, seed=2, words_per_record=(40, 80))
    a = [il(r, 0, 0) for r in recs]
    assert all(np.array_equal(x, il(r, 0, 0)) for x, r in zip(a, recs))
    b = [il(r, 0, 1) for r in recs]
    assert sum(not np.array_equal(x, y) for x, y in zip(a, b)) >= 8
    c = [il(r, 1, 0) for r in recs]
    assert sum(not np.array_equal(x, y) for x, y in zip(a, c)) >= 8


def test_expressive_speech_spans_decode_on_their_own():
    il = Interleaver(has_pitch=True, has_style=True)
    for rec in synthetic_records(10, seed=4):
        for seg in _segments(il(rec, 0, 0), SPIRITLM):
            if seg[0] == SPIRITLM.speech_id:
                u = ids_to_units(seg[1:])
                assert "pitch" in u and len(u["pitch"]) == len(u["hubert"])


def test_parallel_formats():
    rec = synthetic_records(1, seed=5)[0]
    sp = units_to_ids(rec.units, True, True)
    a = asr_ids(rec, True, True)
    assert a[0] == SPIRITLM.speech_id and a[len(sp) + 1] == SPIRITLM.text_id
    assert np.array_equal(a[len(sp) + 2:], rec.word_bpe)
    t = tts_ids(rec, True, True)
    assert t[0] == SPIRITLM.text_id and np.array_equal(t[-len(sp):], sp)


def test_degenerate_records():
    with pytest.raises(RecordError, match="at least one word"):
        _rec([], [], [], {"hubert": np.arange(5)})
    # a speech span that receives no frame becomes text (no empty [Speech] marker)
    rec = _rec(["a", "b", "c"], [0.0, 0.1, 5.0], [0.05, 0.2, 5.1], {"hubert": np.array([1])})
    cfg = InterleaveConfig(SpanDist("fixed", 1, 1), SpanDist("fixed", 1, 1), start="text")
    il = Interleaver(cfg)
    ids = il(rec)
    assert np.array_equal(ids, il.reference(rec))
    assert ids.tolist() == [SPIRITLM.text_id, 3, 4, 5]  # frame 0 (mid 0.02) is in word a


def test_bench_runs_and_agrees():
    r = bench_interleave(n_records=40, seconds=0.2)
    assert r["vectorised"]["tokens_per_s"] > r["reference"]["tokens_per_s"]


def test_int16_units_and_a_large_base_vocabulary():
    lay = VocabLayout(base_vocab_size=128256)  # LLaMA-3-sized: ids above int16
    il = Interleaver(layout=lay, has_pitch=True, has_style=True)
    for rec in synthetic_records(5, seed=9):
        rec16 = AlignedRecord.trusted(rec.id, rec.words, rec.word_start, rec.word_end, rec.word_bpe,
                                      rec.word_bpe_len, {k: v.astype(np.int16) for k, v in rec.units.items()})
        a, b = il(rec16, 0, 0), il.reference(rec, 0, 0)
        assert np.array_equal(a, b) and a.max() >= 128256
