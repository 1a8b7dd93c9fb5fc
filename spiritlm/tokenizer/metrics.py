"""Unit quality metrics: PNMI against frame phone labels, codebook perplexity, rates, bitrate.

PNMI (phone-normalised mutual information, HuBERT paper): I(phone; unit) / H(phone), from the
joint histogram of frame-level (phone, unit) pairs; 1.0 means the units determine the phone.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def pnmi(phones: np.ndarray, units: np.ndarray) -> float:
    phones, units = np.asarray(phones), np.asarray(units)
    if phones.shape != units.shape or phones.size == 0:
        raise ValueError(f"phones and units must be equal-length non-empty arrays, got {phones.shape} {units.shape}")
    _, p_idx = np.unique(phones, return_inverse=True)
    _, u_idx = np.unique(units, return_inverse=True)
    joint = np.zeros((p_idx.max() + 1, u_idx.max() + 1))
    np.add.at(joint, (p_idx, u_idx), 1)
    joint /= joint.sum()
    pp, pu = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / (pp @ pu)[nz])).sum())
    h = float(-(pp[pp > 0] * np.log(pp[pp > 0])).sum())
    return mi / h if h > 0 else 0.0


def frame_labels(phones: Sequence[dict], n_frames: int, frame_rate: float, sil: str = "sil") -> np.ndarray:
    """Phone label at each frame centre from [{phone, start, end}] (seconds); gaps get ``sil``."""
    labels = np.full(n_frames, sil, dtype=object)
    centres = (np.arange(n_frames) + 0.5) / frame_rate
    for ph in phones:
        sel = (centres >= float(ph["start"])) & (centres < float(ph["end"]))
        labels[sel] = str(ph["phone"])
    return labels


def perplexity(units: np.ndarray, k: int | None = None) -> float:
    """exp(entropy) of the unit histogram: the effective number of codes in use."""
    counts = np.bincount(np.asarray(units, dtype=np.int64), minlength=k or 0).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def dedup_rate(unit_seqs: Sequence[np.ndarray], seconds: float) -> float:
    """Tokens per second after collapsing repeated consecutive units."""
    n = sum(int(1 + np.count_nonzero(u[1:] != u[:-1])) for u in unit_seqs if len(u))
    return n / seconds if seconds > 0 else 0.0


def bitrate(unit_seqs: Sequence[np.ndarray], seconds: float, k: int) -> dict[str, float]:
    """Bits/s: nominal (rate x log2 k after dedup) and entropy-based (rate x unigram entropy)."""
    rate = dedup_rate(unit_seqs, seconds)
    deduped = [u[np.concatenate(([True], u[1:] != u[:-1]))] for u in unit_seqs if len(u)]
    allu = np.concatenate(deduped) if deduped else np.zeros(0, np.int64)
    ent = float(np.log2(perplexity(allu, k))) if len(allu) else 0.0
    return {"units_per_s": rate, "bitrate_nominal": rate * float(np.log2(k)), "bitrate_entropy": rate * ent}
