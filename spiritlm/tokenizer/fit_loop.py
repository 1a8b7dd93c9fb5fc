"""The training loop the speech tokenizer's encoders share: the tiny HuBERT (masked prediction)
and the semantic encoder (CTC). One optimiser step with gradient clipping, a progress bar with
the running loss, and the wall-clock cap that stops a run loudly (a cap that bites makes the units
-- and everything trained on them -- depend on the machine's load)."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

log = logging.getLogger(__name__)


class FitLoop:
    """``for step in loop: ...; if loop.step(loss): break`` -- then ``loop.close()``."""

    def __init__(self, steps: int, params, opt, sched, desc: str, loss_name: str, cap_setting: str,
                 max_minutes: float = 0.0, progress: bool = True):
        self.steps, self.params, self.opt, self.sched = steps, params, opt, sched
        self.desc, self.loss_name, self.cap_setting, self.max_minutes = desc, loss_name, cap_setting, max_minutes
        self.losses: list[float] = []
        self.done = 0
        self.t0 = time.perf_counter()
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=steps, desc=desc, unit="step")

    def __iter__(self):
        return iter(range(self.steps))

    def step(self, loss: torch.Tensor) -> bool:
        """Backward, clip at 1.0, step; True when the wall-clock cap says stop."""
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()
        self.losses.append(loss.item())
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({self.loss_name: f"{np.mean(self.losses[-20:]):.3f}"})
        if self.max_minutes > 0 and time.perf_counter() - self.t0 > self.max_minutes * 60:
            log.warning("%s: STOPPED EARLY at step %d of %d (%s=%.1f): the units now depend on this machine's "
                        "speed; set %s=0 (no cap) for reproducible units", self.desc, self.done, self.steps,
                        self.cap_setting, self.max_minutes, self.cap_setting)
            return True
        return False

    def close(self) -> dict:
        """-> the run's log: steps done and planned, capped, seconds, first / last mean loss."""
        if self.bar is not None:
            self.bar.close()
        mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
        return {"steps": self.done, "steps_planned": self.steps, "capped": self.done < self.steps,
                "seconds": round(time.perf_counter() - self.t0, 1),
                "loss_first": mean(self.losses[:20]), "loss_last": mean(self.losses[-20:])}
