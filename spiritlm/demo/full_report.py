"""One report per model: speech and cross-modal ability (our suite), few-shot speech
classification and text ability (lm-evaluation-harness) -- the demo part ``full_report``.

    spiritlm demo --out runs/demo --part full_report
    spiritlm eval eval/paper_suite.toml --model /ckpt/spirit-lm-base-7b ...   # the same, released models

The suite's ``report.md`` already holds all three when its recipe asks for them (``text_tasks``,
``[speech_cls]``); the paper recipe does, for real data sets and the released checkpoints. The
demo's suite has neither switched on (no offline text benchmark; its speech classification set
would change the units file its cache keys hash), so this part adds, per unit model:

* **text ability through the harness**: the harness's own StoryCloze task format
  (``storycloze_2016``: four context sentences, two endings, ``acc`` over summed log-likelihoods)
  as a local task YAML over the demo's StoryCloze text CSVs of the *test* draws (offline; the
  harness used as is, its ``hf`` model on our export);
* **few-shot speech classification**: the suite's mini sentence-type set, built once into this
  part's own step from held-out grammar sentences that no draw uses (its own fresh draw), k
  shots per class in the paper's prompt format;
* **speech and cross-modal ability**: the model's test-draw evaluations pooled (the claims), and
  its dev-draw Table 4 (labelled dev).

The extra evaluation scores only the two added tasks (the speech tasks are read from the
demo's own evaluations), so it costs seconds per model; the joined ``report.md`` per model and
one ``full_report.md`` over the models land in the part's steps.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spiritlm.config import ConfigError, load_config
from spiritlm.demo import main as demo

FULL_REPORT_VERSION = "full-report-v1: harness StoryCloze text (test draws) + mini speech_cls + suite"
TEXT_TASK = "demo_storycloze_text"
# the demo suite with its speech tasks off: they are read from the demo's own evaluations
ONLY_ADDED = ('zerospeech.root=""', 'storycloze.text=""', 'storycloze.speech=""', 'storycloze.cross=""',
              'topic_storycloze.text=""', 'topic_storycloze.speech=""', 'topic_storycloze.cross=""',
              'stsp.manifest=""', 'fewshot.asr_manifest=""', "units_cache=\"\"")
SUMMARY_COLUMNS = (("topic_storycloze/S", "tSC S"), ("topic_storycloze/T2S", "tSC T→S"),
                   ("topic_storycloze/S2T", "tSC S→T"), ("swuggy/S", "sWUGGY S"), ("sblimp/S", "sBLIMP S"))


@dataclass
class FullReportConfig:
    """``--set 'part_overrides.full_report=["seeds=[0, 1]"]'``."""
    seeds: list[int] = field(default_factory=list)  # of the demo's models; [] = the first seed
    n_shots: int = 2  # per class, the speech classification prompt
    speech_cls_sizes: dict[str, int] = field(default_factory=lambda: {"test": 10, "shots": 6, "voices": 2})
    harness_num_fewshot: int = 0  # StoryCloze is zero-shot in the harness's own task
    harness_limit: int = 0  # documents (0 = all test-draw stories)


def text_task_yaml(out_dir: Path, csvs: list[str], name: str = TEXT_TASK) -> Path:
    """A harness task in ``storycloze_2016``'s format (its prompt, choices, target and metric)
    over local StoryCloze CSVs (InputSentence1-4, RandomFifthSentenceQuiz1/2, AnswerRightEnding)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = "\n".join(f"      - {json.dumps(str(c))}" for c in csvs)
    (out_dir / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: csv\ndataset_kwargs:\n  data_files:\n    test:\n{files}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        "doc_to_text: \"{{[InputSentence1, InputSentence2, InputSentence3, InputSentence4]|join(' ')}}\"\n"
        "doc_to_target: \"{{AnswerRightEnding - 1}}\"\n"
        "doc_to_choice: \"{{[RandomFifthSentenceQuiz1, RandomFifthSentenceQuiz2]}}\"\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n")
    return out_dir


def _data_step(ctx, fcfg: FullReportConfig, step_dir: Path) -> dict[str, Any]:
    from spiritlm.eval.fewshot_cls import build_mini_speech_cls

    labels = ctx.test_labels() or ["dev"]
    exclude: set[str] = set()
    for d in ctx.draws.values():  # no sentence any draw uses
        exclude |= set(Path(d["paths"]["heldout_texts"]).read_text(encoding="utf-8").splitlines())
    cls = build_mini_speech_cls(step_dir / "speech_cls", ctx.cfg.seed, dict(fcfg.speech_cls_sizes), exclude,
                                processes=1)  # the part runs in one CPU slot
    csvs = [ctx.draws[t]["paths"]["storycloze_text"] for t in labels]
    tasks = text_task_yaml(step_dir / "text_tasks", csvs)
    return {"speech_cls": {k: str(v) for k, v in cls.items()}, "text_tasks": str(tasks), "text_draws": labels}


def _added_eval(cfg, dev: dict, speech_tok: dict, data: dict, fcfg: FullReportConfig, model: dict, name: str,
                step_dir: Path) -> dict:
    """A ``Job`` function: the two added tasks on ``model`` (offline harness)."""
    from spiritlm.eval.suite import run_suite

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local CSVs only; never the hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cls = data["speech_cls"]
    ecfg = demo.eval_config(cfg, dev, speech_tok, [f"model={model['hf']}", f"name={name}", f"output_dir={step_dir}"], (
        *ONLY_ADDED, f"speech_cls.manifest={cls['test']}", f"speech_cls.shots_manifest={cls['shots']}",
        "speech_cls.mini=false", f"speech_cls.n_shots={fcfg.n_shots}", f"text_tasks=[{TEXT_TASK}]",
        f"harness.include_path={data['text_tasks']}", "harness.builtin_tasks=false",
        f"harness.num_fewshot={fcfg.harness_num_fewshot}", f"harness.limit={fcfg.harness_limit}"))
    run_suite(ecfg)
    return {"dir": str(step_dir), "results": str(step_dir / "results.json")}


def pooled_accuracy(item_lists: list[list[dict]]) -> dict[str, dict]:
    """``{task/setting: {accuracy, n}}`` over items pooled from several draws (one model, one seed)."""
    acc: dict[str, list[float]] = defaultdict(list)
    for items in item_lists:
        for it in items:
            if "score" in it and it.get("task") not in ("lm_eval", "speech_cls"):
                acc[f"{it['task']}/{it['setting']}"].append(float(it["score"]))
    return {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(acc.items())}


def model_report(name: str, pooled: dict, tests: list[str], dev_results: dict, added: dict) -> str:
    """The joined Markdown of one model: test-draw pooled speech rows, then the dev Table 4 with
    the few-shot classification and text-ability sections of the added evaluation."""
    from spiritlm.eval.report import markdown_table

    lines = [f"# {name}: speech, cross-modal, few-shot classification and text ability", ""]
    if tests:
        lines += [f"## Speech and cross-modal, test draws pooled ({', '.join(tests)}; claims)", "",
                  "| task/setting | n | accuracy % |", "|---|---:|---:|"]
        lines += [f"| {k} | {r['n']} | {100 * r['accuracy']:.1f} |" for k, r in pooled.items()]
        lines.append("")
    merged = {**dev_results, **{k: added[k] for k in ("speech_cls", "lm_eval") if k in added}}
    lines += ["## Dev draw (settings were chosen on it: no claims) + few-shot speech classification "
              "(its own draw) + text ability (harness, StoryCloze text of the test draws)", "",
              markdown_table(merged, name)]
    return "\n".join(lines)


def _join_step(entries: list[dict], step_dir: Path) -> dict[str, Any]:
    from spiritlm.eval.report import read_items

    rows, texts = [], []
    for e in entries:
        pooled = pooled_accuracy([read_items(Path(d)) for d in e["test_dirs"]])
        dev = json.loads((Path(e["dev_dir"]) / "results.json").read_text())["results"] if e["dev_dir"] else {}
        added = json.loads(Path(e["added"]).read_text())["results"]
        md = model_report(e["name"], pooled, e["tests"], dev, added)
        (step_dir / f"{e['name']}.md").write_text(md)
        texts.append(md)
        cls = added.get("speech_cls", {}).get("S", {})
        txt = added.get("lm_eval", {}).get(TEXT_TASK, {})
        cells = [f"{100 * pooled[k]['accuracy']:.1f}" if k in pooled else "--" for k, _ in SUMMARY_COLUMNS]
        cells.append(f"{100 * cls['accuracy']:.1f} (chance {100 * cls['chance']:.0f}, n {cls.get('n')})"
                     if cls.get("accuracy") is not None else "--")
        cells.append(f"{100 * txt['acc']:.1f} (n {txt.get('n')})" if txt.get("acc") is not None else "--")
        rows.append(f"| {e['name']} | " + " | ".join(cells) + " |")
    head = ["model", *(c for _, c in SUMMARY_COLUMNS), "few-shot speech cls %", "text: harness StoryCloze acc %"]
    summary = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1), *rows]
    md = ("# Full report: speech and cross-modal (test draws pooled), few-shot speech classification, text "
          "ability (lm-evaluation-harness)\n\n" + "\n".join(summary) + "\n\n" + "\n\n".join(texts))
    (step_dir / "full_report.md").write_text(md)
    return {"markdown": str(step_dir / "full_report.md")}


def run(ctx) -> dict:
    fcfg = load_config(FullReportConfig, None, ctx.overrides("full_report"))
    seeds = list(fcfg.seeds) or ctx.seeds[:1]
    if any(s not in ctx.seeds for s in seeds):
        raise ConfigError(f"full_report: seeds {seeds} -- use some of the demo's train_seeds {ctx.seeds}")
    from spiritlm.pipeline import Job

    draw_hashes = [demo.file_hash(Path(d["root"]) / "COMPLETE.json") for d in ctx.draws.values()]
    data = ctx.pipe.run("full_report_data", [FULL_REPORT_VERSION, ctx.cfg.seed, fcfg.speech_cls_sizes, draw_hashes],
                        lambda d: _data_step(ctx, fcfg, d))
    entries, jobs = [], []
    for variant, models in ctx.models.items():
        for s in seeds:
            i = ctx.seeds.index(s)
            name = f"{variant}{'' if s == ctx.cfg.seed else f'_seed{s}'}"
            jobs.append(Job(f"full_report_{name}", [
                FULL_REPORT_VERSION, fcfg.n_shots, fcfg.harness_num_fewshot, fcfg.harness_limit, data,
                demo.file_hash(Path(models[i]["hf"]) / "model.safetensors"), ctx.cfg.eval_overrides,
                demo.file_hash(Path(ctx.speech_tok["dir"]) / "manifest.json")],
                _added_eval, (ctx.cfg, ctx.draws["dev"], ctx.speech_tok, data, fcfg, models[i], name)))
            tests = ctx.test_labels()
            entries.append({"name": name, "tests": tests, "dev_dir": ctx.evals[variant]["dev"][i]["dir"],
                            "test_dirs": [ctx.evals[variant][t][i]["dir"] for t in tests]})
    if ctx.start is not None:  # the text start: text ability before any speech (the paper's LLaMA-2 row)
        jobs.append(Job("full_report_text_start", [
            FULL_REPORT_VERSION, fcfg.n_shots, fcfg.harness_num_fewshot, fcfg.harness_limit, data,
            demo.file_hash(Path(ctx.start["hf"]) / "model.safetensors"), ctx.cfg.eval_overrides,
            demo.file_hash(Path(ctx.speech_tok["dir"]) / "manifest.json")],
            _added_eval, (ctx.cfg, ctx.draws["dev"], ctx.speech_tok, data, fcfg, ctx.start, "text_start")))
        entries.append({"name": "text_start", "tests": [], "dev_dir": "", "test_dirs": []})
    for e, out in zip(entries, [ctx.pipe.run_jobs([j])[0] for j in jobs]):
        e["added"] = out["results"]
    deps = [FULL_REPORT_VERSION, entries, *(demo.file_hash(Path(e["added"])) for e in entries)]
    out = ctx.pipe.run("full_report", deps, lambda d: _join_step(entries, d))
    print(Path(out["markdown"]).read_text())
    return out
