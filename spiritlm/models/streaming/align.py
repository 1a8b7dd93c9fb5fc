"""CTC forced alignment: which encoder frame each character, and each LM text token, ends on.

    path_T, score = ctc_viterbi(log_probs_TV, labels)          # best CTC state per frame
    ends = label_end_frames(path_T, len(labels))                # last frame of each label
    tok_ends = token_end_frames(text, token_ids, tok.decode, chars, ends)

The trellis is the standard CTC one over the extended label sequence ``blank l_1 blank l_2 ...
l_L blank`` (S = 2L + 1 states): a path stays in its state, moves one state on, or skips the blank
between two *different* labels; it starts in the first blank or ``l_1`` and ends in the last label
or the last blank. Viterbi keeps the best log-probability per state and a back-pointer (0, 1 or 2
states back); each time step is one vectorised update over all S states.

Written here because ``torchaudio.functional.forced_align`` cannot be installed on this stack
(MACHINE_FACTS.md: CUDA-only wheels) and the pip aligners we found either import torchaudio
(ctc-forced-aligner's torch path) or wrap a compiled extension for one fixed model; the trellis is
30 lines and is checked against a brute-force enumeration of every alignment (tests).

Tokens -> frames (SpeechLLM-XL, "each text token goes to the chunk holding its end frame"): the
characters of the transcript are :class:`CharVocab` ids (the CTC head's labels); an LM token's end
frame is the end frame of its LAST character, i.e. the last frame the CTC path spends on that
character. A token that adds no character of its own (a punctuation-only or space-only piece)
ends where the token before it ends (frame 0 if it is the first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

NEG_INF = float("-inf")


def extended_labels(labels: Sequence[int], blank: int = 0) -> torch.Tensor:
    ext = torch.full((2 * len(labels) + 1,), blank, dtype=torch.long)
    if labels:
        ext[1::2] = torch.as_tensor(list(labels), dtype=torch.long)
    return ext


def ctc_viterbi(log_probs_TV: torch.Tensor, labels: Sequence[int], blank: int = 0) -> tuple[torch.Tensor, float]:
    """Best CTC alignment of ``labels`` to the frames of ``log_probs_TV`` (T x V log-posteriors).

    Returns (state index per frame in the extended sequence, shape (T,); the path's total
    log-probability). Raises ValueError when T frames cannot hold the labels (each label needs a
    frame, and a repeated label needs a blank between its copies)."""
    lp = log_probs_TV.detach().float().cpu()
    T = lp.shape[0]
    labels = [int(x) for x in labels]
    if any(x == blank for x in labels):
        raise ValueError("the label sequence holds the blank id; pass the transcript's labels only")
    need = len(labels) + sum(1 for a, b in zip(labels, labels[1:]) if a == b)
    if T < max(need, 1):
        raise ValueError(f"{T} frames cannot hold {len(labels)} labels ({need} frames needed with the "
                         "blanks between repeats): the audio is too short for its transcript")
    ext = extended_labels(labels, blank)
    S = ext.numel()
    emit_TS = lp[:, ext]  # log p(ext[s] | frame t)
    # a skip from s-2 is allowed into a label state whose label differs from the one two back
    skip_ok = torch.zeros(S, dtype=torch.bool)
    if S > 2:
        skip_ok[2:] = (ext[2:] != blank) & (ext[2:] != ext[:-2])
    score = torch.full((S,), NEG_INF)
    score[0] = emit_TS[0, 0]
    if S > 1:
        score[1] = emit_TS[0, 1]
    back_TS = torch.zeros(T, S, dtype=torch.int8)
    for t in range(1, T):
        stay = score
        step = torch.cat([torch.tensor([NEG_INF]), score[:-1]])
        skip = torch.cat([torch.tensor([NEG_INF, NEG_INF]), score[:-2]])[:S]
        skip = torch.where(skip_ok, skip, torch.full_like(skip, NEG_INF))
        cand_3S = torch.stack([stay, step, skip])
        best, arg = cand_3S.max(0)  # ties go to the smaller move (stay before step before skip)
        back_TS[t] = arg.to(torch.int8)
        score = best + emit_TS[t]
    ends = [S - 1] + ([S - 2] if S > 1 else [])
    last = max(ends, key=lambda s: float(score[s]))
    total = float(score[last])
    if total == NEG_INF:
        raise ValueError("no CTC path reaches the end of the labels (every path has probability 0)")
    path = torch.empty(T, dtype=torch.long)
    s = last
    for t in range(T - 1, -1, -1):
        path[t] = s
        s -= int(back_TS[t, s])
    return path, total


def label_end_frames(path_T: torch.Tensor, n_labels: int) -> list[int]:
    """Last frame on which the path sits in each label's state (state 2j + 1 for label j)."""
    ends = [-1] * n_labels
    for t, s in enumerate(path_T.tolist()):
        if s % 2 == 1:
            ends[s // 2] = t
    if any(e < 0 for e in ends):
        raise AssertionError("a valid CTC path visits every label state")
    return ends


def token_char_counts(token_ids: Sequence[int], decode: Callable[[list[int]], str], chars) -> list[int]:
    """For each token i: how many transcript characters (CharVocab ids of the decoded text) the
    tokens 0..i cover. Decoding prefixes keeps SentencePiece's word-boundary spaces right."""
    out, ids = [], list(token_ids)
    for i in range(len(ids)):
        out.append(len(chars.encode(decode(ids[: i + 1]))))
    return out


def token_end_frames(token_ids: Sequence[int], decode: Callable[[list[int]], str], chars,
                     char_ends: Sequence[int]) -> list[int]:
    """End frame of each LM token: the end frame of its last character (see the module doc)."""
    counts = token_char_counts(token_ids, decode, chars)
    if counts and counts[-1] != len(char_ends):
        raise ValueError(f"the tokens decode to {counts[-1]} characters but {len(char_ends)} were aligned: "
                         "align the characters of the decoded tokens (align_tokens does)")
    return [char_ends[c - 1] if c > 0 else 0 for c in counts]


def align_tokens(log_probs_TV: torch.Tensor, token_ids: Sequence[int], decode, chars,
                 blank: int = 0) -> dict:
    """Forced alignment of an utterance's LM tokens: {"token_end_frames", "char_end_frames",
    "score"}. The CTC labels are the characters of the *decoded tokens* (so the token -> character
    map is exact even where the tokenizer normalises the transcript)."""
    labels = chars.encode(decode(list(token_ids)))
    if not labels:
        return {"token_end_frames": [0] * len(token_ids), "char_end_frames": [], "score": 0.0}
    path, score = ctc_viterbi(log_probs_TV, labels, blank)
    char_ends = label_end_frames(path, len(labels))
    return {"token_end_frames": token_end_frames(token_ids, decode, chars, char_ends),
            "char_end_frames": char_ends, "score": score}


# ---- checking an alignment against reference word timings ----------------------------------------
def word_end_errors(char_end_frames: Sequence[int], labels: Sequence[int], word_ends_s: Sequence[float],
                    frame_rate: float, space_id: int) -> list[float] | None:
    """Signed error (s) of each word's CTC end (the end of the frame its last character ends on)
    against a reference word end; None when the transcript's words and the reference's differ in
    number (e.g. a token with no letters)."""
    ends, last = [], None
    for j, lab in enumerate(labels):
        if lab == space_id:
            if last is not None:
                ends.append(last)
            last = None
        else:
            last = char_end_frames[j]
    if last is not None:
        ends.append(last)
    if len(ends) != len(word_ends_s):
        return None
    return [(f + 1) / frame_rate - float(w) for f, w in zip(ends, word_ends_s)]


def measure_word_ends(model: str | Path, manifest: str | Path, split: str = "train", limit: int = 50,
                      chunk_s: float = 1.28) -> dict:
    """CTC end times of words against the manifest's reference word timings (the demo corpus's
    synthesiser gives them), e.g. to check an alignment model before chunking with it: ``model`` is
    a continuous export or checkpoint parts/ with ``ctc.safetensors``; the report also gives the
    share of words whose CTC end lands in another ``chunk_s`` chunk (``spiritlm streaming align``)."""
    import numpy as np

    from spiritlm.data.encoders import read_audio
    from spiritlm.manifest import read_manifest
    from spiritlm.models.continuous.encoders import CharVocab
    from spiritlm.models.streaming.spec import load_aligner

    enc, ctc = load_aligner(str(model))
    chars = CharVocab()
    m = Path(manifest)
    errs, chunk_moves, n_utt, skipped = [], 0, 0, 0
    with torch.no_grad():
        for u in read_manifest(m):
            if split and u.split != split:
                continue
            if n_utt >= limit:
                break
            words = u.words
            if not words:
                skipped += 1
                continue
            labels = chars.encode(u.text)
            x, lens = enc([read_audio(u.audio_file(m.parent))])
            lp = ctc.log_probs(x)[0, : int(lens[0])]
            try:
                path, _ = ctc_viterbi(lp, labels)
            except ValueError:
                skipped += 1
                continue
            e = word_end_errors(label_end_frames(path, len(labels)), labels, [w.end for w in words],
                                enc.frame_rate, chars.index[" "])
            if e is None:
                skipped += 1
                continue
            n_utt += 1
            errs += e
            for err, w in zip(e, words):
                chunk_moves += int((w.end + err) // chunk_s != w.end // chunk_s)
    if not errs:
        raise ValueError(f"{manifest}: no {split!r} utterance with reference word times could be aligned "
                         f"({skipped} skipped), so there is nothing to measure")
    a = np.abs(np.array(errs))
    return {"utterances": n_utt, "words": len(errs), "skipped": skipped, "mean_signed_s": float(np.mean(errs)),
            "median_abs_s": float(np.median(a)), "p90_abs_s": float(np.quantile(a, 0.9)),
            "within_80ms": float((a <= 0.08).mean()), "other_chunk_share": chunk_moves / max(1, len(errs)),
            "chunk_s": chunk_s}
