"""How each side of ``spiritlm bench train`` runs: our ``Trainer.fit()`` and HF ``Trainer.train()``,
the real loops, paused after every optimizer step so that their steps alternate on the benchmark
harness -- each in the main thread of a process of its own (``ProcessLoop``), or both in threads
of one process (``PausedLoop``; the distributed bench, where every rank is a process already).
HF's side is built here (``hf_trainer``): same model config, rows, batch, optimizer and precision.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
from typing import Sequence

import torch

from spiritlm.components.config import ModelConfig
from spiritlm.components.packing import IGNORE
from spiritlm.train.tiny import tiny_config


def _hf_labels(b: dict) -> torch.Tensor:
    tgt = b["targets_BT"]
    return torch.cat([torch.full_like(tgt[:, :1], IGNORE), tgt[:, :-1]], dim=1)  # HF shifts back


def _hf_rows(batches: list[dict]) -> list[dict]:
    rows = []
    for b in batches:
        labels = _hf_labels(b)
        for i in range(labels.shape[0]):
            rows.append({"input_ids": b["input_ids_BT"][i], "position_ids": b["position_ids_BT"][i],
                         "labels": labels[i]})
    return rows


class PackedRows(torch.utils.data.IterableDataset):
    """Our packer's rows, endlessly, as HF ``Trainer`` inputs (same order as ``Trainer`` reads)."""

    def __init__(self, packer, micro_batch_size: int):
        self.packer, self.micro = packer, micro_batch_size

    def __iter__(self):
        while True:
            yield from _hf_rows([self.packer.next_batch(self.micro)])


class StopLoop(Exception):
    """Raised inside a paused training loop to end it when the benchmark is over."""


class PausedLoop:
    """A training loop (``run()``) in a thread that calls ``pause()`` after every optimizer step:
    ``step()`` lets it run exactly one more step and returns when that step has ended. The loops
    are the real ones (HF ``Trainer.train()``, our ``Trainer.fit()``), with their data loading,
    logging and bookkeeping; only the pause is added (two semaphores)."""

    def __init__(self, run):
        self._go, self._done = threading.Semaphore(0), threading.Semaphore(0)
        self._stop, self.error, self._run_fn = False, None, run
        self._thread = threading.Thread(target=self._run, daemon=True, name="paused-loop")
        self._thread.start()

    def pause(self) -> bool:
        """Called by the loop after a step; -> True when the loop must stop now."""
        self._done.release()
        self._go.acquire()
        return self._stop

    def _run(self):
        try:
            self._go.acquire()
            if not self._stop:
                self._run_fn()
        except StopLoop:
            pass
        except BaseException as e:  # noqa: BLE001 -- re-raised in the caller's thread
            self.error = e
        finally:
            self._done.release()

    def step(self) -> None:
        self._go.release()
        self._done.acquire()
        if self.error is not None:
            raise RuntimeError(f"training loop failed: {self.error!r}") from self.error

    def close(self) -> None:
        self._stop = True
        self._go.release()
        self._thread.join(timeout=600)


def pausing_callback(pause):
    """An HF ``TrainerCallback`` calling ``pause()`` after every optimizer step; the loop ends
    when it returns True."""
    from transformers import TrainerCallback

    class Pause(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if pause():
                control.should_training_stop = True

    return Pause()


def pause_after_each_step(trainer, pause) -> None:
    """Our ``Trainer``: its loop calls ``pause()`` after every optimizer step and ends (``StopLoop``)
    when it returns True; logging, metrics.jsonl and progress bookkeeping are the real ones."""
    step_fn = trainer.train_step

    def train_step():
        rec = step_fn()
        if pause():
            raise StopLoop
        return rec

    trainer.train_step = train_step  # the instance's loop calls this one


def paused_hf(make_trainer) -> PausedLoop:
    loop: list[PausedLoop] = []
    trainer = make_trainer([pausing_callback(lambda: loop[0].pause())])
    loop.append(PausedLoop(trainer.train))
    return loop[0]


def paused_ours(trainer) -> PausedLoop:
    loop: list[PausedLoop] = []
    pause_after_each_step(trainer, lambda: loop[0].pause())
    loop.append(PausedLoop(trainer.fit))
    return loop[0]


def hf_trainer(cfg, gas: int, distributed: bool, precision: str, tmp: str, callbacks):
    """HF ``Trainer`` on the same model config, rows (a fresh packer on the same seed), batch,
    optimizer and precision as ours. HF gets the attention an HF user has (the ``--set`` settings
    are ours only): stock SDPA, documents kept apart by the mask transformers builds from the
    position ids. -> (trainer, model)"""
    from transformers import Trainer as HFTrainer
    from transformers import TrainingArguments

    from spiritlm.components.mixture import MixtureStream, make_sources
    from spiritlm.components.packing import Packer
    from spiritlm.models.unit_lm.model import build_model

    torch.manual_seed(cfg.seed)
    model, layout, _ = build_model(dataclasses.replace(cfg.model, attn_implementation=ModelConfig.attn_implementation))
    srcs, w = make_sources(cfg.data, layout, text_vocab=layout.base_vocab_size)
    packer = Packer(MixtureStream(srcs, w, seed=cfg.seed), cfg.data.seq_len,
                    cfg.data.bos_id if cfg.data.add_bos else -1, cfg.data.eos_id)
    args = TrainingArguments(
        ddp_backend="gloo" if distributed and not torch.cuda.is_available() else None,
        output_dir=f"{tmp}/hf", per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=gas, max_steps=10**9, learning_rate=cfg.optim.lr,
        lr_scheduler_type="constant", weight_decay=cfg.optim.weight_decay, max_grad_norm=cfg.optim.grad_clip,
        adam_beta1=cfg.optim.betas[0], adam_beta2=cfg.optim.betas[1], adam_epsilon=cfg.optim.eps,
        optim="adamw_torch", report_to=[], save_strategy="no", logging_steps=10**9,
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=cfg.seed,
        bf16=precision == "bf16",
    )
    hf = HFTrainer(model=model, args=args, train_dataset=PackedRows(packer, cfg.micro_batch_size),
                   callbacks=callbacks)
    return hf, model


def side_info(cfg, model, gas: int, world: int, flops_per_token: float) -> dict:
    return {"tokens_per_step": cfg.micro_batch_size * cfg.data.seq_len * gas * world,
            "flops_per_token": flops_per_token, "world": world, "attention": model.config._attn_implementation,
            "zero_stage": cfg.deepspeed.zero_stage,
            "non_embedding_params": sum(p.numel() for n, p in model.named_parameters()
                                        if "embed" not in n and "lm_head" not in n)}


def side_process(conn, which: str, train_overrides: list, precision: str, threads: int) -> None:
    """One side of the train bench in the main thread of its own process: build it, say "ready"
    with its facts, then run its real loop (our ``Trainer.fit()`` / HF ``Trainer.train()``) one
    optimizer step per "step" received, answering "done" after each; "stop" ends it."""
    import traceback

    torch.set_num_threads(threads)

    def pause() -> bool:
        conn.send(("done", None))
        return conn.recv() == "stop"

    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = tiny_config(f"{tmp}/ours", train_overrides)
            if which == "ours":
                from spiritlm.train.trainer import Trainer

                t = Trainer(cfg)
                pause_after_each_step(t, pause)
                conn.send(("ready", side_info(cfg, t.model, t.gas, t.world, t.flops_per_token)))
                if conn.recv() != "stop":
                    try:
                        t.fit()
                    except StopLoop:
                        pass
            else:
                from spiritlm.components.config import grad_accum_steps

                gas = grad_accum_steps(cfg, 1)
                hf, model = hf_trainer(cfg, gas, False, precision, tmp, [pausing_callback(pause)])
                conn.send(("ready", side_info(cfg, model, gas, 1, 0.0)))
                if conn.recv() != "stop":
                    hf.train()
        conn.send(("closed", None))
    except BaseException:  # noqa: BLE001 -- reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))


class ProcessLoop:
    """A side of the bench in its own process (``side_process``): ``step()`` runs exactly one
    optimizer step of its loop. Why processes, not threads: a loop run from a second thread pays
    for a second OpenMP thread team -- measured on the demo's model at 2 threads, compiled, 0.26-
    0.28 s a step against 0.19 s in a main thread, and unequally for different code -- so two
    threads per process made the two-thread comparison measure the threading, not the loops."""

    def __init__(self, which: str, train_overrides: Sequence[str], precision: str, threads: int):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.which = which
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=side_process, args=(child, which, list(train_overrides), precision, threads),
                                daemon=True, name=f"bench-{which}")
        self.proc.start()
        child.close()
        self.info = self._recv("ready")

    def _recv(self, want: str):
        try:
            kind, payload = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"train bench: the {self.which} side's process died "
                               f"(exit code {self.proc.exitcode})") from None
        if kind == "error":
            raise RuntimeError(f"train bench: the {self.which} side failed:\n{payload}")
        if kind != want:
            raise RuntimeError(f"train bench: the {self.which} side said {kind!r}, expected {want!r}")
        return payload

    def step(self) -> None:
        self.conn.send("step")
        self._recv("done")

    def close(self) -> None:
        try:
            if self.proc.is_alive():
                self.conn.send("stop")
                self._recv("closed")
        except (RuntimeError, BrokenPipeError, OSError):
            pass
        finally:
            self.proc.join(timeout=60)
            if self.proc.is_alive():
                self.proc.terminate()
