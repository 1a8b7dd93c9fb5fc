"""Hybrid speech input (issue 23): features aligned with units, the data stage's feature store,
undeduplicated documents through the unit LM's packer, the model's fusion, a training step, and
the suite's scorer against a hand computation. Tiny models: seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spiritlm.config import load_config
from spiritlm.models.hybrid.config import FeatureConfig, HybridTrainConfig
from spiritlm.models.hybrid.features import FrameFeaturizer, fit_frames


def _wav(seconds=1.0, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def test_logmel_frames_at_the_unit_rate_deterministic_and_causal():
    fz = FrameFeaturizer(FeatureConfig(kind="logmel", n_mels=64), frame_rate=50.0)
    w = _wav(1.0)
    f = fz.natural(w)
    assert f.shape == (49, 64) and f.dtype == np.float32  # (16000 - 400) // 320 + 1, as a HuBERT CNN
    assert np.array_equal(f, fz.natural(w.copy()))
    # frame t = mean of mel frames 2t-1, 2t: its last window is the unit's own CNN window [320t, 320t+400)
    mel, _ = fz.mel(torch.from_numpy(w)[None], torch.tensor([w.size]))
    assert np.allclose(f[10], mel[0, 19:21].mean(0).numpy(), atol=1e-6)
    assert np.allclose(f[0], mel[0, 0].numpy(), atol=1e-6)
    # nothing after the unit's CNN window reaches its feature; the window itself does
    t = 20
    later = w.copy()
    later[320 * t + 400:] = 0.5
    assert np.array_equal(fz.natural(later)[: t + 1], f[: t + 1])
    inside = w.copy()
    inside[320 * t + 399] += 0.5
    assert not np.allclose(fz.natural(inside)[t], f[t])


def test_fit_frames_pads_crops_and_refuses_other_rates():
    f = np.arange(12, dtype=np.float32).reshape(6, 2)
    assert fit_frames(f, 5).shape == (5, 2)
    g = fit_frames(f, 7)
    assert g.shape == (7, 2) and np.array_equal(g[6], f[5])
    with pytest.raises(ValueError, match="different frame rates"):
        fit_frames(f, 12)


# ---- a tiny corpus prepared by the data stage ------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from test_data_fixtures import make_corpus, prepare_overrides

    from spiritlm.data.prepare import PrepareConfig, prepare_shards

    root = tmp_path_factory.mktemp("hyb")
    c = make_corpus(root / "corpus", n=6, max_words=10)
    shards = root / "shards"
    prepare_shards(load_config(PrepareConfig, None, prepare_overrides(c, shards, "speech.expressive=false")))
    return {"c": c, "shards": shards, "root": root}


def _cfg(prepared, tmp, *extra):
    p = prepared
    return load_config(HybridTrainConfig, None, [
        f"run_dir={tmp / 'run'}", f"model.tokenizer={p['c']['tokenizer'].parent}", "model.pad_multiple=64",
        "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "model.tiny.num_hidden_layers=1",
        "model.tiny.num_attention_heads=2", "model.tiny.num_key_value_heads=2",
        "model.tiny.max_position_embeddings=256", "data.seq_len=128", "hybrid.features.n_mels=16",
        f"hybrid.data.manifests=[{p['c']['manifest']}]", "hybrid.projector.dim=16", *extra],
        base={"data": {"sources": [{"name": "speech", "path": str(p["shards"] / "aligned"), "kind": "speech"},
                                   {"name": "interleaved", "path": str(p["shards"] / "aligned"),
                                    "kind": "interleaved"}]}})


def test_feature_store_is_deterministic_bytes(prepared, tmp_path):
    from spiritlm.models.hybrid.features import aligned_frame_counts, build_feature_store

    cfg = FeatureConfig(n_mels=16)
    a = build_feature_store([prepared["shards"] / "aligned"], [prepared["c"]["manifest"]], tmp_path / "a", cfg,
                            progress=False)
    build_feature_store([prepared["shards"] / "aligned"], [prepared["c"]["manifest"]], tmp_path / "b", cfg,
                        progress=False)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir()) and any(f.endswith(".parquet") for f in files)
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    counts = aligned_frame_counts([prepared["shards"] / "aligned"])
    assert counts and all(a.feats[k].shape == (n, 16) for k, n in counts.items())


def test_documents_are_undeduplicated_and_features_stay_aligned(prepared, tmp_path):
    import pyarrow.parquet as pq

    from spiritlm.models.hybrid.data import FeatureTable, hybrid_doc_fn, split
    from spiritlm.models.hybrid.features import build_feature_store

    store = build_feature_store([prepared["shards"] / "aligned"], [prepared["c"]["manifest"]], tmp_path / "f",
                                FeatureConfig(n_mels=16), progress=False)
    table = FeatureTable(store.feats, 16)
    f = sorted((prepared["shards"] / "aligned").glob("*.parquet"))[0]
    t = pq.read_table(f)
    rec = {c: t.column(c)[0].as_py() for c in t.column_names}
    fn, layout = hybrid_doc_fn(prepared["shards"] / "aligned", "speech", table)
    ids, rows = split(fn(rec, 0, 0))
    hu = np.asarray(rec["hubert"])
    assert ids[0] == layout.speech_id and np.array_equal(ids[1:], hu + layout.streams["hubert"].offset)
    assert rows[0] == -1 and np.array_equal(rows[1:], table.offset[rec["id"]] + np.arange(hu.size))
    assert np.array_equal(table.table[rows[1:]].numpy(), store.feats[rec["id"]])
    fi, _ = hybrid_doc_fn(prepared["shards"] / "aligned", "interleaved", table)
    seen_text = seen_speech = False
    for epoch in range(12):
        comb = fi(rec, 7, epoch)
        assert np.array_equal(comb, fi(rec, 7, epoch))  # same (record, seed, epoch) -> same document
        ids, rows = split(comb)
        unit = (ids >= layout.streams["hubert"].offset) & (ids < layout.vocab_size)
        assert np.array_equal(unit, rows >= 0)
        frames = rows[unit] - table.offset[rec["id"]]
        assert np.all(np.diff(frames) > 0) and np.all(frames < hu.size)  # frames in order, none twice
        assert np.array_equal(ids[unit], hu[frames] + layout.streams["hubert"].offset)
        seen_text |= bool((ids == layout.text_id).any())
        seen_speech |= bool(frames.size)
    assert seen_text and seen_speech


def test_packed_batches_carry_each_position_s_feature(prepared, tmp_path):
    from spiritlm.models.hybrid.spec import feature_table
    from spiritlm.models.hybrid.data import make_hybrid_batches
    from spiritlm.components.packing import IGNORE

    cfg = _cfg(prepared, tmp_path)
    table = feature_table(cfg, progress=False)
    b = make_hybrid_batches(cfg.data.sources, 128, table, seed=3).next_batch(3)
    ids, tg, m, f = b["input_ids_BT"], b["targets_BT"], b["feat_mask_BT"], b["feats_BTD"]
    assert ids.shape == tg.shape == m.shape == (3, 128) and f.shape == (3, 128, 16)
    assert m.any() and (f[~m] == 0).all()
    # every feature row is one of the table's rows; targets are the next ids inside a segment
    rows = {tuple(r.tolist()) for r in table.table}
    assert all(tuple(v.tolist()) in rows for v in f[m][:50])
    same = (b["position_ids_BT"][:, 1:] == b["position_ids_BT"][:, :-1] + 1)
    assert torch.equal(tg[:, :-1][same], ids[:, 1:][same]) and (tg[:, :-1][~same] == IGNORE).all()
    b2 = make_hybrid_batches(cfg.data.sources, 128, table, seed=3).next_batch(3)
    assert all(torch.equal(b[k], b2[k]) for k in b)


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_fresh_hybrid_is_the_tokens_only_model_and_learns_from_features(prepared, tmp_path, fusion):
    from spiritlm.models.hybrid.model import build_hybrid
    from spiritlm.models.hybrid.spec import feature_table, make_batches
    from spiritlm.components.metrics import token_losses

    cfg = _cfg(prepared, tmp_path, f"hybrid.fusion={fusion}")
    hyb = build_hybrid(cfg)
    tok_only = build_hybrid(_cfg(prepared, tmp_path, "hybrid.features.kind=none"))
    assert hyb.param_counts()["lm"] == tok_only.param_counts()["lm"] and "projector" in hyb.param_counts()
    batch = make_batches(cfg, hyb, progress=False).next_batch(2)
    with torch.no_grad():
        assert torch.allclose(hyb(batch), tok_only(batch), atol=1e-6)
    # a few steps on one batch lower the loss, and the feature path trains
    torch.manual_seed(0)
    opt = torch.optim.AdamW(hyb.parameters(), lr=3e-3)
    before = [p.detach().clone() for p in hyb.projector.parameters()]
    losses = []
    for _ in range(12):
        loss, _, _ = token_losses(hyb(batch), batch["targets_BT"], hyb.layout)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    assert any(not torch.equal(a, p) for a, p in zip(before, hyb.projector.parameters()))


class _Units:
    """A speech encoder stand-in: the same units for any audio (so only features tell them apart)."""

    def __init__(self, units):
        self.units = np.asarray(units)

    def __call__(self, wav):
        return {"hubert": self.units}


def test_scorer_equals_a_hand_computation_and_uses_features(prepared, tmp_path):
    import soundfile as sf

    from spiritlm.components.scoring import Request
    from spiritlm.models.hybrid.model import build_hybrid
    from spiritlm.models.hybrid.scoring import make_scorer, speech_nll
    from spiritlm.text_tokenizer import SpiritTokenizer

    cfg = _cfg(prepared, tmp_path, "hybrid.features.frame_rate=25")
    model = build_hybrid(cfg).eval()
    with torch.no_grad():  # features matter from the start (a trained model's state)
        model.fuse.weight.normal_(0, 0.2)
    tok = SpiritTokenizer.from_pretrained(prepared["c"]["tokenizer"].parent, layout=model.layout)
    w1, w2 = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(w1, _wav(0.5, 1), 16000)
    sf.write(w2, _wav(0.5, 2), 16000)
    units = [3, 3, 7, 7, 7, 1, 1, 4, 4, 9, 9, 2]  # 0.5 s at 25 Hz = 12 frames, not deduplicated
    sc = make_scorer(model, tok, _Units(units))
    reqs = [Request([("text", "the cat")], [("speech", str(w1))]), Request([], [("speech", str(w2))])]
    got = sc.score(reqs)
    # by hand: ids, features and one forward through the model
    from spiritlm.data.encoders import read_audio

    lay = model.layout
    ctx = tok.encode_segments([("text", "the cat")], trailing_marker="speech")
    cont = [lay.streams["hubert"].offset + u for u in units]
    ids = torch.tensor([ctx + cont])
    feats = torch.zeros(1, ids.shape[1], 16)
    feats[0, len(ctx):] = torch.from_numpy(sc.featurizer(read_audio(w1), len(units)))
    mask = torch.zeros(1, ids.shape[1], dtype=torch.bool)
    mask[0, len(ctx):] = True
    with torch.no_grad():
        h = model.hidden(ids, feats, mask, torch.arange(ids.shape[1])[None])
        lp = torch.log_softmax(model.lm.get_output_embeddings()(h)[0].float(), -1)
    C = len(ctx)
    hand = sum(lp[C - 1 + j, cont[j]].item() for j in range(len(cont)))
    assert got[0].n_tokens == len(units) and math.isclose(got[0].logprob, hand, rel_tol=1e-5, abs_tol=1e-4)
    ref = sc.score_one_at_a_time(reqs)
    assert all(math.isclose(a.logprob, b.logprob, rel_tol=1e-5, abs_tol=1e-4) for a, b in zip(got, ref))
    # same units, other audio -> another score (the features count)
    a, b = sc.score([Request([], [("speech", str(w1))]), Request([], [("speech", str(w2))])])
    assert a.n_tokens == b.n_tokens == len(units) and abs(a.logprob - b.logprob) > 1e-4
    nll = speech_nll(sc, [str(w1), str(w2)])
    assert math.isclose(nll["nll"], -(a.logprob + b.logprob) / (2 * len(units)), rel_tol=1e-9)
    assert math.isclose(nll["ppl"], math.exp(nll["nll"]))


def test_hubert_features_are_the_tokenizer_s_own_frames(tmp_path):
    from transformers import HubertModel

    from spiritlm.models.continuous.encoders import HubertEncoder
    from spiritlm.models.hybrid.config import HybridConfig
    from spiritlm.models.hybrid.model import feature_dim
    from spiritlm.tokenizer.hubert import tiny_hubert_config

    torch.manual_seed(0)
    HubertModel(tiny_hubert_config(hidden=32, layers=2, heads=2, ffn=64, conv_dim=16)).save_pretrained(tmp_path / "hubert")
    cfg = FeatureConfig(kind="hubert", hubert=str(tmp_path), layer=1)
    enc = HubertEncoder(str(tmp_path), 1)
    fz = FrameFeaturizer(cfg, frame_rate=enc.frame_rate)
    w = _wav(1.0)
    x, lens = enc([w])
    f = fz(w, int(lens[0]))
    assert f.shape == (int(lens[0]), 32) and np.allclose(f, x[0, : int(lens[0])].numpy())
    assert feature_dim(HybridConfig(features=cfg)) == 32
    from spiritlm.config import ConfigError

    with pytest.raises(ConfigError, match="frames/s"):
        FrameFeaturizer(cfg, frame_rate=enc.frame_rate / 2)
