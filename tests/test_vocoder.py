"""Unit HiFi-GAN vocoder: release-format files load and match an independent computation of the
published layers; expansion rules; conditioning; training; the decode CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from spiritlm.vocab import SPIRITLM, units_to_string  # noqa: E402

# A tiny generator in the release's config.json vocabulary (field names as published).
BASE_CFG = {
    "resblock": "1", "upsample_rates": [2, 3], "upsample_kernel_sizes": [4, 5], "upsample_initial_channel": 8,
    "resblock_kernel_sizes": [3, 5], "resblock_dilation_sizes": [[1, 3, 5], [1, 2, 3]],
    "num_embeddings": 501, "embedding_dim": 4, "model_in_dim": 12, "code_hop_size": 6, "sampling_rate": 16000,
    "multispkr": "from_input_file", "num_speakers": 3, "multistyle": "from_input_file", "num_styles": 2,
    "dur_predictor_params": {"encoder_embed_dim": 4, "var_pred_hidden_dim": 6, "var_pred_kernel_size": 3,
                             "var_pred_dropout": 0.5},
    "segment_size": 8960, "num_mels": 80, "n_fft": 1024,  # training-only fields are ignored
}
EXPR_CFG = {**BASE_CFG, "multistyle": None, "model_in_dim": 16, "num_f0_tokens": 64, "f0_hop_size": 12,
            "num_style_tokens": 100, "style_hop_size": 30}
EXPR_CFG.pop("num_styles")


def _conv_keys(cfg: dict) -> dict[str, tuple[tuple[int, ...], bool]]:
    """name -> (weight shape, transposed) of every weight-normalised conv, from the published layout."""
    ch = cfg["upsample_initial_channel"]
    out = {"conv_pre": ((ch, cfg["model_in_dim"], 7), False)}
    nk = len(cfg["resblock_kernel_sizes"])
    for i, (u, k) in enumerate(zip(cfg["upsample_rates"], cfg["upsample_kernel_sizes"])):
        cin, cout = ch // 2**i, ch // 2 ** (i + 1)
        out[f"ups.{i}"] = ((cin, cout, k), True)  # ConvTranspose1d: (in, out, k)
        for j, (rk, dil) in enumerate(zip(cfg["resblock_kernel_sizes"], cfg["resblock_dilation_sizes"])):
            for m in range(len(dil)):
                for c in (1, 2):
                    out[f"resblocks.{i * nk + j}.convs{c}.{m}"] = ((cout, cout, rk), False)
    out["conv_post"] = ((1, ch // 2 ** len(cfg["upsample_rates"]), 7), False)
    return out


def make_release_state(cfg: dict, seed: int = 0, new_style: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.3):
        return torch.randn(*shape, generator=g) * s

    sd: dict[str, torch.Tensor] = {}
    e = cfg["embedding_dim"]
    sd["dict.weight"] = r(cfg["num_embeddings"], e, s=1.0)
    if cfg.get("num_f0_tokens"):
        sd["f0_dict.weight"] = r(cfg["num_f0_tokens"], e, s=1.0)
    if cfg.get("num_style_tokens"):
        sd["style_dict.weight"] = r(cfg["num_style_tokens"], e, s=1.0)
    if cfg.get("multispkr"):
        sd["spkr.weight"] = r(cfg["num_speakers"], e, s=1.0)
    if cfg.get("multistyle"):
        sd["style.weight"] = r(cfg["num_styles"], e, s=1.0)
    for name, (shape, _) in _conv_keys(cfg).items():
        v = r(*shape)
        gk, vk = ((".parametrizations.weight.original0", ".parametrizations.weight.original1") if new_style
                  else (".weight_g", ".weight_v"))
        sd[name + gk] = r(shape[0], 1, 1, s=1.0).abs() + 0.2  # weight_norm(dim=0): one magnitude per row
        sd[name + vk] = v
        bias_n = shape[1] if name.startswith("ups.") else shape[0]
        sd[name + ".bias"] = r(bias_n, s=0.1)
    dp = cfg.get("dur_predictor_params")
    if dp:
        h, k = dp["var_pred_hidden_dim"], dp["var_pred_kernel_size"]
        sd["dur_predictor.conv1.0.weight"] = r(h, dp["encoder_embed_dim"], k)
        sd["dur_predictor.conv1.0.bias"] = r(h, s=0.1) + 0.3
        sd["dur_predictor.ln1.weight"] = 1 + r(h, s=0.1)
        sd["dur_predictor.ln1.bias"] = r(h, s=0.1)
        sd["dur_predictor.conv2.0.weight"] = r(h, h, k)
        sd["dur_predictor.conv2.0.bias"] = r(h, s=0.1) + 0.3
        sd["dur_predictor.ln2.weight"] = 1 + r(h, s=0.1)
        sd["dur_predictor.ln2.bias"] = r(h, s=0.1)
        sd["dur_predictor.proj.weight"] = r(1, h)
        sd["dur_predictor.proj.bias"] = torch.tensor([1.2])  # ~2-3 frames per unit
    return sd


def write_release(root: Path, variant: str, cfg: dict, sd: dict, speakers=("a", "b", "c"), styles=("s0", "s1")):
    d = root / {"base": "hifigan_spiritlm_base", "expressive": "hifigan_spiritlm_expressive_w2v2"}[variant]
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    torch.save({"generator": sd}, d / "generator.pt")
    (d / "speakers.txt").write_text("\n".join(speakers) + "\n")
    if variant == "base":
        (d / "styles.txt").write_text("\n".join(styles) + "\n")
    return d


# ---- an independent computation of the published layers -------------------------------------
def _plain(sd: dict, name: str) -> torch.Tensor:
    if name + ".weight_g" in sd:
        g, v = sd[name + ".weight_g"], sd[name + ".weight_v"]
    else:
        g, v = sd[name + ".parametrizations.weight.original0"], sd[name + ".parametrizations.weight.original1"]
    return g * v / v.flatten(1).norm(dim=1).view(-1, 1, 1)


def ref_generator(sd: dict, cfg: dict, x_CT: torch.Tensor) -> torch.Tensor:
    x = F.conv1d(x_CT[None], _plain(sd, "conv_pre"), sd["conv_pre.bias"], padding=3)
    nk = len(cfg["resblock_kernel_sizes"])
    for i, (u, k) in enumerate(zip(cfg["upsample_rates"], cfg["upsample_kernel_sizes"])):
        x = F.leaky_relu(x, 0.1)
        x = F.conv_transpose1d(x, _plain(sd, f"ups.{i}"), sd[f"ups.{i}.bias"], stride=u, padding=(k - u) // 2)
        acc = torch.zeros_like(x)
        for j, (rk, dil) in enumerate(zip(cfg["resblock_kernel_sizes"], cfg["resblock_dilation_sizes"])):
            p, y = f"resblocks.{i * nk + j}", x
            for m, d in enumerate(dil):
                t = F.conv1d(F.leaky_relu(y, 0.1), _plain(sd, f"{p}.convs1.{m}"), sd[f"{p}.convs1.{m}.bias"],
                             dilation=d, padding=d * (rk - 1) // 2)
                t = F.conv1d(F.leaky_relu(t, 0.1), _plain(sd, f"{p}.convs2.{m}"), sd[f"{p}.convs2.{m}.bias"],
                             padding=(rk - 1) // 2)
                y = y + t
            acc = acc + y
        x = acc / nk
    x = F.conv1d(F.leaky_relu(x, 0.01), _plain(sd, "conv_post"), sd["conv_post.bias"], padding=3)
    return torch.tanh(x)[0, 0]


def ref_durations(sd: dict, cfg: dict, code: np.ndarray) -> np.ndarray:
    dp = cfg["dur_predictor_params"]
    x = sd["dict.weight"][torch.from_numpy(code)].T[None]  # (1, C, T)
    h = F.relu(F.conv1d(x, sd["dur_predictor.conv1.0.weight"], sd["dur_predictor.conv1.0.bias"],
                        padding=(dp["var_pred_kernel_size"] - 1) // 2))
    h = F.layer_norm(h.transpose(1, 2), (dp["var_pred_hidden_dim"],), sd["dur_predictor.ln1.weight"],
                     sd["dur_predictor.ln1.bias"])
    h = F.relu(F.conv1d(h.transpose(1, 2), sd["dur_predictor.conv2.0.weight"], sd["dur_predictor.conv2.0.bias"],
                        padding=1))
    h = F.layer_norm(h.transpose(1, 2), (dp["var_pred_hidden_dim"],), sd["dur_predictor.ln2.weight"],
                     sd["dur_predictor.ln2.bias"])
    log_d = (h @ sd["dur_predictor.proj.weight"].T + sd["dur_predictor.proj.bias"])[0, :, 0]
    return torch.clamp(torch.round(torch.exp(log_d) - 1), min=1).long().numpy()


def ref_input(sd, code, speaker, style=None, f0=None, stc=None) -> torch.Tensor:
    T = len(code)
    parts = [sd["dict.weight"][torch.from_numpy(code)]]
    if f0 is not None:
        parts.append(sd["f0_dict.weight"][torch.from_numpy(f0)])
    if stc is not None:
        parts.append(sd["style_dict.weight"][torch.from_numpy(stc)])
    parts.append(sd["spkr.weight"][speaker].expand(T, -1))
    if style is not None:
        parts.append(sd["style.weight"][style].expand(T, -1))
    return torch.cat(parts, -1).T


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel") / "speech_tokenizer"
    sd_b = make_release_state(BASE_CFG, 0)
    sd_e = make_release_state(EXPR_CFG, 1, new_style=True)
    write_release(root, "base", BASE_CFG, sd_b)
    write_release(root, "expressive", EXPR_CFG, sd_e)
    return root, sd_b, sd_e


def test_release_base_frame_level_matches_reference(release):
    from spiritlm.vocoder import Vocoder

    root, sd, _ = release
    voc = Vocoder.from_release(root, "base")
    assert voc.speakers == ["a", "b", "c"] and voc.styles == ["s0", "s1"] and voc.hop == 6
    assert voc.default_speaker == 2 and voc.default_style == 0  # the release's style 8 needs 9+ styles
    code = np.array([5, 5, 7, 7, 7, 300, 2, 2], np.int64)  # repeats: frame-level (as encode() gives)
    wav, sr = voc.decode({"hubert": code}, speaker=1, style="s1")
    assert sr == 16000 and wav.shape == (len(code) * 6,)
    ref = ref_generator(sd, BASE_CFG, ref_input(sd, code, 1, 1)).numpy()
    np.testing.assert_allclose(wav, ref, atol=1e-5)


def test_release_base_speech_string_uses_predicted_durations(release):
    from spiritlm.vocoder import Vocoder

    root, sd, _ = release
    voc = Vocoder.from_release(root, "base", style=0)
    code = np.array([17, 4, 250, 9, 33], np.int64)
    s = units_to_string({"hubert": code}, layout=SPIRITLM)
    dur = ref_durations(sd, BASE_CFG, code)
    assert dur.min() >= 1 and len(set(dur.tolist())) >= 1
    wav, _ = voc.decode(s)  # default speaker 2 (the release's), style 0 as asked
    full = np.repeat(code, dur)
    ref = ref_generator(sd, BASE_CFG, ref_input(sd, full, 2, 0)).numpy()
    assert wav.shape == (int(dur.sum()) * 6,)
    np.testing.assert_allclose(wav, ref, atol=1e-5)
    ids = SPIRITLM.streams["hubert"].offset + code  # token ids give the same audio
    np.testing.assert_array_equal(voc.decode(ids)[0], wav)


def test_release_expressive_upsamples_pitch_and_style(release):
    from spiritlm.vocoder import Vocoder

    root, _, sd = release
    voc = Vocoder.from_release(root, "expressive")
    hu = np.array([1, 1, 2, 3, 3, 3, 4], np.int64)
    pitch = np.array([10, 20, 30], np.int64)  # f0_hop 12 / code_hop 6 = 2 HuBERT frames per code
    style = np.array([99], np.int64)  # 30 / 6 = 5 frames per code, padded with the last one
    wav, _ = voc.decode({"hubert": hu, "pitch": pitch, "style": style}, speaker="b")
    f0 = np.array([10, 10, 20, 20, 30, 30, 30])
    st = np.array([99] * 7)
    ref = ref_generator(sd, EXPR_CFG, ref_input(sd, hu, 1, None, f0, st)).numpy()
    np.testing.assert_allclose(wav, ref, atol=1e-5)
    # a speech string: pitch/style expanded one per HuBERT unit, then repeated by the durations
    s = "[St5][Pi3][Hu8][Hu9][Pi4][Hu10]"
    fr = voc.frames(s)
    dur = ref_durations(sd, EXPR_CFG, np.array([8, 9, 10]))
    np.testing.assert_array_equal(fr["pitch"], np.repeat([3, 3, 4], dur))
    np.testing.assert_array_equal(fr["style"], np.repeat([5, 5, 5], dur))
    with pytest.raises(ValueError, match="needs pitch"):
        voc.decode({"hubert": hu})


def test_conditioning_changes_output_and_length_is_units_times_hop(release):
    from spiritlm.vocoder import Vocoder

    root, _, _ = release
    voc = Vocoder.from_release(root, "base")
    units = {"hubert": np.array([3, 3, 4, 4, 5, 5, 6, 6, 6, 6])}
    a = voc.decode(units, speaker=0, style=0)[0]
    b = voc.decode(units, speaker=1, style=0)[0]
    c = voc.decode(units, speaker=0, style=1)[0]
    assert len(a) == len(b) == len(c) == 10 * voc.hop
    assert np.abs(a - b).max() > 1e-3 and np.abs(a - c).max() > 1e-3
    with pytest.raises(ValueError, match="speaker"):
        voc.decode(units, speaker="nobody")


def test_release_file_errors(tmp_path, release):
    from spiritlm.vocoder import Vocoder
    from spiritlm.vocoder.release import VocoderFileError

    root, sd, _ = release
    with pytest.raises(VocoderFileError, match="generator.pt not found"):
        Vocoder.from_release(tmp_path, "base")
    bad = tmp_path / "bad" / "hifigan_spiritlm_base"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text(json.dumps(BASE_CFG))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"generator": Evil()}, bad / "generator.pt")
    with pytest.raises(VocoderFileError, match="weights_only"):
        Vocoder.from_release(bad.parent, "base")
    short = {k: v for k, v in sd.items() if not k.startswith("conv_post")}
    torch.save({"generator": short}, bad / "generator.pt")
    with pytest.raises(VocoderFileError, match="missing"):
        Vocoder.from_release(bad.parent, "base")
    (bad / "config.json").write_text(json.dumps({**BASE_CFG, "f0": True}))
    with pytest.raises(VocoderFileError, match="continuous F0"):
        Vocoder.from_release(bad.parent, "base")


def test_save_load_roundtrip_and_decode_cli(release, tmp_path, capsys):
    from spiritlm.cli import main
    from spiritlm.vocoder import Vocoder

    root, _, _ = release
    voc = Vocoder.from_release(root, "base")
    d = voc.save(tmp_path / "voc")
    voc2 = Vocoder.load(d)
    units = {"hubert": np.array([1, 1, 2, 2, 3])}
    np.testing.assert_array_equal(voc.decode(units)[0], voc2.decode(units)[0])
    out = tmp_path / "a.wav"
    assert main(["vocoder", "decode", "--vocoder", str(d), "[Hu1][Hu2][Hu3]", "--out", str(out)]) == 0
    wav, sr = sf.read(str(out), dtype="float32")
    assert sr == 16000 and len(wav) % voc.hop == 0 and len(wav) > 0
    np.testing.assert_allclose(wav, voc.decode("[Hu1][Hu2][Hu3]")[0], atol=1.0 / 32767 + 1e-6)
    out2 = tmp_path / "b.wav"
    assert main(["vocoder", "decode", "--release", str(root), "--variant", "base", '{"hubert": "1 1 2 2 3"}',
                 "--out", str(out2), "--frame-level"]) == 0
    assert len(sf.read(str(out2))[0]) == 5 * voc.hop
    assert main(["vocoder", "decode", "--vocoder", str(d), "[Hu1][Text]", "--out", str(out)]) == 1
    assert "text marker" in capsys.readouterr().err
    (d / "generator.safetensors").write_bytes(b"x" + (d / "generator.safetensors").read_bytes()[1:])
    with pytest.raises(ValueError, match="sha256"):
        Vocoder.load(d)


# ---- training ------------------------------------------------------------------------------
def _voiced(seconds: float, f0: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    f = f0 * (1 + 0.15 * np.sin(2 * np.pi * 1.5 * t))
    ph = 2 * np.pi * np.cumsum(f) / sr
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return (env * (0.3 * np.sin(ph) + 0.1 * np.sin(2 * ph) + 0.05 * np.sin(5 * ph))).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    """Six voiced utterances (two speakers) + a saved tokenizer dir with a tiny random 50 Hz HuBERT."""
    from transformers import HubertModel

    from spiritlm.manifest import Utterance, write_manifest
    from spiritlm.tokenizer.config import TokenizerCfg
    from spiritlm.tokenizer.hubert import HubertFeaturizer, tiny_hubert_config
    from spiritlm.tokenizer.kmeans import KMeansQuantizer
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    root = tmp_path_factory.mktemp("voccorpus")
    utts = []
    for i in range(6):
        wav = _voiced(0.8 + 0.1 * i, 110 + 25 * i)
        sf.write(str(root / f"u{i}.wav"), wav, 16000)
        utts.append(Utterance(f"u{i}", f"u{i}.wav", len(wav) / 16000, 16000, "a b", f"spk{i % 2}",
                              split="train" if i < 5 else "heldout"))
    write_manifest(root / "manifest.jsonl", utts)
    torch.manual_seed(0)
    model = HubertModel(tiny_hubert_config(hidden=16, layers=1, heads=2, ffn=32, conv_dim=8, hop=320)).eval()
    cfg = TokenizerCfg(name="t")
    cfg.hubert.layer, cfg.hubert.device = 1, "cpu"
    cfg.pitch.enabled = cfg.style.enabled = False
    rng = np.random.default_rng(0)
    tok = SpeechTokenizer(cfg, HubertFeaturizer(model, 1, device="cpu"),
                          KMeansQuantizer(rng.standard_normal((12, 16)).astype(np.float32)))
    tok_dir = tok.save(root / "tok")
    return root, tok_dir


def _fit_cfg(root: Path, tok_dir: Path, out: Path, steps: int, **over):
    from spiritlm.config import load_config
    from spiritlm.vocoder.fit import VocoderFitConfig

    sets = [f"data.corpus={root / 'manifest.jsonl'}", f"data.tokenizer={tok_dir}", f"output_dir={out}",
            f"train.steps={steps}", "train.batch_size=2", "train.segment_frames=8", "train.lr=0.002",
            "train.disc_start_step=4", "train.threads=1", "train.mpd_channels=2", "train.msd_channels=4",
            "model.embedding_dim=8", "model.upsample_initial_channel=16", "model.upsample_rates=[8, 8, 5]",
            "model.upsample_kernel_sizes=[16, 16, 5]", "model.resblock_kernel_sizes=[3]",
            "model.resblock_dilation_sizes=[[1, 3]]", "model.dur_hidden=8", "eval.n_files=1", "eval.asr=false",
            "eval.write_samples=0", *[f"{k}={v}" for k, v in over.items()]]
    return load_config(VocoderFitConfig, "tokenizers/vocoder_demo.toml", sets)


def test_fit_reduces_mel_loss_and_is_deterministic(tiny_corpus, tmp_path):
    from spiritlm.vocoder import Vocoder
    from spiritlm.vocoder.fit import fit_vocoder

    root, tok_dir = tiny_corpus
    a = fit_vocoder(_fit_cfg(root, tok_dir, tmp_path / "a", 12), progress=False)
    b = fit_vocoder(_fit_cfg(root, tok_dir, tmp_path / "b", 12), progress=False)
    assert (a / "generator.safetensors").read_bytes() == (b / "generator.safetensors").read_bytes()
    m = json.loads((a / "metrics.json").read_text())["train"]
    assert m["steps"] == 12
    assert m["heldout_mel_l1_after"] < m["heldout_mel_l1_before"]
    hist = [json.loads(x) for x in (a / "train_log.jsonl").read_text().splitlines()]
    assert hist[-1]["d"] > 0 and hist[0]["d"] == 0  # the discriminators joined at step 5
    voc = Vocoder.load(a)
    assert voc.speakers == ["spk0", "spk1"] and voc.hop == 320 and voc.model.dur_predictor is not None
    wav, sr = voc.decode({"hubert": np.array([1, 1, 2, 3, 3])})
    assert wav.shape == (5 * 320,) and np.isfinite(wav).all()


def test_fit_config_errors(tiny_corpus, tmp_path):
    from spiritlm.config import ConfigError
    from spiritlm.vocoder.fit import fit_vocoder

    root, tok_dir = tiny_corpus
    with pytest.raises(ConfigError, match="multiply to 320"):
        fit_vocoder(_fit_cfg(root, tok_dir, tmp_path / "x", 1, **{"model.upsample_rates": "[8, 8, 10]",
                                                                   "model.upsample_kernel_sizes": "[16, 16, 10]"}))
    with pytest.raises(ConfigError, match="no pitch stream"):
        fit_vocoder(_fit_cfg(root, tok_dir, tmp_path / "x", 1, **{"data.pitch": "true"}))
    with pytest.raises(ConfigError, match="data.tokenizer is empty"):
        fit_vocoder(_fit_cfg(root, tok_dir, tmp_path / "x", 1, **{"data.tokenizer": "''"}))


def test_fit_with_pitch_codes_expressive_path(tiny_corpus, tmp_path):
    """data.pitch: the tokenizer's 12.5 Hz pitch codes condition the generator (4 unit frames per
    code at 50 Hz); decode then needs pitch, from frame-level streams or a speech string."""
    from spiritlm.tokenizer.f0_vqvae import F0VQVAE
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer
    from spiritlm.vocoder import Vocoder
    from spiritlm.vocoder.fit import fit_vocoder

    root, tok_dir = tiny_corpus
    base = SpeechTokenizer.load(tok_dir)
    base.cfg.pitch.enabled, base.cfg.pitch.method = True, "praat"
    torch.manual_seed(0)
    tok = SpeechTokenizer(base.cfg, base.featurizer, base.quantizer, F0VQVAE(codebook=64).eval())
    pdir = tok.save(tmp_path / "tok_pitch")
    out = fit_vocoder(_fit_cfg(root, pdir, tmp_path / "p", 2, **{"data.pitch": "true"}), progress=False)
    voc = Vocoder.load(out)
    assert voc.cfg.num_f0_tokens == 64 and round(voc.cfg.f0_hop_size / voc.cfg.code_hop_size) == 4
    units = tok.encode(root / "u0.wav")
    wav, _ = voc.decode(units)
    assert len(wav) == len(units["hubert"]) * 320
    assert len(voc.decode(tok.to_string(units))[0]) % 320 == 0
    with pytest.raises(ValueError, match="needs pitch"):
        voc.decode({"hubert": units["hubert"]})
