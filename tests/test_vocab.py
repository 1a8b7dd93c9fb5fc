"""The Spirit LM id layout and the release's speech-string format."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spiritlm.vocab import (
    SPIRITLM,
    SpeechStringError,
    UnitError,
    VocabLayout,
    dedup,
    ids_to_units,
    string_to_units,
    units_to_ids,
    units_to_string,
)

GOLDEN = json.loads((Path(__file__).parent / "data" / "release_tokenizer_vector.json").read_text())
EXAMPLE = {"hubert": "78 42 81 159 316 259", "pitch": "13 13 13 13 13 3", "style": "81 81 81 81 81 81"}


def test_release_id_layout():
    L = SPIRITLM
    assert (L.text_id, L.speech_id) == (32000, 32001)
    assert L.token_to_id("[Text]") == 32000 and L.token_to_id("[Speech]") == 32001
    assert L.token_to_id("[Hu0]") == 32002 and L.token_to_id("[Hu500]") == 32502
    assert L.token_to_id("[Pi0]") == 32503 and L.token_to_id("[Pi63]") == 32566
    assert L.token_to_id("[St0]") == 32567 and L.token_to_id("[St99]") == 32666
    assert L.vocab_size == 32667
    assert L.padded_vocab_size(256) == 32768  # Expressive model card
    toks = L.added_tokens()
    assert len(toks) == 667 and len(set(toks)) == 667
    assert all(L.token_to_id(t) == 32000 + i for i, t in enumerate(toks))
    assert L.id_to_token(32502) == "[Hu500]"
    with pytest.raises(KeyError):
        L.id_to_token(31999)
    with pytest.raises(KeyError):
        L.token_to_id("[Hu501]")


def test_base_layout_matches_the_base_model_card():
    from spiritlm.vocab import SPIRITLM_BASE

    assert SPIRITLM_BASE.vocab_size == 32503 and SPIRITLM_BASE.padded_vocab_size(256) == 32512
    assert SPIRITLM_BASE.token_to_id("[Hu500]") == 32502
    assert units_to_string({"hubert": [1, 1, 2]}, layout=SPIRITLM_BASE) == "[Hu1][Hu2]"
    with pytest.raises(UnitError, match="outside"):
        units_to_string({"hubert": [1], "pitch": [0]}, has_pitch=True, layout=SPIRITLM_BASE)
    with pytest.raises(SpeechStringError):
        string_to_units("[Pi0]", layout=SPIRITLM_BASE)


def test_layout_is_configurable():
    L = VocabLayout(base_vocab_size=1000, hubert_size=50, pitch_size=8, style_size=4,
                    text_marker="<text>", speech_marker="<speech>", hubert_prefix="U")
    assert L.text_id == 1000 and L.streams["hubert"].offset == 1002
    assert L.streams["pitch"].offset == 1052 and L.streams["style"].offset == 1060
    assert L.vocab_size == 1064
    assert units_to_string({"hubert": [3, 3, 4]}, layout=L) == "[U3][U4]"
    with pytest.raises(ValueError, match="prefixes must differ"):
        VocabLayout(pitch_prefix="Hu")


def test_release_golden_vector_expressive_and_base():
    # The release's own test output for a real 9.12 s utterance: 228/114/10 units.
    assert len(GOLDEN["hubert"].split()) == 228 and len(GOLDEN["pitch"].split()) == 114
    assert units_to_string(GOLDEN, has_pitch=True, has_style=True) == GOLDEN["expressive_string"]
    assert units_to_string(GOLDEN) == GOLDEN["base_string"]
    ids = units_to_ids(GOLDEN, has_pitch=True, has_style=True)
    assert [SPIRITLM.id_to_token(i) for i in ids] == [
        "[" + t for t in GOLDEN["expressive_string"].split("[")[1:]
    ]


def test_issue_example_base_and_decoding():
    assert units_to_string(EXAMPLE) == "[Hu78][Hu42][Hu81][Hu159][Hu316][Hu259]"
    # Decoding the documented string gives back the documented units.
    s = "[St81][Hu78][Pi13][Hu42][Hu81][Hu159][Hu316][Pi3][Hu259]"
    assert string_to_units(s) == EXAMPLE


def test_issue_example_expressive_follows_the_timing_rule():
    # The docstring example of the release (``[St81][Hu78][Pi13]...``) cannot come out of the
    # rule its own code applies (and that the golden vector above confirms): at t=0 the order is
    # St < Pi < Hu, Pi3 sits at 5/12.5 = 0.4 s after all six HuBERT units (<= 0.2 s), and style
    # is not deduplicated, so every second brings a new [St81]. We follow the code.
    got = units_to_string(EXAMPLE, has_pitch=True, has_style=True)
    assert got == "[St81][Pi13][Hu78][Hu42][Hu81][Hu159][Hu316][Hu259][Pi3]" + "[St81]" * 5


def test_hubert_rate_puts_hubert_after_simultaneous_pitch():
    # Frame 25 of HuBERT (t=25/24.99 > 1.0) comes after the style token of second 1.
    h = list(range(26))
    s = units_to_string({"hubert": h, "style": [7, 8]}, has_style=True)
    assert s.index("[St8]") < s.index("[Hu25]") and s.index("[St8]") > s.index("[Hu24]")


@pytest.mark.parametrize(
    "bad, where",
    [
        ("[Hu1][Hx2]", "character 5"),
        ("[Hu1][Hu2", "character 5"),
        ("[Hu1]x[Hu2]", "character 5"),
        ("[Hu501]", "outside"),
        ("[Pi64]", "outside"),
        ("[St100]", "outside"),
        ("[Hu1][Text]", "text marker"),
        ("[Hu-1]", "character 0"),
    ],
)
def test_malformed_strings_name_the_position(bad, where):
    with pytest.raises(SpeechStringError, match=where):
        string_to_units(bad)


def test_speech_marker_is_skipped_and_empty_string():
    assert string_to_units("[Speech][Hu3][Hu3]") == {"hubert": "3 3"}
    assert string_to_units("") == {"hubert": ""}


@pytest.mark.parametrize(
    "units, msg",
    [
        ({"hubert": "1 2 501"}, "outside"),
        ({"hubert": [1, -2]}, "outside"),
        ({"hubert": "1 x"}, "not an integer"),
        ({"hubert": np.array([1.5])}, "integers"),
        ({"pitch": "1"}, "lack stream"),
    ],
)
def test_bad_units_raise(units, msg):
    with pytest.raises(UnitError, match=msg):
        units_to_string(units)


def test_ids_to_units_rejects_text_ids():
    with pytest.raises(SpeechStringError, match="token #1"):
        ids_to_units([32002, 5])
    with pytest.raises(SpeechStringError, match=r"\[Text\]"):
        ids_to_units([32002, 32000])


# ---- round trips --------------------------------------------------------------------------
hubert_st = st.lists(st.integers(0, 500), max_size=120)


@st.composite
def expressive_units(draw):
    n = draw(st.integers(0, 150))  # HuBERT frames at 25 Hz
    hubert = draw(st.lists(st.integers(0, 500), min_size=n, max_size=n))
    n_pi, n_st = -(-n // 2), -(-n // 25)  # 12.5 Hz and 1 Hz cover the same duration
    pitch = draw(st.lists(st.integers(0, 63), min_size=n_pi, max_size=n_pi))
    style = draw(st.lists(st.integers(0, 99), min_size=n_st, max_size=n_st))
    return {"hubert": hubert, "pitch": pitch, "style": style}


@settings(max_examples=200, deadline=None)
@given(hubert_st)
def test_base_round_trip(hubert):
    s = units_to_string({"hubert": hubert})
    want = dedup(np.array(hubert, dtype=np.int64)).tolist()
    assert string_to_units(s)["hubert"].split() == [str(v) for v in want]
    ids = units_to_ids({"hubert": hubert})
    assert ids_to_units(ids)["hubert"].tolist() == want
    assert units_to_string({"hubert": want}) == s  # dedup is idempotent


@settings(max_examples=200, deadline=None)
@given(expressive_units())
def test_expressive_round_trip(units):
    s = units_to_string(units, has_pitch=True, has_style=True)
    ids = units_to_ids(units, has_pitch=True, has_style=True)
    # ids and string are two spellings of the same token sequence
    assert "".join(SPIRITLM.id_to_token(i) for i in ids) == s
    back = string_to_units(s)
    back_ids = ids_to_units(ids)
    assert back["hubert"] == " ".join(map(str, back_ids["hubert"].tolist()))
    h = np.array(units["hubert"], dtype=np.int64)
    if h.size == 0:
        return
    kept = np.flatnonzero(np.concatenate(([True], h[1:] != h[:-1])))
    assert back_ids["hubert"].tolist() == h[kept].tolist()
    # every kept HuBERT unit carries the pitch/style active at its timestamp
    t = kept / 24.99
    for name, rate in (("pitch", 12.5), ("style", 1.0)):
        src = np.array(units[name])
        if src.size == 0:
            assert name not in back_ids
            continue
        j = np.searchsorted(np.arange(src.size) / rate, t, side="right") - 1
        assert back_ids[name].tolist() == src[np.clip(j, 0, None)].tolist()
        assert back[name].split() == [str(v) for v in back_ids[name].tolist()]
