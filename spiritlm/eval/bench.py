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

A fourth side, ``harness``, scores the same requests with lm-evaluation-harness's own
``loglikelihood`` path (``lm_eval.models.huggingface.HFLM`` wrapping the same loaded model, with the
HF tokenizer ``spiritlm.eval.harness`` gives the harness, ``batch_size=harness_batch_size``): each
request goes in as the strings of its speech tokens ("[Speech][Hu12]..."), so the timed call
includes the harness's tokenization, as in a harness run. ``ratios["ours/harness"]`` is
batched / harness per round; ``max_abs_logprob_diff_harness`` the largest log-prob difference over
the requests whose harness token ids are ours exactly (``harness_items_compared`` of them; all of
them with our tokenizer), ``max_abs_logprob_diff_harness_by_kind`` per workload kind and
``max_rel_logprob_diff_harness`` relative (whole stories' sums of ~500 token log-probs: the harness
adds them in fp32, ours in fp64). Without ``lm_eval`` the side is skipped and
``harness_skipped`` says why.
"""

from __future__ import annotations

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
               story_len: int = 500, batch_tokens: int | None = None, seed: int = 0,
               tmp_dir: str | Path | None = None, tiny_hidden: int = 64, tiny_layers: int = 4,
               rounds: int | None = None, min_round_s: float | None = None, verbose: bool = False,
               harness: bool = True, harness_batch_size: int = 8) -> dict:
    """The scorings alternate on the benchmark harness (batched, one at a time, the old packing
    rule, lm-evaluation-harness's loglikelihood), >= 5 rounds of >= 2 s by default; ``verbose``
    prints the harness report. ``harness=False`` leaves the lm-evaluation-harness side out."""
    import tempfile

    import torch

    from spiritlm.bench_harness import Side, run_sides
    from spiritlm.eval.model import load_model, resolve_device
    from spiritlm.components.scoring import Scorer

    device = resolve_device(device)
    tiny = model_dir is None
    if tiny:
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
    outs: dict[str, list] = {}

    def timed(name, fn):
        def call():
            outs[name] = fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        return call

    lm_side = _harness_side(model, tok, model_dir, pairs, harness_batch_size) if harness else (
        None, "harness=False")
    n = len(pairs) // 2
    sides = [Side("batched", timed("batched", lambda: scorer.score_ids(pairs)), work=n, unit="pairs"),
             Side("one_at_a_time", timed("single", lambda: scorer.score_one_at_a_time(pairs=pairs)), work=n,
                  unit="pairs"),
             Side("pack_all", timed("pack_all", lambda: old_rule.score_ids(pairs)), work=n, unit="pairs")]
    if lm_side[0] is not None:
        lm, reqs, _ = lm_side[0]
        sides.append(Side("harness", timed("harness", lambda: lm.loglikelihood(reqs, disable_tqdm=True)), work=n,
                          unit="pairs"))
    m = run_sides(sides, rounds, min_round_s, peak=False)
    calls = sum(m.reps["batched"]) + 2  # + its warm-up and calibration calls: stats are per pass
    batched, single, packed_all = outs["batched"], outs["single"], outs["pack_all"]
    diff = max(abs(a.logprob - b.logprob) for a, b in zip(batched, single))
    diff_old = max(abs(a.logprob - b.logprob) for a, b in zip(batched, packed_all))
    pairs_ratio = [("batched", "one_at_a_time"), ("batched", "pack_all")]
    out = {"device": device, "dtype": dtype, "model": str(model_dir), "pairs": n, "requests": len(pairs),
           "batch_tokens": scorer.batch_tokens,
           "batched_s": n / m.rate("batched"), "one_at_a_time_s": n / m.rate("one_at_a_time"),
           "pairs_per_s_batched": m.rate("batched"), "pairs_per_s_one_at_a_time": m.rate("one_at_a_time"),
           "speedup": m.ratio("batched", "one_at_a_time").median, "max_abs_logprob_diff": diff,
           "context_tokens_saved": scorer.stats.context_tokens_saved // max(calls, 1),
           "tokens_forwarded_batched": scorer.stats.tokens_forwarded // max(calls, 1),
           "pack_all_s": n / m.rate("pack_all"), "speedup_vs_pack_all": m.ratio("batched", "pack_all").median,
           "max_abs_logprob_diff_pack_all": diff_old,
           "ratios": {f"{a}/{b}": m.ratio(a, b).as_dict() for a, b in pairs_ratio},
           "measurement": m.as_dict(pairs_ratio)}
    if lm_side[0] is not None:
        same = lm_side[0][2]
        diffs = [(i, abs(a.logprob - float(b[0])), abs(float(b[0])))
                 for i, (a, b, ok) in enumerate(zip(batched, outs["harness"], same)) if ok]
        by_kind = {}  # the workload's kinds, in its order: 2 * n_pairs requests each
        for k, kind in enumerate(("storycloze", "swuggy", "story")):
            d = [x for i, x, _ in diffs if 2 * n_pairs * k <= i < 2 * n_pairs * (k + 1)]
            if d:
                by_kind[kind] = max(d)
        out.update({"harness_s": n / m.rate("harness"), "pairs_per_s_harness": m.rate("harness"),
                    "harness_batch_size": harness_batch_size, "harness_items_compared": len(diffs),
                    "max_abs_logprob_diff_harness": max(x for _, x, _ in diffs) if diffs else None,
                    # per kind: whole stories sum ~500 token log-probs (|sum| ~ 3e3), which the
                    # harness adds up in fp32 (ulp 2.4e-4 there), ours in fp64
                    "max_abs_logprob_diff_harness_by_kind": by_kind,
                    "max_rel_logprob_diff_harness": max((x / max(b, 1e-30) for _, x, b in diffs), default=None)})
        out["ratios"]["ours/harness"] = m.ratio("batched", "harness").as_dict()
        pairs_ratio.append(("batched", "harness"))
        out["measurement"] = m.as_dict(pairs_ratio)
    else:
        out["harness_skipped"] = lm_side[1]
    if verbose:
        what = ("batched + shared-context packing vs one request at a time, vs the packing rule before "
                "2026-11-29 (pack_all)")
        what += (f", and vs lm-evaluation-harness's HFLM.loglikelihood (batch_size={harness_batch_size})"
                 if lm_side[0] is not None else f"; harness side skipped: {lm_side[1]}")
        print(m.report(pairs_ratio, f"eval scoring on {device} ({n} pairs, {len(pairs)} requests, "
                                    f"{'tiny random LLaMA' if tiny else model_dir}): {what}"), flush=True)
    return out


def _harness_side(model, tok, model_dir, pairs, batch_size: int):
    """-> ((HFLM on ``model``, its requests for ``pairs``, per request: whether the harness's token
    ids are ours exactly), None), or (None, why the side is skipped)."""
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:  # the `eval` extra
        return None, f"lm-evaluation-harness is not importable ({e})"
    from spiritlm.eval.harness import _hf_tokenizer

    hf = _hf_tokenizer(tok, model_dir)
    lm = HFLM(pretrained=model, tokenizer=hf, batch_size=batch_size)
    reqs, same = [], []
    for i, (ctx, cont) in enumerate(pairs):
        c = ctx[1:] if ctx[:1] == [tok.bos_id] else ctx  # the harness adds BOS itself
        args = ("".join(hf.convert_ids_to_tokens(c)), "".join(hf.convert_ids_to_tokens(cont)))
        reqs.append(Instance(request_type="loglikelihood", doc={}, arguments=args, idx=i))
        c_enc, e_enc = lm._encode_pair(*args)
        same.append(list(c_enc) == list(ctx) and list(e_enc) == list(cont))
    if not any(same):
        return None, "the harness's tokenization of the workload differs from ours on every request"
    return (lm, reqs, same), None


def bench_eval_dtype(config: str | Path, rounds: int | None = None, min_round_s: float | None = None,
                     verbose: bool = True) -> dict:
    """One real evaluation -- the suite config of a finished run (e.g. a demo step's
    ``config.yaml``, whose ``units_cache`` spares the encoding) -- scored in float32 and in bfloat16
    (``dtype = "auto"`` on a CPU with native bf16), the two alternating on the harness, one whole
    ``run_suite`` per call: evaluations per second, and the items whose decision differs between
    the two (the cost of the faster precision in answers)."""
    import json
    import tempfile
    from dataclasses import replace

    from spiritlm.bench_harness import Side, run_sides
    from spiritlm.config import load_config
    from spiritlm.eval.model import CachedEncoder, load_speech_encoder, resolve_device
    from spiritlm.eval.report import item_key
    from spiritlm.eval.suite import EvalConfig, run_suite
    from spiritlm.models import locate_model

    cfg = load_config(EvalConfig, config, [])
    if not cfg.model:
        raise ValueError(f"{config}: no model= in the config; give a finished evaluation's config.yaml")
    spec, model_dir = locate_model(cfg.model)
    device = resolve_device(cfg.device)
    dtypes = ("float32", "bfloat16")
    loaded = {dt: spec.load(model_dir, device, dt) for dt in dtypes}
    enc = load_speech_encoder(cfg.speech_encoder, cfg.speech_encoder_args)
    enc = CachedEncoder(enc) if enc is not None and not isinstance(enc, CachedEncoder) else enc
    with tempfile.TemporaryDirectory() as tmp:
        def side(dt: str):
            def run():
                c = replace(cfg, output_dir=f"{tmp}/{dt}", dtype=dt)
                run_suite(c, model=loaded[dt][0], tokenizer=loaded[dt][1], encoder=enc, spec=spec)
            return run

        m = run_sides([Side(dt, side(dt), work=1, unit="evals", warmup=1, reps=1) for dt in reversed(dtypes)],
                      rounds, min_round_s, peak=False)
        items = {dt: [json.loads(x) for x in Path(f"{tmp}/{dt}/items.jsonl").read_text().splitlines()]
                 for dt in dtypes}
    a, b = items["float32"], items["bfloat16"]
    if [item_key(x) for x in a] != [item_key(x) for x in b]:
        raise AssertionError("the two dtypes scored different items")  # invariant: same config, same items
    changed: dict[str, int] = {}
    for x, y in zip(a, b):
        if x.get("score") != y.get("score"):
            key = f"{x['task']}/{x.get('setting')}"
            changed[key] = changed.get(key, 0) + 1
    r = m.ratio("bfloat16", "float32")
    out = {"config": str(config), "items": len(a), "items_changed": sum(changed.values()),
           "items_changed_by_task": changed, "speedup": r.median, "ratio": r.as_dict(),
           "seconds_per_eval": {dt: 1 / m.rate(dt) for dt in dtypes}, "measurement": m.as_dict([("bfloat16", "float32")])}
    if verbose:
        print(m.report([("bfloat16", "float32")], f"eval dtype bench ({config}): one whole evaluation per call, "
                                                    f"bfloat16 vs float32; {out['items_changed']} of {len(a)} items "
                                                    f"decided otherwise ({changed or 'none'})"), flush=True)
    return out
