"""The CPU speech-tokenizer path: each chunk alone and unpadded, identical to one file at a time
and to HF ``HubertModel`` bit for bit; the padded GPU path still agrees; the bench runs at toy size."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import HubertModel

    from spiritlm.tokenizer.hubert import tiny_hubert_config

    torch.manual_seed(0)
    return HubertModel(tiny_hubert_config(hidden=32, layers=3, heads=2, ffn=64, conv_dim=16, hop=640)).eval()


def _wavs(seed: int = 0, lens=(40000, 5000, 1500, 23456, 16000)):
    rng = np.random.default_rng(seed)
    return [0.1 * rng.standard_normal(n).astype(np.float32) for n in lens]


def test_cpu_batched_equals_one_at_a_time_and_hf_exactly(tiny_model):
    from spiritlm.tokenizer.hubert import HubertFeaturizer
    from spiritlm.tokenizer.kmeans import KMeansQuantizer

    wavs = _wavs()
    feat = HubertFeaturizer(tiny_model, layer=2, device="cpu")
    assert not feat.padded_batches  # CPU default: every chunk alone
    many = feat.features_many(wavs)
    rng = np.random.default_rng(1)
    quant = KMeansQuantizer(np.concatenate(many)[rng.choice(sum(map(len, many)), 50, replace=False)])
    for w, f in zip(wavs, many):
        np.testing.assert_array_equal(f, feat.features(w))
        np.testing.assert_array_equal(quant(f), quant(feat.features(w)))
        with torch.no_grad():  # plain HF, all layers, hidden states: bit for bit
            ref = tiny_model(torch.from_numpy(w)[None], output_hidden_states=True).hidden_states[2][0].numpy()
        np.testing.assert_array_equal(f, ref)
    assert len(tiny_model.encoder.layers) == 3  # the shared model is not cut


def test_padded_batches_agree_with_unpadded(tiny_model):
    from spiritlm.tokenizer.hubert import HubertFeaturizer

    wavs = _wavs(3)
    alone = HubertFeaturizer(tiny_model, layer=3, device="cpu").features_many(wavs)
    padded = HubertFeaturizer(tiny_model, layer=3, device="cpu", padded_batches=True,
                              batch_samples=200_000).features_many(wavs)
    for a, b in zip(alone, padded):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_several_layers_one_pass_per_chunk_on_cpu(tiny_model):
    from spiritlm.tokenizer.hubert import HubertFeaturizer

    wavs = _wavs(4, (40000, 5000, 23456))
    feat = HubertFeaturizer(tiny_model, layer=1, device="cpu")
    calls = []
    hook = tiny_model.feature_extractor.conv_layers[0].conv.register_forward_hook(lambda *a: calls.append(1))
    try:
        both = feat.features_many_at(wavs, [0, 1, 3])
    finally:
        hook.remove()
    assert len(calls) == len(wavs)  # one front-end pass per file for all three layers
    for layer in (0, 1, 3):
        alone = HubertFeaturizer(tiny_model, layer=layer, device="cpu").features_many(wavs)
        for a, b in zip(both[layer], alone):
            np.testing.assert_array_equal(a, b)


def test_tokenizer_bench_runs_at_toy_size(capsys):
    from spiritlm.tokenizer.bench import bench_tokenizer

    r = bench_tokenizer(seconds=4.0, n_files=3, size="tiny", rounds=2, min_round_s=0.05)
    assert r["unit_agreement"] == 1.0 and r["ratio"]["median"] > 0
    out = capsys.readouterr().out
    assert "ratio ours / naive" in out and "load avg" in out
