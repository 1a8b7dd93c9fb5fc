"""The text tokenizer extended with the speech vocabulary, and its HF export."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spiritlm.text_tokenizer import SpiritTokenizer, TokenizerError, train_sentencepiece
from spiritlm.vocab import SPIRITLM, SpeechStringError, VocabLayout, units_to_ids

WORDS = "the cat sat on a mat dog ran far away happy sad little big house tree 42 [x] Hu".split()


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(2000)]
    return train_sentencepiece(lines, tmp_path_factory.mktemp("sp"), vocab_size=300)


@pytest.fixture(scope="module")
def tok(sp_model):
    return SpiritTokenizer(sp_model)


def test_ids_continue_after_the_base_vocabulary(tok):
    assert tok.layout.base_vocab_size == 300
    assert tok.layout.text_id == 300 and tok.layout.speech_id == 301
    assert tok.encode("[Text]", bos=False) == [300]
    assert tok.encode("[Speech][Hu0][Hu500][Pi0][St99]", bos=False) == [301, 302, 802, 803, 966]
    assert len(tok) == 300 + 667


def test_spiritlm_layout_requires_a_32000_piece_model(sp_model):
    with pytest.raises(TokenizerError, match="base_vocab_size=300"):
        SpiritTokenizer(sp_model, layout=SPIRITLM)


def test_training_is_deterministic(tmp_path):
    rng = random.Random(1)
    lines = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(2000)]
    a = train_sentencepiece(lines, tmp_path / "a", vocab_size=300).read_bytes()
    b = train_sentencepiece(lines, tmp_path / "b", vocab_size=300).read_bytes()
    assert a == b
    with pytest.raises(TokenizerError, match="vocab_size"):
        train_sentencepiece(lines, tmp_path / "c", vocab_size=100)


def test_mixed_string_and_bos(tok):
    ids = tok.encode("[Text]the cat [Speech][Hu3][Hu7][Text]the mat")
    assert ids[0] == tok.bos_id and ids[1] == tok.layout.text_id
    assert ids[ids.index(tok.layout.speech_id) + 1 : ids.index(tok.layout.speech_id) + 3] == [305, 309]
    # legacy: text after a marker starts a new word (dummy-prefix space), like word-level spans
    the = tok.sp.encode("the")
    assert ids[2 : 2 + len(the)] == the
    assert tok.decode(ids) == "[Text]the cat [Speech][Hu3][Hu7][Text]the mat"


def test_literal_tags_in_user_text(tok):
    text = "please say [Hu12] and [Speech] literally"
    default = tok.encode(text, bos=False)
    assert 314 in default and tok.layout.speech_id in default  # documented default: tags are tokens
    safe = tok.encode(text, bos=False, speech_tags=False)
    assert all(i < tok.layout.base_vocab_size for i in safe)  # safe mode: never speech tokens
    assert tok.decode(safe) == text
    assert tok.encode_text(text, bos=False) == safe
    # out-of-range tags are not tokens at all: they stay text
    assert all(i < 300 for i in tok.encode("[Hu501]", bos=False))


def test_encode_segments_puts_markers_at_switches(tok):
    ids = tok.encode_segments(
        [("text", "the cat [Hu1]"), ("speech", {"hubert": [3, 3, 7]}), ("speech", "[Hu9]"), ("text", "sat")],
        trailing_marker="speech",
    )
    L = tok.layout
    assert ids[1] == L.text_id and 303 not in ids  # "[Hu1]" inside text stays text
    s = ids.index(L.speech_id)
    assert ids[s + 1 : s + 4] == [305, 309, 311]  # one [Speech] marker for both speech segments
    assert ids.count(L.speech_id) == 2 and ids[-1] == L.speech_id
    with pytest.raises(SpeechStringError, match="character 5"):
        tok.encode_segments([("speech", "[Hu1][Hx]")])
    with pytest.raises(TokenizerError, match="'text' or 'speech'"):
        tok.encode_segments([("image", "x")])


def test_direct_units_path_equals_string_path(tok):
    units = {"hubert": [5, 5, 6, 7], "pitch": [1, 1], "style": [4]}
    L = VocabLayout(base_vocab_size=300)
    direct = units_to_ids(units, True, True, L).tolist()
    from spiritlm.vocab import units_to_string

    assert tok.encode(units_to_string(units, True, True, L), bos=False) == direct
    assert tok.speech_ids_to_string([L.speech_id] + direct) == units_to_string(units, True, True, L)


def _hf(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


@pytest.mark.parametrize("legacy", [True, False])
def test_export_matches_huggingface(tok, sp_model, tmp_path, legacy):
    ours = SpiritTokenizer(sp_model, legacy=legacy)
    out = ours.save_pretrained(tmp_path / "tok")
    hf = _hf(out)
    assert len(hf) == len(ours)
    assert hf.convert_tokens_to_ids(["[Text]", "[Speech]", "[Hu0]", "[St99]"]) == [300, 301, 302, 966]
    for s in [
        "the cat",
        "[Text]the cat [Speech][Hu0][Hu1][Text]the mat",
        "a  b",
        "[Hu12]x",
        "[Hu501]y [St99][Pi63]",
        "x[Text]y[Speech]z",
        "",
    ]:
        assert ours.encode(s) == hf(s).input_ids, s
    again = SpiritTokenizer.from_pretrained(out)
    assert again.legacy == legacy and again.layout == ours.layout


chunk = st.text(alphabet="abcdefhstu 0123[]", min_size=1, max_size=12).filter(lambda t: not t[0].isspace())
tag = st.sampled_from(["[Text]", "[Speech]", "[Hu0]", "[Hu42]", "[Pi7]", "[St3]"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(chunk, tag), max_size=8))
def test_export_matches_huggingface_on_random_strings(tok, tmp_path_factory, parts):
    # HF's fast conversion differs from SentencePiece (and the release's slow tokenizer) only for
    # a text chunk that itself begins with whitespace; such chunks are excluded here.
    if not hasattr(test_export_matches_huggingface_on_random_strings, "hf"):
        out = tok.save_pretrained(tmp_path_factory.mktemp("hf"))
        test_export_matches_huggingface_on_random_strings.hf = _hf(out)
    hf = test_export_matches_huggingface_on_random_strings.hf
    s = "".join(parts)
    assert tok.encode(s) == hf(s).input_ids


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        SpiritTokenizer.from_pretrained(tmp_path)
