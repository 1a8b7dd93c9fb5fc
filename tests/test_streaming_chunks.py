"""Chunk-synchronous sequences (issue 22): token -> chunk assignment at the edges, the
``X_1 y_1 $ ... X_K y_K $`` layout and its targets, and the packer (deterministic, resumable)."""

import numpy as np
import pytest

from spiritlm.models.streaming.data import StreamingBatches, StreamUtt, assign_chunks, chunked_sequence, n_chunks
from spiritlm.components.packing import IGNORE

A, EOC = 99, 2  # audio placeholder id, `$`


def test_token_ending_exactly_on_a_chunk_boundary():
    # chunks of 8 encoder frames (stack 2 -> 4 slots); 40 frames -> 20 slots -> 5 chunks
    # frame 7 is the LAST frame of chunk 0, frame 8 the FIRST of chunk 1
    assert assign_chunks([0, 7, 8, 15, 16], n_slots=20, chunk_frames=8, stack=2) == [0, 0, 1, 1, 2]


def test_tokens_past_the_last_whole_stack_stay_in_the_last_chunk():
    # 21 frames with stack 2 -> 10 slots (frame 20 is dropped by stacking) -> chunks of 4 slots: 3,
    # the last one partial (2 slots = frames 16..19); a token ending on frame 20 or later goes there
    assert n_chunks(10, 4) == 3
    assert assign_chunks([3, 16, 19, 20, 27], n_slots=10, chunk_frames=8, stack=2) == [0, 2, 2, 2, 2]


def test_assign_chunks_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple"):
        assign_chunks([0], n_slots=4, chunk_frames=7, stack=2)
    with pytest.raises(ValueError, match="decrease"):
        assign_chunks([9, 3], n_slots=8, chunk_frames=4, stack=2)
    with pytest.raises(ValueError, match="no chunk"):
        assign_chunks([], n_slots=0, chunk_frames=4, stack=2)


def test_sequence_layout_with_empty_chunks_and_a_partial_last_chunk():
    # 7 slots, 3 per chunk -> chunks of 3, 3, 1 slots; tokens 10, 11 in chunk 0, none in chunk 1, 12 in chunk 2
    s = chunked_sequence(7, 3, [10, 11, 12], [0, 0, 2], EOC, A)
    assert s.n_chunks == 3
    assert s.ids == [A, A, A, 10, 11, A, A, A, A, 12]
    assert s.chunk == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
    assert s.audio_pos == [0, 1, 2, 5, 6, 7, 8]
    I = IGNORE
    # the last slot of a chunk predicts its first token; the last token predicts `$`; an empty
    # chunk's last slot predicts `$` directly; `$` is a target only (not in ids)
    assert s.targets == [I, I, 10, 11, EOC, I, I, EOC, 12, EOC]
    assert EOC not in s.ids


def test_sequence_with_eoc_fed_back():
    s = chunked_sequence(4, 2, [10], [1], EOC, A, eoc_input=True)
    assert s.ids == [A, A, EOC, A, A, 10, EOC]
    assert s.targets == [IGNORE, EOC, IGNORE, IGNORE, 10, EOC, IGNORE]
    assert s.chunk == [0, 0, 0, 1, 1, 1, 1]
    assert s.audio_pos == [0, 1, 3, 4]


def test_every_chunk_ends_with_one_eoc_target():
    s = chunked_sequence(13, 4, [5, 6, 7, 8], [0, 0, 3, 3], EOC, A)
    assert s.targets.count(EOC) == s.n_chunks == 4
    assert sum(1 for i in s.ids if i == A) == 13


def _utts(n=9):
    out = []
    for i in range(n):
        slots = 3 + i % 5
        toks = [10 + j for j in range(1 + i % 3)]
        ends = sorted((2 * slots - 1) * j // max(1, len(toks)) for j in range(1, len(toks) + 1))
        out.append(StreamUtt(f"u{i}", "x", toks, 160, slots, wav=np.full(160, i, np.float32), token_end_frames=ends))
    return out


def _batches(**kw):
    return StreamingBatches(_utts(), 24, chunk_frames=4, stack=2, eoc_id=EOC, audio_id=A, seed=3, **kw)


def test_packer_is_deterministic_and_resumes_exactly():
    a, b = _batches(), _batches()
    for _ in range(3):
        x, y = a.next_batch(2), b.next_batch(2)
        assert all((x[k] == y[k]).all() for k in ("input_ids_BT", "targets_BT", "position_ids_BT", "chunk_BT"))
        assert x["audio_pos"] == y["audio_pos"]
    state = a.state_dict()
    c = _batches()
    c.load_state_dict(state)
    nxt, again = a.next_batch(2), c.next_batch(2)
    assert (nxt["input_ids_BT"] == again["input_ids_BT"]).all() and nxt["audio_pos"] == again["audio_pos"]


def test_packed_rows_hold_whole_utterances_with_their_chunks():
    p = _batches()
    batch = p.next_batch(2)
    ids, pos, ch = batch["input_ids_BT"], batch["position_ids_BT"], batch["chunk_BT"]
    for (row, positions), i in zip(batch["audio_pos"], batch["utt_index"]):
        assert all(int(ids[row, q]) == A for q in positions)
        assert len(positions) == p.utts[i].n_slots
        start = positions[0]
        seq = p.seqs[i]
        L = len(seq.ids)
        assert ids[row, start : start + L].tolist() == seq.ids  # the utterance lies whole in its row
        assert pos[row, start : start + L].tolist() == list(range(L))  # positions count from 0
        assert ch[row, start : start + L].tolist() == seq.chunk


def test_paired_wer_bootstrap_and_part_overrides():
    from spiritlm.demo.streaming import _split_overrides, paired_wer_bootstrap

    a = [{"id": "1", "ref": "the cat sat", "hyp": "the cat sat"}, {"id": "2", "ref": "a dog", "hyp": "a dog"}]
    b = [{"id": "2", "ref": "a dog", "hyp": "a hog"}, {"id": "1", "ref": "the cat sat", "hyp": "the sat"}]
    r = paired_wer_bootstrap(a, b, n_boot=200)
    assert r["n"] == 2 and r["words"] == 5 and r["wer_a"] == 0.0 and r["wer_b"] == pytest.approx(2 / 5)
    assert r["diff_b_minus_a"] == pytest.approx(0.4) and r["ci95"][0] <= 0.4 <= r["ci95"][1]
    assert r == paired_wer_bootstrap(a, b, n_boot=200)  # seeded
    ov = _split_overrides(["ctc.steps=5", "steps=7", "chunked.streaming.window=2"])
    assert ov == {"ctc": ["steps=5"], "chunked": ["steps=7", "streaming.window=2"], "baseline": ["steps=7"]}
