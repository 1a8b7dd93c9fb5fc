"""Mini benchmarks: built from the demo grammar with espeak in the real layouts, held out, cached."""

import hashlib

import pytest

pytest.importorskip("espeakng_loader")

from spiritlm.eval.fewshot import read_utterances  # noqa: E402
from spiritlm.eval.mini import build_mini_benchmarks  # noqa: E402
from spiritlm.eval.storycloze import read_cross_dir, read_speech_dir, read_text_items  # noqa: E402
from spiritlm.eval.stsp import read_fewshot, read_manifest  # noqa: E402
from spiritlm.eval.zerospeech import pair_rows, read_gold  # noqa: E402

TINY = dict(swuggy=3, sblimp=2, storycloze=2, topic_storycloze=2, stsp=3, stsp_fewshot=3, asr=2, asr_shots=1,
            voices=2)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "COMPLETE.json":
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return build_mini_benchmarks(tmp_path_factory.mktemp("mini") / "mb", seed=0, sizes=TINY)


def test_layouts_parse_with_the_real_readers(mini):
    from spiritlm.corpus.grammar import split_of

    zs = mini["zerospeech"]
    lex = read_gold(zs / "lexical" / "dev" / "gold.csv", "lexical")
    assert len(pair_rows(lex, "lexical")) == 3 * 2 and all(r["frequency"] >= 1 for r in lex)
    syn = read_gold(zs / "syntactic" / "dev" / "gold.csv", "syntactic")
    pairs = pair_rows(syn, "syntactic")
    assert len(pairs) == 2 * 2 and all(split_of(p.good["transcription"]) == "heldout" for p in pairs)
    for kind in ("storycloze", "topic_storycloze"):
        assert len(read_speech_dir(mini[f"{kind}_speech"])) == 2
        assert len(read_cross_dir(mini[f"{kind}_cross"])) == 2
        items = read_text_items(mini[f"{kind}_text"])
        assert len(items) == 2 and all(it["correct"] != it["incorrect"] for it in items)
    recs = read_manifest(mini["stsp_manifest"])
    assert [r["sentiment"] for r in recs] == ["positive", "negative", "neutral"]
    assert all(r["wav"].is_file() for r in recs) and len(read_fewshot(mini["stsp_fewshot_T2T"])) == 3
    assert len(read_utterances(mini["asr_manifest"])) == 2
    held = mini["heldout_texts"].read_text().splitlines()
    assert all(split_of(t) == "heldout" for t in held) and len(held) >= 2 + 2 + 2 + 6 + 3


def test_cached_by_hash(mini):
    marker = mini["root"] / "COMPLETE.json"
    before = marker.stat().st_mtime_ns
    again = build_mini_benchmarks(mini["root"], seed=0, sizes=TINY)
    assert again == mini and marker.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="unknown mini benchmark size"):
        build_mini_benchmarks(mini["root"], sizes={"nope": 1})


def test_bytes_do_not_depend_on_processes(mini, tmp_path):
    # the fixture builds with the default 2 processes; every byte (COMPLETE.json included) must match
    other = build_mini_benchmarks(tmp_path / "mb2", seed=0, sizes=TINY, processes=1)
    assert _digest(other["root"]) == _digest(mini["root"])
    assert (other["root"] / "COMPLETE.json").read_bytes() == (mini["root"] / "COMPLETE.json").read_bytes()


def test_swuggy_redraws_pairs_espeak_cannot_say(tmp_path, monkeypatch):
    """A pair whose synthesis fails is skipped and the next one drawn, exactly as before batching."""
    import spiritlm.corpus.grammar as grammar
    from spiritlm.eval.zerospeech import read_gold

    sizes = dict(TINY, swuggy=2, voices=1)
    ref = build_mini_benchmarks(tmp_path / "ref", seed=0, sizes=sizes)
    words = [r["word"] for r in read_gold(ref["zerospeech"] / "lexical" / "dev" / "gold.csv", "lexical")]
    orig = grammar.Grammar.wuggy_pair
    calls = []

    def wuggy_pair(self):  # make the first accepted pair unsayable (non-ASCII non-word)
        word, non = orig(self)
        calls.append(word)
        return (word, "caf\u00e9") if word == words[0] and calls.count(word) == 1 else (word, non)

    monkeypatch.setattr(grammar.Grammar, "wuggy_pair", wuggy_pair)
    got = build_mini_benchmarks(tmp_path / "got", seed=0, sizes=sizes)
    lex = read_gold(got["zerospeech"] / "lexical" / "dev" / "gold.csv", "lexical")
    assert [r["word"] for r in lex][:2] == words[2:4] and len(lex) == 4
    assert len(list((got["zerospeech"] / "lexical" / "dev").glob("*.wav"))) == 4


def test_swuggy_nonwords_never_sound_exactly_like_their_word(tmp_path):
    """The demo's 60 pairs (seed 0) held eight/aight and birds/bourds (same phones, same samples)
    and warm/woarm, short/shoart (another phone label, same samples): 0.5 for any model. The
    builder redraws such pairs and records them."""
    import json

    sizes = dict(swuggy=60, sblimp=0, storycloze=0, topic_storycloze=0, stsp=0, stsp_fewshot=0, asr=0,
                 asr_shots=0, voices=2)
    mb = build_mini_benchmarks(tmp_path / "mb", seed=0, sizes=sizes)
    lex_dir = mb["zerospeech"] / "lexical" / "dev"
    pairs = pair_rows(read_gold(lex_dir / "gold.csv", "lexical"), "lexical")
    assert len(pairs) == 60 * 2
    for p in pairs:
        assert p.good["phones"] != p.bad["phones"], p.info
        assert (lex_dir / f"{p.good['filename']}.wav").read_bytes() != (lex_dir / f"{p.bad['filename']}.wav").read_bytes()
    replaced = json.loads((mb["root"] / "COMPLETE.json").read_text())["swuggy_replaced"]
    assert {"eight/aight", "birds/bourds", "warm/woarm", "short/shoart"} <= set(replaced)
    assert not {p.info["word"] for p in pairs} & {r.split("/")[0] for r in replaced}


def test_a_draw_excludes_the_texts_of_other_draws(mini, tmp_path):
    # the same seed as the dev draw: without the exclusion every item would be the dev draw's
    dev = set(mini["heldout_texts"].read_text().splitlines())
    other = build_mini_benchmarks(tmp_path / "test", seed=0, sizes=TINY, exclude=dev)
    mine = set(other["heldout_texts"].read_text().splitlines())
    assert len(mine) == len(dev) and not mine & dev
    for kind in ("storycloze", "topic_storycloze"):
        contexts = [{str(it["context"]) for it in read_text_items(m[f"{kind}_text"])} for m in (mini, other)]
        assert len(contexts[1]) == 2 and not contexts[0] & contexts[1]


def test_ending_length_balance_measures_both_endings(mini):
    import soundfile as sf

    from spiritlm.eval.mini import ending_length_balance

    root = mini["root"] / "topic_storycloze"
    got = ending_length_balance(root)
    items = read_text_items(mini["topic_storycloze_text"])
    assert got["n"] == len(items) == 2
    assert got["words"]["correct_mean"] == sum(len(it["correct"].split()) for it in items) / 2
    secs = [sf.info(str(root / "cross" / f"{k}_incorrect.wav")).duration for k in range(2)]
    assert got["seconds"]["incorrect_mean"] == sum(secs) / 2
    assert 0 <= got["seconds"]["shorter_is_right"] <= 1 and 0 < got["seconds"]["p"] <= 1
