"""lm-evaluation-harness on our model directories, offline: a local multiple-choice task in MMLU's
format (question, choices, answer; the harness's own MMLU prompt) run through the harness's `hf`
model on a tiny LLaMA with our tokenizer, against our scorer on the same items."""

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

MMLU_PROMPT = ('"{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\n'
               'D. {{choices[3]}}\\nAnswer:"')
WORDS = ["cat", "dog", "bird", "river", "cake", "day", "garden", "market"]
CHOICES = [["the cat sat", "a small bird", "she walked", "the dog slept"],
           ["fresh fruit", "the long day", "the beach", "the river"]]


def write_local_task(root: Path, name: str = "tiny_mmlu") -> Path:
    """A task YAML in the harness's MMLU format whose data is a local JSONL (no hub access)."""
    rows = [{"question": f"what does the {w} do", "choices": CHOICES[i % 2], "answer": (3 * i) % 4}
            for i, w in enumerate(WORDS)]
    (root / "data").mkdir(parents=True, exist_ok=True)
    data = root / "data" / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = root / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"test_split: test\noutput_type: multiple_choice\ndoc_to_text: {MMLU_PROMPT}\n"
        'doc_to_choice: ["A", "B", "C", "D"]\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n")
    return tasks


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


def test_harness_acc_equals_our_scorer(tmp_path, offline):
    from spiritlm.config import load_config
    from spiritlm.eval.model import load_model
    from spiritlm.components.scoring import Scorer
    from spiritlm.eval.suite import EvalConfig, run_suite
    from spiritlm.eval.testing import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path / "model")
    tasks = write_local_task(tmp_path)
    # through `spiritlm eval`'s suite: text_tasks in the recipe, numbers in the report
    cfg = load_config(EvalConfig, None, [f"model={model_dir}", f"output_dir={tmp_path / 'out'}",
                                         f"data_root={tmp_path}", "text_tasks=[tiny_mmlu]",
                                         "harness.include_path=tasks", "harness.builtin_tasks=false",
                                         "harness.batch_size=4"])
    out = run_suite(cfg)
    r = out["results"]["lm_eval"]["tiny_mmlu"]
    report = out["paths"]["markdown"].read_text()
    assert "Text ability (lm-evaluation-harness)" in report and f"| tiny_mmlu | {100 * r['acc']:.1f} |" in report
    items = [json.loads(x) for x in out["paths"]["items"].read_text().splitlines()]
    assert sum(it["task"] == "lm_eval" and it["setting"] == "tiny_mmlu" for it in items) == len(WORDS)
    assert r["n"] == len(WORDS) and len(r["items"]) == len(WORDS)

    # our scorer on the same items: one log-likelihood per choice, " A" after "...Answer:",
    # the harness's split (context ids, then the rest of context+continuation)
    model, tok = load_model(model_dir)
    scorer = Scorer(model, tok)
    rows = [json.loads(line) for line in (tmp_path / "data" / "test.jsonl").read_text().splitlines()]
    pairs, targets = [], []
    for row in rows:
        ctx = (f"{row['question'].strip()}\nA. {row['choices'][0]}\nB. {row['choices'][1]}\n"
               f"C. {row['choices'][2]}\nD. {row['choices'][3]}\nAnswer:")
        c_ids = tok.encode(ctx, speech_tags=False)
        for letter in "ABCD":
            full = tok.encode(ctx + " " + letter, speech_tags=False)
            assert full[: len(c_ids)] == c_ids
            pairs.append((c_ids, full[len(c_ids):]))
        targets.append(row["answer"])
    scores = [s.logprob for s in scorer.score_ids(pairs)]
    ours = [scores[4 * i: 4 * i + 4] for i in range(len(rows))]
    by_id = {it["id"]: it for it in r["items"]}
    for i, lls in enumerate(ours):
        assert by_id[i]["logliks"] == pytest.approx(lls, abs=1e-4)
        assert by_id[i]["target"] == targets[i]
    our_acc = sum(max(range(4), key=lls.__getitem__) == t for lls, t in zip(ours, targets)) / len(rows)
    assert r["acc"] == pytest.approx(our_acc) and r["accuracy"] == r["acc"]
    assert [it["score"] for it in sorted(r["items"], key=lambda x: x["id"])] == [
        float(max(range(4), key=lls.__getitem__) == t) for lls, t in zip(ours, targets)]


def test_harness_on_a_release_layout_directory(tmp_path, offline):
    """The released checkpoints' layout: pytorch_model.bin (not safetensors), the speech tokens
    only as added tokens of the HF tokenizer (no spiritlm_vocab.json). The harness loads it with
    its own `hf` model and gives the numbers it gives on our export of the same weights."""
    import shutil

    from safetensors.torch import load_file

    from spiritlm.eval.harness import HarnessConfig, run_harness
    from spiritlm.eval.testing import make_tiny_model_dir

    ours = make_tiny_model_dir(tmp_path / "model")
    rel = tmp_path / "release"
    shutil.copytree(ours, rel)
    (rel / "spiritlm_vocab.json").unlink()
    torch = pytest.importorskip("torch")
    torch.save(load_file(rel / "model.safetensors"), rel / "pytorch_model.bin")
    (rel / "model.safetensors").unlink()
    tasks = write_local_task(tmp_path)
    cfg = HarnessConfig(include_path=str(tasks), builtin_tasks=False, batch_size=4)
    a = run_harness(["tiny_mmlu"], cfg, ours)["tiny_mmlu"]
    b = run_harness(["tiny_mmlu"], cfg, rel)["tiny_mmlu"]
    assert a["acc"] == b["acc"]
    for x, y in zip(sorted(a["items"], key=lambda i: i["id"]), sorted(b["items"], key=lambda i: i["id"])):
        assert x["logliks"] == pytest.approx(y["logliks"], abs=1e-5)


def test_harness_errors_say_what_to_set(tmp_path, offline):
    from spiritlm.eval.harness import HarnessConfig, HarnessError, run_harness

    tasks = write_local_task(tmp_path)
    with pytest.raises(HarnessError, match="not found in lm-eval.*nor in"):
        run_harness(["no_such_task_xyz"], HarnessConfig(include_path=str(tasks), builtin_tasks=False), tmp_path)
    with pytest.raises(HarnessError, match="needs harness.include_path"):
        run_harness(["mmlu"], HarnessConfig(builtin_tasks=False), tmp_path)
    with pytest.raises(HarnessError, match="include_path"):
        run_harness(["x"], HarnessConfig(include_path=str(tmp_path / "absent")), tmp_path)
    assert run_harness([], HarnessConfig(), tmp_path) == {}


def test_harness_results_groups_and_metrics():
    """The harness's output dict -> our rows: metrics of the unfiltered run, acc as accuracy, a
    group's n summed over its subtasks, per-document items with the per-choice log-likelihoods."""
    from spiritlm.eval.harness import harness_results

    out = {"results": {"grp": {"alias": "grp", "acc,none": 0.5, "acc_stderr,none": "N/A"},
                       "a": {"alias": " - a", "acc,none": 1.0, "acc_norm,none": 0.5, "acc,other": 0.0},
                       "b": {"alias": " - b", "acc,none": 0.0}},
           "groups": {"grp": {}}, "group_subtasks": {"grp": ["a", "b"]},
           "n-samples": {"a": {"original": 2, "effective": 2}, "b": {"original": 1, "effective": 1}},
           "samples": {"a": [{"doc_id": 0, "target": 1, "resps": [[[-2.0, False]], [[-1.0, False]]],
                              "filtered_resps": [[-2.0, False], [-1.0, False]], "acc": 1.0}]}}
    r = harness_results(out)
    assert r["grp"] == {"complete": True, "group": True, "source": "lm-eval", "acc": 0.5, "accuracy": 0.5, "n": 3}
    assert r["a"]["acc"] == 1.0 and r["a"]["acc_norm"] == 0.5 and r["a"]["n"] == 2
    assert r["a"]["items"] == [{"id": 0, "target": 1, "logliks": [-2.0, -1.0], "score": 1.0}]
    assert "items" not in r["b"] and r["b"]["accuracy"] == 0.0
