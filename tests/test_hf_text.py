"""The word-start convention of a tokenizer.json, measured at load (spiritlm.hf_text.word_prefix):
byte-level BPE with and without add_prefix_space, a SentencePiece-style Metaspace tokenizer.json
(Mistral/LLaMA-2 converted), and one whose word form cannot be told -- refused. For each usable
one, a span's ids are its words' ids concatenated, exactly what the tokenizer gives the sentence
mid-stream."""

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from spiritlm.hf_text import HFText, HFTextError, word_prefix

TEXTS = ["the family of Dashwood had long been settled in Sussex", "hello world speech the Paris 42"] * 50


def _bpe(pre, decoder):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoder
    alphabet = pre_tokenizers.ByteLevel.alphabet() if isinstance(pre, pre_tokenizers.ByteLevel) else []
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=200, show_progress=False, initial_alphabet=alphabet))
    return tok


@pytest.mark.parametrize("name, pre, decoder", [
    ("byte-level", pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()),
    ("byte-level, add_prefix_space", pre_tokenizers.ByteLevel(add_prefix_space=True), decoders.ByteLevel()),
    ("metaspace always", pre_tokenizers.Metaspace(prepend_scheme="always"), decoders.Metaspace(prepend_scheme="always")),
    ("metaspace first", pre_tokenizers.Metaspace(prepend_scheme="first"), decoders.Metaspace(prepend_scheme="first")),
    ("metaspace never", pre_tokenizers.Metaspace(prepend_scheme="never"), decoders.Metaspace(prepend_scheme="never")),
])
def test_word_ids_concatenate_to_the_sentence_mid_stream(name, pre, decoder):
    tok = _bpe(pre, decoder)
    assert word_prefix(tok, name) in (" ", "")  # whichever form gives the mid-sentence ids (checked below)
    text = HFText(json.loads(tok.to_str()), {}, where=name)
    words = "family of Dashwood had long been settled".split()
    flat = [i for w in text.encode_words(words) for i in w]
    anchor = tok.encode("the", add_special_tokens=False).ids
    mid = tok.encode("the " + " ".join(words), add_special_tokens=False).ids
    assert mid[:len(anchor)] == anchor and mid[len(anchor):] == flat  # no merge across words
    assert text.decode(flat).split() == words


def test_a_tokenizer_that_merges_across_words_is_refused():
    # no pre-tokenizer: BPE learns pieces spanning the space ("a hello" in one piece), so a word's
    # ids depend on the word before it and a span is not its words' ids concatenated
    tok = Tokenizer(models.BPE())
    tok.train_from_iterator([f"a {w}" for w in ("hello", "world", "speech", "the", "Paris", "42")] * 200,
                            trainers.BpeTrainer(vocab_size=300, show_progress=False))
    assert len(tok.encode("a hello").ids) == 1
    with pytest.raises(HFTextError, match="cannot tell how this tokenizer starts a word"):
        HFText(json.loads(tok.to_str()), {}, where="merging.json")
