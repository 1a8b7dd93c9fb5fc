"""Evaluation of the continuous-input model: WER by jiwer, batched greedy / beam decoding, ASR on
the real LibriVox speech, StoryCloze S->T through the suite on the unit model's items."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from spiritlm.config import load_config
from spiritlm.models.continuous.asr import evaluate_asr, transcribe
from spiritlm.stats import asr_wer as wer
from spiritlm.transcripts import text_dir_items
from spiritlm.components.scoring import Request
from spiritlm.models.continuous.config import ContinuousTrainConfig
from spiritlm.models.continuous.data import synthetic_utterances
from spiritlm.models.continuous.model import build_continuous, load_continuous
from spiritlm.models.continuous.scoring import ContinuousScorer

LIBRIVOX = Path("../shared/data/real_speech/librivox")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from spiritlm.text_tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("cont")
    train_sentencepiece([t for _, t, _ in synthetic_utterances(60)] + ["the cat sat on the mat"] * 3,
                        root / "tok", vocab_size=300)
    cfg = load_config(ContinuousTrainConfig, "train/continuous_tiny.toml",
                      [f"model.tokenizer={root / 'tok'}", f"run_dir={root}", "continuous.placement=placeholder"])
    m = build_continuous(cfg)
    with torch.no_grad():  # an untrained but non-degenerate LM head
        m.lm.lm_head.weight.normal_(0, 0.5)
    return m.export_merged(root / "hf")


def test_wer_matches_a_known_value():
    # normalised: case and punctuation ignored; 1 substitution + 1 deletion over 6 words, 1 insertion over 2
    r = wer(["The cat sat on the mat.", "hello world"], ["the cat sit on mat", "hello big world"])
    assert (r["substitutions"], r["deletions"], r["insertions"], r["words"]) == (1, 1, 1, 8)
    assert r["wer"] == pytest.approx(3 / 8)


def test_batched_greedy_equals_one_at_a_time_and_beam_runs(model_dir):
    m = load_continuous(model_dir)
    wavs = [w for _, _, w in synthetic_utterances(3, seed=3)]
    batched = transcribe(m, wavs, batch_size=3, max_new_tokens=4)
    alone = [transcribe(m, [w], max_new_tokens=4)[0] for w in wavs]
    assert batched == alone and any(batched)
    beam = transcribe(m, wavs, batch_size=3, num_beams=3, max_new_tokens=4)
    assert len(beam) == 3 and beam == transcribe(m, wavs, batch_size=2, num_beams=3, max_new_tokens=4)


@pytest.mark.skipif(not LIBRIVOX.is_dir(), reason="../shared/data/real_speech/librivox is absent (real speech)")
def test_asr_on_real_librivox_speech(model_dir):
    m = load_continuous(model_dir)
    items = text_dir_items(LIBRIVOX)
    res = evaluate_asr(m, items + [("broken", "../shared/data/real_speech/malformed_audio/awful.wav", "x")],
                       max_new_tokens=4, progress=False)
    assert res["n"] == 5 and list(res["skipped"]) == ["broken"]
    assert res["words"] == sum(len(t.split()) for _, _, t in items)
    assert res["wer"] >= 0.9  # an untrained model: nearly every word wrong, counted by jiwer


def test_asr_command_on_a_folder(model_dir, tmp_path, capsys):
    from spiritlm.cli import main

    for k, (_, text, w) in enumerate(synthetic_utterances(2, seed=8)):
        sf.write(tmp_path / f"u{k}.wav", w, 16000)
        (tmp_path / f"u{k}.txt").write_text(text)
    assert main(["continuous", "wer", "--model", str(model_dir), "--dir", str(tmp_path), "--max-new-tokens", "3",
                 "--out", str(tmp_path / "wer.json")]) == 0
    assert "utterances" in capsys.readouterr().out and (tmp_path / "wer.json").is_file()


def test_scorer_equals_a_plain_forward_per_request(model_dir, tmp_path):
    m = load_continuous(model_dir)
    wav = tmp_path / "ctx.wav"
    sf.write(wav, synthetic_utterances(1, seed=9)[0][2], 16000)
    reqs = [Request([("speech", str(wav))], [("text", "one two")]),
            Request([("speech", str(wav))], [("text", "three")]),
            Request([("text", "one")], [("text", "two six")])]
    got = ContinuousScorer(m, batch_size=3).score(reqs)
    # reference: unpadded, one request at a time, placeholder layout <BOS> audio text
    emb = m.audio_embeddings({"wavs": [sf.read(wav, dtype="float32")[0]]})[0][0]
    table = m.lm.get_input_embeddings()
    for r, sc in zip(reqs, got):
        cont = m.tok.encode(r.continuation[0][1])
        if r.context[0][0] == "speech":
            x = torch.cat([table(torch.tensor([m.tok.bos_id])), emb, table(torch.tensor(cont))])
        else:
            x = table(torch.tensor([m.tok.bos_id] + m.tok.encode("one") + cont))
        with torch.no_grad():
            lp = m.lm(inputs_embeds=x[None]).logits[0].log_softmax(-1)
        n = x.shape[0]
        ref = sum(lp[n - len(cont) - 1 + j, t].item() for j, t in enumerate(cont))
        assert sc.n_tokens == len(cont) and sc.logprob == pytest.approx(ref, abs=1e-4)
    with pytest.raises(ValueError, match="text continuations only"):
        ContinuousScorer(m).score([Request([("text", "one")], [("speech", str(wav))])])


def test_suite_scores_storycloze_s2t_with_continuous_context(model_dir, tmp_path):
    from spiritlm.eval.suite import EvalConfig, run_suite

    cross = tmp_path / "data" / "sc" / "cross"
    cross.mkdir(parents=True)
    for k, (_, text, w) in enumerate(synthetic_utterances(3, seed=4)):
        for part in ("mutual", "correct", "incorrect"):
            sf.write(cross / f"{k}_{part}.wav", w, 16000)
        (cross / f"{k}_mutual.txt").write_text(text)
        (cross / f"{k}_correct.txt").write_text("one two")
        (cross / f"{k}_incorrect.txt").write_text("six six six")
    import json

    asr = tmp_path / "data" / "asr.jsonl"
    asr.write_text("".join(json.dumps({"id": f"a{k}", "audio_path": f"sc/cross/{k}_mutual.wav", "text": "one two"})
                           + "\n" for k in range(2)))
    cfg = load_config(EvalConfig, None, [f"model={model_dir}", f"output_dir={tmp_path / 'out'}",
                                         f"data_root={tmp_path / 'data'}", "storycloze.cross=sc/cross",
                                         "storycloze.settings=[T, S, T2S, S2T]", "device=cpu",
                                         "fewshot.asr_manifest=asr.jsonl", "fewshot.asr_max_new_tokens=3"])
    out = run_suite(cfg)
    sc = out["results"]["storycloze"]
    assert set(sc) == {"T", "S2T"}  # speech continuations are skipped for a continuous-input model
    assert sc["S2T"]["n_pairs"] == 3 and 0.0 <= sc["S2T"]["accuracy"] <= 1.0
    assert all(np.isfinite(it["good_sum"]) for it in sc["S2T"]["items"])
    asr_res = out["results"]["asr"]["ASR"]
    assert asr_res["n"] == 2 and asr_res["shots"] == 0 and asr_res["wer"] >= 0
    # the comparison table reads the eval folder: WER and S->T accuracy with bootstrap CIs
    from spiritlm.models.continuous.compare import summarize, table

    row = summarize(tmp_path / "out")
    assert row["storycloze"]["n"] == 3 and row["asr"]["n"] == 2
    assert row["asr"]["wer"] == pytest.approx(asr_res["wer"])
    lo, hi = row["storycloze"]["ci95"]
    assert lo <= row["storycloze"]["accuracy"] <= hi
    assert "| continuous |" in table({"continuous": row})
