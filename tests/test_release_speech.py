"""Meta's released speech tokenizer files load as shipped and give the release's numbers.

Every file here is built in the release's layout from its documented keys, shapes and config
fields (random weights, tiny sizes; never from the release's code), and the numbers are checked
against independent reference computations written in this file (functional convs, a literal
roll loop for the blank rule, numpy pooling). The LibriSpeech utterance of the release's own test
(146160 samples) must give 228 HuBERT, 114 pitch and 10 style frames before dedup.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

LIBRI = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real_speech" / "librispeech" / "7143-88743-0029.flac"
needs_libri = pytest.mark.skipif(not LIBRI.is_file(), reason=f"real speech not found at {LIBRI} (shared data folder)")


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


# ---- builders of release-format files ------------------------------------------------------
def _tiny_hubert(seed: int = 0, layers: int = 2):
    from transformers import HubertModel

    from spiritlm.tokenizer.hubert import tiny_hubert_config

    torch.manual_seed(seed)  # full-size strides (hop 640, 25 Hz like mHuBERT-25hz), tiny widths
    return HubertModel(tiny_hubert_config(hidden=32, layers=layers, heads=2, ffn=64, conv_dim=16, hop=640)).eval()


def _write_converted_hubert(path: Path, model, normalize: bool = False) -> Path:
    """The release's converted layout: {model_cfg, task_cfg, model_weight, dictionaries_symbols}."""
    from spiritlm.tokenizer.fairseq_convert import to_fairseq_state_dict

    c = model.config
    conv = " + ".join(f"[({d}, {k}, {s})]" for d, k, s in zip(c.conv_dim, c.conv_kernel, c.conv_stride))
    model_cfg = {"label_rate": 25.0, "extractor_mode": "default", "encoder_layers": c.num_hidden_layers,
                 "encoder_embed_dim": c.hidden_size, "encoder_ffn_embed_dim": c.intermediate_size,
                 "encoder_attention_heads": c.num_attention_heads, "activation_fn": "gelu",
                 "layer_norm_first": False, "conv_feature_layers": conv, "conv_bias": False,
                 "conv_pos": c.num_conv_pos_embeddings, "conv_pos_groups": c.num_conv_pos_embedding_groups,
                 "final_dim": 16, "required_seq_len_multiple": 2}
    task_cfg = {"label_rate": 25.0, "sample_rate": 16000, "normalize": normalize, "enable_padding": False}
    sd = to_fairseq_state_dict(model)
    sd["final_proj.weight"] = torch.zeros(16, c.hidden_size)  # pre-training heads: dropped on load
    sd["label_embs_concat"] = torch.zeros(501, 16)
    torch.save({"model_cfg": model_cfg, "task_cfg": task_cfg, "model_weight": sd,
                "dictionaries_symbols": [[str(i) for i in range(501)]]}, path)
    return path


def _quantizer_sd(vocab: int, dim: int, upstream: int, seed: int = 0, blank_bias: float = 0.0) -> dict:
    m = upstream - (vocab + 1)
    widths = [dim, dim - m // 4, dim - m // 2, vocab + 1]
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(3):
        sd[f"{2 * i}.weight"] = torch.randn(widths[i + 1], widths[i], generator=g) / math.sqrt(widths[i])
        sd[f"{2 * i}.bias"] = 0.1 * torch.randn(widths[i + 1], generator=g)
    sd["4.bias"][-1] += blank_bias  # a blank-heavy quantizer exercises the blank rule
    return sd


def _write_quantizer(path: Path, vocab=20, dim=32, upstream=45, seed=0, blank_bias=0.0) -> Path:
    torch.save({"model_cfg": {"vocab_size": vocab, "dim": dim, "upstream_dim": upstream},
                "model_weight": _quantizer_sd(vocab, dim, upstream, seed, blank_bias)}, path)
    return path


VQ_CFG = {
    "features": "norm_f0_interp,vuv",
    "encoder_params": {"input_emb_width": 2, "output_emb_width": 8, "levels": 1, "downs_t": [4], "strides_t": [2],
                       "width": 8, "depth": 2, "m_conv": 1.0, "dilation_growth_rate": 3},
    "vq_params": {"l_bins": 64, "emb_width": 8, "mu": 0.99, "levels": 1},
    "decoder_params": {"input_emb_width": 2, "output_emb_width": 8, "levels": 1, "downs_t": [4], "strides_t": [2],
                       "width": 8, "depth": 2, "m_conv": 1.0, "dilation_growth_rate": 3},
}


def _vqvae_state_dict(seed: int = 0) -> dict:
    """Documented keys and shapes of the release's one-level F0 VQ-VAE (width 8, emb 8, depth 2)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: 0.3 * torch.randn(*s, generator=g)  # noqa: E731
    sd, w, e = {}, 8, 8
    enc = "encoder.level_blocks.0.model"
    for i in range(4):
        sd[f"{enc}.{i}.0.weight"], sd[f"{enc}.{i}.0.bias"] = r(w, 2 if i == 0 else w, 4), r(w)
        for d in range(2):
            sd[f"{enc}.{i}.1.model.{d}.model.1.weight"], sd[f"{enc}.{i}.1.model.{d}.model.1.bias"] = r(w, w, 3), r(w)
            sd[f"{enc}.{i}.1.model.{d}.model.3.weight"], sd[f"{enc}.{i}.1.model.{d}.model.3.bias"] = r(w, w, 1), r(w)
    sd[f"{enc}.4.weight"], sd[f"{enc}.4.bias"] = r(e, w, 3), r(e)
    sd["vq.level_blocks.0.k"] = r(64, e)
    dec = "decoder.level_blocks.0.model"
    sd[f"{dec}.0.weight"], sd[f"{dec}.0.bias"] = r(w, e, 3), r(w)
    for i in range(4):
        for d in range(2):
            sd[f"{dec}.{i + 1}.0.model.{d}.model.1.weight"], sd[f"{dec}.{i + 1}.0.model.{d}.model.1.bias"] = r(w, w, 3), r(w)
            sd[f"{dec}.{i + 1}.0.model.{d}.model.3.weight"], sd[f"{dec}.{i + 1}.0.model.{d}.model.3.bias"] = r(w, w, 1), r(w)
        sd[f"{dec}.{i + 1}.1.weight"], sd[f"{dec}.{i + 1}.1.bias"] = r(w, e if i == 3 else w, 4), r(e if i == 3 else w)
    sd["decoder.out.weight"], sd["decoder.out.bias"] = r(2, e, 3), r(2)
    return sd


def _write_vqvae(d: Path, cfg: dict = VQ_CFG, sd: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    torch.save({"model": sd if sd is not None else _vqvae_state_dict(), "optimizer": None, "step": 10}, d / "model.pt")
    return d


def _reference_codes(sd: dict, x_CT: np.ndarray) -> np.ndarray:
    """Functional forward of the documented encoder (F.conv1d on the raw tensors) + nearest code."""
    x = torch.as_tensor(x_CT)[None]
    enc = "encoder.level_blocks.0.model"
    for i in range(4):
        x = F.conv1d(x, sd[f"{enc}.{i}.0.weight"], sd[f"{enc}.{i}.0.bias"], stride=2, padding=1)
        for d in range(2):
            p = f"{enc}.{i}.1.model.{d}.model"
            h = F.conv1d(F.relu(x), sd[f"{p}.1.weight"], sd[f"{p}.1.bias"], padding=3 ** d, dilation=3 ** d)
            x = x + F.conv1d(F.relu(h), sd[f"{p}.3.weight"], sd[f"{p}.3.bias"])
    z = F.conv1d(x, sd[f"{enc}.4.weight"], sd[f"{enc}.4.bias"], padding=1)[0].T
    return torch.cdist(z, sd["vq.level_blocks.0.k"]).argmin(1).numpy()


def _tiny_w2v2_config(**kw):
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                          num_labels=100, classifier_proj_size=12, **kw)


def _write_style(d: Path, seed: int = 0, old_weight_norm_names: bool = True) -> Path:
    """HF Wav2Vec2ForSequenceClassification directory with a pickled pytorch_model.bin, plus the
    extra ``_float_tensor`` buffer the release's subclass saves; the positional conv's weight norm
    under the ``weight_g`` / ``weight_v`` names of checkpoints saved before torch parametrizations."""
    from transformers import Wav2Vec2ForSequenceClassification

    torch.manual_seed(seed)
    model = Wav2Vec2ForSequenceClassification(_tiny_w2v2_config()).eval()
    d.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(str(d / "config.json"))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if old_weight_norm_names:
        sd = {k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"): v for k, v in sd.items()}
    sd["_float_tensor"] = torch.tensor([0.0])
    torch.save(sd, d / "pytorch_model.bin")
    return d


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    """A complete release speech_tokenizer/ folder in the shipped layout."""
    d = tmp_path_factory.mktemp("checkpoints") / "speech_tokenizer"
    (d / "hubert_25hz").mkdir(parents=True)
    _write_converted_hubert(d / "hubert_25hz" / "mhubert_base_25hz.pt", _tiny_hubert(layers=11))  # layer 11 is read
    _write_quantizer(d / "hubert_25hz" / "L11_quantizer_500.pt", vocab=500, dim=32, upstream=541, blank_bias=1.0)
    _write_vqvae(d / "vqvae_f0_quantizer")
    _write_style(d / "style_encoder_w2v2")
    return d


# ---- HuBERT ---------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", [False, True])
def test_converted_hubert_loads_and_matches_reference(tmp_path, normalize):
    from spiritlm.tokenizer.hubert import HubertFeaturizer, load_hubert

    ref_model = _tiny_hubert(1)
    path = _write_converted_hubert(tmp_path / "mhubert_base_25hz.pt", ref_model, normalize)
    model = load_hubert(path)
    assert model.config.normalize_waveform is normalize
    feat = HubertFeaturizer(model, layer=2, device="cpu")
    assert feat.dtype == "float32" and feat.normalize is normalize
    w = _noise(24000, 3) + 0.05  # an offset, so that normalising matters
    x = (w - w.mean()) / np.sqrt(w.var() + 1e-5) if normalize else w  # fairseq's F.layer_norm(x, x.shape)
    with torch.no_grad():
        want = ref_model(torch.from_numpy(x.astype(np.float32))[None], output_hidden_states=True).hidden_states[2][0]
    got = feat.features(w)
    assert got.shape == tuple(want.shape)
    assert np.abs(got - want.numpy()).max() < 1e-4


def test_fairseq_hubert_task_normalize_from_args(tmp_path):
    from spiritlm.tokenizer.fairseq_convert import read_hubert_checkpoint, to_fairseq_state_dict

    model = _tiny_hubert()
    c = model.config
    conv = " + ".join(f"[({d}, {k}, {s})]" for d, k, s in zip(c.conv_dim, c.conv_kernel, c.conv_stride))
    args = argparse.Namespace(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
                              conv_feature_layers=conv, conv_pos=16, conv_pos_groups=4, normalize=True)
    torch.save({"args": args, "model": to_fairseq_state_dict(model)}, tmp_path / "fs.pt")
    _, mcfg, tcfg, layout = read_hubert_checkpoint(tmp_path / "fs.pt")
    assert layout == "fairseq" and tcfg["normalize"] is True and mcfg["encoder_layers"] == 2


def test_bf16_is_explicit():
    from spiritlm.tokenizer.hubert import HubertCfg, HubertFeaturizer

    model = _tiny_hubert()
    assert HubertCfg().dtype == "float32"
    a = HubertFeaturizer(model, 2, device="cpu").features(_noise(16000))
    b = HubertFeaturizer(model, 2, device="cpu", dtype="bfloat16").features(_noise(16000))
    # bf16 only when asked for. The bound is relative to the features' scale: on a CPU with native
    # bf16 (AMX) autocast rounds differently than where bf16 is emulated, and the absolute
    # difference reached 1.16 on features of a larger scale (measured 2026-12-07; the same on the
    # commit before this session's changes), failing the former absolute bound of 0.5
    assert a.shape == b.shape and 0 < np.abs(a - b).max() < 0.5 * max(1.0, float(np.abs(a).max()))
    with pytest.raises(ValueError, match="float32"):
        HubertFeaturizer(model, 2, device="cpu", dtype="float16")


@pytest.mark.parametrize("case,match", [
    ({"model_cfg": {}, "model_weight": {}}, "task_cfg"),
    ({"something": 1}, "converted layout"),
    ({"model_cfg": {"encoder_layers": 2}, "task_cfg": {}, "model_weight": {"a": 1}}, "state_dict of tensors"),
])
def test_malformed_hubert_files_are_refused(tmp_path, case, match):
    from spiritlm.tokenizer.hubert import load_hubert

    torch.save(case, tmp_path / "h.pt")
    with pytest.raises(ValueError, match=match) as e:
        load_hubert(tmp_path / "h.pt")
    assert "h.pt" in str(e.value)
    (tmp_path / "t.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="t.pt"):
        load_hubert(tmp_path / "t.pt")


def test_hubert_loader_executes_no_code(tmp_path):
    from spiritlm.tokenizer.hubert import load_hubert

    class Evil:
        def __reduce__(self):
            return (pickle.loads, (b"cos\nsystem\n(S'touch " + str(tmp_path / "PWNED").encode() + b"'\ntR.",))

    torch.save({"model_cfg": {"x": Evil()}, "task_cfg": {}, "model_weight": {"w": torch.zeros(1)}}, tmp_path / "e.pt")
    with pytest.raises(ValueError):
        load_hubert(tmp_path / "e.pt")
    assert not (tmp_path / "PWNED").exists()


# ---- unit quantizer ---------------------------------------------------------------------------
def _roll_rule(code: np.ndarray, blank: int) -> np.ndarray:
    """The rule as published: replace blanks by the rolled-by-one sequence, until none is left."""
    code = torch.as_tensor(code).clone()
    for _ in range(10000):
        b = code == blank
        if not b.any():
            break
        code[b] = torch.roll(code, 1)[b]
    return code.numpy()


def test_blank_rule_wraps_left_like_the_release():
    from spiritlm.tokenizer.kmeans import fill_blanks

    assert fill_blanks(np.array([5, 5, 2, 7, 5]), 5, "wrap_left").tolist() == [7, 7, 2, 7, 7]
    assert fill_blanks(np.array([5, 5, 2, 7, 5]), 5, "left_then_right").tolist() == [2, 2, 2, 7, 7]
    assert fill_blanks(np.array([5, 5]), 5, "wrap_left").tolist() == [5, 5]  # the release leaves all-blank as is
    rng = np.random.default_rng(0)
    for _ in range(300):
        x = rng.integers(0, 4, rng.integers(1, 40))
        np.testing.assert_array_equal(fill_blanks(x, 3, "wrap_left"), _roll_rule(x, 3))


def test_release_quantizer_loads_and_matches_reference(tmp_path):
    from spiritlm.tokenizer.kmeans import LinearQuantizer

    path = _write_quantizer(tmp_path / "L11_quantizer_500.pt", vocab=20, dim=32, upstream=45, blank_bias=2.0)
    q = LinearQuantizer.load(path)
    assert q.size == 20 and q.blank_rule == "wrap_left"
    assert [m.out_features for m in q.net if isinstance(m, torch.nn.Linear)] == [26, 20, 21]  # non-square
    x = np.random.default_rng(1).standard_normal((300, 32)).astype(np.float32)
    sd = _quantizer_sd(20, 32, 45, 0, 2.0)
    h = x
    for i in range(3):  # numpy reference of Linear -> LeakyReLU(0.01) x2 -> Linear, argmax of log-softmax
        h = h @ sd[f"{2 * i}.weight"].numpy().T + sd[f"{2 * i}.bias"].numpy()
        if i < 2:
            h = np.where(h > 0, h, 0.01 * h)
    raw = h.argmax(1)
    assert (raw == 20).sum() > 10  # blank-heavy: the rule matters
    np.testing.assert_array_equal(q(x), _roll_rule(raw, 20))


@pytest.mark.parametrize("mutate,match", [
    (lambda c: c["model_cfg"].pop("upstream_dim"), "upstream_dim"),
    (lambda c: c["model_cfg"].__setitem__("upstream_dim", 50), "does not match model_cfg"),
    (lambda c: c["model_weight"].pop("2.bias"), "does not match model_cfg"),
])
def test_malformed_quantizer_is_refused(tmp_path, mutate, match):
    from spiritlm.tokenizer.kmeans import LinearQuantizer

    ckpt = {"model_cfg": {"vocab_size": 20, "dim": 32, "upstream_dim": 45}, "model_weight": _quantizer_sd(20, 32, 45)}
    mutate(ckpt)
    torch.save(ckpt, tmp_path / "q.pt")
    with pytest.raises(ValueError, match=match) as e:
        LinearQuantizer.load(tmp_path / "q.pt")
    assert "q.pt" in str(e.value)


@pytest.mark.parametrize("as_numpy", [True, False])
def test_release_kmeans_pt_loads_without_code(tmp_path, as_numpy):
    from spiritlm.tokenizer.kmeans import KMeansQuantizer, load_centroids

    c = np.random.default_rng(0).standard_normal((50, 8))
    obj = {"cluster_centers": c if as_numpy else torch.from_numpy(c), "n_clusters": np.int64(50) if as_numpy else 50}
    torch.save(obj, tmp_path / "km.pt")
    np.testing.assert_allclose(load_centroids(tmp_path / "km.pt"), c.astype(np.float32))
    x = np.random.default_rng(1).standard_normal((200, 8)).astype(np.float32)
    want = ((x[:, None] ** 2).sum(-1) - 2 * x @ c.T.astype(np.float32) + (c.astype(np.float32) ** 2).sum(1)).argmin(1)
    assert (KMeansQuantizer.load(tmp_path / "km.pt", use_gpu=False)(x) == want).mean() > 0.99
    torch.save({"cluster_centers": c, "n_clusters": 49}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="n_clusters"):
        load_centroids(tmp_path / "bad.pt")


# ---- pitch ----------------------------------------------------------------------------------
def test_release_vqvae_loads_documented_keys_and_matches_functional_reference(tmp_path):
    from spiritlm.tokenizer.release_f0 import load_release_vqvae

    sd = _vqvae_state_dict(3)
    model, cfg = load_release_vqvae(_write_vqvae(tmp_path / "vq", sd=sd))
    assert model.codebook_size == 64 and model.downsampling == 16 and cfg["features"] == "norm_f0_interp,vuv"
    rng = np.random.default_rng(0)
    for T in (16, 17, 31, 32, 200, 1827, 1828):
        x = np.stack([rng.normal(0, 30, T), rng.random(T) > 0.3]).astype(np.float32)
        codes = model.encode(x)
        assert len(codes) == T // 16 == model.n_codes(T)
        np.testing.assert_array_equal(codes, _reference_codes(sd, x))
    assert model.decode(codes).shape == (2, len(codes) * 16)


def test_release_vqvae_malformed_files(tmp_path):
    from spiritlm.tokenizer.release_f0 import ReleaseFormatError, load_release_vqvae

    bad = dict(VQ_CFG, features="log_f0,vuv")
    with pytest.raises(ReleaseFormatError, match="features"):
        load_release_vqvae(_write_vqvae(tmp_path / "a", cfg=bad))
    sd = _vqvae_state_dict()
    sd["vq.level_blocks.0.k"] = torch.zeros(32, 8)
    with pytest.raises(ReleaseFormatError, match="model.pt"):
        load_release_vqvae(_write_vqvae(tmp_path / "b", sd=sd))
    d = _write_vqvae(tmp_path / "c")
    torch.save(_vqvae_state_dict(), d / "model.pt")  # not wrapped in {"model": ...}
    with pytest.raises(ReleaseFormatError, match="'model'"):
        load_release_vqvae(d)
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        load_release_vqvae(tmp_path / "missing")


def test_release_pitch_preprocessing():
    from spiritlm.tokenizer.release_f0 import interpolate_f0, release_vqvae_input

    f0 = np.array([0, 0, 100, 0, 0, 200, 0], float)
    vuv = f0 > 0
    interp = interpolate_f0(f0)
    np.testing.assert_allclose(interp, [100, 100, 100, 100 + 100 / 3, 100 + 200 / 3, 200, 200])
    x = release_vqvae_input(interp, vuv, "norm_f0_interp,vuv", normalize=True)
    np.testing.assert_allclose(x[0], interp - 150, rtol=1e-6)  # Hz minus the mean of voiced frames
    np.testing.assert_array_equal(x[1], vuv.astype(np.float32))
    raw = release_vqvae_input(f0, vuv, "norm_f0,vuv", normalize=True)  # unvoiced zeros stay zero
    np.testing.assert_allclose(raw[0], np.where(vuv, f0 - 150, 0))
    np.testing.assert_allclose(release_vqvae_input(f0, vuv, "f0,vuv", normalize=False)[0], f0)
    np.testing.assert_array_equal(interpolate_f0(np.array([0, 120.0, 0])), [0, 120, 0])  # one voiced frame


def test_release_yaapt_frames_and_settings():
    from spiritlm.tokenizer.release_f0 import release_f0_frames, release_yaapt

    t = np.arange(16000) / 16000
    tone = sum(np.sin(2 * np.pi * 150 * h * t) / h for h in range(1, 6)).astype(np.float32) * 0.01  # quiet
    f0, vuv = release_yaapt(tone)
    assert len(f0) == len(vuv) == 200 and vuv[20:-20].mean() > 0.9
    assert abs(np.median(f0[vuv]) - 150) < 3  # peak normalisation makes the quiet tone usable
    for n in (1280, 1281, 1359, 1360, 16079, 16080):
        assert len(release_yaapt(_noise(n, n))[0]) == release_f0_frames(n, "yaapt") == n // 80
        assert release_f0_frames(n, "fcpe") == n // 80 + 1


def test_pitch_token_counts_for_many_lengths(tmp_path):
    from spiritlm.tokenizer.release_f0 import ReleasePitchTokenizer, release_f0_frames

    tok = ReleasePitchTokenizer(_write_vqvae(tmp_path / "vq"))
    for n in list(range(1280, 40000, 997)) + [146160, 100 * 16000 + 1279, 100 * 16000 + 1280, 250 * 16000 + 7]:
        chunks = [min(1_600_000, n - s) for s in range(0, n, 1_600_000)]
        want = sum(release_f0_frames(c) // 16 for c in chunks if c >= 1280)
        assert tok.num_tokens(n) == want
    assert tok.num_tokens(146160) == 114
    from spiritlm.tokenizer.release_f0 import release_pitch_tokens

    for n in range(1280, 200000, 4111):  # every F0 method's rule, chunked like encode_units
        assert release_pitch_tokens(n, "yaapt") == tok.num_tokens(n) == (n // 80) // 16
        assert release_pitch_tokens(n, "fcpe") == (n // 80 + 1) // 16
    assert release_pitch_tokens(146160, "fcpe") == 114
    with pytest.raises(ValueError, match="torchaudio"):
        ReleasePitchTokenizer(tmp_path / "vq", f0_method="fcpe")


# ---- style ----------------------------------------------------------------------------------
def test_release_style_encoder_pooling_matches_reference(tmp_path):
    from transformers import Wav2Vec2ForSequenceClassification

    from spiritlm.tokenizer.release_style import ReleaseStyleEncoder, release_style_tokens

    d = _write_style(tmp_path / "style", seed=4)
    enc = ReleaseStyleEncoder(d)
    assert enc.size == 100
    ref = Wav2Vec2ForSequenceClassification(_tiny_w2v2_config()).eval()
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    sd.pop("_float_tensor")
    ref.load_state_dict({k.replace("weight_g", "parametrizations.weight.original0").replace(
        "weight_v", "parametrizations.weight.original1"): v for k, v in sd.items()})
    for n in (16000, 16399, 26000, 57000):
        w = _noise(n, n) * 3 + 0.2
        x = (w - w.mean()) / np.sqrt(w.var() + 1e-7)
        with torch.no_grad():
            h = ref.projector(ref(torch.from_numpy(x.astype(np.float32))[None], output_hidden_states=True).hidden_states[-1])[0].numpy()
        T = len(h)
        pooled = np.stack([h[i : i + 50].mean(0) for i in range(0, T, 50)])
        with torch.no_grad():
            want = ref.classifier(torch.from_numpy(pooled)).argmax(-1).numpy()
        got = enc(w)
        assert len(got) == math.ceil(T / 50) == release_style_tokens(n) == enc.num_tokens(n)
        np.testing.assert_array_equal(got, want)


def test_style_bin_is_read_with_weights_only(tmp_path):
    from spiritlm.tokenizer.release_style import ReleaseStyleEncoder

    d = _write_style(tmp_path / "style")

    class Evil:
        def __reduce__(self):
            return (pickle.loads, (b"cos\nsystem\n(S'touch " + str(tmp_path / "PWNED").encode() + b"'\ntR.",))

    torch.save({"x": Evil()}, d / "pytorch_model.bin")
    with pytest.raises(ValueError, match="style"):
        ReleaseStyleEncoder(d)
    assert not (tmp_path / "PWNED").exists()
    (d / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    with pytest.raises(ValueError, match="wav2vec2"):
        ReleaseStyleEncoder(d)


# ---- the whole release folder ---------------------------------------------------------------
def test_frame_counts_for_many_lengths(release_dir):
    from spiritlm.tokenizer.hubert import conv_out_length
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.from_release(release_dir, "expressive", device="cpu")
    f = tok.featurizer
    for n in [1280, 1919, 1920, 16000, 146160, 100 * 16000 + 1279, 100 * 16000 + 1280, 230 * 16000 + 5]:
        chunks = [min(1_600_000, n - s) for s in range(0, n, 1_600_000)]
        chunks = [c for c in chunks if c >= 1280]
        assert f.num_frames(n) == sum(conv_out_length(c, f.kernels, f.strides) for c in chunks)
        assert tok.pitch_model.num_tokens(n) == sum((c // 80) // 16 for c in chunks)
        assert tok.style_quantizer.num_tokens(n) == sum(math.ceil(((c - 400) // 320 + 1) / 50) for c in chunks)
    assert (f.num_frames(146160), tok.pitch_model.num_tokens(146160), tok.style_quantizer.num_tokens(146160)) == (228, 114, 10)


@needs_libri
def test_librispeech_utterance_gives_the_release_counts(release_dir, tmp_path):
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.from_release(release_dir, "expressive", device="cpu")
    units = tok.encode(str(LIBRI))
    assert {k: len(units[k]) for k in ("hubert", "pitch", "style")} == {"hubert": 228, "pitch": 114, "style": 10}
    assert units["hubert"].max() <= 500 and units["pitch"].max() < 64 and units["style"].max() < 100
    s = tok.to_string(units)
    assert s.startswith("[St") and "[Pi" in s and "[Hu" in s
    base = SpeechTokenizer.from_release(release_dir, "base", device="cpu")
    b = base.encode(str(LIBRI))
    np.testing.assert_array_equal(b["hubert"], units["hubert"])
    assert "pitch" not in b and "style" not in b and base.to_string(b).startswith("[Hu")


def test_blank_rule_applies_within_each_100s_chunk(release_dir):
    from spiritlm.tokenizer.kmeans import fill_blanks
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.from_release(release_dir, "base", device="cpu")
    n = 100 * 16000 + 40000
    feats = np.random.default_rng(0).standard_normal((tok.featurizer.num_frames(n), 32)).astype(np.float32)
    with torch.no_grad():
        raw = tok.quantizer.logits(feats).argmax(-1).numpy()
    k = tok.featurizer.num_frames(100 * 16000)
    want = np.concatenate([fill_blanks(raw[:k], 500, "wrap_left"), fill_blanks(raw[k:], 500, "wrap_left")])
    np.testing.assert_array_equal(tok._units(feats, n), want)


def test_release_recipe_field_fit_and_load(release_dir, tmp_path):
    from spiritlm.cli import main
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer, TokenizerDirError

    recipe = Path(__file__).resolve().parents[1] / "tokenizers" / "base.toml"
    out = tmp_path / "tok"
    assert main(["tokenizer", "fit", str(recipe), "--set", f"release.path={release_dir}", "--out", str(out)]) == 0
    assert not (out / "hubert").exists()  # nothing repackaged: the directory points at the release
    tok = SpeechTokenizer.load(out)
    w = _noise(40000, 9)
    np.testing.assert_array_equal(tok.encode(w)["hubert"],
                                  SpeechTokenizer.from_release(release_dir, "base", device="cpu").encode(w)["hubert"])
    man = json.loads((out / "manifest.json").read_text())
    assert any(p.endswith("L11_quantizer_500.pt") for p in man["release_files"])
    man["release_files"][next(iter(man["release_files"]))] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(TokenizerDirError, match="release file"):
        SpeechTokenizer.load(out)


def test_cli_encode_release_and_failures(release_dir, tmp_path, capsys):
    import soundfile as sf

    from spiritlm.cli import main

    good = tmp_path / "a.wav"
    sf.write(good, _noise(20000), 16000)
    bad = tmp_path / "broken.wav"
    bad.write_text("not audio")
    assert main(["tokenizer", "encode", "--release", str(release_dir), "--variant", "base", str(good)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(str(good)) and "[Hu" in line
    assert main(["tokenizer", "encode", "--release", str(release_dir), str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "1 of 2 files failed" in err and str(bad) in err
    # the output path is checked before anything is encoded
    assert main(["tokenizer", "encode", "--release", str(tmp_path / "nowhere"), "--jsonl",
                 str(tmp_path / "no" / "such" / "u.jsonl"), str(good)]) != 0
    assert "does not exist" in capsys.readouterr().err


def test_incomplete_release_folder_names_the_missing_file(release_dir, tmp_path):
    import shutil

    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    d = tmp_path / "checkpoints" / "speech_tokenizer"
    shutil.copytree(release_dir, d, ignore=shutil.ignore_patterns("model.pt"))
    tok = SpeechTokenizer.from_release(d.parent, "base", device="cpu")  # checkpoints/ is accepted too
    assert tok.available_streams == ("hubert",)
    with pytest.raises(FileNotFoundError, match="vqvae_f0_quantizer/model.pt"):
        SpeechTokenizer.from_release(d, "expressive", device="cpu")
    with pytest.raises(FileNotFoundError, match="hubert_25hz"):
        SpeechTokenizer.from_release(tmp_path, "base")
    with pytest.raises(ValueError, match="variant"):
        SpeechTokenizer.from_release(d, "large")
