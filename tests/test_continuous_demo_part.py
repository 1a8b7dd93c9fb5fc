"""``spiritlm demo --part continuous`` on a tiny demo context: SpeechLLM- and Tiny-Audio-style
models train from the context's start / tokenizer / HuBERT / utterances through cached steps,
are evaluated on the context's draws, and the table puts them beside the unit model with paired
CIs; a rerun is cached. Plus the WER pairing and the table's numbers on hand-made items."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from spiritlm.config import ConfigError
from spiritlm.demo.main import DemoConfig
from spiritlm.demo.parts import DemoContext
from spiritlm.models.continuous.compare import paired_wer
from spiritlm.models.continuous.data import synthetic_utterances
from spiritlm.demo.continuous_table import model_row
from spiritlm.pipeline import Pipeline


def _write_cross(root, task, utts, seed):
    cross = root / task / "cross"
    cross.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for k, (_, text, w) in enumerate(utts):
        sf.write(cross / f"{k}_mutual.wav", w, 16000)
        (cross / f"{k}_mutual.txt").write_text(text)
        right, wrong = text.split()[0], ["one", "six"][int(rng.integers(0, 2))]
        for part, t in (("correct", f"{right} {right}"), ("incorrect", f"{wrong} two two")):
            sf.write(cross / f"{k}_{part}.wav", w, 16000)
            (cross / f"{k}_{part}.txt").write_text(t)


def _unit_items(path, n, seed, asr=None):
    rng = np.random.default_rng(seed)
    lines = [{"task": t, "setting": s, "id": str(k), "score": float(rng.integers(0, 2))}
             for t in ("storycloze", "topic_storycloze") for s in ("S2T", "T2S") for k in range(n)]
    lines += [{"task": "asr", "setting": "ASR", **a} for a in asr or []]
    path.mkdir(parents=True)
    (path / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture()
def ctx(tmp_path):
    from transformers import HubertModel, LlamaForCausalLM

    from spiritlm.manifest import Utterance, write_manifest
    from spiritlm.text_tokenizer import train_sentencepiece
    from spiritlm.tokenizer.hubert import tiny_hubert_config
    from spiritlm.components.config import TinyModelConfig
    from spiritlm.models.unit_lm.model import tiny_llama_config

    utts = synthetic_utterances(16, seed=1)
    train_sentencepiece([t for _, t, _ in synthetic_utterances(60)] + ["one two three"] * 3, tmp_path / "tok",
                        vocab_size=300)
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok" / "tokenizer.model")).get_piece_size()
    torch.manual_seed(0)
    lm = LlamaForCausalLM(tiny_llama_config(TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                            num_attention_heads=2, num_key_value_heads=2,
                                                            max_position_embeddings=256), vocab_size=vocab))
    lm.save_pretrained(tmp_path / "start" / "hf")
    HubertModel(tiny_hubert_config(hidden=32, layers=1, heads=2, ffn=64, conv_dim=16)).save_pretrained(
        tmp_path / "stok" / "hubert")
    (tmp_path / "audio").mkdir()
    rows = []
    for i, (uid, text, w) in enumerate(utts):
        sf.write(tmp_path / "audio" / f"{uid}.wav", w, 16000)
        rows.append(Utterance(uid, f"audio/{uid}.wav", w.size / 16000, 16000, text, "tone",
                              split="heldout" if i >= 12 else "train"))
    write_manifest(tmp_path / "manifest.jsonl", rows)
    draws = {}
    for label, seed in (("dev", 0), ("test1", 11), ("test2", 12)):
        root = tmp_path / "draws" / label
        for task in ("storycloze", "topic_storycloze"):
            _write_cross(root, task, synthetic_utterances(4, seed=seed), seed)
        (root / "COMPLETE.json").write_text("{}")
        draws[label] = {"root": str(root), "seed": seed, "label": label}
    dev_asr = [{"id": f"a{k}", "audio_path": f"../storycloze/cross/{k}_mutual.wav", "text": t}
               for k, (_, t, _) in enumerate(synthetic_utterances(4, seed=0))]
    (tmp_path / "draws" / "dev" / "fewshot").mkdir()
    (tmp_path / "draws" / "dev" / "fewshot" / "asr_test.jsonl").write_text(
        "".join(json.dumps(a) + "\n" for a in dev_asr))
    unit_asr = [{"id": a["id"], "ref": a["text"], "hyp": "one two"} for a in dev_asr]
    evals = {"interleaved": {label: [] for label in draws}}
    for s in (0, 1):
        for label in draws:
            d = tmp_path / f"eval_unit_{s}_{label}"
            _unit_items(d, 4, seed=10 * s + len(label), asr=unit_asr if label == "dev" else None)
            evals["interleaved"][label].append({"dir": str(d)})
    cfg = DemoConfig(out_dir=str(tmp_path / "out"), train_overrides=["steps=4"],
                     eval_overrides=["storycloze.text=storycloze/cross", "topic_storycloze.text=topic_storycloze/cross",
                                     "device=cpu"])
    part = ["heldout_max_new_tokens=6", "train_overrides=[data.seq_len=128, micro_batch_size=2, global_batch_size=2, "
            "deepspeed.precision=fp32, checkpoint.every=0, log.every=1, log.progress_bar=false, log.plots=false, "
            "log.tensorboard=false, optim.warmup_steps=0]"]
    out = tmp_path / "out"
    out.mkdir()
    unit_run = tmp_path / "train_interleaved" / "run"
    unit_run.mkdir(parents=True)
    return DemoContext(cfg=cfg, out=out, pipe=Pipeline(out), corpus={"manifest": str(tmp_path / "manifest.jsonl")},
                       text_tok={"dir": str(tmp_path / "tok")}, speech_tok={"dir": str(tmp_path / "stok")},
                       manifest=str(tmp_path / "manifest.jsonl"), shards={}, start={"hf": str(tmp_path / "start" / "hf")},
                       seeds=[0, 1], models={"interleaved": [{"hf": str(tmp_path / "start" / "hf"),
                                                              "run_dir": str(unit_run)}] * 2},
                       draws=draws, units={}, evals=evals, comparison={}, part_overrides={"continuous": part})


@pytest.mark.slow
def test_part_trains_evaluates_and_tables_both_styles(ctx):
    """~1 min on a loaded machine; the fast test below runs one single-stage style end to end."""
    from spiritlm.demo.continuous import run

    res = run(ctx)
    assert set(res["models"]) == {"speechllm", "tinyaudio_stage1", "tinyaudio"}
    rows = json.loads(open(res["json"]).read())["rows"]
    assert list(rows)[0].startswith("interleaved units")
    sl, ta, s1 = rows["speechllm"], rows["tinyaudio"], rows["tinyaudio_stage1"]
    # equal steps: SpeechLLM 4; Tiny Audio 2 (projector) + 2 (LoRA); the stage-1 row has its 2
    assert sl["steps"] == ta["steps"] == 4 and s1["steps"] == 2
    assert sl["params"]["parts"]["lora"]["trainable"] > 0 and sl["params"]["parts"]["lm"]["trainable"] == 0
    assert s1["params"]["parts"]["lora"]["total"] == 0 and s1["params"]["parts"]["encoder"]["trainable"] == 0
    for r in (sl, ta, s1):
        tsc = r["topic_storycloze/S2T"]
        assert tsc["n"] == 8 and tsc["ci95"][0] <= tsc["accuracy"] <= tsc["ci95"][1]  # 2 test draws x 4
        assert tsc["vs_unit"]["n"] == 8 and tsc["vs_unit"]["runs"] == [1, 2]
        assert r["asr_dev"]["n"] == 4 and r["asr_dev"]["runs"] == [1, 2]
        assert r["asr_heldout"]["n"] == 4  # the 4 held-out utterances of the manifest
        assert "topic_storycloze/T2S" not in r and r["draws"] == ["test1", "test2"]
    # the tinyaudio stage 2 started from stage 1's projector, in the part's own cached steps
    cfg = ctx.out / "continuous_train_tinyaudio" / "run" / "config.yaml"
    assert "continuous_train_tinyaudio_stage1" in cfg.read_text()
    md = open(res["table"]).read()
    assert "| speechllm |" in md and "| tinyaudio |" in md and "test draws pooled" in md
    # the features were computed once, in their own step, for every style
    assert list((ctx.out / "continuous_features" / "features").glob("features-*.parquet"))
    before = {p: p.stat().st_mtime for p in ctx.out.glob("continuous_*/STEP_DONE.json")}
    ctx.pipe = Pipeline(ctx.out)
    assert run(ctx)["table"] == res["table"]  # every step cached
    assert {p: p.stat().st_mtime for p in ctx.out.glob("continuous_*/STEP_DONE.json")} == before


def test_part_one_style_end_to_end_and_cached(ctx):
    from spiritlm.demo.continuous import run

    ctx.part_overrides["continuous"].append("styles=[speechllm_frozen]")
    del ctx.draws["test2"]
    res = run(ctx)
    assert set(res["models"]) == {"speechllm_frozen"}
    r = json.loads(open(res["json"]).read())["rows"]["speechllm_frozen"]
    assert r["params"]["parts"]["lora"]["total"] == 0 and r["params"]["parts"]["lm"]["trainable"] == 0
    assert r["params"]["trainable"] == r["params"]["parts"]["projector"]["trainable"] > 0
    assert r["topic_storycloze/S2T"]["vs_unit"]["n"] == 4 and r["draws"] == ["test1"]
    assert r["asr_dev"]["n"] == 4 and r["asr_heldout"]["n"] == 4
    ctx.pipe = Pipeline(ctx.out)
    run(ctx)
    assert all(s.cached for s in ctx.pipe.results)


def test_bad_part_settings_say_the_fix(ctx):
    from spiritlm.demo.continuous import run

    ctx.part_overrides = {"continuous": ["styles=[wav2vec]"]}
    with pytest.raises(ConfigError, match="styles"):
        run(ctx)
    ctx.part_overrides = {"continuous": ["stage1_share=1.0"]}
    with pytest.raises(ConfigError, match="stage1_share"):
        run(ctx)


def test_paired_wer_averages_seeds_and_pairs_utterances():
    a = [[{"id": "1", "ref": "a b c d", "hyp": "a b c d"}, {"id": "2", "ref": "e f", "hyp": "e x"}]]
    b = [[{"id": "1", "ref": "a b c d", "hyp": "a"}, {"id": "2", "ref": "e f", "hyp": "e f"}],
         [{"id": "1", "ref": "a b c d", "hyp": "a b"}, {"id": "2", "ref": "e f", "hyp": "e f"},
          {"id": "3", "ref": "only one run", "hyp": ""}]]
    r = paired_wer(a, b)
    assert r["n"] == 2 and r["words"] == 6  # utterance 3 is not in every run
    assert r["wer_a"] == pytest.approx(1 / 6) and r["wer_b"] == pytest.approx(2.5 / 6)
    assert r["diff"] == pytest.approx(-1.5 / 6)
    assert r["ci95"][0] <= r["diff"] <= r["ci95"][1]
    assert paired_wer(a, b) == r  # seeded bootstrap


def test_model_row_pools_test_draws_against_unit_seeds():
    def items(scores):
        return [{"task": "topic_storycloze", "setting": "S2T", "id": str(k), "score": s} for k, s in enumerate(scores)]

    mine = {"test1": [items([1, 1, 0, 1])], "test2": [items([1, 0])]}
    unit = {"test1": [items([0, 1, 0, 1]), items([1, 1, 0, 0])], "test2": [items([0, 0]), items([0, 1])]}
    r = model_row(mine, unit, ["test1", "test2"])
    t = r["topic_storycloze/S2T"]
    assert t["n"] == 6 and t["accuracy"] == pytest.approx(4 / 6)
    v = t["vs_unit"]
    assert v["acc_b"] == pytest.approx((0.5 + 1 + 0 + 0.5 + 0 + 0.5) / 6)  # unit: each item averaged over seeds
    assert v["diff"] == pytest.approx(4 / 6 - 2.5 / 6)
