"""The training loop, driven by DeepSpeed, for any registered model family (``spiritlm.models``).

    from spiritlm.config import load_config
    from spiritlm.train import TrainConfig, train
    run_dir = train(load_config(TrainConfig, "train/tiny_cpu.toml"))

The trainer receives the family's ``ModelSpec`` (from ``cfg.model_type``) and never names a
family: the spec plans (checks before any weight is loaded), builds the model, makes the batches,
computes the loss and exports. Evaluation while training is a component passed in
(``evaluator=``: ``spiritlm train`` hands ``spiritlm.eval.during_training.DuringTrainingEval``).

Read top to bottom: ``Trainer.__init__`` checks the config, takes the run directory's lock and
sets up process, model, data and engine (and resumes);
``train_step`` runs one optimizer step (grad-accumulation micro-batches, non-finite loss policy);
``fit`` loops, logs, checkpoints and exports. The trainer is *Stateful*: ``state_dict`` holds the
step counters (all ranks) and ``rank_state_dict`` this rank's data position and RNG states.

Outputs in ``run_dir``: ``config.yaml`` (resolved), ``deepspeed.json``, ``metrics.jsonl``,
``tensorboard/``, ``curves.png``, ``checkpoints/`` (see ``checkpoint.py``), ``hf/`` (export).
The run directory's contract (train/README.md, "The run directory"): one writer (``.lock``, held
by rank 0 from start to the end of ``fit``), a fresh start owns fresh logs, a resume truncates
them to its checkpoint, the export is complete or absent, a failed checkpoint leaves the last one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch
import torch.distributed as dist

from spiritlm.components import checkpoint as ckpt
from spiritlm.components.config import TrainConfig, grad_accum_steps, validate_config
from spiritlm.components.metrics import TYPES, RunLog, guess_peak_flops, model_flops_per_token, plot_curves
from spiritlm.components.mixture import InterleaveFn
from spiritlm.config import ConfigError, dump_config, save_config
from spiritlm.models import model_spec_of
from spiritlm.precision import log_choice, resolve_precision
from spiritlm.train.engine import RunDirLock, deepspeed_config, init_distributed, lr_lambda, setup_process

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Loss became NaN/inf and the policy is to stop (the last complete checkpoint is kept)."""


# evaluation while training: a callable made from the trainer, called every cfg.eval_every steps
EvaluatorFactory = Callable[["Trainer"], Callable[[int], dict]]


class Trainer:
    def __init__(self, cfg: TrainConfig, sources: Optional[Sequence] = None,
                 weights: Optional[Sequence[float]] = None,
                 interleave_fns: Optional[Mapping[str, InterleaveFn]] = None,
                 evaluator: Optional[EvaluatorFactory] = None):
        # ---- process + config checks (all before loading weights) ----------------------------
        self.cfg = cfg
        setup_process(cfg)
        validate_config(cfg, int(os.environ["WORLD_SIZE"]))
        if cfg.eval_every and evaluator is None:
            raise ConfigError(f"eval_every={cfg.eval_every} needs an evaluator: `spiritlm train` passes one; from "
                              "Python pass Trainer(cfg, evaluator=spiritlm.eval.during_training.DuringTrainingEval) "
                              "or set eval_every=0")
        # one writer per run directory: rank 0 locks it before anything is written there (the
        # other ranks of this job share its folder); released at the end of fit, or here on error
        self._lock = RunDirLock(Path(cfg.run_dir)) if int(os.environ.get("RANK", "0")) == 0 else None
        if self._lock is not None:
            self._lock.acquire()
        try:
            self._setup(sources, weights, interleave_fns, evaluator)
        except BaseException:
            self.release()
            raise

    def _setup(self, sources, weights, interleave_fns, evaluator) -> None:
        cfg = self.cfg
        # precision follows the hardware ("auto"): resolved before the plan and the DeepSpeed config
        self.precision = resolve_precision(cfg.deepspeed.precision, "cuda" if torch.cuda.is_available() else "cpu")
        cfg.deepspeed.precision = self.precision.precision
        if int(os.environ.get("RANK", "0")) == 0:
            log_choice(self.precision, log)
        # the model family (spiritlm.models) brings its model, batches, loss and export through its
        # ModelSpec; a family with a plan checks and reads its data before any weight is loaded
        self.spec = model_spec_of(cfg)
        self.plan = self.spec.plan(cfg, sources, weights, interleave_fns) if self.spec.plan else None
        self._plan_kw = {"plan": self.plan} if self.spec.plan else {}
        import deepspeed

        init_distributed(cfg)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.gas = grad_accum_steps(cfg, self.world)
        self.ds_config = deepspeed_config(cfg, self.world)
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        # what to resume from, settled before any weight is loaded (a broken `latest` is refused now)
        resume_tag = ckpt.latest_tag(self.ckpt_dir) if cfg.checkpoint.resume else None
        torch.manual_seed(cfg.seed)
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

        # ---- the family's model ---------------------------------------------------------------
        dtype = torch.bfloat16 if cfg.deepspeed.precision == "bf16" else torch.float32
        self.model, self._hf_ds = self.spec.build(cfg, self.ds_config, dtype)
        mc = self.model.config
        if cfg.model.activation_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.model.compile:  # in place: the parameters, their names and the state dict stay the module's
            # A graph break (sdpa_varlen's attention runs uncompiled) resumes inside transformers'
            # deprecate_kwarg wrapper, one code object shared by several module classes: dynamo
            # recompiles it once per class and once more when the document count changes shape
            # (13 for the demo's LLaMA, whatever its depth). Past the default limit of 8 the rest
            # ran uncompiled, 7% slower (0.284 vs 0.264 s a step, demo model on its shards, bf16).
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            self.model.compile()

        # ---- data: this rank's batches (a packer over a stream, or one resumable batch maker) ---
        self.packer = self.spec.batches(cfg, self.model, self.rank, self.world, **self._plan_kw)
        self.stream = getattr(self.packer, "stream", self.packer)

        # ---- DeepSpeed engine: AdamW (no decay on 1-D params), LR schedule ------------------
        decay, no_decay = [], []
        for p in self.model.parameters():
            if not p.requires_grad:  # frozen parts (a frozen LM or encoder) stay out of the optimizer
                continue
            (decay if len(getattr(p, "ds_shape", p.shape)) >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.model, model_parameters=groups, config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg)))
        self.engine.train()

        # ---- counters, logs, resume -------------------------------------------------------
        self.step = 0
        self.tokens_seen = 0
        self.nonfinite = 0
        self.flops_per_token = model_flops_per_token(mc, cfg.data.seq_len)
        self.peak_flops = cfg.log.peak_flops or guess_peak_flops()
        # a fresh start (nothing to resume) removes the logs an earlier, killed run left here
        self.runlog = RunLog(self.run_dir, cfg.log.tensorboard, enabled=self.rank == 0, fresh=resume_tag is None)
        if self.rank == 0:
            save_config(cfg, self.run_dir / "config.yaml")
            (self.run_dir / "deepspeed.json").write_text(json.dumps(self.ds_config, indent=2) + "\n")
        # held-out loss + a light suite every cfg.eval_every steps (a component passed in)
        self.evaluator = evaluator(self) if cfg.eval_every else None
        if resume_tag is not None:
            self.resume(resume_tag)

    def release(self) -> None:
        """Give up the run directory's lock (the end of ``fit`` does; ``fit`` takes it again)."""
        if self._lock is not None:
            self._lock.release()

    # what the family's plan settled, read through (None where the family has no plan)
    @property
    def layout(self):
        return getattr(self.plan, "layout", None)

    @property
    def rows(self):
        return getattr(self.plan, "rows", None)

    @property
    def isolation(self):
        return getattr(self.plan, "isolation", None)

    # ---- Stateful ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "nonfinite": self.nonfinite}

    def load_state_dict(self, state: Mapping) -> None:
        self.step, self.tokens_seen, self.nonfinite = state["step"], state["tokens_seen"], state["nonfinite"]

    def rank_state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(), "packer": self.packer.state_dict(), "rng": ckpt.rng_state()}

    def load_rank_state_dict(self, state: Mapping) -> None:
        self.stream.load_state_dict(state["stream"])
        self.packer.load_state_dict(state["packer"])
        ckpt.set_rng_state(state["rng"])

    def save(self) -> Path:
        path = ckpt.save_checkpoint(self.engine, self.ckpt_dir, self.step, self.state_dict(),
                                    self.rank_state_dict(), keep=self.cfg.checkpoint.keep,
                                    extra_files={"config.yaml": dump_config(self.cfg)})
        if self.spec.save_parts is not None:  # e.g. projector + LoRA adapters, readable on their own
            self.spec.save_parts(self, path)
        return path

    def resume(self, tag: str) -> None:
        trainer_state, rank_state = ckpt.load_checkpoint(self.engine, self.ckpt_dir, tag)
        self.load_state_dict(trainer_state)
        self.load_rank_state_dict(rank_state)
        self.runlog.truncate_after(self.step)
        log.info("resumed from %s at step %d", self.ckpt_dir / tag, self.step)

    # ---- one optimizer step ----------------------------------------------------------------------
    def forward_loss(self, batch: Mapping[str, torch.Tensor]):
        return self.spec.loss(self.engine, batch, self.device, **self._plan_kw)

    def mixture(self) -> dict:
        """Realised token share of each source over the run so far (``mix/<source>``), where the
        family draws from a mixture."""
        return self.spec.mixture(self) if self.spec.mixture is not None else {}

    def _all_finite(self, loss: torch.Tensor) -> bool:
        finite = bool(torch.isfinite(loss).item())
        if self.world == 1:  # nothing to agree on: no collective per micro-batch
            return finite
        flag = torch.tensor([1.0 if finite else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def train_step(self) -> dict:
        sums = torch.zeros(len(TYPES), dtype=torch.float64, device=self.device)
        counts = torch.zeros(len(TYPES), dtype=torch.float64, device=self.device)
        done = 0
        lr = self.scheduler.get_last_lr()[0]  # the LR this step uses
        while done < self.gas:
            batch = self.packer.next_batch(self.cfg.micro_batch_size)
            loss, s, c = self.forward_loss(batch)
            if not self._all_finite(loss):
                self.nonfinite += 1
                if self.cfg.on_nonfinite == "stop" or self.nonfinite > self.cfg.max_nonfinite:
                    raise NonFiniteLossError(
                        f"non-finite loss at step {self.step + 1} ({self.nonfinite} so far); the last "
                        f"complete checkpoint is {self.ckpt_dir / (ckpt.latest_tag(self.ckpt_dir) or '-')}. "
                        "Lower optim.lr, raise optim.warmup_steps or use on_nonfinite='skip'"
                    )
                log.warning("non-finite loss at step %d: micro-batch skipped (%d so far)", self.step + 1, self.nonfinite)
                continue  # no backward, no engine.step: the next micro-batch takes this slot
            self.engine.backward(loss)
            self.engine.step()
            sums += s.double()
            counts += c.double()
            done += 1
        self.step += 1
        tokens = self.cfg.micro_batch_size * self.cfg.data.seq_len * self.gas * self.world
        self.tokens_seen += tokens
        if self.world > 1:  # one collective for sums and counts
            both = torch.cat([sums, counts])
            dist.all_reduce(both)
            sums, counts = both[: len(TYPES)], both[len(TYPES):]
        # one device-to-host read for every logged value (each .item() is a sync on GPU)
        n = len(TYPES)
        vals = torch.cat([(sums.sum() / counts.sum().clamp(min=1)).reshape(1), sums / counts.clamp(min=1),
                          counts]).tolist()
        out = {"step": self.step, "loss": vals[0]}
        for k, name in enumerate(TYPES):
            out[f"loss/{name}"] = vals[1 + k] if vals[1 + n + k] > 0 else None
        out["lr"] = lr
        gn = self.engine.get_global_grad_norm()
        out["grad_norm"] = float(gn) if gn is not None else None
        out["tokens"] = tokens
        return out

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self, until_step: Optional[int] = None) -> Path:
        """Train to ``cfg.steps`` (or stop at ``until_step``, e.g. to simulate an interruption).
        Holds the run directory's lock while it runs and releases it when it ends, also on error."""
        if self._lock is not None:
            self._lock.acquire()  # again, after an earlier fit of this trainer released it
        try:
            return self._fit(until_step)
        finally:
            self.release()

    def _fit(self, until_step: Optional[int]) -> Path:
        cfg = self.cfg
        stop = min(cfg.steps, until_step or cfg.steps)
        bar = None
        if self.rank == 0 and cfg.log.progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        self.history: list[dict] = []
        t_last, tok_last = time.perf_counter(), 0
        shown_tok_s = 0.0  # the bar keeps the last measured rate between log steps
        while self.step < stop:
            rec = self.train_step()
            tok_last += rec.pop("tokens")
            rec["nonfinite_skipped"] = self.nonfinite
            if self.step % cfg.log.every == 0 or self.step == stop:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                now = time.perf_counter()
                rec["tokens_per_s"] = tok_last / max(now - t_last, 1e-9)
                if self.peak_flops:
                    rec["mfu"] = rec["tokens_per_s"] * self.flops_per_token / (self.peak_flops * self.world)
                rec["tokens_seen"] = self.tokens_seen
                rec.update(self.mixture())
                t_last, tok_last = now, 0
                shown_tok_s = rec["tokens_per_s"]
                self.runlog.log(rec)
            self.history.append(rec)
            if self.evaluator is not None and self.evaluator.due(self.step):
                ev = self.evaluator(self.step)  # every rank (held-out loss is collective)
                self.runlog.log(ev)
                t_last += ev["eval/seconds"]  # evaluation time is not training throughput
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{shown_tok_s:.0f}")
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and self.step < stop:
                self.save()
        if bar is not None:
            bar.close()
        if ckpt.latest_tag(self.ckpt_dir) != ckpt.tag_of(self.step):
            self.save()
        family = self.spec.summary(self) if self.spec.summary is not None else {"attention_isolation": None,
                                                                                "mixture_unit": cfg.data.mixture_unit}
        self.runlog.write_summary({"step": self.step, "tokens_seen": self.tokens_seen, **family,
                                   "mixture_tokens": self.mixture(), "precision": self.precision.as_dict(),
                                   # CPU GEMMs split their reductions by thread, so the weights'
                                   # last bits depend on it: equal runs need equal thread counts
                                   "torch_threads": torch.get_num_threads()})
        if self.step >= cfg.steps:
            if cfg.checkpoint.export_hf:
                self.export(self.run_dir / "hf")
            if self.rank == 0 and cfg.log.plots:
                plot_curves(self.run_dir)
        self.runlog.close()
        return self.run_dir

    def export(self, out_dir: Path) -> Path:
        return self.spec.export(self, out_dir)


def train(cfg: TrainConfig, sources: Optional[Sequence] = None, weights: Optional[Sequence[float]] = None,
          interleave_fns: Optional[Mapping[str, InterleaveFn]] = None,
          evaluator: Optional[EvaluatorFactory] = None) -> Path:
    """Train (resuming if a checkpoint exists) and return the run directory."""
    trainer = Trainer(cfg, sources=sources, weights=weights, interleave_fns=interleave_fns, evaluator=evaluator)
    return trainer.fit()
