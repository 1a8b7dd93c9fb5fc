"""The demo corpus: espeak binding, grammar, manifest format, builder (determinism, cache)."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from spiritlm.corpus import espeak as E
from spiritlm.corpus.demo import DemoCorpusConfig, build_demo_corpus, make_spec, synthesize_spec
from spiritlm.corpus.grammar import (LEXICON, PHENOMENA, SENTIMENT_LABELS, TOPICS, Grammar,
                                     sentiment_of, split_of, words_of)
from spiritlm.manifest import (ManifestError, Phone, Style, Utterance, Word, frame_labels,
                               phone_label, read_manifest, write_manifest)

TEXT = "The old farmer walks to the river, and the dog sleeps."
SMALL = dict(target_minutes=0.4, n_text_documents=300, seed=3)


# --- espeak binding ---------------------------------------------------------------------------
def test_event_struct_layout_matches_header():
    assert ctypes.sizeof(E.EspeakEvent) == 40
    assert (E.EspeakEvent.sample.offset, E.EspeakEvent.user_data.offset,
            E.EspeakEvent.id.offset) == (20, 24, 32)


def test_event_times_are_consistent_and_monotone():
    syn = E.get_espeak().synthesize(TEXT)
    assert syn.sample_rate == 22050 and len(syn.audio) > 22050
    evs = [e for e in syn.events if e.type in (E.EV_WORD, E.EV_PHONEME, E.EV_END)]
    assert evs
    for e in evs:  # a wrong struct layout would make these disagree (garbage values)
        assert abs(e.sample * 1000 / syn.sample_rate - e.audio_position) <= 1.0, e
        assert 0 <= e.sample <= len(syn.audio)
    samples = [e.sample for e in evs]
    assert samples == sorted(samples)
    assert {e.type for e in syn.events} <= {E.EV_WORD, E.EV_SENTENCE, E.EV_END, E.EV_PHONEME,
                                            E.EV_MSG_TERMINATED, E.EV_SAMPLERATE}
    assert [w.label for w in syn.words] == words_of(TEXT)
    assert all(p.label for p in syn.phones)


def test_synthesis_is_a_pure_function_of_its_arguments():
    es = E.get_espeak()
    text = "Tom found a small red box in the kitchen."
    a = es.synthesize(text, "en-us", seed=7)
    es.synthesize("Something else entirely, to disturb any state.", "en-us+f2", seed=1)
    b = es.synthesize(text, "en-us", seed=7)
    assert a.audio.tobytes() == b.audio.tobytes()
    assert a.events == b.events and a.words == b.words and a.phones == b.phones


@pytest.mark.parametrize("text", ["There are four birds in the attic.",
                                  "The cake came out of the oven soft and sweet.",
                                  "What a charming song it was!"])
def test_merged_dictionary_words_get_their_own_times(text):
    syn = E.get_espeak().synthesize(text, "en-us")
    assert [w.label for w in syn.words] == words_of(text)
    assert all(w.end > w.start for w in syn.words)


def test_zygote_forks_give_the_same_bytes_as_direct_forks():
    # A large process (the demo after training) forks from the small zygote instead; the
    # children must be forks of an equally pristine espeak, so the audio is byte-identical.
    es = E.get_espeak()
    reqs = [E.SynthRequest("Tom found a small red box in the kitchen.", "en-us", seed=7),
            E.SynthRequest("There are four birds in the attic.", "en-us+f2", 150, 40, 60, seed=3)]
    items = [(r, None, None, True) for r in reqs]
    direct = es.map_forked(E._request_job, items, 2, direct=True)
    via_zygote = es.map_forked(E._request_job, items, 2, direct=False)
    for (sa, a), (sb, b) in zip(direct, via_zygote):
        assert sa == sb == "ok"
        assert a.audio.tobytes() == b.audio.tobytes() and a.events == b.events and a.phones == b.phones
    assert es._zygote is not None and es._zygote._proc.poll() is None  # kept for the next call
    bad = (E.SynthRequest("caf\u00e9 au lait"), None, None, True)  # a child raises: reported, zygote lives
    with pytest.raises(RuntimeError, match="only ASCII"):
        es.map_forked(E._request_job, [items[0], bad], 2, direct=False)
    again = es.map_forked(E._request_job, items[:1], 1, direct=False)
    assert again[0][1].audio.tobytes() == direct[0][1].audio.tobytes()


def test_unknown_voice_variant_is_rejected():
    assert E.voice_exists("en-us+f2") and not E.voice_exists("en-us+nosuchvariant")
    with pytest.raises(ValueError):
        E.get_espeak().synthesize("Hello.", "en+nosuchvariant")


# --- the built corpus -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    a = build_demo_corpus(DemoCorpusConfig(out_dir=root / "a", num_workers=2, **SMALL),
                          progress=False)
    b = build_demo_corpus(DemoCorpusConfig(out_dir=root / "b", num_workers=1, **SMALL),
                          progress=False)
    return a, b


def _audio_hashes(corpus) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(corpus.audio_dir.iterdir())}


def test_builds_are_byte_identical_whatever_the_worker_count(corpora):
    a, b = corpora
    assert not a.cached and not b.cached
    assert a.manifest_path.read_bytes() == b.manifest_path.read_bytes()
    assert a.text_corpus_path.read_bytes() == b.text_corpus_path.read_bytes()
    ha = _audio_hashes(a)
    assert ha == _audio_hashes(b) and len(ha) == a.stats["n_utterances"]


def test_second_build_is_a_cache_hit(corpora):
    a, _ = corpora
    files = [a.manifest_path, a.text_corpus_path, *sorted(a.audio_dir.iterdir())]
    before = [p.stat().st_mtime_ns for p in files]
    again = build_demo_corpus(DemoCorpusConfig(out_dir=a.root, num_workers=1, **SMALL),
                              progress=False)
    assert again.cached and again.config_hash == a.config_hash and again.stats == a.stats
    assert [p.stat().st_mtime_ns for p in files] == before
    # 40 and 40.0 minutes are the same config; another seed is not
    cfg = DemoCorpusConfig(**SMALL)
    assert replace(cfg, target_minutes=int(1)).hash() == replace(cfg, target_minutes=1.0).hash()
    assert replace(cfg, seed=4).hash() != cfg.hash()
    assert replace(cfg, num_workers=7, out_dir="elsewhere").hash() == cfg.hash()


def test_never_overwrites_a_foreign_directory_nor_trusts_an_unmarked_one(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "manifest.jsonl").write_text("")  # e.g. a killed build: no COMPLETE.json
    with pytest.raises(FileExistsError):
        build_demo_corpus(DemoCorpusConfig(out_dir=d, **SMALL), progress=False)


def test_corpus_size_and_stats(corpora):
    a, _ = corpora
    utts = a.utterances()
    total = sum(u.duration for u in utts)
    assert total >= SMALL["target_minutes"] * 60 > total - utts[-1].duration
    assert a.stats["n_utterances"] == len(utts) and a.stats["n_words"] == sum(len(u.words) for u in utts)
    assert 30 <= DemoCorpusConfig().target_minutes <= 60


def test_audio_format_and_alignment(corpora):
    a, _ = corpora
    for u in a.utterances():
        path = u.audio_file(a.manifest_path.parent)
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert u.sample_rate == 16000 and abs(info.frames / 16000 - u.duration) < 1e-9
        assert [w.word for w in u.words] == words_of(u.text)
        for w0, w1 in zip(u.words, u.words[1:]):
            assert w0.start < w0.end <= w1.start
        assert 0 < u.words[0].start and u.words[-1].end <= u.duration
        # phones tile the utterance and nest inside words
        assert u.phones[0].start == 0 and abs(u.phones[-1].end - u.duration) < 1e-4
        for p0, p1 in zip(u.phones, u.phones[1:]):
            assert p0.end == p1.start and p0.start < p0.end
        starts = {p.start for p in u.phones}
        assert all(w.start in starts for w in u.words)
        assert u.split == split_of(u.text) and u.kind in ("story", "sentence", "sentiment")
        assert u.style is not None and 140 <= u.style.rate <= 200


def _db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-9)) if len(x) else -200.0


def test_words_land_where_the_audio_has_energy(corpora):
    a, _ = corpora
    n_pause_checks = 0
    for u in a.utterances():
        x, sr = sf.read(str(u.audio_file(a.root)), dtype="float32")
        cut = lambda s, e: x[int(round(s * sr)):int(round(e * sr))]  # noqa: E731
        for w in u.words:
            assert _db(cut(w.start, w.end)) > -35, (u.id, w)
        pause_ends = {p.end for p in u.phones if p.phone.startswith("_")}
        for p in u.phones:
            if p.phone.startswith("_") and p.end - p.start > 0.03:
                assert _db(cut(p.start, p.end)) < -35, (u.id, p)
        for w in u.words:  # after a pause, silence right before the word and sound right after
            if w.start in pause_ends:
                n_pause_checks += 1
                assert _db(cut(w.start - 0.01, w.start)) < -40, (u.id, w)
                assert _db(cut(w.start, w.start + 0.03)) > -45, (u.id, w)
    assert n_pause_checks >= 5


def test_spec_synthesis_matches_the_build(corpora):
    a, _ = corpora
    cfg = DemoCorpusConfig(**SMALL)
    spec = make_spec(cfg, 1)
    audio, words, phones = synthesize_spec(spec)
    u = a.utterances()[1]
    x, _ = sf.read(str(u.audio_file(a.root)), dtype="int16")
    assert np.array_equal(audio, x) and words == u.words and phones == u.phones


def test_text_corpus_is_train_only(corpora):
    a, _ = corpora
    docs = [json.loads(line) for line in a.text_corpus_path.read_text().splitlines()]
    assert len(docs) == SMALL["n_text_documents"]
    assert {d["kind"] for d in docs} == {"sentence", "story", "sentiment", "paragraph"}
    for d in docs:
        assert split_of(d["text"]) == "train"
        assert all(w.lower() in LEXICON for w in words_of(d["text"]))


# --- grammar ----------------------------------------------------------------------------------
def test_grammar_is_seeded():
    g1, g2 = Grammar(5), Grammar(5)
    assert [g1.sentence() for _ in range(20)] == [g2.sentence() for _ in range(20)]
    assert Grammar("a").story() == Grammar("a").story()
    assert Grammar(1).sentence() != Grammar(2).sentence() or Grammar(1).story() != Grammar(2).story()


def test_lexicon_is_closed_and_a_few_hundred_words():
    assert 300 <= len(LEXICON) <= 1500
    g = Grammar(0)
    for _ in range(300):
        st_ = g.story()
        texts = [g.sentence(), st_.text, st_.wrong_ending, st_.other_topic_ending,
                 g.sentiment_sentence().text, g.minimal_pair().good]
        for t in texts:
            assert all(w.lower() in LEXICON for w in words_of(t)), t


def test_nonwords_are_never_real_words():
    g = Grammar(1)
    for _ in range(500):
        w = g.nonword()
        assert w.isalpha() and w.lower() not in LEXICON and not Grammar.is_real_word(w)
        word, non = g.wuggy_pair()
        assert word in LEXICON and non not in LEXICON and non != word
        assert abs(len(non) - len(word)) <= 3


def test_minimal_pairs():
    g = Grammar(2)
    seen = set()
    for _ in range(600):
        mp = g.minimal_pair()
        seen.add(mp.phenomenon)
        assert mp.good != mp.bad
        assert sorted(words_of(mp.good.lower())) != sorted(words_of(mp.bad.lower())) \
            or mp.phenomenon == "word_order"
        if mp.phenomenon == "word_order":
            assert sorted(words_of(mp.good)) == sorted(words_of(mp.bad))
    assert seen == set(PHENOMENA)
    with pytest.raises(ValueError):
        g.minimal_pair("no_such_phenomenon")


def test_sentiment_labels_follow_the_lexicon():
    g = Grammar(3)
    for label in SENTIMENT_LABELS:
        for _ in range(100):
            s = g.sentiment_sentence(label)
            assert s.label == label == sentiment_of(s.text)


def test_stories_have_recurring_entities_and_distinct_endings():
    g = Grammar(4)
    topics = set()
    for _ in range(300):
        s = g.story()
        topics.add(s.topic)
        assert len(s.context) == 4 and len(s.sentences) == 5 and s.arc in ("good", "bad")
        assert s.ending != s.wrong_ending and s.other_topic != s.topic
        assert s.character in s.context[0] or s.character in s.context[1]
        assert any(_matches(t, s.ending) for t in TOPICS[s.topic]["end_" + s.arc])
        other_arc = "bad" if s.arc == "good" else "good"
        assert any(_matches(t, s.wrong_ending) for t in TOPICS[s.topic]["end_" + other_arc])
        assert any(_matches(t, s.other_topic_ending) for t in TOPICS[s.other_topic]["end_" + s.arc])
    assert topics == set(TOPICS)


def _matches(template: str, text: str) -> bool:
    parts = re.split(r"\{[A-Za-z]+\}", template)
    return re.fullmatch(".+?".join(re.escape(p) for p in parts), text, flags=re.IGNORECASE) is not None


def test_heldout_split_is_stable_and_about_ten_percent():
    g = Grammar(6)
    texts = [g.sentence() for _ in range(4000)]
    frac = sum(split_of(t) == "heldout" for t in texts) / len(texts)
    assert 0.07 < frac < 0.13
    assert split_of("The dog sleeps.") == split_of("the   DOG sleeps")  # normalised


# --- manifest ---------------------------------------------------------------------------------
def _utt(**kw) -> Utterance:
    base = dict(id="u1", audio_path="audio/u1.wav", duration=1.0, sample_rate=16000,
                text="a dog", speaker="en-us", style=Style(175, 50, 50),
                words=[Word("a", 0.1, 0.2), Word("dog", 0.2, 0.6)],
                phones=[Phone("_", 0.0, 0.1), Phone("a#", 0.1, 0.2), Phone("d", 0.2, 0.3)],
                split="train", kind="sentence", extra={"b": 1, "a": [1, 2]})
    base.update(kw)
    return Utterance(**base)


_label = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=6)


@st.composite
def utterances(draw, idx=0):
    dur = draw(st.floats(0.01, 100, allow_nan=False))
    bounds = sorted(draw(st.lists(st.floats(0, dur, allow_nan=False), max_size=8)))
    segs = list(zip(bounds[::2], bounds[1::2]))
    return Utterance(
        id=f"u{idx}-" + draw(_label), audio_path=draw(_label) + ".wav", duration=dur,
        sample_rate=draw(st.integers(1, 96000)), text=draw(st.text(max_size=30)),
        speaker=draw(_label), style=draw(st.none() | st.builds(Style, st.integers(0, 500),
                                                               st.integers(0, 99), st.integers(0, 99))),
        words=[Word(draw(_label), s, e) for s, e in segs],
        phones=[Phone(draw(_label), s, e) for s, e in segs],
        split=draw(st.sampled_from(["train", "heldout"])), kind=draw(_label),
        extra=draw(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 0), max_size=4).flatmap(
    lambda xs: st.tuples(*[utterances(idx=i) for i in range(len(xs))])))
def test_manifest_round_trip(tmp_path_factory, utts):
    path = tmp_path_factory.mktemp("m") / "manifest.jsonl"
    write_manifest(path, list(utts))
    back = read_manifest(path)
    assert [u.to_dict() for u in back] == [u.to_dict() for u in utts]
    write_manifest(path, back)
    assert read_manifest(path) == back


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("duration"), "duration"),
    (lambda d: d.update(duration=-1), "duration"),
    (lambda d: d.update(sample_rate=16000.0), "sample_rate"),
    (lambda d: d["words"][1].update(end=0.1), "words[1].end"),
    (lambda d: d["words"][1].update(start=0.15), "words[1].start"),
    (lambda d: d["phones"][0].update(end=5.0), "phones[0].end"),
    (lambda d: d.update(style={"rate": 1}), "style"),
    (lambda d: d.update(bogus=1), "bogus"),
    (lambda d: d.update(id=""), "id"),
])
def test_manifest_errors_name_line_and_field(tmp_path, mutate, field):
    good = _utt().to_dict()
    bad = _utt(id="u2").to_dict()
    mutate(bad)
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ManifestError) as ei:
        read_manifest(path)
    assert ei.value.line == 2 and ei.value.field == field
    assert f"m.jsonl:2: field '{field}'" in str(ei.value)


def test_manifest_bad_json_and_duplicates(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(_utt().to_dict()) + "\n{not json\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:2: invalid JSON"):
        read_manifest(path)
    path.write_text(json.dumps(_utt().to_dict()) + "\n" + json.dumps(_utt().to_dict()) + "\n")
    with pytest.raises(ManifestError, match="duplicate id"):
        read_manifest(path)


def test_write_manifest_is_atomic_and_canonical(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [_utt()])
    before = path.read_bytes()
    assert b'"extra": {"a": [1, 2], "b": 1}' in before  # sorted keys, stable bytes
    with pytest.raises(ManifestError):
        write_manifest(path, [_utt(id="x"), _utt(id="y", duration=0.0)])
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.jsonl"]


def test_frame_labels():
    u = _utt()
    labels = frame_labels(u, frame_rate=50)
    assert len(labels) == 50
    assert labels[:5] == ["sil"] * 5 and labels[5:10] == ["a#"] * 5 and labels[10:15] == ["d"] * 5
    assert labels[15:] == ["sil"] * 35
    assert phone_label("'oU") == "oU" and phone_label(",e@") == "e@" and phone_label("_:") == "sil"


def test_synth_bench_reports_both_paths_with_the_same_bytes(capsys):
    from spiritlm.corpus.synth_bench import bench_synth, print_report

    r = bench_synth(n_wavs=4, ballast_gib=0.05, repeat=1)
    assert r["same_bytes"] and r["direct_s"] > 0 and r["zygote_s"] > 0 and r["rss_gib"] > 0.05
    print_report(r)
    assert "zygote vs direct" in capsys.readouterr().out
