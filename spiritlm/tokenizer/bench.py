"""Tokenizer throughput: our batched path vs a naive loop, same units asserted.

``bench_tokenizer()`` builds a randomly initialised HuBERT (``size="base"``: the mHuBERT-base-25Hz
shape, 12 x 768, 8 conv layers, hop 640; ``"tiny"`` for a smoke run), 500 centroids, and a set of
files of varied length. It times

* batched: :class:`HubertFeaturizer` (length-bucketed, masked batches, only layers <= 11,
  inference_mode, bf16 on GPU) + faiss assignment;
* naive: one file at a time through ``HubertModel(output_hidden_states=True)`` (fp32, all
  layers), then scikit-learn ``KMeans.predict``;

and prints audio-seconds per wall-second of each and their ratio. On GPU with bf16 the units are
compared with tolerance (bf16 rounding flips near-tie frames); on CPU they must agree exactly up to
float rounding ties (>= 99.9 %).
"""

from __future__ import annotations

import time

import numpy as np
import torch


def _model(size: str):
    from transformers import HubertConfig, HubertModel

    from spiritlm.tokenizer.hubert import tiny_hubert_config

    torch.manual_seed(0)
    if size == "tiny":
        cfg = tiny_hubert_config(64, 4, 2, 128, 32, hop=640)
    else:
        cfg = HubertConfig(conv_dim=(512,) * 8, conv_kernel=(10, 3, 3, 3, 3, 2, 2, 2),
                           conv_stride=(5, 2, 2, 2, 2, 2, 2, 2))
    return HubertModel(cfg).eval()


def bench_tokenizer(seconds: float = 60.0, n_files: int = 12, size: str = "base", device: str = "auto",
                    layer: int | None = None, k: int = 500, seed: int = 0, verbose: bool = True) -> dict:
    from sklearn.cluster import KMeans

    from spiritlm.tokenizer.hubert import HubertFeaturizer, resolve_device
    from spiritlm.tokenizer.kmeans import KMeansQuantizer

    dev = resolve_device(device)
    model = _model(size)
    n_layers = model.config.num_hidden_layers
    layer = layer or min(11, n_layers)
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.3, 1.7, n_files)
    lens = (weights / weights.sum() * seconds * 16000).astype(int)
    lens = np.maximum(lens, 16000)
    t = np.arange(lens.max()) / 16000
    wavs = [(0.1 * np.sin(2 * np.pi * (200 + 50 * i) * t[:n]) + 0.05 * rng.standard_normal(n)).astype(np.float32)
            for i, n in enumerate(lens)]
    total_s = lens.sum() / 16000
    feat = HubertFeaturizer(model, layer, device=dev)
    warm = feat.features_many([wavs[0][:32000]])[0]
    # centroids: k frames of real features (+ noise) so that assignments are non-trivial
    sample = np.concatenate(feat.features_many(wavs[:2]))
    cents = sample[rng.choice(len(sample), k, replace=len(sample) < k)] + 0.01 * rng.standard_normal((k, sample.shape[1])).astype(np.float32)
    quant = KMeansQuantizer(cents)
    sk = KMeans(n_clusters=k, init=cents.astype(np.float64), n_init=1, max_iter=1).fit(cents.astype(np.float64))
    del warm

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    batched = [quant(f) for f in feat.features_many(wavs)]
    sync()
    t_batched = time.perf_counter() - t0

    model_naive = model.to(dev)
    t0 = time.perf_counter()
    naive = []
    with torch.no_grad():
        for w in wavs:
            out = model_naive(torch.from_numpy(w)[None].to(dev), output_hidden_states=True)
            h = out.hidden_states[layer][0].float().cpu().numpy()
            naive.append(sk.predict(h.astype(np.float64)))
    sync()
    t_naive = time.perf_counter() - t0
    agree = float(np.mean(np.concatenate([a == b for a, b in zip(batched, naive)])))
    res = {"device": str(dev), "size": size, "audio_s": round(float(total_s), 1), "files": n_files,
           "batched_audio_s_per_s": round(float(total_s / t_batched), 2), "naive_audio_s_per_s": round(float(total_s / t_naive), 2),
           "speedup": round(float(t_naive / t_batched), 2), "unit_agreement": round(agree, 5)}
    if verbose:
        print(f"tokenizer bench ({size} HuBERT, layer {layer}, {dev}): {total_s:.0f} s of audio in {n_files} files")
        print(f"  batched : {res['batched_audio_s_per_s']:8.1f} audio-s/s")
        print(f"  naive   : {res['naive_audio_s_per_s']:8.1f} audio-s/s")
        print(f"  ratio   : {res['speedup']:.2f}x   units identical on {100 * agree:.3f}% of frames")
    need = 0.99 if dev.type == "cuda" else 0.999
    if agree < need:
        raise AssertionError(f"batched and naive units differ on {100 * (1 - agree):.3f}% of frames")
    return res
