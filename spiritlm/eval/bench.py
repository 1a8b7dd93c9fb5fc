"""``bench_eval``: pairs scored per second, batched + shared-context packing vs one at a time.

    from spiritlm.eval.bench import bench_eval
    bench_eval()                       # tiny random model, synthetic StoryCloze-like pairs
    bench_eval(model_dir="ckpt/", device="cuda", n_pairs=500)

Workload: ``n_pairs`` StoryCloze-shaped pairs (a shared context of ``context_len`` speech tokens,
two endings of ``ending_len`` tokens), as many sWUGGY-shaped pairs (empty context, two items of
``item_len`` tokens) and as many whole-story pairs (empty context, two stories of ``story_len``
tokens: StoryCloze S). Both paths score the same requests in the same process; the result also
reports the largest difference between their log-probs. A second comparison scores the same
requests with the packing rule before 2026-11-29 (every continuation packed behind its context,
so whole stories shared rows behind a 2-token context).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def _workload(tok, n_pairs: int, context_len: int, ending_len: int, item_len: int, seed: int,
              story_len: int = 0):
    rng = np.random.default_rng(seed)
    hu = tok.layout.streams["hubert"]
    pairs = []
    bos = [tok.bos_id]
    for _ in range(n_pairs):  # StoryCloze-like: shared context, two endings
        ctx = bos + [tok.layout.speech_id] + (hu.offset + rng.integers(0, hu.size, context_len)).tolist()
        for _ in range(2):
            n = int(rng.integers(ending_len // 2, ending_len + 1))
            pairs.append((ctx, (hu.offset + rng.integers(0, hu.size, n)).tolist()))
    for _ in range(n_pairs):  # sWUGGY-like: BOS [Speech] + item
        for _ in range(2):
            n = int(rng.integers(item_len // 2, item_len + 1))
            pairs.append((bos + [tok.layout.speech_id], (hu.offset + rng.integers(0, hu.size, n)).tolist()))
    for _ in range(n_pairs if story_len else 0):  # StoryCloze S: BOS [Speech] + a whole story
        for _ in range(2):
            n = int(rng.integers(story_len * 3 // 4, story_len + 1))
            pairs.append((bos + [tok.layout.speech_id], (hu.offset + rng.integers(0, hu.size, n)).tolist()))
    return pairs


def bench_eval(model_dir: str | Path | None = None, device: str = "cpu", dtype: str = "float32",
               n_pairs: int = 64, context_len: int = 200, ending_len: int = 40, item_len: int = 20,
               story_len: int = 500, batch_tokens: int = 16384, seed: int = 0,
               tmp_dir: str | Path | None = None, tiny_hidden: int = 64, tiny_layers: int = 4) -> dict:
    import tempfile

    import torch

    from spiritlm.eval.model import load_model, resolve_device
    from spiritlm.eval.scoring import Scorer

    device = resolve_device(device)
    if model_dir is None:
        from spiritlm.eval.testing import make_tiny_model_dir

        tmp_dir = Path(tmp_dir or tempfile.mkdtemp(prefix="bench_eval_"))
        model_dir = make_tiny_model_dir(tmp_dir / "model", hidden=tiny_hidden, layers=tiny_layers)
    model, tok = load_model(model_dir, device, dtype)
    pairs = _workload(tok, n_pairs, context_len, ending_len, item_len, seed, story_len)
    scorer = Scorer(model, tok, batch_tokens=batch_tokens)
    old_rule = Scorer(model, tok, batch_tokens=batch_tokens, pack_longer=True)
    scorer.score_ids(pairs[:8])  # warm-up
    scorer.score_one_at_a_time(pairs=pairs[:4])
    scorer.stats = type(scorer.stats)()

    def timed(fn):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - t

    batched, tb = timed(lambda: scorer.score_ids(pairs))
    single, ts = timed(lambda: scorer.score_one_at_a_time(pairs=pairs))
    packed_all, tp = timed(lambda: old_rule.score_ids(pairs))
    diff = max(abs(a.logprob - b.logprob) for a, b in zip(batched, single))
    diff_old = max(abs(a.logprob - b.logprob) for a, b in zip(batched, packed_all))
    n = len(pairs) // 2
    return {"device": device, "dtype": dtype, "model": str(model_dir), "pairs": n, "requests": len(pairs),
            "batched_s": tb, "one_at_a_time_s": ts, "pairs_per_s_batched": n / tb,
            "pairs_per_s_one_at_a_time": n / ts, "speedup": ts / tb, "max_abs_logprob_diff": diff,
            "context_tokens_saved": scorer.stats.context_tokens_saved,
            "tokens_forwarded_batched": scorer.stats.tokens_forwarded,
            "pack_all_s": tp, "speedup_vs_pack_all": tp / tb, "max_abs_logprob_diff_pack_all": diff_old}


def main(args=None) -> int:
    """``spiritlm bench eval``: tiny random model on this machine's default device."""
    r = bench_eval(device="auto")
    print(f"eval scoring on {r['device']} ({r['pairs']} pairs, {r['requests']} requests, tiny random LLaMA)")
    print(f"  batched + shared-context packing: {r['pairs_per_s_batched']:8.1f} pairs/s ({r['batched_s']:.2f} s)")
    print(f"  one request at a time:            {r['pairs_per_s_one_at_a_time']:8.1f} pairs/s ({r['one_at_a_time_s']:.2f} s)")
    print(f"  speedup x{r['speedup']:.1f}; max |log-prob difference| {r['max_abs_logprob_diff']:.2e}; "
          f"context tokens not recomputed: {r['context_tokens_saved']}")
    print(f"  every continuation packed behind its context (the rule before 2026-11-29): "
          f"{r['pack_all_s']:.2f} s; packing only those no longer than the context is "
          f"x{r['speedup_vs_pack_all']:.2f} (max |log-prob difference| {r['max_abs_logprob_diff_pack_all']:.2e})")
    return 0


if __name__ == "__main__":  # python -m spiritlm.eval.bench [model_dir] [device]
    import json
    import sys

    print(json.dumps(bench_eval(*(sys.argv[1:3])), indent=2))
