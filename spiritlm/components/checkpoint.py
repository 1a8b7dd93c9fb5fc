"""Checkpoints that survive crashes, and the export to HF format.

Layout of ``<run_dir>/checkpoints``::

    step_00000020/            DeepSpeed files (model, optimizer, scheduler; ZeRO shards per rank)
        trainer_state.json    step, counters, metrics history length
        rank_00000.pt         per-rank data position + RNG states (torch.load weights_only=True)
    latest                    text file with the newest complete tag (DeepSpeed reads it too)

Writing is atomic: every rank writes into ``.tmp-step_N`` (a name ``latest`` never points to),
all ranks agree that every part is written, rank 0 renames the folder to ``step_N`` and only then replaces
``latest`` (write a temp file + ``os.replace``). A crash at any moment leaves ``latest`` on the
previous complete checkpoint; stale ``.tmp-*`` folders are removed at the next save. A write
that fails (a full disk: torch raises it as a C++ RuntimeError) removes this step's files and
raises ``CheckpointWriteError``, one line naming the checkpoint ``latest`` still points to.

``export_hf`` writes ``save_pretrained`` safetensors + the tokenizer with the added speech tokens
(``SpiritTokenizer.save_pretrained``), laid out like the released Spirit LM checkpoints
(``config.json``, ``model.safetensors``, ``tokenizer.model``, ``tokenizer_config.json``); the
config also carries the fields transformers 4.x reads (``add_legacy_config_fields``). It writes
into ``hf.tmp`` and swaps that in (``replace_dir``): ``hf/`` is complete or absent at any moment.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from spiritlm.config import ConfigError, dotted

TMP_PREFIX = ".tmp-"


def tag_of(step: int) -> str:
    return f"step_{step:08d}"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


def _py(obj):
    """RNG states -> tensors/lists/ints only, so that ``torch.load(weights_only=True)`` reads them."""
    if isinstance(obj, tuple):
        return {"__tuple__": [_py(x) for x in obj]}
    if isinstance(obj, list):
        return [_py(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _py(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(obj.copy()), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _unpy(obj):
    if isinstance(obj, dict):
        if "__tuple__" in obj:
            return tuple(_unpy(x) for x in obj["__tuple__"])
        if "__ndarray__" in obj:
            return obj["__ndarray__"].numpy().astype(obj["dtype"])
        return {k: _unpy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpy(x) for x in obj]
    return obj


class CheckpointWriteError(ConfigError, OSError):
    """A checkpoint could not be written (disk full, quota, I/O error): the previous one is kept
    as ``latest``. A ConfigError so that ``spiritlm train`` prints it as one line (the fix is the
    user's: free space and rerun); an OSError because that is what it is."""


# what torch.save's C++ writer raises (as RuntimeError) when a write fails, e.g. on a full disk:
# "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598", "basic_ios::clear"
_TORCH_WRITE_FAILED = ("inline_container", "PytorchStreamWriter", "basic_ios::clear", "iostream error",
                       "file write failed", "unexpected pos")


def _write_failure(e: BaseException, where: Path) -> str | None:
    """Why writing failed, in words, or None when ``e`` is not a failed write."""
    if isinstance(e, OSError):
        return os.strerror(e.errno) if e.errno else (str(e) or type(e).__name__)
    if isinstance(e, RuntimeError) and any(m in str(e) for m in _TORCH_WRITE_FAILED):
        try:
            free = f"{shutil.disk_usage(where).free / 2**20:,.0f} MiB free there"
        except OSError:
            free = "free space unknown"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        try:  # torch does not pass errno on; a nearly empty disk says it was full
            full = shutil.disk_usage(where).free < 64 * 2**20
        except OSError:
            full = False
        return f"{'No space left on device' if full else 'a write failed'} ({free}; torch said: {first[:160]})"
    return None


def _all_ok(ok: bool) -> bool:
    """Every rank's ``ok``, agreed (instead of a plain barrier): a rank that failed to write must
    not leave the others waiting at a barrier it never reaches, nor let rank 0 publish the tag."""
    if not dist.is_initialized():
        return ok
    on_gpu = torch.cuda.is_available() and dist.get_backend() != "gloo"
    dev = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    flag = torch.tensor([1.0 if ok else 0.0], device=dev)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def save_checkpoint(engine, ckpt_dir: Path, step: int, trainer_state: dict, rank_state: dict,
                    keep: int = 0, extra_files: dict[str, str] | None = None) -> Path:
    """Atomic save (see module doc). Every rank calls it; returns the final folder. A failed
    write (full disk, ...) removes this step's partial files and raises CheckpointWriteError
    on every rank, ``latest`` unchanged."""
    ckpt_dir = Path(ckpt_dir)
    tag = tag_of(step)
    tmp_tag = TMP_PREFIX + tag
    tmp, final = ckpt_dir / tmp_tag, ckpt_dir / tag

    def prepare():  # rank 0
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_dir.glob(TMP_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)

    def write():  # every rank: its engine shards and its data position
        _engine_save(engine, ckpt_dir, tmp_tag)
        torch.save(_py(rank_state), tmp / f"rank_{_rank():05d}.pt")

    def publish():  # rank 0, once every rank's part is written
        for name, text in (extra_files or {}).items():  # e.g. the resolved config
            (tmp / name).write_text(text)
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_latest(ckpt_dir, tag)

    rank0 = _rank() == 0
    for phase, here in ((prepare, rank0), (write, True), (publish, rank0)):
        why, err = _attempt(phase, ckpt_dir) if here else (None, None)
        if not _all_ok(why is None):  # in place of a barrier: all ranks go on, or all raise
            _failed(ckpt_dir, tag, why, err, keep)
    if rank0 and keep > 0:
        tags = sorted(p.name for p in ckpt_dir.glob("step_*") if p.is_dir())
        for old in tags[:-keep]:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    _barrier()
    return final


def _engine_save(engine, ckpt_dir: Path, tag: str) -> None:
    """``engine.save_checkpoint``, with a failed file write held back until DeepSpeed returns.
    DeepSpeed ends its save with a barrier; a rank whose ``torch.save`` raised (a full disk) would
    skip it and leave the other ranks waiting there for ever. Its checkpoint engine's ``save`` is
    wrapped so that the first failed write is recorded, the rest of this rank's files skipped,
    and the error raised once every rank has passed DeepSpeed's collectives."""
    ce = getattr(engine, "checkpoint_engine", None)
    failed: list[BaseException] = []
    if ce is not None and callable(getattr(ce, "save", None)):
        real = ce.save

        def save(*a, **k):  # (state_dict, path), positional or by name
            if failed:
                return
            try:
                return real(*a, **k)
            except (OSError, RuntimeError) as e:
                if _write_failure(e, ckpt_dir) is None:
                    raise
                failed.append(e)

        ce.save = save
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False)
    finally:
        if ce is not None and "save" in vars(ce):
            del ce.save  # back to the class's method
    if failed:
        raise failed[0]


def _attempt(fn, where: Path) -> tuple[str | None, BaseException | None]:
    """Run one write phase: (None, None), or why and the error where a write failed; any other
    error propagates unchanged (a bug must not read as a full disk)."""
    try:
        fn()
        return None, None
    except (OSError, RuntimeError) as e:
        why = _write_failure(e, where)
        if why is None:
            raise
        return why, e


def _failed(ckpt_dir: Path, tag: str, why: str | None, err: BaseException | None, keep: int):
    """Remove what this save left (rank 0) and raise one line on every rank."""
    if _rank() == 0:
        shutil.rmtree(ckpt_dir / (TMP_PREFIX + tag), ignore_errors=True)  # frees the space it took
        final = ckpt_dir / tag
        latest = ckpt_dir / "latest"
        if final.is_dir() and not (latest.is_file() and latest.read_text().strip() == tag):
            # renamed into place but never published: make it incomplete first (a crash in the
            # middle of rmtree must not leave a folder that complete_tags would count)
            (final / "trainer_state.json").unlink(missing_ok=True)
            shutil.rmtree(final, ignore_errors=True)
    try:
        prev = latest_tag(ckpt_dir)
    except ConfigError:
        prev = None
    then = (f"the last complete checkpoint is {prev} (latest), a rerun resumes there" if prev else
            "there is no complete checkpoint yet, a rerun starts from step 0")
    # the old checkpoints are pruned only once the new one is complete: a save needs room for one
    # more beside the kept ones
    room = f"checkpoint.keep={keep} kept" if keep > 0 else "all kept: checkpoint.keep=0"
    raise CheckpointWriteError(
        f"checkpoint {tag} could not be written to {ckpt_dir}: {why or 'another rank failed to write its part'}; "
        f"{then}; free space there and rerun (a save needs room for one more checkpoint beside the {room})"
    ) from err


def _fsync_dir(d: Path) -> None:
    for f in d.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _write_latest(ckpt_dir: Path, tag: str) -> None:
    tmp = ckpt_dir / (TMP_PREFIX + "latest")
    with open(tmp, "w") as f:
        f.write(tag)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt_dir / "latest")


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Tags of the finished checkpoints (renamed into place, with trainer_state.json), oldest first."""
    return sorted(p.parent.name for p in Path(ckpt_dir).glob("step_*/trainer_state.json"))


def latest_tag(ckpt_dir: Path) -> str | None:
    """The checkpoint to resume from: the one ``latest`` names, or -- when that one is missing
    or incomplete (deleted by hand, or a copy that lost it) -- the newest complete one, with a
    warning. None when there is no complete checkpoint and no ``latest``."""
    import logging

    p = Path(ckpt_dir) / "latest"
    tags = complete_tags(ckpt_dir)
    tag = p.read_text().strip() if p.is_file() else None
    if tag is not None and tag in tags:
        return tag
    if tags:
        if tag is not None:
            logging.getLogger(__name__).warning(
                "%s points to %s, which is missing or incomplete; resuming from %s, the newest "
                "complete checkpoint", p, tag, tags[-1])
        return tags[-1]
    if tag is None:
        return None
    raise ConfigError(f"{p} points to {tag}, which is missing or incomplete, and no other checkpoint "
                      f"in {ckpt_dir} is complete: remove {p} to start over, or set "
                      "checkpoint.resume=false")


def _model_differences(ckpt_dir: Path, tag: str) -> str:
    """``model.*`` settings of the checkpoint's saved config that differ from this run's (the
    trainer writes this run's config.yaml into the run folder before resuming)."""
    import yaml

    try:
        old = yaml.safe_load((ckpt_dir / tag / "config.yaml").read_text()).get("model", {})
        new = yaml.safe_load((ckpt_dir.parent / "config.yaml").read_text()).get("model", {})
    except (OSError, AttributeError, yaml.YAMLError):
        return ""

    a, b = dotted(old or {}, "model."), dotted(new or {}, "model.")
    diff = [f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]
    return "; ".join(diff[:4])


def load_checkpoint(engine, ckpt_dir: Path, tag: str) -> tuple[dict, dict]:
    """Restore engine state (model, optimizer, scheduler); returns (trainer_state, this rank's state)."""
    ckpt_dir = Path(ckpt_dir)
    try:
        path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
    except RuntimeError as e:
        if "loading state_dict" not in str(e) and "size mismatch" not in str(e):
            raise
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        what = _model_differences(ckpt_dir, tag) or (lines[1] if len(lines) > 1 else lines[0])
        raise ConfigError(
            f"{ckpt_dir / tag} holds a model of another shape ({what}): use a new run_dir for this "
            "model, the model settings of that run to resume it, or --set checkpoint.resume=false "
            "to start over in this folder") from None
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load {ckpt_dir / tag}")
    trainer_state = json.loads((ckpt_dir / tag / "trainer_state.json").read_text())
    f = ckpt_dir / tag / f"rank_{_rank():05d}.pt"
    if not f.is_file():
        raise RuntimeError(f"{f} missing: resume with the same number of processes as the checkpoint")
    rank_state = _unpy(torch.load(f, weights_only=True))
    return trainer_state, rank_state


def add_legacy_config_fields(config_json: Path) -> dict:
    """Write the config fields that transformers 4.x (the release's environment) reads, beside
    transformers 5's: 4.x reads RoPE θ from the top-level ``rope_theta`` (5.x moved it into
    ``rope_parameters``) and would silently run a θ = 100k model at its 10k default without it;
    ``rope_scaling`` (None = plain RoPE), ``torch_dtype`` (5.x writes ``dtype``). ``use_cache`` is
    turned back on (training turns it off; generation wants it)."""
    cfg = json.loads(Path(config_json).read_text())
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope:
        cfg["rope_theta"] = float(rope["rope_theta"])
    if rope.get("rope_type", "default") == "default":
        cfg["rope_scaling"] = None
    else:  # 4.x names the scaling parameters the same way, with the type under "rope_type"
        cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if "dtype" in cfg and "torch_dtype" not in cfg:
        cfg["torch_dtype"] = cfg["dtype"]
    cfg["use_cache"] = True
    Path(config_json).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return cfg


def export_hf(engine, model, out_dir: Path, tokenizer_dir: str | None, layout, zero_stage: int,
              extra_files: dict[str, str] | None = None) -> Path:
    """``save_pretrained`` (safetensors) + tokenizer with the added tokens. Every rank calls it."""
    out_dir = Path(out_dir)
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # gathered on rank 0
    else:
        state = model.state_dict() if _rank() == 0 else None
    if _rank() == 0:
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        state = _cpu_copies(state)
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        add_legacy_config_fields(tmp / "config.json")
        if tokenizer_dir:
            from spiritlm.text_tokenizer import SpiritTokenizer

            SpiritTokenizer.from_pretrained(tokenizer_dir, layout=layout).save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        _fsync_dir(tmp)
        replace_dir(tmp, out_dir)
    _barrier()
    return out_dir


def _cpu_copies(state: dict) -> dict:
    """CPU copies of a state dict that keep shared tensors shared: a tied-embedding model's
    ``embed_tokens.weight`` and ``lm_head.weight`` stay one tensor, which save_pretrained then
    writes once (two separate copies would be written as two weights)."""
    copies: dict = {}
    out = {}
    for k, v in state.items():
        key = (v.device, v.data_ptr(), tuple(v.shape), v.dtype)
        if key not in copies:
            copies[key] = v.detach().to("cpu").contiguous().clone()
        out[k] = copies[key]
    return out


def replace_dir(tmp: Path, out: Path) -> Path:
    """Put the finished folder ``tmp`` in place of ``out`` so that ``out`` is, at every moment, the
    old complete folder, the new complete one, or absent -- never partial: the old one is renamed
    aside (``<out>.old``) before the new one is renamed in, and deleted only after. (Deleting
    ``out`` first, file by file, leaves a folder with config.json and half its weights if the
    process dies meanwhile, which a loader would take for an export.)"""
    tmp, out = Path(tmp), Path(out)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)  # left by a run that died between the two renames
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out
