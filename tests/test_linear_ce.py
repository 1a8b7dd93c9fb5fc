"""The chunked linear cross-entropy (``model.linear_ce``, spiritlm.components.linear_ce): per-token
losses and gradients equal the plain path's (fp32 to 1e-5; bf16 to its own rounding), with ignored
targets, chunks that do not divide the tokens, a tied embedding, gradcheck in fp64; the unit LM's
loss and 3 training steps give the plain path's losses; config validation; the demo's cache keys
unchanged at the defaults; the bench at toy size."""

from __future__ import annotations

import sys
import types

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from spiritlm.components.linear_ce import ce_function, head_loss, linear_cross_entropy  # noqa: E402
from spiritlm.config import ConfigError  # noqa: E402


def _inputs(N=53, D=24, V=301, dtype=torch.float32, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g).to(dtype).requires_grad_()
    W = (torch.randn(V, D, generator=g) * 0.3).to(dtype).requires_grad_()
    b = (torch.randn(V, generator=g) * 0.1).to(dtype).requires_grad_() if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    t[::5] = -100  # ignored rows
    up = torch.rand(N, generator=g)  # a different upstream gradient per token
    return h, W, b, t, up


def _plain(h, W, b, t):
    return F.cross_entropy(F.linear(h, W, b).float(), t, ignore_index=-100, reduction="none")


def _grads(fn, h, W, b, t, up):
    ce = fn(h, W, b, t)
    (ce * up).sum().backward()
    out = [ce.detach()] + [x.grad.clone() for x in (h, W, b) if x is not None]
    for x in (h, W, b):
        if x is not None:
            x.grad = None
    return out


@pytest.mark.parametrize("chunk", [1, 7, 16, 53, 4096])  # 7, 16 do not divide 53
@pytest.mark.parametrize("bias", [False, True])
def test_fp32_losses_and_grads_equal_the_plain_path(chunk, bias):
    h, W, b, t, up = _inputs(bias=bias)
    ref = _grads(_plain, h, W, b, t, up)
    got = _grads(lambda h, W, b, t: linear_cross_entropy(h, W, t, b, chunk_tokens=chunk), h, W, b, t, up)
    for r, g in zip(ref, got):
        assert r.dtype == g.dtype and r.shape == g.shape
        assert (r - g).abs().max().item() <= 1e-5
    assert (got[0][t == -100] == 0).all() and (got[1][t == -100] == 0).all()  # ignored rows: no loss, no grad


def test_bf16_within_the_plain_bf16_paths_rounding():
    # The documented bf16 tolerance: per-token losses within 1e-2 (bf16 logits, computed as the plain
    # path computes them), gradients within 1e-2 of their largest entry (grad_W: bf16 products of
    # each chunk summed in fp32 where the plain path rounds one product: ~1 bf16 ulp).
    h, W, b, t, up = _inputs(N=200, D=64, V=3000, dtype=torch.bfloat16)
    ref = _grads(_plain, h, W, b, t, up)
    got = _grads(lambda h, W, b, t: linear_cross_entropy(h, W, t, b, chunk_tokens=48), h, W, b, t, up)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.bfloat16
    assert (ref[0] - got[0]).abs().max().item() <= 1e-2
    for r, g in zip(ref[1:], got[1:]):
        assert ((r.float() - g.float()).abs().max() / r.float().abs().max()).item() <= 1e-2


def test_gradcheck_fp64():
    h, W, b, t, _ = _inputs(N=7, D=4, V=6, dtype=torch.float64, bias=True)
    assert torch.autograd.gradcheck(lambda h, W, b: linear_cross_entropy(h, W, t, b, chunk_tokens=3), (h, W, b))


def test_tied_embedding_grads_accumulate():
    """The head's weight is the input embedding (tie_word_embeddings): its gradient is the sum of
    the lookup's and the head's, as in the plain path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    ids = torch.randint(0, 97, (2, 20))
    t = torch.roll(ids, -1, 1)
    t[:, -1] = -100

    def grads(chunked: bool):
        model.zero_grad(set_to_none=True)
        if chunked:
            with head_loss(model, t, ce_function("chunked", 7)):
                ce = model(input_ids=ids, use_cache=False)["ce_N"]
        else:
            ce = _plain_logits_ce(model(input_ids=ids, use_cache=False).logits, t)
        ce.sum().backward()
        return ce.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    (ce_p, g_p), (ce_c, g_c) = grads(False), grads(True)
    assert (ce_p - ce_c).abs().max().item() <= 1e-5
    assert set(g_p) == set(g_c)
    for n in g_p:
        assert (g_p[n] - g_c[n]).abs().max().item() <= 1e-5, n
    # the hooks are gone: the model gives logits again
    assert model(input_ids=ids, use_cache=False).logits.shape == (2, 20, 97)


def _plain_logits_ce(logits, t):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), t.reshape(-1), ignore_index=-100,
                           reduction="none")


def test_liger_is_called_behind_the_same_switch(monkeypatch):
    """The wiring only (liger-kernel needs CUDA): a stand-in with liger's functional signature."""
    calls = []

    def fake(input, weight, target, bias=None, ignore_index=-100, reduction="mean", **kw):
        calls.append(reduction)
        return F.cross_entropy(F.linear(input, weight, bias).float(), target, ignore_index=ignore_index,
                               reduction=reduction), None

    pkg = types.ModuleType("liger_kernel")
    sub = types.ModuleType("liger_kernel.transformers")
    fn = types.ModuleType("liger_kernel.transformers.functional")
    fn.liger_fused_linear_cross_entropy = fake
    for name, mod in (("liger_kernel", pkg), ("liger_kernel.transformers", sub),
                      ("liger_kernel.transformers.functional", fn)):
        monkeypatch.setitem(sys.modules, name, mod)
    h, W, b, t, _ = _inputs()
    ce = ce_function("liger", 16)(h, W, b, t)
    assert calls == ["none"] and (ce - _plain(h, W, b, t)).abs().max().item() <= 1e-6


# ---- the unit LM: its loss, training, config ---------------------------------------------------------
def _unit_plan(tmp_path, overrides=()):
    from spiritlm.models.unit_lm import spec
    from spiritlm.train.tiny import tiny_config

    cfg = tiny_config(str(tmp_path / "run"), list(overrides))
    return cfg, spec.plan(cfg)


def test_unit_lm_loss_chunked_equals_plain(tmp_path):
    """``spec.loss`` returns token_losses' (mean loss, per-type sums, counts), with and without grad."""
    from spiritlm.models.unit_lm import spec

    cfg, plan = _unit_plan(tmp_path)
    torch.manual_seed(0)
    model, _ = spec.build(cfg)
    batch = spec.make_batches(cfg, model, plan=plan).next_batch(2)
    import dataclasses

    chunked = dataclasses.replace(plan, linear_ce="chunked", ce_chunk_tokens=37)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            a = spec.loss(model, batch, "cpu", plan=plan)
            b = spec.loss(model, batch, "cpu", plan=chunked)
        assert abs(a[0].item() - b[0].item()) <= 1e-5
        assert torch.allclose(a[1], b[1], atol=1e-4) and torch.equal(a[2], b[2])
        assert b[0].requires_grad == grad
    ga = torch.autograd.grad(spec.loss(model, batch, "cpu", plan=plan)[0], list(model.parameters()))
    gb = torch.autograd.grad(spec.loss(model, batch, "cpu", plan=chunked)[0], list(model.parameters()))
    assert max((x - y).abs().max().item() for x, y in zip(ga, gb)) <= 1e-5


def test_three_training_steps_plain_vs_chunked(tmp_path, monkeypatch):
    pytest.importorskip("deepspeed")
    import spiritlm.components.linear_ce as lce
    from spiritlm.train.tiny import tiny_config
    from spiritlm.train.trainer import Trainer

    calls = []
    real = lce.linear_cross_entropy
    monkeypatch.setattr(lce, "linear_cross_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
    runs = {}
    for kind in ("plain", "chunked"):  # 128 tokens per micro-batch, 2 per step: chunks of 48 do not divide them
        t = Trainer(tiny_config(str(tmp_path / kind),
                                ["steps=3", f"model.linear_ce={kind}", "model.ce_chunk_tokens=48"]))
        t.fit()
        runs[kind] = t.history
    for a, b in zip(runs["plain"], runs["chunked"]):
        for k in ("loss", "loss/text", "loss/speech", "loss/switch"):
            assert abs(a[k] - b[k]) <= 1e-5, (k, a[k], b[k])
    assert len(runs["chunked"]) == 3 and len(calls) == 3 * 2  # every micro-batch of the chunked run
    assert runs["plain"][0]["loss"] != runs["plain"][-1]["loss"]  # it trained


@pytest.mark.parametrize("overrides, match", [
    (["model.ce_chunk_tokens=0"], "model.ce_chunk_tokens=0"),
    (["model.linear_ce=chunked", "deepspeed.zero_stage=3"], "zero_stage=1 or 2"),
    (["model.linear_ce=liger"], "model.linear_ce=chunked"),  # no CUDA here (or liger not installed)
])
def test_config_refuses(tmp_path, overrides, match):
    from spiritlm.components.config import validate_config
    from spiritlm.train.tiny import tiny_config

    with pytest.raises(ConfigError, match=match):
        validate_config(tiny_config(str(tmp_path), overrides))


def test_liger_refused_without_the_package(tmp_path, monkeypatch):
    from spiritlm.components.config import validate_config
    from spiritlm.train.tiny import tiny_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match="pip install liger-kernel"):
        validate_config(tiny_config(str(tmp_path), ["model.linear_ce=liger"]))


def test_other_families_refuse_the_switch():
    from spiritlm.components.config import validate_config
    from spiritlm.config import load_config
    from spiritlm.models.hybrid.config import HybridTrainConfig

    cfg = load_config(HybridTrainConfig, None, ["model.linear_ce=chunked"])
    with pytest.raises(ConfigError, match="model_type=hybrid"):
        validate_config(cfg)


# ---- the demo's cache keys ---------------------------------------------------------------------------
def test_demo_train_key_unchanged_at_the_defaults(tmp_path):
    """Cached demo models stay valid: at their defaults the new settings are not in the key (which
    is then the resolved config without run_dir, as before them); set, they are."""
    from spiritlm.config import to_dict
    from spiritlm.demo.files import LATE_DEFAULTS, train_config_key
    from spiritlm.train.tiny import tiny_config

    cfg = tiny_config(str(tmp_path))
    key = train_config_key(cfg)
    old = to_dict(cfg)
    old.pop("run_dir")
    assert {("model", "linear_ce"), ("model", "ce_chunk_tokens"), ("model", "compile")} <= set(LATE_DEFAULTS)
    for section, name in LATE_DEFAULTS:  # every setting added after the demo's models were cached
        old[section].pop(name)
    assert key == old and "linear_ce" not in key["model"] and "ce_chunk_tokens" not in key["model"]
    key = train_config_key(tiny_config(str(tmp_path), ["model.linear_ce=chunked", "model.ce_chunk_tokens=512"]))
    assert key["model"]["linear_ce"] == "chunked" and key["model"]["ce_chunk_tokens"] == 512
    key = train_config_key(tiny_config(str(tmp_path), ["model.ce_chunk_tokens=512"]))
    assert "linear_ce" not in key["model"] and key["model"]["ce_chunk_tokens"] == 512


# ---- the bench ---------------------------------------------------------------------------------------
def test_bench_loss_toy_report():
    from spiritlm.train.bench_loss import bench_loss

    r = bench_loss(vocabs=(300, 500), tokens=40, dim=16, chunk=16, rounds=1, min_round_s=0.01, verbose=False)
    assert set(r) == {"tokens", "dim", "chunk", "dtype", "vocabs"} and [v["vocab"] for v in r["vocabs"]] == [300, 500]
    for v in r["vocabs"]:
        assert {"ratio", "rates", "peak_bytes", "max_abs_loss_diff", "logits_bytes", "chunk_logits_bytes",
                "weight_grad_bytes", "measurement"} <= set(v)
        assert set(v["peak_bytes"]) == {"plain", "chunked"} and all(b >= 0 for b in v["peak_bytes"].values())
        assert v["max_abs_loss_diff"] <= 1e-5 and v["logits_bytes"] == 40 * v["vocab"] * 4
        assert {"median", "min", "max"} <= set(v["ratio"])
