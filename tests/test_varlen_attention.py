"""``sdpa_varlen``: each packed document's own causal block only, same results as SDPA with the
block-diagonal mask (forward and gradients), plain SDPA wherever there is no packing."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spiritlm.components import varlen_attention as va  # noqa: E402
from spiritlm.components.packing import Packer, block_mask_B1TT, isolation_plan, packed_inputs  # noqa: E402


def _pair(dtype=torch.float32, layers=2):
    """Two LLaMAs with the same weights: stock SDPA and sdpa_varlen."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    cfg._attn_implementation = "sdpa"
    ref = LlamaForCausalLM(cfg).to(dtype)
    cfg = copy.deepcopy(cfg)
    cfg._attn_implementation = va.NAME
    model = LlamaForCausalLM(cfg).to(dtype)
    model.load_state_dict(ref.state_dict())
    return ref, model


def _batch(lengths, rows, seq_len, seed=0):
    rng = np.random.default_rng(seed)
    docs = [{"input_ids": rng.integers(3, 300, n), "kind": "text"} for n in lengths]
    return Packer(iter(docs), seq_len=seq_len).next_batch(rows)


# lengths spanning several buckets (1-token documents, < 16, 16-32, 33-64, > 64) over 3 rows of 96
LENGTHS = [1, 7, 40, 3, 17, 70, 1, 33, 64, 5, 2, 30, 90]


def test_plan_covers_every_token_once_and_pads_under_2x():
    # documents of 1 (twice), 7, 40, 3, 17, 70, 33, 64, 5, 2, 30 and 15 tokens
    cu = torch.tensor([0, 1, 8, 48, 51, 68, 138, 139, 172, 236, 241, 243, 273, 288], dtype=torch.int32)
    *buckets, (inverse, _) = va._plan(cu)
    real = torch.cat([idx.reshape(-1)[keep] for idx, keep in buckets])
    assert sorted(real.tolist()) == list(range(288))  # each token in exactly one bucket slot
    assert torch.equal(real[inverse], torch.arange(288))  # the inverse puts them back in order
    lengths = cu.diff().tolist()
    for idx, keep in buckets:
        S, L = idx.shape
        # every document of a bucket starts at its own start and counts up; pads repeat its last token
        starts = idx[:, 0].tolist()
        assert all(s in cu.tolist() for s in starts)
        assert S * L < 2 * keep.numel() or L <= va.MIN_BUCKET
    assert sum(keep.numel() for _, keep in buckets) == sum(lengths)


def test_cu_from_position_ids_finds_restarts_and_row_starts():
    pos = torch.tensor([[0, 1, 2, 0, 1], [3, 4, 0, 1, 2]])  # a row may start mid-document
    assert va.cu_from_position_ids(pos).tolist() == [0, 3, 5, 7, 10]
    assert va.cu_from_position_ids(torch.arange(6)[None].repeat(2, 1)) is None  # no packing: plain SDPA


@pytest.mark.parametrize("layout", ["varlen_row", "position_ids"])
def test_logits_and_gradients_equal_sdpa_with_the_block_mask(layout):
    """fp32: the packed micro-batch through sdpa_varlen -- as the trainer feeds it (one flattened
    row with cu_seq_lens) or as position ids alone at batch 3 -- against stock SDPA with the
    block-diagonal mask: logits and every parameter's gradient agree."""
    ref, model = _pair()
    batch = _batch(LENGTHS, rows=3, seq_len=96)
    pos = batch["position_ids_BT"]
    out_ref = ref(input_ids=batch["input_ids_BT"], position_ids=pos, attention_mask=block_mask_B1TT(pos),
                  use_cache=False).logits
    if layout == "varlen_row":
        inputs = packed_inputs(batch, isolation_plan(va.NAME, "position_ids", "cpu"))
        assert inputs["input_ids"].shape == (1, 288) and "cu_seq_lens_q" in inputs
    else:
        inputs = packed_inputs(batch, "position_ids")
    out = model(**inputs, use_cache=False).logits.reshape(out_ref.shape)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out_ref)
    (out_ref * g).sum().backward()
    (out * g).sum().backward()
    worst = max((p.grad - q.grad).abs().max().item() / max(q.grad.abs().max().item(), 1e-12)
                for p, q in zip(model.parameters(), ref.parameters()))
    assert worst < 1e-4, worst


def test_one_document_never_sees_another():
    """Changing one document's tokens moves no other document's logits (bit for bit)."""
    _, model = _pair()
    batch = _batch(LENGTHS, rows=3, seq_len=96)
    plan = isolation_plan(va.NAME, "position_ids", "cpu")
    cu = va.cu_from_position_ids(batch["position_ids_BT"]).tolist()
    lo, hi = max(zip(cu[:-1], cu[1:]), key=lambda ab: ab[1] - ab[0])  # the longest document
    with torch.no_grad():
        a = model(**packed_inputs(batch, plan), use_cache=False).logits[0]
        ids = batch["input_ids_BT"].clone().reshape(-1)
        ids[lo:hi] = (ids[lo:hi] + 1) % 300
        b = model(**packed_inputs({**batch, "input_ids_BT": ids.reshape(3, -1)}, plan), use_cache=False).logits[0]
    changed = (a - b).abs().amax(-1) > 0
    assert hi - lo >= 40 and changed[lo:hi].all() and not changed[:lo].any() and not changed[hi:].any()


def test_unpacked_inputs_padding_and_decoding_are_plain_sdpa():
    """No packing: the same numbers as stock SDPA -- a right-padded batch with a 2-D mask, and
    greedy decoding with a KV cache (prefill, then one query at a time)."""
    ref, model = _pair()
    ref.eval(), model.eval()
    ids = torch.randint(3, 300, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits,
                                   ref(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=1e-6)
        g_ref = ref.generate(ids[:1], max_new_tokens=6, do_sample=False, pad_token_id=0)
        g = model.generate(ids[:1], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(g, g_ref)


def test_bfloat16_attention_runs_in_float32_on_cpu():
    """A bf16 model: the attention itself runs in fp32 on the CPU, so the packed logits stay as
    close to an fp32 reference as stock bf16 SDPA's are (or closer)."""
    ref32, _ = _pair(torch.float32)
    ref16, model16 = _pair(torch.bfloat16)
    batch = _batch(LENGTHS, rows=3, seq_len=96)
    pos = batch["position_ids_BT"]
    with torch.no_grad():
        want = ref32(input_ids=batch["input_ids_BT"], position_ids=pos, attention_mask=block_mask_B1TT(pos)).logits
        stock = ref16(input_ids=batch["input_ids_BT"], position_ids=pos,
                      attention_mask=block_mask_B1TT(pos, torch.bfloat16)).logits.float()
        ours = model16(**packed_inputs(batch, isolation_plan(va.NAME)),
                       use_cache=False).logits.reshape(want.shape).float()
    assert ours.dtype == torch.float32
    err_ours, err_stock = (ours - want).abs().max().item(), (stock - want).abs().max().item()
    assert err_ours <= 1.5 * err_stock + 1e-3, (err_ours, err_stock)


def test_block_mask_with_sdpa_varlen_is_refused():
    from spiritlm.config import ConfigError

    assert isolation_plan(va.NAME, "position_ids", "cpu") == "varlen"
    with pytest.raises(ConfigError, match="packed_attention='position_ids'"):
        isolation_plan(va.NAME, "block_mask", "cpu")


def test_trainer_on_sdpa_varlen_matches_sdpa(tmp_path):
    """Two optimizer steps of the tiny unit LM (fp32): the same losses as on stock SDPA, and the
    trainer feeds one flattened row per micro-batch."""
    from spiritlm.train.tiny import tiny_config
    from spiritlm.train.trainer import Trainer

    def run(attn):
        t = Trainer(tiny_config(str(tmp_path / attn), [f"model.attn_implementation={attn}", "steps=2",
                                                        "micro_batch_size=3", "global_batch_size=3",
                                                        "deepspeed.precision=fp32"]))
        return [t.train_step()["loss"] for _ in range(2)], t

    ref, _ = run("sdpa")
    got, t = run(va.NAME)
    assert t.isolation == "varlen"
    assert got == pytest.approx(ref, rel=1e-5)


def test_sliding_window_backbones_are_refused():
    """A backbone whose layers attend through a sliding window (here a tiny Qwen2 with every layer
    sliding) would silently get full causal blocks: refused, naming the fix."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=4,
                      max_window_layers=0)
    cfg._attn_implementation = va.NAME
    model = Qwen2ForCausalLM(cfg)
    with pytest.raises(ValueError, match="sliding-window.*attn_implementation='sdpa'"):
        model(input_ids=torch.randint(3, 300, (1, 8)))
