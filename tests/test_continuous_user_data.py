"""A user's own data: real read speech (LibriVox, ../shared/data/real_speech) imported with
``spiritlm prepare manifest folder``, then the SpeechLLM and the two Tiny-Audio recipes trained on
that manifest with ``spiritlm train`` (sized down with ``--set``), and their WER read with
``spiritlm continuous wer``. A broken file in the user's folder is a counted skip."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from spiritlm.cli import main

LIBRIVOX = Path("../shared/data/real_speech/librivox")
BROKEN = Path("../shared/data/real_speech/malformed_audio/awful.wav")
pytestmark = pytest.mark.skipif(not LIBRIVOX.is_dir(), reason="../shared/data/real_speech/librivox is absent "
                                "(real speech; CI has shared/ beside the checkout)")

# the recipes as they are, shrunk to seconds: a tiny LM (no checkpoint), 3 steps, fp32
SMALL = ["steps=3", "micro_batch_size=1", "global_batch_size=1", "data.seq_len=256", "deepspeed.precision=fp32",
         "checkpoint.every=0", "log.every=1", "log.progress_bar=false", "log.plots=false", "log.tensorboard=false",
         "optim.warmup_steps=0", "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64",
         "model.tiny.num_hidden_layers=1", "model.tiny.num_attention_heads=2", "model.tiny.num_key_value_heads=2",
         "model.tiny.max_position_embeddings=512"]


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    from transformers import HubertModel

    from spiritlm.text_tokenizer import train_sentencepiece
    from spiritlm.tokenizer.hubert import tiny_hubert_config

    root = tmp_path_factory.mktemp("user")
    corpus = root / "my_corpus"
    shutil.copytree(LIBRIVOX, corpus, ignore=shutil.ignore_patterns("*.json"))
    shutil.copy(BROKEN, corpus / "broken.wav")  # a user's folder holds a bad file
    (corpus / "broken.txt").write_text("this audio is broken\n")
    texts = [p.read_text() for p in sorted(corpus.glob("*.txt"))]
    train_sentencepiece(texts * 4, root / "tok", vocab_size=300)
    torch.manual_seed(0)
    HubertModel(tiny_hubert_config(hidden=32, layers=1, heads=2, ffn=64, conv_dim=16)).save_pretrained(
        root / "speech_tokenizer" / "hubert")
    return root


def _manifest(user, capsys) -> Path:
    m = user / "manifest.jsonl"
    if not m.is_file():
        assert main(["prepare", "manifest", "folder", str(user / "my_corpus"), "-o", str(m)]) == 0
    return m


def _train(recipe, user, run, extra):
    assert main(["train", recipe, "--set", f"run_dir={user / run}", "--set", f"model.tokenizer={user / 'tok'}",
                 "--set", f"continuous.data.manifests=[{_manifest_path(user)}]",
                 *[a for o in SMALL + extra for a in ("--set", o)]]) == 0
    return user / run


def _manifest_path(user):
    return user / "manifest.jsonl"


def test_manifest_of_a_users_folder_skips_the_broken_file(user, capsys):
    from spiritlm.manifest import read_manifest

    utts = read_manifest(_manifest(user, capsys))
    assert len(utts) == 5 and all(u.split == "train" for u in utts)  # the broken wav is dropped, reported
    assert "sense_and_sensibility_01_austen_64kb-0870" in {u.id for u in utts}


def test_tinyaudio_two_stages_and_speechllm_on_user_data(user, capsys, tmp_path):
    _manifest(user, capsys)
    enc = f"continuous.encoder.path={user / 'speech_tokenizer'}"
    s1 = _train("train/continuous_tinyaudio_stage1.toml", user, "ta1", [enc])
    counts = json.loads((s1 / "param_counts.json").read_text())
    assert counts["projector"]["trainable"] > 0 and counts["lm"]["trainable"] == counts["encoder"]["trainable"] == 0
    feats = next((s1 / "features").iterdir())
    s2 = _train("train/continuous_tinyaudio_stage2.toml", user, "ta2",
                [enc, f"continuous.projector.checkpoint={s1 / 'parts' / 'projector.safetensors'}",
                 f"continuous.data.features_dir={feats}"])
    counts = json.loads((s2 / "param_counts.json").read_text())
    assert counts["lora"]["trainable"] > 0 and counts["lm"]["trainable"] == 0
    assert (s2 / "parts" / "adapter" / "adapter_model.safetensors").is_file()
    # SpeechLLM: its CTC conformer over filterbanks, trained with the LM's LoRA
    sl = _train("train/continuous_speechllm.toml", user, "sl",
                ["continuous.encoder.conformer.dim=32", "continuous.encoder.conformer.layers=1",
                 "continuous.encoder.conformer.heads=2"])
    counts = json.loads((sl / "param_counts.json").read_text())
    assert counts["encoder"]["trainable"] > 0 and counts["ctc"]["trainable"] > 0 and counts["lora"]["trainable"] > 0
    losses = [json.loads(x)["loss"] for x in (sl / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(x == x for x in losses)
    # WER of each on the user's utterances, from the command line
    for run in (s2, sl):
        out = tmp_path / f"{run.name}.json"
        assert main(["continuous", "wer", "--model", str(run / "hf"), "--manifest", str(_manifest_path(user)), "--split", "train",
                         "--max-new-tokens", "4", "--out", str(out)]) == 0
        res = json.loads(out.read_text())
        assert res["n"] == 5 and res["words"] > 50 and res["wer"] >= 0.0
