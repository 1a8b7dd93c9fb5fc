"""Issue 32: `generate` is bounded by the model's context (API and CLI) and prints its output as it
is produced; `generate`, `eval` and `transcribe` refuse what a family cannot do, and out-of-range
arguments, in one line before any work; a WAV whose header declares 0 data bytes reads the same
from a file as from stdin; a run with checkpoints but no export says how to get one."""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from spiritlm.audio import AudioError, load_audio, probe_audio
from spiritlm.audio_blocks import audio_blocks
from spiritlm.cli import main
from spiritlm.eval.generate import generate, generate_batch, output_text
from spiritlm.eval.model import load_model
from spiritlm.eval.testing import make_tiny_model_dir, write_tone
from test_streaming_infer import exported, tiny_model, tok_dir  # noqa: F401  (the tiny streaming export)

CTX = 48  # max_position_embeddings of the tiny unit LM below


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    """A tiny unit LM whose config says it has CTX positions."""
    d = make_tiny_model_dir(tmp_path_factory.mktemp("bounds") / "model")
    cfg = json.loads((d / "config.json").read_text())
    cfg["max_position_embeddings"] = CTX
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="module")
def loaded(unit):
    return load_model(unit)


def _no_loading(monkeypatch, family: str) -> None:
    """The family's loader fails the test: a refusal must come before any model is loaded."""
    from spiritlm.models import spec as registry

    def boom(*a, **k):
        raise AssertionError(f"the {family} model was loaded before the arguments were checked")

    monkeypatch.setitem(registry._REGISTRY, family, dataclasses.replace(registry.model_spec(family), load=boom))


def _one_line(capsys) -> str:
    """The one line on stderr (transformers' own "Loading weights" progress bar aside)."""
    err = [x for x in capsys.readouterr().err.strip().splitlines() if not x.startswith("Loading weights")]
    assert len(err) == 1, err
    return err[0]


# ---- 1. generate: bounded by the context, streamed ---------------------------------------------------
def test_api_clamps_max_new_tokens_to_the_context_with_one_line(loaded, capsys):
    model, tok = loaded
    prompt = tok.encode_segments([("text", "the cat")], trailing_marker="speech")
    capsys.readouterr()
    outs = generate(model, tok, None, "speech", prompt_ids=prompt, do_sample=False, max_new_tokens=200)
    assert sum(len(o.token_ids) for o in outs) == CTX - len(prompt)  # this model never says EOS here
    line = _one_line(capsys)
    assert f"max_new_tokens=200 clamped to {CTX - len(prompt)}" in line and f"{CTX} positions" in line
    # within the context: no message, the budget as given
    generate(model, tok, None, "speech", prompt_ids=prompt, do_sample=False, max_new_tokens=5)
    assert capsys.readouterr().err == ""


def test_batches_clamp_each_prompt_and_equal_one_at_a_time(loaded, capsys):
    model, tok = loaded
    prompts = [tok.encode_segments([("text", t)], trailing_marker="speech")
               for t in ("the cat", "a small bird sang in the garden", "she")]
    single = [generate(model, tok, None, "speech", prompt_ids=p, do_sample=False, max_new_tokens=100)
              for p in prompts]
    capsys.readouterr()
    batched = generate_batch(model, tok, prompts, "speech", do_sample=False, max_new_tokens=100, batch_size=2)
    assert [[o.token_ids for o in x] for x in batched] == [[o.token_ids for o in x] for x in single]
    assert [sum(len(o.token_ids) for o in x) for x in batched] == [CTX - len(p) for p in prompts]
    assert "clamped for 3 of 3 prompts" in _one_line(capsys)


def test_a_prompt_that_fills_the_context_is_refused(loaded):
    model, tok = loaded
    long = tok.encode_segments([("text", "the cat sat on the mat " * 12)], trailing_marker="text")
    assert len(long) >= CTX
    with pytest.raises(ValueError, match=f"fills the model's context of {CTX} positions"):
        generate(model, tok, None, "text", prompt_ids=long, max_new_tokens=5)
    short = tok.encode_segments([("text", "the cat")], trailing_marker="text")
    with pytest.raises(ValueError, match="prompt 1 is"):
        generate_batch(model, tok, [short, long], "text", max_new_tokens=5)


def test_cli_prints_tokens_as_they_are_made_and_stays_in_the_context(unit, loaded, monkeypatch, capsys):
    import transformers

    _, tok = loaded
    calls: list[int] = []
    forward = transformers.LlamaForCausalLM.forward

    def counted(self, *a, **kw):  # the run went on for minutes: fail fast instead
        calls.append(1)
        if len(calls) > CTX + 2:
            raise AssertionError(f"{len(calls)} forward passes: past the model's {CTX} positions")
        return forward(self, *a, **kw)

    class Recorder(io.StringIO):  # how many forward passes had run when each piece was printed
        def __init__(self):
            super().__init__()
            self.at: list[int] = []

        def write(self, s):
            if s:
                self.at.append(len(calls))
            return super().write(s)

    monkeypatch.setattr(transformers.LlamaForCausalLM, "forward", counted)
    for modality, n in (("speech", 10**9), ("text", 12)):
        calls.clear()
        out = Recorder()
        with monkeypatch.context() as m:
            m.setattr(sys, "stdout", out)
            assert main(["generate", "--model", str(unit), "--text", "the cat", "--output-modality", modality,
                         "--greedy", "--max-new-tokens", str(n), "--device", "cpu"]) == 0
        printed = out.getvalue()
        prompt = tok.encode_segments([("text", "the cat")], trailing_marker=modality)
        if modality == "speech":
            assert printed.startswith("[speech] [Hu") and printed.count("\n") == 1
            assert printed.count("[Hu") == CTX - len(prompt)
            assert f"max_new_tokens={n} clamped to {CTX - len(prompt)}" in _one_line(capsys)
        else:  # the streamed line is the decoded text, as the API returns it
            model, _ = loaded
            ref = generate(model, tok, [("text", "the cat")], "text", do_sample=False, max_new_tokens=n)
            assert printed == f"[text] {output_text(ref)}\n"
        # printed while generating: pieces at many different points, the first long before the end
        assert len(set(out.at)) >= 5 and out.at[0] < len(calls) // 2, out.at


# ---- 2. refusals from the family's capabilities, before any work --------------------------------------
@pytest.fixture(scope="module")
def hybrid_export(unit, tmp_path_factory):
    from spiritlm.config import load_config
    from spiritlm.models.hybrid.config import HybridTrainConfig
    from spiritlm.models.hybrid.model import build_hybrid

    root = tmp_path_factory.mktemp("hyb")
    cfg = load_config(HybridTrainConfig, None, [
        f"run_dir={root}", f"model.tokenizer={unit}", "model.pad_multiple=64", "model.tiny.hidden_size=32",
        "model.tiny.intermediate_size=64", "model.tiny.num_hidden_layers=1", "model.tiny.num_attention_heads=2",
        "model.tiny.num_key_value_heads=2", "model.tiny.max_position_embeddings=256", "data.seq_len=128",
        "hybrid.features.n_mels=16", "hybrid.projector.dim=16"])
    return build_hybrid(cfg).save(root / "hf", str(unit))


@pytest.fixture(scope="module")
def continuous_export(tmp_path_factory):
    from spiritlm.config import load_config
    from spiritlm.models.continuous.config import ContinuousTrainConfig
    from spiritlm.models.continuous.data import synthetic_utterances
    from spiritlm.models.continuous.model import build_continuous
    from spiritlm.text_tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("cont")
    train_sentencepiece([t for _, t, _ in synthetic_utterances(60)], root / "tok", vocab_size=300)
    cfg = load_config(ContinuousTrainConfig, "train/continuous_tiny.toml",
                      [f"model.tokenizer={root / 'tok'}", f"run_dir={root}", "continuous.placement=placeholder"])
    return build_continuous(cfg).export_merged(root / "hf")


@pytest.fixture(scope="module")
def streaming_export(exported):
    return exported[0] / "hf"


@pytest.mark.parametrize("family,instead", [
    ("hybrid", "`spiritlm eval RECIPE --model DIR`"),
    ("continuous", "`spiritlm transcribe DIR AUDIO`"),
    ("streaming", "`spiritlm transcribe --stream DIR AUDIO`"),
])
def test_generate_refuses_a_family_that_cannot_naming_what_it_can(request, family, instead, monkeypatch, capsys):
    d = request.getfixturevalue(f"{family}_export")
    _no_loading(monkeypatch, family)
    capsys.readouterr()
    assert main(["generate", "--model", str(d), "--text", "the cat", "--device", "cpu"]) == 1
    line = _one_line(capsys)
    assert f"{d}: a {family} model cannot generate" in line and instead in line and "unit_lm" in line, line


def test_eval_refuses_a_streaming_export_instead_of_scoring_it(streaming_export, tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "eval.toml"
    recipe.write_text("")
    _no_loading(monkeypatch, "streaming")
    capsys.readouterr()
    assert main(["eval", str(recipe), "--model", str(streaming_export), "--out", str(tmp_path / "out")]) == 1
    line = _one_line(capsys)
    assert "a streaming model offers no evaluation task" in line and str(streaming_export) in line
    assert "spiritlm transcribe --stream" in line  # what it can do instead
    assert not (tmp_path / "out").exists()  # refused before anything is written there


# ---- 3. transcribe / generate arguments, before any work ----------------------------------------------
@pytest.fixture(scope="module")
def full_encoder_export(tok_dir, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("full_run")
    tiny_model(tok_dir, root, "streaming.encoder=full").export_merged(root / "hf")
    return root


def test_stream_on_a_full_context_encoder_is_the_config_error(full_encoder_export, exported, capsys):  # noqa: F811
    wav = exported[0] / "a.wav"
    capsys.readouterr()
    assert main(["transcribe", "--stream", str(full_encoder_export), str(wav)]) == 1
    assert "cannot stream: transcribe without --stream" in _one_line(capsys)
    assert main(["transcribe", str(full_encoder_export), str(wav)]) == 0  # what the message says works


@pytest.mark.parametrize("flags,expected", [
    (["--stream", "--window", "-1"], "--window -1: use an integer >= 0"),
    (["--window", "-2"], "--window -2: use an integer >= 0"),
    (["--stream", "--block-ms", "0"], "--block-ms 0: use a number of milliseconds from 1 to 60000"),
    (["--stream", "--block-ms", "nan"], "--block-ms nan: use a number of milliseconds from 1 to 60000"),
    (["--stream", "--max-chunk-tokens", "0"], "--max-chunk-tokens 0: use an integer >= 1"),
    (["--max-new-tokens", "-5"], "--max-new-tokens -5: use an integer >= 1"),
    (["--stream", "--json", "{tmp}/missing/r.json"], "the folder {tmp}/missing does not exist"),
    (["--json", "{tmp}"], "--json {tmp}: a folder"),
])
def test_transcribe_refuses_out_of_range_arguments_before_any_work(exported, flags, expected, monkeypatch,  # noqa: F811
                                                                   capsys, tmp_path):
    root = exported[0]
    _no_loading(monkeypatch, "streaming")
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    capsys.readouterr()
    assert main(["transcribe", *flags, str(root), str(root / "a.wav")]) == 1
    assert expected.replace("{tmp}", str(tmp_path)) in _one_line(capsys)


def test_decoder_api_refuses_window_and_cap_out_of_range(tok_dir, tmp_path):  # noqa: F811
    from spiritlm.models.streaming.decode import greedy_decode_embeddings
    from spiritlm.models.streaming.infer import BoundedCacheDecoder, StreamingTranscriber

    model = tiny_model(tok_dir, tmp_path)
    with pytest.raises(ValueError, match="window=-1: use an integer >= 0"):
        BoundedCacheDecoder(model, window=-1)
    with pytest.raises(ValueError, match="max_chunk_tokens=0: use an integer >= 1"):
        StreamingTranscriber(model, max_chunk_tokens=0)
    with pytest.raises(ValueError, match="max_chunk_tokens=-3"):
        greedy_decode_embeddings(model, torch.zeros(4, model.lm.config.hidden_size), max_chunk_tokens=-3)


@pytest.mark.parametrize("flags,expected", [
    (["--speech-encoder-arg", "directory"], "--speech-encoder-arg directory: give KEY=VALUE"),
    (["--output-modality", "speech", "--audio-out", "{tmp}/a.wav", "--vocoder", "{tmp}/nope"],
     "--vocoder {tmp}/nope: no such directory"),
    (["--device", "tpu"], "--device tpu: use auto, cpu, cuda or cuda:N"),
])
def test_generate_refuses_bad_options_before_loading(unit, flags, expected, monkeypatch, capsys, tmp_path):
    _no_loading(monkeypatch, "unit_lm")
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    capsys.readouterr()
    assert main(["generate", "--model", str(unit), "--text", "the cat", *flags]) == 1
    assert expected.replace("{tmp}", str(tmp_path)) in _one_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_generate_refuses_cuda_without_a_device(unit, monkeypatch, capsys):
    _no_loading(monkeypatch, "unit_lm")
    capsys.readouterr()
    assert main(["generate", "--model", str(unit), "--text", "a", "--device", "cuda"]) == 1
    assert "no CUDA device here; use --device cpu" in _one_line(capsys)


# ---- 4. a WAV whose header declares 0 data bytes ------------------------------------------------------
def _wav_declaring(path, x, declared: int):
    buf = io.BytesIO()
    sf.write(buf, x, 16000, subtype="PCM_16", format="WAV")
    b = bytearray(buf.getvalue())
    i = b.find(b"data")
    b[i + 4:i + 8] = struct.pack("<I", declared)
    path.write_bytes(bytes(b))
    return path


def test_a_wav_declaring_zero_data_bytes_reads_the_same_from_a_file_and_stdin(tmp_path):
    x = (np.random.default_rng(0).standard_normal(8000) * 3000).astype("<i2")
    f = _wav_declaring(tmp_path / "streamed.wav", x, 0)  # what a writer that cannot seek back leaves
    want = x.astype(np.float32) / 32768
    from_stdin = np.concatenate(list(audio_blocks("-", block=3000, stdin=io.BytesIO(f.read_bytes()))))
    from_file = np.concatenate(list(audio_blocks(f, block=3000)))
    np.testing.assert_array_equal(from_stdin, want)
    np.testing.assert_array_equal(from_file, want)
    np.testing.assert_array_equal(load_audio(f), want)
    info = probe_audio(f)
    assert (info.frames, info.sample_rate, info.channels) == (8000, 16000, 1)
    # nothing after the header: empty audio, the same words on every path
    e = _wav_declaring(tmp_path / "empty.wav", x[:0], 0)
    reasons = set()
    for read in (lambda: list(audio_blocks(e)), lambda: list(audio_blocks("-", stdin=io.BytesIO(e.read_bytes()))),
                 lambda: load_audio(e), lambda: probe_audio(e)):
        with pytest.raises(AudioError) as err:
            read()
        reasons.add(err.value.reason)
    assert reasons == {"empty audio (0 samples)"}
    # a partial sample frame at the end: one reason from a file and from stdin
    odd = tmp_path / "odd.wav"
    odd.write_bytes(f.read_bytes() + b"\x01")
    reasons = set()
    for read in (lambda: list(audio_blocks(odd)), lambda: list(audio_blocks("-", stdin=io.BytesIO(odd.read_bytes()))),
                 lambda: load_audio(odd)):
        with pytest.raises(AudioError) as err:
            read()
        reasons.add(err.value.reason)
    assert reasons == {"the audio ends inside a sample frame (1 stray bytes of 2): truncated audio"}


def test_transcribe_reads_a_wav_declaring_zero_data_bytes(exported, tmp_path, capsys):  # noqa: F811
    root, _, wav = exported
    x = (np.clip(wav, -1, 1) * 32767).astype("<i2")
    normal = tmp_path / "normal.wav"
    sf.write(normal, x, 16000, subtype="PCM_16")
    streamed = _wav_declaring(tmp_path / "streamed.wav", x, 0)
    assert main(["transcribe", str(root), str(normal)]) == 0
    want = capsys.readouterr().out
    assert main(["transcribe", str(root), str(streamed)]) == 0
    assert capsys.readouterr().out == want


# ---- 5. a run with checkpoints but no export ---------------------------------------------------------
def test_a_run_with_checkpoints_but_no_export_says_how_to_get_one(tmp_path, capsys):
    run = tmp_path / "stream_run"
    (run / "checkpoints" / "step_00000004").mkdir(parents=True)
    (run / "checkpoints" / "step_00000004" / "trainer_state.json").write_text("{}")
    (run / "checkpoints" / "latest").write_text("step_00000004")
    (run / "config.yaml").write_text("model_type: streaming\n")
    wav = write_tone(tmp_path / "a.wav", 0.5)
    for argv in (["transcribe", str(run), str(wav)], ["transcribe", "--stream", str(run), str(wav)],
                 ["generate", "--model", str(run), "--text", "a"]):
        assert main(argv) == 1
        line = _one_line(capsys)
        assert f"{run}: a training run with checkpoints (latest step_00000004) but no export yet" in line
        assert f"spiritlm train {run / 'config.yaml'}" in line and "checkpoint.export_hf=true" in line


def test_fewshot_prompts_longer_than_the_context_drop_their_earliest_shots(loaded, tmp_path):
    """The suite's few-shot ASR builds prompts from 10 shots by default; on a model with a short
    context the earliest shots are dropped until prompt + answer fit (never generating past the
    positions the model was built for, and never refusing the evaluation), and the report says so."""
    from spiritlm.eval.fewshot import run_asr
    from spiritlm.eval.testing import FakeSpeechEncoder

    model, tok = loaded
    rows = []
    for i in range(4):
        w = write_tone(tmp_path / f"{i}.wav", 0.4, 200.0 + 40 * i)  # ~10 HuBERT units each
        rows.append(json.dumps({"audio_path": str(w), "text": f"word {i}"}))
    manifest = tmp_path / "asr.jsonl"
    manifest.write_text("\n".join(rows) + "\n")
    res = run_asr(manifest, model, tok, FakeSpeechEncoder(), shots=manifest, n_shots=3, max_new_tokens=8, max_items=2)
    assert res["complete"] and res["n"] == 2 and res["shots"] == 3
    assert res["shots_used"]["min"] < 3  # 3 shots + the item do not fit in 48 - 8 positions
    # a context that holds every shot: the prompts are those of before (no shots_used in the report)
    long = run_asr(manifest, model, tok, FakeSpeechEncoder(), shots=manifest, n_shots=1, max_new_tokens=2,
                   max_items=1)
    assert "shots_used" not in long


def test_the_report_says_when_fewshot_prompts_were_cut_to_the_context():
    from spiritlm.eval.report import markdown_table

    res = {"asr": {"ASR": {"task": "asr", "shots": 10, "shots_used": {"min": 7, "mean": 8.5}, "n": 12,
                           "complete": True, "wer": 0.5}}}
    assert "ASR (10-shot, as few as 7 to fit the context)" in markdown_table(res)
