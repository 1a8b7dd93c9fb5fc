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
then up (shorter X) on ties. With that tie rule the normalised distance is not exactly symmetric for
discrete units, so the argument order is ZeroSpeech's too: X first in d(X, B) and across-speaker
d(X, A); within a speaker d(A, X) = d(X, A) = DTW(earlier token, later token) (ZeroSpeech computes
that triangle once and mirrors it; "earlier" is item order here, file-listing order there).
Frame distances: angular (arccos of cosine similarity / pi, in [0, 1]) for continuous features; 0/1
(unit equal or not) for discrete units, which is 2x the angular distance of their one-hot vectors,
so ABX is unchanged.

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

Why not zrc-abx2: the reference implementation is ``zerospeech-libriabx2`` 0.9.8 on PyPI (its
console script is ``zrc-abx2``; ``pip install zrc-abx2`` finds nothing). It builds (Cython) and
runs offline on CPU, but imports torchaudio at module level (only its CPC path uses it), needs
pandas, reads features only from one .npy per utterance plus an ``.item`` file of onsets/offsets in
seconds on disk (whose frame rounding drops a phone's last frame), wants discrete units as one-hot
float features, and runs one Python-level DTW per pair: 2,000 segments took it ~40 s versus ~0.4 s
here. With sampling off (max_per_cell above every group size) and the same token order, this module
reproduced its within/across scores to float32 precision (|diff| < 2e-8) on random continuous
features and one-hot units. Ours needs no new dependency, works on in-memory arrays and per-frame
labels, and batches every DTW of a run (vectorised over pairs, bucketed by length).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

try:  # installed with scikit-learn; optional: only limits BLAS threads (see _block_distances)
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

SIL = "sil"  # every silence label (and an utterance edge) reads as this context
_BATCH_CELLS = 1 << 22  # frame distances per DTW batch: bounds the float64 buffers (~32 MB each)


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


def _frame_index(item_idx: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices of items ``item_idx`` concatenated, and each item's start within them."""
    lens = lengths[item_idx]
    local_start = np.concatenate([[0], np.cumsum(lens)[:-1]])
    frame_idx = np.repeat(offsets[item_idx] - local_start, lens) + np.arange(int(lens.sum()))
    return frame_idx, local_start


def _block_distances(
    frames: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    blocks: list[tuple[np.ndarray, np.ndarray]],
    discrete: bool,
    zero_T: np.ndarray | None = None,
) -> list[np.ndarray]:
    """For each block (rows, cols) of item indices, the (len(rows), len(cols)) matrix of DTW
    distances d(row item, col item). ``frames`` holds every item's frames concatenated ((sum T, D)
    unit-norm rows, or (sum T,) units), item i at offsets[i] : offsets[i] + lengths[i].

    Cost: the frame distances of a block are one (row frames x col frames) GEMM (far faster than
    per-pair small matmuls); pairs are then gathered from it, bucketed by padded (n, m) and run
    through the DTW vectorised over the pairs. Work goes in batches of about _BATCH_CELLS frame
    distances (big blocks split by rows), which bounds memory at a few hundred MB."""
    pieces: list[tuple[np.ndarray, np.ndarray]] = []
    n_pieces: list[int] = []
    for rows, cols in blocks:
        max_row_frames = max(1, _BATCH_CELLS // int(lengths[cols].sum()))
        row_start = np.cumsum(lengths[rows]) - lengths[rows]
        chunks = np.split(rows, np.flatnonzero(np.diff(row_start // max_row_frames)) + 1)
        pieces += [(chunk, cols) for chunk in chunks]
        n_pieces.append(len(chunks))
    # One BLAS thread: the GEMMs are small and many, and multi-threaded OpenBLAS on a busy machine
    # (measured on 2 shared cores) spins so badly it was 5-20x slower than one thread.
    if threadpool_limits is not None:
        with threadpool_limits(limits=1, user_api="blas"):
            dists = _piece_distances(frames, offsets, lengths, pieces, discrete, zero_T)
    else:
        dists = _piece_distances(frames, offsets, lengths, pieces, discrete, zero_T)
    bounds = np.cumsum([0] + n_pieces)
    return [np.concatenate(dists[bounds[k] : bounds[k + 1]]) for k in range(len(blocks))]


def _piece_distances(
    frames: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    pieces: list[tuple[np.ndarray, np.ndarray]],
    discrete: bool,
    zero_T: np.ndarray | None,
) -> list[np.ndarray]:
    bucket_of_len = np.array([_bucket(t) for t in range(int(lengths.max()) + 1)])
    results: list[np.ndarray] = []
    batch: list[tuple[np.ndarray, np.ndarray]] = []
    n_batch = 0
    for k, (rows, cols) in enumerate(pieces):
        batch.append((rows, cols))
        n_batch += int(lengths[rows].sum()) * int(lengths[cols].sum())
        if n_batch < _BATCH_CELLS and k + 1 < len(pieces):
            continue
        bufs, base_l, stride_l, xs_l, ys_l = [], [], [], [], []
        buf_off = 0
        for rows_b, cols_b in batch:
            r_frames, r_start = _frame_index(rows_b, offsets, lengths)
            c_frames, c_start = _frame_index(cols_b, offsets, lengths)
            if discrete:
                d_rc = (frames[r_frames][:, None] != frames[c_frames][None, :]).astype(np.float64)
            else:
                cos_rc = frames[r_frames] @ frames[c_frames].T
                if zero_T is not None:  # ZeroSpeech's convention for all-zero frames (see abx_error)
                    zr, zc = zero_T[r_frames][:, None], zero_T[c_frames][None, :]
                    cos_rc = np.where(zr | zc, np.where(zr & zc, 1.0, -1.0), cos_rc)
                d_rc = np.arccos(np.clip(cos_rc, -1.0, 1.0)) / np.pi
            bufs.append(d_rc.ravel())
            n_cf = d_rc.shape[1]
            # Pair (r, c) -> offset of its frame (0, 0) in the buffer, and its row stride.
            base_l.append((buf_off + r_start[:, None] * n_cf + c_start[None, :]).ravel())
            stride_l.append(np.full(len(rows_b) * len(cols_b), n_cf, dtype=np.int64))
            xs_l.append(np.repeat(rows_b, len(cols_b)))
            ys_l.append(np.tile(cols_b, len(rows_b)))
            buf_off += d_rc.size
        buf = np.concatenate(bufs)
        base, stride = np.concatenate(base_l), np.concatenate(stride_l)
        len_x, len_y = lengths[np.concatenate(xs_l)], lengths[np.concatenate(ys_l)]
        out = np.empty(len(base))
        bx, by = bucket_of_len[len_x], bucket_of_len[len_y]
        key = bx * (int(by.max()) + 1) + by
        order = np.argsort(key, kind="stable")
        for sel in np.split(order, np.flatnonzero(np.diff(key[order])) + 1):
            n, m = int(bx[sel[0]]), int(by[sel[0]])
            lx, ly = len_x[sel], len_y[sel]
            # Padded cells repeat the last frame: any value works (exact padding, see _bucket).
            i_nN = np.minimum(np.arange(n)[:, None], lx[None] - 1)
            j_mN = np.minimum(np.arange(m)[:, None], ly[None] - 1)
            idx_nmN = base[sel][None, None] + (i_nN * stride[sel][None])[:, None] + j_mN[None]
            out[sel] = _dtw_batch(buf[idx_nmN], lx, ly)
        pos = 0
        for rows_b, cols_b in batch:
            size = len(rows_b) * len(cols_b)
            results.append(out[pos : pos + size].reshape(len(rows_b), len(cols_b)))
            pos += size
        batch, n_batch = [], 0
    return results


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
            raise ValueError(
                f"item {i} ({it.phone!r}): feats must be non-empty (T, D) features or (T,) units, got {f.shape}"
            )
        is_units = f.ndim == 1 and np.issubdtype(f.dtype, np.integer)
        if f.ndim == 1 and not is_units:
            raise ValueError(
                f"item {i}: 1-D feats must be integer units, got dtype {f.dtype}; give features as (T, D)"
            )
        kinds.add(is_units)
        if not is_units:
            dims.add(f.shape[1])
            if not np.isfinite(f).all():  # NaN distances would silently count as "correct"
                raise ValueError(f"item {i} ({it.phone!r}): feats contain NaN or inf; fix the feature extraction")
        elif vocab_size is not None and (f.min() < 0 or f.max() >= vocab_size):
            raise ValueError(
                f"item {i}: units must lie in [0, {vocab_size}), got {f.min()}..{f.max()}; check vocab_size"
            )
    if len(kinds) > 1:
        raise ValueError("items mix discrete units (T,) and continuous features (T, D); score each family separately")
    if len(dims) > 1:
        raise ValueError(f"items have different feature dimensions {sorted(dims)}; score each family separately")
    discrete = kinds == {True}
    if distance == "angular" and discrete:
        raise ValueError(
            "distance='angular' needs (T, D) features; units are scored with distance='discrete' (or 'auto')"
        )
    if distance == "discrete" and not discrete:
        raise ValueError(
            "distance='discrete' needs (T,) integer units; features are scored with distance='angular' (or 'auto')"
        )
    return discrete


def abx_error(
    items: Sequence[AbxItem],
    mode: str = "within",
    distance: str = "auto",
    max_per_cell: int = 10,
    seed: int = 0,
    vocab_size: int | None = None,
    context: str = "within",
) -> dict:
    """ZeroSpeech within-context ABX error of ``items`` (see the module docstring for the distance
    and the exact averaging). mode: "within" (A, B, X from one speaker) or "across" (A, B from one
    speaker, X from another). distance: "auto" (units if feats are 1-D ints, else angular),
    "angular" or "discrete". max_per_cell caps the tokens drawn per (context, speaker, phone) group
    (seeded, deterministic). vocab_size, when given, checks that units lie in [0, vocab_size).
    Averaging (ZeroSpeech's): within -- cell (context, speaker, a, b) = mean over its triplets, then
    mean over contexts, then over speakers, then over ordered phone pairs (a, b); across -- cell
    (context, AB speaker, X speaker, a, b), then mean over (context, X speaker), then over AB
    speakers, then over (a, b). n_cells counts those cells, n_triplets the (A, B, X) triplets scored.
    context: "within" (the phones' (previous, next) contexts must match: ZeroSpeech 2017-2020 and
    Libri-light) or "any" (contexts ignored, every token of a phone in one cell: ZeroSpeech 2021's
    "any-context" ABX, for corpora too small to repeat a triphone -- e.g. a few utterances of real
    speech). Returns {"error": float in [0, 1], "n_cells": int, "n_triplets": int, "mode": mode,
    "context": context}; raises ValueError when no cell can be formed."""
    if mode not in ("within", "across"):
        raise ValueError(f"mode must be 'within' or 'across', got {mode!r}")
    if context not in ("within", "any"):
        raise ValueError(f"context must be 'within' or 'any', got {context!r}")
    if max_per_cell < (2 if mode == "within" else 1):
        raise ValueError(
            f"max_per_cell must be >= {2 if mode == 'within' else 1} (within mode: A and X are two tokens of a "
            f"phone), got {max_per_cell}"
        )
    if not items:
        raise ValueError("no items: build them with phone_items() from frame features and frame phone labels")
    discrete = _check_items(items, distance, vocab_size)

    speakers = sorted({it.speaker for it in items})
    if mode == "across" and len(speakers) < 2:
        raise ValueError(
            f"mode='across' needs items from at least two speakers, got only {speakers}; "
            f"use mode='within' or add another speaker's utterances"
        )

    # Groups (context, speaker, phone) -> sampled item indices; visited in sorted key order so the
    # seeded draw does not depend on the order the items came in.
    groups: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        ctx = tuple(it.context) if context == "within" else ("*", "*")  # "any": one context for all
        groups.setdefault((ctx, it.speaker, it.phone), []).append(i)
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
        where = "in the same (previous, next) context " if context == "within" else ""
        raise ValueError(
            f"no ABX cell can be formed in mode={mode!r}, context={context!r}: a cell needs two phones {where}"
            f"from one speaker" + (", with 2+ tokens of one of them" if mode == "within" else ", and the "
            "first phone in that context from another speaker") + "; use more (or longer) utterances per speaker"
        )

    # Every (X, Y) pair of every block, computed in one batched DTW pass.
    lengths = np.array([len(it.feats) for it in items], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    zero_T = None
    if discrete:
        frames = np.concatenate([np.asarray(it.feats, dtype=np.int64) for it in items])
    else:
        frames = np.concatenate([np.asarray(it.feats, dtype=np.float64) for it in items])
        norm_T = np.sqrt(np.einsum("td,td->t", frames, frames))
        frames = frames / np.maximum(norm_T, 1e-300)[:, None]
        # All-zero frames (e.g. padding, silenced features) have no angle; like ZeroSpeech's
        # normalize_with_singularity they are at distance 1 from any other frame and 0 from each other.
        zero_T = (norm_T == 0) if np.any(norm_T == 0) else None
    block_rc = [
        (np.concatenate(list(x_phones.values())), np.concatenate(list(phones.values())))
        for _ctx, _s_ab, _s_x, phones, x_phones in blocks
    ]
    dists = _block_distances(frames, offsets, lengths, block_rc, discrete, zero_T)

    # Cell errors, then ZeroSpeech's nested means.
    per_sab: dict[tuple, list[float]] = {}  # (a, b, s_ab) -> cell errors over contexts (and X speakers)
    n_cells = n_triplets = 0
    for (_ctx, s_ab, _s_x, phones, x_phones), d_rc in zip(blocks, dists):
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
                # ZeroSpeech computes d between two tokens of a once (earlier token as rows) and
                # mirrors it; the same here keeps the numbers identical under DTW tie-breaking.
                d_xa = np.triu(d_xa) + np.triu(d_xa, 1).T
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
    return {"error": error, "n_cells": n_cells, "n_triplets": n_triplets, "mode": mode, "context": context}
