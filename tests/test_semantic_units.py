"""Semantic units (issue 35): an ASR-supervised encoder fitted, quantised, saved, loaded and
encoded through the speech tokenizer's own path, on real read speech (LibriVox, with transcripts);
and every bad recipe refused at start with the fix."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from spiritlm.config import ConfigError, load_config
from spiritlm.tokenizer.config import TokenizerCfg

LIBRIVOX = Path("../shared/data/real_speech/librivox")
LIBRISPEECH = Path("../shared/data/real_speech/librispeech/7143-88743-0029.flac")
pytestmark = pytest.mark.skipif(not LIBRIVOX.is_dir(), reason="../shared/data/real_speech is absent (real speech)")

TINY = ["semantic.steps=30", "semantic.batch_size=2", "semantic.warmup_steps=5", "semantic.conformer.dim=32",
        "semantic.conformer.layers=2", "semantic.layer=2", "semantic.conformer.heads=2", "semantic.threads=1", "units.k=8",
        "units.niter=5", "units.max_frames=2000", "semantic.crop_s=2.0"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The five LibriVox utterances as a manifest: four to train on, one held out."""
    import soundfile as sf

    from spiritlm.manifest import Utterance, Word

    root = tmp_path_factory.mktemp("semantic")
    rows = []
    for i, wav in enumerate(sorted(LIBRIVOX.glob("*.wav"))):
        shutil.copy(wav, root / wav.name)
        text = wav.with_suffix(".txt").read_text().strip()
        words = [Word(w["t"].split("(")[0], w["b"], round(w["b"] + w["d"], 3))
                 for w in json.loads(wav.with_suffix(".json").read_text())["w"] if not w["t"].startswith("<")]
        u = Utterance(id=wav.stem, audio_path=wav.name, duration=sf.info(str(wav)).duration, sample_rate=16000, text=text,
                      speaker="austen_reader", words=words, split="heldout" if i == 4 else "train")
        rows.append(json.dumps(u.to_dict()))
    (root / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    return root / "manifest.jsonl"


@pytest.fixture(scope="module")
def fitted(corpus, tmp_path_factory):
    from spiritlm.tokenizer.fit import fit_tokenizer

    cfg = load_config(TokenizerCfg, "tokenizers/semantic_demo.toml", TINY)
    return fit_tokenizer(cfg, corpus, tmp_path_factory.mktemp("tok") / "semantic", progress=False)


def test_fit_trains_the_ctc_encoder_and_writes_a_tokenizer_dir(fitted):
    meta = json.loads((fitted / "semantic" / "encoder.json").read_text())
    log = meta["train_log"]
    assert log["steps"] == 30 and log["utterances"] == 4 and log["heldout_utterances"] == 1
    assert log["ctc_last"] < log["ctc_first"]  # the CTC objective was optimised
    assert 0.0 <= log["heldout_wer"] and np.isfinite(log["heldout_wer"])
    manifest = json.loads((fitted / "manifest.json").read_text())
    assert manifest["streams"]["hubert"] == {"size": 8, "rate": 25.0}
    assert {"semantic/encoder.safetensors", "semantic/ctc.safetensors", "semantic/encoder.json",
            "hubert_units.npy", "tokenizer.yaml"} <= set(manifest["files"])
    assert not (fitted / "hubert").exists()


def test_training_crops_cut_at_word_boundaries():
    from spiritlm.tokenizer.conformer import CharVocab
    from spiritlm.tokenizer.semantic import _crop

    v = CharVocab()
    words = [(0.5, 1.0, v.encode("the")), (1.2, 2.0, v.encode("cat")), (2.4, 3.5, v.encode("sat")), (3.9, 4.2, v.encode("down"))]
    wav = np.arange(5 * 16000, dtype=np.float32)
    seen = set()
    for seed in range(40):
        x, ids = _crop(wav, words, 1.6, torch.Generator().manual_seed(seed), v.encode("a b")[1])
        text = v.decode(ids)
        seen.add(text)
        first = [w for w, (_, _, i) in zip(("the", "cat", "sat", "down"), words) if text.startswith(v.decode(i))][0]
        assert text in ("the cat", "cat", "sat", "down"), text  # runs of whole words within 1.6 s (sat..down: 1.8)
        lo = {"the": 0.0, "cat": 1.1, "sat": 2.2, "down": 3.7}[first]  # midway into the gap before it
        assert x[0] == int(lo * 16000)
    assert len(seen) == 4


def test_semantic_units_encode_like_hubert_units(fitted):
    from spiritlm.audio import load_audio
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer
    from spiritlm.vocab import string_to_units

    tok = SpeechTokenizer.load(fitted)
    assert tok.layout.unit_family == "semantic" and tok.layout.hubert_size == 501  # the release's id rows
    wav = load_audio(LIBRISPEECH)
    units = tok.encode(LIBRISPEECH)
    # 25 Hz: the conformer's frames of the 9.135-s utterance (log-mel 10 ms, two stride-2 convs)
    n_mel = 1 + (len(wav) - 400) // 160
    assert len(units["hubert"]) == tok.featurizer.num_frames(len(wav)) == ((n_mel + 1) // 2 + 1) // 2
    assert units["hubert"].min() >= 0 and units["hubert"].max() < 8
    s = tok.to_string(units)
    assert s.startswith("[Hu") and string_to_units(s, tok.layout)["hubert"]
    ids = tok.to_ids(units)
    assert ids.min() >= tok.layout.base_vocab_size
    # one file's units do not depend on the files encoded beside it, and a reload gives the same
    other = load_audio(sorted(LIBRIVOX.glob("*.wav"))[0])
    together = tok.encode_many([other, wav])[1]["hubert"]
    again = SpeechTokenizer.load(fitted).encode(LIBRISPEECH)["hubert"]
    assert np.array_equal(together, units["hubert"]) and np.array_equal(again, units["hubert"])


def test_fit_is_deterministic(corpus, fitted, tmp_path):
    from spiritlm.tokenizer.fit import fit_tokenizer

    cfg = load_config(TokenizerCfg, "tokenizers/semantic_demo.toml", TINY)
    again = fit_tokenizer(cfg, corpus, tmp_path / "again", progress=False)
    a, b = (json.loads((d / "manifest.json").read_text())["files"] for d in (fitted, again))
    assert a == b  # byte-identical encoder, codebook and config (sha256 of every file)


def test_12_5_hz_averages_pairs_of_encoder_frames(fitted):
    from spiritlm.audio import load_audio
    from spiritlm.tokenizer.semantic import SemanticFeaturizer, load_semantic_encoder

    enc = load_semantic_encoder("conformer", fitted / "semantic")
    f25, f12 = SemanticFeaturizer(enc, 1, 0.0, "cpu"), SemanticFeaturizer(enc, 1, 12.5, "cpu")
    assert (f25.frame_rate, f25.hop, f12.frame_rate, f12.hop) == (25.0, 640, 12.5, 1280)
    wav = load_audio(LIBRISPEECH)
    a, b = f25.features(wav), f12.features(wav)
    n = len(a) // 2
    assert b.shape == (n, 32) == (f12.num_frames(len(wav)), 32)
    np.testing.assert_allclose(b, a[: 2 * n].reshape(n, 2, -1).mean(1), rtol=1e-5, atol=1e-6)
    # both layers from one pass equal each layer alone
    both = f25.features_many_at([wav], [1, 2])
    np.testing.assert_array_equal(both[1][0], a)
    np.testing.assert_array_equal(both[2][0], SemanticFeaturizer(enc, 2, 0.0, "cpu").features(wav))


def test_the_continuous_familys_export_loads_as_a_semantic_encoder(fitted, tmp_path):
    """A conformer trained by the continuous / streaming family (its export: continuous.json +
    encoder.safetensors + ctc.safetensors) is a semantic encoder as it is."""
    from spiritlm.tokenizer.semantic import SemanticFeaturizer, load_semantic_encoder

    d = tmp_path / "export"
    d.mkdir()
    meta = json.loads((fitted / "semantic" / "encoder.json").read_text())
    (d / "continuous.json").write_text(json.dumps({"continuous": {"encoder": {"kind": "conformer",
                                                                              "conformer": meta["conformer"]}}}))
    for f in ("encoder.safetensors", "ctc.safetensors"):
        shutil.copy(fitted / "semantic" / f, d / f)
    a = SemanticFeaturizer(load_semantic_encoder("conformer", d), 2, 0.0, "cpu")
    b = SemanticFeaturizer(load_semantic_encoder("conformer", fitted / "semantic"), 2, 0.0, "cpu")
    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    np.testing.assert_array_equal(a.features(wav), b.features(wav))


def _tiny_wav2vec2(path: Path, ctc: bool) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Model

    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 64), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2, vocab_size=30, do_stable_layer_norm=False)
    torch.manual_seed(0)
    (Wav2Vec2ForCTC(cfg) if ctc else Wav2Vec2Model(cfg)).save_pretrained(str(path))
    return path


def test_a_local_hf_ctc_model_is_a_semantic_encoder(tmp_path):
    from spiritlm.tokenizer.semantic import SemanticFeaturizer, load_semantic_encoder

    enc = load_semantic_encoder("hf", _tiny_wav2vec2(tmp_path / "w2v", ctc=True))
    f = SemanticFeaturizer(enc, 1, 25.0, "cpu")  # 50-Hz frames (stride 320), two averaged per unit
    assert (enc.native_rate, f.pool, f.frame_rate) == (50.0, 2, 25.0)
    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    x = f.features(wav)
    assert x.shape == (f.num_frames(len(wav)), 32) and x.shape[0] == 25  # 50 frames of 1 s


def test_bad_semantic_recipes_are_refused_with_the_fix(corpus, fitted, tmp_path):
    from spiritlm.tokenizer.fit import fit_tokenizer
    from spiritlm.tokenizer.semantic import SemanticFeaturizer, load_semantic_encoder, pool_factor

    # an HF encoder with no CTC head was not trained to transcribe
    with pytest.raises(ConfigError, match="no CTC head"):
        load_semantic_encoder("hf", _tiny_wav2vec2(tmp_path / "plain", ctc=False))
    # a conformer directory without its CTC head
    d = tmp_path / "noctc"
    shutil.copytree(fitted / "semantic", d)
    (d / "ctc.safetensors").unlink()
    with pytest.raises(ConfigError, match="no ctc.safetensors"):
        load_semantic_encoder("conformer", d)
    # a frame rate that is not the encoder's rate over a whole number of frames
    with pytest.raises(ConfigError, match=r"semantic.frame_rate=10: .*25, 12.5, 8.33333, 6.25"):
        pool_factor(10.0, 25.0)
    with pytest.raises(ConfigError, match="frame_rate=50"):
        pool_factor(50.0, 25.0)
    enc = load_semantic_encoder("conformer", fitted / "semantic")
    with pytest.raises(ConfigError, match=r"semantic.layer=3 but the encoder has 2 layers; pick 1..2"):
        SemanticFeaturizer(enc, 3)
    # refused before any training: layer, rate, hf without a path, a corpus without transcripts
    for over, match in ((["semantic.layer=5"], "semantic.layer=5"), (["semantic.frame_rate=20"], "frame_rate=20"),
                        (['semantic.kind="hf"'], "needs semantic.path")):
        cfg = load_config(TokenizerCfg, "tokenizers/semantic_demo.toml", TINY + over)
        with pytest.raises((ConfigError, ValueError), match=match):
            fit_tokenizer(cfg, corpus, tmp_path / "x", progress=False)
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({**json.loads(line), "text": "",
                                        "audio_path": str(corpus.parent / json.loads(line)["audio_path"])}) + "\n"
                            for line in corpus.read_text().splitlines()))
    cfg = load_config(TokenizerCfg, "tokenizers/semantic_demo.toml", TINY)
    with pytest.raises(ConfigError, match="has a transcript"):
        fit_tokenizer(cfg, bare, tmp_path / "y", progress=False)


def _repeating_corpus(root: Path) -> Path:
    """Synthetic vowels and fricatives in a few fixed orders, spoken by two voices: every phone
    recurs in the same context within and across speakers, so ABX cells exist (random phone
    strings of the tokenizer tests' synthetic corpus almost never repeat a context)."""
    import soundfile as sf

    from spiritlm.manifest import Phone, Utterance, Word, write_manifest
    from spiritlm.tokenizer.synth import synth_phone

    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True)
    orders = [["a", "i", "a", "s", "a", "i", "u"], ["i", "a", "i", "s", "i", "a", "u"], ["u", "a", "i", "s", "u", "a", "i"]]
    utts = []
    for n in range(24):  # held out: 12, each order twice per voice
        spk, seq = n % 2, ["sil", *orders[n % 3], "sil"]
        audio, phones, t = [], [], 0
        for p in seq:
            k = int(rng.uniform(0.08, 0.14) * 16000)
            audio.append(synth_phone(p, k, 120 + 90 * spk, 115 + 90 * spk, 1.0 + 0.1 * spk, rng))
            phones.append(Phone(p, round(t / 16000, 5), round((t + k) / 16000, 5)))
            t += k
        rel = f"audio/r{n:02d}.wav"
        sf.write(root / rel, np.concatenate(audio), 16000, subtype="PCM_16")
        words = [Word("".join(seq[1:4]), phones[1].start, phones[3].end), Word("".join(seq[4:8]), phones[4].start, phones[7].end)]
        utts.append(Utterance(id=f"r{n:02d}", audio_path=rel, duration=t / 16000, sample_rate=16000, text="",
                              speaker=f"spk{spk}", phones=phones, words=words, split="heldout" if n >= 12 else "train"))
    write_manifest(root / "manifest.jsonl", utts)
    return root / "manifest.jsonl"


def test_unit_report_puts_every_family_side_by_side(fitted, tmp_path, capsys):
    """``spiritlm tokenizer report`` on a corpus with phone alignments (synthetic, three speakers):
    the semantic tokenizer's row, the MFCC and random-init baselines, ABX within and across
    speaker, and the word distance on real speech."""
    from spiritlm.cli import main
    corpus = _repeating_corpus(tmp_path / "syn")
    out, voc = tmp_path / "report", tmp_path / "vocoder"
    voc.mkdir()  # what `spiritlm vocoder fit` writes (its WER measurement is tested with the vocoder)
    (voc / "metrics.json").write_text(json.dumps({"intelligibility": {"conditions": {
        "original": {"wer": 0.614}, "vocoded": {"wer": 0.6829}}}}))
    assert main(["tokenizer", "report", "--corpus", str(corpus), "--tokenizer", f"semantic={fitted}",
                 "--real-speech", str(LIBRIVOX), "--out", str(out), "--layers", "1", "--vocoder", f"semantic={voc}"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert list(rep["rows"]) == ["semantic", "semantic_layer1", "mfcc_kmeans", "random_semantic_kmeans"]
    for name, r in rep["rows"].items():
        assert r["rate"] == 25.0 and 0.0 <= r["pnmi"] <= 1.0, name
        assert 0.0 <= r["abx_within"] <= 100.0 and 0.0 <= r["abx_across"] <= 100.0, name
        assert "words" in r["real_speech_word_distance"], name
    # "the", "and", ... recur in the five LibriVox utterances (the 30-step encoder's units are too few to tell)
    assert rep["rows"]["mfcc_kmeans"]["real_speech_word_distance"]["words"] >= 1
    assert rep["rows"]["mfcc_kmeans"]["abx_within"] < 10 < rep["rows"]["semantic"]["abx_within"]
    assert rep["rows"]["semantic"]["vocoder_wer"] == 0.683 and "vocoder_wer" not in rep["rows"]["mfcc_kmeans"]
    md = capsys.readouterr().out
    assert "| 0.683 (0.614) |" in md
    assert "| semantic | semantic | 25 |" in md and "| mfcc_kmeans | mfcc |" in md
    assert main(["tokenizer", "report", "--corpus", str(corpus), "--tokenizer", str(fitted), "--out", str(out)]) != 0
    assert "write NAME=DIR" in capsys.readouterr().err


def test_one_training_run_reads_one_unit_family():
    """HuBERT and semantic units share the [Hu*] ids with other meanings: mixing them is refused."""
    from types import SimpleNamespace

    from spiritlm.components.mixture import check_meta
    from spiritlm.vocab import SPIRITLM

    def src(name, kind, family):
        return SimpleNamespace(name=name, kind=kind, meta={"vocab_layout": {"hubert_size": 501, "unit_family": family}})

    hub, sem = src("speech", "speech", "hubert"), src("interleaved", "interleaved", "semantic")
    check_meta([sem, src("text", "text", "hubert")], SPIRITLM, 40_000)  # text-only sources hold no unit
    with pytest.raises(ConfigError, match=r"different families \(hubert: speech; semantic: interleaved\)"):
        check_meta([hub, sem], SPIRITLM, 40_000)
