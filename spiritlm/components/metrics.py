"""Loss by token type, throughput/MFU, and the logs: JSONL, TensorBoard, PNG plots.

Token types are read from the *target* ids: ``speech`` (HuBERT/pitch/style units), ``switch``
(a [Text]/[Speech] marker: predicting a modality change) and ``text`` (everything else).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from spiritlm.components.packing import IGNORE
from spiritlm.vocab import VocabLayout

TYPES = ("text", "speech", "switch")


def token_losses(logits_BTV: torch.Tensor, targets_BT: torch.Tensor, layout: VocabLayout):
    """Mean CE over all targets (for backward) and per-type (sum, count) tensors (for logging)."""
    V = logits_BTV.shape[-1]
    ce_N = F.cross_entropy(logits_BTV.reshape(-1, V).float(), targets_BT.reshape(-1),
                           ignore_index=IGNORE, reduction="none")
    return losses_by_type(ce_N, targets_BT, layout)


def losses_by_type(ce_N: torch.Tensor, targets_BT: torch.Tensor, layout: VocabLayout):
    """``token_losses`` from per-token losses (0 at ignored targets) computed elsewhere, e.g. by
    ``spiritlm.components.linear_ce`` without the logits."""
    t_N = targets_BT.reshape(-1)
    valid_N = t_N != IGNORE
    switch_N = (t_N == layout.text_id) | (t_N == layout.speech_id)
    speech_N = (t_N >= layout.speech_id + 1) & (t_N < layout.vocab_size)
    text_N = valid_N & ~switch_N & ~speech_N
    n = valid_N.sum()
    loss = ce_N.sum() / n.clamp(min=1)
    sums = torch.stack([(ce_N * m).sum() for m in (text_N, speech_N, switch_N)]).detach()
    counts = torch.stack([m.sum() for m in (text_N, speech_N, switch_N)]).to(sums.dtype)
    return loss, sums, counts


def model_flops_per_token(model_config, seq_len: int) -> float:
    """6N + attention (PaLM appendix B): training FLOPs per token, N without embeddings."""
    c = model_config
    h, L = c.hidden_size, c.num_hidden_layers
    kv = c.num_key_value_heads * (h // c.num_attention_heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * c.intermediate_size
    n = L * per_layer + c.vocab_size * h  # LM head counts, input embedding lookup does not
    return 6 * n + 12 * L * h * seq_len


def guess_peak_flops() -> float:
    if not torch.cuda.is_available():
        return 0.0
    name = torch.cuda.get_device_name().lower()
    for key, flops in (("h200", 989e12), ("h100", 989e12), ("a100", 312e12), ("l40", 181e12),
                       ("a10", 125e12), ("4090", 165e12)):
        if key in name:
            return flops
    return 0.0


def mixture_record(names, token_counts) -> dict:
    """``{"mix/<source>": share of the tokens}``: the realised mixture (rounded to 1e-4)."""
    total = sum(token_counts)
    return {f"mix/{n}": round(c / total, 4) for n, c in zip(names, token_counts)} if total else {}


class RunLog:
    """Rank-0 sinks: ``metrics.jsonl``, TensorBoard (optional), PNG plots at the end.

    The logs describe one run: ``fresh=True`` (a start without a checkpoint to resume) removes
    what an earlier run left in the folder -- a run killed before its first checkpoint would
    otherwise leave its steps 1..k in front of the new run's 1..N; a resume calls
    ``truncate_after(step)`` instead, which drops what was logged after the checkpoint."""

    # what a run writes here besides checkpoints and the export (tensorboard: the event files)
    FILES = ("metrics.jsonl", "summary.json", "summary.json.tmp", "curves.png")

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True, fresh: bool = False):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.tensorboard = tensorboard
        self.tb = None  # opened at the first record, after a resume has said where to purge from
        self._purge_step = None
        self.path = self.run_dir / "metrics.jsonl"
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if fresh:
                self._remove_earlier_logs()

    def _remove_earlier_logs(self) -> None:
        old = [self.run_dir / n for n in self.FILES if (self.run_dir / n).is_file()]
        old += sorted((self.run_dir / "tensorboard").glob("events.out.tfevents.*"))
        for f in old:
            f.unlink()
        if old:
            import logging

            logging.getLogger(__name__).warning(
                "%s: a fresh start (no checkpoint to resume): removed the logs of an earlier run (%s)",
                self.run_dir, ", ".join(str(f.relative_to(self.run_dir)) for f in old))

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the checkpoint's step (they will be redone); the
        TensorBoard writer hides its events after ``step`` (``purge_step``)."""
        if not self.enabled:
            return
        self._purge_step = step + 1
        if not self.path.is_file():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def _writer(self):
        if self.tb is None and self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self._purge_step)
            self._purge_step = None  # purged once, by the first writer after the resume
        return self.tb

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        tb = self._writer()
        if tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and v == v:
                    tb.add_scalar(k, v, record["step"])

    def write_summary(self, updates: dict) -> None:
        """Merge ``updates`` into ``summary.json`` (the run's final numbers, for reports)."""
        if not self.enabled:
            return
        f = self.run_dir / "summary.json"
        summary = json.loads(f.read_text()) if f.is_file() else {}
        summary.update(updates)
        tmp = f.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(f)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def read_metrics(run_dir: Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln] if p.is_file() else []


def plot_curves(run_dir: Path) -> Path | None:
    """``curves.png``: total and per-type loss, LR, tokens/s against the step."""
    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    evals = [r for r in read_metrics(run_dir) if any(k.startswith("eval/") for k in r)]
    fig, axes = plt.subplots(1, 5 if evals else 3, figsize=(25 if evals else 15, 4))
    for key in ("loss", "loss/text", "loss/speech", "loss/switch"):
        pts = [(s, r[key]) for s, r in zip(steps, rows) if r.get(key) is not None]
        if pts:
            axes[0].plot(*zip(*pts), label=key)
    axes[0].set_xlabel("step"), axes[0].set_ylabel("cross-entropy (nats)"), axes[0].legend()
    axes[1].plot(steps, [r.get("lr", 0) for r in rows]), axes[1].set_title("learning rate")
    axes[2].plot(steps, [r.get("tokens_per_s", 0) for r in rows]), axes[2].set_title("tokens/s")
    if evals:  # evaluation while training (spiritlm.eval.during_training)
        eval_axes(evals, axes[3], axes[4])
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    out = Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def eval_axes(rows: list[dict], ax_loss, ax_acc) -> bool:
    """Draw held-out losses and suite accuracies of the ``eval/`` rows; False if there are none."""
    rows = [r for r in rows if any(k.startswith("eval/") for k in r)]
    if not rows:
        return False
    keys = sorted({k for r in rows for k in r if k.startswith("eval/") and k != "eval/seconds"})
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
        if not pts:
            continue
        if k.startswith("eval/loss"):
            ax_loss.plot(*zip(*pts), marker="o", label=k[5:])
        else:
            ax_acc.plot(*zip(*pts), marker="o", label=k[5:])
    ax_loss.set_title("held-out loss"), ax_loss.set_ylabel("cross-entropy (nats)")
    ax_acc.set_title("evaluation accuracy"), ax_acc.set_ylim(0, 1), ax_acc.axhline(0.5, color="grey", ls="--", lw=1)
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("step")
        if ax.get_lines():
            ax.legend(fontsize=7)
    return True
