"""The hybrid demo part's arithmetic: parameter matching and the NLL comparison with its CI, on
hand-checkable inputs (the part's training and evaluation run through the tested family code)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from spiritlm.demo.hybrid import comparison_table, nll_compare


def test_nll_compare_is_a_ratio_of_sums_averaged_over_seeds():
    # two utterances (3 and 1 units); A has two seeds, B one
    a = [[(3.0, 3), (2.0, 1)], [(5.0, 3), (2.0, 1)]]
    b = [[(6.0, 3), (1.0, 1)]]
    r = nll_compare(a, b, n_boot=500)
    assert math.isclose(r["nll_a"], (4.0 + 2.0) / 4) and math.isclose(r["nll_b"], 7.0 / 4)
    assert math.isclose(r["diff"], (6.0 - 7.0) / 4)
    lo, hi = r["ci95"]
    assert lo <= r["diff"] <= hi and r["units"] == 4 and r["utterances"] == 2
    # the extremes of resampling two utterances: all of utt 0 (-2/3) or all of utt 1 (+1)
    assert lo >= -2 / 3 - 1e-9 and hi <= 1.0 + 1e-9
    with pytest.raises(ValueError, match="different units"):
        nll_compare(a, [[(6.0, 2), (1.0, 1)]])


def test_comparison_table_rows():
    acc = {"swuggy/S": {"n": 10, "acc_a": 0.6, "acc_b": 0.5, "diff": 0.1, "ci95": [-0.1, 0.3], "p": 0.4}}
    nll = {"diff": -0.1, "ci95": [-0.2, 0.0], "nll_a": 2.0, "nll_b": 2.1, "utterances": 3, "units": 30}
    md = comparison_table({k: acc for k in ("hybrid-tokens", "hybrid-tokens_big", "tokens_big-tokens")},
                          {k: nll for k in ("hybrid-tokens", "hybrid-tokens_big", "tokens_big-tokens")},
                          {"tokens": 100, "hybrid": 101, "tokens_big": 300}, {"tokens": [0], "hybrid": [0],
                                                                              "tokens_big": [0]}, ["test1"])
    assert "| held-out NLL / unit (nats; 3 utt., 30 units) | 2.100 | 2.000 | 2.100 | -0.100 (-0.200, +0.000)" in md
    assert f"| held-out perplexity / unit | {math.exp(2.1):.2f} | {math.exp(2.0):.2f}" in md
    assert "| swuggy/S accuracy % (n = 10) | 50.0 | 60.0 | 50.0 | +10.0 (-10.0, +30.0), p = 0.4" in md
    assert "(3.0x)" in md


def test_matched_ffn_gives_the_tokens_only_model_the_hybrid_s_parameters(tmp_path):
    from spiritlm.demo.hybrid import HybridPartConfig, matched_ffn, train_config
    from spiritlm.models.hybrid.model import FrameProjector, feature_dim

    ctx = SimpleNamespace(out=tmp_path, text_tok={"dir": "tok"}, manifest="m.jsonl", shards={"dir": str(tmp_path)},
                          recipe=lambda p: __import__("spiritlm.demo.main", fromlist=["recipe"]).recipe(p))
    opts = HybridPartConfig()
    ffn = matched_ffn(ctx, opts)
    cfg = train_config(ctx, opts, "hybrid", 0, tmp_path / "r")
    H, L = cfg.model.tiny.hidden_size, cfg.model.tiny.num_hidden_layers
    extra = sum(p.numel() for p in FrameProjector(feature_dim(cfg.hybrid), H, cfg.hybrid.projector.blocks,
                                                  cfg.hybrid.projector.mult).parameters()) + 2 * H * H
    assert abs(3 * H * L * (ffn - cfg.model.tiny.intermediate_size) - extra) <= 3 * H * L / 2
    assert np.isclose(3 * H * L * (ffn - cfg.model.tiny.intermediate_size), extra, rtol=0.01)
