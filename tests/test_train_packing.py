"""Packing: rows are full, labels never cross a document, documents cannot attend to each other."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spiritlm.train.packing import IGNORE, Packer, block_mask_B1TT, segment_ids_BT  # noqa: E402


def _docs(lengths, start=10):
    out, v = [], start
    for n in lengths:
        out.append({"input_ids": np.arange(v, v + n), "kind": "text"})
        v += 100
    return out


def test_rows_positions_and_targets():
    p = Packer(iter(_docs([5, 3, 9, 4])), seq_len=8)
    r1, r2 = p.next_row(), p.next_row()
    assert r1["input_ids"].tolist() == [10, 11, 12, 13, 14, 110, 111, 112]
    assert r1["position_ids"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    # last token of every segment has no target; never the next document's first token
    assert r1["targets"].tolist() == [11, 12, 13, 14, IGNORE, 111, 112, IGNORE]
    # the 9-token document is cut: 8 tokens here, its last token alone is dropped (no target)
    assert r2["input_ids"].tolist() == list(range(210, 218))
    assert r2["targets"].tolist() == list(range(211, 218)) + [IGNORE]
    with pytest.raises(StopIteration):  # the 4-token document and then nothing left
        p.next_row()


def test_packer_state_resumes_exactly():
    docs = _docs([13, 3, 20, 7, 11, 2, 30, 5] * 3)
    it = iter(docs)
    a = Packer(it, seq_len=16)
    for _ in range(3):
        a.next_row()
    state = a.state_dict()  # a document is cut mid-way here: its rest is in the state
    assert state["pending"]
    b = Packer(iter(list(it)), seq_len=16)  # the stream continues where it was
    b.load_state_dict(state)
    c = Packer(iter(docs), seq_len=16)  # uninterrupted reference
    for _ in range(3):
        c.next_row()
    for _ in range(4):
        assert b.next_row()["input_ids"].tolist() == c.next_row()["input_ids"].tolist()


def test_bos_added_when_missing():
    p = Packer(iter([{"input_ids": np.array([5, 6, 7]), "kind": "text"},
                     {"input_ids": np.array([1, 8, 9]), "kind": "text"}] * 3), seq_len=7, bos_id=1)
    assert p.next_row()["input_ids"].tolist() == [1, 5, 6, 7, 1, 8, 9]


def test_segment_ids_and_block_mask():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0]])
    assert segment_ids_BT(pos).tolist() == [[0, 0, 0, 1, 1, 2]]
    m = block_mask_B1TT(pos)[0, 0] == 0
    assert m[4].tolist() == [False, False, False, True, True, False]
    assert m[2].tolist() == [True, True, True, False, False, False]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", ["position_ids", "block_mask"])
def test_packed_logits_equal_docs_run_alone(attn, mode):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    cfg._attn_implementation = attn
    model = LlamaForCausalLM(cfg).eval()
    lengths = [7, 1 + 4, 12, 8]  # fills 2 rows of 16: [7, 5, 4 of 12] / [8 of 12 ... cut]
    docs = [{"input_ids": torch.randint(3, 300, (n,)).numpy(), "kind": "text"} for n in lengths]
    p = Packer(iter(docs), seq_len=16)
    batch = p.next_batch(2)
    ids, pos = batch["input_ids_BT"], batch["position_ids_BT"]
    mask = block_mask_B1TT(pos) if mode == "block_mask" else None
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).logits
        seg = segment_ids_BT(pos)
        for b in range(2):
            for s in seg[b].unique():
                where = (seg[b] == s).nonzero().flatten()
                alone = model(input_ids=ids[b, where][None], use_cache=False).logits[0]
                torch.testing.assert_close(packed[b, where], alone, rtol=1e-4, atol=1e-5)
    # sanity: without position resets (plain causal) the second document's logits differ
    with torch.no_grad():
        plain = model(input_ids=ids, use_cache=False).logits
    assert not torch.allclose(plain[0, 7:12], packed[0, 7:12], atol=1e-4)
