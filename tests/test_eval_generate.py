"""Modality-restricted generation never leaves its token range; the CLI; STSP / few-shot helpers."""

import math
import random
import numpy as np

import pytest

torch = pytest.importorskip("torch")

from spiritlm.eval.generate import ModalityMask, allowed_ids, generate, split_segments  # noqa: E402
from spiritlm.eval.model import load_model  # noqa: E402
from spiritlm.eval.stsp import LexiconSentimentClassifier, fewshot_prefix  # noqa: E402
from spiritlm.eval.testing import make_tiny_model_dir  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = make_tiny_model_dir(tmp_path_factory.mktemp("gen") / "model")
    model, tok = load_model(d)
    return d, model, tok


@pytest.mark.parametrize("modality", ["text", "speech"])
def test_generation_stays_in_modality(tiny, modality):
    _, model, tok = tiny
    L = tok.layout
    hu = L.streams["hubert"]
    for seed in range(3):
        outs = generate(model, tok, [("text", "the cat"), ("speech", "[Hu3][Hu4]")], modality,
                        max_new_tokens=40, temperature=1.5, top_p=1.0, seed=seed)
        ids = [i for o in outs for i in o.token_ids]
        assert all(o.content_type == modality for o in outs)
        if modality == "text":
            assert all(i < L.base_vocab_size and i != tok.bos_id for i in ids)
            assert all(isinstance(o.content, str) for o in outs)
        else:
            assert all(hu.offset <= i < hu.offset + hu.size for i in ids)
            assert all(set(o.content) == {"hubert"} for o in outs)


def test_mask_excludes_padding_rows_and_other_streams(tiny):
    _, model, tok = tiny
    L = tok.layout
    V = model.config.vocab_size
    assert V > L.vocab_size  # padded embedding rows exist in the fixture
    scores = torch.zeros(1, V)
    m = ModalityMask(allowed_ids(tok, "speech", has_pitch=True))(None, scores)
    ok = torch.isfinite(m[0]).nonzero()[:, 0].tolist()
    pi, st = L.streams["pitch"], L.streams["style"]
    assert pi.offset in ok and st.offset not in ok and L.vocab_size not in ok and tok.eos_id in ok
    arb = allowed_ids(tok, "arbitrary")
    assert arb[L.text_id] and arb[L.speech_id] and not arb[tok.bos_id]


def test_arbitrary_splits_segments(tiny):
    _, model, tok = tiny
    L = tok.layout
    hu = L.streams["hubert"].offset
    segs = split_segments(tok, [5, 6, L.speech_id, hu + 1, hu + 2, L.text_id, 7], "text")
    assert segs == [("text", [5, 6]), ("speech", [hu + 1, hu + 2]), ("text", [7])]
    outs = generate(model, tok, [("text", "the cat")], "arbitrary", max_new_tokens=30, temperature=2.0, seed=1)
    for o in outs:
        assert all((i < L.base_vocab_size) == (o.content_type == "text") for i in o.token_ids)


def test_greedy_is_deterministic_and_release_style_inputs(tiny):
    _, model, tok = tiny

    class GI:  # the release's GenerationInput(content=..., content_type=ContentType.TEXT)
        def __init__(self, content, content_type):
            self.content, self.content_type = content, content_type

    a = generate(model, tok, [GI("the dog", "TEXT")], "text", do_sample=False, max_new_tokens=8)
    b = generate(model, tok, [("text", "the dog")], "text", do_sample=False, max_new_tokens=8)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    with pytest.raises(ValueError, match="no speech encoder"):
        generate(model, tok, [("speech", "x.wav")], "text")


def test_cli_generate(tiny, capsys):
    from spiritlm.cli import main

    d, _, _ = tiny
    rc = main(["generate", "--model", str(d), "--text", "the cat", "--speech", "[Hu1][Hu2]",
               "--output-modality", "speech", "--max-new-tokens", "5", "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.startswith("[speech] [Hu")


def test_fewshot_prefix_classes_and_lexicon():
    pool = [{"id": i, "prompt": f"[Text]p{i}", "generation": f" g{i}", "sentiment": s}
            for i, s in enumerate(["positive", "negative", "neutral"] * 4)]
    pre = fewshot_prefix(pool, 7, random.Random(0), exclude_id=0)
    lines = pre.strip().split("\n")
    assert len(lines) == 3 * math.ceil(7 / 3) and "[Text]p0 g0" not in lines
    clf = LexiconSentimentClassifier()
    assert clf("what a wonderful day") == "positive" or clf("what a wonderful day") in ("neutral",)
    assert clf("the table is near the door") == "neutral"


def test_wer_normalisation():
    from spiritlm.eval.fewshot import cer, normalize_text, wer

    assert normalize_text("Hello, World!  It's") == "hello world it's"
    assert wer(["The cat sat."], ["the cat sat"]) == 0.0
    assert wer(["a b c d"], ["a b x d"]) == pytest.approx(0.25)
    assert cer(["abcd"], ["abxd"]) == pytest.approx(0.25)


def test_batched_greedy_equals_single(tiny):
    from spiritlm.eval.generate import generate_batch

    _, model, tok = tiny
    prompts = [tok.encode_segments([("text", t)], trailing_marker="text") for t in
               ("the cat", "a small bird sang in the garden", "she")]
    single = [generate(model, tok, None, "text", prompt_ids=p, do_sample=False, max_new_tokens=6)
              for p in prompts]
    batched = generate_batch(model, tok, prompts, "text", do_sample=False, max_new_tokens=6)
    assert [[o.token_ids for o in x] for x in batched] == [[o.token_ids for o in x] for x in single]


def test_tts_and_stsp_speech_outputs_with_hooks(tiny, tmp_path):
    import json

    from spiritlm.eval.fewshot import run_tts
    from spiritlm.eval.model import CachedEncoder
    from spiritlm.eval.stsp import run_stsp
    from spiritlm.eval.testing import FakeSpeechEncoder, write_tone

    _, model, tok = tiny
    recs = []
    for k, (t, s) in enumerate([("a good day", "positive"), ("a bad day", "negative"), ("a day", "neutral")]):
        write_tone(tmp_path / f"{k}.wav", 0.2, 300 + 50 * k)
        recs.append({"id": k, "wav_path": f"{k}.wav", "audio_path": f"{k}.wav", "asr": t, "text": t,
                     "sentiment": s, "split": "test"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    enc = CachedEncoder(FakeSpeechEncoder())
    vocoder = lambda units: np.zeros(160 * len(units["hubert"]), np.float32)  # noqa: E731
    heard = []
    asr = lambda wav: heard.append(len(wav)) or "a day"  # noqa: E731
    r = run_tts(tmp_path / "m.jsonl", model, tok, enc, vocoder, asr, n_shots=1, max_new_tokens=8)
    assert r["n"] == 3 and r["complete"] and 0 <= r["cer"] and heard
    assert run_tts(tmp_path / "m.jsonl", model, tok, enc, None, asr)["complete"] is False
    s = run_stsp("S2S", tmp_path / "m.jsonl", model, tok, enc, speech_classifier=lambda wav: "neutral",
                 vocoder=vocoder, temperature=1.0, max_new_tokens=10)
    assert s["n"] == 3 and all(i["output"].startswith("[Hu") or i["pred"] is None for i in s["items"])


class _SwitchesAfter(torch.nn.Module):
    """Wraps a model so that from its ``k``-th decoding step on, ``token`` wins by a mile."""

    def __init__(self, inner, token: int, k: int):
        super().__init__()
        self.inner, self.token, self.k, self.steps = inner, token, k, 0

    def forward(self, **kw):
        out = self.inner(**kw)
        if kw["input_ids"].shape[1] == 1:  # one decoding step (the prompt is longer)
            self.steps += 1
        if self.steps >= self.k:
            out.logits[..., self.token] += 1e4
        return out


@pytest.mark.parametrize("n_prompts", [1, 2])
def test_stop_at_switch_ends_the_answer_at_the_other_modality_marker(tiny, n_prompts):
    from spiritlm.eval.generate import generate_batch

    _, model, tok = tiny
    prompts = [tok.encode_segments([("speech", "[Hu3][Hu4]")], trailing_marker="text")] * n_prompts
    # the marker is what the model wants from step 3 on: with stop_at_switch the answer ends there
    outs = generate_batch(_SwitchesAfter(model, tok.layout.speech_id, 3), tok, prompts, "text",
                          do_sample=False, max_new_tokens=12, stop_at_switch=True)
    assert [len(o[0].token_ids) for o in outs] == [3] * n_prompts
    # without it the marker stays masked and the model runs on to max_new_tokens
    outs = generate_batch(_SwitchesAfter(model, tok.layout.speech_id, 3), tok, prompts, "text",
                          do_sample=False, max_new_tokens=12)
    ids = [i for o in outs for seg in o for i in seg.token_ids]
    assert len(ids) == 12 * n_prompts and tok.layout.speech_id not in ids
    with pytest.raises(ValueError, match="stop_at_switch"):
        generate_batch(model, tok, prompts, "arbitrary", stop_at_switch=True)


# ---- issue 19: bad generate arguments are clear errors, before any work --------------------
def test_cli_generate_wav_without_encoder_argument_is_a_clear_error(tiny, tmp_path, capsys):
    from spiritlm.cli import main
    from spiritlm.eval.testing import write_tone

    d, _, _ = tiny
    wav = write_tone(tmp_path / "a.wav", 0.3)
    rc = main(["generate", "--model", str(d), "--speech", str(wav), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "--speech-encoder-arg directory=" in err and "Traceback" not in err
    rc = main(["generate", "--model", str(d), "--speech", str(tmp_path / "missing.wav"), "--device", "cpu"])
    assert rc == 1 and "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("flags,expected", [
    (["--temperature", "-0.5"], "use a number >= 0"),
    (["--top-p", "5"], "(0, 1]"),
    (["--top-p", "0"], "(0, 1]"),
    (["--max-new-tokens", "-3"], "integer >= 1"),
    (["--max-new-tokens", "0"], "integer >= 1"),
])
def test_cli_generate_refuses_sampling_settings_out_of_range(tiny, capsys, flags, expected):
    from spiritlm.cli import main

    d, _, _ = tiny
    rc = main(["generate", "--model", str(d), "--text", "the cat", "--device", "cpu", *flags])
    assert rc == 1 and expected in capsys.readouterr().err


def test_generate_api_refuses_sampling_settings_out_of_range(tiny):
    _, model, tok = tiny
    for kw in ({"temperature": -1.0}, {"top_p": 1.5}, {"max_new_tokens": -3}):
        with pytest.raises(ValueError, match="use"):
            generate(model, tok, [("text", "the cat")], "text", **kw)
    from spiritlm.eval.generate import generate_batch

    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        generate_batch(model, tok, [[tok.bos_id]], "text", top_p=0.0)


# ---- --audio-out: generated speech through a vocoder -----------------------------------------
def _tiny_vocoder(out):
    from spiritlm.vocoder.model import GeneratorCfg, UnitHiFiGAN
    from spiritlm.vocoder.vocoder import Vocoder

    torch.manual_seed(0)
    cfg = GeneratorCfg(num_embeddings=501, embedding_dim=4, upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8],
                       upsample_initial_channel=8, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
                       code_hop_size=16, multispkr=True, num_speakers=2,
                       dur_predictor_params={"encoder_embed_dim": 4, "var_pred_hidden_dim": 4,
                                             "var_pred_kernel_size": 3, "var_pred_dropout": 0.5})
    return Vocoder(UnitHiFiGAN(cfg), ["x", "y"]).save(out)


def test_cli_generate_audio_out_end_to_end(tiny, tmp_path, capsys):
    import soundfile as sf

    from spiritlm.cli import main
    from spiritlm.vocoder import Vocoder

    d, _, tok = tiny
    vdir = _tiny_vocoder(tmp_path / "voc")
    out = tmp_path / "gen.wav"
    args = ["generate", "--model", str(d), "--text", "the cat", "--speech", "[Hu1][Hu2]", "--output-modality",
            "speech", "--max-new-tokens", "6", "--device", "cpu", "--seed", "3"]
    assert main(args + ["--audio-out", str(out), "--vocoder", str(vdir)]) == 0
    printed = capsys.readouterr().out
    string = printed.split("[speech] ", 1)[1].splitlines()[0]
    wav, sr = sf.read(str(out), dtype="float32")
    ref, _ = Vocoder.load(vdir).decode(string)  # the printed tokens, vocoded directly
    assert sr == 16000 and len(wav) == len(ref) and len(wav) % 16 == 0 and len(wav) > 0
    np.testing.assert_allclose(wav, ref, atol=1.0 / 32767 + 1e-6)
    # without a vocoder: a clear error before any generation
    assert main(args + ["--audio-out", str(out)]) == 1
    assert "needs a vocoder" in capsys.readouterr().err
    assert main(["generate", "--model", str(d), "--text", "a", "--audio-out", str(out), "--vocoder", str(vdir)]) == 1
    assert "--output-modality speech" in capsys.readouterr().err


def test_tts_and_stsp_speech_outputs_through_a_vocoder_and_pocketsphinx(tiny, tmp_path):
    """The suite's hooks by name: a vocoder directory; no ASR hook and no speech classifier ->
    pocketsphinx transcripts (offline), judged by the text classifier."""
    import json

    from spiritlm.eval.fewshot import run_tts
    from spiritlm.eval.model import CachedEncoder
    from spiritlm.eval.stsp import run_stsp
    from spiritlm.eval.suite import load_hook
    from spiritlm.eval.testing import FakeSpeechEncoder, write_tone

    _, model, tok = tiny
    vdir = _tiny_vocoder(tmp_path / "voc")
    voc = load_hook("spiritlm.vocoder.asr:vocoder_hook", {"directory": str(vdir)})
    recs = []
    for k, (t, s) in enumerate([("a good day", "positive"), ("a bad day", "negative")]):
        write_tone(tmp_path / f"{k}.wav", 0.2, 300 + 50 * k)
        recs.append({"id": k, "wav_path": f"{k}.wav", "audio_path": f"{k}.wav", "asr": t, "text": t,
                     "sentiment": s, "split": "test"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    enc = CachedEncoder(FakeSpeechEncoder())
    r = run_tts(tmp_path / "m.jsonl", model, tok, enc, voc, None, n_shots=1, max_new_tokens=8)
    assert r["complete"] and r["asr"] == "pocketsphinx" and r["n"] == 2 and r["wer"] >= 0 and r["cer"] >= 0
    skipped = run_stsp("T2S", tmp_path / "m.jsonl", model, tok, enc, text_classifier=lambda t: "neutral")
    assert skipped["complete"] is False and "vocoder" in skipped["skipped"]
    s = run_stsp("T2S", tmp_path / "m.jsonl", model, tok, enc, text_classifier=lambda t: "neutral",
                 vocoder=voc, temperature=1.0, max_new_tokens=10)
    assert s["complete"] and s["n"] == 2 and "ASR transcript" in s["judge"]
    assert all(i["pred"] in ("neutral", None) for i in s["items"])
