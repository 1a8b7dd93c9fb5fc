"""Speech tokenizer core: audio loading, HuBERT features, fairseq conversion, quantizers, PNMI."""

from __future__ import annotations

import argparse
import pickle
import sys
import types

import numpy as np
import pytest
import soundfile as sf
import torch

from spiritlm.audio import AudioError, load_audio

SR = 16000


def _tone(n: int, sr: int = SR, f: float = 220.0) -> np.ndarray:
    return (0.4 * np.sin(2 * np.pi * f * np.arange(n) / sr)).astype(np.float32)


# ---- audio ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "subtype,ext,tol",
    [("PCM_U8", "wav", 1e-2), ("PCM_16", "wav", 1e-4), ("PCM_24", "wav", 1e-6), ("PCM_32", "wav", 1e-8),
     ("FLOAT", "wav", 0), ("DOUBLE", "wav", 0), ("PCM_16", "flac", 1e-4), ("PCM_24", "flac", 1e-6)],
)
def test_bit_depths_and_formats(tmp_path, subtype, ext, tol):
    x = _tone(4000)
    p = tmp_path / f"a.{ext}"
    sf.write(p, x, SR, subtype=subtype)
    y = load_audio(p)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() <= tol + 1e-7


def test_stereo_is_downmixed_and_resampled(tmp_path):
    x = _tone(44100, 44100)
    p = tmp_path / "st.wav"
    sf.write(p, np.stack([x, -x * 0 + x * 0.5], 1), 44100)
    y = load_audio(p)
    assert y.ndim == 1 and abs(len(y) - SR) <= 1
    ref = 0.75 * _tone(SR)
    assert np.abs(y[100:-100] - ref[100:-100]).max() < 0.02  # soxr keeps the 220 Hz tone


def test_resample_8k_and_48k(tmp_path):
    for sr in (8000, 48000):
        p = tmp_path / f"r{sr}.wav"
        sf.write(p, _tone(sr, sr), sr)
        assert abs(len(load_audio(p)) - SR) <= 1


@pytest.mark.parametrize("case", ["missing", "garbage", "truncated", "empty", "nan", "inf", "short", "dir"])
def test_bad_files_name_file_and_reason(tmp_path, case):
    p = tmp_path / f"{case}.wav"
    if case == "garbage":
        p.write_bytes(b"RIFF\x00\x00\x00\x00not really audio")
    elif case == "truncated":
        sf.write(p, _tone(8000), SR, subtype="PCM_16")
        p.write_bytes(p.read_bytes()[:3000])
    elif case == "empty":
        sf.write(p, np.zeros(0, np.float32), SR)
    elif case in ("nan", "inf"):
        x = _tone(4000)
        x[123] = np.nan if case == "nan" else np.inf
        sf.write(p, x, SR, subtype="FLOAT")
    elif case == "short":
        sf.write(p, _tone(100), SR)
    elif case == "dir":
        p.mkdir()
    with pytest.raises(AudioError) as e:
        load_audio(p, min_samples=320)
    msg = str(e.value)
    assert str(p) in msg
    expected = {"missing": "not found", "garbage": "unreadable", "truncated": "truncated", "empty": "empty",
                "nan": "NaN", "inf": "NaN/inf", "short": "too short", "dir": "directory"}[case]
    assert expected in msg


def test_array_input_checks():
    with pytest.raises(AudioError, match="empty"):
        load_audio(np.zeros(0, np.float32))
    with pytest.raises(AudioError, match="NaN"):
        load_audio(np.array([0.0, np.nan] * 500, np.float32))
    y = load_audio((_tone(1600) * 32767).astype(np.int16))  # int PCM arrays are scaled
    assert np.abs(y).max() < 0.41
    assert len(load_audio(_tone(8000, 8000), sample_rate=8000)) == SR


# ---- HuBERT --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    from transformers import HubertModel

    from spiritlm.tokenizer.hubert import tiny_hubert_config

    torch.manual_seed(0)
    return HubertModel(tiny_hubert_config(hidden=32, layers=2, heads=2, ffn=64, conv_dim=16, hop=640)).eval()


def test_batched_equals_one_at_a_time_and_hf(tiny_model):
    from spiritlm.tokenizer.hubert import HubertFeaturizer

    rng = np.random.default_rng(0)
    wavs = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (40000, 5000, 1500, 23456, 16000)]
    feat = HubertFeaturizer(tiny_model, layer=2, device="cpu", batch_samples=200_000)
    many = feat.features_many(wavs)
    for w, f in zip(wavs, many):
        one = feat.features(w)
        assert f.shape == one.shape == (feat.num_frames(len(w)), 32)
        np.testing.assert_allclose(f, one, atol=1e-4)
        with torch.no_grad():  # plain HF forward on the unpadded file (all layers = 2)
            ref = tiny_model(torch.from_numpy(w)[None]).last_hidden_state[0].numpy()
        np.testing.assert_allclose(f, ref, atol=1e-4)


def test_layer_selection_and_chunking(tiny_model):
    from spiritlm.tokenizer.hubert import HubertFeaturizer

    rng = np.random.default_rng(1)
    w = 0.1 * rng.standard_normal(16000 * 2 + 1000).astype(np.float32)
    f1 = HubertFeaturizer(tiny_model, layer=1, device="cpu").features(w)
    with torch.no_grad():
        out = tiny_model(torch.from_numpy(w)[None], output_hidden_states=True)
    np.testing.assert_allclose(f1, out.hidden_states[1][0].numpy(), atol=1e-4)
    assert len(tiny_model.encoder.layers) == 2  # the featurizer does not cut the shared model
    chunked = HubertFeaturizer(tiny_model, layer=2, max_chunk_s=1.0, device="cpu")
    f = chunked.features(w)  # 1 s + 1 s + 1000 samples (< 1280: dropped like the release)
    assert len(f) == 2 * 24 == chunked.num_frames(len(w))  # (16000 - 720) // 640 + 1 per chunk
    with pytest.raises(ValueError, match="layer"):
        HubertFeaturizer(tiny_model, layer=5, device="cpu")



@pytest.mark.parametrize("pre_ln", [False, True])
def test_several_layers_from_one_pass_equal_each_layer_alone(tiny_model, pre_ln):
    from transformers import HubertModel

    from spiritlm.tokenizer.hubert import HubertFeaturizer, tiny_hubert_config

    model = tiny_model
    if pre_ln:
        torch.manual_seed(1)
        cfg = tiny_hubert_config(hidden=32, layers=2, heads=2, ffn=64, conv_dim=16, hop=640)
        cfg.do_stable_layer_norm = True  # the large models' pre-LN encoder, ending in a LayerNorm
        model = HubertModel(cfg).eval()
        assert type(model.encoder).__name__ == "HubertEncoderStableLayerNorm"
    rng = np.random.default_rng(2)
    wavs = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (40000, 5000, 23456)]
    feat = HubertFeaturizer(model, layer=1, device="cpu", batch_samples=200_000, padded_batches=True)
    calls = []
    hook = model.feature_extractor.conv_layers[0].conv.register_forward_hook(lambda *a: calls.append(1))
    try:
        both = feat.features_many_at(wavs, [2, 0, 1])
    finally:
        hook.remove()
    assert sorted(both) == [0, 1, 2] and len(calls) == 1  # one batch, one pass through the front end
    for layer in (0, 1, 2):  # bit for bit what a featurizer at that layer alone returns
        alone = HubertFeaturizer(model, layer=layer, device="cpu", batch_samples=200_000,
                                 padded_batches=True).features_many(wavs)
        for a, b in zip(both[layer], alone):
            np.testing.assert_array_equal(a, b)
    assert len(model.encoder.layers) == 2
    with pytest.raises(ValueError, match="layers"):
        feat.features_many_at(wavs, [3])

def _fake_omegaconf_cfg(model_cfg: dict, monkeypatch):
    """Objects whose pickles reference omegaconf classes, as hydra-era fairseq checkpoints do."""
    mod = types.ModuleType("omegaconf.dictconfig")

    class DictConfig:  # state layout like omegaconf's: {"_content": {key: node}}
        def __init__(self, content):
            self.__dict__["_content"] = content

    class AnyNode:
        def __init__(self, v):
            self._val = v

    DictConfig.__module__ = AnyNode.__module__ = "omegaconf.dictconfig"
    DictConfig.__qualname__, AnyNode.__qualname__ = "DictConfig", "AnyNode"
    mod.DictConfig, mod.AnyNode = DictConfig, AnyNode
    monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))
    monkeypatch.setitem(sys.modules, "omegaconf.dictconfig", mod)
    return DictConfig({"model": DictConfig({k: AnyNode(v) for k, v in model_cfg.items()})}), mod


@pytest.mark.parametrize("cfg_kind", ["args", "omegaconf"])
def test_fairseq_conversion_roundtrip(tmp_path, tiny_model, cfg_kind, monkeypatch):
    from spiritlm.tokenizer.fairseq_convert import load_fairseq_hubert, to_fairseq_state_dict
    from spiritlm.tokenizer.hubert import HubertFeaturizer, load_hubert

    c = tiny_model.config
    conv = " + ".join(f"[({d}, {k}, {s})]" for d, k, s in zip(c.conv_dim, c.conv_kernel, c.conv_stride))
    mcfg = {"encoder_layers": 2, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64,
            "encoder_attention_heads": 2, "conv_feature_layers": conv, "conv_pos": 16, "conv_pos_groups": 4,
            "extractor_mode": "default", "layer_norm_first": False, "conv_bias": False}
    sd = to_fairseq_state_dict(tiny_model)
    sd["final_proj.weight"] = torch.zeros(4, 32)  # pre-training heads are dropped
    sd["label_embs_concat"] = torch.zeros(10, 4)
    if cfg_kind == "args":
        ckpt = {"args": argparse.Namespace(**mcfg), "model": sd}
    else:
        cfg, _ = _fake_omegaconf_cfg(mcfg, monkeypatch)
        ckpt = {"cfg": cfg, "model": sd, "optimizer_history": [{"x": 1}]}
    path = tmp_path / "mhubert_tiny.pt"
    torch.save(ckpt, path)
    monkeypatch.delitem(sys.modules, "omegaconf.dictconfig", raising=False)  # not importable on load
    monkeypatch.delitem(sys.modules, "omegaconf", raising=False)
    converted = load_fairseq_hubert(path)
    w = 0.1 * np.random.default_rng(2).standard_normal(12000).astype(np.float32)
    a = HubertFeaturizer(tiny_model, 2, device="cpu").features(w)
    b = HubertFeaturizer(converted, 2, device="cpu").features(w)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert load_hubert(path).config.num_hidden_layers == 2


def test_fairseq_loader_executes_no_code(tmp_path):
    from spiritlm.tokenizer.fairseq_convert import safe_load_checkpoint

    class Evil:
        def __reduce__(self):
            return (pickle.loads, (b"cos\nsystem\n(S'touch PWNED'\ntR.",))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "args": Evil()}, path)
    ckpt = safe_load_checkpoint(path)  # the payload turns into an inert placeholder
    assert "model" in ckpt and not (tmp_path / "PWNED").exists()


def test_parse_conv_layers():
    from spiritlm.tokenizer.fairseq_convert import parse_conv_layers

    layers = parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 3")
    assert len(layers) == 8 and layers[0] == (512, 10, 5) and layers[-1] == (512, 2, 2)
    with pytest.raises(ValueError):
        parse_conv_layers("__import__('os')")


# ---- quantizers ----------------------------------------------------------------------------
def test_kmeans_deterministic_and_roundtrip(tmp_path):
    from spiritlm.tokenizer.kmeans import KMeansQuantizer, load_centroids, train_kmeans

    x = np.random.default_rng(0).standard_normal((3000, 8)).astype(np.float32)
    c1, c2 = train_kmeans(x, 20, 10, seed=3), train_kmeans(x, 20, 10, seed=3)
    np.testing.assert_array_equal(c1, c2)
    assert not np.array_equal(c1, train_kmeans(x, 20, 10, seed=4))
    q = KMeansQuantizer(c1)
    units = q(x)
    brute = ((x[:, None] - c1[None]) ** 2).sum(-1).argmin(1)
    assert (units == brute).mean() > 0.999
    q.save(tmp_path / "c.npy")
    np.testing.assert_array_equal(KMeansQuantizer.load(tmp_path / "c.npy")(x), units)
    with pytest.raises(ValueError, match="k=50"):
        train_kmeans(x[:10], 50)
    with pytest.raises(ValueError, match="dim"):
        q(np.zeros((3, 5), np.float32))
    # scikit-learn / joblib pickles only on explicit opt-in
    import joblib
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=20, init=c1.astype(np.float64), n_init=1, max_iter=1).fit(c1.astype(np.float64))
    joblib.dump(km, tmp_path / "km.bin")
    with pytest.raises(ValueError, match="allow_pickle"):
        load_centroids(tmp_path / "km.bin")
    np.testing.assert_allclose(load_centroids(tmp_path / "km.bin", allow_pickle=True), c1, atol=1e-6)


def test_reservoir_is_bounded_uniform_and_deterministic():
    from spiritlm.tokenizer.kmeans import FrameReservoir

    def run(seed):
        r = FrameReservoir(500, seed)
        for i in range(40):
            r.add(np.full((100, 2), i, np.float32))
        return r

    r = run(0)
    assert r.sample().shape == (500, 2) and r.seen == 4000
    np.testing.assert_array_equal(r.sample(), run(0).sample())
    counts = np.bincount(r.sample()[:, 0].astype(int), minlength=40)
    assert counts.min() > 0 and counts.max() < 30  # ~12.5 per chunk, every chunk represented


def test_linear_quantizer_blank_rule(tmp_path):
    from spiritlm.tokenizer.kmeans import LinearQuantizer, fill_blanks

    assert fill_blanks(np.array([5, 5, 2, 7, 7]), blank=5).tolist() == [2, 2, 2, 7, 7]
    assert fill_blanks(np.array([1, 5, 5, 3, 5]), blank=5).tolist() == [1, 1, 1, 3, 3]
    q = LinearQuantizer(dim=6, hidden=6, vocab=4)
    with torch.no_grad():  # identity hidden layers (inputs >= 0 pass LeakyReLU unchanged)
        for i in (0, 2):
            q.net[i].weight.copy_(torch.eye(6))
            q.net[i].bias.zero_()
        q.net[4].weight.zero_()
        q.net[4].bias.zero_()
        q.net[4].weight[4, 0] = 10.0  # feature 0 large -> blank
        q.net[4].weight[2, 1] = 10.0  # feature 1 large -> unit 2
        q.net[4].weight[3, 2] = 10.0
    x = np.zeros((5, 6), np.float32)
    x[0, 2] = x[1, 1] = x[2, 0] = x[3, 0] = x[4, 2] = 5.0
    raw = q.net(torch.from_numpy(x)).argmax(-1).tolist()
    assert raw[2] == raw[3] == 4  # blanks
    assert q(x).tolist() == [3, 2, 2, 2, 3]
    torch.save({"model": q.state_dict()}, tmp_path / "lq.pt")  # release-style nesting
    q2 = LinearQuantizer.load(tmp_path / "lq.pt")
    assert q2.size == 4 and q2(x).tolist() == [3, 2, 2, 2, 3]
    with pytest.raises(ValueError, match="3 Linear"):
        LinearQuantizer.from_state_dict({"w.weight": torch.zeros(2, 2)})


@pytest.mark.parametrize("rule", ["wrap_left", "left_then_right"])
def test_linear_quantizer_blank_rule_survives_a_tokenizer_directory(tmp_path, tiny_model, rule):
    from spiritlm.tokenizer.config import TokenizerCfg
    from spiritlm.tokenizer.hubert import HubertFeaturizer
    from spiritlm.tokenizer.kmeans import LinearQuantizer
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    torch.manual_seed(0)
    q = LinearQuantizer(dim=32, hidden=24, hidden2=12, vocab=7, blank_rule=rule)  # non-square hidden layers
    with torch.no_grad():
        q.net[4].bias[-1] += 3.0  # mostly blanks: the rule decides
    cfg = TokenizerCfg(name="lin")
    cfg.hubert.layer = 2
    tok = SpeechTokenizer(cfg, HubertFeaturizer(tiny_model, 2, device="cpu"), q)
    w = 0.1 * np.random.default_rng(0).standard_normal(32000).astype(np.float32)
    before = tok.encode(w)["hubert"]
    again = SpeechTokenizer.load(tok.save(tmp_path / "tok"))
    assert again.quantizer.blank_rule == rule
    np.testing.assert_array_equal(again.encode(w)["hubert"], before)


# ---- metrics -------------------------------------------------------------------------------
def test_pnmi_known_cases():
    from spiritlm.tokenizer.metrics import bitrate, perplexity, pnmi

    phones = np.array(list("aabbccaabb"))
    assert pnmi(phones, np.array([0, 0, 1, 1, 2, 2, 0, 0, 1, 1])) == pytest.approx(1.0)
    assert pnmi(phones, np.array([7, 3, 9, 4, 1, 2, 8, 5, 0, 6])) == pytest.approx(1.0)  # units refine phones
    assert pnmi(phones, np.zeros(10, int)) == pytest.approx(0.0)
    # two phones, equiprobable; a unit that is right 3/4 of the time: I = 1 - H(3/4) bits
    ph = np.array([0] * 4 + [1] * 4)
    un = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    h = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))
    assert pnmi(ph, un) == pytest.approx(1 - h)
    assert perplexity(np.array([0, 1, 2, 3])) == pytest.approx(4.0)
    b = bitrate([np.array([1, 1, 2, 2, 2, 3])], seconds=1.0, k=4)
    assert b["units_per_s"] == 3 and b["bitrate_nominal"] == pytest.approx(6.0)


@pytest.mark.parametrize("n_samples", [146000, 146320, 146639])
def test_unit_counts_match_the_release_test_file(n_samples):
    """The release's test file (LibriSpeech 7143-88743-0029, length not published) gives
    228 HuBERT / 114 pitch / 10 style units. With the mHuBERT-25Hz conv stack, 16x pitch
    downsampling that floors, and one style token per started second, every length in
    [146000, 146640) samples reproduces all three counts."""
    from spiritlm.tokenizer.f0_vqvae import F0VQVAE
    from spiritlm.tokenizer.hubert import conv_out_length
    from spiritlm.tokenizer.pitch import n_frames
    from spiritlm.tokenizer.style import n_windows

    hubert = conv_out_length(n_samples, (10, 3, 3, 3, 3, 2, 2, 2), (5, 2, 2, 2, 2, 2, 2, 2))
    torch.manual_seed(0)
    pitch = len(F0VQVAE().encode(np.zeros((2, n_frames(n_samples)), np.float32)))
    assert (int(hubert), pitch, n_windows(n_samples)) == (228, 114, 10)


def test_pitch_codes_of_audio_shorter_than_one_code():
    from spiritlm.tokenizer.f0_vqvae import F0VQVAE

    torch.manual_seed(0)
    assert len(F0VQVAE().encode(np.zeros((2, 5), np.float32))) == 1


def test_word_unit_consistency_separates_a_lexicon_from_noise():
    from spiritlm.tokenizer.metrics import word_unit_consistency

    rng = np.random.default_rng(0)
    lexicon = {w: rng.integers(0, 50, 6) for w in ("cat", "dog", "tree", "house", "river")}
    utts_clean, utts_noisy, words = [], [], []
    for i in range(12):
        seq = [list(lexicon)[(i + j) % 5] for j in range(3)]
        clean = np.concatenate([np.repeat(lexicon[w], 2) for w in seq])  # 2 frames per unit
        utts_clean.append(clean)
        utts_noisy.append(rng.integers(0, 50, len(clean)))
        words.append([(w, 0.48 * j, 0.48 * (j + 1)) for j, w in enumerate(seq)])  # 12 frames of 25 Hz
    clean = word_unit_consistency(utts_clean, words, ["s"] * 12, 25.0)
    noisy = word_unit_consistency(utts_noisy, words, ["s"] * 12, 25.0)
    assert clean["words"] == 5 and clean["same_word_same_speaker"] == 0.0
    assert clean["other_word_same_speaker"] > 0.5
    assert noisy["same_word_same_speaker"] > 0.7
