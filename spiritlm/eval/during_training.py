"""Evaluation while training: every ``eval_every`` steps, held-out loss per source (one source per
modality: text, speech, interleaved) and a light suite (an ``eval/*.toml`` recipe, e.g.
``eval/during_training.toml``: a two-way speech task and a cross-modal one), logged as rows of
``metrics.jsonl`` / TensorBoard (keys ``eval/...``) and drawn beside the loss curves.

    eval_every = 200
    [eval]
    suite = "eval/during_training.toml"
    heldout = [{name = "text", path = "data/heldout/text", kind = "text"}, ...]

Who runs what, and why no rank hangs:

* **Held-out loss is collective.** Every rank takes its share of the held-out rows (the same
  number of forwards on every rank; a rank short of rows runs a row with no targets), and the
  per-source sums are all-reduced. Under ZeRO-3 the parameters are sharded, so a forward is
  itself collective: every rank must run the same number of them, which this gives.
* **The suite** runs on rank 0 alone under ZeRO 0-2 (every rank holds the whole model): the
  other ranks go on with the next step and wait inside its first collective until rank 0 joins,
  so nothing hangs as long as the suite takes less than the process group's timeout (30 min by
  default; the eval time is logged as ``eval/seconds`` and a warning is printed above 10 min).
  Under ZeRO-3 every rank runs the suite (same items, same batches, hence the same collective
  forwards) and only rank 0 writes.

Evaluation does not perturb training: it reads its own held-out sources (the training stream and
packer are untouched), runs under ``torch.no_grad`` in eval mode, and restores the torch, CUDA,
NumPy and ``random`` RNG states afterwards (tested: the same losses with and without it).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from spiritlm.config import ConfigError, load_config
from spiritlm.components.mixture import KINDS, SyntheticSource, check_meta, make_sources
from spiritlm.components.metrics import TYPES
from spiritlm.components.packing import IGNORE, Packer

log = logging.getLogger(__name__)

SLOW_EVAL_S = 600.0


@contextmanager
def preserved_rng():
    """Run a block without moving any RNG training reads (torch CPU/CUDA, NumPy, random)."""
    py, npy = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []  # this rank's GPU
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def heldout_sources(trainer) -> list:
    """The configured held-out shard folders; with synthetic training data, synthetic held-out
    documents of each kind (other names, hence other documents than the training ones)."""
    cfg = trainer.cfg
    if cfg.eval.heldout:  # read like training sources (aligned records through the reader)
        srcs, _ = make_sources(dataclasses.replace(cfg.data, sources=cfg.eval.heldout), trainer.plan.layout,
                               text_vocab=trainer.plan.layout.base_vocab_size)
        check_meta(srcs, trainer.plan.layout, trainer.plan.rows)
        return srcs
    if not cfg.data.sources:
        return [SyntheticSource(k, trainer.plan.layout, cfg.eval.heldout_docs, max_len=int(cfg.data.seq_len * 1.5),
                                name=f"heldout-{k}", bos_id=cfg.data.bos_id,
                                text_vocab=trainer.plan.layout.base_vocab_size) for k in KINDS]
    return []


def heldout_rows(source, n_docs: int, seq_len: int, bos_id: int, eos_id: int, seed: int) -> list[dict]:
    """The first ``n_docs`` documents of ``source`` (file order, epoch 0) packed into rows: the
    same rows at every evaluation."""
    n = min(n_docs, len(source))
    if n == 0:
        return []
    docs = [source.read(i, seed, 0) for i in range(n)]
    tokens = sum(len(d["input_ids"]) for d in docs)
    packer = Packer(itertools.cycle(docs), seq_len, bos_id, eos_id)
    return [packer.next_row() for _ in range(max(1, tokens // seq_len))]


class DuringTrainingEval:
    def __init__(self, trainer):
        self.t = trainer
        cfg = trainer.cfg
        self.every = cfg.eval_every
        self.rank, self.world = trainer.rank, trainer.world
        self.zero3 = cfg.deepspeed.zero_stage == 3
        self.rows: dict[str, list[dict]] = {}
        srcs = heldout_sources(trainer)
        if not srcs and self.rank == 0:
            log.warning("eval_every=%d: no [[eval.heldout]] sources, so no held-out loss; list held-out "
                        "shard folders (one per modality) under [[eval.heldout]]", self.every)
        for s in srcs:
            self.rows[s.name] = heldout_rows(s, cfg.eval.heldout_docs, cfg.data.seq_len,
                                             cfg.data.bos_id if cfg.data.add_bos else -1, cfg.data.eos_id, cfg.seed)
        self.suite_cfg = None
        self.tokenizer = self.encoder = None
        if cfg.eval.suite and (self.rank == 0 or self.zero3):
            from spiritlm.eval.model import load_speech_encoder
            from spiritlm.eval.suite import EvalConfig

            self.suite_cfg = load_config(EvalConfig, cfg.eval.suite, cfg.eval.suite_overrides)
            if self.suite_cfg.mini.build:
                raise ConfigError(f"{cfg.eval.suite}: mini.build=true in a during-training suite; build the "
                                  "mini benchmarks once beforehand (`spiritlm mini-bench DIR`) and point "
                                  "data_root at them")
            self.tokenizer = self._tokenizer()
            # loaded once: its units of the benchmark audio are cached across evaluations
            self.encoder = load_speech_encoder(self.suite_cfg.speech_encoder, self.suite_cfg.speech_encoder_args)

    def _tokenizer(self):
        from spiritlm.text_tokenizer import HF_FILE, SP_FILE, SpiritTokenizer, has_text_tokenizer

        cfg = self.t.cfg
        for d in (cfg.model.tokenizer, cfg.model.checkpoint):
            if d:
                p = Path(d)
                p = p.parent if p.name in (SP_FILE, HF_FILE) else p
                if has_text_tokenizer(p):
                    return SpiritTokenizer.from_pretrained(p, layout=self.t.layout)
        raise ConfigError("eval.suite needs the run's tokenizer: set model.tokenizer=DIR (a directory with "
                          "tokenizer.model or tokenizer.json), or drop eval.suite to log held-out losses only")

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def __call__(self, step: int) -> dict:
        t0 = time.perf_counter()
        engine = self.t.engine
        was_training = engine.module.training
        engine.eval()
        try:
            with preserved_rng(), torch.no_grad():
                rec = {"step": step, **self.heldout_losses()}
                if self.suite_cfg is not None:
                    rec.update(self.suite(step))
        finally:
            if was_training:
                engine.train()
        rec["eval/seconds"] = time.perf_counter() - t0
        if rec["eval/seconds"] > SLOW_EVAL_S and self.rank == 0:
            log.warning("evaluation at step %d took %.0f s: other ranks wait that long in a collective; keep "
                        "it under the process group timeout (lighter eval.suite, fewer eval.heldout_docs)",
                        step, rec["eval/seconds"])
        return rec

    def heldout_losses(self) -> dict:
        names = list(self.rows)
        if not names:
            return {}
        dev = self.t.device
        sums = torch.zeros(len(names), len(TYPES), dtype=torch.float64, device=dev)
        counts = torch.zeros_like(sums)
        mb = self.t.cfg.micro_batch_size
        for k, name in enumerate(names):
            rows = self.rows[name][self.rank::self.world]
            per_rank = math.ceil(len(self.rows[name]) / self.world)
            batches = math.ceil(per_rank / mb)
            for b in range(batches):  # the same number of forwards on every rank (ZeRO-3)
                chunk = rows[b * mb:(b + 1) * mb] or [self._empty_row()]
                batch = {f"{key}_BT": torch.from_numpy(np.stack([r[key] for r in chunk]))
                         for key in ("input_ids", "targets", "position_ids")}
                _, s, c = self.t.forward_loss(batch)
                sums[k] += s.double()
                counts[k] += c.double()
        dist.all_reduce(sums)
        dist.all_reduce(counts)
        out = {}
        tot_s, tot_c = sums.sum(), counts.sum()
        out["eval/loss"] = (tot_s / tot_c.clamp(min=1)).item()
        for k, name in enumerate(names):
            if counts[k].sum() > 0:
                out[f"eval/loss/{name}"] = (sums[k].sum() / counts[k].sum()).item()
        for j, typ in enumerate(TYPES):
            if counts[:, j].sum() > 0:
                out[f"eval/loss/{typ}_tokens"] = (sums[:, j].sum() / counts[:, j].sum()).item()
        return out

    def _empty_row(self) -> dict:
        T = self.t.cfg.data.seq_len
        ids = np.full(T, max(self.t.cfg.data.bos_id, 0), dtype=np.int64)
        return {"input_ids": ids, "targets": np.full(T, IGNORE, dtype=np.int64),
                "position_ids": np.arange(T, dtype=np.int64)}

    def suite(self, step: int) -> dict:
        """The light suite on the live model; accuracies as ``eval/<task>/<setting>``."""
        import tempfile

        from spiritlm.eval.suite import run_suite

        out_dir = Path(self.t.run_dir) / "eval" / f"step_{step:07d}"
        tmp = None
        if self.rank != 0:  # ZeRO-3: every rank scores (collective forwards), rank 0 writes
            tmp = tempfile.TemporaryDirectory()
            out_dir = Path(tmp.name)
        cfg = dataclasses.replace(self.suite_cfg, output_dir=str(out_dir), name=f"step {step}")
        try:
            res = run_suite(cfg, model=self.t.engine.module, tokenizer=self.tokenizer, encoder=self.encoder,
                                spec=self.t.spec)
        finally:
            if tmp is not None:
                tmp.cleanup()
        rec = {}
        for task, settings in res["results"].items():
            for setting, r in settings.items():
                if isinstance(r, dict) and r.get("accuracy") is not None:
                    rec[f"eval/{task}/{setting}"] = float(r["accuracy"])
        return rec
