"""Scoring engine: batched/packed scores equal one-at-a-time scores; hand-checked log-probs;
model-directory checks; the speech encoder path."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spiritlm.eval.model import CachedEncoder, ModelDirError, load_model  # noqa: E402
from spiritlm.components.scoring import Request, Score, Scorer, pair_score  # noqa: E402
from spiritlm.eval.testing import FakeSpeechEncoder, make_tiny_model_dir, write_tone  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")
    model, tok = load_model(d)
    return d, model, tok


def _requests(n=10, seed=0):
    rng = np.random.default_rng(seed)
    reqs = []
    for i in range(n):
        ctx = [("text", "the cat sat on the mat")] if i % 3 == 0 else (
            [("speech", {"hubert": rng.integers(0, 501, 7)})] if i % 3 == 1 else [])
        reqs.append(Request(ctx, [("speech", {"hubert": rng.integers(0, 501, 5 + i)})]))
        reqs.append(Request(ctx, [("text", "and the dog slept" + " near" * (i % 4))]))
    return reqs


def test_token_budget_follows_the_device_unless_set(tiny):
    """No budget (or the suite's 0): 2048 tokens a forward on a CPU, where small batches are
    faster; a set budget is kept; the suite's default reaches the scorer as 'by device'."""
    from spiritlm.components.scoring import CPU_BATCH_TOKENS, GPU_BATCH_TOKENS, default_batch_tokens
    from spiritlm.eval.suite import ScoringConfig

    _, model, tok = tiny
    assert default_batch_tokens(model) == CPU_BATCH_TOKENS == 2048 and GPU_BATCH_TOKENS == 16384
    assert Scorer(model, tok).batch_tokens == 2048
    assert Scorer(model, tok, batch_tokens=ScoringConfig().batch_tokens).batch_tokens == 2048
    assert Scorer(model, tok, batch_tokens=16384).batch_tokens == 16384


@pytest.mark.parametrize("batch_tokens,max_row,share", [(16384, 4096, True), (40, 4096, True),
                                                         (64, 30, True), (16384, 4096, False)])
def test_batched_equals_one_at_a_time(tiny, batch_tokens, max_row, share):
    _, model, tok = tiny
    reqs = _requests()
    s = Scorer(model, tok, batch_tokens=batch_tokens, max_row_tokens=max_row, share_context=share)
    got = s.score(reqs)
    ref = s.score_one_at_a_time(reqs)
    for a, b in zip(got, ref):
        assert a.n_tokens == b.n_tokens
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
    if share and max_row > 100:
        assert s.stats.context_tokens_saved > 0


def test_long_continuations_get_rows_of_their_own(tiny):
    """Whole stories behind a BOS-only context: one row each, no mask (plain causal attention),
    the same scores as the reference and as packing them all behind the shared context."""
    _, model, tok = tiny
    rng = np.random.default_rng(3)
    reqs = [Request([], [("speech", {"hubert": rng.integers(0, 501, n)})]) for n in (40, 33, 57, 12, 40)]
    reqs.append(Request([("text", "a long shared context of several words for the short one")],
                        [("text", "ok")]))
    s = Scorer(model, tok)
    got = s.score(reqs)
    assert s.stats.rows == len(reqs)  # no story packed behind the 2-token context
    ref = s.score_one_at_a_time(reqs)
    old = Scorer(model, tok, pack_longer=True)
    packed = old.score(reqs)
    assert old.stats.rows == 2 and old.stats.context_tokens_saved > 0
    for a, b, c in zip(got, ref, packed):
        assert a.n_tokens == b.n_tokens == c.n_tokens
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4) and c.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_continuations_that_begin_alike_share_their_start(tiny):
    """Spoken StoryCloze: two wavs of the same four sentences + different endings -> units equal
    for a long start. The start is scored once (a row ``BOS [Speech] start | end_1 | end_2``),
    the scores are the reference's, token counts the whole continuation's; short common starts
    (< min_shared_prefix), and starts shorter than what follows them, are left alone."""
    _, model, tok = tiny
    rng = np.random.default_rng(5)
    reqs = []
    for n_ctx in (120, 90, 60):
        start = rng.integers(0, 501, n_ctx)
        for n_end in (25, 31):
            reqs.append(Request([], [("speech", {"hubert": np.r_[start, rng.integers(0, 501, n_end)]})]))
    lone = rng.integers(0, 501, 70)  # shares 10 units with the next: below the threshold
    reqs.append(Request([], [("speech", {"hubert": lone})]))
    reqs.append(Request([], [("speech", {"hubert": np.r_[lone[:10], rng.integers(0, 501, 50)]})]))
    early = rng.integers(0, 501, 35)  # shares 35 units, then 80 of its own: not worth a shared row
    reqs += [Request([], [("speech", {"hubert": np.r_[early, rng.integers(0, 501, 80)]})]) for _ in range(2)]
    same_ctx = [("text", "the cat sat on the mat")]  # a shared text context + endings sharing 40 units
    start = rng.integers(0, 501, 40)
    reqs += [Request(same_ctx, [("speech", {"hubert": np.r_[start, rng.integers(0, 501, m)]})]) for m in (5, 9, 1)]
    s = Scorer(model, tok, min_shared_prefix=32)
    got = s.score(reqs)
    ref = s.score_one_at_a_time(reqs)
    for a, b in zip(got, ref):
        assert a.n_tokens == b.n_tokens
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
    # deduplication merges equal units (rng draws repeat rarely); each pair shares ~its start
    assert s.stats.prefix_tokens_shared >= 0.9 * (120 + 90 + 60 + 2 * 40)
    # three story pairs, the two lone stories, the early-diverging pair, the text-context trio
    assert s.stats.rows == 3 + 2 + 2 + 1
    off = Scorer(model, tok, share_prefixes=False)
    plain = off.score(reqs)
    assert off.stats.prefix_tokens_shared == 0 and off.stats.tokens_forwarded > s.stats.tokens_forwarded
    for a, b in zip(got, plain):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_hand_check_logprob(tiny):
    _, model, tok = tiny
    s = Scorer(model, tok)
    req = Request([("text", "the cat")], [("speech", "[Hu3][Hu7][Hu9]")])
    ctx, cont = s.encode_request(req)
    L = tok.layout
    assert ctx == tok.encode_text("the cat")[:1] + [L.text_id] + tok.encode_text("the cat", bos=False) + [L.speech_id]
    assert cont == [L.streams["hubert"].offset + u for u in (3, 7, 9)]
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont])).logits[0]
    expect = sum(torch.log_softmax(logits[len(ctx) - 1 + j].double(), -1)[t].item() for j, t in enumerate(cont))
    sc = s.score([req])[0]
    assert sc.n_tokens == 3
    assert sc.logprob == pytest.approx(expect, abs=1e-4)
    assert sc.mean == pytest.approx(expect / 3, abs=1e-4)


def test_identical_requests_scored_once(tiny):
    _, model, tok = tiny
    s = Scorer(model, tok)
    r = Request([], [("text", "the dog")])
    a, b = s.score([r, r])
    ctx, cont = s.encode_request(r)
    assert a == b and s.stats.requests == 2 and s.stats.tokens_forwarded == len(ctx) + len(cont)


def test_pair_score_ties():
    assert pair_score(1.0, 0.0) == 1.0 and pair_score(0.0, 1.0) == 0.0 and pair_score(2.0, 2.0) == 0.5
    assert Score(-6.0, 3).mean == -2.0 and Score(-6.0, 3).value(False) == -6.0


def test_wav_segments_go_through_cached_encoder(tiny, tmp_path):
    _, model, tok = tiny
    wav = write_tone(tmp_path / "a.wav", 0.4)
    enc = CachedEncoder(FakeSpeechEncoder())
    s = Scorer(model, tok, encoder=enc)
    a, b = s.score([Request([], [("speech", wav)]), Request([("text", "hi")], [("speech", wav)])])
    assert a.n_tokens == b.n_tokens == 10 and enc.calls == 1
    with pytest.raises(ValueError, match="no speech encoder"):
        Scorer(model, tok).score([Request([], [("speech", wav)])])
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        s.score([Request([], [("speech", tmp_path / "missing.wav")])])


def test_expressive_units(tiny):
    _, model, tok = tiny
    s = Scorer(model, tok, has_pitch=True, has_style=True)
    units = {"hubert": [78, 42, 81, 159, 316, 259], "pitch": [13, 13, 13, 13, 13, 3], "style": [81] * 6}
    _, cont = s.encode_request(Request([], [("speech", units)]))
    from spiritlm.vocab import units_to_ids

    assert cont == units_to_ids(units, True, True, tok.layout).tolist()
    assert tok.decode(cont).startswith("[St81][Pi13][Hu78]")  # ties: St < Pi < Hu


def test_model_dir_errors(tmp_path):
    with pytest.raises(ModelDirError, match="config.json"):
        load_model(tmp_path)
    d = make_tiny_model_dir(tmp_path / "textonly", speech_vocab=False)
    with pytest.raises(ModelDirError, match="speech vocabulary needs"):
        load_model(d)
    (d / "tokenizer.model").unlink()
    with pytest.raises(ModelDirError, match="tokenizer.model"):
        load_model(d)


def test_release_style_dir_without_layout_file(tiny, tmp_path):
    """A release-like directory: no spiritlm_vocab.json, added tokens in tokenizer_config.json."""
    import shutil

    d, _, _ = tiny
    r = tmp_path / "release"
    shutil.copytree(d, r)
    (r / "spiritlm_vocab.json").unlink()
    model, tok = load_model(r)  # base = SentencePiece size, default Spirit LM stream sizes
    assert tok.layout.text_id == tok.sp.get_piece_size()
    cfg = json.loads((r / "tokenizer_config.json").read_text())
    dec = cfg["added_tokens_decoder"]
    dec[str(tok.layout.text_id)]["content"], dec[str(tok.layout.speech_id)]["content"] = "[Speech]", "[Text]"
    (r / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match="layout"):
        load_model(r)


def test_prefetch_uses_encode_many(tiny, tmp_path):
    _, model, tok = tiny

    class Batched:
        def __init__(self):
            self.batches, self.fake = [], FakeSpeechEncoder()

        def encode(self, p):
            raise AssertionError("encode_many should have been used")

        def encode_many(self, paths):
            self.batches.append(len(paths))
            return [self.fake(p) for p in paths]

    wavs = [write_tone(tmp_path / f"{i}.wav", 0.2 + 0.1 * i) for i in range(3)]
    b = Batched()
    s = Scorer(model, tok, encoder=CachedEncoder(b))
    s.score([Request([("speech", w)], [("speech", w)]) for w in wavs])
    assert b.batches == [3]


def test_units_file_round_trip(tmp_path):
    """The demo encodes the benchmark audio once and each evaluation process reads the file back:
    every file's streams and its other values come back equal, keyed under the reader's root."""

    class WithMeta(FakeSpeechEncoder):
        def __call__(self, wav):
            out = super().__call__(wav)
            if Path(wav).name == "0.wav":
                out.pop("style")  # a stream one file lacks stays absent
            out["hubert"] = out["hubert"].astype(np.int32)  # the dtype comes back as written
            return {**out, "duration": np.float32(0.25), "frames": {"hubert": len(out["hubert"])}}

    root = tmp_path / "bench"
    wavs = [write_tone(root / "a" / f"{i}.wav", 0.2 + 0.1 * i, 200.0 + 50 * i) for i in range(4)]
    enc = CachedEncoder(WithMeta())
    enc(write_tone(tmp_path / "outside.wav"))  # not under the root: not written
    for w in wavs:
        enc(w)
    assert enc.save_units(tmp_path / "units.npz", root) == 4
    moved = tmp_path / "moved"
    root.rename(moved)  # another process may see the benchmark under another path
    back = CachedEncoder(lambda wav: pytest.fail("a cached file was encoded again"))
    assert back.load_units(tmp_path / "units.npz", moved) == 4
    for w in wavs:
        want, got = enc(w), back(moved / w.relative_to(root))
        assert want.keys() == got.keys()
        for k, v in want.items():
            if isinstance(v, np.ndarray):
                assert np.array_equal(got[k], v) and got[k].dtype == v.dtype
            else:
                assert got[k] == v
    assert back.calls == 0
    # one stream, two dtypes: refused when written, not when another process reads it
    enc(wavs[0])["hubert"] = np.zeros(3, np.float32)  # the cached dict itself
    with pytest.raises(ValueError, match="one dtype per stream"):
        enc.save_units(tmp_path / "bad.npz", tmp_path)
