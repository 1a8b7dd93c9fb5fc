"""StoryCloze and Topic-StoryCloze in four settings: T, S, T->S, S->T.

Layouts (the same code reads the real sets and the mini ones):

* **T** -- the StoryCloze CSV (``InputStoryid,InputSentence1..4,RandomFifthSentenceQuiz1,
  RandomFifthSentenceQuiz2,AnswerRightEnding``), or JSONL ``{"id", "context", "correct",
  "incorrect"}``, or a cross-modal directory (below; its ``.txt`` files). Context = the four
  sentences, candidates = the two endings.
* **S** -- a directory of full-story wavs ``<2k>_<storyid>_correct.wav`` and
  ``<2k+1>_<storyid>_incorrect.wav`` (TWIST's spoken sets); each wav is scored whole.
* **T->S / S->T** -- a directory with ``<k>_mutual``, ``<k>_correct``, ``<k>_incorrect``, each a
  ``.wav`` and a ``.txt``: the context (``mutual``) in one modality, both endings in the other.

Score per item: 1 if the correct ending has the higher score, 0.5 on a tie. Scores are the
token-normalised log-likelihood (``normalize=True``, the paper's tables) or the sum; both
accuracies are always reported.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from spiritlm.components.scoring import Request, pair_score
from spiritlm.eval.zerospeech import LayoutError

SPEECH_RE = re.compile(r"^(\d+)_(.+)_(correct|incorrect)\.wav$")
CROSS_RE = re.compile(r"^(\d+)_(mutual|correct|incorrect)\.(wav|txt)$")
CSV_COLUMNS = ("InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
               "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding")


def read_text_items(path: Path) -> list[dict]:
    """-> [{"id", "context", "correct", "incorrect"}] from a CSV, JSONL or cross-modal directory."""
    path = Path(path)
    if path.is_dir():
        return [{"id": k, "context": v["mutual"]["txt"], "correct": v["correct"]["txt"],
                 "incorrect": v["incorrect"]["txt"]} for k, v in read_cross_dir(path, "txt").items()]
    if not path.is_file():
        raise LayoutError(f"{path} not found: the text StoryCloze set is a CSV (InputSentence1..4, "
                          "RandomFifthSentenceQuiz1/2, AnswerRightEnding), a JSONL or a cross-modal dir")
    items = []
    if path.suffix == ".jsonl":
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            d = json.loads(line)
            missing = [k for k in ("context", "correct", "incorrect") if k not in d]
            if missing:
                raise LayoutError(f"{path}:{i}: missing key(s) {missing}")
            ctx = " ".join(d["context"]) if isinstance(d["context"], list) else d["context"]
            items.append({"id": str(d.get("id", i)), "context": ctx, "correct": d["correct"],
                          "incorrect": d["incorrect"]})
        return items
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise LayoutError(f"{path}: missing column(s) {missing}; expected the StoryCloze CSV "
                              f"columns {list(CSV_COLUMNS)}")
        for i, r in enumerate(reader, 2):
            ans = r["AnswerRightEnding"].strip()
            if ans not in ("1", "2"):
                raise LayoutError(f"{path}, line {i}: AnswerRightEnding={ans!r}, expected 1 or 2")
            e1, e2 = r["RandomFifthSentenceQuiz1"], r["RandomFifthSentenceQuiz2"]
            items.append({"id": r.get("InputStoryid") or str(i - 1),
                          "context": " ".join(r[f"InputSentence{j}"] for j in range(1, 5)),
                          "correct": e1 if ans == "1" else e2, "incorrect": e2 if ans == "1" else e1})
    if not items:
        raise LayoutError(f"{path}: no items")
    return items


def read_speech_dir(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_dir():
        raise LayoutError(f"{path} is not a directory of <2k>_<id>_correct.wav / <2k+1>_<id>_incorrect.wav")
    stories: dict[str, dict] = {}
    for f in sorted(path.iterdir()):
        m = SPEECH_RE.match(f.name)
        if m:
            d = stories.setdefault(m.group(2), {"id": m.group(2), "order": int(m.group(1))})
            if m.group(3) in d:
                raise LayoutError(f"{path}: story {m.group(2)} has two {m.group(3)} wavs")
            d[m.group(3)] = f
            d["order"] = min(d["order"], int(m.group(1)))
    if not stories:
        raise LayoutError(f"{path}: no <n>_<storyid>_correct.wav / _incorrect.wav files")
    lonely = [k for k, d in stories.items() if "correct" not in d or "incorrect" not in d]
    if lonely:
        raise LayoutError(f"{path}: {len(lonely)} stories lack their correct or incorrect wav, "
                          f"e.g. {lonely[:3]}; each story needs both")
    return sorted(stories.values(), key=lambda d: d["order"])


def read_cross_dir(path: Path, need: str | tuple = ("wav", "txt")) -> dict[str, dict]:
    """-> {k: {"mutual": {"wav": Path, "txt": str}, "correct": ..., "incorrect": ...}}."""
    path = Path(path)
    if not path.is_dir():
        raise LayoutError(f"{path} is not a directory of <k>_mutual/_correct/_incorrect .wav + .txt")
    need = (need,) if isinstance(need, str) else need
    items: dict[str, dict] = {}
    for f in sorted(path.iterdir()):
        m = CROSS_RE.match(f.name)
        if m:
            items.setdefault(m.group(1), {}).setdefault(m.group(2), {})[m.group(3)] = \
                f.read_text(encoding="utf-8").strip() if m.group(3) == "txt" else f
    if not items:
        raise LayoutError(f"{path}: no <k>_mutual / <k>_correct / <k>_incorrect files")
    for k, d in items.items():
        for part in ("mutual", "correct", "incorrect"):
            for ext in need:
                if ext not in d.get(part, {}):
                    raise LayoutError(f"{path}: {k}_{part}.{ext} is missing; every item needs "
                                      f"{k}_mutual, {k}_correct and {k}_incorrect as {' and '.join(need)}")
    return dict(sorted(items.items(), key=lambda kv: int(kv[0])))


def build_requests(setting: str, source: Path) -> tuple[list[dict], list[Request]]:
    """-> (item records, requests [correct_0, incorrect_0, correct_1, ...])."""
    if setting == "T":
        items = read_text_items(source)
        reqs = []
        for it in items:
            ctx = [("text", it["context"])]
            reqs += [Request(ctx, [("text", it["correct"])]), Request(ctx, [("text", it["incorrect"])])]
        return [{"id": it["id"]} for it in items], reqs
    if setting == "S":
        stories = read_speech_dir(source)
        reqs = []
        for d in stories:
            reqs += [Request([], [("speech", d["correct"])]), Request([], [("speech", d["incorrect"])])]
        return [{"id": d["id"], "correct": d["correct"].name} for d in stories], reqs
    if setting in ("T2S", "S2T"):
        ctx_kind, end_kind = ("txt", "wav") if setting == "T2S" else ("wav", "txt")
        items = read_cross_dir(source, (ctx_kind, end_kind))
        m = {"txt": "text", "wav": "speech"}
        reqs = []
        for k, d in items.items():
            ctx = [(m[ctx_kind], d["mutual"][ctx_kind])]
            reqs += [Request(ctx, [(m[end_kind], d["correct"][end_kind])]),
                     Request(ctx, [(m[end_kind], d["incorrect"][end_kind])])]
        return [{"id": k} for k in items], reqs
    raise ValueError(f"setting {setting!r}: use T, S, T2S or S2T")


def run_storycloze(setting: str, source: Path, scorer, normalize: bool = True, task: str = "storycloze") -> dict:
    records, reqs = build_requests(setting, Path(source))
    scores = scorer.score(reqs)
    items = []
    for i, rec in enumerate(records):
        g, b = scores[2 * i], scores[2 * i + 1]
        items.append({**{k: str(v) for k, v in rec.items()}, "good_sum": g.logprob, "bad_sum": b.logprob,
                      "good_tokens": g.n_tokens, "bad_tokens": b.n_tokens, "good_mean": g.mean,
                      "bad_mean": b.mean, "score": pair_score(g.value(normalize), b.value(normalize)),
                      "score_sum": pair_score(g.logprob, b.logprob), "score_mean": pair_score(g.mean, b.mean)})
    n = len(items)
    return {"task": task, "setting": setting, "source": str(source), "normalize": normalize,
            "accuracy": sum(it["score"] for it in items) / n, "n_pairs": n,
            "accuracy_sum": sum(it["score_sum"] for it in items) / n,
            "accuracy_mean": sum(it["score_mean"] for it in items) / n, "items": items}
