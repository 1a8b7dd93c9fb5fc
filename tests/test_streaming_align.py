"""CTC forced alignment (issue 22): the vectorised Viterbi against a brute-force enumeration of
every frame labelling, label end frames, and the LM-token -> end-frame map."""

import itertools

import pytest
import torch

from spiritlm.models.continuous.encoders import CharVocab
from spiritlm.models.streaming.align import (align_tokens, ctc_viterbi, extended_labels, label_end_frames,
                                             token_end_frames)


def collapse(frames, blank=0):
    out, prev = [], None
    for f in frames:
        if f != prev and f != blank:
            out.append(f)
        prev = f
    return out


def brute_force(lp_TV, labels):
    """Best frame labelling whose CTC collapse is ``labels``, by enumerating all V^T labellings."""
    T, V = lp_TV.shape
    best, arg = float("-inf"), None
    for frames in itertools.product(range(V), repeat=T):
        if collapse(frames) == list(labels):
            s = float(sum(lp_TV[t, f] for t, f in enumerate(frames)))
            if s > best:
                best, arg = s, frames
    return best, arg


@pytest.mark.parametrize("labels,T,seed", [([1], 1, 0), ([1], 4, 1), ([1, 2], 3, 2), ([1, 1], 3, 3),
                                           ([1, 1], 5, 4), ([2, 1, 2], 6, 5), ([1, 2, 2], 6, 6),
                                           ([3, 1, 2], 5, 7), ([1, 2, 1, 2], 6, 8)])
def test_viterbi_equals_brute_force(labels, T, seed):
    g = torch.Generator().manual_seed(seed)
    lp = torch.randn(T, 4, generator=g).mul(2).log_softmax(-1)
    path, score = ctc_viterbi(lp, labels)
    best, frames = brute_force(lp, labels)
    assert score == pytest.approx(best, abs=1e-5)
    ext = extended_labels(labels)
    assert tuple(ext[path].tolist()) == frames  # the same best path, frame by frame
    # the path is a legal trellis walk: moves of 0, 1 or 2 states, starts in state 0/1, ends at S-1/S-2
    steps = (path[1:] - path[:-1]).tolist()
    assert all(d in (0, 1, 2) for d in steps) and path[0] <= 1 and path[-1] >= len(ext) - 2


def test_viterbi_rejects_too_few_frames_and_blank_labels():
    lp = torch.zeros(2, 3).log_softmax(-1)
    with pytest.raises(ValueError, match="too short"):
        ctc_viterbi(lp, [1, 1])  # a repeat needs a blank between: 3 frames
    with pytest.raises(ValueError, match="blank"):
        ctc_viterbi(lp, [0, 1])


def test_label_end_frames_follow_a_peaky_posterior():
    # frames: a a _ b b b _ c  -> a ends at 1, b at 5, c at 7
    seq = [1, 1, 0, 2, 2, 2, 0, 3]
    lp = torch.full((len(seq), 4), -10.0)
    for t, s in enumerate(seq):
        lp[t, s] = 0.0
    path, _ = ctc_viterbi(lp, [1, 2, 3])
    assert label_end_frames(path, 3) == [1, 5, 7]


def test_token_end_frames_map_tokens_to_their_last_character():
    chars = CharVocab()
    # a toy "tokenizer": id i decodes to pieces[i]; SentencePiece-style word-initial spaces
    pieces = {5: "the", 6: " ca", 7: "t", 8: ".", 9: " sat"}

    def decode(ids):
        return "".join(pieces[i] for i in ids)

    text = decode([5, 6, 7, 8, 9])  # "the cat. sat" -> characters "the cat sat" (the '.' is dropped)
    labels = chars.encode(text)
    assert chars.decode(labels) == "the cat sat"
    char_ends = list(range(100, 100 + len(labels)))  # character j ends on frame 100 + j
    ends = token_end_frames([5, 6, 7, 8, 9], decode, chars, char_ends)
    # "the" -> char 2; " ca" -> char 5 ('a'); "t" -> 6; "." adds nothing -> like "t"; " sat" -> 10
    assert ends == [102, 105, 106, 106, 110]


def test_align_tokens_end_to_end_on_a_synthetic_posterior():
    chars = CharVocab()
    pieces = {1: "ab", 2: " a"}

    def decode(ids):
        return "".join(pieces[i] for i in ids)

    labels = chars.encode("ab a")  # a b ' ' a
    frames = [labels[0], labels[1], 0, labels[2], labels[3], labels[3], 0]
    lp = torch.full((len(frames), len(chars)), -8.0)
    for t, s in enumerate(frames):
        lp[t, s] = 0.0
    out = align_tokens(lp.log_softmax(-1), [1, 2], decode, chars)
    assert out["char_end_frames"] == [0, 1, 3, 5]
    assert out["token_end_frames"] == [1, 5]
    again = align_tokens(lp.log_softmax(-1), [1, 2], decode, chars)
    assert again == out  # deterministic


def test_word_end_errors_against_reference_timings():
    from spiritlm.models.streaming.align import word_end_errors

    chars = CharVocab()
    labels = chars.encode("ab c")  # a b ' ' c
    # a ends on frame 0, b on 3, the space on 4, c on 9; at 25 Hz words end at 0.16 s and 0.40 s
    err = word_end_errors([0, 3, 4, 9], labels, [0.10, 0.45], 25.0, chars.index[" "])
    assert err == pytest.approx([0.06, -0.05])
    assert word_end_errors([0, 3, 4, 9], labels, [0.1], 25.0, chars.index[" "]) is None  # word counts differ
