"""Reference chunk-synchronous greedy decoding of the streaming model, and its WER.

    chunks = greedy_decode_embeddings(model, emb_NH)        # token ids per chunk
    texts = transcribe_stream(model, wavs)                   # one transcript per waveform
    res = evaluate_stream_asr(model, manifest_items(M, split="heldout"))

Decoding follows training's layout (:mod:`spiritlm.models.streaming.data`): read chunk k's audio
embeddings, then generate greedily until ``$`` (or ``streaming.max_chunk_tokens``), then read the
next chunk; ``$`` is appended to the sequence only when the model was trained with it as input
(``eoc_input``). Every step RECOMPUTES the whole sequence so far under the window mask, with no
cache at all: slow (quadratic), but it is the definition the fast bounded-cache decoder
(``infer.py``) is tested against. WER: :func:`spiritlm.stats.asr_wer` (normalised, jiwer, corpus WER).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch


@torch.no_grad()
def greedy_decode_embeddings(model, emb_NH: torch.Tensor, max_chunk_tokens: int | None = None) -> list[list[int]]:
    """Token ids generated for each chunk of an utterance's audio embeddings ``emb_NH`` (N slots,
    already projected; chunk k = slots ``k * slots_per_chunk ...``). ``$`` is not included."""
    from spiritlm.models.streaming.infer import check_decode_args

    check_decode_args(None, max_chunk_tokens)
    limit = max_chunk_tokens or model.scfg.max_chunk_tokens
    table = model.lm.get_input_embeddings()
    dev = table.weight.device
    emb_NH = emb_NH.to(dev, table.weight.dtype)
    spc = model.slots_per_chunk
    K = -(-emb_NH.shape[0] // spc)
    xs: list[torch.Tensor] = []
    chunk: list[int] = []
    out: list[list[int]] = []
    for k in range(K):
        a = emb_NH[k * spc : (k + 1) * spc]
        xs.extend(a.unbind(0))
        chunk += [k] * a.shape[0]
        toks: list[int] = []
        while True:
            x = torch.stack(xs)[None]
            pos = torch.arange(len(xs), device=dev)[None]
            logits = model.lm_logits(x, pos, torch.tensor(chunk, device=dev)[None])
            t = int(logits[0, -1].float().argmax())
            if t == model.eoc_id or len(toks) >= limit:
                if model.scfg.eoc_input:
                    xs.append(table(torch.tensor([model.eoc_id], device=dev))[0])
                    chunk.append(k)
                break
            toks.append(t)
            xs.append(table(torch.tensor([t], device=dev))[0])
            chunk.append(k)
        out.append(toks)
    return out


@torch.no_grad()
def transcribe_stream(model, wavs: Sequence[np.ndarray], max_chunk_tokens: int | None = None,
                      progress: bool = False) -> list[str]:
    from tqdm.auto import tqdm

    model.eval()
    out = []
    for w in tqdm(wavs, desc="stream decode", unit="utt", disable=not progress):
        embs, _ = model.audio_embeddings({"wavs": [w]})
        chunks = greedy_decode_embeddings(model, embs[0], max_chunk_tokens)
        out.append(model.tok.decode([t for c in chunks for t in c]))
    return out


def evaluate_stream_asr(model, items: Iterable[tuple[str, str, str]], max_chunk_tokens: int | None = None,
                        progress: bool = True) -> dict:
    """WER over (id, audio path, transcript) items; unreadable or too-short audio is counted and
    skipped, as :func:`spiritlm.models.continuous.asr.evaluate_asr` does."""
    from spiritlm.stats import asr_wer as wer
    from spiritlm.transcripts import readable_items

    ids, wavs, refs, skipped = readable_items(items, model.frames_for)
    hyps = transcribe_stream(model, wavs, max_chunk_tokens, progress)
    res = wer(refs, hyps) if refs else {"wer": float("nan"), "words": 0}
    res.update(n=len(ids), skipped=skipped, decoder="chunked greedy (full recompute)",
               chunk_s=model.scfg.chunk_s, window=model.scfg.window,
               items=[{"id": i, "ref": r, "hyp": h} for i, r, h in zip(ids, refs, hyps)])
    return res
