"""Tokenizer throughput: our path vs a naive loop, side by side with the benchmark harness.

``bench_tokenizer()`` builds a randomly initialised HuBERT (``size="base"``: the mHuBERT-base-25Hz
shape, 12 x 768, 8 conv layers, hop 640; ``"tiny"`` for a smoke run), 500 centroids, and a set of
files of varied length. The harness (:mod:`spiritlm.bench_harness`) alternates, for >= 5 rounds of
>= 2 s each after warm-up,

* ours: :class:`HubertFeaturizer` as the data stage and evaluation run it (on CPU each chunk
  alone and unpadded, cut after layer 11; on GPU length-bucketed masked batches) + faiss;
* padded (``--padded``, on by default on CPU): the same with padded, masked batches -- the CPU
  path before 2026-12-02, and the GPU path -- so that before/after is measured in one run;
* naive: one file at a time through ``HubertModel(output_hidden_states=True)`` (all layers), then
  scikit-learn ``KMeans.predict``;

and prints audio-seconds per wall-second of each, the median ratio with its min-max, the load,
and the achieved FLOP/s against a matmul peak measured in the same run. The units of ours must
equal the naive loop's on every frame on CPU (fp32; 99 % on GPU where bf16 may be chosen).
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


def hubert_flops(cfg, n_samples: int, layers: int) -> float:
    """Multiply-adds x 2 of one unpadded HuBERT forward over ``n_samples``, up to ``layers``
    transformer layers: convs, feature projection, positional conv, attention and MLP."""
    flops, n, c_in = 0.0, n_samples, 1
    for c_out, k, s in zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride):
        n = (n - k) // s + 1 if n >= k else 0
        flops += 2.0 * c_in * c_out * k * n
        c_in = c_out
    t, d, f = n, cfg.hidden_size, cfg.intermediate_size
    flops += 2.0 * c_in * d * t  # feature projection
    flops += 2.0 * d * (d // cfg.num_conv_pos_embedding_groups) * cfg.num_conv_pos_embeddings * t
    per_layer = 2.0 * t * (4 * d * d + 2 * d * f) + 4.0 * t * t * d  # projections + MLP, QK^T and AV
    return flops + layers * per_layer


def bench_tokenizer(seconds: float = 60.0, n_files: int = 12, size: str = "base", device: str = "auto",
                    layer: int | None = None, k: int = 500, seed: int = 0, verbose: bool = True,
                    rounds: int | None = None, min_round_s: float | None = None,
                    padded: bool | None = None) -> dict:
    from sklearn.cluster import KMeans

    from spiritlm.bench_harness import Side, matmul_peak, run_sides
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
    total_s = float(lens.sum() / 16000)
    feat = HubertFeaturizer(model, layer, device=dev)
    padded = (not feat.padded_batches) if padded is None else padded
    feat_padded = HubertFeaturizer(model, layer, device=dev, padded_batches=True)
    # centroids: k frames of real features (+ noise) so that assignments are non-trivial
    sample = np.concatenate(feat.features_many(wavs[:2]))
    cents = sample[rng.choice(len(sample), k, replace=len(sample) < k)] + 0.01 * rng.standard_normal((k, sample.shape[1])).astype(np.float32)
    quant = KMeansQuantizer(cents)
    sk = KMeans(n_clusters=k, init=cents.astype(np.float64), n_init=1, max_iter=1).fit(cents.astype(np.float64))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    results: dict[str, list] = {}

    def ours():
        results["ours"] = [quant(f) for f in feat.features_many(wavs)]
        sync()

    def ours_padded():
        results["padded"] = [quant(f) for f in feat_padded.features_many(wavs)]
        sync()

    def naive():
        out = []
        with torch.no_grad():
            for w in wavs:
                hs = model(torch.from_numpy(w)[None].to(dev), output_hidden_states=True).hidden_states
                out.append(sk.predict(hs[layer][0].float().cpu().numpy().astype(np.float64)))
        results["naive"] = out
        sync()

    cfg = model.config
    fl_ours = sum(hubert_flops(cfg, int(n), layer) for n in lens)
    fl_naive = sum(hubert_flops(cfg, int(n), n_layers) for n in lens)
    sides = [Side("ours", ours, work=total_s, unit="audio-s", flops=fl_ours)]
    if padded:
        sides.append(Side("padded", ours_padded, work=total_s, unit="audio-s", flops=fl_ours))
    sides.append(Side("naive", naive, work=total_s, unit="audio-s", flops=fl_naive))
    # fp32 like the forward; the MLP's up projection over 8 s of frames (25 Hz): (200 x 768) @ (768 x 3072)
    peak = lambda: matmul_peak(device=str(dev), shape=(200, cfg.hidden_size, cfg.intermediate_size))  # noqa: E731
    m = run_sides(sides, rounds, min_round_s, peak=peak,
                  notes=["FLOP/s: the work each side needs (naive: all its layers; padded: the valid "
                         "frames only, not the zeros); convolutions stay below the square-matmul peak"])
    agree = {name: float(np.mean(np.concatenate([a == b for a, b in zip(results[name], results["naive"])])))
             for name in results if name != "naive"}
    pairs = [("ours", "naive")] + ([("ours", "padded"), ("padded", "naive")] if padded else [])
    r = m.ratio("ours", "naive")
    res = {"device": str(dev), "size": size, "audio_s": round(total_s, 1), "files": n_files, "layer": layer,
           "ours_audio_s_per_s": m.rate("ours"), "naive_audio_s_per_s": m.rate("naive"),
           "batched_audio_s_per_s": m.rate("ours"), "speedup": r.median, "ratio": r.as_dict(),
           "unit_agreement": agree["ours"], "unit_agreement_padded": agree.get("padded"),
           "measurement": m.as_dict(pairs)}
    if padded:
        res["padded_audio_s_per_s"] = m.rate("padded")
        res["ratio_vs_padded"] = m.ratio("ours", "padded").as_dict()
    if verbose:
        title = (f"tokenizer bench ({size} HuBERT, layer {layer} of {n_layers}, {dev}): {total_s:.0f} s of audio "
                 f"in {n_files} files; ours vs naive, units identical on {100 * agree['ours']:.3f}% of frames")
        print(m.report(pairs, title), flush=True)
    for name, a in agree.items():  # exact on CPU; padded batches and bf16 may flip near-tie frames
        need = 1.0 if (name == "ours" and dev.type == "cpu") else (0.999 if dev.type == "cpu" else 0.99)
        if a < need:
            raise AssertionError(f"{name} and naive units differ on {100 * (1 - a):.3f}% of frames")
    return res


# ---- peak memory on long files ---------------------------------------------------------------
def _memory_child(minutes: float, size: str, layer: int | None, device: str) -> dict:
    """Runs in a fresh process: peak RSS of encoding one ``minutes``-long file to units."""
    import resource

    from spiritlm.tokenizer.hubert import HubertFeaturizer, resolve_device
    from spiritlm.tokenizer.kmeans import KMeansQuantizer

    dev = resolve_device(device)
    model = _model(size)
    layer = layer or min(11, model.config.num_hidden_layers)
    feat = HubertFeaturizer(model, layer, device=dev)
    rng = np.random.default_rng(0)
    n = int(minutes * 60 * 16000)
    wav = np.empty(n, dtype=np.float32)  # filled in 10 s pieces: no float64 temporaries of n samples
    for s in range(0, n, 160000):
        m = min(160000, n - s)
        t = np.arange(s, s + m) / 16000
        wav[s : s + m] = 0.1 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(m)
    quant = KMeansQuantizer(rng.standard_normal((500, model.config.hidden_size)).astype(np.float32))
    feat.features_many([wav[:32000]])  # warm-up (allocator, kernels)
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    units = quant(feat.features_many([wav])[0])
    secs = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert len(units) == feat.num_frames(n)
    return {"minutes": minutes, "frames": int(len(units)), "dim": int(model.config.hidden_size),
            "audio_mib": n * 4 / 2**20,
            "rss_before_mib": before_kib / 1024, "rss_peak_mib": peak_kib / 1024,
            "encode_peak_extra_mib": (peak_kib - before_kib) / 1024, "audio_s_per_s": minutes * 60 / secs}


def bench_long_file_memory(minutes: tuple[float, ...] = (6.0, 60.0), size: str = "base",
                           device: str = "auto", verbose: bool = True) -> list[dict]:
    """Peak resident memory of encoding one long file, each length in its own process.

    Long files go through HuBERT in chunks of at most 100 s, so the encoder's working memory does
    not grow with the file; what grows is the waveform and the (frames, 768) features of the
    whole file (~0.5 GiB per hour together). One forward pass over a whole hour would need the
    attention scores of 90k frames: 90k^2 x 12 heads x 4 bytes ~ 390 GB per layer.
    """
    import json
    import subprocess
    import sys

    rows = []
    for m in minutes:
        code = ("import json; from spiritlm.tokenizer.bench import _memory_child; "
                f"print('RESULT', json.dumps(_memory_child({float(m)!r}, {size!r}, None, {device!r})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"memory bench child ({m} min) failed:\n{out.stderr[-2000:]}")
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        rows.append(json.loads(line[len("RESULT "):]))
    if verbose:
        print(f"peak memory, one file encoded to units ({size} HuBERT, chunks of <= 100 s):")
        print("  minutes  frames   audio MiB  RSS before  RSS peak  encode extra  audio-s/s")
        for r in rows:
            print(f"  {r['minutes']:7.1f} {r['frames']:7d} {r['audio_mib']:10.0f} {r['rss_before_mib']:10.0f} "
                  f"{r['rss_peak_mib']:9.0f} {r['encode_peak_extra_mib']:12.0f} {r['audio_s_per_s']:10.1f}")
        if len(rows) >= 2:
            a, b = rows[0], rows[-1]
            print(f"  {b['minutes'] / a['minutes']:.0f}x longer file -> encode extra "
                  f"{b['encode_peak_extra_mib'] / max(a['encode_peak_extra_mib'], 1):.2f}x "
                  f"(the whole file's features are kept: {b['frames'] * b['dim'] * 4 / 2**20:.0f} MiB at {b['dim']} dims)")
    return rows
