"""Pretrained encoders of the continuous model: our HuBERT (a speech-tokenizer dir's hubert/)
and any local HF speech encoder (AutoModel) read the same frames from the same checkpoint."""

import numpy as np
import pytest
import torch

from spiritlm.config import ConfigError
from spiritlm.models.continuous.config import EncoderConfig
from spiritlm.models.continuous.encoders import build_encoder


@pytest.fixture(scope="module")
def hubert_dir(tmp_path_factory):
    from transformers import HubertModel

    from spiritlm.tokenizer.hubert import tiny_hubert_config

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("speech_tokenizer")
    HubertModel(tiny_hubert_config(hidden=32, layers=2, heads=2, ffn=64, conv_dim=16)).save_pretrained(root / "hubert")
    return root


def test_hubert_and_hf_encoders_agree(hubert_dir):
    rng = np.random.default_rng(0)
    wavs = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (8000, 4800)]
    hub = build_encoder(EncoderConfig(kind="hubert", path=str(hubert_dir), layer=2, dim=32, frame_rate=50.0))
    hf = build_encoder(EncoderConfig(kind="hf", path=str(hubert_dir / "hubert"), layer=2))
    assert hub.dim == hf.dim == 32 and hub.frame_rate == hf.frame_rate == 50.0
    assert not any(p.requires_grad for p in hub.parameters()) and not any(p.requires_grad for p in hf.parameters())
    with torch.no_grad():
        xa, la = hub(wavs)
        xb, lb = hf(wavs)
    assert la.tolist() == lb.tolist() == [int(hub.num_frames(8000)), int(hub.num_frames(4800))]
    for i, n in enumerate(la.tolist()):
        assert torch.allclose(xa[i, :n], xb[i, :n], atol=1e-4)


def test_hf_encoder_rejects_non_waveform_models(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="takes no raw waveform"):
        build_encoder(EncoderConfig(kind="hf", path=str(tmp_path)))


def test_hubert_width_mismatch(hubert_dir):
    with pytest.raises(ConfigError, match="set dim=32"):
        build_encoder(EncoderConfig(kind="hubert", path=str(hubert_dir), dim=768))
