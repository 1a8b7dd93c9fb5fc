"""ASR with a continuous-input model: batched greedy / beam decoding and WER (``jiwer``).

    model = load_continuous("runs/continuous/hf")
    hyps = transcribe(model, wavs, num_beams=1)                 # greedy; num_beams > 1: beam search
    res = evaluate_asr(model, manifest_items("data/demo/manifest.jsonl", split="heldout"))
    res = evaluate_asr(model, text_dir_items("../shared/data/real_speech/librivox"))

(``manifest_items`` / ``text_dir_items``: :mod:`spiritlm.transcripts`.)

Decoding runs HF ``generate`` on ``inputs_embeds``: the prompt is the utterance's audio
embeddings placed as in training (``[audio] <BOS>`` or ``<BOS> [audio]``), left-padded with an
attention mask so a batch decodes like each prompt alone (tested), and stops at ``<EOS>``.
WER: references and hypotheses are normalised as the unit model's few-shot ASR does
(``spiritlm.stats.normalize_text``), then :func:`spiritlm.stats.wer` (jiwer) counts
substitutions, deletions and insertions over the whole set (corpus WER, not a mean of utterance
WERs; empty text by that module's one rule).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from spiritlm.stats import asr_wer
from spiritlm.transcripts import readable_items


def _prompt(model, emb_NH: torch.Tensor) -> torch.Tensor:
    table = model.lm.get_input_embeddings()
    bos = table(torch.tensor([model.tok.bos_id], device=emb_NH.device))
    emb_NH = emb_NH.to(bos.dtype)
    return torch.cat([emb_NH, bos]) if model.cfg.placement == "prepend" else torch.cat([bos, emb_NH])


@torch.no_grad()
def transcribe(model, wavs: Sequence[np.ndarray], batch_size: int = 8, num_beams: int = 1,
               max_new_tokens: int = 64, progress: bool = False) -> list[str]:
    """Greedy (``num_beams=1``) or beam-search transcripts of 16 kHz waveforms."""
    model.eval()
    dev = model.lm.get_input_embeddings().weight.device
    out: list[str] = []
    for i in tqdm(range(0, len(wavs), batch_size), desc="transcribe", unit="batch", disable=not progress):
        chunk = list(wavs[i : i + batch_size])
        embs, _ = model.audio_embeddings({"wavs": chunk})
        prompts = [_prompt(model, e.to(dev)) for e in embs]
        L = max(p.shape[0] for p in prompts)
        H = prompts[0].shape[1]
        x = prompts[0].new_zeros(len(prompts), L, H)
        mask = torch.zeros(len(prompts), L, dtype=torch.long, device=dev)
        for b, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
            x[b, L - p.shape[0]:] = p
            mask[b, L - p.shape[0]:] = 1
        gen = model.lm.generate(inputs_embeds=x, attention_mask=mask, max_new_tokens=max_new_tokens,
                                num_beams=num_beams, do_sample=False, eos_token_id=model.tok.eos_id,
                                pad_token_id=model.tok.eos_id, bos_token_id=model.tok.bos_id)
        for row in gen.tolist():  # with inputs_embeds only, generate returns the new tokens
            if model.tok.eos_id in row:
                row = row[: row.index(model.tok.eos_id)]
            out.append(model.tok.decode(row))
    return out


def evaluate_asr(model, items: Iterable[tuple[str, str, str]], batch_size: int = 8, num_beams: int = 1,
                 max_new_tokens: int = 64, progress: bool = True) -> dict:
    """WER over ``items``; audio too short for one stacked frame, or unreadable, is counted and
    skipped (``skipped``), not a crash."""
    ids, wavs, refs, skipped = readable_items(items, model.frames_for)
    hyps = transcribe(model, wavs, batch_size, num_beams, max_new_tokens, progress)
    res = asr_wer(refs, hyps) if refs else {"wer": float("nan"), "words": 0}
    res.update(n=len(ids), skipped=skipped, num_beams=num_beams,
               items=[{"id": i, "ref": r, "hyp": h} for i, r, h in zip(ids, refs, hyps)])
    return res
