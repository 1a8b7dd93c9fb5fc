"""Speech tokenizer pipeline: SpeechTokenizer API, directory round trip, pitch, style, CLI, fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

SR = 16000


@pytest.fixture(scope="module")
def tiny_tok():
    """A SpeechTokenizer with a tiny random HuBERT (25 Hz), 20 units, pitch and style streams."""
    from transformers import HubertModel

    from spiritlm.tokenizer.config import TokenizerCfg
    from spiritlm.tokenizer.f0_vqvae import F0VQVAE
    from spiritlm.tokenizer.hubert import HubertFeaturizer, tiny_hubert_config
    from spiritlm.tokenizer.kmeans import KMeansQuantizer
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    torch.manual_seed(0)
    model = HubertModel(tiny_hubert_config(hidden=32, layers=2, heads=2, ffn=64, conv_dim=16, hop=640)).eval()
    rng = np.random.default_rng(0)
    cfg = TokenizerCfg(name="test")
    cfg.hubert.layer, cfg.hubert.device = 2, "cpu"
    cfg.pitch.enabled, cfg.pitch.method = True, "praat"
    cfg.style.enabled, cfg.style.layer = True, 1
    feat = HubertFeaturizer(model, 2, device="cpu")
    quant = KMeansQuantizer(rng.standard_normal((20, 32)).astype(np.float32))
    style_q = KMeansQuantizer(rng.standard_normal((5, 32)).astype(np.float32))
    style_feat = HubertFeaturizer(model, 1, device="cpu")
    torch.manual_seed(0)
    return SpeechTokenizer(cfg, feat, quant, F0VQVAE(codebook=64).eval(), style_q, style_feat, {"spk0": 5.0})


def _voiced(seconds: float, f0: float = 140.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f = f0 * (1 + 0.1 * np.sin(2 * np.pi * t))
    ph = 2 * np.pi * np.cumsum(f) / SR
    return (0.3 * np.sin(ph) + 0.15 * np.sin(2 * ph) + 0.1 * np.sin(3 * ph)).astype(np.float32)


def test_encode_streams_strings_ids(tiny_tok):
    from spiritlm.vocab import SPIRITLM, ids_to_units

    units = tiny_tok.encode(_voiced(2.3))
    assert units["hubert"].dtype == np.int64 and len(units["hubert"]) == tiny_tok.featurizer.num_frames(int(2.3 * SR))
    assert len(units["pitch"]) == int(2.3 * SR) // 80 // 16  # 12.5 tokens/s, floor like the release
    assert len(units["style"]) == 3  # 1 token per started second
    assert units["duration"] == pytest.approx(2.3)
    assert units["frames"] == {"hubert": len(units["hubert"]), "pitch": len(units["pitch"]), "style": 3}
    s = tiny_tok.to_string(units)
    assert s.startswith("[St") and "[Pi" in s and "[Hu" in s
    ids = tiny_tok.to_ids(units)
    assert tiny_tok.layout is SPIRITLM
    assert [SPIRITLM.id_to_token(i) for i in ids] == s.replace("]", "]\n").split()
    back = ids_to_units(ids)  # one (deduplicated) HuBERT unit per [Hu] token
    hu = units["hubert"]
    np.testing.assert_array_equal(back["hubert"], hu[np.r_[True, hu[1:] != hu[:-1]]])


def test_base_units_from_an_expressive_tokenizer_skip_pitch_and_style(tiny_tok, tmp_path, monkeypatch):
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    full = tiny_tok.encode(_voiced(2.0))
    import spiritlm.tokenizer.pitch as pitch

    monkeypatch.setattr(pitch, "extract_f0", lambda *a, **k: pytest.fail("F0 extracted for Base units"))
    base = tiny_tok.encode(_voiced(2.0), streams=["hubert"])
    assert set(base) == {"hubert", "duration", "frames"}
    np.testing.assert_array_equal(base["hubert"], full["hubert"])
    with pytest.raises(ValueError, match="has \\['hubert', 'pitch', 'style'\\]"):
        tiny_tok.encode(_voiced(1.0), streams=["hubert", "emotion"])
    monkeypatch.undo()
    d = tiny_tok.save(tmp_path / "tok")
    loaded = SpeechTokenizer.load(d, streams=["hubert", "style"])
    assert set(loaded.encode(_voiced(2.0))) == {"hubert", "style", "duration", "frames"}


def test_encode_many_reports_bad_files_and_keeps_the_rest(tiny_tok, tmp_path):
    from spiritlm.audio import AudioError

    good = tmp_path / "good.wav"
    sf.write(good, _voiced(1.5), SR)
    stereo = tmp_path / "stereo_44k.flac"
    sf.write(stereo, np.stack([_voiced(1.0)] * 2, 1)[::1], 44100)
    short = tmp_path / "short.wav"
    sf.write(short, _voiced(0.01), SR)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"nope")
    res = tiny_tok.encode_many([good, bad, stereo, short, tmp_path / "missing.wav"])
    assert isinstance(res[0], dict) and isinstance(res[2], dict)
    for i, why in [(1, "unreadable"), (3, "too short"), (4, "not found")]:
        assert isinstance(res[i], AudioError) and why in str(res[i])
    single = tiny_tok.encode(good)
    np.testing.assert_array_equal(single["hubert"], res[0]["hubert"])  # batch == one at a time
    with pytest.raises(AudioError, match="not found"):
        tiny_tok.encode(tmp_path / "missing.wav")


def test_save_load_roundtrip_with_hashes(tiny_tok, tmp_path):
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer, TokenizerDirError

    d = tiny_tok.save(tmp_path / "tok")
    man = json.loads((d / "manifest.json").read_text())
    assert {"tokenizer.yaml", "hubert_units.npy", "pitch_vqvae.safetensors", "style_units.npy"} <= set(man["files"])
    assert any(f.startswith("hubert/") for f in man["files"]) and man["streams"]["hubert"]["size"] == 20
    tok2 = SpeechTokenizer.load(d)
    wav = _voiced(2.0)
    a, b = tiny_tok.encode(wav), tok2.encode(wav)
    for k in ("hubert", "pitch", "style"):
        np.testing.assert_array_equal(a[k], b[k])
    assert tiny_tok.to_string(a) == tok2.to_string(b)
    arr = np.load(d / "hubert_units.npy")
    np.save(d / "hubert_units.npy", arr + 1)  # tamper -> hash mismatch
    with pytest.raises(TokenizerDirError, match="sha256"):
        SpeechTokenizer.load(d)
    (d / "hubert_units.npy").unlink()
    with pytest.raises(TokenizerDirError, match="missing"):
        SpeechTokenizer.load(d)
    with pytest.raises(TokenizerDirError, match="manifest.json"):
        SpeechTokenizer.load(tmp_path)


def test_presets_and_config_errors(tmp_path):
    from spiritlm.config import load_config
    from spiritlm.tokenizer.config import TokenizerCfg, preset_config

    base, expr = preset_config("base"), preset_config("expressive", style="/x/style_dir")
    assert base.hubert.layer == 11 and base.units.k == 500 and not base.pitch.enabled
    assert expr.pitch.enabled and expr.pitch.codebook == 64 and expr.style.kind == "classifier"
    with pytest.raises(ValueError, match="preset"):
        preset_config("large")
    for recipe in ("base", "expressive", "demo"):
        cfg = load_config(TokenizerCfg, f"tokenizers/{recipe}.toml")
        assert cfg.name == recipe
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    with pytest.raises(ValueError, match="hubert.path is empty"):
        SpeechTokenizer.from_config(preset_config("base"))


# ---- pitch ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["praat", "yaapt"])
def test_f0_extractors_track_a_known_contour(method):
    from spiritlm.tokenizer.pitch import extract_f0

    wav = _voiced(1.0, 150.0)
    wav[8000:11200] = 0.0005 * np.random.default_rng(0).standard_normal(3200)  # 200 ms unvoiced
    f0 = extract_f0(wav, method)
    assert len(f0) == 200
    t = (np.arange(200) + 0.5) * 80 / SR
    true = 150 * (1 + 0.1 * np.sin(2 * np.pi * t))
    voiced = f0 > 0
    core = np.r_[20:90, 140:180]
    assert voiced[core].mean() > 0.9 and not voiced[110:130].any()
    cents = 1200 * np.abs(np.log2(f0[core][voiced[core]] / true[core][voiced[core]]))
    assert np.median(cents) < 30


def test_interpolation_and_normalisation():
    from spiritlm.tokenizer.pitch import f0_features, interpolate_log_f0

    f0 = np.array([0, 100, 0, 0, 400, 0], np.float32)
    lf, vuv = interpolate_log_f0(f0)
    np.testing.assert_allclose(np.exp(lf), [100, 100, 158.74, 251.98, 400, 400], rtol=1e-3)
    assert vuv.tolist() == [False, True, False, False, True, False]
    x, mean = f0_features(f0)
    assert mean == pytest.approx(np.log(200.0)) and x.shape == (2, 6)
    x2, _ = f0_features(f0, mean=np.log(100.0))
    assert x2[0, 1] == pytest.approx(0.0, abs=1e-6)
    assert np.all(f0_features(np.zeros(5))[0] == 0)


@pytest.fixture
def one_thread():
    """Small models train faster on one thread (and do not fight parallel test workers)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_vqvae_training_reduces_cents_error(one_thread):
    from spiritlm.tokenizer.f0_vqvae import F0VQVAE, cents_error, train_vqvae
    from spiritlm.tokenizer.pitch import f0_features

    rng = np.random.default_rng(0)
    tracks = []
    for _ in range(24):
        T = 400
        t = np.arange(T) / 200
        f0 = 120 * np.exp(0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 6)))
        f0[rng.integers(0, T - 40): ][:30] = 0
        tracks.append(f0.astype(np.float32))
    feats = [f0_features(f)[0] for f in tracks]
    means = [f0_features(f)[1] for f in tracks]

    def err(model):
        return np.mean([cents_error(f, model.decode(model.encode(x), m, voicing=False)) for f, x, m in zip(tracks, feats, means)])

    torch.manual_seed(0)
    before = err(F0VQVAE(codebook=64))
    model = train_vqvae(feats, codebook=64, steps=120, batch_size=8, segment=128, lr=3e-3, seed=0)
    after = err(model)
    assert after < 0.25 * before and after < 60, (before, after)
    codes = model.encode(feats[0])
    assert len(codes) == 25 and codes.max() < 64  # 400 frames / 16


# ---- style ---------------------------------------------------------------------------------
def test_style_pooling_windows():
    from spiritlm.tokenizer.style import n_windows, pool_windows

    assert n_windows(int(9.12 * SR)) == 10  # the release's 9.12 s -> 10 style tokens
    feats = np.arange(60, dtype=np.float32)[:, None].repeat(2, 1)  # 2.4 s at 25 Hz
    pooled = pool_windows(feats, int(2.4 * SR), 25.0)
    assert pooled.shape == (3, 2)
    np.testing.assert_allclose(pooled[:, 0], [12.0, 37.0, 54.5])


def test_style_classifier_kind(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    from spiritlm.tokenizer.style import StyleClassifier

    cfg = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         conv_dim=(8, 8), conv_kernel=(10, 8), conv_stride=(5, 8), num_conv_pos_embeddings=8,
                         num_conv_pos_embedding_groups=2, num_labels=100, classifier_proj_size=8)
    torch.manual_seed(0)
    Wav2Vec2ForSequenceClassification(cfg).save_pretrained(tmp_path / "style")
    clf = StyleClassifier(str(tmp_path / "style"))
    out = clf(_voiced(2.5))
    assert out.shape == (3,) and out.dtype == np.int64 and out.max() < 100


# ---- fit + CLI -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def syn_corpus(tmp_path_factory):
    from spiritlm.tokenizer.synth import make_synthetic_corpus

    return make_synthetic_corpus(tmp_path_factory.mktemp("syn"), n_utts=8, seed=0, mean_phones=8, heldout=2)


def test_fit_and_cli_encode(syn_corpus, tmp_path, capsys, one_thread):
    from transformers import HubertModel

    from spiritlm.cli import main
    from spiritlm.config import load_config
    from spiritlm.tokenizer.config import TokenizerCfg
    from spiritlm.tokenizer.fit import fit_tokenizer
    from spiritlm.tokenizer.hubert import tiny_hubert_config

    torch.manual_seed(0)
    model = HubertModel(tiny_hubert_config(hidden=32, layers=2, heads=2, ffn=64, conv_dim=16, hop=640)).eval()
    cfg = load_config(TokenizerCfg, "tokenizers/base.toml",
                      ["hubert.layer=2", "hubert.device=cpu", "units.k=16", "units.niter=5", "units.max_frames=300",
                       "pitch.enabled=true", "pitch.method=praat", "pitch.norm=speaker", "pitch.train_steps=5",
                       "pitch.batch_size=4", "style.enabled=true", "style.k=3", "style.layer=1"])
    out = fit_tokenizer(cfg, syn_corpus, tmp_path / "tok", model=model, progress=False)
    assert (out / "manifest.json").is_file() and (out / "fit_config.yaml").is_file()
    assert set(json.loads((out / "speaker_f0.json").read_text())) == {"spk0", "spk1", "spk2"}
    wavs = sorted((syn_corpus.parent / "audio").glob("*.wav"))[:2]
    capsys.readouterr()
    # the good files are still encoded; the exit status says that one failed (issue 19)
    assert main(["tokenizer", "encode", "--tokenizer", str(out), *map(str, wavs), str(tmp_path / "nope.wav")]) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 and "\t[St" in lines[0]
    assert "nope.wav" in captured.err and "not found" in captured.err
    jl = tmp_path / "u.jsonl"
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--jsonl", str(jl), str(wavs[0])]) == 0
    rec = json.loads(jl.read_text())
    assert rec["string"] == lines[0].split("\t")[1] and len(rec["ids"]) == rec["string"].count("[")


def test_fit_errors_are_actionable(syn_corpus, tmp_path):
    from spiritlm.tokenizer.config import TokenizerCfg
    from spiritlm.tokenizer.corpus_audio import corpus_files

    with pytest.raises(FileNotFoundError, match="manifest"):
        corpus_files(tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match="fit.split"):
        corpus_files(syn_corpus, split="dev")
    assert TokenizerCfg().units.k == 500


@pytest.mark.slow
def test_demo_tokenizer_beats_random_init(tmp_path):
    """The demo recipe on a synthetic corpus: trained tiny HuBERT units beat random-init ones."""
    from spiritlm.config import load_config
    from spiritlm.tokenizer.config import TokenizerCfg
    from spiritlm.tokenizer.tiny_hubert import fit_demo_tokenizer
    from spiritlm.tokenizer.synth import make_synthetic_corpus

    manifest = make_synthetic_corpus(tmp_path / "c", n_utts=60, seed=1, heldout=10)
    cfg = load_config(TokenizerCfg, "tokenizers/demo.toml", ["units.k=50", "demo.mfcc_k=50", "demo.steps=300"])
    out = fit_demo_tokenizer(cfg, manifest, tmp_path / "tok", progress=False)
    m = json.loads((out / "metrics.json").read_text())["units"]
    assert m["trained_hubert_kmeans"]["pnmi"] > m["random_hubert_kmeans"]["pnmi"]


@pytest.mark.slow
def test_bench_smoke():
    from spiritlm.tokenizer.bench import bench_tokenizer

    res = bench_tokenizer(seconds=10, n_files=4, size="tiny", verbose=False)
    assert res["unit_agreement"] >= 0.999


@pytest.mark.slow
def test_long_file_memory_bench_runs_each_length_in_its_own_process():
    from spiritlm.tokenizer.bench import bench_long_file_memory

    # both lengths hold full 100 s chunks, so the encoder's working memory is the same
    short, long = bench_long_file_memory((2.0, 8.0), size="tiny", verbose=False)
    assert long["frames"] > 3.9 * short["frames"]
    # 4x the audio: only the waveform and the kept features grow (tens of MiB here). The bound
    # is loose because allocator reuse varies from run to run (measured 1.4x-2.0x); encoding the
    # file in one forward pass would need ~5x the activations plus quadratic attention.
    assert long["encode_peak_extra_mib"] < 2.0 * short["encode_peak_extra_mib"] + 64


def test_layout_follows_the_hubert_frame_rate():
    from transformers import HubertModel

    from spiritlm.tokenizer.config import TokenizerCfg
    from spiritlm.tokenizer.hubert import HubertFeaturizer, tiny_hubert_config
    from spiritlm.tokenizer.kmeans import KMeansQuantizer
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer
    from spiritlm.vocab import SPIRITLM

    torch.manual_seed(0)
    model = HubertModel(tiny_hubert_config(hidden=32, layers=1, heads=2, ffn=64, conv_dim=16, hop=320)).eval()
    feat = HubertFeaturizer(model, 1, device="cpu")
    tok = SpeechTokenizer(TokenizerCfg(), feat, KMeansQuantizer(np.eye(32, dtype=np.float32)[:10]))
    assert feat.frame_rate == 50.0 and tok.layout.hubert_rate == pytest.approx(49.98)
    assert tok.layout.streams["hubert"].offset == SPIRITLM.streams["hubert"].offset  # same ids
    big = SpeechTokenizer(TokenizerCfg(), feat, KMeansQuantizer(np.tile(np.eye(32, dtype=np.float32), (20, 1))))
    assert big.layout.hubert_size == 640
