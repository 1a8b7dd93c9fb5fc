"""The demo tokenizer: a tiny HuBERT trained on the demo corpus (HuBERT iteration 1).

No pretrained HuBERT can be downloaded here, so ``train_tiny_hubert`` trains one from scratch by
masked prediction of MFCC k-means targets: 13 MFCCs + deltas + delta-deltas per frame (25 ms
window, one frame per HuBERT hop), k-means (``demo.mfcc_k``), then a small HubertModel sees
random crops with spans of frames replaced by its learned mask embedding and learns to predict
the targets of the masked frames (cross-entropy). ``fit_demo_tokenizer`` then fits k-means on
one of its layers and writes the tokenizer directory plus ``metrics.json`` with PNMI (against
the manifest's phone labels) of MFCC k-means, random-init HuBERT k-means and trained HuBERT
k-means units on the held-out split, codebook perplexity, units/s after dedup and bitrate.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from spiritlm.tokenizer.config import DemoHubertCfg, TokenizerCfg

log = logging.getLogger(__name__)


def _mel_filterbank(n_fft: int = 512, n_mels: int = 40, sr: int = 16000) -> np.ndarray:
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    imel = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    pts = imel(np.linspace(mel(20), mel(sr / 2), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, 1 / sr)
    fb = np.zeros((n_mels, len(bins)))
    for i in range(n_mels):
        lo, c, hi = pts[i : i + 3]
        fb[i] = np.clip(np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)), 0, None)
    return fb


_FB = None


def mfcc(wav: np.ndarray, hop: int = 320, n_frames: int | None = None) -> np.ndarray:
    """(T, 39) MFCC + deltas + delta-deltas, 400-sample windows every ``hop``, per-utterance CMVN."""
    global _FB
    from scipy.fft import dct

    if _FB is None:
        _FB = _mel_filterbank()
    wav = np.asarray(wav, dtype=np.float32)
    if len(wav) < 400:
        wav = np.pad(wav, (0, 400 - len(wav)))
    T = (len(wav) - 400) // hop + 1
    idx = np.arange(400)[None, :] + hop * np.arange(T)[:, None]
    frames = wav[idx] * np.hamming(400)[None].astype(np.float32)
    power = np.abs(np.fft.rfft(frames, 512)) ** 2
    c = dct(np.log(power @ _FB.T + 1e-8), type=2, norm="ortho", axis=1)[:, :13]
    d1 = np.gradient(c, axis=0) if T > 1 else np.zeros_like(c)
    d2 = np.gradient(d1, axis=0) if T > 1 else np.zeros_like(c)
    x = np.concatenate([c, d1, d2], 1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-5)
    if n_frames is not None:
        x = x[:n_frames] if len(x) >= n_frames else np.pad(x, ((0, n_frames - len(x)), (0, 0)), mode="edge")
    return x.astype(np.float32)


def _span_mask(B: int, T: int, prob: float, length: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.rand(B, T, generator=gen) < prob
    mask = torch.zeros(B, T, dtype=torch.bool)
    for s in range(length):
        mask[:, s:] |= starts[:, : T - s]
    return mask


def train_tiny_hubert(dc: DemoHubertCfg, rows, seed: int = 0, progress: bool = True, return_targets: bool = False):
    """Train a tiny HubertModel on the audio of ``rows`` [(utterance, path)]; returns the model."""
    from transformers import HubertModel

    from spiritlm.tokenizer.fit import iter_wavs
    from spiritlm.tokenizer.hubert import conv_out_length, tiny_hubert_config
    from spiritlm.tokenizer.kmeans import KMeansQuantizer, train_kmeans

    if dc.threads:
        torch.set_num_threads(dc.threads)
    torch.manual_seed(seed)
    config = tiny_hubert_config(dc.hidden, dc.layers, dc.heads, dc.ffn, dc.conv_dim, dc.hop, taper=True,
                                mask_time_prob=max(dc.mask_prob, 1e-3), layerdrop=0.0, hidden_dropout=0.0,
                                attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)
    model = HubertModel(config)
    kernels, strides = list(config.conv_kernel), list(config.conv_stride)
    wavs = [w for _, w in iter_wavs(rows, dc.hop * 2)]
    if not wavs:
        raise ValueError("no loadable audio to train the demo HuBERT on")
    frames = [int(conv_out_length(len(w), kernels, strides)) for w in wavs]
    feats = [mfcc(w, dc.hop, n) for w, n in zip(wavs, frames)]
    km = KMeansQuantizer(train_kmeans(np.concatenate(feats), dc.mfcc_k, 30, seed), use_gpu=False)
    targets = [km(f) for f in feats]
    head = torch.nn.Linear(dc.hidden, dc.mfcc_k)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=dc.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=dc.lr, total_steps=dc.steps, pct_start=0.08)
    gen = torch.Generator().manual_seed(seed)
    crop = int(dc.crop_s * 16000) // dc.hop * dc.hop
    model.train()
    t0, step = time.perf_counter(), 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=dc.steps, desc="tiny hubert", unit="step")
    losses = []
    for step in range(dc.steps):
        pick = torch.randint(len(wavs), (dc.batch_size,), generator=gen).tolist()
        L = min(crop, min(len(wavs[i]) for i in pick)) // dc.hop * dc.hop
        xs, ys = [], []
        for i in pick:
            start_f = int(torch.randint(max(1, (len(wavs[i]) - L) // dc.hop + 1), (1,), generator=gen))
            xs.append(torch.from_numpy(wavs[i][start_f * dc.hop : start_f * dc.hop + L]))
            ys.append(torch.from_numpy(targets[i][start_f : start_f + frames[i]]))
        x_BS = torch.stack(xs)
        T = int(conv_out_length(L, kernels, strides))
        y_BT = torch.stack([y[:T] if len(y) >= T else torch.nn.functional.pad(y, (0, T - len(y)), value=-100) for y in ys])
        mask_BT = _span_mask(len(pick), T, dc.mask_prob, dc.mask_length, gen)
        h_BTD = model(x_BS, mask_time_indices=mask_BT).last_hidden_state
        logits = head(h_BTD[mask_BT])
        loss = torch.nn.functional.cross_entropy(logits, y_BT[mask_BT], ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if dc.max_minutes > 0 and time.perf_counter() - t0 > dc.max_minutes * 60:
            # A cap that bites makes the units (and everything trained on them) depend on the
            # machine's load: say so loudly here, in the metrics and in the demo's summary.
            log.warning("demo HuBERT: STOPPED EARLY at step %d of %d (demo.max_minutes=%.1f): the units now "
                        "depend on this machine's speed; set demo.max_minutes=0 (no cap) for reproducible units",
                        step + 1, dc.steps, dc.max_minutes)
            break
    if bar is not None:
        bar.close()
    log.info("tiny HuBERT: %d steps in %.0f s, loss %.3f -> %.3f", step + 1, time.perf_counter() - t0,
             np.mean(losses[:20]), np.mean(losses[-20:]))
    model.eval()
    model.train_log = {"steps": step + 1, "steps_planned": dc.steps, "capped": step + 1 < dc.steps,
                       "seconds": round(time.perf_counter() - t0, 1),
                       "loss_first": float(np.mean(losses[:20])), "loss_last": float(np.mean(losses[-20:]))}
    return model


def unit_metrics(units_by_utt: list[np.ndarray], labels_by_utt: list[np.ndarray], seconds: float, k: int) -> dict:
    from spiritlm.tokenizer.metrics import bitrate, perplexity, pnmi

    u = np.concatenate(units_by_utt)
    lab = np.concatenate(labels_by_utt)
    p = pnmi(lab, u)  # None: no phone labels in the corpus
    return {"pnmi": round(p, 4) if p is not None else "not available (the corpus has no phone labels)",
            "perplexity": round(perplexity(u, k), 1),
            **{k2: round(v, 2) for k2, v in bitrate(units_by_utt, seconds, k).items()}}


def evaluate_units(cfg: TokenizerCfg, trained_model, train_rows, eval_rows, seed: int = 0) -> dict:
    """PNMI etc. of MFCC / random-init HuBERT / trained HuBERT k-means units on ``eval_rows``."""
    from spiritlm.manifest import frame_labels
    from spiritlm.tokenizer.fit import iter_wavs
    from spiritlm.tokenizer.hubert import HubertFeaturizer, conv_out_length
    from spiritlm.tokenizer.kmeans import FrameReservoir, KMeansQuantizer, train_kmeans
    from spiritlm.tokenizer.metrics import word_unit_consistency
    from transformers import HubertModel

    k = cfg.units.k
    train = list(iter_wavs(train_rows[:150], cfg.demo.hop * 2))  # k-means data for the 3 systems
    evals = list(iter_wavs(eval_rows, cfg.demo.hop * 2))
    seconds = sum(len(w) for _, w in evals) / 16000
    torch.manual_seed(seed + 1)
    random_model = HubertModel(trained_model.config).eval()
    out = {"eval_seconds": round(seconds, 1), "k": k}

    def run(name, featurize, rate):
        res = FrameReservoir(cfg.units.max_frames, seed)
        for i in range(0, len(train), 32):
            for f in featurize([w for _, w in train[i : i + 32]]):
                res.add(f)
        q = KMeansQuantizer(train_kmeans(res.sample(), k, cfg.units.niter, seed), use_gpu=False)
        units, labels = [], []
        for i in range(0, len(evals), 32):
            chunk = evals[i : i + 32]
            for (u, w), f in zip(chunk, featurize([w for _, w in chunk])):
                lab = np.array(frame_labels(u, rate), dtype=object)
                n = min(len(lab), len(f))
                units.append(q(f[:n]))
                labels.append(lab[:n])
        out[name] = unit_metrics(units, labels, seconds, k)
        out[name]["word_unit_distance"] = word_unit_consistency(
            units, [u.words for u, _ in evals], [u.speaker for u, _ in evals], rate, seed=seed)
        log.info("%s: %s", name, out[name])

    layer = cfg.hubert.layer
    feat_trained = HubertFeaturizer(trained_model, layer, device="cpu")
    rate = feat_trained.frame_rate
    ks, ss = list(trained_model.config.conv_kernel), list(trained_model.config.conv_stride)
    run("mfcc_kmeans", lambda ws: [mfcc(w, cfg.demo.hop, int(conv_out_length(len(w), ks, ss))) for w in ws], rate)
    run("random_hubert_kmeans", HubertFeaturizer(random_model, layer, device="cpu").features_many, rate)
    run("trained_hubert_kmeans", feat_trained.features_many, rate)
    return out


def evaluate_prosody(tokenizer_dir: Path, eval_rows) -> dict:
    """Held-out report of the pitch and style streams of a fitted tokenizer: F0 reconstruction
    error in cents through the VQ-VAE (voiced frames), codebook perplexity, tokens/s."""
    from spiritlm.tokenizer.f0_vqvae import cents_error
    from spiritlm.tokenizer.fit import iter_wavs
    from spiritlm.tokenizer.metrics import perplexity
    from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.load(tokenizer_dir, device="cpu")
    out: dict = {}
    wavs = list(iter_wavs(eval_rows, 1280))
    seconds = sum(len(w) for _, w in wavs) / 16000
    if tok.pitch_model is not None:
        pc, codes, errs = tok.cfg.pitch, [], []
        for u, w in wavs:
            f0, x, used = tok.pitch_features(w, u.speaker)  # the features encode() quantizes
            c = tok.pitch_model.encode(x)
            hat = tok.pitch_model.decode(c, used, voicing=False)
            n = min(len(hat), len(f0))
            errs.append(cents_error(f0[:n], hat[:n]))
            codes.append(c)
        allc = np.concatenate(codes)
        out["pitch"] = {"cents_error": round(float(np.nanmean(errs)), 1), "codebook": pc.codebook,
                        "perplexity": round(perplexity(allc, pc.codebook), 1),
                        "tokens_per_s": round(len(allc) / seconds, 2), "method": pc.method}
    if tok.style_quantizer is not None:
        st = [r["style"] for r in tok.encode_many([w for _, w in wavs], streams=["hubert", "style"])
              if not isinstance(r, Exception)]
        alls = np.concatenate(st)
        out["style"] = {"k": tok.style_quantizer.size, "perplexity": round(perplexity(alls, tok.style_quantizer.size), 1),
                        "tokens_per_s": round(len(alls) / seconds, 2)}
    log.info("prosody streams on %.0f s of held-out speech: %s", seconds, out)
    return out


def fit_demo_tokenizer(cfg: TokenizerCfg, manifest: str | Path, out_dir: str | Path = "out/tokenizer-demo",
                       evaluate: bool = True, progress: bool = True) -> Path:
    """Train the tiny HuBERT, fit its k-means, save the tokenizer dir (+ metrics.json); returns the dir."""
    from spiritlm.tokenizer.fit import corpus_files, fit_tokenizer

    t0 = time.perf_counter()
    if not cfg.demo.enabled:
        raise ValueError("fit_demo_tokenizer needs demo.enabled=true (use tokenizers/demo.toml)")
    rows = corpus_files(manifest, cfg.fit.split, cfg.fit.max_files)
    model = train_tiny_hubert(cfg.demo, rows, cfg.seed, progress)
    out = fit_tokenizer(cfg, manifest, out_dir, model=model, progress=progress)
    metrics = {"train": getattr(model, "train_log", {}), "fit_seconds": round(time.perf_counter() - t0, 1)}
    if evaluate:
        eval_split = "heldout"
        try:
            eval_rows = corpus_files(manifest, eval_split, cfg.demo.eval_max_files)
        except ValueError:
            eval_rows = rows[-max(1, len(rows) // 10):]
        metrics["units"] = evaluate_units(cfg, model, rows, eval_rows, cfg.seed)
        if cfg.pitch.enabled or cfg.style.enabled:
            metrics["prosody"] = evaluate_prosody(out, eval_rows[:40])
        metrics["total_seconds"] = round(time.perf_counter() - t0, 1)
    (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return Path(out)
