"""ABX phone discriminability (spiritlm.tokenizer.abx): a hand-computed case, agreement with a
brute-force transcription of ZeroSpeech's DTW and averaging, unit/feature sanity cases, phone
segmentation from frame labels, input errors and determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spiritlm.tokenizer.abx import AbxItem, _dtw_batch, abx_error, phone_items

# Exact 2-D frames: angular distances between them are 0, 1/2 or 1 exactly in floating point.
R, U, L = (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)  # 0, 90 and 180 degrees


def _item(frames, phone, speaker="s1", context=("x", "y")):
    return AbxItem(np.asarray(frames, dtype=float), phone, context, speaker)


def test_hand_computed_within_speaker():
    # Frame distance d(R,U) = d(U,L) = 1/2, d(R,L) = 1. DTW distance = min summed cost / length of
    # the backtracked path (ZeroSpeech); rows = first argument.
    #   d(A1,A2): [0 .5 .5]                    -> 1 / 3 frames              = 1/3
    #   d(A1,B1): [.5]                         = 1/2
    #   d(A1,B2): [1 .5]                       -> 1.5 / 2                   = 3/4
    #   d(A2,B1): [.5 0 0]^T                   -> .5 / 3                    = 1/6
    #   d(A2,B2): [[1 .5] [.5 0] [.5 0]]: cost [[1 1.5] [1.5 1] [2 1]]; back from (2,1): up 1 <
    #             diag 1.5 -> (1,1), then diag -> (0,0): 3 steps           -> 1 / 3 = 1/3
    #   d(B1,B2): [.5 0]                       -> .5 / 2                    = 1/4
    #   d(B1,A1) = 1/2; d(B1,A2): [.5 0 0]     -> 1/6
    #   d(B2,A1): [1 .5]^T                     -> 3/4
    #   d(B2,A2): [[1 .5 .5] [.5 0 0]]: cost [[1 1.5 2] [1.5 1 1]]; back from (1,2): left 1 <
    #             up 2, diag 1.5 -> (1,1), then diag: 3 steps               -> 1/3
    # Cell (a, b), d(A,X) = d(A1,A2) = 1/3 for both X:
    #   X=A1: B1 1/2 ok, B2 3/4 ok; X=A2: B1 1/6 < 1/3 error, B2 1/3 tie (half)  -> 1.5/4 = 0.375
    # Cell (b, a), d(B1,B2) = 1/4:
    #   X=B1: A1 1/2 ok, A2 1/6 error; X=B2: A1 3/4 ok, A2 1/3 ok               -> 1/4 = 0.25
    # One context and speaker: error = mean over the ordered pairs (a,b), (b,a) = 0.3125.
    items = [
        _item([R], "a"),
        _item([R, U, U], "a"),
        _item([U], "b"),
        _item([L, U], "b"),
    ]
    res = abx_error(items, mode="within")
    assert abs(res["error"] - 0.3125) < 1e-12
    assert res["n_cells"] == 2 and res["n_triplets"] == 8 and res["mode"] == "within"


def test_within_speaker_a_to_x_distance_uses_item_order_like_zerospeech():
    # The tie rule (diagonal, then left, then up) makes DTW asymmetric for units:
    #   DTW(A1, A2), rows [0 1 0] x cols [2 2 0 1]: cost 3, path back from (2,3): left (tie 2 = 2),
    #     diag, diag: 4 steps -> 3/4
    #   DTW(A2, A1): cost 3, path: left (tie), diag, then 2 steps up the first column: 5 -> 3/5
    # ZeroSpeech computes d(A, X) for two tokens of a once with the earlier token as rows and mirrors
    # it, so both X see 3/4. B = [1]: d(A1, B) = 2/3 < 3/4 -> error; d(A2, B) = 3/4 -> tie.
    # Error (one cell) = (1 + 0.5) / 2 = 0.75; with d(A2, A1) = 3/5 it would be 0.5.
    items = [AbxItem(np.array(u), p, ("x", "y"), "s") for u, p in (([0, 1, 0], "a"), ([2, 2, 0, 1], "a"), ([1], "b"))]
    assert abx_error(items)["error"] == 0.75


def _ref_dtw(d_nm: np.ndarray) -> float:
    """Line-by-line transcription of ZeroSpeech's libri_light_dtw._dtw (normalized=True)."""
    n, m = d_nm.shape
    c = np.empty((n, m))
    c[0, 0] = d_nm[0, 0]
    for i in range(1, n):
        c[i, 0] = d_nm[i, 0] + c[i - 1, 0]
    for j in range(1, m):
        c[0, j] = d_nm[0, j] + c[0, j - 1]
    for i in range(1, n):
        for j in range(1, m):
            c[i, j] = d_nm[i, j] + min(c[i - 1, j], c[i - 1, j - 1], c[i, j - 1])
    path_len, i, j = 1, n - 1, m - 1
    while i > 0 and j > 0:
        up, left, diag = c[i - 1, j], c[i, j - 1], c[i - 1, j - 1]
        if diag <= left and diag <= up:
            i, j = i - 1, j - 1
        elif left <= up:
            j -= 1
        else:
            i -= 1
        path_len += 1
    path_len += j if i == 0 else 0
    path_len += i if j == 0 else 0
    return c[n - 1, m - 1] / path_len


@pytest.mark.parametrize("ties", [False, True])
def test_batched_dtw_matches_reference(ties):
    rng = np.random.default_rng(0)
    n, m, N = 7, 6, 300
    len_x, len_y = rng.integers(1, n + 1, N), rng.integers(1, m + 1, N)
    d_nmN = rng.integers(0, 2, (n, m, N)).astype(float) if ties else rng.random((n, m, N))
    got = _dtw_batch(d_nmN.copy(), len_x.copy(), len_y.copy())
    want = [_ref_dtw(d_nmN[: len_x[k], : len_y[k], k]) for k in range(N)]
    np.testing.assert_array_equal(got, want)


def _ref_abx(items: list[AbxItem], mode: str) -> float:
    """Brute force over every triplet with ZeroSpeech's nested means (no sampling)."""

    def dist(x: AbxItem, y: AbxItem) -> float:
        if x.feats.ndim == 1:
            return _ref_dtw((x.feats[:, None] != y.feats[None, :]).astype(float))
        xn = x.feats / np.linalg.norm(x.feats, axis=1, keepdims=True)
        yn = y.feats / np.linalg.norm(y.feats, axis=1, keepdims=True)
        return _ref_dtw(np.arccos(np.clip(xn @ yn.T, -1, 1)) / np.pi)

    idx = {}
    for k, it in enumerate(items):
        idx.setdefault((it.context, it.speaker, it.phone), []).append(k)
    phones, speakers = sorted({it.phone for it in items}), sorted({it.speaker for it in items})
    contexts = sorted({it.context for it in items})
    per_ab = {}
    for a, b in itertools.permutations(phones, 2):
        per_s = []
        for s in speakers:
            cells = []
            for c in contexts:
                xs_speakers = [s] if mode == "within" else [t for t in speakers if t != s]
                for t in xs_speakers:
                    A, B, X = idx.get((c, s, a), []), idx.get((c, s, b), []), idx.get((c, t, a), [])
                    errs = []
                    for x, y, z in itertools.product(X, A, B):
                        if mode == "within" and x == y:
                            continue
                        # within: ZeroSpeech's mirrored d(A, X) = DTW(earlier token, later token)
                        first, second = (min(x, y), max(x, y)) if mode == "within" else (x, y)
                        d_ax = dist(items[first], items[second])
                        d_bx = dist(items[x], items[z])
                        errs.append(1.0 if d_ax > d_bx else 0.5 if d_ax == d_bx else 0.0)
                    if errs:
                        cells.append(np.mean(errs))
            if cells:
                per_s.append(np.mean(cells))
        if per_s:
            per_ab[(a, b)] = np.mean(per_s)
    return float(np.mean(list(per_ab.values())))


def _random_items(seed: int, n: int = 90, units: bool = False, n_spk: int = 3, noise: float = 1.5) -> list[AbxItem]:
    rng = np.random.default_rng(seed)
    centre_PD, offset_SD = rng.normal(size=(3, 6)), rng.normal(size=(n_spk, 6))
    items = []
    for _ in range(n):
        p, c, s, t = rng.integers(3), rng.integers(2), rng.integers(n_spk), int(rng.integers(1, 6))
        if units:
            feats = np.where(rng.random(t) < 0.5, rng.integers(0, 5, t), p).astype(np.int64)
        else:
            feats = centre_PD[p] + offset_SD[s] + noise * rng.normal(size=(t, 6))
        items.append(AbxItem(feats, f"p{p}", (f"c{c}", "x"), f"s{s}"))
    return items


@pytest.mark.parametrize("units", [False, True])
@pytest.mark.parametrize("mode", ["within", "across"])
def test_matches_bruteforce_reference(units, mode):
    items = _random_items(seed=3, units=units)
    res = abx_error(items, mode=mode, max_per_cell=1000)  # no sampling: every triplet
    assert 0.02 < res["error"] < 0.6  # a non-trivial case
    assert abs(res["error"] - _ref_abx(items, mode)) < 1e-12


def _unit_items(rng, unit_of_frame, n=600, n_phones=4):
    items = []
    for _ in range(n):
        p, c, s, t = rng.integers(n_phones), rng.integers(2), rng.integers(2), int(rng.integers(3, 7))
        items.append(AbxItem(unit_of_frame(p, t), f"p{p}", (f"c{c}", "x"), f"s{s}"))
    return items


def test_perfect_units_zero_random_units_half():
    rng = np.random.default_rng(0)
    perfect = _unit_items(rng, lambda p, t: np.full(t, 10 + p, dtype=np.int64))
    for mode in ("within", "across"):
        assert abx_error(perfect, mode=mode, vocab_size=20)["error"] == 0.0
    rand = _unit_items(rng, lambda p, t: rng.integers(0, 50, t))
    for mode in ("within", "across"):
        res = abx_error(rand, mode=mode, max_per_cell=10)
        assert abs(res["error"] - 0.5) < 0.1, res
        assert res["n_triplets"] > 5000


def test_speaker_offset_features_within_zero_across_higher():
    # Frames = phone centre + a large per-speaker offset + small noise: phones are perfectly
    # separable within a speaker, but the offset rotates the angles across speakers.
    rng = np.random.default_rng(0)
    centre_PD, offset_SD = rng.normal(size=(5, 16)), 2.0 * rng.normal(size=(2, 16))
    items = []
    for _ in range(400):
        p, c, s, t = rng.integers(5), rng.integers(2), rng.integers(2), int(rng.integers(2, 6))
        feats = centre_PD[p] + offset_SD[s] + 0.05 * rng.normal(size=(t, 16))
        items.append(AbxItem(feats, f"p{p}", (f"c{c}", "x"), f"s{s}"))
    within, across = abx_error(items, mode="within"), abx_error(items, mode="across")
    assert within["error"] == 0.0
    assert across["error"] > within["error"] + 0.05


def test_phone_items_segments_and_contexts():
    labels = np.array(["sil", "sil", "a", "a", "b", "sp", "c", "c", "c", "", "a"])
    frames = np.arange(len(labels) * 2, dtype=float).reshape(-1, 2)
    units = np.arange(4)
    items = phone_items([frames, units], [labels, np.array(["a", "a", "b", "b"])], ["spk1", "spk2"])
    first_col = [(it.feats[:, 0] if it.feats.ndim == 2 else it.feats).tolist() for it in items]
    got = [(it.phone, it.context, it.speaker, col) for it, col in zip(items, first_col)]
    assert got == [
        ("a", ("sil", "b"), "spk1", [4.0, 6.0]),
        ("b", ("a", "sil"), "spk1", [8.0]),  # "sp" reads as silence context
        ("c", ("sil", "sil"), "spk1", [12.0, 14.0, 16.0]),
        ("a", ("sil", "sil"), "spk1", [20.0]),  # "" is silence; the utterance edge reads as "sil"
        ("a", ("sil", "b"), "spk2", [0, 1]),
        ("b", ("a", "sil"), "spk2", [2, 3]),
    ]
    # Too-short segments are not items but still give their neighbours' context.
    short = phone_items([frames], [labels], ["spk1"], min_frames=2)
    assert [(it.phone, it.context) for it in short] == [("a", ("sil", "b")), ("c", ("sil", "sil"))]


def test_bad_inputs_raise_with_the_fix():
    one_speaker = [_item([R], "a"), _item([R, U], "a"), _item([U], "b")]
    with pytest.raises(ValueError, match="mode='within' or add another speaker"):
        abx_error(one_speaker, mode="across")
    with pytest.raises(ValueError, match="utterance 1"):
        phone_items([np.zeros((3, 2)), np.zeros((4, 2))], [np.array(["a"] * 3), np.array(["a"] * 3)], ["s", "s"])
    no_shared_context = [_item([R], "a"), _item([R], "a"), _item([U], "b", context=("q", "y"))]
    with pytest.raises(ValueError, match="no ABX cell can be formed"):
        abx_error(no_shared_context)
    with pytest.raises(ValueError, match="score each family separately"):
        abx_error([_item([R], "a"), AbxItem(np.array([1, 2]), "b", ("x", "y"), "s1")])
    with pytest.raises(ValueError, match=r"units must lie in \[0, 3\)"):
        abx_error([AbxItem(np.array([1, 5]), "a", ("x", "y"), "s1")], vocab_size=3)
    with pytest.raises(ValueError, match="mode must be"):
        abx_error(one_speaker, mode="both")


def test_same_seed_same_result():
    items = _random_items(seed=5, n=400, noise=3.0)
    runs = [abx_error(items, mode="across", max_per_cell=3, seed=s) for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0]["error"] != runs[2]["error"]  # the cap really samples


@pytest.mark.parametrize("mode", ["within", "across"])
def test_any_context_is_within_context_with_contexts_ignored(mode):
    # ZeroSpeech 2021's "any-context" ABX = the within-context one on the same items with every
    # context made equal: checked exactly against the brute-force reference.
    items = _random_items(seed=5, units=True)
    one_context = [AbxItem(it.feats, it.phone, ("*", "*"), it.speaker) for it in items]
    res = abx_error(items, mode=mode, max_per_cell=1000, context="any")
    assert res["context"] == "any"
    assert abs(res["error"] - _ref_abx(one_context, mode)) < 1e-12
    assert res["error"] != abx_error(items, mode=mode, max_per_cell=1000)["error"]


def test_any_context_scores_a_corpus_whose_triphones_never_repeat():
    # Each phone once per context (a few utterances of real speech look like this): no
    # within-context cell exists, the any-context one does.
    items = [_item([R], "a", context=("x", "y")), _item([R], "a", context=("q", "y")),
             _item([U], "b", context=("z", "z"))]
    with pytest.raises(ValueError, match="no ABX cell"):
        abx_error(items)
    assert abx_error(items, context="any")["error"] == 0.0
    with pytest.raises(ValueError, match="context must be"):
        abx_error(items, context="triphone")
