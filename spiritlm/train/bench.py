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


def demo_model() -> list[str]:
    """The demo's language model and batch (``DemoConfig.train_overrides`` less its step count,
    optimizer and checkpoints) on synthetic documents over the demo's text vocabulary."""
    from spiritlm.demo import DemoConfig

    cfg = DemoConfig()
    own = [o for o in cfg.train_overrides if not o.startswith(("steps=", "optim.", "checkpoint."))]
    return [*own, f"model.tiny.base_vocab_size={cfg.text_vocab_size}", "data.synthetic_docs=2000", "log.every=5"]


def _train_job(overrides: list[str], step_dir) -> dict:
    """One training run (a pipeline job): its losses, and its wall time in its own process."""
    from spiritlm.train.tiny import tiny_config
    from spiritlm.train.trainer import Trainer

    t0 = time.perf_counter()
    t = Trainer(tiny_config(str(step_dir / "run"), overrides))
    t.fit()
    return {"losses": [r["loss"] for r in t.history], "seconds": time.perf_counter() - t0,
            "threads": torch.get_num_threads()}


def bench_side_by_side(steps: int = 40, verbose: bool = True) -> dict:
    """Two demo-sized trainings (data seeds 0 and 1) one after the other in this process, then
    side by side in two processes with half the cores each (spiritlm.pipeline), as the demo
    trains its two models. Prints the wall-time ratio and whether every loss is the same."""
    from pathlib import Path

    from spiritlm.pipeline import Job, Pipeline

    jobs = [Job(f"seed{s}", s, _train_job, ([*demo_model(), f"steps={steps}", f"seed={s}"],)) for s in (0, 1)]
    with tempfile.TemporaryDirectory() as tmp:
        walls, outs = {}, {}
        for name, workers in (("in_a_row", 1), ("side_by_side", 2)):
            t0 = time.perf_counter()
            outs[name] = Pipeline(Path(tmp) / name, workers=workers).run_jobs(jobs)
            walls[name] = time.perf_counter() - t0
    same = all(a["losses"] == b["losses"] for a, b in zip(outs["in_a_row"], outs["side_by_side"]))
    out = {"in_a_row_s": walls["in_a_row"], "side_by_side_s": walls["side_by_side"],
           "speedup": walls["in_a_row"] / walls["side_by_side"], "same_losses": same, "steps": steps,
           "threads": [o["threads"] for o in outs["in_a_row"]] + [o["threads"] for o in outs["side_by_side"]]}
    if verbose:
        t = out["threads"]
        print(f"side-by-side bench (2 demo-sized trainings x {steps} steps, CPU): in a row "
              f"({t[0]} threads) {walls['in_a_row']:.1f} s, side by side ({t[2]} thread(s) each) "
              f"{walls['side_by_side']:.1f} s, speedup {out['speedup']:.2f}x; "
              f"same losses: {'yes' if same else 'NO'}")
    return out


def bench_precision(steps: int = 30, warmup: int = 3, verbose: bool = True) -> dict:
    """The demo's model and batch (synthetic documents) in fp32 and in bf16 (DeepSpeed bf16:
    bf16 weights and activations, fp32 optimizer state), this process, same data: seconds per
    optimizer step after ``warmup`` and the loss of the last step in each."""
    from spiritlm.train.tiny import tiny_config
    from spiritlm.train.trainer import Trainer

    out: dict = {"steps": steps, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            t = Trainer(tiny_config(f"{tmp}/{precision}", [*demo_model(), f"steps={steps + warmup}",
                                                             f"deepspeed.precision={precision}"]))
            for _ in range(warmup):
                t.train_step()
            t0 = time.perf_counter()
            for _ in range(steps):
                last = t.train_step()
            out[f"{precision}_s_per_step"] = (time.perf_counter() - t0) / steps
            out[f"{precision}_last_loss"] = float(last["loss"])
            del t
    out["speedup"] = out["fp32_s_per_step"] / out["bf16_s_per_step"]
    if verbose:
        print(f"precision bench (demo model, {steps} timed steps, {out['threads']} threads): fp32 "
              f"{out['fp32_s_per_step'] * 1000:.0f} ms/step, bf16 {out['bf16_s_per_step'] * 1000:.0f} ms/step, "
              f"speedup {out['speedup']:.2f}x; last loss fp32 {out['fp32_last_loss']:.4f}, "
              f"bf16 {out['bf16_last_loss']:.4f}")
    return out


if __name__ == "__main__":
    bench_train()
