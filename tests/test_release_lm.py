"""The released Spirit LM checkpoints, Base and Expressive, load everywhere: evaluation, generation,
training continued from them, and the export.

Each test builds a tiny HF LLaMA directory laid out like a release from the model cards' facts:
32000 SentencePiece pieces (a small trained model grown with unused pieces, so every id is the
release's), the speech tokens as added tokens in ``tokenizer_config.json`` (no
``spiritlm_vocab.json``), 32512 embedding rows for Base ([Hu0..500] only) and 32768 for
Expressive, a transformers-4.x ``config.json`` (top-level ``rope_theta``) and ``pytorch_model.bin``
weights. Only the hidden sizes are tiny.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spiritlm.config import ConfigError  # noqa: E402
from spiritlm.eval.model import ModelDirError, load_model  # noqa: E402
from spiritlm.text_tokenizer import LAYOUT_FILE, SpiritTokenizer, pad_sentencepiece, train_sentencepiece  # noqa: E402
from spiritlm.vocab import RELEASED_ROWS, SPIRITLM, SPIRITLM_BASE  # noqa: E402

LAYOUTS = {"base": SPIRITLM_BASE, "expressive": SPIRITLM}
THETA = 100000.0
# The LlamaConfig fields transformers 4.x reads (its LlamaConfig.__init__ arguments, 4.36-4.46).
LEGACY_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range",
                 "rms_norm_eps", "use_cache", "bos_token_id", "eos_token_id", "pretraining_tp",
                 "tie_word_embeddings", "rope_theta", "rope_scaling", "attention_bias", "attention_dropout",
                 "mlp_bias", "torch_dtype", "model_type", "architectures")


@pytest.fixture(scope="module")
def sp_32000(tmp_path_factory) -> bytes:
    d = tmp_path_factory.mktemp("sp")
    texts = [f"the cat sat on the mat number {i} and read {i * 7} words aloud" for i in range(300)]
    train_sentencepiece(texts, d, vocab_size=320)
    return pad_sentencepiece(d / "tokenizer.model", 32000)


def make_release_dir(out: Path, which: str, sp_proto: bytes, rows: int | None = None, seed: int = 0) -> Path:
    """A released-checkpoint-like directory (see the module doc)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    layout = LAYOUTS[which]
    rows = rows or RELEASED_ROWS[which]
    tok = SpiritTokenizer(sp_proto, layout=layout)
    tok.save_pretrained(out)
    (out / LAYOUT_FILE).unlink()  # the release has no layout file: its added tokens say it all
    (out / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                            "unk_token": "<unk>"}))
    cfg = LlamaConfig(vocab_size=rows, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    # as the release writes them (transformers 4.x): top-level rope_theta, torch_dtype, .bin weights
    config = {k: v for k, v in cfg.to_dict().items() if k not in ("rope_parameters", "dtype")}
    config.update(rope_theta=THETA, rope_scaling=None, torch_dtype="float32", architectures=["LlamaForCausalLM"],
                  model_type="llama", transformers_version="4.36.2")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    return out


def _rope_theta(model) -> float:
    from spiritlm.models.unit_lm.model import rope_theta_of

    return rope_theta_of(model.config)


@pytest.mark.parametrize("which", ["base", "expressive"])
def test_released_layout_evaluates_and_generates(which, sp_32000, tmp_path):
    from spiritlm.eval.generate import generate
    from spiritlm.components.scoring import Request, Scorer

    d = make_release_dir(tmp_path / which, which, sp_32000)
    model, tok = load_model(d)
    layout = LAYOUTS[which]
    assert tok.layout == layout and model.get_input_embeddings().weight.shape[0] == RELEASED_ROWS[which]
    assert (tok.layout.text_id, tok.layout.speech_id, tok.layout.token_to_id("[Hu500]")) == (32000, 32001, 32502)
    if which == "expressive":
        assert tok.layout.token_to_id("[Pi0]") == 32503 and tok.layout.token_to_id("[St99]") == 32666
    assert _rope_theta(model) == THETA  # the 4.x config's top-level rope_theta is honoured
    # the HF tokenizer of the same directory gives the same ids
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(d)
    text = "[Text]the cat sat [Speech][Hu12][Hu500]"
    assert hf(text).input_ids == tok.encode(text)
    expressive = which == "expressive"
    units = {"hubert": [78, 42, 81, 159], "pitch": [13, 13, 3, 3], "style": [81] * 4}
    scorer = Scorer(model, tok, has_pitch=expressive, has_style=expressive)
    good, bad = scorer.score([Request([("text", "the cat")], [("speech", units)]),
                              Request([("text", "the cat")], [("text", "sat on the mat")])])
    assert math.isfinite(good.logprob) and math.isfinite(bad.logprob) and good.n_tokens > 0
    out = generate(model, tok, [("text", "the cat")], output_modality="speech", max_new_tokens=12, seed=0,
                   has_pitch=expressive, has_style=expressive)
    ids = [i for o in out for i in o.token_ids]
    assert ids and all(32002 <= i < layout.vocab_size for i in ids)  # only this layout's speech ids
    if not expressive:
        assert all(i <= 32502 for i in ids)  # Base: HuBERT units only
    text_out = generate(model, tok, [("speech", units if expressive else {"hubert": units["hubert"]})],
                        output_modality="text", max_new_tokens=8, seed=0,
                        has_pitch=expressive, has_style=expressive)
    assert all(i < 32000 for o in text_out for i in o.token_ids)


@pytest.mark.parametrize("which", ["base", "expressive"])
def test_training_continues_from_a_released_checkpoint_and_exports(which, sp_32000, tmp_path):
    from spiritlm.train.tiny import tiny_config
    from spiritlm.train.trainer import Trainer

    d = make_release_dir(tmp_path / "release", which, sp_32000)
    sizes = ["model.pitch_size=0", "model.style_size=0"] if which == "base" else []
    cfg = tiny_config(str(tmp_path / "run"), [f"model.checkpoint={d}", *sizes, "steps=2",
                                              "checkpoint.export_hf=true", "data.seq_len=64"])
    cfg.model.pad_multiple = 256
    t = Trainer(cfg)
    assert t.layout == LAYOUTS[which] and t.rows == RELEASED_ROWS[which]
    before = t.model.get_input_embeddings().weight.detach().clone()
    run = t.fit()
    # the released rows were continued, not re-initialised or resized
    ref = torch.load(d / "pytorch_model.bin", weights_only=True)["model.embed_tokens.weight"]
    torch.testing.assert_close(before, ref)
    model, tok = load_model(run / "hf")
    assert tok.layout == LAYOUTS[which] and model.config.vocab_size == RELEASED_ROWS[which]
    assert _rope_theta(model) == THETA
    # the export as a transformers 4.x loader reads it: the classic fields, RoPE from rope_theta
    cfg_json = json.loads((run / "hf" / "config.json").read_text())
    missing = [k for k in LEGACY_FIELDS if k not in cfg_json]
    assert not missing, missing
    assert cfg_json["rope_theta"] == THETA and cfg_json["rope_scaling"] is None
    assert cfg_json["vocab_size"] == RELEASED_ROWS[which] and cfg_json["use_cache"] is True
    head_dim = cfg_json["hidden_size"] // cfg_json["num_attention_heads"]
    inv_freq_4x = 1.0 / (cfg_json["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, inv_freq_4x)
    # the exported tokenizer files describe the same layout to HF's loader
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(run / "hf")) == LAYOUTS[which].vocab_size


def test_a_run_configured_for_the_other_layout_is_refused(sp_32000, tmp_path):
    from spiritlm.models.unit_lm.model import plan_model
    from spiritlm.train.tiny import tiny_config

    base = make_release_dir(tmp_path / "base", "base", sp_32000)
    cfg = tiny_config(str(tmp_path / "run"), [f"model.checkpoint={base}"])  # Expressive sizes by default
    with pytest.raises(ConfigError, match=r"Spirit LM Base .*model.pitch_size=0 model.style_size=0"):
        plan_model(cfg.model)
    expressive = make_release_dir(tmp_path / "expr", "expressive", sp_32000)
    cfg = tiny_config(str(tmp_path / "run2"), [f"model.checkpoint={expressive}", "model.pitch_size=0",
                                               "model.style_size=0"])
    with pytest.raises(ConfigError, match=r"Expressive .*model.pitch_size=64 model.style_size=100"):
        plan_model(cfg.model)


def test_vocabularies_that_fit_no_layout_are_refused(sp_32000, tmp_path):
    # rows beyond any padding of the layout: another vocabulary
    d = make_release_dir(tmp_path / "big", "expressive", sp_32000, rows=33000)
    with pytest.raises(ModelDirError, match=r"vocab_size=33000 is neither .*32667-32768"):
        load_model(d)
    # a tokenizer that lists Expressive tokens on a Base-sized model
    d = make_release_dir(tmp_path / "mixed", "expressive", sp_32000, rows=32512)
    with pytest.raises(ModelDirError, match=r"vocab_size=32512 .*needs 32667 ids.*disagree"):
        load_model(d)
    from spiritlm.models.unit_lm.model import plan_model
    from spiritlm.train.tiny import tiny_config

    with pytest.raises(ConfigError, match=r"32512 embedding rows .*expected"):
        plan_model(tiny_config(str(tmp_path / "run"), [f"model.checkpoint={d}"]).model)
    # added tokens at ids the layout does not have
    d = make_release_dir(tmp_path / "moved", "base", sp_32000)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    dec = cfg["added_tokens_decoder"]
    dec["32005"]["content"], dec["32006"]["content"] = dec["32006"]["content"], dec["32005"]["content"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match=r"\[Hu3\] has id 32006, the Base layout puts it at 32005"):
        load_model(d)


def test_rows_alone_tell_the_layout_when_no_tokens_are_listed(sp_32000, tmp_path):
    for which in ("base", "expressive"):
        d = make_release_dir(tmp_path / which, which, sp_32000)
        cfg = json.loads((d / "tokenizer_config.json").read_text())
        cfg["added_tokens_decoder"] = {k: v for k, v in cfg["added_tokens_decoder"].items() if int(k) < 32000}
        (d / "tokenizer_config.json").write_text(json.dumps(cfg))
        _, tok = load_model(d)
        assert tok.layout == LAYOUTS[which]


def test_extend_tokenizer_cli_writes_either_layout(sp_32000, tmp_path):
    from spiritlm.cli import main

    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "tokenizer.model").write_bytes(sp_32000)
    for which in ("base", "expressive"):
        assert main(["vocab", "extend-tokenizer", str(tmp_path / "llama"), "--out", str(tmp_path / which),
                     "--layout", which]) == 0
        assert SpiritTokenizer.from_pretrained(tmp_path / which).layout == LAYOUTS[which]
    ids = np.asarray(SpiritTokenizer.from_pretrained(tmp_path / "base").encode("[Speech][Hu500]"))
    assert ids.tolist() == [1, 32001, 32502]
