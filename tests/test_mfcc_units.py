"""MFCC k-means units as a tokenizer (issue 35): fitted, saved, loaded and encoded through the
speech tokenizer's own path; the unit report's baseline rows written as tokenizer directories a
vocoder can be trained on; and phone-level measures on real speech from pocketsphinx's forced
alignment."""

import json
from pathlib import Path

import numpy as np
import pytest

from spiritlm.config import load_config
from spiritlm.tokenizer.config import TokenizerCfg

LIBRIVOX = Path("../shared/data/real_speech/librivox")
pytestmark = pytest.mark.skipif(not LIBRIVOX.is_dir(), reason="../shared/data/real_speech is absent (real speech)")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The five LibriVox utterances as a manifest with pocketsphinx's word and phone times: four
    to train on, one held out."""
    from spiritlm.audio import load_audio
    from spiritlm.phone_align import align_utterance

    root = tmp_path_factory.mktemp("mfcc")
    rows = []
    for i, wav in enumerate(sorted(LIBRIVOX.glob("*.wav"))):
        u = align_utterance(load_audio(wav), wav.with_suffix(".txt").read_text(), id=wav.stem, speaker="austen_reader")
        u.audio_path, u.split = str(wav.resolve()), "heldout" if i == 4 else "train"
        rows.append(json.dumps(u.to_dict()))
    (root / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    return root / "manifest.jsonl"


@pytest.fixture(scope="module")
def mfcc_tok(corpus, tmp_path_factory):
    from spiritlm.cli import main

    out = tmp_path_factory.mktemp("tok") / "mfcc"
    assert main(["tokenizer", "fit", "tokenizers/mfcc_demo.toml", "--corpus", str(corpus), "--out", str(out),
                 "--set", "units.k=16", "--set", "units.niter=5"]) == 0
    return out


def test_align_utterance_matches_the_shipped_word_times():
    # The shipped .json word times are pocketsphinx's own alignment: ours agrees to within 3 frames.
    from spiritlm.audio import load_audio
    from spiritlm.phone_align import align_utterance

    wav = sorted(LIBRIVOX.glob("*.wav"))[0]
    u = align_utterance(load_audio(wav), wav.with_suffix(".txt").read_text(), id=wav.stem)
    ref = [(w["t"].split("(")[0], w["b"]) for w in json.loads(wav.with_suffix(".json").read_text())["w"]
           if not w["t"].startswith("<")]
    assert [w.word for w in u.words] == [r[0] for r in ref]
    assert max(abs(w.start - r[1]) for w, r in zip(u.words, ref)) <= 0.03
    assert [p.phone for p in u.phones[:5]] == ["AE", "N", "D", "M", "IH"]  # "and mister"
    assert all(a.end <= b.start + 1e-9 for a, b in zip(u.phones, u.phones[1:]))
    assert 0 <= u.phones[0].start and u.phones[-1].end <= u.duration
    with pytest.raises(ValueError, match="not in pocketsphinx's CMU dictionary"):
        align_utterance(load_audio(wav), "and mister qzxjv", id="x")
    with pytest.raises(ValueError, match="empty transcript"):
        align_utterance(load_audio(wav), " ,. ", id="x")


def test_mfcc_units_fit_save_load_and_encode(mfcc_tok, corpus):
    from spiritlm.tokenizer.mfcc_units import mfcc
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.load(mfcc_tok)
    assert tok.layout.unit_family == "mfcc" and tok.featurizer.frame_rate == 50.0 and tok.quantizer.size == 16
    assert not (mfcc_tok / "hubert").exists()  # no encoder in the directory
    wav = sorted(LIBRIVOX.glob("*.wav"))[1]
    units = tok.encode(str(wav))["hubert"]
    x = tok.load_wav(str(wav))
    assert len(units) == (len(x) - 400) // 320 + 1
    assert np.array_equal(units, tok.quantizer(mfcc(x, 320)))
    assert 4 <= len(np.unique(units)) <= 16
    s = tok.to_string({"hubert": units})
    assert s.startswith("[Hu") and "[Hu" in s


@pytest.mark.parametrize("overrides, match", [
    (["mfcc.hop=300"], "dividing 16000"),
    (["semantic.enabled=true"], "one unit family"),
    (["demo.enabled=true"], "one unit family"),
    (["style.enabled=true", "style.kind=kmeans"], "none of"),
])
def test_bad_mfcc_recipes_are_refused_with_the_fix(corpus, tmp_path, overrides, match):
    from spiritlm.tokenizer.fit import fit_tokenizer

    cfg = load_config(TokenizerCfg, "tokenizers/mfcc_demo.toml", overrides)
    with pytest.raises(ValueError, match=match):
        fit_tokenizer(cfg, corpus, tmp_path / "t", progress=False)


def test_report_writes_baselines_as_tokenizers_and_measures_real_speech_phones(mfcc_tok, corpus, tmp_path):
    """--save-baselines: the MFCC and random-init rows become tokenizer directories that encode
    exactly the units the report measured; real speech with transcripts gets PNMI and ABX."""
    from spiritlm.tokenizer.report import ReportConfig, read_real_speech, unit_report
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    from transformers import HubertModel

    from spiritlm.tokenizer.hubert import tiny_hubert_config
    from spiritlm.tokenizer.speech_tokenizer import featurizer_for

    # a HuBERT row (tiny, random): its random-init twin is a baseline row too
    hcfg = load_config(TokenizerCfg, "tokenizers/demo.toml", ["demo.enabled=false", "hubert.layer=1"])
    hcfg.pitch.enabled = hcfg.style.enabled = False
    model = HubertModel(tiny_hubert_config(hidden=32, layers=1, conv_dim=16)).eval()
    SpeechTokenizer(hcfg, featurizer_for(hcfg, model), SpeechTokenizer.load(mfcc_tok).quantizer.__class__(
        np.random.default_rng(0).normal(size=(16, 32)).astype(np.float32))).save(tmp_path / "hubert")
    rcfg = ReportConfig(corpus=str(corpus), tokenizers={"hubert": str(tmp_path / "hubert"), "mfcc_tok": str(mfcc_tok)}, split="heldout",
                        train_split="train", real_speech=str(LIBRIVOX), save_baselines=str(tmp_path / "base"))
    rep = unit_report(rcfg, tmp_path / "report", progress=False)
    # MFCC units have no encoder to randomise: one random twin, the HuBERT's
    assert list(rep["rows"]) == ["hubert", "mfcc_tok", "mfcc_kmeans", "random_hubert_kmeans"]
    assert "tokenizer_dir" not in rep["rows"]["hubert"]  # given rows are not copied
    real = read_real_speech(LIBRIVOX)
    assert [len(r.alignment.phones) for r in real] == [76, 25, 51, 67, 32]
    for name, family in (("mfcc_kmeans", "mfcc"), ("random_hubert_kmeans", "hubert")):
        saved = SpeechTokenizer.load(rep["rows"][name]["tokenizer_dir"])
        assert saved.layout.unit_family == family and saved.quantizer.size == 16
        assert saved.available_streams == ("hubert",)
        got = [saved.encode(r.wav)["hubert"] for r in real]
        want = [saved.quantizer(f) for f in saved.featurizer.features_many([r.wav for r in real])]
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
    # the twin's weights are not the tokenizer's
    twin = SpeechTokenizer.load(rep["rows"]["random_hubert_kmeans"]["tokenizer_dir"]).featurizer.model
    assert not np.allclose(twin.encoder.layers[0].attention.q_proj.weight.detach(),
                           model.encoder.layers[0].attention.q_proj.weight.detach())
    row = rep["rows"]["mfcc_kmeans"]
    ph = row["real_speech_phones"]
    assert ph["utterances"] == 5 and ph["phones"] == 251 and 0.0 < ph["pnmi"] < 1.0
    assert ph["abx_within_any_context"] is not None and 0.0 <= ph["abx_within_any_context"] < 50.0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "(251 phones)" in md
