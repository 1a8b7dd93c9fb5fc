"""Packing: rows are full, labels never cross a document, documents cannot attend to each other."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spiritlm.components import varlen_attention  # noqa: E402,F401  registers "sdpa_varlen"
from spiritlm.components.packing import IGNORE, Packer, block_mask_B1TT, segment_ids_BT  # noqa: E402


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


# ---- isolation on every attention backend, at micro-batch > 1 --------------------------------------
VARLEN_REF = "spiritlm_varlen_reference"


def _varlen_reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    """What flash attention's varlen kernel computes, in plain torch: causal attention within each
    sequence of ``cu_seq_lens_q`` over one flattened row (B must be 1). Registered for the test
    with transformers' flash mask function, so the model takes exactly the flash code path's inputs."""
    cu = kw["cu_seq_lens_q"]
    assert query.shape[0] == 1 and attention_mask is None and torch.equal(cu, kw["cu_seq_lens_k"])
    assert int(cu.diff().max()) == kw["max_length_q"] == kw["max_length_k"]
    out = torch.empty_like(query)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        out[:, :, a:b] = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def _register_varlen_reference():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(VARLEN_REF, _varlen_reference_attention)
    AttentionMaskInterface.register(VARLEN_REF, flash_attention_mask)


def _eager_flex(monkeypatch):
    """transformers' own FlexAttention path with torch's uncompiled kernel: compiling flex for CPU
    takes minutes on 2 cores (measured 196 s for a 2-layer model); the mask and the attention
    are the same functions, only not compiled."""
    import transformers.integrations.flex_attention as hf_flex
    import transformers.masking_utils as mu
    from torch.nn.attention import flex_attention as tflex

    monkeypatch.setattr(tflex, "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG", True)
    real = mu.create_block_mask
    monkeypatch.setattr(mu, "create_block_mask", lambda *a, **k: real(*a, **{**k, "_compile": False}))
    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention",
                        lambda q, k, v, training=False, **kw: tflex.flex_attention(q, k, v, **kw))


BACKENDS = [  # (attn_implementation the model runs, the recipe's attn_implementation, packed_attention)
    ("eager", "eager", "position_ids"), ("eager", "eager", "block_mask"),
    ("sdpa", "sdpa", "position_ids"), ("sdpa", "sdpa", "block_mask"),
    ("flex_attention", "flex_attention", "position_ids"),
    (VARLEN_REF, "flash_attention_2", "position_ids"),  # flash's layout, reference kernel
    ("sdpa_varlen", "sdpa_varlen", "position_ids"),  # spiritlm.components.varlen_attention
]


@pytest.mark.parametrize("run_attn,recipe_attn,mode", BACKENDS)
def test_each_document_sees_only_itself_on_every_backend(run_attn, recipe_attn, mode, monkeypatch):
    """3 packed rows; every segment's logits against the segment run alone (plain sdpa model,
    same weights). Prints the max abs error per backend (run with -s to see it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from spiritlm.components.packing import isolation_plan, packed_inputs

    if run_attn == "flex_attention":
        _eager_flex(monkeypatch)
    if run_attn == VARLEN_REF:
        _register_varlen_reference()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    cfg._attn_implementation = "sdpa"
    alone_model = LlamaForCausalLM(cfg).eval()
    cfg = copy.deepcopy(cfg)  # a model keeps its config object: the reference stays on sdpa
    cfg._attn_implementation = run_attn
    model = LlamaForCausalLM(cfg).eval()
    model.load_state_dict(alone_model.state_dict())
    lengths = [7, 5, 12, 8, 3, 20, 6, 9]
    docs = [{"input_ids": torch.randint(3, 300, (n,)).numpy(), "kind": "text"} for n in lengths]
    batch = Packer(iter(docs), seq_len=16).next_batch(3)
    plan = isolation_plan(recipe_attn, mode, "cpu", training=False)
    inputs = packed_inputs(batch, plan)
    with torch.no_grad():
        packed = model(**inputs, use_cache=False).logits.reshape(3, 16, -1)
        seg = segment_ids_BT(batch["position_ids_BT"])
        err, n_segments = 0.0, 0
        for b in range(3):
            for s in seg[b].unique():
                where = (seg[b] == s).nonzero().flatten()
                alone = alone_model(input_ids=batch["input_ids_BT"][b, where][None], use_cache=False).logits[0]
                err = max(err, (packed[b, where] - alone).abs().max().item())
                n_segments += 1
    print(f"\nisolation {recipe_attn}/{mode} (runs as {run_attn}): {n_segments} segments, max |logit diff| {err:.2e}")
    assert n_segments >= 6 and err < 1e-4
    if run_attn == VARLEN_REF:  # without the boundaries the same kernel mixes documents
        with torch.no_grad():
            whole = {**inputs, "cu_seq_lens_q": torch.tensor([0, 48], dtype=torch.int32), "max_length_q": 48}
            whole.update(cu_seq_lens_k=whole["cu_seq_lens_q"], max_length_k=48)
            mixed = model(**whole, use_cache=False).logits.reshape(3, 16, -1)
        assert not torch.allclose(mixed[0, 7:], packed[0, 7:], atol=1e-3)


def test_flash_attention_gets_one_varlen_row():
    """Under flash_attention_2 the model receives batch 1 (the micro-batch flattened), position
    ids restarting at every document and explicit sequence lengths -- the layout transformers'
    flash path unpacks into separate sequences (it would not split position-id packing at B > 1)."""
    from spiritlm.components.packing import isolation_plan, packed_inputs

    docs = [{"input_ids": np.arange(10, 10 + n), "kind": "text"} for n in (7, 5, 12, 8, 3, 20, 6)]
    batch = Packer(iter(docs), seq_len=16).next_batch(3)
    got = packed_inputs(batch, isolation_plan("flash_attention_2", "position_ids", "cuda"))
    assert got["input_ids"].shape == got["position_ids"].shape == (1, 48)
    assert got["attention_mask"] is None
    assert torch.equal(got["input_ids"][0], batch["input_ids_BT"].reshape(-1))
    assert got["position_ids"][0].tolist() == batch["position_ids_BT"].reshape(-1).tolist()
    # rows: [7, 5, 4 of 12] [8 of 12, 8] [3, 13 of 20]: every segment, row ends included
    assert got["cu_seq_lens_q"].tolist() == [0, 7, 12, 16, 24, 32, 35, 48]
    assert got["cu_seq_lens_q"].dtype == torch.int32 and got["cu_seq_lens_k"] is got["cu_seq_lens_q"]
    assert got["max_length_q"] == got["max_length_k"] == 13
    # transformers' own reading of those position ids gives the same boundaries
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    (cu_q, _), (max_q, _) = prepare_fa_kwargs_from_position_ids(got["position_ids"])
    assert cu_q.tolist() == got["cu_seq_lens_q"].tolist() and int(max_q) == 13


def test_backends_that_cannot_isolate_are_refused():
    from spiritlm.config import ConfigError
    from spiritlm.components.packing import isolation_plan

    assert isolation_plan("sdpa", "position_ids") == "position_ids"
    assert isolation_plan("eager", "block_mask") == "block_mask"
    assert isolation_plan("flash_attention_2") == isolation_plan("flash_attention_3") == "varlen"
    assert isolation_plan("flex_attention", "position_ids", "cuda") == "position_ids"
    with pytest.raises(ConfigError, match="packed_attention='position_ids'"):
        isolation_plan("flash_attention_2", "block_mask", "cuda")
    with pytest.raises(ConfigError, match="no backward pass on CPU.*'sdpa'"):
        isolation_plan("flex_attention", "position_ids", "cpu")
    with pytest.raises(ConfigError, match="packed_attention='position_ids'"):
        isolation_plan("flex_attention", "block_mask", "cuda")
    with pytest.raises(ConfigError, match="kept apart only with"):
        isolation_plan("paged_attention")


def test_packer_counts_tokens_per_source_and_resumes_them():
    docs = [{"input_ids": np.arange(n), "kind": k, "source": s}
            for n, k, s in [(10, "text", "t"), (4, "speech", "sp"), (9, "text", "t"), (12, "speech", "sp")] * 4]
    p = Packer(iter(docs), seq_len=8)
    for _ in range(3):
        p.next_row()
    assert sum(p.tokens_by_source.values()) == 24
    state = p.state_dict()
    q = Packer(iter([]), seq_len=8)
    q.load_state_dict(state)
    assert q.tokens_by_source == p.tokens_by_source and q.token_shares() == p.token_shares()
    assert p.token_shares()["t"] == pytest.approx(p.tokens_by_source["t"] / 24)


def test_trainer_under_flash_attention_feeds_one_varlen_row(tmp_path, monkeypatch):
    """The trainer with ``attn_implementation = "flash_attention_2"`` (flash-attn cannot be
    installed here: the model runs the reference varlen kernel above): every forward receives a
    single flattened row with the document boundaries, and the losses equal those of the same
    run on sdpa with its block-diagonal mask."""
    from spiritlm.models.unit_lm import spec as unit_spec
    from spiritlm.train import trainer as trainer_mod
    from spiritlm.train.tiny import tiny_config

    _register_varlen_reference()
    real_build = unit_spec.build_model

    def build_with_reference_kernel(model_cfg, *a, **k):
        return real_build(dataclasses.replace(model_cfg, attn_implementation=VARLEN_REF), *a, **k)

    def run(name, attn):
        t = trainer_mod.Trainer(tiny_config(str(tmp_path / name), [f"model.attn_implementation={attn}",
                                                                    "steps=2", "micro_batch_size=3",
                                                                    "global_batch_size=3"]))
        seen = []
        t.model.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw), with_kwargs=True)
        return [t.train_step()["loss"] for _ in range(2)], seen, t

    sdpa_losses, sdpa_seen, _ = run("sdpa", "sdpa")
    monkeypatch.setattr(unit_spec, "build_model", build_with_reference_kernel)
    flash_losses, seen, t = run("flash", "flash_attention_2")
    assert t.isolation == "varlen" and len(seen) == 2
    T = t.cfg.data.seq_len
    for kw, ref in zip(seen, sdpa_seen):
        assert kw["input_ids"].shape == kw["position_ids"].shape == (1, 3 * T)
        assert ref["input_ids"].shape == (3, T) and torch.equal(kw["input_ids"].reshape(3, T), ref["input_ids"])
        starts = (kw["position_ids"][0] == 0).nonzero().flatten().tolist()
        assert kw["cu_seq_lens_q"].tolist() == starts + [3 * T] and {0, T, 2 * T} <= set(starts)
    assert flash_losses == pytest.approx(sdpa_losses, rel=1e-5)


def test_no_recipe_configures_a_backend_that_mixes_documents():
    import tomllib
    from pathlib import Path

    from spiritlm.components.packing import isolation_plan

    recipes = sorted((Path(__file__).resolve().parents[1] / "train").glob("*.toml"))
    assert recipes
    for recipe in recipes:
        model = tomllib.loads(recipe.read_text()).get("model", {})
        attn = model.get("attn_implementation", "sdpa")
        isolation_plan(attn, model.get("packed_attention", "position_ids"), "cuda")  # raises if unsafe
