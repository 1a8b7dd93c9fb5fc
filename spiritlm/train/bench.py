"""``bench_train()``: tokens/s of our DeepSpeed loop against a plain HF ``Trainer``, same model, data.

Both train the same tiny LLaMA (speech vocabulary added) on the same packed rows (our
``Packer`` output; for HF the shifted ``targets`` become ``labels`` and ``position_ids`` keep
documents apart the same way), same micro-batch, accumulation, optimizer (AdamW) and LR. The
first ``warmup`` optimizer steps are not timed. On CUDA the MFU of our loop is reported too.
"""

from __future__ import annotations

import tempfile
import time
from typing import Sequence

import torch

from spiritlm.train.packing import IGNORE


def _hf_rows(batches: list[dict]) -> list[dict]:
    rows = []
    for b in batches:
        tgt = b["targets_BT"]
        labels = torch.cat([torch.full_like(tgt[:, :1], IGNORE), tgt[:, :-1]], dim=1)  # HF shifts back
        for i in range(tgt.shape[0]):
            rows.append({"input_ids": b["input_ids_BT"][i], "position_ids": b["position_ids_BT"][i],
                         "labels": labels[i]})
    return rows


def bench_train(steps: int = 12, warmup: int = 2, overrides: Sequence[str] = (), verbose: bool = True) -> dict:
    """Returns ``{"ours_tokens_per_s", "hf_tokens_per_s", "ratio", ...}`` and prints a summary."""
    from spiritlm.train.tiny import tiny_config
    from spiritlm.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = tiny_config(f"{tmp}/ours", [f"steps={steps + warmup}", "data.seq_len=128",
                                          "model.tiny.max_position_embeddings=256", "micro_batch_size=4",
                                          "global_batch_size=8", "optim.schedule=constant",
                                          "optim.warmup_steps=0", "checkpoint.resume=false", *overrides])
        tokens_per_step = cfg.micro_batch_size * cfg.data.seq_len * (cfg.global_batch_size // cfg.micro_batch_size)

        # ---- ours: Trainer.train_step on DeepSpeed --------------------------------------------
        ours = Trainer(cfg)
        gas = ours.gas
        for _ in range(warmup):
            ours.train_step()
        t0 = time.perf_counter()
        for _ in range(steps):
            ours.train_step()
        ours_tps = steps * tokens_per_step / (time.perf_counter() - t0)
        mfu = None
        if torch.cuda.is_available() and ours.peak_flops:
            mfu = ours_tps * ours.flops_per_token / ours.peak_flops
        # the same rows, replayed for HF from a fresh packer on the same seed
        from spiritlm.train.data import MixtureStream, make_sources
        from spiritlm.train.model import build_model
        from spiritlm.train.packing import Packer

        srcs, w = make_sources(cfg.data, ours.layout, text_vocab=ours.layout.base_vocab_size)
        packer = Packer(MixtureStream(srcs, w, seed=cfg.seed), cfg.data.seq_len, cfg.data.bos_id)
        batches = [packer.next_batch(cfg.micro_batch_size) for _ in range((steps + warmup) * gas)]
        del ours

        # ---- HF Trainer, plain PyTorch (no DeepSpeed) -------------------------------------------
        from transformers import Trainer as HFTrainer
        from transformers import TrainerCallback, TrainingArguments

        model, _, _ = build_model(cfg.model)
        stamps: list[float] = []

        class Stamp(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                stamps.append(time.perf_counter())

        args = TrainingArguments(
            output_dir=f"{tmp}/hf", per_device_train_batch_size=cfg.micro_batch_size,
            gradient_accumulation_steps=gas, max_steps=steps + warmup, learning_rate=cfg.optim.lr,
            lr_scheduler_type="constant", weight_decay=cfg.optim.weight_decay, max_grad_norm=cfg.optim.grad_clip,
            adam_beta1=cfg.optim.betas[0], adam_beta2=cfg.optim.betas[1], optim="adamw_torch",
            report_to=[], save_strategy="no", logging_steps=10**9, dataloader_num_workers=0,
            use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=cfg.seed,
        )
        hf = HFTrainer(model=model, args=args, train_dataset=_hf_rows(batches), callbacks=[Stamp()])
        hf._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(hf.train_dataset)
        hf.train()
        hf_tps = steps * tokens_per_step / (stamps[-1] - stamps[warmup - 1])
    out = {"ours_tokens_per_s": ours_tps, "hf_tokens_per_s": hf_tps, "ratio": ours_tps / hf_tps,
           "steps": steps, "tokens_per_step": tokens_per_step, "mfu": mfu,
           "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads()}
    if verbose:
        print(f"train bench ({out['device']}, {steps} timed steps x {tokens_per_step} tokens): "
              f"ours {ours_tps:,.0f} tok/s, HF Trainer {hf_tps:,.0f} tok/s, ratio {out['ratio']:.2f}"
              + (f", MFU {mfu:.1%}" if mfu else ""))
    return out


if __name__ == "__main__":
    bench_train()
