"""Real speech through every stage (issue 19): the LibriVox utterances in
../shared/data/real_speech/ go through manifest import -> `tokenizer fit` (a tiny random HuBERT,
k-means fitted on them) -> `tokenizer encode` -> `prepare align` (pocketsphinx; word boundaries
checked against the pocketsphinx times shipped with the files) -> `prepare shards` -> a few
training steps -> `generate` from a recording. The malformed WAVs go through every command that
reads audio, and each gives a clear error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real_speech"
LIBRIVOX = REAL / "librivox"
MALFORMED = sorted((REAL / "malformed_audio").glob("*.wav"))

pytestmark = pytest.mark.skipif(not LIBRIVOX.is_dir(), reason=f"{REAL} is absent (the shared real "
                                "speech folder sits beside the checkout in CI)")

# Word boundaries of our aligner vs the times pocketsphinx itself gives in librivox/*.json
# (measured when this test was written: mean 8.3 ms, p95 30 ms over 142 boundaries).
MAX_MEAN_MS, MAX_P95_MS = 15.0, 50.0


def reference_words(stem: str) -> list[tuple[str, float, float]]:
    """(word, start, end) of the shipped alignment, silences and variant marks removed."""
    ref = json.loads((LIBRIVOX / f"{stem}.json").read_text())
    out = []
    for w in ref["w"]:
        t = re.sub(r"\(\d+\)$", "", w["t"])
        if t.lower() not in ("<sil>", "<s>", "</s>"):
            out.append((t, w["b"], w["b"] + w["d"]))
    return out


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    """A tiny random 25-Hz HuBERT saved as a checkpoint directory, and a small BPE model."""
    import torch
    from transformers import HubertModel

    from spiritlm.text_tokenizer import train_sentencepiece
    from spiritlm.tokenizer.hubert import tiny_hubert_config

    root = tmp_path_factory.mktemp("real")
    torch.manual_seed(0)
    HubertModel(tiny_hubert_config(hidden=32, layers=2, heads=2, ffn=64, conv_dim=16, hop=640)) \
        .eval().save_pretrained(root / "hubert")
    texts = [p.read_text() for p in sorted(LIBRIVOX.glob("*.txt"))]
    train_sentencepiece(texts * 20 + ["the quick brown fox jumps over the lazy dog"] * 5,
                        root / "bpe", vocab_size=320)
    return {"root": root, "hubert": root / "hubert", "bpe": root / "bpe"}


def test_real_speech_through_every_stage(tools, tmp_path, capsys):
    pytest.importorskip("pocketsphinx")
    pytest.importorskip("deepspeed")
    from spiritlm.cli import main
    from spiritlm.manifest import read_manifest

    # manifest (a folder of wav + txt)
    man = tmp_path / "manifest.jsonl"
    assert main(["prepare", "manifest", "folder", str(LIBRIVOX), "-o", str(man)]) == 0
    utts = read_manifest(man)
    assert len(utts) == 5 and all(2.9 < u.duration < 7.2 for u in utts)
    # a speech tokenizer fitted on them (k-means on a tiny random HuBERT's features)
    tok = tmp_path / "tok"
    assert main(["tokenizer", "fit", str(REPO / "tokenizers" / "base.toml"), "--corpus", str(man),
                 "--out", str(tok), "--set", f"hubert.path={tools['hubert']}", "--set", "hubert.layer=2",
                 "--set", "hubert.device=cpu", "--set", "units.k=16", "--set", "units.niter=10",
                 "--set", "fit.split="]) == 0
    # encode
    wavs = sorted(LIBRIVOX.glob("*.wav"))
    units = tmp_path / "units.jsonl"
    assert main(["tokenizer", "encode", "--tokenizer", str(tok), "--jsonl", str(units),
                 *map(str, wavs)]) == 0
    rows = [json.loads(x) for x in units.read_text().splitlines()]
    assert [r["file"] for r in rows] == list(map(str, wavs))
    for r, u in zip(rows, utts):  # 25 HuBERT frames a second
        assert abs(len(r["hubert"]) - 25 * u.duration) <= 2 and max(r["hubert"]) < 16
    # align, and compare with the reference word times
    aligned = tmp_path / "aligned.jsonl"
    assert main(["prepare", "align", str(man), "-o", str(aligned)]) == 0
    got = {u.id: u.words for u in read_manifest(aligned)}
    errs = []
    for u in utts:
        ref = reference_words(u.id)
        assert [w.word.lower() for w in got[u.id]] == [w for w, _, _ in ref], u.id
        for w, (_, b, e) in zip(got[u.id], ref):
            errs += [abs(w.start - b), abs(w.end - e)]
    e_ms = np.array(errs) * 1000
    with capsys.disabled():
        print(f"aligner vs librivox/*.json: {e_ms.size} boundaries, mean {e_ms.mean():.1f} ms, "
              f"p95 {np.percentile(e_ms, 95):.1f} ms")
    assert e_ms.size == 142 and e_ms.mean() < MAX_MEAN_MS and np.percentile(e_ms, 95) < MAX_P95_MS
    # shards with the fitted tokenizer's units
    shards = tmp_path / "shards"
    (tmp_path / "prep.toml").write_text("")
    assert main(["prepare", "shards", str(tmp_path / "prep.toml"), "--set", f"output_dir={shards}",
                 "--set", f"text_tokenizer={tools['bpe']}", "--set", f"inputs.manifests=[{aligned}]",
                 "--set", "speech.encoder=spiritlm.data.encoders:speech_tokenizer",
                 "--set", f"speech.tokenizer_dir={tok}", "--set", "progress=false"]) == 0
    report = json.loads((shards / "report.json").read_text())
    assert report["kept"] == {"aligned": 5} and report["dropped"] == {}
    assert report["hours_kept"] == pytest.approx(sum(u.duration for u in utts) / 3600, abs=1e-6)
    # a few training steps on them (interleaved and speech-only), exported with the tokenizer
    from spiritlm.train.tiny import tiny_config
    from spiritlm.train.trainer import Trainer

    run = tmp_path / "run"
    src = (f'[{{name = "inter", path = "{shards / "aligned"}", kind = "interleaved"}}, '
           f'{{name = "speech", path = "{shards / "aligned"}", kind = "speech"}}]')
    t = Trainer(tiny_config(str(run), ["steps=3", f"data.sources={src}", f"model.tokenizer={tools['bpe']}",
                                       "checkpoint.export_hf=true"]))
    t.fit()
    assert all(np.isfinite(r["loss"]) for r in t.history)
    assert t.history[-1]["loss/switch"] is not None  # interleaved real speech reached the model
    # generate, prompted by a real recording encoded with the same tokenizer
    capsys.readouterr()
    assert main(["generate", "--model", str(run / "hf"), "--speech", str(wavs[1]),
                 "--speech-encoder-arg", f"directory={tok}", "--output-modality", "speech",
                 "--max-new-tokens", "8", "--greedy", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[speech] [Hu"), out
    with capsys.disabled():
        print("generated from a real recording:", out.strip())


def test_a_transcript_missing_most_words_is_not_aligned(tmp_path):
    """22 words spoken, 8 in the transcript: forced alignment stretched them over the recording
    and the shards paired them with the wrong speech. Now the utterance fails, with a reason."""
    pytest.importorskip("pocketsphinx")
    from spiritlm.data.align import PocketsphinxAligner, align_utterances
    from spiritlm.data.encoders import read_audio
    from spiritlm.manifest import Utterance

    stem = "sense_and_sensibility_01_austen_64kb-0870"
    text = (LIBRIVOX / f"{stem}.txt").read_text().split()
    wav = LIBRIVOX / f"{stem}.wav"
    dur = len(read_audio(wav)) / 16000
    assert len(text) == 22
    utts = [Utterance("full", str(wav), dur, 16000, " ".join(text), "s"),
            Utterance("first8", str(wav), dur, 16000, " ".join(text[:8]), "s"),
            Utterance("last8", str(wav), dur, 16000, " ".join(text[-8:]), "s")]
    out, rep = align_utterances(utts, tmp_path, PocketsphinxAligner(), keep_failed=False)
    assert [u.id for u in out] == ["full"]
    assert rep["failed_reasons"] == {"alignment_uncovered_speech": 2}
    assert "s of speech lie outside the aligned words" in rep["failures"][0]["message"]


@pytest.fixture(scope="module")
def readers(tools):
    """A speech tokenizer (k-means on random frames) and a tiny model, for the commands that
    take them."""
    from spiritlm.eval.testing import make_tiny_model_dir

    return {"tok": _tiny_tokenizer(tools, tools["root"]),
            "model": make_tiny_model_dir(tools["root"] / "model", hidden=16, layers=1)}


@pytest.mark.parametrize("bad", MALFORMED, ids=[p.name for p in MALFORMED])
def test_malformed_wavs_get_a_clear_error_from_every_reader(bad, tools, readers, tmp_path, capsys):
    """bad.wav (no data), evil.wav (corrupt header), awful.wav (1,092,676 Hz): every command that
    reads audio names the file and why, in one line, and nothing crashes or hangs."""
    import shutil

    from spiritlm.cli import main
    from spiritlm.data.align import PocketsphinxAligner, align_utterances
    from spiritlm.manifest import Utterance, write_manifest
    from spiritlm.audio import AudioError, load_audio, probe_audio

    why = r"(unreadable or not a supported audio file|implausible sample rate 1092676 Hz)"
    for fn in (load_audio, probe_audio):
        with pytest.raises(AudioError, match=why):
            fn(bad)
    # prepare manifest: dropped with its reason
    folder = tmp_path / "corpus"
    folder.mkdir()
    shutil.copy(bad, folder / "x.wav")
    (folder / "x.txt").write_text("hello world")
    shutil.copy(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav", folder / "ok.wav")
    shutil.copy(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.txt", folder / "ok.txt")
    man = tmp_path / "m.jsonl"
    assert main(["prepare", "manifest", "folder", str(folder), "-o", str(man)]) == 0
    rep = json.loads((tmp_path / "m.jsonl.report.json").read_text())
    assert rep["dropped"] == {"audio_unreadable": 1}
    # a manifest naming it anyway (written by hand): align, shards
    bad_man = tmp_path / "bad.jsonl"
    write_manifest(bad_man, [Utterance("x", str(bad), 1.0, 16000, "hello world", "s")])
    pytest.importorskip("pocketsphinx")
    _, arep = align_utterances([Utterance("x", str(bad), 1.0, 16000, "hello world", "s")], tmp_path,
                               PocketsphinxAligner())
    assert arep["failed_reasons"] == {"audio_unreadable": 1}
    assert re.search(why, arep["failures"][0]["message"])
    (tmp_path / "p.toml").write_text("")
    capsys.readouterr()
    assert main(["prepare", "shards", str(tmp_path / "p.toml"), "--set", f"output_dir={tmp_path / 'sh'}",
                 "--set", f"text_tokenizer={tools['bpe']}", "--set", f"inputs.manifests=[{bad_man}]",
                 "--set", "progress=false"]) == 1
    err = capsys.readouterr().err
    assert "every speech item was dropped" in err and "Traceback" not in err
    assert re.search(why, (tmp_path / "sh" / "drops.jsonl").read_text())
    # tokenizer encode
    tok = readers["tok"]
    assert main(["tokenizer", "encode", "--tokenizer", str(tok), str(bad)]) != 0
    err = capsys.readouterr().err
    assert bad.name in err and re.search(why, err) and "Traceback" not in err
    # tokenizer fit on a corpus of nothing else: each file skipped with its reason, then one error
    assert main(["tokenizer", "fit", str(REPO / "tokenizers" / "base.toml"), "--corpus", str(bad_man),
                 "--out", str(tmp_path / "fit"), "--set", f"hubert.path={tools['hubert']}",
                 "--set", "hubert.layer=2", "--set", "hubert.device=cpu", "--set", "units.k=4",
                 "--set", "fit.split="]) == 1
    assert "no features were collected" in capsys.readouterr().err
    # generate prompted with it
    assert main(["generate", "--model", str(readers["model"]), "--speech", str(bad), "--speech-encoder-arg",
                 f"directory={tok}", "--max-new-tokens", "2", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert bad.name in err and re.search(why, err) and "Traceback" not in err


def _tiny_tokenizer(tools, tmp_path) -> Path:
    from spiritlm.tokenizer.config import TokenizerCfg
    from spiritlm.tokenizer.hubert import HubertFeaturizer, load_hubert
    from spiritlm.tokenizer.kmeans import KMeansQuantizer
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    cfg = TokenizerCfg(name="t")
    cfg.hubert.layer, cfg.hubert.device = 2, "cpu"
    feat = HubertFeaturizer(load_hubert(tools["hubert"]), 2, device="cpu")
    quant = KMeansQuantizer(np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32))
    return SpeechTokenizer(cfg, feat, quant).save(tmp_path / "tok")
