"""Chunk-synchronous sequences of the streaming model, built from the data stage's manifests.

One utterance of ``n_slots`` audio embeddings (encoder frames // projector.stack) is cut into
``K = ceil(n_slots / slots_per_chunk)`` chunks (the last one may be shorter). Each LM text token
goes to the chunk holding its end frame under the CTC forced alignment
(:mod:`spiritlm.models.streaming.align`): ``chunk = end_frame // chunk_frames``, clamped to the last
chunk (a token ending in the frames the projector's stacking drops, or past the last whole stack,
stays in the last chunk). The sequence is::

    X_1 y_1 [$] X_2 y_2 [$] ... X_K y_K [$]          targets: y_1 $ y_2 $ ... y_K $

``$`` ends EVERY chunk, also one with no text. With ``eoc_input = false`` (default, the paper's
figure 1) ``$`` is a target only: the last position of chunk k (its last text token, or its last
audio slot when it has no text) predicts ``$`` and the next position is chunk k+1's first audio
slot. With ``eoc_input = true`` the ``$`` id also sits in the sequence (and predicts nothing).
Audio slots hold ``audio_id`` (replaced by the projected frames) and predict the chunk's first
token (the last slot) or nothing. ``chunk_BT`` gives each position its chunk (for the window mask);
positions count from 0 within the utterance.

Alignment cache: token end frames of every utterance, computed once with the alignment model's
encoder + CTC head and written as JSON Lines (``alignment.jsonl``, with the alignment model's
identity in ``metadata.json``); a cache of another alignment model is recomputed, never read.
Each line also records what it was aligned from (``input``: the audio's size and SHA-256 and the
transcript's token ids' hash); ``load(utts)`` drops the lines whose utterance is no longer that
audio or that transcript, so they are aligned again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from spiritlm.models.continuous.data import ContinuousBatches, Utt, input_identity, load_wav
from spiritlm.components.packing import IGNORE

log = logging.getLogger(__name__)


# ---- chunk assignment and the sequence ---------------------------------------------------------
def n_chunks(n_slots: int, slots_per_chunk: int) -> int:
    return -(-n_slots // slots_per_chunk)


def assign_chunks(token_end_frames: Sequence[int], n_slots: int, chunk_frames: int, stack: int) -> list[int]:
    """Chunk index of each token: the chunk holding its end frame (encoder frames; a chunk is
    ``chunk_frames`` frames, a multiple of ``stack``), clamped into ``0 .. K-1``."""
    if chunk_frames % stack:
        raise ValueError(f"chunk_frames={chunk_frames} is not a multiple of stack={stack}")
    K = n_chunks(n_slots, chunk_frames // stack)
    if K < 1:
        raise ValueError("an utterance with no audio slot has no chunk")
    out = []
    for f in token_end_frames:
        if f < 0:
            raise ValueError(f"negative end frame {f}")
        out.append(min(int(f) // chunk_frames, K - 1))
    if any(b < a for a, b in zip(out, out[1:])):
        raise ValueError("token end frames must not decrease (a CTC alignment is monotone)")
    return out


@dataclass
class ChunkedSequence:
    ids: list[int]
    targets: list[int]
    chunk: list[int]  # chunk index per position
    audio_pos: list[int]  # positions of the audio slots, in frame order
    n_chunks: int


def chunked_sequence(n_slots: int, slots_per_chunk: int, text_ids: Sequence[int], token_chunks: Sequence[int],
                     eoc_id: int, audio_id: int, eoc_input: bool = False) -> ChunkedSequence:
    """``X_1 y_1 [$] ... X_K y_K [$]`` with next-token targets on text and ``$`` (module doc)."""
    if len(text_ids) != len(token_chunks):
        raise ValueError(f"{len(text_ids)} tokens but {len(token_chunks)} chunk indices")
    K = n_chunks(n_slots, slots_per_chunk)
    by_chunk: list[list[int]] = [[] for _ in range(K)]
    for t, c in zip(text_ids, token_chunks):
        if not 0 <= c < K:
            raise ValueError(f"token chunk {c} outside 0..{K - 1}")
        by_chunk[c].append(int(t))
    ids, tg, ch, apos = [], [], [], []
    for k in range(K):
        n = min(slots_per_chunk, n_slots - k * slots_per_chunk)
        apos.extend(range(len(ids), len(ids) + n))
        ids += [audio_id] * n
        tg += [IGNORE] * n
        ch += [k] * n
        for t in by_chunk[k]:
            tg[-1] = t  # the position before a token predicts it
            ids.append(t)
            tg.append(IGNORE)
            ch.append(k)
        tg[-1] = eoc_id  # the chunk's last position predicts `$`
        if eoc_input:
            ids.append(eoc_id)
            tg.append(IGNORE)
            ch.append(k)
    return ChunkedSequence(ids, tg, ch, apos, K)


# ---- utterances with their alignment --------------------------------------------------------------
@dataclass
class StreamUtt(Utt):
    token_end_frames: list[int] = field(default_factory=list)


def alignment_identity(align_dir: str | Path, tokenizer_dir: str, seed: int = 0) -> dict:
    """What the cached end frames depend on: the alignment model's files and the tokenizer."""
    files = []
    for p in (Path(align_dir), Path(tokenizer_dir)):
        for f in sorted([p] if p.is_file() else p.rglob("*")) if p.exists() else []:
            if f.is_file() and f.suffix in (".safetensors", ".json", ".model"):
                st = f.stat()
                files.append([str(f), st.st_size, int(st.st_mtime)])
    return {"align_model": str(align_dir), "tokenizer": str(tokenizer_dir), "files": files, "seed": seed}


def alignment_input(u: Utt) -> dict:
    """What one utterance's end frames were computed from: its audio (size + SHA-256,
    :func:`~spiritlm.models.continuous.data.input_identity`) and its transcript's token ids (a
    transcript edited under the same id gives other tokens, and end frames for the old ones)."""
    ids = json.dumps([int(t) for t in u.text_ids]).encode()
    return {**input_identity(u), "text_ids_sha256": hashlib.sha256(ids).hexdigest()}


class AlignmentCache:
    def __init__(self, directory: str | Path, identity: dict):
        self.dir = Path(directory)
        self.identity = json.loads(json.dumps(identity))
        self.ends: dict[str, list[int]] = {}
        self.inputs: dict[str, dict | None] = {}  # what each entry is aligned from (alignment_input)

    def load(self, utts: Sequence[Utt] | None = None) -> int:
        """Read the cache. With ``utts`` (the rank that aligns), entries whose utterance changed --
        other audio bytes, other tokens, or a line written before lines recorded them -- are
        dropped, to be aligned again; without, the entries are read as written (a rank that waited
        for the aligning one)."""
        meta = self.dir / "metadata.json"
        if meta.is_file() and json.loads(meta.read_text()).get("identity") == self.identity:
            for line in (self.dir / "alignment.jsonl").read_text().splitlines():
                r = json.loads(line)
                self.ends[r["id"]] = r["token_end_frames"]
                self.inputs[r["id"]] = r.get("input")
        if utts is not None:
            # taken before aligning: audio rewritten while it is aligned is caught on the next run
            now = {u.id: alignment_input(u) for u in utts}
            stale = [uid for uid in now if uid in self.ends and self.inputs.get(uid) != now[uid]]
            unrecorded = sum(self.inputs.get(uid) is None for uid in stale)
            for uid in stale:
                del self.ends[uid]
            if stale:
                log.warning("%s: %d cached alignments computed again: %d because their audio or transcript "
                            "changed since they were cached, %d because the cache did not record them", self.dir,
                            len(stale), len(stale) - unrecorded, unrecorded)
            self.inputs.update(now)
        return len(self.ends)

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "alignment.jsonl.tmp"
        tmp.write_text("".join(json.dumps({"id": k, "token_end_frames": v, "input": self.inputs.get(k)}) + "\n"
                               for k, v in sorted(self.ends.items())))
        tmp.replace(self.dir / "alignment.jsonl")
        m = self.dir / "metadata.json.tmp"
        m.write_text(json.dumps({"identity": self.identity, "n": len(self.ends)}, indent=1))
        m.replace(self.dir / "metadata.json")


@torch.no_grad()
def align_utterances(utts: Sequence[Utt], encoder, ctc, tok, chars, batch: int = 8,
                     progress: bool = True) -> dict[str, list[int]]:
    """Token end frames (encoder frames) of each utterance, by CTC forced alignment."""
    from tqdm.auto import tqdm

    from spiritlm.models.streaming.align import align_tokens

    out: dict[str, list[int]] = {}
    for i in tqdm(range(0, len(utts), batch), desc="CTC alignment", unit="batch", disable=not progress):
        part = utts[i : i + batch]
        x, lens = encoder([load_wav(u) for u in part])
        lp = ctc.log_probs(x)
        for u, lp_TV, n in zip(part, lp, lens.tolist()):
            try:
                out[u.id] = align_tokens(lp_TV[:n], u.text_ids, tok.decode, chars)["token_end_frames"]
            except ValueError as e:  # audio too short for its characters: counted by the caller
                log.debug("%s: %s", u.id, e)
    return out


# ---- packing --------------------------------------------------------------------------------------
class StreamingBatches(ContinuousBatches):
    """Rows of whole chunked utterances (the continuous packer's order, resume and rank split);
    a batch adds ``chunk_BT`` and the audio positions of each utterance (``audio_pos``)."""

    def __init__(self, utts: Sequence[StreamUtt], seq_len: int, chunk_frames: int, stack: int, eoc_id: int,
                 audio_id: int, eoc_input: bool = False, **kw):
        super().__init__(utts, seq_len, "prepend", bos=eoc_id, eos=eoc_id, audio_id=audio_id, pad_id=eoc_id, **kw)
        self.seqs = []
        for u in self.utts:
            chunks = assign_chunks(u.token_end_frames, u.n_slots, chunk_frames, stack)
            self.seqs.append(chunked_sequence(u.n_slots, chunk_frames // stack, u.text_ids, chunks, eoc_id,
                                              audio_id, eoc_input))

    def next_row(self):
        T = self.T
        ids = np.full(T, self.pad, dtype=np.int64)
        tg = np.full(T, IGNORE, dtype=np.int64)
        pos = np.zeros(T, dtype=np.int64)
        chunk = np.zeros(T, dtype=np.int64)
        n, members = 0, []
        while True:
            i = self._next_index()
            s = self.seqs[i]
            L = len(s.ids)
            if members and (n + L > T or not self.pack):
                self.pending = i
                break
            ids[n : n + L], tg[n : n + L], pos[n : n + L], chunk[n : n + L] = s.ids, s.targets, np.arange(L), s.chunk
            members.append((i, n))
            n += L
            if not self.pack:
                break
        if n < T:  # padding: a segment of its own (positions from 0) that no real token attends to
            pos[n:] = np.arange(T - n)
        return {"ids": ids, "tg": tg, "pos": pos, "chunk": chunk}, members

    def next_batch(self, batch_size: int) -> dict:
        rows, audio_pos, audio, ctc, which = [], [], [], [], []
        for b in range(batch_size):
            r, members = self.next_row()
            rows.append(r)
            for i, start in members:
                u = self.utts[i]
                which.append(i)
                audio_pos.append((b, [start + p for p in self.seqs[i].audio_pos]))
                audio.append(self.cache.get(u.id) if self.cache is not None else load_wav(u))
                ctc.append(u.ctc_ids)
        return {"input_ids_BT": torch.from_numpy(np.stack([r["ids"] for r in rows])),
                "targets_BT": torch.from_numpy(np.stack([r["tg"] for r in rows])),
                "position_ids_BT": torch.from_numpy(np.stack([r["pos"] for r in rows])),
                "chunk_BT": torch.from_numpy(np.stack([r["chunk"] for r in rows])),
                "audio_pos": audio_pos, "ctc_targets": ctc, "utt_index": which,
                "audio": {"feats": audio} if self.cache is not None else {"wavs": audio}}
