"""Model: speech vocabulary at the exact ids, new-row init, RoPE override, vocab checks, loading a
HF LLaMA checkpoint directory."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from spiritlm.config import ConfigError  # noqa: E402
from spiritlm.components.config import ModelConfig, TinyModelConfig  # noqa: E402
from spiritlm.models.unit_lm.model import build_model, rope_theta_of, tiny_llama_config  # noqa: E402
from spiritlm.vocab import SPIRITLM, VocabLayout  # noqa: E402

TINY = TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64, base_vocab_size=32000)


def test_release_ids_and_padded_rows():
    model, layout, _ = build_model(ModelConfig(tiny=TINY))
    assert layout == SPIRITLM
    assert (layout.text_id, layout.speech_id) == (32000, 32001)
    assert layout.streams["hubert"].offset == 32002 and layout.streams["pitch"].offset == 32503
    assert layout.streams["style"].offset == 32567 and layout.vocab_size == 32667
    assert model.get_input_embeddings().weight.shape[0] == 32768
    assert model.get_output_embeddings().weight.shape[0] == 32768
    assert model.config.vocab_size == 32768
    exact, _, _ = build_model(ModelConfig(tiny=TINY, vocab_rows="exact"))
    assert exact.get_input_embeddings().weight.shape[0] == 32667


def test_new_rows_mean_plus_noise_and_old_rows_kept():
    base = tiny_llama_config(TINY)
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    ref = LlamaForCausalLM(base)
    model, layout, _ = build_model(ModelConfig(tiny=TINY, noise_std=0.01))
    w = model.get_input_embeddings().weight.detach()
    torch.testing.assert_close(w[:32000], ref.get_input_embeddings().weight.detach())
    mean = ref.get_input_embeddings().weight.detach().mean(0)
    new = w[32000:]
    assert (new - mean).abs().max() < 0.1 and (new - mean).std().item() == pytest.approx(0.01, rel=0.1)
    assert not torch.equal(new[0], new[1])  # noise makes rows distinct
    normal, _, _ = build_model(ModelConfig(tiny=TINY, new_rows_init="normal", init_std=0.05))
    assert normal.get_input_embeddings().weight[32000:].std().item() == pytest.approx(0.05, rel=0.1)


def test_rope_theta_override():
    model, _, _ = build_model(ModelConfig(tiny=TINY, rope_theta=100000.0))
    assert rope_theta_of(model.config) == 100000.0
    inv = model.model.rotary_emb.inv_freq
    dim = TINY.hidden_size // TINY.num_attention_heads
    assert inv[1].item() == pytest.approx(100000.0 ** (-2 / dim), rel=1e-5)


def test_load_hf_checkpoint_dir_and_vocab_checks(tmp_path):
    from transformers import LlamaForCausalLM

    from spiritlm.text_tokenizer import SpiritTokenizer, train_sentencepiece

    texts = [f"a speech text model number {i} reads {i * 3} words" for i in range(200)]
    train_sentencepiece(texts, tmp_path / "tok", vocab_size=320)
    ck = tmp_path / "llama"
    cfg = tiny_llama_config(TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=64), vocab_size=320)
    torch.manual_seed(1)
    LlamaForCausalLM(cfg).save_pretrained(ck)
    SpiritTokenizer(tmp_path / "tok" / "tokenizer.model").save_pretrained(ck)
    model, layout, _ = build_model(ModelConfig(checkpoint=str(ck), rope_theta=100000.0))
    assert layout.base_vocab_size == 320 and layout.text_id == 320
    assert model.config.vocab_size == VocabLayout(base_vocab_size=320).padded_vocab_size()
    assert rope_theta_of(model.config) == 100000.0
    # an already-extended checkpoint is kept as is
    model.save_pretrained(tmp_path / "spirit")
    SpiritTokenizer(tmp_path / "tok" / "tokenizer.model").save_pretrained(tmp_path / "spirit")
    again, _, _ = build_model(ModelConfig(checkpoint=str(tmp_path / "spirit")))
    torch.testing.assert_close(again.get_input_embeddings().weight, model.get_input_embeddings().weight)
    # a checkpoint whose rows match neither the tokenizer nor the layout -> a clear error
    bad = tmp_path / "bad"
    LlamaForCausalLM(tiny_llama_config(TINY, vocab_size=500)).save_pretrained(bad)
    SpiritTokenizer(tmp_path / "tok" / "tokenizer.model").save_pretrained(bad)
    with pytest.raises(ConfigError, match="500 embedding rows"):
        build_model(ModelConfig(checkpoint=str(bad)))
    with pytest.raises(ConfigError, match="no config.json"):
        build_model(ModelConfig(checkpoint=str(tmp_path / "nowhere")))


def test_hf_mean_resizing_option():
    base = tiny_llama_config(TINY)
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    ref = LlamaForCausalLM(base).get_input_embeddings().weight.detach()
    model, _, _ = build_model(ModelConfig(tiny=TINY, new_rows_init="hf_mean"))
    w = model.get_input_embeddings().weight.detach()
    torch.testing.assert_close(w[:32000], ref)
    assert (w[32000:].mean(0) - ref.mean(0)).abs().max() < 0.01 and not torch.equal(w[32000], w[32001])
    again, _, _ = build_model(ModelConfig(tiny=TINY, new_rows_init="hf_mean"))
    torch.testing.assert_close(again.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_base_layout_trains_on_synthetic_documents(tmp_path):
    """``model.pitch_size=0 model.style_size=0`` (the Base layout) on the built-in synthetic
    documents used to stop with ``ValueError: high <= 0``."""
    from spiritlm.train.tiny import tiny_config
    from spiritlm.train.trainer import Trainer

    t = Trainer(tiny_config(str(tmp_path / "run"), ["model.pitch_size=0", "model.style_size=0", "steps=2"]))
    assert t.layout.vocab_size == 256 + 2 + 501 and t.rows == 768
    run = t.fit()
    import json

    summary = json.loads((run / "summary.json").read_text())
    shares = summary["mixture_tokens"]
    assert set(shares) == {"mix/synthetic-speech", "mix/synthetic-interleaved", "mix/synthetic-text"}
    assert all(abs(v - 1 / 3) < 0.1 for v in shares.values()) and summary["mixture_unit"] == "tokens"
    assert summary["attention_isolation"] == "position_ids"
