"""The spectral unit vocoder (units -> log-magnitude STFT -> Griffin-Lim) and the vocoder
measurements (MCD, the diagnosis conditions): Griffin-Lim reconstructs a known signal, the fit
lowers its loss on a tiny set and is deterministic, save/load/decode round-trips, and the
release-format HiFi-GAN path is untouched (tests/test_vocoder.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_vocoder import _fit_cfg, _voiced, tiny_corpus  # noqa: E402,F401  (shared tiny corpus fixture)

SPECTRAL = {"model.kind": "spectral", "model.spectral_channels": 16, "model.spectral_dilations": "[1, 2]",
            "model.embedding_dim": 8, "model.n_fft": 256, "model.stft_hop": 80, "model.griffin_lim_iters": 8,
            "train.segment_frames": 8, "train.batch_size": 2, "train.lr": 0.01}


def test_griffin_lim_recovers_a_voiced_signal():
    from spiritlm.vocoder.measure import spectral_distances
    from spiritlm.vocoder.spectral import SpectralCfg, griffin_lim, log_magnitude

    cfg = SpectralCfg(griffin_lim_iters=32)
    x = _voiced(1.0, 140)
    lm = log_magnitude(torch.from_numpy(x)[None], cfg)
    y = griffin_lim(lm, cfg, length=len(x))[0].numpy()
    assert y.shape == x.shape
    # magnitudes come back close (phase is free, so compare spectra, not samples)
    err = float(torch.mean(torch.abs(log_magnitude(torch.from_numpy(y)[None], cfg) - lm)))
    noise = np.random.default_rng(0).standard_normal(len(x)).astype(np.float32) * 0.1
    err_noise = float(torch.mean(torch.abs(log_magnitude(torch.from_numpy(noise)[None], cfg) - lm)))
    assert err < 0.3 * err_noise
    d_same, d_gl, d_noise = (spectral_distances(x, z)["mcd_db"] for z in (x, y, noise))
    assert d_same == 0.0 and d_gl < 0.5 * d_noise
    # deterministic: zero initial phase
    assert np.array_equal(y, griffin_lim(lm, cfg, length=len(x))[0].numpy())


def test_spectral_fit_lowers_loss_is_deterministic_and_round_trips(tiny_corpus, tmp_path):  # noqa: F811
    from spiritlm.vocoder import Vocoder
    from spiritlm.vocoder.fit import fit_vocoder

    root, tok_dir = tiny_corpus
    a = fit_vocoder(_fit_cfg(root, tok_dir, tmp_path / "a", 30, **SPECTRAL), progress=False)
    b = fit_vocoder(_fit_cfg(root, tok_dir, tmp_path / "b", 30, **SPECTRAL), progress=False)
    assert (a / "generator.safetensors").read_bytes() == (b / "generator.safetensors").read_bytes()
    m = json.loads((a / "metrics.json").read_text())["train"]
    assert m["steps"] == 30 and m["heldout_spec_l1_after"] < 0.7 * m["heldout_spec_l1_before"]
    hist = [json.loads(x) for x in (a / "train_log.jsonl").read_text().splitlines()]
    assert np.mean([h["spec_l1"] for h in hist[-5:]]) < 0.5 * hist[0]["spec_l1"]
    assert json.loads((a / "config.json").read_text())["kind"] == "spectral"
    voc = Vocoder.load(a)
    assert type(voc.model).__name__ == "SpectralUnitVocoder" and voc.speakers == ["spk0", "spk1"]
    wav, sr = voc.decode({"hubert": np.array([1, 1, 2, 3, 3])}, speaker="spk1")
    assert sr == 16000 and wav.shape == (5 * 320,) and np.isfinite(wav).all() and np.abs(wav).max() <= 1
    wav_d, _ = voc.decode("[Hu1][Hu2][Hu3]")  # deduplicated: the duration predictor expands them
    assert len(wav_d) % 320 == 0 and len(wav_d) >= 3 * 320


def test_spectral_config_errors(tiny_corpus, tmp_path):  # noqa: F811
    from spiritlm.config import ConfigError
    from spiritlm.vocoder.fit import fit_vocoder

    root, tok_dir = tiny_corpus
    with pytest.raises(ConfigError, match="model.kind='wavenet'"):
        fit_vocoder(_fit_cfg(root, tok_dir, tmp_path / "x", 1, **{**SPECTRAL, "model.kind": "wavenet"}))
    with pytest.raises(ConfigError, match="must divide"):
        fit_vocoder(_fit_cfg(root, tok_dir, tmp_path / "x", 1, **{**SPECTRAL, "model.stft_hop": 96}))
    with pytest.raises(ConfigError, match="features.*spectral only"):
        fit_vocoder(_fit_cfg(root, tok_dir, tmp_path / "x", 1, **{"data.condition": "features"}))


@pytest.mark.parametrize("condition", ["features", "logmel"])
def test_diagnosis_conditions_are_not_vocoders(tiny_corpus, tmp_path, condition):  # noqa: F811
    from spiritlm.vocoder import Vocoder
    from spiritlm.vocoder.fit import fit_vocoder
    from spiritlm.vocoder.release import VocoderFileError

    root, tok_dir = tiny_corpus
    out = fit_vocoder(_fit_cfg(root, tok_dir, tmp_path / "f", 3, **{**SPECTRAL, "data.condition": condition}),
                      progress=False)
    m = json.loads((out / "metrics.json").read_text())["train"]
    assert m["steps"] == 3 and m["heldout_spec_l1_after"] < m["heldout_spec_l1_before"]
    with pytest.raises(VocoderFileError, match="cannot decode units"):
        Vocoder.load(out)


def test_logmel_features_sit_on_the_units_frames():
    """Row i of the log-mel bound's input comes from the 400-sample window at sample 320 * i: a
    tone switched on at unit 10 is silent before row 9 and loud from row 10 on."""
    from types import SimpleNamespace

    from spiritlm.vocoder.fit_spectral import LOGMEL_BANDS, logmel_features

    wav = np.zeros(320 * 20, np.float32)
    wav[3200:] = np.sin(2 * np.pi * 1000 * np.arange(len(wav) - 3200) / 16000)
    ex = SimpleNamespace(wav=wav, units={"hubert": np.zeros(20, np.int64)})
    (f,) = logmel_features([ex], 320)
    assert f.shape == (20, LOGMEL_BANDS) and f.dtype == np.float32
    energy = f.max(axis=1)
    assert energy[:9].max() < -10 and energy[10:].min() > 0


def test_diagnose_scores_every_condition_with_pocketsphinx(tiny_corpus, tmp_path):  # noqa: F811
    pytest.importorskip("pocketsphinx")
    from spiritlm.vocoder.measure import diagnose

    root, tok_dir = tiny_corpus
    cfg = _fit_cfg(root, tok_dir, tmp_path / "d", 1, **{**SPECTRAL, "eval.write_samples": 1})
    r = diagnose(cfg, progress=False)
    c = r["intelligibility"]["conditions"]
    assert set(c) == {"original", "griffin_lim_true", "unit_centroid"}
    assert c["griffin_lim_true"]["mcd_db"] < c["unit_centroid"]["mcd_db"]
    assert r["units"]["frames_per_s"] == pytest.approx(50, abs=3) and r["units"]["mean_run_length_frames"] >= 1
    assert (tmp_path / "d" / "diagnosis.json").is_file()
    assert len(list((tmp_path / "d" / "samples").glob("*.wav"))) == 3


def test_eval_skip_measures_utterances_after_the_dev_set(tiny_corpus, tmp_path):  # noqa: F811
    """Settings are chosen on the first held-out utterances; ``eval.skip`` measures the next ones."""
    from spiritlm.config import ConfigError
    from spiritlm.vocoder.fit import fit_vocoder

    root, tok_dir = tiny_corpus
    common = {**SPECTRAL, "data.eval_split": "train", "eval.n_files": 2}
    a = fit_vocoder(_fit_cfg(root, tok_dir, tmp_path / "a", 2, **common), progress=False)
    assert json.loads((a / "metrics.json").read_text())["heldout_ids"] == ["u0", "u1"]
    b = fit_vocoder(_fit_cfg(root, tok_dir, tmp_path / "b", 2, **common, **{"eval.skip": 3}), progress=False)
    assert json.loads((b / "metrics.json").read_text())["heldout_ids"] == ["u3", "u4"]
    with pytest.raises(ConfigError, match="skip=5 passes over all 5"):
        fit_vocoder(_fit_cfg(root, tok_dir, tmp_path / "c", 2, **common, **{"eval.skip": 5}), progress=False)
    with pytest.raises(ConfigError, match="eval.skip=-1"):
        fit_vocoder(_fit_cfg(root, tok_dir, tmp_path / "c", 2, **common, **{"eval.skip": -1}), progress=False)


def test_spectral_recipe_validates_and_fits(tiny_corpus, tmp_path):  # noqa: F811
    """tokenizers/vocoder_demo_spectral.toml (the CPU vocoder) loads, builds a valid model and fits,
    shrunk to toy size by --set overrides; its eval.skip keeps the dev utterances out of the claim."""
    from spiritlm.config import load_config
    from spiritlm.vocoder.fit import VocoderFitConfig, fit_vocoder

    root, tok_dir = tiny_corpus
    cfg = load_config(VocoderFitConfig, "tokenizers/vocoder_demo_spectral.toml", [])
    assert cfg.model.kind == "spectral" and cfg.eval.skip > 0 and not (cfg.data.pitch or cfg.data.style)
    small = {k: v for k, v in SPECTRAL.items() if k != "model.kind"}
    sets = [f"data.corpus={root / 'manifest.jsonl'}", f"data.tokenizer={tok_dir}", f"output_dir={tmp_path / 'v'}",
            "train.steps=3", "train.threads=1", "model.dur_hidden=8", "data.eval_split=train", "eval.skip=4",
            "eval.n_files=1", "eval.asr=false", "eval.write_samples=0", *[f"{k}={v}" for k, v in small.items()]]
    out = fit_vocoder(load_config(VocoderFitConfig, "tokenizers/vocoder_demo_spectral.toml", sets), progress=False)
    m = json.loads((out / "metrics.json").read_text())
    assert m["train"]["steps"] == 3 and m["heldout_ids"] == ["u4"]
