"""Every cache keyed by the identity of its inputs (issue 32): a wav rewritten in place -- same
path, same utterance id, same size and even the same mtime, other audio -- gets its cached
features, alignment or units computed again (and the log counts them), never the old audio's;
the other entries stay as they were. One test per cache: the hybrid feature store, the
continuous family's feature cache, the streaming family's feature and alignment caches, and the
evaluation's units file. Tiny models: seconds each."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from spiritlm.config import load_config

WORDS = ["one", "two", "three", "four", "five", "six"]


def rewrite_in_place(path: Path, seed: int = 1) -> None:
    """Other audio of the same length and format at the same path, with the old mtime put back:
    a check on (path, size, mtime) alone would see no change."""
    import soundfile as sf

    st = path.stat()
    info = sf.info(str(path))
    old, sr = sf.read(str(path), dtype="float32")
    new = (np.random.default_rng(seed).standard_normal(old.shape) * 0.2).astype(np.float32)
    sf.write(str(path), new, sr, subtype=info.subtype)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def _tone_corpus(root: Path, n: int = 3) -> Path:
    """Tone utterances of the synthetic vocabulary (what the test tokenizer covers), in a manifest."""
    import soundfile as sf

    from spiritlm.manifest import Utterance, write_manifest

    root.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(0.12 * 16000)) / 16000
    utts = []
    for i in range(n):
        words = [WORDS[(i + j) % len(WORDS)] for j in range(3)]
        wav = np.concatenate([0.3 * np.sin(2 * np.pi * (300 + 200 * WORDS.index(w)) * t) for w in words])
        sf.write(str(root / f"u{i}.wav"), wav.astype(np.float32), 16000)
        utts.append(Utterance(f"u{i}", f"u{i}.wav", wav.size / 16000, 16000, " ".join(words), "spk0"))
    write_manifest(root / "manifest.jsonl", utts)
    return root / "manifest.jsonl"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from spiritlm.models.continuous.data import synthetic_utterances
    from spiritlm.text_tokenizer import train_sentencepiece

    d = tmp_path_factory.mktemp("tok")
    train_sentencepiece([t for _, t, _ in synthetic_utterances(60)] + ["the cat sat"] * 3, d, vocab_size=300)
    return d


def _copy(feats: dict) -> dict:
    return {k: np.array(v, copy=True) for k, v in feats.items()}


def _assert_only_recomputed(old: dict, new: dict, uid: str) -> None:
    assert set(new) == set(old)
    assert new[uid].shape == old[uid].shape and not np.allclose(new[uid], old[uid])
    assert all(np.array_equal(new[k], old[k]) for k in old if k != uid)


# ---- hybrid: the data stage's feature store ------------------------------------------------------------
def test_hybrid_feature_store_recomputes_a_rewritten_wav(tmp_path, caplog):
    from test_data_fixtures import make_corpus, prepare_overrides

    from spiritlm.data.prepare import PrepareConfig, prepare_shards
    from spiritlm.models.hybrid.config import FeatureConfig
    from spiritlm.models.hybrid.features import build_feature_store

    c = make_corpus(tmp_path / "corpus", n=3, max_words=6)
    shards = tmp_path / "shards"
    prepare_shards(load_config(PrepareConfig, None, prepare_overrides(c, shards, "speech.expressive=false")))
    cfg = FeatureConfig(n_mels=16)

    def build(out):
        return build_feature_store([shards / "aligned"], [c["manifest"]], out, cfg, progress=False).feats

    store = tmp_path / "features"
    old = _copy(build(store))
    uid = min(old)
    rewrite_in_place(c["root"] / f"{uid}.wav")
    with caplog.at_level(logging.WARNING):
        new = build(store)
    _assert_only_recomputed(old, new, uid)
    assert "1 cached entries computed again: 1 because their audio changed" in caplog.text
    # what the store now holds is what a fresh build from the new audio writes, byte for byte
    build(tmp_path / "fresh")
    names = sorted(p.name for p in store.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "fresh").iterdir())
    for n in names:
        assert (store / n).read_bytes() == (tmp_path / "fresh" / n).read_bytes(), n


# ---- continuous: the frozen-encoder feature cache --------------------------------------------------------
CONTINUOUS = ["continuous.encoder.conformer.dim=32", "continuous.encoder.conformer.layers=1",
              "continuous.encoder.conformer.heads=2", "continuous.trainable=projector",
              "continuous.train_encoder=false", "continuous.encoder.ctc_weight=0",
              "continuous.data.cache_features=true", "data.seq_len=96", "model.tiny.hidden_size=32",
              "model.tiny.intermediate_size=64", "model.tiny.num_hidden_layers=1"]


def test_continuous_feature_cache_recomputes_a_rewritten_wav(tok_dir, tmp_path, caplog):
    import pyarrow.parquet as pq

    from spiritlm.data.encoders import read_audio
    from spiritlm.models.continuous.config import ContinuousTrainConfig
    from spiritlm.models.continuous.model import build_continuous
    from spiritlm.models.continuous.spec import make_batches

    manifest = _tone_corpus(tmp_path / "corpus")
    cfg = load_config(ContinuousTrainConfig, None, [f"model.tokenizer={tok_dir}", f"run_dir={tmp_path / 'run'}",
                                                    f"continuous.data.manifests=[{manifest}]", *CONTINUOUS])
    m = build_continuous(cfg).eval()
    old = _copy(make_batches(cfg, m, progress=False).cache.feats)
    assert len(old) == 3
    rewrite_in_place(manifest.parent / "u1.wav")
    with caplog.at_level(logging.WARNING):
        cache = make_batches(cfg, m, progress=False).cache
    _assert_only_recomputed(old, cache.feats, "u1")
    assert "1 cached entries computed again: 1 because their audio changed" in caplog.text
    x, lens = m.encoder([read_audio(manifest.parent / "u1.wav")])
    np.testing.assert_allclose(cache.feats["u1"], x[0, : int(lens[0])].float().detach().numpy(), atol=1e-6)

    # a cache written before entries recorded their audio is not trusted: all computed again
    for f in cache.dir.glob("features-*.parquet"):
        pq.write_table(pq.read_table(f).drop_columns(["size", "sha256"]), f)
    rewrite_in_place(manifest.parent / "u2.wav", seed=2)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = make_batches(cfg, m, progress=False).cache
    assert "3 cached entries computed again: 0 because their audio changed since they were cached, 3 because " \
           "the cache did not record their audio" in caplog.text
    assert not np.allclose(again.feats["u2"], cache.feats["u2"])
    assert all(again.inputs[k] is not None for k in again.feats)


# ---- streaming: the feature cache (the continuous one, through the family's spec) and the alignment ------
STREAMING = ["continuous.encoder.conformer.dim=32", "continuous.encoder.conformer.layers=1",
             "continuous.encoder.conformer.heads=2", "continuous.encoder.conformer.subsample=1",
             "continuous.encoder.ctc_weight=0.5", "continuous.trainable=projector",
             "continuous.train_encoder=false", "continuous.projector.stack=2", "continuous.data.cache_features=true",
             "streaming.chunk_s=0.08", "streaming.window=1", "data.seq_len=96", "model.tiny.hidden_size=32",
             "model.tiny.intermediate_size=64", "model.tiny.num_hidden_layers=1"]


def test_streaming_caches_recompute_a_rewritten_wav(tok_dir, tmp_path, caplog):
    from spiritlm.models.continuous.data import read_utterances
    from spiritlm.models.streaming.config import StreamingTrainConfig
    from spiritlm.models.streaming.data import AlignmentCache, align_utterances
    from spiritlm.models.streaming.model import build_streaming
    from spiritlm.models.streaming.spec import make_batches

    manifest = _tone_corpus(tmp_path / "corpus")
    cfg = load_config(StreamingTrainConfig, None, [f"model.tokenizer={tok_dir}", f"run_dir={tmp_path / 'run'}",
                                                   f"continuous.data.manifests=[{manifest}]", *STREAMING])
    m = build_streaming(cfg).eval()
    first = make_batches(cfg, m, progress=False)
    assert first.cache is not None and len(first.cache.feats) == 3
    old = _copy(first.cache.feats)
    rewrite_in_place(manifest.parent / "u0.wav")
    with caplog.at_level(logging.WARNING):
        again = make_batches(cfg, m, progress=False)
    _assert_only_recomputed(old, again.cache.feats, "u0")

    # the alignment cache, as the aligning rank uses it: load(utts) drops what changed
    def utts():
        return read_utterances(cfg.continuous.data, m.tok, m.frames_for, cfg.data.seq_len, "prepend",
                               chars=m.chars)[0]

    adir, ident = tmp_path / "alignment", {"align_model": "test"}
    cache = AlignmentCache(adir, ident)
    assert cache.load(utts()) == 0
    cache.ends.update(align_utterances(utts(), m.encoder, m.ctc, m.tok, m.chars, progress=False))
    assert set(cache.ends) == {"u0", "u1", "u2"}
    cache.save()
    rewrite_in_place(manifest.parent / "u2.wav", seed=3)
    changed_text = [u if u.id != "u1" else type(u)(**{**u.__dict__, "text_ids": u.text_ids[:-1]}) for u in utts()]
    caplog.clear()
    back = AlignmentCache(adir, ident)
    with caplog.at_level(logging.WARNING):
        assert back.load(changed_text) == 1
    assert set(back.ends) == {"u0"}  # u1: other tokens, u2: other audio
    assert "2 cached alignments computed again: 2 because their audio or transcript changed" in caplog.text
    redo = [u for u in changed_text if u.id not in back.ends]
    back.ends.update(align_utterances(redo, m.encoder, m.ctc, m.tok, m.chars, progress=False))
    back.save()
    assert len(back.ends["u1"]) == len(changed_text[1].text_ids)
    assert AlignmentCache(adir, ident).load(changed_text) == 3  # recorded with what they were aligned from
    # an old cache (lines without what they were aligned from) is aligned again, never trusted
    lines = (adir / "alignment.jsonl").read_text().replace(', "input": ', ', "was": ')
    (adir / "alignment.jsonl").write_text(lines)
    assert AlignmentCache(adir, ident).load(changed_text) == 0
    assert AlignmentCache(adir, ident).load() == 3  # a waiting rank reads what the aligning one wrote


# ---- eval: the units file of the benchmark audio ------------------------------------------------------
def test_units_file_skips_a_wav_rewritten_in_place(tmp_path, caplog):
    from spiritlm.eval.model import CachedEncoder
    from spiritlm.eval.testing import FakeSpeechEncoder, write_tone

    root = tmp_path / "bench"
    wavs = [write_tone(root / "a" / f"{i}.wav", 0.3, 200.0 + 50 * i) for i in range(4)]
    enc = CachedEncoder(FakeSpeechEncoder())
    stale = {w: enc(w) for w in wavs}
    assert enc.save_units(tmp_path / "units.npz", root, "enc") == 4
    rewrite_in_place(wavs[2])

    back = CachedEncoder(FakeSpeechEncoder())
    with caplog.at_level(logging.WARNING):
        assert back.load_units(tmp_path / "units.npz", root, "enc") == 3
    assert "1 of 4 audio files changed since their units were written" in caplog.text
    for w in wavs[:2] + wavs[3:]:
        assert np.array_equal(back(w)["hubert"], stale[w]["hubert"])
    assert back.calls == 0
    fresh = back(wavs[2])  # encoded again, from the new audio
    assert back.calls == 1
    assert not np.array_equal(fresh["hubert"], stale[wavs[2]]["hubert"])
    assert np.array_equal(fresh["hubert"], FakeSpeechEncoder()(wavs[2])["hubert"])
    # written again, the file holds the new units, and a reader trusts all four
    assert back.save_units(tmp_path / "units.npz", root, "enc") == 4
    third = CachedEncoder(lambda wav: pytest.fail("a cached file was encoded again"))
    assert third.load_units(tmp_path / "units.npz", root, "enc") == 4
    assert np.array_equal(third(wavs[2])["hubert"], fresh["hubert"])

    # a units file written before entries recorded their audio: not trusted, all encoded again
    with np.load(tmp_path / "units.npz", allow_pickle=False) as z:
        old = {k: z[k] for k in z.files if not k.startswith("file_")}
    np.savez(tmp_path / "old.npz", allow_pickle=False, **old)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert CachedEncoder(FakeSpeechEncoder()).load_units(tmp_path / "old.npz", root, "enc") == 0
    assert "not trusted" in caplog.text
