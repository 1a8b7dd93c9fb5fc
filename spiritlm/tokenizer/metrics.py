"""Unit quality metrics: PNMI against frame phone labels, codebook perplexity, rates, bitrate.

PNMI (phone-normalised mutual information, HuBERT paper): I(phone; unit) / H(phone), from the
joint histogram of frame-level (phone, unit) pairs; 1.0 means the units determine the phone.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from spiritlm.vocab import dedup


def pnmi(phones: np.ndarray, units: np.ndarray) -> float | None:
    """None when the labels carry no information -- a single label throughout, which is what a
    corpus without phone labels gives (every frame "sil"): PNMI is not available there, and 0.0
    would read as "units unrelated to phones"."""
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
    return mi / h if h > 0 else None


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
    deduped = [dedup(u) for u in unit_seqs if len(u)]
    allu = np.concatenate(deduped) if deduped else np.zeros(0, np.int64)
    ent = float(np.log2(perplexity(allu, k))) if len(allu) else 0.0
    return {"units_per_s": rate, "bitrate_nominal": rate * float(np.log2(k)), "bitrate_entropy": rate * ent}


def _edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]


def unit_metrics(units_by_utt: list[np.ndarray], labels_by_utt: list[np.ndarray], seconds: float, k: int) -> dict:
    """PNMI against the frame phone labels, codebook perplexity and the rates / bitrates of
    ``bitrate``, rounded as the reports print them."""
    u = np.concatenate(units_by_utt)
    lab = np.concatenate(labels_by_utt)
    p = pnmi(lab, u)  # None: no phone labels in the corpus
    return {"pnmi": round(p, 4) if p is not None else "not available (the corpus has no phone labels)",
            "perplexity": round(perplexity(u, k), 1),
            **{k2: round(v, 2) for k2, v in bitrate(units_by_utt, seconds, k).items()}}


def word_unit_consistency(units_by_utt: Sequence[np.ndarray], words_by_utt: Sequence[Sequence],
                          speakers: Sequence[str], frame_rate: float, max_per_word: int = 12,
                          seed: int = 0) -> dict[str, float]:
    """How alike the units of one word are from one token of it to the next.

    For every word spoken at least 4 times, the deduplicated units inside its time span (words
    are ``(word, start_s, end_s)`` or objects with ``.word/.start/.end``) are compared by edit
    distance / longer length: pairs of the same word by the same speaker, by different
    speakers, and (baseline) pairs of different words by the same speaker. A lexicon is
    learnable from units only when the first is well below the last.
    """
    occ: dict[str, list[tuple[str, tuple]]] = {}
    for units, words, spk in zip(units_by_utt, words_by_utt, speakers):
        u = np.asarray(units)
        for w in words:
            label, start, end = (w.word, w.start, w.end) if hasattr(w, "word") else w
            seg = dedup(u[int(start * frame_rate): int(np.ceil(end * frame_rate))])
            if len(seg) >= 2:
                occ.setdefault(label.lower(), []).append((spk, tuple(int(x) for x in seg)))
    words = sorted(w for w, o in occ.items() if len(o) >= 4)
    dist = lambda a, b: _edit_distance(a, b) / max(len(a), len(b))  # noqa: E731
    same, cross, other = [], [], []
    for w in words:
        o = occ[w][:max_per_word]
        for i in range(len(o)):
            for j in range(i + 1, len(o)):
                (same if o[i][0] == o[j][0] else cross).append(dist(o[i][1], o[j][1]))
    rng = np.random.default_rng(seed)
    for _ in range(2000 if len(words) >= 2 else 0):
        w1, w2 = rng.choice(len(words), 2, replace=False)
        a, b = occ[words[w1]], occ[words[w2]]
        x, y = a[rng.integers(len(a))], b[rng.integers(len(b))]
        if x[0] == y[0]:
            other.append(dist(x[1], y[1]))
    mean = lambda v: round(float(np.mean(v)), 3) if v else None  # noqa: E731
    return {"words": len(words), "same_word_same_speaker": mean(same), "same_word_other_speaker": mean(cross),
            "other_word_same_speaker": mean(other), "pairs": len(same) + len(cross)}
