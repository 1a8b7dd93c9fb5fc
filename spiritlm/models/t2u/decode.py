"""A trained T2U model: text spans -> speech-token ids, batched and KV-cached (our own loop over the HF model).

    t2u = T2U("runs/t2u/hf")
    units = t2u.generate([bpe_ids_of_span, ...], seed=0)     # list of int arrays ([Hu*] ids ...)

Decoding is constrained to the speech tokens the model writes and the closing ``[Text]`` (which
ends a span); a span stops at ``max_per_word`` tokens per word (default twice the 99th percentile
of its training data) and is then reported as cut. Greedy, or sampled with a seed: each batch
draws from a generator seeded by (seed, the batch's first span), so the same spans in the same
order give the same units on any run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from spiritlm.config import ConfigError
from spiritlm.models.t2u.pairs import prompt_ids, unit_rows
from spiritlm.models.t2u.config import FORMAT, MARKER
from spiritlm.vocab import VocabLayout


@dataclass
class DecodeConfig:
    mode: Literal["greedy", "sample"] = "sample"
    temperature: float = 1.0
    top_k: int = 0  # 0 = the whole allowed set
    batch_size: int = 64  # spans decoded together (sorted by length: similar ones share a batch)
    max_per_word: float = 0.0  # speech tokens per word before a span is cut; 0 = 2 x the training p99

    def __post_init__(self) -> None:
        if self.mode not in ("greedy", "sample"):
            raise ConfigError(f"decode.mode={self.mode!r}: use 'greedy' or 'sample'")
        if not self.temperature > 0 or self.top_k < 0 or self.batch_size < 1 or self.max_per_word < 0:
            raise ConfigError(f"decode: temperature={self.temperature}, top_k={self.top_k}, batch_size="
                              f"{self.batch_size}, max_per_word={self.max_per_word}: use temperature > 0, top_k >= 0, "
                              "batch_size >= 1, max_per_word >= 0")


def read_marker(directory: str | Path) -> dict:
    d = Path(directory)
    f = d / MARKER
    if not f.is_file():
        raise ConfigError(f"{d}: no {MARKER} there -- not a T2U export; point at the hf/ folder of a "
                          "`spiritlm t2u fit` run")
    meta = json.loads(f.read_text())
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{f}: format {meta.get('format')!r}, this version reads {FORMAT!r}; retrain the T2U model")
    return meta


def checkpoint_sha256(directory: str | Path) -> str:
    """The identity of a T2U export: its weights, config and marker (recorded in synthetic shards)."""
    d = Path(directory)
    h = hashlib.sha256()
    for name in sorted(p.name for p in d.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file()):
        h.update(name.encode() + b"\0")
        with open(d / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class T2U:
    def __init__(self, directory: str | Path, device: str = "cpu", dtype: str = "float32"):
        from spiritlm.models.unit_lm.load import load_model

        self.dir = Path(directory)
        meta = read_marker(self.dir)
        model, tokenizer = load_model(self.dir, device, dtype)
        self._setup(model, tokenizer, meta, device, checkpoint_sha256(self.dir))

    @classmethod
    def from_model(cls, model, meta: dict, device: str = "cpu", tokenizer=None) -> "T2U":
        """A T2U over a model in memory (``bench``: random weights of a named size) and its marker."""
        self = cls.__new__(cls)
        self.dir = None
        self._setup(model.to(device).eval(), tokenizer, meta, device, "")
        return self

    def _setup(self, model, tokenizer, meta: dict, device: str, sha256: str) -> None:
        self.model, self.tokenizer, self.meta, self.device, self.sha256 = model, tokenizer, meta, device, sha256
        self.layout = VocabLayout(**meta["vocab_layout"])
        if self.layout.vocab_size > model.config.vocab_size:
            raise ConfigError(f"{self.dir}: {MARKER} names a vocabulary of {self.layout.vocab_size} ids, the model "
                              f"has {model.config.vocab_size} rows; the export is inconsistent, retrain it")
        self.allowed = np.concatenate((unit_rows(self.layout, meta["streams"]), [self.layout.text_id]))
        # decoding is constrained to the speech tokens the model writes and the closing [Text]
        self.mask = torch.full((model.config.vocab_size,), float("-inf"))
        self.mask[torch.as_tensor(self.allowed)] = 0.0
        seen = np.zeros(self.layout.base_vocab_size, dtype=bool)
        seen[np.asarray(meta.get("text_ids", []), dtype=np.int64)] = True
        self.seen = seen

    def unseen_ids(self, bpe: np.ndarray) -> np.ndarray:
        """The span's text ids the model never saw in training (empty: the span can be written)."""
        bpe = np.asarray(bpe, dtype=np.int64)
        bad = (bpe < 0) | (bpe >= len(self.seen))
        bad[~bad] = ~self.seen[bpe[~bad]]
        return bpe[bad]

    def _cap(self, n_words: int, cfg: DecodeConfig) -> int:
        """The most speech tokens a span of ``n_words`` words may get (``generate`` passes its BPE ids'
        count when the words are not given: a word is one or more ids, so that cap is generous)."""
        per_word = cfg.max_per_word or 2.0 * float(self.meta.get("tokens_per_word_p99") or 25.0)
        return int(np.ceil(per_word * max(1, n_words))) + 4

    @torch.no_grad()
    def generate(self, spans: Sequence[np.ndarray], seed: int = 0, cfg: DecodeConfig | None = None,
                 n_words: Sequence[int] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        """-> (speech-token ids per span, cut flags). Spans are BPE ids of their words (the
        mid-sentence form the data stage writes); ``n_words`` (per span) sets each span's length
        cap (default: its number of ids)."""
        cfg = cfg or DecodeConfig()
        lay = self.layout
        n = len(spans)
        words = list(n_words) if n_words is not None else [len(s) for s in spans]
        out: list[np.ndarray] = [np.zeros(0, np.int64)] * n
        cut = np.zeros(n, dtype=bool)
        order = sorted(range(n), key=lambda i: (len(spans[i]), i))  # similar lengths share a batch
        bos = int(self.meta.get("bos_id", -1))
        for b in range(0, n, cfg.batch_size):
            idx = order[b:b + cfg.batch_size]
            prompts = [prompt_ids(spans[i], lay) for i in idx]
            if bos >= 0:
                prompts = [np.concatenate(([bos], p)) for p in prompts]
            gen = torch.Generator().manual_seed(_batch_seed(seed, spans[idx[0]], b))
            units, cuts = self._decode_batch(prompts, [self._cap(words[i], cfg) for i in idx], cfg, gen)
            for r, i in enumerate(idx):
                out[i], cut[i] = units[r], cuts[r]
        return out, cut

    def _decode_batch(self, prompts: list[np.ndarray], caps: list[int], cfg: DecodeConfig, gen: torch.Generator):
        """KV-cached decoding of one batch; a row leaves the batch (and the cache) when it ends.

        Our own loop rather than HF ``generate``: ``generate`` keeps every row until the batch's
        longest is done, so one span that runs to its cap made the whole batch run there (measured on
        the demo: 250 units/s on one thread); here finished rows are dropped from the KV cache
        (``DynamicCache.batch_select_indices``) at once."""
        from transformers import DynamicCache

        lay, dev = self.layout, self.device
        B, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, width), lay.text_id, dtype=torch.long)
        att = torch.zeros((B, width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: every prompt ends at the last column
            ids[r, width - len(p):] = torch.as_tensor(p)
            att[r, width - len(p):] = 1
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        ids, att, pos = ids.to(dev), att.to(dev), pos.to(dev)
        cache = DynamicCache()
        logits = self.model(input_ids=ids, attention_mask=att, position_ids=pos, cache=cache,
                            use_cache=True).logits[:, -1]
        mask = self.mask.to(dev)
        rows = list(range(B))  # the batch row -> prompt index of each live row
        nxt = pos[:, -1] + 1
        got: list[list[int]] = [[] for _ in range(B)]
        cut = [False] * B
        while rows:
            scores = logits.float() + mask[: logits.shape[-1]]
            if cfg.mode == "sample":
                scores = scores / cfg.temperature
                if cfg.top_k:
                    kth = torch.topk(scores, min(cfg.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
                    scores = scores.masked_fill(scores < kth, float("-inf"))
                tok = torch.multinomial(torch.softmax(scores, -1).cpu(), 1, generator=gen)[:, 0]
            else:
                tok = scores.argmax(-1).cpu()
            keep = []
            for k, (r, t) in enumerate(zip(rows, tok.tolist())):
                if t == lay.text_id:
                    continue
                got[r].append(t)
                if len(got[r]) >= caps[r]:
                    cut[r] = True
                    continue
                keep.append(k)
            if not keep:
                break
            if len(keep) < len(rows):
                sel = torch.as_tensor(keep, device=dev)
                cache.batch_select_indices(sel)
                att, nxt, tok = att[sel], nxt[sel], tok[keep]
                rows = [rows[k] for k in keep]
            att = torch.cat((att, torch.ones((len(rows), 1), dtype=att.dtype, device=dev)), dim=1)
            logits = self.model(input_ids=tok[:, None].to(dev), attention_mask=att, position_ids=nxt[:, None],
                                cache=cache, use_cache=True).logits[:, -1]
            nxt = nxt + 1
        return [np.asarray(g, dtype=np.int64) for g in got], cut


def _batch_seed(seed: int, first_span: np.ndarray, b: int) -> int:
    h = hashlib.blake2b(np.asarray(first_span, np.int64).tobytes() + f"{seed}:{b}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)
