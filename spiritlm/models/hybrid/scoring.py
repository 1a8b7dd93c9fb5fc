"""The evaluation suite's scorer for hybrid-input models, and held-out NLL per unit.

:class:`HybridScorer` is the suite's :class:`~spiritlm.components.scoring.Scorer` (same requests, same
packing of shared contexts, same batching, same :class:`Score`) with two changes:

* a speech segment (a wav) becomes ``[Speech]`` + one position per unit frame, **not
  deduplicated** (the hybrid model's input; the tokens-only baseline of the comparison is scored
  the same way, so both are normalised by the same number of units);
* every frame position gets a *virtual id* (``VBASE + slot``) naming that frame of that audio:
  identical audio gives identical ids (so the scorer's context sharing and request dedup stay
  exact), different audio with the same units does not (their features differ). Just before
  the forward pass virtual ids become their unit ids and their features
  (:meth:`HybridScorer._forward`), and the model embeds them through the feature path.

Units come from the suite's speech encoder (the demo's cached units file works as is); features
from the model's :class:`~spiritlm.models.hybrid.features.FrameFeaturizer` on the same audio.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from spiritlm.components.scoring import Request, Score, Scorer

VBASE = 1 << 30


class HybridScorer(Scorer):
    def __init__(self, model, tokenizer, encoder, featurizer=None, batch_tokens: int | None = None,
                 max_row_tokens: int = 4096, share_context: bool = True):
        super().__init__(model.lm, tokenizer, encoder, False, False, batch_tokens, max_row_tokens, share_context)
        if model.hybrid and featurizer is None:
            raise ValueError("a hybrid model needs a FrameFeaturizer to score speech")
        self.hybrid, self.featurizer = model, featurizer
        self.frame_unit: list[int] = []  # slot -> unit id
        self.frame_feats: list[np.ndarray] = []  # per audio: (F, D)
        self.slot_base: list[int] = []  # first slot of each audio
        self._slots: dict[str, int] = {}  # audio key -> index into frame_feats
        self._table: torch.Tensor | None = None

    # ---- segments -> ids with virtual frame ids ------------------------------------------------
    def _audio_slots(self, wav) -> range:
        key = str(Path(wav).resolve()) if isinstance(wav, (str, Path)) else f"array:{id(wav)}"
        if key not in self._slots:
            if self.encoder is None:
                raise ValueError("a speech segment is a wav but no speech encoder is configured")
            units = np.asarray(self.encoder(wav)["hubert"], np.int64)
            hu = self.tok.layout.streams["hubert"]
            if self.featurizer is not None:
                from spiritlm.data.encoders import read_audio

                audio = read_audio(wav) if isinstance(wav, (str, Path)) else np.asarray(wav, np.float32)
                self.frame_feats.append(self.featurizer(audio, units.size))
            else:
                self.frame_feats.append(np.zeros((units.size, 0), np.float32))
            self._slots[key] = len(self.slot_base)
            self.slot_base.append(len(self.frame_unit))
            self.frame_unit.extend((hu.offset + units).tolist())
            self._table = None
        i = self._slots[key]
        return range(self.slot_base[i], self.slot_base[i] + self.frame_feats[i].shape[0])

    def _ids(self, segments, trailing: str | None = None) -> list[int]:
        lay = self.tok.layout
        ids = [self.tok.bos_id] if self.tok.add_bos else []
        prev = None
        for kind, content in segments:
            kind = kind.lower()
            if kind != prev:
                ids.append(lay.text_id if kind == "text" else lay.speech_id)
            if kind == "text":
                ids.extend(self.tok.encode_segments([("text", content)], bos=False)[1:])
            elif isinstance(content, (str, Path, np.ndarray)) and not (isinstance(content, str)
                                                                       and content.startswith("[")):
                ids.extend(VBASE + s for s in self._audio_slots(content))
            else:
                if self.hybrid.hybrid:
                    raise ValueError("a hybrid model scores speech from audio (its features); got units only")
                units = content["hubert"] if isinstance(content, Mapping) else None
                if units is None:
                    raise ValueError("speech strings are deduplicated units: give the audio instead")
                ids.extend((lay.streams["hubert"].offset + np.asarray(units, np.int64)).tolist())
            prev = kind
        if trailing is not None and trailing != prev:
            ids.append(lay.text_id if trailing == "text" else lay.speech_id)
        return ids

    def encode_request(self, req: Request) -> tuple[list[int], list[int]]:
        if not req.continuation:
            raise ValueError("a request needs a non-empty continuation")
        ctx_ids = self._ids(req.context, trailing=req.continuation[0][0].lower())
        full = self._ids(list(req.context) + list(req.continuation))
        if full[: len(ctx_ids)] != ctx_ids:
            raise AssertionError("context ids are not a prefix of the full sequence")
        if not ctx_ids:
            raise ValueError("empty context and no BOS: the first token cannot be scored")
        return ctx_ids, full[len(ctx_ids):]

    # ---- virtual ids -> units + features ---------------------------------------------------------
    def _real(self, seq: Sequence[int]) -> tuple[list[int], np.ndarray]:
        a = np.asarray(seq, np.int64)
        slot = np.where(a >= VBASE, a - VBASE, -1)
        units = np.asarray(self.frame_unit, np.int64)
        return np.where(slot >= 0, units[np.maximum(slot, 0)] if units.size else a, a).tolist(), slot

    def _feature_table(self) -> torch.Tensor:
        if self._table is None:
            dim = self.hybrid.feat_dim if self.hybrid.hybrid else 0
            self._table = torch.from_numpy(np.concatenate(self.frame_feats) if self.frame_feats
                                           else np.zeros((0, dim), np.float32))
        return self._table

    def _forward(self, batch):
        B, L = len(batch), max(r[2] for r in batch)
        slots = torch.full((B, L), -1, dtype=torch.long)
        real_batch = []
        for b, (ctx, conts, length, scored_from) in enumerate(batch):
            rctx, s = self._real(ctx)
            slots[b, : len(ctx)] = torch.from_numpy(s)
            off, rconts = len(ctx), []
            for k, cont in conts:
                rc, s = self._real(cont)
                slots[b, off : off + len(cont)] = torch.from_numpy(s)
                rconts.append((k, rc))
                off += len(cont)
            real_batch.append((rctx, rconts, length, scored_from))
        mask = slots >= 0
        feats = None
        if self.hybrid.hybrid:
            feats = self._feature_table()[slots.clamp(min=0)] * mask[..., None]
        self._pending = (feats, mask)
        return super()._forward(real_batch)

    def _hidden(self, ids, mask, pos):
        feats, fmask = self._pending
        dev = ids.device
        return self.hybrid.hidden(ids, None if feats is None else feats.to(dev), fmask.to(dev), pos, mask)

    def _head(self, h):
        return self.hybrid.lm.get_output_embeddings()(h)

    def score_one_at_a_time(self, requests=None, pairs=None) -> list[Score]:
        """One plain causal forward per request through the model's own embedding (the reference)."""
        if pairs is None:
            pairs = [self.encode_request(r) for r in requests]
        out = []
        with torch.inference_mode():
            for ctx, cont in pairs:
                ids, slot = self._real(list(ctx) + list(cont))
                t = torch.tensor([ids])
                m = torch.from_numpy(slot >= 0)[None]
                f = self._feature_table()[torch.from_numpy(slot).clamp(min=0)][None] * m[..., None] \
                    if self.hybrid.hybrid else None
                h = self.hybrid.hidden(t, f, m, torch.arange(len(ids))[None])
                lp = torch.log_softmax(self._head(h)[0].float(), -1)
                C = len(ctx)
                tgt = torch.tensor(ids[C:])
                out.append(Score(lp[C - 1 : C - 1 + len(cont)].gather(1, tgt[:, None]).double().sum().item(), len(cont)))
        return out


def make_scorer(model, tokenizer, encoder, scoring=None) -> HybridScorer:
    """The suite's hook (``HybridLM.make_scorer``): the model's featurizer at its frame rate."""
    from spiritlm.models.hybrid.features import FrameFeaturizer

    fz = FrameFeaturizer(model.cfg.features, model.frame_rate) if model.hybrid else None
    kw = {} if scoring is None else dict(batch_tokens=scoring.batch_tokens, max_row_tokens=scoring.max_row_tokens,
                                         share_context=scoring.share_context)
    return HybridScorer(model, tokenizer, encoder, fz, **kw)


def speech_nll(scorer: Scorer, wavs: Sequence) -> dict:
    """Held-out speech NLL per unit (nats) and perplexity: every utterance scored as
    ``[BOS][Speech] u_1 ... u_F`` (the first unit predicted from the marker), summed over
    utterances, divided by the number of units."""
    scores = scorer.score([Request([], [("speech", w)]) for w in wavs])
    lp = sum(s.logprob for s in scores)
    n = sum(s.n_tokens for s in scores)
    nll = -lp / max(n, 1)
    return {"nll": nll, "ppl": math.exp(nll), "units": n, "utterances": len(scores),
            "per_utt": [(-s.logprob, s.n_tokens) for s in scores]}
