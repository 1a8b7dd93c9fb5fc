"""Alignment: TextGrid/CTM/lhotse import (fixtures + round trips), pocketsphinx, MFA, checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_data_fixtures import make_corpus

from spiritlm.data.align import (AlignmentError, CTMAligner, LhotseAligner, MFAAligner,
                                 PocketsphinxAligner, TextGridAligner, align_manifest,
                                 align_utterances, alignment_error, letter_to_sound,
                                 measure_aligner)
from spiritlm.data.textgrid import (TextGridError, Tier, parse_textgrid, read_ctm,
                                    read_textgrid, textgrid_words, write_ctm, write_textgrid)
from spiritlm.manifest import Utterance, Word, read_manifest

MFA_LONG = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 1.5
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 1.5
        intervals: size = 4
        intervals [1]:
            xmin = 0
            xmax = 0.12
            text = ""
        intervals [2]:
            xmin = 0.12
            xmax = 0.5
            text = "the"
        intervals [3]:
            xmin = 0.5
            xmax = 1.31
            text = "cat"
        intervals [4]:
            xmin = 1.31
            xmax = 1.5
            text = ""
    item [2]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = 1.5
        intervals: size = 1
        intervals [1]:
            xmin = 0
            xmax = 1.5
            text = "DH"
'''

SHORT = '"ooTextFile"\n"TextGrid"\n0\n1.5\n<exists>\n1\n"IntervalTier"\n"spk1 - words"\n0\n1.5\n2\n' \
        '0.12\n0.5\n"the"\n0.5\n1.31\n"cat"\n'


def test_textgrid_fixtures_long_short_utf16(tmp_path):
    want = [("the", 0.12, 0.5), ("cat", 0.5, 1.31)]
    assert textgrid_words(parse_textgrid(MFA_LONG)) == want
    assert textgrid_words(parse_textgrid(SHORT)) == want  # MFA's "<speaker> - words" tier
    p = tmp_path / "u.TextGrid"
    p.write_bytes(MFA_LONG.encode("utf-16"))  # Praat writes UTF-16 for non-ASCII text
    assert textgrid_words(read_textgrid(p)) == want
    with pytest.raises(TextGridError, match="not a Praat TextGrid"):
        parse_textgrid('"ooTextFile"\n"Sound"\n')
    with pytest.raises(TextGridError, match="ends early"):
        parse_textgrid(MFA_LONG[:400])
    with pytest.raises(TextGridError, match="no interval tier named 'words'"):
        textgrid_words(parse_textgrid(MFA_LONG.replace('"words"', '"w"')))


labels = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8)
times = st.floats(0, 1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(items=st.lists(st.tuples(times, times, labels), max_size=6),
       points=st.lists(st.tuples(times, labels), max_size=3), short=st.booleans(),
       name=labels)
def test_textgrid_round_trip(items, points, short, name):
    tiers = [Tier(name, "IntervalTier", 0.0, 1e4, items), Tier("p", "TextTier", 0.0, 1e4, points)]
    assert parse_textgrid(write_textgrid(tiers, 0.0, 1e4, short)) == tiers


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z0-9_-]{1,8}", fullmatch=True),
                       st.lists(st.tuples(st.from_regex(r"[a-z']{1,8}", fullmatch=True),
                                          st.integers(0, 10**5), st.integers(0, 10**4)),
                                min_size=1, max_size=5), max_size=4))
def test_ctm_round_trip(table):
    import tempfile
    from pathlib import Path

    ali = {u: [(w, s / 1000, (s + d) / 1000) for w, s, d in ws] for u, ws in table.items()}
    p = Path(tempfile.mkdtemp()) / "a.ctm"
    p.write_text(";; comment\n" + write_ctm(ali))
    back = read_ctm(p)
    assert back.keys() == ali.keys()
    for u in ali:
        for (w, s, e), (w2, s2, e2) in zip(ali[u], back[u]):
            assert w == w2 and abs(s - s2) < 1e-9 and abs(e - e2) < 2e-3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("align"), n=4)


def test_import_aligners_and_failures(corpus, tmp_path):
    utts = [Utterance(**{**u.__dict__, "words": []}) for u in corpus["utts"]]
    tg = tmp_path / "tg"
    (tg / "spk1").mkdir(parents=True)
    for u in corpus["utts"][:2]:  # u0001 in MFA's <speaker>/<id> layout, u0002/u0003 missing
        d = tg / "spk1" if u.speaker == "spk1" else tg
        items = [(w.start, w.end, w.word.upper()) for w in u.words]
        (d / f"{u.id}.TextGrid").write_text(write_textgrid(
            [Tier("words", "IntervalTier", 0.0, u.duration, items)], 0.0, u.duration))
    out, rep = align_utterances(utts, corpus["root"], TextGridAligner(tg))
    assert rep["aligned"] == 2 and rep["failed_reasons"] == {"no_alignment": 2}
    assert [w.word.lower() for w in out[0].words] == [w.word for w in corpus["utts"][0].words]
    assert out[0].words[0].word == out[0].text.split()[0]  # the transcript's spelling
    assert len(out) == 4 and out[3].words == []  # kept as speech-only
    out, rep = align_utterances(utts, corpus["root"], TextGridAligner(tg), keep_failed=False)
    assert len(out) == 2 and all(f["action"] == "dropped" for f in rep["failures"])
    # CTM: one complete, one not covering the transcript, one overrunning the audio
    u0, u1, u2 = corpus["utts"][:3]
    ali = {u0.id: [(w.word, w.start, w.end) for w in u0.words],
           u1.id: [(w.word, w.start, w.end) for w in u1.words[:-1]],
           u2.id: [(w.word, w.start, w.end + (5.0 if i == len(u2.words) - 1 else 0))
                   for i, w in enumerate(u2.words)]}
    (tmp_path / "a.ctm").write_text(write_ctm(ali))
    out, rep = align_utterances(utts, corpus["root"], CTMAligner(tmp_path / "a.ctm"))
    assert rep["failed_reasons"] == {"alignment_incomplete": 1, "alignment_overruns_audio": 1,
                                     "no_alignment": 1}
    # lhotse supervisions with word alignments
    from spiritlm.data.importers import export_lhotse

    _, sup = export_lhotse(corpus["utts"], corpus["root"], tmp_path / "lh")
    out, rep = align_utterances(utts, corpus["root"], LhotseAligner(sup))
    assert rep["failed"] == 0
    assert [(w.start, w.end) for w in out[1].words] == [(w.start, w.end) for w in corpus["utts"][1].words]


def test_align_manifest_writes_manifest_and_report(corpus, tmp_path):
    from spiritlm.data.importers import export_lhotse

    _, sup = export_lhotse(corpus["utts"], corpus["root"], tmp_path / "lh")
    rep = align_manifest(corpus["manifest"], tmp_path / "aligned.jsonl", LhotseAligner(sup))
    assert rep["aligned"] == 4
    back = read_manifest(tmp_path / "aligned.jsonl")
    assert back[0].audio_file(tmp_path).is_file()


def test_letter_to_sound():
    assert letter_to_sound("zorblax") == "Z AO R B L AE K S"
    assert letter_to_sound("42") == "F AO R T UW"
    assert letter_to_sound("--") == ""


def _espeak_utts(root, n):
    from spiritlm.corpus.espeak import get_espeak
    from spiritlm.data.encoders import read_audio  # noqa: F401
    import soundfile as sf
    import soxr

    sents = ["the quick brown fox jumps over the lazy dog", "my friend zorblax bought 42 apples",
             "she sells sea shells by the sea shore", "a big red house stood near the tree"]
    es, utts = get_espeak(), []
    for i, text in enumerate(sents[:n]):
        syn = es.synthesize(text)
        a = soxr.resample(syn.audio.astype(np.float32) / 32768, syn.sample_rate, 16000)
        sf.write(root / f"e{i}.wav", a, 16000, subtype="PCM_16")
        sr = syn.sample_rate
        ws = [Word(w.label, w.start / sr, w.end / sr) for w in syn.words]
        utts.append(Utterance(f"e{i}", f"e{i}.wav", len(a) / 16000, 16000, text, "en-us", words=ws))
    return utts


def test_pocketsphinx_aligns_with_oov_words(tmp_path):
    pytest.importorskip("pocketsphinx")
    try:
        utts = _espeak_utts(tmp_path, 2)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"espeak unavailable: {e}")
    al = PocketsphinxAligner()
    rep = measure_aligner(utts, tmp_path, al)
    assert rep["failed"] == {} and rep["within_50ms"] > 0.7, rep
    assert "zorblax" in al.oov_added
    # the same report from alignments already made (what the demo does: no second alignment)
    aligned, _ = align_utterances([Utterance(**{**u.__dict__, "words": []}) for u in utts], tmp_path, al)
    again = alignment_error(utts, aligned, al.name)
    assert again["utterances"] == rep["utterances"] and again["boundaries"] == rep["boundaries"]
    assert abs(again["mean_ms"] - rep["mean_ms"]) < 5  # only clipping to the duration differs
    bad = Utterance("x", "e0.wav", utts[0].duration, 16000, "-- !!", "s")
    with pytest.raises(AlignmentError) as e:
        al.align(bad, tmp_path / "e0.wav")
    assert e.value.reason == "empty_transcript"
    bad = Utterance("x", "e0.wav", utts[0].duration, 16000, "the ☃ cat", "s")
    out, rep = align_utterances([bad], tmp_path, al)
    assert rep["failed"] in (0, 1)  # symbols are not words; the rest aligns or fails, counted


@pytest.mark.slow
def test_pocketsphinx_accuracy_on_demo_corpus(tmp_path):
    """Measure (b) against the demo corpus's exact synthesizer word times."""
    try:
        from spiritlm.corpus.demo import DemoCorpusConfig, build_demo_corpus

        c = build_demo_corpus(DemoCorpusConfig(out_dir=str(tmp_path / "demo"), target_minutes=2,
                                               n_text_documents=10), progress=False)
        utts, mdir = read_manifest(c.manifest_path), c.manifest_path.parent
    except Exception as e:  # noqa: BLE001  (fall back to our own espeak sentences)
        print(f"demo corpus unavailable ({e}); measuring on espeak sentences")
        utts, mdir = _espeak_utts(tmp_path, 4), tmp_path
    rep = measure_aligner(utts, mdir, PocketsphinxAligner(), limit=100)
    print(json.dumps(rep))
    assert rep["within_50ms"] > 0.8 and rep["p95_ms"] < 100


def test_mfa_runner(tmp_path, corpus):
    if shutil.which("mfa") is None:
        with pytest.raises(FileNotFoundError, match="conda install"):
            MFAAligner("english_us_arpa", "english_us_arpa")
        pytest.skip("mfa is not installed (needs Kaldi from conda)")
    al = MFAAligner("english_us_arpa", "english_us_arpa", out_dir=tmp_path / "mfa")
    out, rep = align_utterances(list(corpus["utts"]), corpus["root"], al)
    assert rep["utterances"] == 4


def test_check_words_tolerates_tokenisation_not_missing_words():
    from spiritlm.data.align import check_words

    u = Utterance("x", "x.wav", 2.0, 16000, "There's a cat.", "s")
    check_words(u, [Word("there", 0, .2), Word("s", .2, .3), Word("a", .3, .4), Word("cat", .4, .9)])
    with pytest.raises(AlignmentError) as e:
        check_words(u, [Word("there's", 0, .2), Word("cat", .4, .9)])
    assert e.value.reason == "alignment_incomplete"
    with pytest.raises(AlignmentError) as e:
        check_words(u, [Word("there's", 0, .2), Word("a", .3, .4), Word("cat", .4, 2.5)])
    assert e.value.reason == "alignment_overruns_audio"


def test_pocketsphinx_unalignable_characters(tmp_path):
    pytest.importorskip("pocketsphinx")
    import soundfile as sf

    noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.05
    sf.write(tmp_path / "s.wav", noise, 16000)
    u = Utterance("x", "s.wav", 1.0, 16000, "the 日本 cat", "s")
    out, rep = align_utterances([u], tmp_path, PocketsphinxAligner())
    assert rep["failed_reasons"] == {"unalignable_characters": 1} and out[0].words == []
    # CJK are letters: the message says the aligner's alphabet does not cover them
    assert "alphabet" in rep["failures"][0]["message"] and "no letter" not in rep["failures"][0]["message"]
    # all-zero audio is not aligned (nor kept as speech by prepare shards): a reason of its own
    sf.write(tmp_path / "z.wav", np.zeros(16000, np.float32), 16000)
    out, rep = align_utterances([Utterance("z", "z.wav", 1.0, 16000, "the cat", "s")], tmp_path,
                                PocketsphinxAligner())
    assert rep["failed_reasons"] == {"silent_audio": 1}
    # NaN samples: the audio loader's message, as a reason, no numpy warning
    x = noise.copy()
    x[10] = np.nan
    sf.write(tmp_path / "n.wav", x, 16000, subtype="FLOAT")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, rep = align_utterances([Utterance("n", "n.wav", 1.0, 16000, "the cat", "s")], tmp_path,
                                    PocketsphinxAligner())
    assert rep["failed_reasons"] == {"audio_unreadable": 1}
    assert "NaN/inf samples" in rep["failures"][0]["message"]


def test_accented_letters_are_transliterated():
    from spiritlm.data.align import ascii_fold

    assert ascii_fold("café") == "cafe" and ascii_fold("naïve Zoë") == "naive Zoe"
    assert ascii_fold("日本") == "日本"  # other scripts stay (and are reported as not covered)
    assert letter_to_sound("crème") == letter_to_sound("creme") != letter_to_sound("crme")
    pytest.importorskip("pocketsphinx")
    al = PocketsphinxAligner()
    assert al._prepare_words(al._decoder(0), ["Café", "naïve"]) == ["cafe", "naive"]  # not "caf"
