"""The chunked conformer: chunk-by-chunk with cached left context == the whole sequence under the
chunk mask; nothing after a chunk changes it; the caches stay bounded; it trains (gradients flow)."""

import numpy as np
import pytest
import torch

from spiritlm.config import ConfigError
from spiritlm.models.continuous.config import ConformerConfig
from spiritlm.models.continuous.encoders import ConformerEncoder
from spiritlm.models.streaming.stream_encoder import (ChunkedConformerEncoder, chunk_mask_TT, full_frames,
                                                      stream_all)


def _enc(chunk=4, left=2, subsample=4, kernel=5, seed=0):
    torch.manual_seed(seed)
    c = ConformerConfig(n_mels=16, dim=32, layers=2, heads=4, ffn_mult=2, conv_kernel=kernel, subsample=subsample)
    return ChunkedConformerEncoder(c, chunk_frames=chunk, left_chunks=left).eval()


def _wav(n, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t)) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def test_chunk_mask():
    m = chunk_mask_TT(6, 2, 1)
    want = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0],
                         [0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, want)


@pytest.mark.parametrize("chunk,left,subsample,kernel,n", [(4, 2, 4, 5, 16000 * 2 + 555), (3, 1, 2, 3, 9000),
                                                           (5, 0, 8, 7, 20011), (4, 3, 4, 1, 4000)])
def test_streaming_equals_full_sequence_under_chunk_mask(chunk, left, subsample, kernel, n):
    enc = _enc(chunk, left, subsample, kernel)
    wav = _wav(n)
    full = full_frames(enc, wav)
    assert full.shape[0] == int(enc.num_frames(n))
    for piece in (1, 777, 160 * 4 * chunk * subsample // 4, n):  # arbitrary pieces, a chunk, all at once
        if piece == 1 and n > 5000:
            continue
        got = stream_all(enc, wav, piece)
        assert got.shape == full.shape
        assert torch.allclose(got, full, atol=1e-5), (piece, (got - full).abs().max())


def test_frames_depend_on_the_past_and_their_chunk_only():
    enc = _enc(chunk=4, left=1)
    wav = _wav(24000)
    full = full_frames(enc, wav)
    cut = 4 * 4 * 160 * 3  # samples of 3 whole chunks (+ the window's tail)
    prefix = full_frames(enc, wav[: cut + 240])
    assert prefix.shape[0] == 12
    assert torch.allclose(prefix, full[:12], atol=1e-5)
    changed = wav.copy()
    changed[cut + 400:] = 0.0
    assert torch.allclose(full_frames(enc, changed)[:12], full[:12], atol=1e-5)


def test_cache_is_bounded_and_batching_is_exact():
    enc = _enc(chunk=4, left=2)
    st = enc.stream_state()
    wav = _wav(16000 * 6)
    for i in range(0, len(wav), 4000):
        enc.stream_step(st, wav[i:i + 4000])
        assert st.cache_frames() <= 2 * 4
        assert st.pending.numel() < enc.chunk_samples() + 400
    assert st.cache_frames() == 8
    # padded batch rows == each waveform alone
    wavs = [_wav(9000, 1), _wav(16000, 2)]
    x, n = enc(wavs)
    for i, w in enumerate(wavs):
        assert torch.allclose(x[i, : int(n[i])], full_frames(enc, w), atol=1e-5)


def test_same_parameters_as_the_full_context_conformer_and_it_trains():
    c = ConformerConfig(n_mels=16, dim=32, layers=1, heads=4, ffn_mult=2, conv_kernel=3)
    full = ConformerEncoder(c)
    chunked = ChunkedConformerEncoder(c, chunk_frames=4, left_chunks=2)
    chunked.load_state_dict(full.state_dict())  # same keys and shapes
    chunked.train()
    x, n = chunked([_wav(8000)])
    x[0, : int(n[0])].pow(2).mean().backward()
    assert all(p.grad is not None for p in chunked.blocks[0].parameters())
    with pytest.raises(ValueError, match="eval"):
        chunked.stream_step(chunked.stream_state(), _wav(100))
    with pytest.raises(ConfigError, match="bounded left context"):
        ChunkedConformerEncoder(c, chunk_frames=4, left_chunks=-1)


def test_flushed_stream_refuses_more_audio():
    enc = _enc()
    st = enc.stream_state()
    enc.stream_step(st, _wav(3000))
    enc.stream_flush(st)
    with pytest.raises(ValueError, match="flushed"):
        enc.stream_step(st, _wav(10))


def test_distil_from_the_full_context_conformer(tmp_path):
    """A few steps of frame distillation lower the held-out frame error of the chunked student
    (started from the teacher's weights)."""
    import json

    import soundfile as sf
    from safetensors.torch import save_file

    from spiritlm.manifest import Utterance, write_manifest
    from spiritlm.models.streaming.stream_encoder import DistillConfig, distill

    c = ConformerConfig(n_mels=16, dim=32, layers=1, heads=4, ffn_mult=2, conv_kernel=5)
    torch.manual_seed(0)
    teacher = ConformerEncoder(c)
    t_dir = tmp_path / "teacher"
    t_dir.mkdir()
    save_file(teacher.state_dict(), t_dir / "encoder.safetensors")
    (t_dir / "continuous.json").write_text(json.dumps({"continuous": {"encoder": {
        "kind": "conformer", "conformer": {"n_mels": 16, "dim": 32, "layers": 1, "heads": 4, "ffn_mult": 2,
                                           "conv_kernel": 5}}}}))
    (tmp_path / "audio").mkdir()
    utts = []
    for i in range(8):
        sf.write(tmp_path / "audio" / f"{i}.wav", _wav(8000 + 1000 * i, seed=i), 16000)
        utts.append(Utterance(f"u{i}", f"audio/{i}.wav", (8000 + 1000 * i) / 16000, 16000, "x", "s",
                              split="heldout" if i >= 6 else "train"))
    write_manifest(tmp_path / "m.jsonl", utts)
    cfg = DistillConfig(teacher=str(t_dir), manifest=str(tmp_path / "m.jsonl"), out=str(tmp_path / "student"),
                        chunk_frames=[4, 8], left_chunks=1, steps=12, batch=3, lr=3e-3)
    rep = distill(cfg, progress=False)
    for k in ("4", "8"):
        b, a = rep["heldout_relative_error_before"][int(k)], rep["heldout_relative_error_after"][int(k)]
        assert a < b, (k, b, a)
    assert (tmp_path / "student" / "encoder.safetensors").is_file()
    assert rep["train_utterances"] == 6 and rep["heldout_utterances"] == 2
