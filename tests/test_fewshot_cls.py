"""Few-shot speech classification: the paper's prompt ([Speech] shot [Text] label, k per class,
never the item itself), label ranking through our scorer on a tiny model, the suite's report
row, and the mini sentence-type set built with espeak."""

import json
import random
import shutil
from pathlib import Path

import pytest

from spiritlm.eval.fewshot_cls import (SpeechClsConfig, build_mini_speech_cls, pick_shots, read_cls_manifest,
                                       run_speech_cls)
from spiritlm.eval.zerospeech import LayoutError


def _manifest(d: Path, name: str, labels_per_item: list[str], start: int = 0) -> Path:
    from spiritlm.eval.testing import write_tone

    recs = []
    for i, lab in enumerate(labels_per_item, start):
        write_tone(d / "audio" / f"{i}.wav", seconds=0.3, freq=200.0 + 37 * i)
        recs.append({"id": f"u{i}", "audio_path": f"audio/{i}.wav", "label": lab})
    p = d / name
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def test_shots_k_per_class_never_the_item(tmp_path):
    pool = read_cls_manifest(_manifest(tmp_path, "m.jsonl", ["a", "b", "a", "b", "a", "b"]))
    labels = ["a", "b"]
    shots = pick_shots(pool, pool[0], labels, 2, random.Random(0))
    assert sorted(s["label"] for s in shots) == ["a", "a", "b", "b"] and pool[0] not in shots
    assert shots == pick_shots(pool, pool[0], labels, 2, random.Random(0))  # seeded
    with pytest.raises(LayoutError, match="only 2 shot.*class 'a'"):
        pick_shots(pool, pool[0], labels, 3, random.Random(0))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "audio_path": "x.wav"}\n')
    with pytest.raises(LayoutError, match="needs 'audio_path' and 'label'"):
        read_cls_manifest(bad)


def test_prompt_format_and_label_ranking_on_a_tiny_model(tmp_path):
    from spiritlm.eval.model import CachedEncoder, load_model
    from spiritlm.components.scoring import Scorer
    from spiritlm.eval.testing import FakeSpeechEncoder, make_tiny_model_dir

    model, tok = load_model(make_tiny_model_dir(tmp_path / "model"))
    test = _manifest(tmp_path, "test.jsonl", ["set_alarm", "play_music", "set_alarm"])
    shots = _manifest(tmp_path, "shots.jsonl", ["set_alarm", "play_music"] * 3, start=10)
    cfg = SpeechClsConfig(n_shots=2, label_text={"play_music": "play some music"}, seed=3)

    class Spy(Scorer):
        def score(self, requests):
            self.seen = list(requests)
            return super().score(requests)

    scorer = Spy(model, tok, CachedEncoder(FakeSpeechEncoder()))
    res = run_speech_cls(cfg, test, shots, scorer)
    assert res["labels"] == ["play_music", "set_alarm"] and res["n"] == 3 and res["chance"] == 0.5
    # the prompt: 2 shots per class, speech then "[Text] label\n", the item's speech last
    req = scorer.seen[0]
    kinds = [k for k, _ in req.context]
    assert kinds == ["speech", "text"] * 4 + ["speech"]
    assert sorted(x for k, x in req.context if k == "text") == ["play some music\n"] * 2 + ["set alarm\n"] * 2
    assert [c for r in scorer.seen[:2] for c in r.continuation] == [("text", "play some music\n"),
                                                                     ("text", "set alarm\n")]
    ctx_ids, cont_ids = scorer.encode_request(req)
    assert ctx_ids[:2] == [tok.bos_id, tok.layout.speech_id] and ctx_ids[-1] == tok.layout.text_id
    assert ctx_ids.count(tok.layout.text_id) == 5 and ctx_ids.count(tok.layout.speech_id) == 5
    # prediction = argmax of the reference (one plain forward per request) log-likelihoods
    ref = scorer.score_one_at_a_time(scorer.seen)
    for i, it in enumerate(res["items"]):
        assert [it["logliks"][lab] for lab in res["labels"]] == pytest.approx([s.logprob for s in ref[2 * i: 2 * i + 2]],
                                                                              abs=1e-4)
        best = res["labels"][max(range(2), key=lambda j: ref[2 * i + j].logprob)]
        assert it["pred"] == best and it["score"] == float(best == it["label"])
    assert res["accuracy"] == pytest.approx(sum(it["score"] for it in res["items"]) / 3)
    again = run_speech_cls(cfg, test, shots, Scorer(model, tok, CachedEncoder(FakeSpeechEncoder())))
    assert [it["pred"] for it in again["items"]] == [it["pred"] for it in res["items"]]


def test_suite_builds_the_mini_set_and_reports_it(tmp_path):
    if shutil.which("espeak-ng") is None and shutil.which("espeak") is None:
        try:
            import espeakng_loader  # noqa: F401
        except ImportError:
            pytest.skip("espeak-ng is not available: the mini set is synthesised with it")
    from spiritlm.config import load_config
    from spiritlm.eval.suite import EvalConfig, run_suite
    from spiritlm.eval.testing import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path / "model")
    cfg = load_config(EvalConfig, None, [
        f"model={model_dir}", f"output_dir={tmp_path / 'out'}", f"data_root={tmp_path / 'data'}",
        "speech_encoder=spiritlm.eval.testing:FakeSpeechEncoder",
        "speech_cls.manifest=speech_cls/test.jsonl", "speech_cls.shots_manifest=speech_cls/shots.jsonl",
        "speech_cls.mini=true", "speech_cls.n_shots=1", "speech_cls.mini_sizes={test = 2, shots = 1, voices = 1}"])
    out = run_suite(cfg)
    res = out["results"]["speech_cls"]["S"]
    assert res["labels"] == ["description", "existence", "past"] and res["n"] == 6
    assert "## Few-shot speech classification" in out["paths"]["markdown"].read_text()
    recs = [json.loads(x) for x in (tmp_path / "data" / "speech_cls" / "test.jsonl").read_text().splitlines()]
    for r in recs:
        if r["label"] == "existence":
            assert r["text"].lower().startswith("there ")
        assert (tmp_path / "data" / "speech_cls" / r["audio_path"]).stat().st_size > 1000
    from spiritlm.corpus.grammar import split_of

    assert all(split_of(r["text"]) == "heldout" for r in recs)
    # cached: the same sizes and seed reuse the build
    stamp = (tmp_path / "data" / "speech_cls" / "COMPLETE.json").stat().st_mtime_ns
    build_mini_speech_cls(tmp_path / "data" / "speech_cls", 0, {"test": 2, "shots": 1, "voices": 1})
    assert (tmp_path / "data" / "speech_cls" / "COMPLETE.json").stat().st_mtime_ns == stamp
