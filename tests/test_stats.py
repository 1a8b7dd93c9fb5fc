"""spiritlm.stats: the one bootstrap rule, the paired tests, Holm, and the one WER (empty text)."""

from __future__ import annotations

import math

import jiwer
import numpy as np
import pytest
from scipy.stats import binomtest

from spiritlm import stats


# ---- bootstrap ----------------------------------------------------------------------------------
def test_percentile_interval_is_the_order_statistic_rule():
    reps = np.random.default_rng(0).permutation(2000).astype(float)
    assert stats.percentile_interval(reps) == (50.0, 1949.0)  # 50 replicates cut from each tail
    assert stats.percentile_interval(np.arange(10.0), alpha=0.2) == (1.0, 8.0)
    assert stats.percentile_interval([3.0]) == (3.0, 3.0)
    # NaN replicates (a ratio undefined on that resample) are left out; none left: NaN
    assert stats.percentile_interval(np.r_[np.arange(2000.0), [np.nan] * 7]) == (50.0, 1949.0)
    assert all(math.isnan(x) for x in stats.percentile_interval([np.nan]))
    with pytest.raises(ValueError):
        stats.percentile_interval([1.0], alpha=0.0)


def test_bootstrap_is_deterministic_and_seeds_are_explicit():
    x = np.random.default_rng(1).normal(size=40)
    assert stats.bootstrap_ci(x, rng=7) == stats.bootstrap_ci(x, rng=7)
    assert stats.bootstrap_ci(x, rng=7) != stats.bootstrap_ci(x, rng=8)
    g = np.random.default_rng(7)  # a Generator continues its stream: the second call draws anew
    first = stats.bootstrap_ci(x, rng=g)
    assert first == stats.bootstrap_ci(x, rng=7) and stats.bootstrap_ci(x, rng=g) != first
    with pytest.raises(TypeError):
        stats.bootstrap_ci(x, rng=None)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([]))


def test_bootstrap_ci_of_the_mean_covers_at_about_the_nominal_rate():
    rng = np.random.default_rng(2024)
    hits = 0
    for t in range(300):
        x = rng.exponential(1.0, size=60)  # skewed, true mean 1
        lo, hi = stats.bootstrap_ci(x, n_boot=1000, rng=t)
        hits += lo <= 1.0 <= hi
    assert 0.88 <= hits / 300 <= 0.99


def test_ratio_bootstrap_weights_and_manual_replicates():
    e = np.array([1.0, 0.0, 3.0, 2.0, 0.0])
    w = np.array([5.0, 4.0, 6.0, 2.0, 3.0])
    idx = np.random.default_rng(3).integers(0, 5, size=(500, 5))
    s = np.sort(e[idx].sum(1) / w[idx].sum(1))
    assert stats.bootstrap_ci(e, w, n_boot=500, rng=3) == (s[int(0.025 * 500)], s[int(0.975 * 500) - 1])
    # constant weights: the ratio of sums is the mean
    assert stats.bootstrap_ci(e, np.ones(5), rng=0) == pytest.approx(stats.bootstrap_ci(e, rng=0))
    with pytest.raises(ValueError):
        stats.bootstrap_ci(e, w[:3])


def test_paired_bootstrap_keeps_the_pairing():
    rng = np.random.default_rng(5)
    a = rng.normal(size=100)
    b = a - 0.25  # the same units, shifted: every resample's difference is exactly 0.25
    ci = stats.paired_bootstrap(a, b, rng=0)
    assert ci["diff"] == pytest.approx((0.25, 0.25))
    assert ci["a"][1] - ci["a"][0] > 0.2  # each system's own CI is wide ...
    assert stats.paired_bootstrap_ci(a, b, rng=0) == ci["diff"]
    # ... with weights: (sum a - sum b) / sum w on the same resamples
    w = rng.integers(1, 9, size=100).astype(float)
    idx = np.random.default_rng(0).integers(0, 100, size=(2000, 100))
    d = np.sort((a[idx].sum(1) - b[idx].sum(1)) / w[idx].sum(1))
    assert stats.paired_bootstrap_ci(a, b, w, rng=0) == (d[50], d[1949])
    with pytest.raises(ValueError):
        stats.paired_bootstrap(a, b[:10])


# ---- tests --------------------------------------------------------------------------------------
def test_mcnemar_on_hand_computed_tables():
    # b=9, c=1: 2 * (C(10,0) + C(10,1)) / 2**10 = 22 / 1024
    assert stats.mcnemar_exact(9, 1) == 22 / 1024 and stats.mcnemar_exact(1, 9) == 22 / 1024
    # b=1, c=12: 2 * (1 + 13) / 2**13
    assert stats.mcnemar_exact(1, 12) == 28 / 8192
    assert stats.mcnemar_exact(0, 0) == 1.0 and stats.mcnemar_exact(3, 3) == 1.0 and stats.mcnemar_exact(2, 3) == 1.0
    assert stats.mcnemar_exact(600, 500) == pytest.approx(binomtest(500, 1100).pvalue, rel=1e-9)  # no overflow


def test_binomial_test_against_chance():
    # 15 of 20 at 50%: 2 * (1 + 20 + 190 + 1140 + 4845 + 15504) / 2**20
    assert stats.binomial_test(15, 20) == 2 * 21700 / 2**20
    # 0 of 3 at chance 1/3: outcomes no likelier than P(0) = 8/27 are 0, 2, 3 -> (8 + 6 + 1) / 27
    assert stats.binomial_test(0, 3, 1 / 3) == pytest.approx(15 / 27)
    for k, n in [(0, 7), (3, 7), (12, 30), (15, 30), (40, 61)]:  # the p = 0.5 shortcut is scipy's test
        assert stats.binomial_test(k, n) == pytest.approx(binomtest(k, n).pvalue, rel=1e-9)
    assert stats.binomial_test(0, 0) == 1.0
    with pytest.raises(ValueError):
        stats.binomial_test(5, 3)


def test_sign_flip_floor_symmetry_and_agreement_with_the_binomial():
    d = np.ones(30)
    assert stats.sign_flip_test(d, n_perm=999) == 1 / 1000  # never below 1 / (1 + n_perm)
    assert stats.sign_flip_test(np.zeros(5)) == 1.0
    x = np.random.default_rng(0).normal(0.3, 1, 25)
    assert stats.sign_flip_test(x, rng=4) == stats.sign_flip_test(-x, rng=4)
    assert stats.sign_flip_test(np.r_[x, 0, 0], rng=4) == stats.sign_flip_test(x, rng=4)  # zeros carry no sign
    pm = np.array([1.0] * 9 + [-1.0])  # on +-1 it is the sign test
    assert stats.sign_flip_test(pm, n_perm=200000) == pytest.approx(stats.mcnemar_exact(9, 1), abs=0.003)


def test_holm_textbook_example():
    # p = .01 .04 .03 .005, m = 4: sorted .005*4 = .02, .01*3 = .03, .03*2 = .06, .04*1 -> max .06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.9, 0.9]) == [1.0, 1.0] and stats.holm([0.5]) == [0.5] and stats.holm([]) == []


# ---- WER ----------------------------------------------------------------------------------------
PAIRS = [("a b c", "a b c", (0, 0, 0, 3)),        # exact
         ("a b c d", "a x c d", (1, 0, 0, 3)),    # one substitution
         ("a b c", "a c", (0, 1, 0, 2)),          # one deletion
         ("a b", "a b c", (0, 0, 1, 2)),          # one insertion
         ("", "", (0, 0, 0, 0)),                  # empty / empty: nothing to say, nothing said
         ("a b", "", (0, 2, 0, 0)),               # empty hypothesis: every reference word deleted
         ("", "x y z", (0, 0, 3, 0)),             # empty reference: every hypothesis word inserted
         (" \t ", "x", (0, 0, 1, 0)),             # whitespace only is empty
         ("a  b\tc", "a b  c", (0, 0, 0, 3))]     # any whitespace separates words


def test_word_errors_on_hand_made_pairs_including_every_empty_case():
    refs, hyps, want = zip(*PAIRS)
    got = stats.word_errors(list(refs), list(hyps))
    assert [tuple(c) for c in got] == list(want)
    assert [c.words for c in got] == [3, 4, 3, 2, 0, 2, 0, 0, 3]
    r = stats.wer(list(refs), list(hyps))
    assert r == {"wer": 9 / 17, "substitutions": 1, "deletions": 3, "insertions": 5, "words": 17}


def test_wer_matches_jiwer_where_jiwer_is_defined_and_is_nan_without_reference_words():
    refs = ["the cat sat on the mat", "hello world", "one two three"]
    hyps = ["the cat sit on mat", "hello big world", "three"]
    assert stats.wer(refs, hyps)["wer"] == pytest.approx(jiwer.wer(refs, hyps))
    r = stats.wer(["", " "], ["a b", ""])
    assert math.isnan(r["wer"]) and r["insertions"] == 2 and r["words"] == 0
    with pytest.raises(ValueError):
        stats.wer(["a"], [])


def test_cer_follows_the_same_empty_rule():
    r = stats.cer(["abc", "", "ab cd", ""], ["", "xy", "ab", ""])
    assert (r["deletions"], r["insertions"], r["chars"]) == (3 + 3, 2, 8) and r["cer"] == pytest.approx(8 / 8)
    assert stats.cer(["abcd"], ["abxd"])["cer"] == pytest.approx(jiwer.cer(["abcd"], ["abxd"]))


def test_every_caller_uses_the_one_wer_rule():
    from spiritlm.stats import asr_wer
    from spiritlm.eval.fewshot import wer as fewshot_wer
    from spiritlm.models.continuous.compare import paired_wer, wer_with_ci
    from spiritlm.demo.streaming import paired_wer_bootstrap

    refs = ["The cat sat.", "", "a b", "..."]
    hyps = ["the cat sit", "extra words", "", ""]
    want = 1 + 2 + 2  # a substitution, two insertions (empty reference), two deletions (empty hypothesis)
    words = 3 + 2
    assert asr_wer(refs, hyps)["wer"] == fewshot_wer(refs, hyps) == want / words
    items = [{"id": str(i), "ref": r, "hyp": h} for i, (r, h) in enumerate(zip(refs, hyps))]
    assert wer_with_ci(items)["wer"] == want / words
    perfect = [dict(it, hyp=it["ref"]) for it in items]
    p = paired_wer([items], [perfect])
    assert p["wer_a"] == want / words and p["wer_b"] == 0.0 and p["n"] == 4
    s = paired_wer_bootstrap(perfect, items)
    assert s["wer_b"] == want / words and s["diff_b_minus_a"] == want / words and s["n"] == 4
