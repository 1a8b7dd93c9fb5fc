"""The demo part ``backbone``: the demo's models rebuilt on a byte-level BPE of the same size --
only the tokenizer (and so the shards, the text start and the document-start id) differ -- and
its tables: BPE vs SentencePiece per variant, and interleaving within each tokenizer, test draws
pooled, dev apart."""

import json
from pathlib import Path

import pytest

from spiritlm.config import ConfigError, dotted, to_dict
from spiritlm.demo import backbone
from spiritlm.demo.main import DemoConfig, train_config
from spiritlm.demo.parts import PARTS, DemoContext
from spiritlm.eval.testing import two_test_draws


def _ctx(tmp_path, overrides=(), seeds=(0,), text_corpus=""):
    return DemoContext(cfg=DemoConfig(out_dir=str(tmp_path), text_vocab_size=300), out=tmp_path, pipe=None,
                       corpus={"text_corpus": text_corpus}, text_tok={"dir": "tok"}, speech_tok={},
                       manifest="m.jsonl", shards={"dir": "shards"}, start={"hf": "start/hf"}, seeds=list(seeds),
                       models={}, draws={}, units={}, evals={}, comparison={},
                       part_overrides={"backbone": list(overrides)})


def test_registered_and_config_errors_say_the_fix(tmp_path):
    assert PARTS["backbone"] == "spiritlm.demo.backbone:run"
    assert backbone.part_config(_ctx(tmp_path, seeds=(0, 1))).seeds == [0]
    assert backbone.part_config(_ctx(tmp_path, ["variants=[interleaved]"])).variants == ["interleaved"]
    with pytest.raises(ConfigError, match="no SentencePiece model"):
        backbone.part_config(_ctx(tmp_path, ["seeds=[4]"]))
    with pytest.raises(ConfigError, match="use some of"):
        backbone.part_config(_ctx(tmp_path, ["variants=[pairs]"]))


def test_bpe_tokenizer_step_and_models_differ_only_in_the_tokenizer(tmp_path):
    from spiritlm.text_tokenizer import SpiritTokenizer

    corpus = tmp_path / "text.jsonl"
    words = "the cat sat on the mat while a small bird sang in the old garden every single morning".split()
    corpus.write_text("".join(json.dumps({"text": " ".join(words[i:] + words[:i])}) + "\n" for i in range(60)))
    ctx = _ctx(tmp_path, text_corpus=str(corpus))
    (tmp_path / "tok").mkdir()
    tok = backbone._bpe_tokenizer_step(ctx, "llama3", tmp_path / "tok")
    loaded = SpiritTokenizer.from_pretrained(tok["dir"])
    assert loaded.sp is None and (Path(tok["dir"]) / "tokenizer.json").is_file()
    assert tok["bos_id"] == loaded.bos_id == loaded.text.piece_id("<|begin_of_text|>")
    assert tok["base_vocab_size"] == loaded.layout.text_id  # [Text] after the reserved specials
    ref = dotted(to_dict(train_config(ctx.cfg, "interleaved", ctx.shards, ctx.text_tok, tmp_path / "x", ctx.start, 0)))
    got = dotted(to_dict(backbone._config(ctx, "interleaved", {"dir": "shards_bpe"}, tok, tmp_path / "x",
                                          {"hf": "start_bpe/hf"}, 0)))
    assert {k for k in ref if ref[k] != got.get(k)} == {"model.tokenizer", "model.checkpoint", "data.bos_id",
                                                       "data.sources"}
    assert [s["path"].replace("shards_bpe", "shards") for s in got["data.sources"]] == \
        [s["path"] for s in ref["data.sources"]]


def test_tables_pool_the_test_draws(tmp_path):
    right, half, wrong = [1] * 10, [1, 0] * 5, [0] * 10
    evals, draws = two_test_draws(tmp_path, {"interleaved": right, "no_interleaving": wrong, "interleaved_bpe": half,
                                             "no_interleaving_bpe": wrong})
    (tmp_path / "cmp").mkdir()
    out = backbone._compare_step(evals, draws, [0], ["interleaved", "no_interleaving"], "llama3", tmp_path / "cmp")
    tables = json.loads(Path(out["json"]).read_text())["tables"]
    sp_bpe = tables["interleaved_sp_vs_bpe"]["pooled"]["topic_storycloze/T2S"]
    assert sp_bpe["n"] == 20 and sp_bpe["acc_a"] == 1.0 and sp_bpe["acc_b"] == 0.5  # both test draws
    inter_bpe = tables["interleaving_bpe"]["pooled"]["topic_storycloze/T2S"]
    assert inter_bpe["acc_a"] == 0.5 and inter_bpe["acc_b"] == 0.0
    md = Path(out["markdown"]).read_text()
    assert "| topic_storycloze/T2S | 20 | 100.0 | 50.0 (-50.0;" in md
    assert "## Interleaving, BPE" in md and "## Interleaving, SentencePiece" in md
