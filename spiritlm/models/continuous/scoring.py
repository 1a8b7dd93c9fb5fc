"""Log-likelihood scoring with continuous speech context: the suite's :class:`Scorer` interface
(``score(requests) -> [Score]``) for a :class:`ContinuousSpeechLM`, so StoryCloze S->T and
Topic-StoryCloze S->T score a continuous model on exactly the unit model's items.

A request's context segments become embeddings in order: a speech segment (a wav path or a
16 kHz array) is its projected audio, placed as in training (``[audio] <BOS>`` when prepended,
``<BOS> [audio]`` with placeholders), a text segment its pieces (after ``<BOS>`` when it comes
first). The continuation must be text (a continuous-input model reads speech, it does not write
it): ``score`` raises for a speech continuation and the suite skips those settings (S, T2S,
sWUGGY/sBLIMP S). Rows are right-padded and batched; the continuation's summed log-prob and
token count make the :class:`~spiritlm.components.scoring.Score` as for the unit model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from spiritlm.components.scoring import Request, Score, ScorerStats


class ContinuousScorer:
    speech_continuations = False  # the suite skips settings whose continuation is speech

    def __init__(self, model, batch_size: int = 16):
        self.model = model.eval()
        self.batch_size = batch_size
        self.stats = ScorerStats()
        self.progress_desc: str | None = None
        self._audio: dict[str, torch.Tensor] = {}

    def _audio_emb(self, content) -> torch.Tensor:
        from spiritlm.data.encoders import read_audio

        key = str(content) if isinstance(content, (str, Path)) else None
        if key is not None and key in self._audio:
            return self._audio[key]
        wav = read_audio(content) if key is not None else np.asarray(content, dtype=np.float32)
        if self.model.frames_for(wav.size) < 1:
            raise ValueError(f"speech context {key or '<array>'} is too short for one stacked frame")
        emb = self.model.audio_embeddings({"wavs": [wav]})[0][0]
        if key is not None:
            self._audio[key] = emb
        return emb

    def _request(self, req: Request) -> tuple[torch.Tensor, list[int]]:
        m = self.model
        table = m.lm.get_input_embeddings()
        dev = table.weight.device

        def tok(ids):
            return table(torch.tensor(ids, dtype=torch.long, device=dev))

        parts, bos_done = [], False
        for kind, content in req.context:
            if kind == "speech":
                a = self._audio_emb(content).to(dev, table.weight.dtype)
                if m.cfg.placement == "prepend":
                    parts.append(a)
                    if not bos_done:
                        parts.append(tok([m.tok.bos_id]))
                        bos_done = True
                else:
                    if not bos_done:
                        parts.append(tok([m.tok.bos_id]))
                        bos_done = True
                    parts.append(a)
            elif kind == "text":
                ids = ([] if bos_done else [m.tok.bos_id]) + m.tok.encode(content)
                bos_done = True
                parts.append(tok(ids))
            else:
                raise ValueError(f"segment kind {kind!r}: use 'text' or 'speech'")
        if not bos_done:
            parts.append(tok([m.tok.bos_id]))
        cont: list[int] = []
        for kind, content in req.continuation:
            if kind != "text":
                raise ValueError("a continuous-input model scores text continuations only (S->T, T); "
                                 "speech continuations (S, T2S) need a unit model")
            cont += m.tok.encode(content)
        if not cont:
            raise ValueError(f"continuation {req.continuation!r} encodes to no tokens")
        return torch.cat(parts + [tok(cont)]), cont

    @torch.no_grad()
    def score(self, requests: Sequence[Request]) -> list[Score]:
        from tqdm.auto import tqdm

        self.stats.requests += len(requests)
        built = [self._request(r) for r in requests]
        out: list[Score] = []
        for i in tqdm(range(0, len(built), self.batch_size), desc=self.progress_desc, unit="batch",
                      disable=True if self.progress_desc is None else None):
            chunk = built[i : i + self.batch_size]
            L = max(x.shape[0] for x, _ in chunk)
            x = chunk[0][0].new_zeros(len(chunk), L, chunk[0][0].shape[1])
            mask = torch.zeros(len(chunk), L, dtype=torch.long, device=x.device)
            for b, (e, _) in enumerate(chunk):  # right padding: no real position sees a pad
                x[b, : e.shape[0]] = e
                mask[b, : e.shape[0]] = 1
            lp = self.model.lm(inputs_embeds=x, attention_mask=mask, use_cache=False).logits.float().log_softmax(-1)
            for b, (e, cont) in enumerate(chunk):
                n, c = e.shape[0], len(cont)
                tgt = torch.tensor(cont, device=lp.device)
                v = lp[b, n - c - 1 : n - 1].gather(1, tgt[:, None]).double().sum().item()
                out.append(Score(v, c))
            self.stats.rows += len(chunk)
            self.stats.batches += 1
            self.stats.tokens_forwarded += len(chunk) * L
        return out
