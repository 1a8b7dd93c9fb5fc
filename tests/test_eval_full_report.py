"""The joined report: text ability through the harness on a local StoryCloze task in the harness's
own format, beside our suite's rows; the test-draw rows pooled per model."""

import json

import pytest

STORIES = [("Tom had a dog.", "The dog was small.", "It liked the park.", "They went every day.",
            "Tom and the dog were happy.", "The dog was a cake.", 1),
           ("The cake came out of the oven.", "It was soft.", "She cut a piece.", "It tasted sweet.",
            "The river sang at the market.", "She ate the whole piece.", 2),
           ("A bird sat in the garden.", "It sang every morning.", "The cat watched it.", "Then it flew away.",
            "The bird came back the next day.", "The garden walked to the beach.", 1),
           ("They went to the beach.", "The day was long.", "It rained a lot.", "They got wet.",
            "They went home wet and hungry.", "The beach was a small dog.", 1)]


def _csv(path):
    head = ("InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
            "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\n")
    path.write_text(head + "".join(f"s{i},{','.join(map(str, s))}\n" for i, s in enumerate(STORIES)))
    return path


def test_harness_runs_the_local_storycloze_task_offline_over_every_draw(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    from spiritlm.config import load_config
    from spiritlm.demo.full_report import TEXT_TASK, text_task_yaml
    from spiritlm.eval.suite import EvalConfig, run_suite
    from spiritlm.eval.testing import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "model")
    csvs = [_csv(tmp_path / "a.csv"), _csv(tmp_path / "b.csv")]  # two draws' files: one task over both
    tasks = text_task_yaml(tmp_path / "tasks", csvs)
    cfg = load_config(EvalConfig, None, [
        f"model={model}", f"output_dir={tmp_path / 'out'}", f"data_root={tmp_path}", f"text_tasks=[{TEXT_TASK}]",
        f"harness.include_path={tasks}", "harness.builtin_tasks=false", "harness.num_fewshot=0",
        "storycloze.text=a.csv", 'storycloze.settings=["T"]', "scoring.normalize=false"])
    res = run_suite(cfg)["results"]
    h = res["lm_eval"][TEXT_TASK]
    ours = res["storycloze"]["T"]
    assert h["n"] == 2 * len(STORIES)
    # one document per story of both files, each with its two endings' summed log-likelihoods; acc
    # is the argmax rule. Our StoryCloze T ranks the same endings by the same sums, but after the
    # [Text] marker (Spirit LM's prompt), the harness on plain text: the sums differ by ~1 nat
    # per ending, so the two are beside each other in the report, not asserted equal.
    items = [json.loads(x) for x in (tmp_path / "out" / "items.jsonl").read_text().splitlines()]
    h_items = [it for it in items if it["task"] == "lm_eval"]
    assert len(h_items) == 2 * len(STORIES) and all(len(it["logliks"]) == 2 for it in h_items)
    for it in h_items:
        right = it["logliks"][it["target"]] > it["logliks"][1 - it["target"]]
        assert it["score"] == float(right)
    assert h["acc"] == pytest.approx(sum(it["score"] for it in h_items) / len(h_items))
    assert [it["target"] for it in h_items[:len(STORIES)]] == [s[-1] - 1 for s in STORIES]
    assert 0 <= ours["accuracy_sum"] <= 1
    assert "demo_storycloze_text" in (tmp_path / "out" / "report.md").read_text()


def test_pooled_rows_and_joined_report():
    from spiritlm.demo.full_report import model_report, pooled_accuracy

    d1 = [{"task": "swuggy", "setting": "S", "score": 1.0}, {"task": "swuggy", "setting": "S", "score": 0.0}]
    d2 = [{"task": "swuggy", "setting": "S", "score": 1.0}, {"task": "speech_cls", "setting": "S", "score": 0.0}]
    pooled = pooled_accuracy([d1, d2])
    assert pooled == {"swuggy/S": {"accuracy": pytest.approx(2 / 3), "n": 3}}
    added = {"speech_cls": {"S": {"accuracy": 0.5, "chance": 1 / 3, "n": 30, "shots_per_class": 2,
                                  "labels": ["a", "b", "c"]}},
             "lm_eval": {TEXT: {"acc": 0.9, "n": 240, "requested": True}}}
    md = model_report("m", pooled, ["test1", "test2"], {"swuggy": {"S": {"accuracy": 0.6}}}, added)
    assert "| swuggy/S | 3 | 66.7 |" in md
    assert "## Few-shot speech classification" in md and "| 2 | 3 | 50.0 | 33.3 | 30 |" in md
    assert f"| {TEXT} | 90.0 |" in md
    json.dumps(pooled)


TEXT = "demo_storycloze_text"
