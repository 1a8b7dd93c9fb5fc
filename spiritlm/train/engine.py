"""DeepSpeed plumbing: the JSON config generated from ``TrainConfig``, process setup, LR schedule.

``deepspeed_config(cfg, world_size)`` is the single place DeepSpeed settings come from; a user
JSON (``deepspeed.json``) is merged over it key by key (its batch keys must agree with ours).
``setup_process(cfg)`` prepares a process before ``deepspeed.initialize``: env for a launcher-less
single process, ``TORCH_EXTENSIONS_DIR`` (a persistent cache for any op DeepSpeed compiles) and,
on CPU, skipping the shared-memory all-reduce op DeepSpeed would otherwise compile on first start
(~1 min; it serves inference all-reduce only, training collectives go through gloo).
``RunDirLock`` makes rank 0 the one writer of a run directory (``<run_dir>/.lock``, flock).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Optional

import torch

from spiritlm.config import ConfigError
from spiritlm.components.config import TrainConfig, grad_accum_steps

log = logging.getLogger(__name__)


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    ds, opt = cfg.deepspeed, cfg.optim
    gas = grad_accum_steps(cfg, world_size)
    zero: dict = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero.update(overlap_comm=False, contiguous_gradients=True,
                    reduce_bucket_size=int(5e7), allgather_bucket_size=int(5e7))
    if ds.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True, stage3_prefetch_bucket_size=int(5e7),
                    stage3_param_persistence_threshold=int(1e5))
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    out = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": gas,
        "train_batch_size": cfg.micro_batch_size * gas * world_size,
        "gradient_clipping": opt.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": False},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": opt.lr, "betas": list(opt.betas), "eps": opt.eps,
                       "weight_decay": opt.weight_decay, "torch_adam": ds.torch_adam, "adam_w_mode": True},
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if opt.fused:
        if not ds.torch_adam:
            raise ConfigError("optim.fused=true is torch's fused AdamW: set deepspeed.torch_adam=true "
                              "(or optim.fused=false for DeepSpeed's own Adam)")
        out["optimizer"]["params"]["fused"] = True  # DeepSpeed hands unknown params to torch.optim.AdamW
    if ds.offload_optimizer and ds.torch_adam:
        out["zero_force_ds_cpu_optimizer"] = False
    if ds.json:
        p = Path(ds.json)
        if not p.is_file():
            raise ConfigError(f"deepspeed.json={p} not found: give a DeepSpeed JSON file or leave it empty")
        user = json.loads(p.read_text())
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
            if key in user and user[key] != out[key]:
                raise ConfigError(
                    f"{p}: {key}={user[key]} disagrees with the recipe ({out[key]}); remove it from the "
                    "JSON and set micro_batch_size / global_batch_size in the recipe"
                )
        stage = user.get("zero_optimization", {}).get("stage", ds.zero_stage)
        if stage != ds.zero_stage:
            raise ConfigError(f"{p}: zero_optimization.stage={stage} but the recipe has deepspeed.zero_stage="
                              f"{ds.zero_stage}; set deepspeed.zero_stage={stage} in the recipe")
        if user.get("fp16", {}).get("enabled"):
            raise ConfigError(f"{p}: fp16 is not supported; use deepspeed.precision = 'bf16' or 'fp32'")
        out = _merge(out, user)
    return out


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_process(cfg: TrainConfig) -> None:
    """Env + DeepSpeed op settings; call before ``import deepspeed`` initialises communication."""
    for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(k, v)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    ext = Path(cfg.deepspeed.torch_extensions_dir)
    if not ext.is_absolute():
        ext = Path.cwd() / ext  # the repository root when run from it (gitignored there)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ext))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if not torch.cuda.is_available() and not cfg.deepspeed.cpu_shm_comm_op:
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed(cfg: TrainConfig) -> None:
    import deepspeed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    backend = cfg.deepspeed.dist_backend or ("nccl" if torch.cuda.is_available() else "gloo")
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def lr_lambda(cfg: TrainConfig):
    """Multiplier of ``optim.lr`` at optimizer step ``s``: constant (paper) or warmup + cosine."""
    o, total = cfg.optim, cfg.steps

    def f(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


class RunDirLock:
    """One writer per run directory: an exclusive ``flock`` on ``<run_dir>/.lock`` holding the
    holder's pid, host and start time (one JSON line). Two trainers writing one folder interleave
    their metrics and checkpoints and overwrite each other's ``latest``; the second is refused at
    start instead.

    flock, not "the file exists": the kernel drops the lock when its process dies, however it
    dies (SIGKILL, OOM killer, node reboot for a local disk), so a file left behind by a killed
    run never blocks the next one; its content only says whose lock was taken over. The file is
    emptied on release and never deleted: deleting a lock file while another process has it open
    lets two processes hold locks on two different files of the same name."""

    NAME = ".lock"

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / self.NAME
        self._f = None  # a file object: if the lock is dropped unreleased, closing it unlocks

    @staticmethod
    def _holder(text: str) -> Optional[dict]:
        try:
            h = json.loads(text)
            return h if isinstance(h, dict) and "pid" in h else None
        except ValueError:
            return None

    def acquire(self) -> "RunDirLock":
        if self._f is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            text = f.read().strip()
            f.close()
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                # e.g. Lustre mounted without -o flock: training still works, unguarded
                log.warning("%s: cannot lock the run directory (%s): nothing stops a second trainer "
                            "on it", self.path, os.strerror(e.errno or 0))
                return self
            h = self._holder(text)
            who = (f"pid {h['pid']} on {h.get('host', '?')}, started {h.get('start', '?')}" if h
                   else "a process that is starting up")
            raise ConfigError(f"run_dir {self.run_dir} is in use by another trainer ({who}; lock file "
                              f"{self.path}): wait for it to finish, or train into another folder with "
                              "--set run_dir=DIR") from None
        f.seek(0)
        stale = self._holder(f.read().strip())
        if stale is not None:
            log.warning("%s: took over the stale lock of pid %s on %s (started %s), which ended without "
                        "releasing it", self.path, stale["pid"], stale.get("host", "?"), stale.get("start", "?"))
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "start": time.strftime("%Y-%m-%d %H:%M:%S %z")}) + "\n")
        f.flush()
        self._f = f
        return self

    def release(self) -> None:
        if self._f is None:
            return
        f, self._f = self._f, None
        try:
            f.seek(0)
            f.truncate()  # empty: a lock file with a holder means "ended without releasing"
        except OSError:
            pass
        finally:
            f.close()  # closing drops the flock

    def __del__(self):  # a trainer dropped without fit: empty the file too, not only unlock it
        try:
            self.release()
        except Exception:  # noqa: BLE001 -- nothing to report from a finalizer
            pass
