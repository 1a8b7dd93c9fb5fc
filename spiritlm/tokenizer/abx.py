"""ABX phone discriminability (ZeroSpeech / Libri-light "within-context" ABX) for frame features
and discrete speech units.

What it computes: for two phones a != b that occur in the same context c (same previous and next
phone), take A and X tokens of a and B a token of b; the representation "errs" on the triplet when
d(A, X) > d(B, X) (half an error on a tie). "within" mode draws A, B, X from one speaker; "across"
draws A and B from one speaker and X from another, so it also measures speaker invariance. It
answers "do these units/features keep phones apart?" without training a probe, which is what the
unit-quality report compares across unit families (HuBERT, MFCC, random-encoder, ASR units).

Distance between two segments (ZeroSpeech's, ``libri_light_dtw._dtw``): DTW with the steps
(1,0), (0,1), (1,1) minimising the summed frame distance; the summed cost of that path divided by
its length, the path being backtracked from the end preferring diagonal, then left (shorter Y),
then up (shorter X) on ties. X is always the first (row) argument, as in ZeroSpeech -- with the tie
rule the normalised distance is not exactly symmetric for discrete units. Frame distances: angular
(arccos of cosine similarity / pi, in [0, 1]) for continuous features; 0/1 (unit equal or not) for
discrete units, which is 2x the angular distance of their one-hot vectors, so ABX is unchanged.

Averaging (exactly ZeroSpeech's eval_ABX.py, within-context condition):
  within: cell (c, s, a, b), error = mean over its triplets (X, A of a with A != X, B of b, all from
          speaker s in context c) -> mean over contexts c of (s, a, b) -> mean over speakers s of
          (a, b) -> mean over ordered phone pairs (a, b). (a, b) and (b, a) are separate pairs: the
          score is symmetric in a/b because both orders are counted.
  across: cell (c, s_AB, s_X, a, b) -> mean over (c, s_X) jointly of (s_AB, a, b) -> mean over s_AB
          -> mean over ordered (a, b).
Sampling: each (context, speaker, phone) group is capped at ``max_per_cell`` tokens, drawn once per
group with a seeded generator (ZeroSpeech redraws per (a, b) pair from Python's global ``random``;
same expectation). Across mode uses every other speaker as X speaker (ZeroSpeech samples at most
5); our corpora have few speakers.

Why not zrc-abx2: the reference implementation is ``zerospeech-libriabx2`` on PyPI (its console
script is ``zrc-abx2``; ``pip install zrc-abx2`` finds nothing). It needs a Cython build plus torch,
torchaudio, pandas and soundfile, reads features only from one file per utterance plus an ``.item``
file on disk, recomputes every (a, b) group's distances separately, and for discrete units would
need one-hot float features. A numpy version over in-memory arrays is a few hundred lines, needs no
new dependency, and batches all DTWs of the run (vectorised over pairs, bucketed by length), which
is what makes tens of thousands of phone segments cost seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

SIL = "sil"  # every silence label (and an utterance edge) reads as this context
_CHUNK_PAIRS = 4096  # pairs per vectorised DTW batch: bounds the (N, n, m) and (N, n, D) buffers


@dataclass(frozen=True, eq=False)  # eq=False: dataclass __eq__/__hash__ on arrays would be ambiguous
class AbxItem:
    feats: np.ndarray  # (T, D) float frame features, or (T,) int64 units (discrete)
    phone: str  # the centre phone of the segment
    context: tuple[str, str]  # (previous phone, next phone): ABX compares phones in the same context
    speaker: str


def phone_items(
    frames_by_utt: Sequence[np.ndarray],
    labels_by_utt: Sequence[np.ndarray],
    speakers: Sequence[str],
    min_frames: int = 1,
    silence: tuple[str, ...] = ("sil", "sp", "", "<sil>"),
) -> list[AbxItem]:
    """Cut each utterance's frame sequence into phone segments from its per-frame phone labels
    (labels_by_utt[i][t] = phone label of frame t, as strings; consecutive equal labels = one
    segment), with the neighbouring phones as context; segments whose phone is silence are not
    items (but count as context). All silence labels and the utterance edges read as context "sil",
    so "sp" and "sil" neighbours share a context. Segments shorter than ``min_frames`` are not
    items either but still serve as their neighbours' context."""
    if not (len(frames_by_utt) == len(labels_by_utt) == len(speakers)):
        raise ValueError(
            f"frames_by_utt, labels_by_utt and speakers must have one entry per utterance, got "
            f"{len(frames_by_utt)}, {len(labels_by_utt)}, {len(speakers)}"
        )
    sil = set(silence)
    items: list[AbxItem] = []
    for u, (frames, labels, spk) in enumerate(zip(frames_by_utt, labels_by_utt, speakers)):
        frames, labels = np.asarray(frames), np.asarray(labels).astype(str)
        if labels.ndim != 1 or frames.ndim not in (1, 2) or len(frames) != len(labels):
            raise ValueError(
                f"utterance {u}: frames {frames.shape} and labels {labels.shape} must cover the same "
                f"frames (frames (T, D) or (T,), labels (T,)); recompute the labels at the feature "
                f"frame rate (e.g. spiritlm.tokenizer.metrics.frame_labels)"
            )
        if len(labels) == 0:
            continue
        # Run-length segments: starts where the label changes.
        change_T = np.flatnonzero(labels[1:] != labels[:-1]) + 1
        starts = np.concatenate([[0], change_T])
        ends = np.concatenate([change_T, [len(labels)]])
        names = [SIL if lab in sil else str(lab) for lab in labels[starts]]
        for k, (s, e) in enumerate(zip(starts, ends)):
            if names[k] == SIL or e - s < min_frames:
                continue
            prev = names[k - 1] if k > 0 else SIL
            nxt = names[k + 1] if k + 1 < len(names) else SIL
            items.append(AbxItem(feats=frames[s:e], phone=names[k], context=(prev, nxt), speaker=str(spk)))
    return items


# ----------------------------------------------------------------------------------------------
# Batched DTW


def _bucket(n: int) -> int:
    """Padded length for DTW batching. Padding is exact: DTW cell (i, j) depends only on cells
    (<= i, <= j), and each pair is read back from its own end cell; coarser buckets above 8 frames
    keep the number of distinct (n, m) batches (and their Python loop overhead) small."""
    if n <= 8:
        return n
    if n <= 32:
        return -(-n // 4) * 4
    return -(-n // 16) * 16


def _dtw_batch(dist_nmN: np.ndarray, len_x_N: np.ndarray, len_y_N: np.ndarray) -> np.ndarray:
    """ZeroSpeech's normalised DTW for N pairs at once. dist_nmN[i, j, k]: frame distance of pair
    k (padded to n x m); returns cost(end) / len(backtracked path) per pair."""
    n, m, N = dist_nmN.shape
    cost = np.empty_like(dist_nmN)
    cost[0, 0] = dist_nmN[0, 0]
    for i in range(1, n):
        cost[i, 0] = cost[i - 1, 0] + dist_nmN[i, 0]
    for j in range(1, m):
        cost[0, j] = cost[0, j - 1] + dist_nmN[0, j]
    for i in range(1, n):
        up_m1N, row_mN, d_mN = cost[i - 1], cost[i], dist_nmN[i]
        best_up_diag = np.minimum(up_m1N[1:], up_m1N[:-1])  # (m-1, N): min(cost[i-1,j], cost[i-1,j-1])
        for j in range(1, m):
            row_mN[j] = d_mN[j] + np.minimum(best_up_diag[j - 1], row_mN[j - 1])
    k = np.arange(N)
    i, j = len_x_N - 1, len_y_N - 1
    total = cost[i, j, k]
    path_len = np.ones(N, dtype=np.int64)
    active = (i > 0) & (j > 0)
    while active.any():
        ka, ia, ja = k[active], i[active], j[active]
        c_up, c_left, c_diag = cost[ia - 1, ja, ka], cost[ia, ja - 1, ka], cost[ia - 1, ja - 1, ka]
        diag = (c_diag <= c_left) & (c_diag <= c_up)
        left = ~diag & (c_left <= c_up)
        up = ~diag & ~left
        i[active] = ia - (diag | up)
        j[active] = ja - (diag | left)
        path_len[active] += 1
        active = (i > 0) & (j > 0)
    path_len += np.where(i == 0, j, 0) + np.where(j == 0, i, 0)
    return total / path_len


def _segment_distances(
    frames: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, xs: np.ndarray, ys: np.ndarray, discrete: bool
) -> np.ndarray:
    """DTW distance d(item xs[p], item ys[p]) for every pair p. ``frames`` is every item's frames
    concatenated ((sum T, D) unit-norm rows, or (sum T,) units), item i at offsets[i]:+lengths[i]."""
    out = np.empty(len(xs))
    bucket_of_len = np.array([_bucket(t) for t in range(int(lengths.max()) + 1)])
    bx, by = bucket_of_len[lengths[xs]], bucket_of_len[lengths[ys]]
    key = bx.astype(np.int64) * (int(by.max()) + 1) + by
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    for sel in np.split(order, bounds):
        n, m = int(bx[sel[0]]), int(by[sel[0]])
        for c0 in range(0, len(sel), _CHUNK_PAIRS):
            p = sel[c0 : c0 + _CHUNK_PAIRS]
            lx, ly = lengths[xs[p]], lengths[ys[p]]
            # Padded frame indices repeat an item's last frame: any value works (exact padding).
            ix_Nn = offsets[xs[p], None] + np.minimum(np.arange(n)[None], lx[:, None] - 1)
            iy_Nm = offsets[ys[p], None] + np.minimum(np.arange(m)[None], ly[:, None] - 1)
            if discrete:
                d_Nnm = (frames[ix_Nn][:, :, None] != frames[iy_Nm][:, None, :]).astype(np.float64)
            else:
                cos_Nnm = np.matmul(frames[ix_Nn], frames[iy_Nm].transpose(0, 2, 1))
                d_Nnm = np.arccos(np.clip(cos_Nnm, -1.0, 1.0)) / np.pi
            out[p] = _dtw_batch(np.ascontiguousarray(d_Nnm.transpose(1, 2, 0)), lx, ly)
    return out


# ----------------------------------------------------------------------------------------------
# ABX


def _check_items(items: Sequence[AbxItem], distance: str, vocab_size: int | None) -> bool:
    """Validate feature shapes/kinds; returns True for discrete units."""
    if distance not in ("auto", "angular", "discrete"):
        raise ValueError(f"distance must be 'auto', 'angular' or 'discrete', got {distance!r}")
    kinds = set()
    dims = set()
    for i, it in enumerate(items):
        f = np.asarray(it.feats)
        if f.ndim not in (1, 2) or f.shape[0] == 0:
            raise ValueError(f"item {i} ({it.phone!r}): feats must be non-empty (T, D) features or (T,) units, got {f.shape}")
        is_units = f.ndim == 1 and np.issubdtype(f.dtype, np.integer)
        if f.ndim == 1 and not is_units:
            raise ValueError(f"item {i}: 1-D feats must be integer units, got dtype {f.dtype}; give features as (T, D)")
        kinds.add(is_units)
        if not is_units:
            dims.add(f.shape[1])
        elif vocab_size is not None and (f.min() < 0 or f.max() >= vocab_size):
            raise ValueError(f"item {i}: units must lie in [0, {vocab_size}), got {f.min()}..{f.max()}; check vocab_size")
    if len(kinds) > 1:
        raise ValueError("items mix discrete units (T,) and continuous features (T, D); score each family separately")
    if len(dims) > 1:
        raise ValueError(f"items have different feature dimensions {sorted(dims)}; score each family separately")
    discrete = kinds == {True}
    if distance == "angular" and discrete:
        raise ValueError("distance='angular' needs (T, D) features; units are scored with distance='discrete' (or 'auto')")
    if distance == "discrete" and not discrete:
        raise ValueError("distance='discrete' needs (T,) integer units; features are scored with distance='angular' (or 'auto')")
    return discrete


def abx_error(
    items: Sequence[AbxItem],
    mode: str = "within",
    distance: str = "auto",
    max_per_cell: int = 10,
    seed: int = 0,
    vocab_size: int | None = None,
) -> dict:
    """ZeroSpeech within-context ABX error of ``items`` (see the module docstring for the distance
    and the exact averaging). mode: "within" (A, B, X from one speaker) or "across" (A, B from one
    speaker, X from another). distance: "auto" (units if feats are 1-D ints, else angular),
    "angular" or "discrete". max_per_cell caps the tokens drawn per (context, speaker, phone) group
    (seeded, deterministic). vocab_size, when given, checks that units lie in [0, vocab_size).
    Returns {"error": float in [0, 1], "n_cells": int, "n_triplets": int, "mode": mode}; raises
    ValueError when no cell can be formed."""
    if mode not in ("within", "across"):
        raise ValueError(f"mode must be 'within' or 'across', got {mode!r}")
    if max_per_cell < (2 if mode == "within" else 1):
        raise ValueError(f"max_per_cell must be >= 2 in within mode (A and X are two tokens of a phone), got {max_per_cell}")
    if not items:
        raise ValueError("no items: build them with phone_items() from frame features and frame phone labels")
    discrete = _check_items(items, distance, vocab_size)

    speakers = sorted({it.speaker for it in items})
    if mode == "across" and len(speakers) < 2:
        raise ValueError(
            f"mode='across' needs items from at least two speakers, got only {speakers}; "
            f"use mode='within' or add another speaker's utterances"
        )

    # Groups (context, speaker, phone) -> sampled item indices, in sorted key order so the draw is
    # independent of item order within a key only through the seeded generator.
    groups: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((tuple(it.context), it.speaker, it.phone), []).append(i)
    rng = np.random.default_rng(seed)
    by_cs: dict[tuple, dict[str, np.ndarray]] = {}  # (context, speaker) -> phone -> item indices
    for key in sorted(groups):
        idx = np.asarray(groups[key])
        if len(idx) > max_per_cell:
            idx = np.sort(rng.choice(idx, size=max_per_cell, replace=False))
        by_cs.setdefault(key[:2], {})[key[2]] = idx

    # Blocks: one dense distance matrix rows (X candidates) x cols (A/B candidates) per
    # (context, AB speaker, X speaker); within mode has X speaker == AB speaker.
    blocks = []
    for (ctx, s_ab), phones in by_cs.items():
        if len(phones) < 2:
            continue
        x_speakers = [s_ab] if mode == "within" else [s for s in speakers if s != s_ab and (ctx, s) in by_cs]
        for s_x in x_speakers:
            x_phones = {
                p: by_cs[(ctx, s_x)][p]
                for p in phones
                if p in by_cs[(ctx, s_x)] and (mode == "across" or len(by_cs[(ctx, s_x)][p]) >= 2)
            }
            if x_phones:
                blocks.append((ctx, s_ab, s_x, phones, x_phones))
    if not blocks:
        raise ValueError(
            f"no ABX cell can be formed in mode={mode!r}: a cell needs two phones in the same (previous, next) "
            f"context from one speaker" + (", with 2+ tokens of one of them" if mode == "within" else ", and the "
            "first phone in that context from another speaker") + "; use more (or longer) utterances per speaker"
        )

    # Every (X, Y) pair of every block, computed in one batched DTW pass.
    lengths = np.array([len(it.feats) for it in items], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    if discrete:
        frames = np.concatenate([np.asarray(it.feats, dtype=np.int64) for it in items])
    else:
        frames = np.concatenate([np.asarray(it.feats, dtype=np.float64) for it in items])
        # Zero frames stay zero: cosine 0 -> distance 0.5 to everything, instead of NaN.
        frames = frames / np.maximum(np.linalg.norm(frames, axis=1, keepdims=True), 1e-12)
    xs_list, ys_list, spans = [], [], []
    n_pairs = 0
    for ctx, s_ab, s_x, phones, x_phones in blocks:
        rows = np.concatenate(list(x_phones.values()))
        cols = np.concatenate(list(phones.values()))
        xs_list.append(np.repeat(rows, len(cols)))
        ys_list.append(np.tile(cols, len(rows)))
        spans.append((n_pairs, len(rows), len(cols)))
        n_pairs += len(rows) * len(cols)
    dist = _segment_distances(frames, offsets, lengths, np.concatenate(xs_list), np.concatenate(ys_list), discrete)

    # Cell errors, then ZeroSpeech's nested means.
    per_sab: dict[tuple, list[float]] = {}  # (a, b, s_ab) -> cell errors over contexts (and X speakers)
    n_cells = n_triplets = 0
    for (ctx, s_ab, s_x, phones, x_phones), (start, n_rows, n_cols) in zip(blocks, spans):
        d_rc = dist[start : start + n_rows * n_cols].reshape(n_rows, n_cols)
        row_at, r = {}, 0
        for p, idx in x_phones.items():
            row_at[p] = slice(r, r + len(idx))
            r += len(idx)
        col_at, c = {}, 0
        for p, idx in phones.items():
            col_at[p] = slice(c, c + len(idx))
            c += len(idx)
        for a in x_phones:
            d_xa = d_rc[row_at[a], col_at[a]]  # (X, A)
            if mode == "within":
                n_x = d_xa.shape[0]
                d_xa = d_xa[~np.eye(n_x, dtype=bool)].reshape(n_x, n_x - 1)  # A != X
            for b in phones:
                if b == a:
                    continue
                d_xb = d_rc[row_at[a], col_at[b]]  # (X, B)
                cmp_xab = d_xa[:, :, None] - d_xb[:, None, :]
                err = (np.count_nonzero(cmp_xab > 0) + 0.5 * np.count_nonzero(cmp_xab == 0)) / cmp_xab.size
                per_sab.setdefault((a, b, s_ab), []).append(err)
                n_cells += 1
                n_triplets += cmp_xab.size
    per_ab: dict[tuple, list[float]] = {}
    for (a, b, _s), errs in per_sab.items():
        per_ab.setdefault((a, b), []).append(float(np.mean(errs)))
    error = float(np.mean([np.mean(v) for v in per_ab.values()]))
    return {"error": error, "n_cells": n_cells, "n_triplets": n_triplets, "mode": mode}
