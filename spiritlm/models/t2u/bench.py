"""``spiritlm bench t2u``: how fast a T2U model writes units -- our decoding loop vs HF ``generate``.

Both sides decode the same spans with the same random-weight model of a named size, greedy, with
the same allowed tokens and the same per-span cap; ours drops a finished row from the batch and the
KV cache at once, ``generate`` keeps every row until the batch's longest is done. Random weights
rarely write the closing ``[Text]`` (about 1 step in ``hubert_size``), so most spans run to their
cap -- ``units_per_word`` x ``words`` units, the demo's measured rate by default -- and the lengths
are those of real spans; the few early stops are where the two differ. Units/s is the rate the
synthetic-data cost estimate reads (``docs/synthetic_interleaving.md``); achieved FLOP/s is the
forward passes' 2 x non-embedding parameters x tokens over the matmul peak of the same run.

Sizes: ``demo`` (the demo's T2U, 0.8 M non-embedding parameters, text vocabulary 2000) and
``base`` (12 layers x 768, ~85 M, text vocabulary 32000: a T2U of the size the paper-scale
estimate assumes). On a GPU the check script (``spiritlm bench gpu``) runs ``base``.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from spiritlm.vocab import VocabLayout

def _sizes() -> dict:
    """``toy`` and ``demo``: the unit LM's named sizes ``test`` and ``demo`` (the demo's T2U is the
    latter); ``base``: the ~85 M model of the paper-scale estimate."""
    from spiritlm.components.config import TinyModelConfig
    from spiritlm.models.unit_lm.sizes import tiny_size

    named = {name: TinyModelConfig(**tiny_size(unit).model_fields(), base_vocab_size=tiny_size(unit).text_vocab_size)
             for name, unit in (("toy", "test"), ("demo", "demo"))}
    return {**named, "base": TinyModelConfig(768, 2048, 12, 12, 12, 2048, 32000)}


def t2u_model(size: str, device: str = "cpu", dtype=torch.float32):
    """(random-weight LLaMA of the size, marker) -- the shapes of a T2U export of that size."""
    from transformers import LlamaForCausalLM

    from spiritlm.models.unit_lm.model import tiny_llama_config

    sizes = _sizes()
    if size not in sizes:
        raise ValueError(f"bench t2u: size {size!r} is not one of {sorted(sizes)}")
    t = sizes[size]
    lay = VocabLayout(base_vocab_size=t.base_vocab_size)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(t, vocab_size=lay.padded_vocab_size(64))).to(device=device,
                                                                                          dtype=dtype).eval()
    meta = {"vocab_layout": asdict(lay), "streams": ["hubert"], "bos_id": 1,
            "text_ids": list(range(3, t.base_vocab_size)), "tokens_per_word_p99": 0.0}
    return model, meta


def non_embedding_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)


def _hf_generate(t2u, spans, caps, batch_size: int) -> int:
    """The peer: HF ``generate`` on the same batches (left padding, the same allowed tokens)."""
    lay = t2u.layout
    mask = t2u.mask

    def allowed(input_ids, scores):
        return scores + mask.to(scores.device, scores.dtype)[: scores.shape[-1]]

    total = 0
    for b in range(0, len(spans), batch_size):
        prompts = [np.concatenate(([1, lay.text_id], s, [lay.speech_id])) for s in spans[b:b + batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), lay.text_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.as_tensor(p)
            att[r, width - len(p):] = 1
        out = t2u.model.generate(input_ids=ids.to(t2u.device), attention_mask=att.to(t2u.device), do_sample=False,
                                 max_new_tokens=max(caps[b:b + batch_size]), logits_processor=[allowed],
                                 eos_token_id=lay.text_id, pad_token_id=lay.text_id, top_p=None, top_k=None)
        new = out[:, width:].cpu().numpy()
        for r in range(len(prompts)):
            stop = np.flatnonzero(new[r] == lay.text_id)
            total += int(stop[0]) if stop.size else new.shape[1]
    return total


def bench_t2u(size: str = "demo", spans: int = 128, words: int = 10, units_per_word: float = 12.0,
              batch_size: int = 64, device: str = "cpu", rounds: int | None = None, min_round_s: float | None = None,
              peer: bool = True, verbose: bool = True, model_dir: str = "") -> dict:
    """``model_dir``: a trained T2U export instead of random weights -- its spans end where the
    model writes ``[Text]``, at different lengths, which is where dropping finished rows pays (the
    prompts are random pieces of the text ids it saw; the cap is its own, 2 x its p99 per word)."""
    from spiritlm.bench_harness import Side, compare, matmul_peak, run_sides
    from spiritlm.models.t2u.decode import T2U, DecodeConfig

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    rng = np.random.default_rng(0)
    if model_dir:
        t2u = T2U(model_dir, device, "bfloat16" if dtype == torch.bfloat16 else "float32")
        model, size = t2u.model, f"trained ({model_dir})"
        seen = np.asarray(t2u.meta["text_ids"])
        bpe = [rng.choice(seen, int(round(words * 1.3))) for _ in range(spans)]
        units_per_word = 0.0
    else:
        model, meta = t2u_model(size, device, dtype)
        t2u = T2U.from_model(model, meta, device)
        bpe = [rng.integers(3, t2u.layout.base_vocab_size, int(round(words * 1.3))) for _ in range(spans)]
    cfg = DecodeConfig(mode="greedy", batch_size=batch_size, max_per_word=units_per_word)
    caps = [t2u._cap(words, cfg) for _ in bpe]
    n_units = int(sum(len(u) for u in t2u.generate(bpe, 0, cfg, [words] * spans)[0]))
    flops = 2.0 * non_embedding_params(model) * n_units  # the decode steps' matmuls, prompts left out
    ours = Side("ours", lambda: t2u.generate(bpe, 0, cfg, [words] * spans), work=n_units, unit="units", flops=flops)
    peak = (lambda: matmul_peak(dtype, device=device)) if device == "cpu" else None
    if peer:
        hf_units = _hf_generate(t2u, bpe, caps, batch_size)
        hf = Side("hf_generate", lambda: _hf_generate(t2u, bpe, caps, batch_size), work=hf_units, unit="units",
                  flops=2.0 * non_embedding_params(model) * hf_units)
        c = compare(ours, hf, f"T2U decoding, size {size}, {spans} spans x {words} words, batch {batch_size}, {device}",
                    rounds, min_round_s, peak=peak, verbose=verbose)
        m, pairs = c.measurement, [("ours", "hf_generate")]
    else:
        m, pairs = run_sides([ours], rounds, min_round_s, peak), []
        if verbose:
            print(m.report([], f"T2U decoding, size {size}, {spans} spans x {words} words, batch {batch_size}, {device}"))
    ratio = m.ratio("ours", "hf_generate") if pairs else None
    f = m.flops_per_s("ours")
    return {"size": size, "device": device, "dtype": str(dtype).replace("torch.", ""), "spans": spans, "words": words,
            "batch_size": batch_size, "units": n_units, "non_embedding_params": non_embedding_params(model),
            "units_per_s": m.rate("ours"), "flops_per_s": f,
            "share_of_matmul_peak": (f / m.peak_flops) if f and m.peak_flops else None,
            "ratio_vs_hf_generate": None if ratio is None else {"median": ratio.median, "min": ratio.lo, "max": ratio.hi},
            "measurement": m.as_dict(pairs)}
