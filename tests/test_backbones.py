"""Any HF causal LM as the start of the interleaved model (issue 34), family by family.

For LLaMA-2, Llama-3, SmolLM2, Qwen2.5, Qwen3, Mistral and OLMo-2: a tiny random model built
offline from the family's transformers config with a tokenizer of the family's kind
(``spiritlm.models.unit_lm.families``), shards made with it from the real LibriVox speech in
../shared/data/real_speech/ (the shipped pocketsphinx word times; a tiny random HuBERT + k-means
as speech tokenizer), the round trip interleaved ids -> decode -> the transcript's words, 2
training steps, the export reloaded through AutoModelForCausalLM / AutoTokenizer (same ids, tie
kept, generation config kept), text and speech generated, three items scored. Then the refusals.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from spiritlm.models.unit_lm.families import FAMILIES, make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
LIBRIVOX = REPO.parent / "shared" / "data" / "real_speech" / "librivox"
pytestmark = pytest.mark.skipif(not LIBRIVOX.is_dir(), reason=f"{LIBRIVOX} is absent (the shared real "
                                "speech folder sits beside the checkout in CI)")

TEXTS = ([p.read_text() for p in sorted(LIBRIVOX.glob("*.txt"))] * 20
         + ["the quick brown fox jumps over the lazy dog. Paris 42 hello world speech"] * 5)
TAG_RE = re.compile(r"\[(Text|Speech|Hu\d+|Pi\d+|St\d+)\]")


def _norm(w: str) -> str:
    return "".join(c for c in w if c.isalnum()).lower()


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """An aligned manifest of the five LibriVox utterances (shipped word times) and a speech
    tokenizer (tiny random 25-Hz HuBERT, k-means with 16 units fitted on them)."""
    import soundfile as sf
    from transformers import HubertModel

    from spiritlm.cli import main
    from spiritlm.tokenizer.hubert import tiny_hubert_config

    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    HubertModel(tiny_hubert_config(hidden=32, layers=2, heads=2, ffn=64, conv_dim=16, hop=640)) \
        .eval().save_pretrained(root / "hubert")
    rows = []
    for wav in sorted(LIBRIVOX.glob("*.wav")):
        ref = json.loads(wav.with_suffix(".json").read_text())
        words = [{"word": re.sub(r"\(\d+\)$", "", w["t"]), "start": w["b"], "end": w["b"] + w["d"]}
                 for w in ref["w"] if w["t"].lower() not in ("<sil>", "<s>", "</s>")]
        info = sf.info(str(wav))
        rows.append({"id": wav.stem, "audio_path": str(wav), "duration": info.frames / info.samplerate,
                     "sample_rate": info.samplerate, "text": wav.with_suffix(".txt").read_text().strip(),
                     "speaker": "austen", "words": words})
    man = root / "aligned.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = root / "speech_tok"
    assert main(["tokenizer", "fit", str(REPO / "tokenizers" / "base.toml"), "--corpus", str(man),
                 "--out", str(tok), "--set", f"hubert.path={root / 'hubert'}", "--set", "hubert.layer=2",
                 "--set", "hubert.device=cpu", "--set", "units.k=16", "--set", "units.niter=10",
                 "--set", "fit.split="]) == 0
    return {"manifest": man, "tokenizer": tok, "transcripts": {r["id"]: r["text"] for r in rows}}


def _shards(speech, ckpt: Path, out: Path) -> Path:
    from spiritlm.cli import main

    (out.parent / "prep.toml").write_text("")
    assert main(["prepare", "shards", str(out.parent / "prep.toml"), "--set", f"output_dir={out}",
                 "--set", f"text_tokenizer={ckpt}", "--set", f"inputs.manifests=[{speech['manifest']}]",
                 "--set", "speech.encoder=spiritlm.data.encoders:speech_tokenizer",
                 "--set", f"speech.tokenizer_dir={speech['tokenizer']}", "--set", "progress=false"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] == {"aligned": 5}, report
    return out


def _text_spans(decoded: str) -> list[list[str]]:
    """The words of every [Text] span of a decoded string."""
    spans, mode, pos = [], None, 0
    for m in TAG_RE.finditer(decoded):
        if mode == "Text" and decoded[pos:m.start()].strip():
            spans.append(decoded[pos:m.start()].split())
        if m.group(1) in ("Text", "Speech"):
            mode = m.group(1)
        pos = m.end()
    if mode == "Text" and decoded[pos:].strip():
        spans.append(decoded[pos:].split())
    return spans


def check_round_trip(tok, sources, transcripts, hf_tok=None) -> dict:
    """Every interleaved document: its text spans decode to consecutive runs of the transcript's
    words, in order, covering no word twice; the HF tokenizer re-encodes the decoded string to
    the same ids (no merge across a marker, the same word-start convention)."""
    src = next(s for s in sources if s.kind == "interleaved")
    n_docs = n_words = 0
    for i in range(len(src)):
        for epoch in range(3):  # interleaving is resampled every epoch
            ids = [int(x) for x in src.read(i, seed=0, epoch=epoch)["input_ids"]]
            f = int(np.searchsorted(src.starts, i, side="right") - 1)
            rid = src._table(f).column("id")[i - int(src.starts[f])].as_py()
            decoded = tok.decode(ids)
            words = [_norm(w) for w in transcripts[rid].split() if _norm(w)]
            spans = _text_spans(decoded)  # none when a short record drew a single speech span
            at = 0
            for span in spans:  # a consecutive run of the transcript's words, after the last one
                span = [_norm(w) for w in span if _norm(w)]
                k = next((j for j in range(at, len(words)) if words[j:j + len(span)] == span), None)
                assert k is not None, (span, words[at:], decoded)
                at = k + len(span)
                n_words += len(span)
            if hf_tok is not None:
                again = hf_tok(decoded, add_special_tokens=False)["input_ids"]
                assert again == ids, (decoded, ids, again)
            n_docs += 1
    return {"docs": n_docs, "words": n_words}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_trains_exports_reloads_and_evaluates(family, speech, tmp_path, capsys):
    pytest.importorskip("deepspeed")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spiritlm.components.mixture import make_sources
    from spiritlm.components.scoring import Request, Scorer
    from spiritlm.eval.generate import generate
    from spiritlm.models.unit_lm.load import load_model
    from spiritlm.text_tokenizer import SpiritTokenizer
    from spiritlm.train.tiny import tiny_config
    from spiritlm.train.trainer import Trainer

    fam = FAMILIES[family]
    ckpt = make_tiny_checkpoint(family, tmp_path / "base", TEXTS)
    shards = _shards(speech, ckpt, tmp_path / "shards")
    meta_tok = SpiritTokenizer.from_pretrained(ckpt)
    src = (f'[{{name = "inter", path = "{shards / "aligned"}", kind = "interleaved"}}, '
           f'{{name = "speech", path = "{shards / "aligned"}", kind = "speech"}}]')
    run = tmp_path / "run"
    cfg = tiny_config(str(run), ["steps=2", f"data.sources={src}", f"model.checkpoint={ckpt}",
                                 "model.pitch_size=0", "model.style_size=0", f"data.bos_id={meta_tok.bos_id}",
                                 "checkpoint.export_hf=true"])
    t = Trainer(cfg)
    layout = t.plan.layout
    assert layout.text_id == meta_tok.text.size  # [Text] right after every id in use, specials included
    tok = SpiritTokenizer.from_pretrained(ckpt, layout=layout)
    trip = check_round_trip(tok, t.plan.sources, speech["transcripts"],
                            AutoTokenizer.from_pretrained(tok.save_pretrained(tmp_path / "tok")))
    assert trip["docs"] == 15 and trip["words"] > 0
    if fam.tie:
        assert t.engine.module.get_output_embeddings().weight is t.engine.module.get_input_embeddings().weight
    t.fit()
    assert len(t.history) == 2 and all(np.isfinite(r["loss"]) for r in t.history)
    assert t.history[-1]["loss/switch"] is not None  # interleaved real speech reached the model

    # the export: the family's own layout, loaded by the Auto classes
    hf = run / "hf"
    model = AutoModelForCausalLM.from_pretrained(hf)
    assert type(model).__name__.lower().startswith(fam.model_type.replace("2", "").replace("3", "")[:4])
    assert model.config.model_type == fam.model_type
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert (head is emb) == fam.tie and emb.shape[0] == model.config.vocab_size >= layout.vocab_size
    assert json.loads((hf / "generation_config.json").read_text())["max_length"] == 64
    auto = AutoTokenizer.from_pretrained(hf)
    for token in ("[Text]", "[Speech]", "[Hu0]", f"[Hu{layout.hubert_size - 1}]"):
        assert auto.convert_tokens_to_ids(token) == layout.token_to_id(token)
    ours, ours_tok = load_model(hf)
    segs = [("text", "the family of Dashwood"), ("speech", {"hubert": np.arange(12) % 16}), ("text", "had long")]
    ids = ours_tok.encode_segments(segs)
    body = ids[1:] if ids[0] == ours_tok.bos_id else ids
    assert auto(ours_tok.decode(body), add_special_tokens=False)["input_ids"] == body
    # generate text and speech
    text_ids, speech_ids = [], []
    for seed in range(8):  # a random model may stop at once (EOS): sample until it says something
        text_out = generate(ours, ours_tok, [("speech", {"hubert": np.arange(10) % 16})], "text",
                            max_new_tokens=4, seed=seed, on_token=text_ids.append)
        speech_out = generate(ours, ours_tok, [("text", "the family")], "speech", max_new_tokens=4, seed=seed,
                              on_token=speech_ids.append)
        if text_ids and speech_ids:
            break
    # what it emits is of the asked modality
    assert text_ids and all(i < layout.text_id or i == ours_tok.eos_id for i in text_ids), text_ids
    assert speech_ids and all(layout.is_speech_id(np.array([i]))[0] or i == ours_tok.eos_id for i in speech_ids)
    assert {o.content_type for o in text_out} <= {"text"} and {o.content_type for o in speech_out} <= {"speech"}
    # three items scored, and the score agrees with the Auto-loaded model's log-probs
    scorer = Scorer(ours, ours_tok)
    reqs = [Request([("text", "the family of Dashwood")], [("text", "had long been settled")]),
            Request([("speech", {"hubert": np.arange(20) % 16})], [("text", "in Sussex")]),
            Request([("text", "their estate was large")], [("speech", {"hubert": np.arange(8) % 16})])]
    scores = scorer.score(reqs)
    assert len(scores) == 3 and all(np.isfinite(s.logprob) and s.n_tokens > 0 for s in scores)
    ctx, cont = scorer.encode_request(reqs[0])
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), -1)
    manual = sum(float(logp[len(ctx) + i - 1, c]) for i, c in enumerate(cont))
    assert scores[0].logprob == pytest.approx(manual, abs=1e-3)
    # the tie survives a reload through our loader too
    assert (ours.get_output_embeddings().weight is ours.get_input_embeddings().weight) == fam.tie
    with capsys.disabled():  # the closing note's table
        print(f"\n{family:8s} {fam.model_type:7s} {tok.text.kind:15s} text ids {layout.text_id:4d} "
              f"[Text]={layout.text_id} [Speech]={layout.speech_id} [Hu0]={layout.token_to_id('[Hu0]')} "
              f"rows {emb.shape[0]} (base checkpoint {meta_tok.text.size}..) tied={fam.tie} bos={ours_tok.bos_id} "
              f"round trip: {trip['docs']} docs, {trip['words']} words in text spans, "
              "AutoTokenizer re-encodes every decoded doc to the same ids")


# ---- refusals: at start, with what was found and what to do ---------------------------------
@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return make_tiny_checkpoint("qwen2.5", tmp_path_factory.mktemp("qwen") / "base", TEXTS)


def _plan(tmp_path, *overrides):
    from spiritlm.models.unit_lm.spec import plan
    from spiritlm.train.tiny import tiny_config

    return plan(tiny_config(str(tmp_path / "run"), ["model.pitch_size=0", "model.style_size=0", *overrides]))


def test_qwen_without_bos_starts_documents_with_endoftext(qwen, tmp_path):
    from spiritlm.config import ConfigError
    from spiritlm.text_tokenizer import SpiritTokenizer

    tok = SpiritTokenizer.from_pretrained(qwen)
    assert tok.text.bos_id == -1 and tok.bos_id == tok.eos_id == tok.text.piece_id("<|endoftext|>")
    assert tok.encode("the family")[0] == tok.bos_id
    with pytest.raises(ConfigError, match=rf"data.bos_id=1, .*--set data.bos_id={tok.bos_id}"):
        _plan(tmp_path, f"model.checkpoint={qwen}")
    p = _plan(tmp_path, f"model.checkpoint={qwen}", f"data.bos_id={tok.bos_id}")
    # 403 ids in use, 448 rows (padding): the padding is taken, the layout padded to 64
    assert p.layout.text_id == 403 and p.rows == 960


def test_rows_and_tokenizer_that_disagree_are_refused(qwen, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM

    from spiritlm.config import ConfigError

    small = tmp_path / "small"
    shutil.copytree(qwen, small)
    model = AutoModelForCausalLM.from_pretrained(small)
    model.resize_token_embeddings(300)  # fewer rows than the tokenizer's 403 ids
    model.save_pretrained(small)
    with pytest.raises(ConfigError, match=r"300 embedding rows but the text tokenizer has 403"):
        _plan(tmp_path, f"model.checkpoint={small}", "data.bos_id=400")


def test_a_tokenizer_with_our_names_at_other_ids_is_refused(qwen, tmp_path):
    import shutil

    from spiritlm.config import ConfigError

    for where in ("added", "vocab"):
        bad = tmp_path / where
        shutil.copytree(qwen, bad)
        data = json.loads((bad / "tokenizer.json").read_text())
        if where == "added":  # an added token named [Hu0] at id 5
            data["added_tokens"].append({"id": 5, "content": "[Hu0]", "single_word": False, "lstrip": False,
                                         "rstrip": False, "normalized": False, "special": False})
        else:  # a BPE piece named [Speech]: the last merge's piece (in no other merge) renamed
            vocab, merges = data["model"]["vocab"], data["model"]["merges"]
            last = max(vocab, key=vocab.get)
            merges[:] = [m for m in merges if "".join(m if isinstance(m, list) else m.split(" ")) != last]
            vocab["[Speech]"] = vocab.pop(last)
        (bad / "tokenizer.json").write_text(json.dumps(data))
        with pytest.raises(ConfigError, match=r"\[(Text|Hu0)\] has id|already has \[Speech\] as id 399"):
            _plan(tmp_path, f"model.checkpoint={bad}", "data.bos_id=400")


def test_shards_of_another_tokenizer_are_refused(speech, qwen, tmp_path):
    from spiritlm.config import ConfigError

    other = make_tiny_checkpoint("qwen3", tmp_path / "other", TEXTS[:50] + ["a different corpus entirely"] * 9)
    shards = _shards(speech, other, tmp_path / "shards")
    src = f'[{{name = "inter", path = "{shards / "aligned"}", kind = "interleaved"}}]'
    with pytest.raises(ConfigError, match=r"another tokenizer|base_vocab_size"):
        _plan(tmp_path, f"model.checkpoint={qwen}", "data.bos_id=400", f"data.sources={src}")


@pytest.mark.parametrize("config, why", [
    ({"model_type": "t5", "is_encoder_decoder": True}, "encoder-decoder"),
    ({"model_type": "bert"}, "an encoder"),
    ({"model_type": "whisper", "is_encoder_decoder": True}, "encoder-decoder"),
    ({"model_type": "my_speech_lm", "auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}, "trust_remote_code"),
])
def test_families_that_cannot_work_are_refused(config, why, qwen, tmp_path):
    import shutil

    from spiritlm.config import ConfigError

    d = tmp_path / "ckpt"
    shutil.copytree(qwen, d)
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=why):
        _plan(tmp_path, f"model.checkpoint={d}", "data.bos_id=400")


def test_extend_tokenizer_cli_takes_a_tokenizer_json(qwen, tmp_path):
    from transformers import AutoTokenizer

    from spiritlm.cli import main
    from spiritlm.text_tokenizer import SpiritTokenizer

    assert main(["vocab", "extend-tokenizer", str(qwen), "--out", str(tmp_path / "ext"), "--layout", "base"]) == 0
    tok = SpiritTokenizer.from_pretrained(tmp_path / "ext")
    assert tok.sp is None and tok.layout.text_id == 403 and tok.layout.pitch_size == 0
    auto = AutoTokenizer.from_pretrained(tmp_path / "ext")
    assert auto("[Speech][Hu500]", add_special_tokens=False)["input_ids"] == [404, 905]
    assert tok.encode("[Speech][Hu500]") == [tok.bos_id, 404, 905]
