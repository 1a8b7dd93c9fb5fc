"""``spiritlm bench continuous``: a training step of the continuous-input model with the frozen
encoder's features read from the cache vs recomputed by the encoder at every step.

Setup (demo scale, nothing downloaded): a frozen HuBERT of the demo tokenizer's size
(``DemoHubertCfg``: 128-d, 3 layers, 50 Hz, random weights -- the cost, not the quality, is
measured), an MLP projector (stack 4) trained alone, a tiny LLaMA, 3-s utterances, 4 rows of 256
positions per step (several utterances packed per row). Both sides run the same optimizer step
on the same batches; the one-time cost of filling the cache is printed beside it, so the
break-even point (steps after which caching has paid for itself) can be read off.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _setup(root: Path, n_utts: int, seconds: float):
    from transformers import HubertModel

    from spiritlm.config import load_config
    from spiritlm.manifest import Utterance, write_manifest
    from spiritlm.models.continuous.config import ContinuousTrainConfig
    from spiritlm.models.continuous.model import build_continuous
    from spiritlm.text_tokenizer import train_sentencepiece
    from spiritlm.tokenizer.config import DemoHubertCfg
    from spiritlm.tokenizer.hubert import tiny_hubert_config

    import soundfile as sf

    words = "the dog sleeps a cat runs under one big red tree".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=8)) for _ in range(n_utts)]
    train_sentencepiece(texts * 2, root / "tok", vocab_size=300)
    dc = DemoHubertCfg()
    torch.manual_seed(0)
    HubertModel(tiny_hubert_config(dc.hidden, dc.layers, dc.heads, dc.ffn, dc.conv_dim, dc.hop, taper=True)
                ).save_pretrained(root / "st" / "hubert")
    (root / "audio").mkdir()
    utts = []
    for i, t in enumerate(texts):
        sf.write(root / "audio" / f"{i}.wav", (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32), 16000)
        utts.append(Utterance(f"u{i}", f"audio/{i}.wav", seconds, 16000, t, "spk"))
    write_manifest(root / "manifest.jsonl", utts)
    cfg = load_config(ContinuousTrainConfig, None, [
        f"model.tokenizer={root / 'tok'}", f"run_dir={root / 'run'}", "data.seq_len=256",
        "model.tiny.max_position_embeddings=256", "continuous.encoder.kind=hubert",
        f"continuous.encoder.path={root / 'st'}", "continuous.trainable=projector",
        "continuous.projector.kind=mlp", "continuous.projector.stack=4",
        f"continuous.data.manifests=[{root / 'manifest.jsonl'}]"])
    return cfg, build_continuous(cfg)


def bench_continuous(rounds: int | None = None, min_round_s: float | None = None, n_utts: int = 24,
                     seconds: float = 3.0, rows: int = 4):
    from spiritlm.bench_harness import Side, compare
    from spiritlm.models.continuous.data import (ContinuousBatches, FeatureCache, cache_dir_for,
                                                 encoder_identity, read_utterances)
    from spiritlm.models.continuous.spec import text_loss

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg, model = _setup(root, n_utts, seconds)
        c = cfg.continuous
        utts, _ = read_utterances(c.data, model.tok, model.frames_for, cfg.data.seq_len, c.placement)
        cache = FeatureCache(cache_dir_for(cfg.run_dir, c.encoder), encoder_identity(c.encoder))
        t0 = time.perf_counter()
        cache.build(utts, model.encoder, progress=False)
        fill_s = time.perf_counter() - t0

        def batches(with_cache):
            return ContinuousBatches(utts, cfg.data.seq_len, c.placement, model.tok.bos_id, model.tok.eos_id,
                                     model.tok.audio_id, model.tok.eos_id, cache=cache if with_cache else None)

        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        per_step: dict[str, int] = {}

        def step_fn(name, maker):
            def step():
                batch = maker.next_batch(rows)
                per_step[name] = len(batch["slots"])
                logits, aux = model(batch)
                loss = text_loss(logits, batch["targets_BT"])[0] + aux
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return step

        cached, recomputed = batches(True), batches(False)
        step_fn("probe", batches(True))()
        n = per_step["probe"]  # utterances per step (same rows, same packing on both sides)
        notes = [f"one-time cache fill: {fill_s:.2f} s for {len(utts)} utterances of {seconds:g} s "
                 f"({len(utts) / fill_s:.1f} utt/s); {n} utterances per step ({rows} rows x {cfg.data.seq_len})",
                 "frozen HuBERT of the demo tokenizer's size, MLP projector trained alone, tiny LLaMA, CPU"]
        r = compare(Side("cached features", step_fn("cached", cached), work=n, unit="utt"),
                    Side("encoder every step", step_fn("recomputed", recomputed), work=n, unit="utt"),
                    title="continuous-input training step: frozen-encoder features cached vs recomputed",
                    rounds=rounds, min_round_s=min_round_s, notes=notes)
        return {"comparison": r, "fill_s": fill_s, "utts_per_step": n, "n_utts": len(utts)}
