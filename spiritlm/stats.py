"""The package's one statistics layer: bootstrap CIs, paired tests, Holm, and WER.

Every table in the package that prints a CI, a p-value or a WER computes it here, so the same
numbers mean the same thing everywhere (there used to be four bootstrap copies with two quantile
rules and three WERs with three rules for empty text). This module imports only numpy, scipy,
jiwer and the standard library -- nothing from ``spiritlm`` -- so any layer can use it.

Randomness is always explicit: functions that resample take ``rng``, a ``numpy.random.Generator``
or an int seed (``numpy.random.default_rng(seed)``), never the global state, so every number is
reproducible from its inputs. Passing one Generator to several calls draws them from one stream
(``spiritlm.eval.report.paired_compare`` does this across its task/setting groups).

Bootstrap interval rule (the one rule, used by every caller): the percentile interval read off the
sorted replicates by order statistics, no interpolation. With ``B`` replicates sorted ascending
(0-based) and level ``1 - alpha``, the interval is ``[s[int(alpha/2 * B)], s[int((1 - alpha/2) * B) - 1]]``
-- for B = 2000 and alpha = 0.05 that is ``[s[50], s[1949]]``: 50 replicates lie below the lower
end and 50 above the upper end, so the two tails are cut symmetrically. This is the rule the main
report (``paired_compare``) has always used, kept so that its tables do not move.

WER rule for empty text (the one rule, used by every caller; it is NIST sclite's): texts are split
into words on whitespace (``str.split``; any normalisation -- lower-casing, punctuation -- is the
caller's, e.g. ``spiritlm.eval.fewshot.normalize_text``), and a text with no words is empty.

* empty reference, empty hypothesis: 0 errors, 0 reference words;
* non-empty reference, empty hypothesis: every reference word is a deletion;
* empty reference, non-empty hypothesis: every hypothesis word is an insertion, 0 reference words
  (so it raises the corpus WER's numerator and not its denominator);
* otherwise: jiwer's Levenshtein alignment (substitutions, deletions, insertions, hits).

Corpus WER = (S + D + I) / N over all utterances (N = reference words); with N = 0 the ratio is
undefined and is NaN (the counts are still returned). CER follows the same rule with characters.
"""

from __future__ import annotations

import re

import math
from typing import NamedTuple, Sequence

import jiwer
import numpy as np
from scipy.stats import binomtest

def as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    """A Generator from a Generator (returned as is, so its stream continues) or an int seed.

    ``None`` is refused: an unseeded resample would make a report irreproducible."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, bool) or not isinstance(rng, (int, np.integer)):
        raise TypeError(f"rng must be a numpy Generator or an int seed, not {rng!r}")
    return np.random.default_rng(int(rng))


# ---- bootstrap ----------------------------------------------------------------------------------
def percentile_interval(replicates: Sequence[float] | np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """The ``1 - alpha`` percentile interval of bootstrap replicates, by the module's one rule
    (order statistics ``s[int(alpha/2 * B)]`` and ``s[int((1 - alpha/2) * B) - 1]``, no
    interpolation). NaN replicates (a statistic undefined on that resample, e.g. a ratio whose
    denominator resampled to 0) are left out and ``B`` counts the rest; none left: (NaN, NaN)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    s = np.sort(np.asarray(replicates, dtype=np.float64).ravel())
    s = s[~np.isnan(s)]
    B = s.size
    if B == 0:
        return float("nan"), float("nan")
    lo, hi = int(alpha / 2 * B), int((1 - alpha / 2) * B) - 1
    return float(s[lo]), float(s[max(hi, lo)])


def bootstrap_indices(n: int, n_boot: int, rng: np.random.Generator | int) -> np.ndarray:
    """``(n_boot, n)`` resampling indices (each row: n draws with replacement from range(n))."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    return as_rng(rng).integers(0, n, size=(n_boot, n))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den == 0 (a resample with no weight has no ratio)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    return np.where(den == 0, np.nan, r)


def bootstrap_replicates(values: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray | None = None,
                         *, n_boot: int = 2000, rng: np.random.Generator | int = 0) -> np.ndarray:
    """``n_boot`` bootstrap replicates of the mean of ``values`` or, with ``weights``, of the ratio
    of sums ``sum(values) / sum(weights)`` -- the statistic a corpus metric is (corpus WER:
    per-utterance errors over per-utterance reference words), resampled by unit (utterance, item)
    because units, not words, are the independent draws."""
    v = np.asarray(values, dtype=np.float64)
    idx = bootstrap_indices(v.size, n_boot, rng)
    if weights is None:
        return v[idx].mean(1)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != v.shape:
        raise ValueError(f"values {v.shape} and weights {w.shape} differ in shape")
    return _ratio(v[idx].sum(1), w[idx].sum(1))


def bootstrap_ci(values: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray | None = None, *,
                 n_boot: int = 2000, rng: np.random.Generator | int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Bootstrap ``1 - alpha`` CI of the mean of ``values`` (or of ``sum(values) / sum(weights)``),
    resampling units with replacement; (NaN, NaN) for no values."""
    if len(values) == 0:
        return float("nan"), float("nan")
    return percentile_interval(bootstrap_replicates(values, weights, n_boot=n_boot, rng=rng), alpha)


def paired_bootstrap(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                     weights: Sequence[float] | np.ndarray | None = None, *, n_boot: int = 2000,
                     rng: np.random.Generator | int = 0, alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """Paired bootstrap of two systems scored on the same units: ``{"a", "b", "diff"}`` CIs of
    mean(a), mean(b) and mean(a - b) -- or, with ``weights``, of sum(a)/sum(w), sum(b)/sum(w) and
    (sum(a) - sum(b)) / sum(w) -- all from the same resamples. Resampling a unit takes both of
    its scores, which keeps the pairing: the difference's CI is far narrower than the two
    separate CIs suggest when the systems err on the same units."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"a {x.shape} and b {y.shape} are not paired (shapes differ)")
    if x.size == 0:
        nan = (float("nan"), float("nan"))
        return {"a": nan, "b": nan, "diff": nan}
    idx = bootstrap_indices(x.size, n_boot, rng)
    if weights is None:
        boot_a, boot_b, boot_d = x[idx].mean(1), y[idx].mean(1), (x - y)[idx].mean(1)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != x.shape:
            raise ValueError(f"scores {x.shape} and weights {w.shape} differ in shape")
        sa, sb, sw = x[idx].sum(1), y[idx].sum(1), w[idx].sum(1)
        boot_a, boot_b, boot_d = _ratio(sa, sw), _ratio(sb, sw), _ratio(sa - sb, sw)
    return {"a": percentile_interval(boot_a, alpha), "b": percentile_interval(boot_b, alpha),
            "diff": percentile_interval(boot_d, alpha)}


def paired_bootstrap_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                        weights: Sequence[float] | np.ndarray | None = None, *, n_boot: int = 2000,
                        rng: np.random.Generator | int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Bootstrap CI of the paired difference a - b (mean, or ratio of sums with ``weights``)."""
    return paired_bootstrap(a, b, weights, n_boot=n_boot, rng=rng, alpha=alpha)["diff"]


# ---- tests --------------------------------------------------------------------------------------
def sign_flip_test(diffs: Sequence[float] | np.ndarray, n_perm: int = 20000,
                   rng: np.random.Generator | int = 0) -> float:
    """Two-sided paired sign-flip (permutation) test of mean(diffs) = 0, Monte Carlo.

    Under the null each unit's difference is as likely to have either sign, so the statistic
    |sum(d)| is compared with |sum(±d)| over ``n_perm`` random sign vectors. Zero differences
    carry no sign and are dropped (all zero: p = 1). The p-value counts the observed statistic
    as one of the permutations, ``(1 + #{null >= observed}) / (1 + n_perm)``, so it is never
    below ``1 / (1 + n_perm)`` -- a Monte Carlo test cannot claim more than it sampled."""
    d = np.asarray(diffs, dtype=np.float64).ravel()
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    signs = as_rng(rng).integers(0, 2, size=(n_perm, d.size), dtype=np.int8) * 2 - 1
    null = np.abs(signs @ d)
    return float((1 + np.count_nonzero(null >= abs(d.sum()) - 1e-9)) / (1 + n_perm))


def binomial_test(k: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial p-value of ``k`` successes in ``n`` trials against rate ``p``
    (e.g. accuracy against chance). For p = 0.5 it is the doubled smaller tail, computed in
    exact integer arithmetic (``2 * sum_{i <= min(k, n-k)} C(n, i) / 2**n``, capped at 1); for
    other ``p``, scipy's exact test (two-sided by summing outcomes no likelier than ``k``, which
    for p = 0.5 is the same number). n = 0: p = 1 (no evidence)."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    if p == 0.5:
        m = min(k, n - k)
        return min(1.0, 2 * sum(math.comb(n, i) for i in range(m + 1)) / 2**n)
    return float(binomtest(int(k), int(n), p, alternative="two-sided").pvalue)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (A right only) and c (B right
    only): under the null each discordant unit is A's or B's with probability 1/2, so it is the
    exact binomial test of b in b + c trials against 0.5 (concordant units carry no information)."""
    return binomial_test(min(b, c), b + c, 0.5)


def holm(ps: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, controls the family-wise error), in the order given.

    The i-th smallest p is multiplied by (m - i) (0-based i, m tests), capped at 1, and the
    adjusted values are made non-decreasing in that order -- uniformly more powerful than
    Bonferroni with the same guarantee."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, run = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        run = max(run, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = run
    return out


# ---- WER / CER ----------------------------------------------------------------------------------
class EditCounts(NamedTuple):
    """One utterance's (or a corpus's) alignment counts; ``words`` are reference units."""

    substitutions: int
    deletions: int
    insertions: int
    hits: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def words(self) -> int:
        return self.hits + self.substitutions + self.deletions


def _edit_counts(refs: Sequence[str], hyps: Sequence[str], chars: bool) -> list[EditCounts]:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    # whitespace of any kind separates words; for CER the words are re-joined by one space
    r = [" ".join(x.split()) for x in refs]
    h = [" ".join(x.split()) for x in hyps]
    size = (lambda s: len(s)) if chars else (lambda s: len(s.split()))
    out: list[EditCounts | None] = [None] * len(r)
    both = [i for i in range(len(r)) if r[i] and h[i]]
    for i in range(len(r)):
        if not r[i]:
            out[i] = EditCounts(0, 0, size(h[i]), 0)  # nothing to say: all hypothesis units inserted
        elif not h[i]:
            out[i] = EditCounts(0, size(r[i]), 0, 0)  # nothing said: all reference units deleted
    if both:  # jiwer aligns each pair on its own; one call for all of them, split back by alignment
        proc = jiwer.process_characters if chars else jiwer.process_words
        res = proc([r[i] for i in both], [h[i] for i in both])
        for i, chunks in zip(both, res.alignments):
            n = {"equal": 0, "substitute": 0, "delete": 0, "insert": 0}
            for ch in chunks:
                n[ch.type] += (ch.hyp_end_idx - ch.hyp_start_idx) if ch.type == "insert" else (
                    ch.ref_end_idx - ch.ref_start_idx)
            out[i] = EditCounts(n["substitute"], n["delete"], n["insert"], n["equal"])
    return out  # type: ignore[return-value]


def word_errors(references: Sequence[str], hypotheses: Sequence[str]) -> list[EditCounts]:
    """Per-utterance word alignment counts under the module's empty-text rule (see the module
    docstring); the per-utterance variant callers bootstrap over."""
    return _edit_counts(references, hypotheses, chars=False)


def _corpus(counts: list[EditCounts]) -> dict:
    s, d, i, h = (sum(c[k] for c in counts) for k in range(4))
    n = h + s + d
    return {"wer": (s + d + i) / n if n else float("nan"), "substitutions": s, "deletions": d,
            "insertions": i, "words": n}


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> dict:
    """Corpus WER (errors over all utterances / reference words over all utterances -- not a
    mean of utterance WERs, which would weight a two-word utterance like a fifty-word one):
    ``{"wer", "substitutions", "deletions", "insertions", "words"}``. Empty text follows the
    module's rule; no reference words at all: ``wer`` is NaN."""
    return _corpus(word_errors(references, hypotheses))


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> dict:
    """Corpus CER, the same rule as :func:`wer` over characters (whitespace runs count as one
    space): ``{"wer": <the CER>, ...}`` renamed ``"cer"``, with ``"chars"`` for ``"words"``."""
    out = _corpus(_edit_counts(references, hypotheses, chars=True))
    out["cer"], out["chars"] = out.pop("wer"), out.pop("words")
    return out


def normalize_text(s: str) -> str:
    """The one ASR text normalisation: lower case, curly apostrophes straight, everything but
    letters, digits and apostrophes a space, runs of spaces one."""
    s = s.lower().replace("\u2019", "'")
    s = re.sub(r"[^a-z0-9' ]+", " ", s)
    return re.sub(r"\s+", " ", s).strip()


def asr_wer(references: Sequence[str], hypotheses: Sequence[str]) -> dict:
    """:func:`wer` of normalised texts (what every ASR number of the project reports)."""
    return wer([normalize_text(x) for x in references], [normalize_text(x) for x in hypotheses])

