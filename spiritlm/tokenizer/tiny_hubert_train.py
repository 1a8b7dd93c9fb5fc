"""Training the demo's tiny HuBERT (HuBERT iteration 1) on MFCC k-means targets.

No pretrained HuBERT can be downloaded here, so ``train_tiny_hubert`` trains one from scratch by
masked prediction of MFCC k-means targets: 13 MFCCs + deltas + delta-deltas per frame (25 ms
window, one frame per HuBERT hop), k-means (``demo.mfcc_k``), then a small HubertModel sees
random crops with spans of frames replaced by its learned mask embedding and learns to predict
the targets of the masked frames (cross-entropy).

Kept apart from :mod:`spiritlm.tokenizer.tiny_hubert` (the demo tokenizer's fit and evaluation):
``fit_tokenizer`` trains a tiny HuBERT itself when ``demo.enabled`` and no model is given, while
``fit_demo_tokenizer`` calls ``fit_tokenizer``; with the training here both import downwards.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from spiritlm.tokenizer.config import DemoHubertCfg
from spiritlm.tokenizer.corpus_audio import iter_wavs
from spiritlm.tokenizer.fit_loop import FitLoop
from spiritlm.tokenizer.mfcc_units import mfcc

log = logging.getLogger(__name__)


def _span_mask(B: int, T: int, prob: float, length: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.rand(B, T, generator=gen) < prob
    mask = torch.zeros(B, T, dtype=torch.bool)
    for s in range(length):
        mask[:, s:] |= starts[:, : T - s]
    return mask


def train_tiny_hubert(dc: DemoHubertCfg, rows, seed: int = 0, progress: bool = True, return_targets: bool = False):
    """Train a tiny HubertModel on the audio of ``rows`` [(utterance, path)]; returns the model."""
    from transformers import HubertModel

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
    loop = FitLoop(dc.steps, params, opt, sched, "tiny hubert", "loss", "demo.max_minutes", dc.max_minutes, progress)
    for step in loop:
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
        if loop.step(loss):
            break
    train_log = loop.close()
    log.info("tiny HuBERT: %d steps in %.0f s, loss %.3f -> %.3f", train_log["steps"], train_log["seconds"],
             train_log["loss_first"], train_log["loss_last"])
    model.eval()
    model.train_log = train_log
    return model
