"""Batched log-likelihood of continuations given contexts, for zero-shot comparisons.

A :class:`Request` is (context segments, continuation segments); a segment is ``("text", str)``
or ``("speech", x)`` with ``x`` a wav path / 16 kHz array (through a speech unit encoder, :class:`spiritlm.unit_encoder.UnitEncoder`),
a units dict, or a speech string ``"[Hu3][Hu7]..."``. The context ends with the marker of the
continuation's first modality (``[Text] story [Speech]``), so the continuation's score counts
only its own tokens. :class:`Score` carries the summed log-prob and the token count; ``mean`` is
the token-normalised score the paper's tables use.

How it is computed (and why it is fast):

* requests sharing the same context ids are packed into one row ``ctx | cont_1 | cont_2 ...``
  with a tree-shaped 4-D attention mask (each continuation sees the context and itself) and
  position ids restarting after the context -- the shared context is computed once. Only
  continuations no longer than their context are packed: behind a short context (the BOS of a
  whole-story or sWUGGY item) packing would save a token or two and square the row's attention;
* continuations that begin alike share their common start too (``share_prefixes``): the two
  stories of a spoken StoryCloze item are two wavs whose first four sentences are the same audio,
  so their units agree for hundreds of tokens. Requests with the same context are sorted by
  continuation; a run of them sharing >= ``min_shared_prefix`` tokens is scored as one row
  ``ctx + shared | rest_1 | rest_2``, the shared tokens' log-probs computed once and added to each
  (exact: a causal LM's log-prob of a prefix does not depend on what follows it);
* a batch whose rows hold one continuation each needs no mask: plain causal attention, the
  padding at the right end unseen by any real token;
* rows are sorted by length and batched under a token budget (``batch_tokens`` = rows x padded
  length); the LM head runs only at the positions that predict continuation tokens.

:meth:`Scorer.score_one_at_a_time` is the plain reference (one unpadded causal pass per request);
the tests check both agree.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from spiritlm.text_tokenizer import SpiritTokenizer

Segment = tuple[str, Any]


@dataclass(frozen=True)
class Request:
    context: Sequence[Segment]
    continuation: Sequence[Segment]


@dataclass(frozen=True)
class Score:
    logprob: float  # summed log-prob (nats) of the continuation tokens
    n_tokens: int

    @property
    def mean(self) -> float:
        return self.logprob / self.n_tokens if self.n_tokens else float("-inf")

    def value(self, normalize: bool = True) -> float:
        return self.mean if normalize else self.logprob


def pair_score(good: float, bad: float) -> float:
    """1 if good > bad, 0.5 on a tie, else 0 (ZeroSpeech)."""
    return 1.0 if good > bad else 0.5 if good == bad else 0.0


@dataclass
class ScorerStats:
    requests: int = 0
    rows: int = 0
    batches: int = 0
    tokens_forwarded: int = 0
    context_tokens_saved: int = 0
    prefix_tokens_shared: int = 0  # continuation tokens moved into a shared prefix, counted once per sharer


def _tree_mask(batch, L: int, dtype) -> "torch.Tensor":
    """Additive (B, 1, L, L) mask of packed rows ``ctx | cont_1 | cont_2 ...``: the context is
    causal, each continuation sees the context and itself (causally), a pad only itself."""
    import torch

    allow = torch.zeros(len(batch), 1, L, L, dtype=torch.bool)
    for b, (ctx, conts, *_) in enumerate(batch):
        C = len(ctx)
        allow[b, 0, :C, :C] = torch.ones(C, C, dtype=torch.bool).tril()
        off = C
        for _, cont in conts:
            m = len(cont)
            allow[b, 0, off : off + m, :C] = True
            allow[b, 0, off : off + m, off : off + m] = torch.ones(m, m, dtype=torch.bool).tril()
            off += m
        for p in range(off, L):  # no all-masked rows
            allow[b, 0, p, p] = True
    mask = torch.zeros(len(batch), 1, L, L, dtype=dtype)
    return mask.masked_fill_(~allow, torch.finfo(dtype).min)


# Token budget of one forward (rows x padded length) when none is set. On a CPU small batches are
# faster: the demo's model (hidden 128) scored `spiritlm bench eval`'s requests 1.7x faster at 2048
# tokens than at 16384 (ours / lm-evaluation-harness 1.29x vs 0.77x, 2 threads, fp32), 1024 and
# 512 no better; a demo test-draw evaluation took 14.8 s instead of 17.0. A GPU wants large ones.
CPU_BATCH_TOKENS = 2048
GPU_BATCH_TOKENS = 16384


def default_batch_tokens(model) -> int:
    """The token budget per forward for ``model``'s device (``CPU_BATCH_TOKENS`` / ``GPU_BATCH_TOKENS``)."""
    try:
        device_type = next(model.parameters()).device.type
    except (AttributeError, StopIteration):
        device_type = "cpu"
    return CPU_BATCH_TOKENS if device_type == "cpu" else GPU_BATCH_TOKENS


class Scorer:
    def __init__(
        self,
        model,
        tokenizer: SpiritTokenizer,
        encoder=None,
        has_pitch: bool = False,
        has_style: bool = False,
        batch_tokens: int | None = None,
        max_row_tokens: int = 4096,
        share_context: bool = True,
        pack_longer: bool = False,
        share_prefixes: bool = True,
        min_shared_prefix: int = 32,
    ):
        self.model = model
        self.tok = tokenizer
        self.encoder = encoder
        self.has_pitch = has_pitch
        self.has_style = has_style
        self.batch_tokens = batch_tokens or default_batch_tokens(model)
        self.max_row_tokens = max_row_tokens
        self.share_context = share_context
        # also pack continuations longer than their context (the rule before 2026-11-29; kept so
        # that `spiritlm bench eval` measures both rules side by side)
        self.pack_longer = pack_longer
        # below ~32 shared tokens the tree mask a shared row needs costs more than the tokens saved
        self.share_prefixes = share_prefixes and share_context
        self.min_shared_prefix = min_shared_prefix
        self.stats = ScorerStats()
        # a label shows a progress bar (rows scored) on a terminal; the suite sets it per task
        self.progress_desc: str | None = None

    # ---- segments -> ids ---------------------------------------------------------------
    def resolve(self, segments: Iterable[Segment]) -> list[tuple[str, Any]]:
        """Speech wavs -> units via the encoder; text / units / speech strings unchanged."""
        out = []
        for kind, content in segments:
            if kind == "speech" and not isinstance(content, Mapping):
                is_string = isinstance(content, str) and content.startswith("[")
                if not is_string:
                    if self.encoder is None:
                        raise ValueError(
                            "a speech segment is a wav but no speech encoder is configured; set "
                            "speech_encoder in the recipe (e.g. 'spiritlm.tokenizer:SpeechTokenizer') "
                            "or pass precomputed units"
                        )
                    content = self.encoder(content)
            out.append((kind, content))
        return out

    def encode_request(self, req: Request) -> tuple[list[int], list[int]]:
        cont = self.resolve(req.continuation)
        if not cont:
            raise ValueError("a request needs a non-empty continuation")
        ctx = self.resolve(req.context)
        kw = dict(has_pitch=self.has_pitch, has_style=self.has_style)
        ctx_ids = self.tok.encode_segments(ctx, trailing_marker=cont[0][0], **kw)
        full = self.tok.encode_segments(ctx + cont, **kw)
        if full[: len(ctx_ids)] != ctx_ids:  # cannot happen with typed segments; be safe
            raise AssertionError("context ids are not a prefix of the full sequence")
        cont_ids = full[len(ctx_ids):]
        if not ctx_ids:
            raise ValueError("empty context and no BOS: the first token cannot be scored")
        if not cont_ids:
            raise ValueError(f"continuation {req.continuation!r} encodes to no tokens")
        return ctx_ids, cont_ids

    # ---- scoring -----------------------------------------------------------------------
    def score(self, requests: Sequence[Request]) -> list[Score]:
        if self.encoder is not None and hasattr(self.encoder, "prefetch"):
            wavs = [c for r in requests for k, c in list(r.context) + list(r.continuation)
                    if k == "speech" and isinstance(c, (str, Path)) and not str(c).startswith("[")]
            self.encoder.prefetch(wavs)
        return self.score_ids([self.encode_request(r) for r in requests])

    def score_ids(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[Score]:
        import torch

        self.stats.requests += len(pairs)
        uniq: dict[tuple, int] = {}
        where = [uniq.setdefault((tuple(c), tuple(x)), len(uniq)) for c, x in pairs]
        if len(uniq) < len(pairs):  # identical requests are scored once
            scores = self.score_ids([(list(c), list(x)) for c, x in uniq])
            self.stats.requests -= len(uniq)
            return [scores[w] for w in where]
        from tqdm.auto import tqdm

        rows = self._pack(pairs)
        rows.sort(key=lambda r: -r[2])
        results: list[Score | None] = [None] * len(pairs)
        i = 0
        # disable=None: a bar on a terminal only, none in logs
        with tqdm(total=len(rows), desc=self.progress_desc, unit="row",
                  disable=True if self.progress_desc is None else None) as bar:
            while i < len(rows):
                width = rows[i][2]  # longest row of this batch (sorted descending)
                n = max(1, min(len(rows) - i, self.batch_tokens // max(width, 1)))
                batch = rows[i : i + n]
                i += n
                with torch.inference_mode():
                    for idx, sc in self._forward(batch):
                        results[idx] = sc
                bar.update(n)
        return results  # type: ignore[return-value]

    def _shared_prefixes(self, pairs) -> list[int]:
        """-> per request, how many of its continuation's first tokens it shares with the other
        requests of its run (0: none). Requests with the same context are sorted by continuation,
        so those beginning alike are neighbours; a run grows while the prefix common to all of it
        stays >= ``min_shared_prefix`` and >= half of what the run shared before (a third story
        sharing 40 tokens would otherwise cut a pair's 400 shared tokens to 40). Each
        continuation keeps >= 1 token of its own. A run whose rests are longer than its context +
        start shares nothing: each rest would get a row of its own and recompute the start."""
        shared = [0] * len(pairs)
        if not self.share_prefixes:
            return shared
        groups: dict[tuple, list[int]] = {}
        for k, (ctx, _) in enumerate(pairs):
            groups.setdefault(tuple(ctx), []).append(k)
        for members in groups.values():
            if len(members) < 2:
                continue
            order = sorted(members, key=lambda k: tuple(pairs[k][1]))
            i = 0
            while i < len(order):
                first = np.asarray(pairs[order[i]][1])
                run, p = [order[i]], len(first) - 1
                for k in order[i + 1:]:
                    c = np.asarray(pairs[k][1])
                    n = min(len(first), len(c))
                    diff = np.flatnonzero(first[:n] != c[:n])
                    q = min(int(diff[0]) if diff.size else n, p, len(c) - 1)
                    if q < self.min_shared_prefix or (len(run) > 1 and q < p // 2):
                        break
                    run.append(k)
                    p = q
                # only where it pays: every rest must fit behind the longer context (the packing
                # rule below gives a longer rest a row of its own, recomputing the start there)
                pays = all(len(pairs[k][1]) - p <= len(pairs[k][0]) + p for k in run)
                if len(run) > 1 and pays:
                    for k in run:
                        shared[k] = p
                    self.stats.prefix_tokens_shared += p * (len(run) - 1)
                i += len(run)
        return shared

    def _pack(self, pairs) -> list[tuple[list[int], list[tuple[int, list[int]]], int, int]]:
        """-> rows (ctx, [(request index, cont)], row length, scored_from): a row's context tokens
        from ``scored_from`` on are a shared start of its continuations (scored once, added to
        each); ``scored_from == len(ctx)`` when nothing is shared."""
        groups: OrderedDict[tuple, list[tuple[int, list[int]]]] = OrderedDict()
        shared = self._shared_prefixes(pairs)
        for k, (ctx, cont) in enumerate(pairs):
            p = shared[k]
            ctx_k, cont_k = list(ctx) + list(cont[:p]), list(cont[p:])
            key = (len(ctx),) + tuple(ctx_k) if self.share_context else (k, len(ctx)) + tuple(ctx_k)
            groups.setdefault(key, []).append((k, cont_k))
        rows = []
        for key, conts in groups.items():
            scored_from, ctx = (key[0], list(key[1:])) if self.share_context else (key[1], list(key[2:]))
            cur, length = [], len(ctx)
            for k, cont in conts:
                # A continuation longer than the context gets a row of its own: sharing saves
                # len(ctx) tokens of work but lengthens the row, and attention grows with the
                # square of the row (the mask is explicit, so masked-out pairs still cost).
                # Packing whole-story wavs behind a 2-token BOS context made 4096-token rows
                # and took 2.6x longer than one row per story (topic-StoryCloze S, demo model).
                too_long = len(cont) > len(ctx) and not self.pack_longer
                if cur and (length + len(cont) > self.max_row_tokens or too_long):
                    rows.append((ctx, cur, length, scored_from))
                    self.stats.context_tokens_saved += len(ctx) * (len(cur) - 1)
                    cur, length = [], len(ctx)
                cur.append((k, cont))
                length += len(cont)
            rows.append((ctx, cur, length, scored_from))
            self.stats.context_tokens_saved += len(ctx) * (len(cur) - 1)
        return rows

    def _forward(self, batch) -> list[tuple[int, Score]]:
        import torch

        model = self.model
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        B, L = len(batch), max(r[2] for r in batch)
        ids = torch.zeros(B, L, dtype=torch.long)
        pos = torch.zeros(B, L, dtype=torch.long)
        bi, pi, tgt, owner = [], [], [], []
        for b, (ctx, conts, length, scored_from) in enumerate(batch):
            C = len(ctx)
            ids[b, :C] = torch.tensor(ctx)
            pos[b, :C] = torch.arange(C)
            if scored_from < C:  # the continuations' shared start, owned by the row (-1 - b)
                bi.extend([b] * (C - scored_from))
                pi.extend(range(scored_from - 1, C - 1))
                tgt.extend(ctx[scored_from:])
                owner.extend([-1 - b] * (C - scored_from))
            off = C
            for k, cont in conts:
                m = len(cont)
                ids[b, off : off + m] = torch.tensor(cont)
                pos[b, off : off + m] = torch.arange(C, C + m)
                prev = [C - 1] + list(range(off, off + m - 1))
                bi.extend([b] * m)
                pi.extend(prev)
                tgt.extend(cont)
                owner.extend([k] * m)
                off += m
        # one continuation per row, padding only at the right end: plain causal attention is
        # exact (no real token sees a pad) and skips the B x L x L mask (~20% faster on CPU)
        plain = all(len(r[1]) == 1 for r in batch)
        mask = None if plain else _tree_mask(batch, L, dtype).to(device)
        hidden = self._hidden(ids.to(device), mask, pos.to(device))
        sel = hidden[torch.tensor(bi, device=device), torch.tensor(pi, device=device)]
        logits = self._head(sel).float()
        lp = torch.log_softmax(logits, dim=-1)
        tok_lp = lp.gather(1, torch.tensor(tgt, device=device)[:, None])[:, 0].double().cpu().numpy()
        self.stats.rows += B
        self.stats.batches += 1
        self.stats.tokens_forwarded += sum(r[2] for r in batch)
        owner_arr = np.asarray(owner)
        out = []
        for b, (ctx, conts, _, scored_from) in enumerate(batch):
            shared = float(tok_lp[owner_arr == -1 - b].sum()) if scored_from < len(ctx) else 0.0
            for k, cont in conts:
                v = float(tok_lp[owner_arr == k].sum())
                out.append((k, Score(shared + v, len(ctx) - scored_from + len(cont))))
        return out

    def _hidden(self, ids, mask, pos):
        base = getattr(self.model, getattr(self.model, "base_model_prefix", "model"), None)
        if base is not None and self.model.get_output_embeddings() is not None:
            return base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
        self._full_logits = True
        return self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits

    def _head(self, h):
        if getattr(self, "_full_logits", False):
            return h
        return self.model.get_output_embeddings()(h)

    # ---- reference -----------------------------------------------------------------------
    def score_one_at_a_time(self, requests: Sequence[Request] | None = None, pairs=None) -> list[Score]:
        """One plain causal forward per request (no packing, no padding): the reference path."""
        import torch

        if pairs is None:
            pairs = [self.encode_request(r) for r in requests]
        device = next(self.model.parameters()).device
        out = []
        with torch.inference_mode():
            for ctx, cont in pairs:
                seq = torch.tensor([list(ctx) + list(cont)], device=device)
                logits = self.model(input_ids=seq, use_cache=False).logits[0].float()
                lp = torch.log_softmax(logits, -1)
                C = len(ctx)
                tgt = torch.tensor(list(cont), device=device)
                v = lp[C - 1 : C - 1 + len(cont)].gather(1, tgt[:, None]).double().sum().item()
                out.append(Score(v, len(cont)))
        return out
