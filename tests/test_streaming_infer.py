"""Bounded-KV-cache streaming decoding: the same tokens and logits as the full-recompute reference
decoder (decode.py) on a tiny random model, for several windows, with `$` fed back or not; the
cache never holds more than window + 1 chunks; audio streamed in arbitrary blocks decodes like the
whole utterance; audio sources (file, stdin raw PCM / WAV) and their errors."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from spiritlm.config import load_config
from spiritlm.models.streaming.config import StreamingTrainConfig
from spiritlm.models.streaming.decode import greedy_decode_embeddings
from spiritlm.models.streaming.infer import (BoundedCacheDecoder, StreamingTranscriber, audio_blocks,
                                            decode_embeddings, transcribe_offline)
from spiritlm.models.streaming.model import build_streaming
from spiritlm.audio import AudioError

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_speech"
MALFORMED = sorted((REAL / "malformed_audio").glob("*.wav"))

TINY = ["continuous.encoder.kind=conformer", "continuous.encoder.conformer.n_mels=16",
        "continuous.encoder.conformer.dim=32", "continuous.encoder.conformer.layers=1",
        "continuous.encoder.conformer.heads=2", "continuous.encoder.conformer.conv_kernel=5",
        "continuous.projector.kind=mlp", "continuous.projector.stack=2", "continuous.trainable=all",
        "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "model.tiny.num_hidden_layers=2",
        "model.tiny.num_attention_heads=4", "model.tiny.num_key_value_heads=2",
        "streaming.chunk_s=0.32", "streaming.encoder=chunked", "streaming.encoder_left_chunks=1",
        "streaming.max_chunk_tokens=3"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from spiritlm.text_tokenizer import train_sentencepiece

    d = tmp_path_factory.mktemp("tok")
    words = "the cat sat on a mat and dog ran far away under one big red tree".split()
    rng = np.random.default_rng(0)
    train_sentencepiece([" ".join(rng.choice(words, 8)) for _ in range(80)], d, vocab_size=300)
    return d


def tiny_model(tok_dir, tmp_path, *overrides):
    cfg = load_config(StreamingTrainConfig, None, [f"model.tokenizer={tok_dir}", f"run_dir={tmp_path}"]
                      + TINY + list(overrides))
    model = build_streaming(cfg).eval()
    with torch.no_grad():  # a random LM rarely says `$`: a longer `$` row so chunks end both ways
        head = model.lm.get_output_embeddings().weight
        g = torch.Generator().manual_seed(1)
        head[model.eoc_id] += 6 * torch.randn(head.shape[1], generator=g) * head.norm(dim=1).mean() / head.shape[1] ** 0.5
    return model


def _embs(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, model.lm.config.hidden_size, generator=g)


def _sequence(model, emb_NH, chunks, eoc_input):
    """The full sequence the decoder built (embeddings, chunk ids) and the step positions."""
    table = model.lm.get_input_embeddings()
    xs, ch, steps = [], [], []
    spc = model.slots_per_chunk
    for k, toks in enumerate(chunks):
        a = emb_NH[k * spc:(k + 1) * spc]
        xs += list(a)
        ch += [k] * len(a)
        steps.append(len(xs) - 1)
        for t in toks:
            xs.append(table.weight[t])
            ch.append(k)
            steps.append(len(xs) - 1)
        if eoc_input:
            xs.append(table.weight[model.eoc_id])
            ch.append(k)
    return torch.stack(xs)[None], torch.tensor(ch)[None], steps


@pytest.mark.parametrize("window,eoc_input", [(0, False), (1, False), (2, False), (1, True)])
def test_bounded_cache_equals_full_recompute_reference(tok_dir, tmp_path, window, eoc_input):
    model = tiny_model(tok_dir, tmp_path, f"streaming.window={window}", f"streaming.eoc_input={str(eoc_input).lower()}")
    emb = _embs(model, 4 * 9 + 3)  # 9 whole chunks of 4 slots and a partial one
    ref = greedy_decode_embeddings(model, emb)
    got = decode_embeddings(model, emb)
    assert got == ref
    lens = [len(c) for c in got]
    assert 3 in lens and min(lens) < 3  # chunks cut at the limit and chunks ended by `$`
    # logits at every generation step equal the window-masked forward over the whole sequence
    dec = BoundedCacheDecoder(model)
    spc = model.slots_per_chunk
    step_logits = []
    for i in range(0, emb.shape[0], spc):
        dec.feed_chunk(emb[i:i + spc])
        step_logits += dec.last_logits
        assert len(dec.chunk_lens) <= window + 1  # never more than b + 1 chunks held
        assert dec.cache_len() == sum(dec.chunk_lens) == dec.cache.get_seq_length()
    x, ch, steps = _sequence(model, emb, got, eoc_input)
    with torch.no_grad():
        full = model.lm_logits(x, torch.arange(x.shape[1])[None], ch)[0]
    mine = torch.stack(step_logits)
    ref_rows = full[torch.tensor(_step_rows(got, steps))]
    assert torch.allclose(mine, ref_rows, atol=1e-4), (mine - ref_rows).abs().max()


def _step_rows(chunks, steps):
    """Sequence positions whose logits the decoder computed: each chunk's last slot and each of its
    tokens (the logits after the token that hit the limit are computed too)."""
    rows, i = [], 0
    for toks in chunks:
        rows += steps[i:i + 1 + len(toks)]
        i += 1 + len(toks)
    return rows


def test_cache_is_bounded_on_long_input(tok_dir, tmp_path):
    model = tiny_model(tok_dir, tmp_path, "streaming.window=1")
    dec = BoundedCacheDecoder(model)
    sizes = []
    for k in range(40):
        dec.feed_chunk(_embs(model, 4, seed=k))
        sizes.append(dec.cache_len())
    per_chunk_max = 4 + 3  # slots + max_chunk_tokens
    assert max(sizes) <= 2 * per_chunk_max and dec.peak_cache <= 2 * per_chunk_max
    assert dec.pos > 40 * 4  # positions kept growing while the cache did not


def test_streamed_audio_decodes_like_the_whole_utterance(tok_dir, tmp_path):
    model = tiny_model(tok_dir, tmp_path, "streaming.window=1")
    rng = np.random.default_rng(0)
    t = np.arange(int(16000 * 3.3)) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 200 * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    text, chunks = transcribe_offline(model, wav)
    embs, _ = model.audio_embeddings({"wavs": [wav]})
    assert chunks == greedy_decode_embeddings(model, embs[0])
    for block in (1000, 5120, 16000):
        tr = StreamingTranscriber(model)
        res = [r for i in range(0, wav.size, block) for r in tr.push(wav[i:i + block])] + tr.finish()
        assert [r.tokens for r in res] == chunks
        assert "".join(r.text for r in res) == text == tr.text
        assert [r.index for r in res] == list(range(len(chunks)))
        assert all(r.compute_s > 0 and r.state_bytes > 0 for r in res)
        assert res[-1].end_s == pytest.approx(int(model.encoder.num_frames(wav.size)) / 25.0)


def test_full_context_encoder_cannot_stream(tok_dir, tmp_path):
    from spiritlm.config import ConfigError

    model = tiny_model(tok_dir, tmp_path, "streaming.encoder=full")
    with pytest.raises(ConfigError, match="without --stream"):
        StreamingTranscriber(model)


# ---- audio sources -------------------------------------------------------------------------------
def test_stdin_raw_pcm_and_wav_match_the_file(tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(20001) * 3000).astype("<i2")
    f = tmp_path / "a.wav"
    sf.write(f, x, 16000, subtype="PCM_16")
    want = x.astype(np.float32) / 32768
    from_file = np.concatenate(list(audio_blocks(f, block=3000)))
    raw = np.concatenate(list(audio_blocks("-", block=3000, stdin=io.BytesIO(x.tobytes()))))
    wav = np.concatenate(list(audio_blocks("-", block=3000, stdin=io.BytesIO(f.read_bytes()))))
    for got in (from_file, raw, wav):
        assert np.allclose(got, want, atol=1e-6)
    # another rate is resampled as it streams
    sf.write(tmp_path / "b.wav", x, 8000, subtype="PCM_16")
    up = np.concatenate(list(audio_blocks("-", stdin=io.BytesIO((tmp_path / "b.wav").read_bytes()))))
    assert abs(up.size - 2 * x.size) <= 2


@pytest.mark.parametrize("data,match", [(b"", "no audio on stdin"), (b"\x01\x02\x03", "inside a sample frame"),
                                        (b"fLaC" + bytes(20), "compressed audio"),
                                        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "ends before its data chunk")])
def test_bad_stdin_is_refused_with_the_reason(data, match):
    with pytest.raises(AudioError, match=match):
        list(audio_blocks("-", stdin=io.BytesIO(data)))


@pytest.mark.skipif(not MALFORMED, reason="../shared/data/real_speech/malformed_audio is absent")
@pytest.mark.parametrize("bad", MALFORMED, ids=[p.name for p in MALFORMED])
def test_malformed_wavs_refused_from_file_and_stdin(bad):
    why = r"(unreadable or not a supported audio file|implausible sample rate 1092676 Hz|corrupt WAV header|ends before its data chunk)"
    with pytest.raises(AudioError, match=why):
        list(audio_blocks(bad))
    with pytest.raises(AudioError, match=why):
        list(audio_blocks("-", stdin=io.BytesIO(bad.read_bytes())))


# ---- spiritlm transcribe ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tok_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("stream_run")
    model = tiny_model(tok_dir, root, "streaming.window=1")
    model.export_merged(root / "hf")
    rng = np.random.default_rng(1)
    t = np.arange(int(16000 * 2.5)) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 180 * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    import soundfile as sf

    sf.write(root / "a.wav", wav, 16000, subtype="FLOAT")
    return root, model, wav


def test_transcribe_stream_prints_chunks_then_a_summary(exported, capsys, monkeypatch, tmp_path):
    from spiritlm.cli import main

    root, model, wav = exported
    text, chunks = transcribe_offline(model, wav)
    assert main(["transcribe", "--stream", str(root), str(root / "a.wav"), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    lines = [x for x in out if x.startswith("[chunk")]
    assert len(lines) == len(chunks) and "RTF" in lines[0] and " ms" in lines[0]
    assert out[-2].startswith("summary:") and out[-1] == f"transcript: {text}"
    import json

    res = json.loads((tmp_path / "r.json").read_text())
    assert res["text"] == text and res["chunks"] == len(chunks) and len(res["per_chunk"]) == len(chunks)
    # stdin, raw 16-bit PCM: the same chunks (the quantised audio may change a token: compare counts)
    pcm = (np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes()
    monkeypatch.setattr("sys.stdin", type("S", (), {"buffer": io.BytesIO(pcm)})())
    assert main(["transcribe", "--stream", str(root), "-"]) == 0
    assert len([x for x in capsys.readouterr().out.splitlines() if x.startswith("[chunk")]) == len(chunks)
    # whole-utterance mode: the same text
    assert main(["transcribe", str(root / "hf"), str(root / "a.wav")]) == 0
    assert capsys.readouterr().out.strip() == text.strip()


@pytest.mark.skipif(not MALFORMED, reason="../shared/data/real_speech/malformed_audio is absent")
def test_transcribe_refuses_bad_audio_and_bad_run_dirs_in_one_line(exported, capsys, tmp_path):
    from spiritlm.cli import main

    root, _, _ = exported
    for bad in MALFORMED:
        for extra in (["--stream"], []):
            assert main(["transcribe", *extra, str(root), str(bad)]) == 1
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and str(bad) in err[0], err
    assert main(["transcribe", str(tmp_path), str(root / "a.wav")]) == 1
    assert "no model family recognises this directory" in capsys.readouterr().err


def test_export_with_a_chunked_student_streams(exported, tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from spiritlm.models.streaming.model import load_streaming
    from spiritlm.models.streaming.stream_encoder import export_chunked

    root, model, wav = exported
    student = tmp_path / "student"
    student.mkdir()
    state = {k: v + 0.01 for k, v in model.encoder.state_dict().items()}
    save_file(state, student / "encoder.safetensors")
    (student / "distill.json").write_text(json.dumps({"config": {"left_chunks": 2}}))
    out = export_chunked(root, student, tmp_path / "chunked")
    m = load_streaming(out)
    assert m.encoder.left_chunks == 2 and m.scfg.encoder == "chunked"
    for k, v in load_file(student / "encoder.safetensors").items():
        assert torch.equal(m.encoder.state_dict()[k], v)
    tr = StreamingTranscriber(m)
    assert [r.index for r in tr.push(wav) + tr.finish()] == list(range(len(transcribe_offline(m, wav)[1])))
