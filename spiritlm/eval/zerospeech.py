"""sWUGGY (lexical) and sBLIMP (syntactic) from the ZeroSpeech 2021 layout, speech and text.

Layout: ``<root>/lexical/<split>/gold.csv`` + ``<stem>.wav`` and ``<root>/syntactic/<split>/...``.
Gold columns -- lexical ``id,filename,voice,frequency,word,phones,length,correct``; syntactic
``id,filename,voice,type,subtype,transcription,correct``. ``filename`` is the wav stem.

Pairing follows the official scorer: lexical rows pair a word (correct=1) with its non-word
(correct=0) on (voice, id); syntactic rows pair the k-th correct row with the k-th incorrect row
(file order). Per pair and voice: 1 if the real item scores higher, 0.5 on a tie, else 0; the
mean over voices gives the pair's score (lexical grouped by id, syntactic by (type, subtype, id))
and accuracy is the mean over pairs. Lexical bands use the official bins
``[0,1) [1,5) [5,20) [20,100) [100,inf)`` labelled ``oov, 1-5, 6-20, 21-100, >100``;
``accuracy_invocab`` leaves the oov band out (TWIST / Spirit LM report in-vocabulary sWUGGY).

Unlike the official scorer (which inner-joins silently), unpaired rows are an error.
The text versions score the ``word`` / ``transcription`` strings, one score per distinct text.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

from spiritlm.components.scoring import Request, Score, pair_score

LEXICAL_COLUMNS = ("id", "filename", "voice", "frequency", "word", "correct")
SYNTACTIC_COLUMNS = ("id", "filename", "voice", "type", "subtype", "transcription", "correct")
BANDS = (("oov", 0, 1), ("1-5", 1, 5), ("6-20", 5, 20), ("21-100", 20, 100), (">100", 100, math.inf))


class LayoutError(ValueError):
    """A benchmark directory or file that does not match the expected layout."""


@dataclass(frozen=True)
class Pair:
    key: tuple  # lexical: (id,), syntactic: (type, subtype, id)
    voice: str
    good: dict  # gold row of the real word / grammatical sentence
    bad: dict
    info: dict  # frequency / type / subtype


def read_gold(path: Path, kind: str, check_wavs: bool = True) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path} not found: a ZeroSpeech split directory holds gold.csv and the wavs "
                          f"(e.g. <root>/{kind}/dev/gold.csv)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        need = LEXICAL_COLUMNS if kind == "lexical" else SYNTACTIC_COLUMNS
        missing = [c for c in need if c not in cols]
        if missing:
            raise LayoutError(f"{path}: missing column(s) {missing}; {kind} gold.csv needs {list(need)} "
                              f"(found {cols})")
        rows = list(reader)
    if not rows:
        raise LayoutError(f"{path}: no rows")
    for i, r in enumerate(rows, start=2):
        if r["correct"] not in ("0", "1"):
            raise LayoutError(f"{path}, line {i}: correct={r['correct']!r}, expected 0 or 1")
        r["correct"] = int(r["correct"])
        stem = r["filename"]
        r["filename"] = stem[:-4] if stem.endswith(".wav") else stem
        r["wav"] = path.parent / f"{r['filename']}.wav"
        if kind == "lexical":
            try:
                r["frequency"] = int(float(r["frequency"])) if r["frequency"] not in ("", None) else 0
            except ValueError:
                raise LayoutError(f"{path}, line {i}: frequency={r['frequency']!r} is not a number") from None
    if check_wavs:
        absent = [r["wav"].name for r in rows if not r["wav"].is_file()]
        if absent:
            raise LayoutError(f"{path}: {len(absent)} wav file(s) named in gold.csv are missing from "
                              f"{path.parent}, e.g. {absent[:3]}; re-extract the dataset")
    return rows


def pair_rows(rows: list[dict], kind: str, where: Path | str = "gold.csv") -> list[Pair]:
    if kind == "lexical":
        words, nonwords = {}, {}
        for r in rows:
            d = words if r["correct"] == 1 else nonwords
            k = (r["voice"], r["id"])
            if k in d:
                raise LayoutError(f"{where}: two {'words' if r['correct'] else 'non-words'} for "
                                  f"voice={k[0]} id={k[1]}; each (voice, id) holds one word and one non-word")
            d[k] = r
        lonely = sorted(set(words) ^ set(nonwords))
        if lonely:
            raise LayoutError(f"{where}: {len(lonely)} unpaired (voice, id) row(s), e.g. {lonely[:3]}; "
                              "every word needs a non-word with the same voice and id")
        return [Pair((k[1],), k[0], w, nonwords[k], {"frequency": w["frequency"], "word": w["word"],
                                                       "non word": nonwords[k]["word"]})
                for k, w in words.items()]
    good = [r for r in rows if r["correct"] == 1]
    bad = [r for r in rows if r["correct"] == 0]
    if len(good) != len(bad):
        raise LayoutError(f"{where}: {len(good)} correct vs {len(bad)} incorrect rows; the k-th correct "
                          "row pairs with the k-th incorrect row, so the counts must match")
    out = []
    for k, (g, b) in enumerate(zip(good, bad)):
        if g["voice"] != b["voice"]:
            raise LayoutError(f"{where}: pair #{k} (ids {g['id']}/{b['id']}) mixes voices {g['voice']} and "
                              f"{b['voice']}; keep correct and incorrect rows in the same order")
        out.append(Pair((g["type"], g["subtype"], g["id"]), g["voice"], g, b,
                        {"type": g["type"], "subtype": g["subtype"], "sentence": g["transcription"],
                         "non sentence": b["transcription"]}))
    return out


def text_of(row: dict, kind: str, where) -> str:
    t = row["word"] if kind == "lexical" else row["transcription"]
    if not t:
        raise LayoutError(f"{where}: row {row['filename']} has no {'word' if kind == 'lexical' else 'transcription'};"
                          " the text version needs the orthographic form of every item")
    return t


def score_files(rows: list[dict], kind: str, modality: str, scorer, normalize: bool,
                where) -> dict[str, Score]:
    """One score per wav stem. Text modality: one request per distinct text."""
    if modality == "speech":
        reqs = [Request([], [("speech", r["wav"])]) for r in rows]
        scores = scorer.score(reqs)
        return {r["filename"]: s for r, s in zip(rows, scores)}
    texts = sorted({text_of(r, kind, where) for r in rows})
    scores = dict(zip(texts, scorer.score([Request([], [("text", t)]) for t in texts])))
    return {r["filename"]: scores[text_of(r, kind, where)] for r in rows}


def evaluate_pairs(pairs: Sequence[Pair], file_scores: dict[str, Score], kind: str,
                   normalize: bool) -> dict:
    """Accuracy (mean over pairs of the mean over voices) + breakdowns + per-item records."""
    by_key: dict[tuple, list[float]] = defaultdict(list)
    info: dict[tuple, dict] = {}
    items = []
    for p in pairs:
        sg, sb = file_scores[p.good["filename"]], file_scores[p.bad["filename"]]
        v = pair_score(sg.value(normalize), sb.value(normalize))
        by_key[p.key].append(v)
        info[p.key] = p.info
        items.append({"key": list(p.key), "voice": p.voice, "good": p.good["filename"],
                      "bad": p.bad["filename"], "good_sum": sg.logprob, "bad_sum": sb.logprob,
                      "good_tokens": sg.n_tokens, "bad_tokens": sb.n_tokens,
                      "good_mean": sg.mean, "bad_mean": sb.mean, "score": v,
                      "score_sum": pair_score(sg.logprob, sb.logprob),
                      "score_mean": pair_score(sg.mean, sb.mean), **p.info})
    pair_vals = {k: sum(v) / len(v) for k, v in by_key.items()}
    res = {"accuracy": _mean(pair_vals.values()), "n_pairs": len(pair_vals), "n_items": len(items),
           "accuracy_sum": _mean(_by_key(items, "score_sum").values()),
           "accuracy_mean": _mean(_by_key(items, "score_mean").values()),
           "normalize": normalize}
    if kind == "lexical":
        bands = {}
        for name, lo, hi in BANDS:
            vals = [v for k, v in pair_vals.items() if lo <= info[k]["frequency"] < hi]
            bands[name] = {"n": len(vals), "score": _mean(vals)}
        res["by_frequency"] = bands
        inv = [v for k, v in pair_vals.items() if info[k]["frequency"] >= 1]
        res["accuracy_invocab"] = _mean(inv)
        res["n_pairs_invocab"] = len(inv)
    else:
        types: dict[str, list[float]] = defaultdict(list)
        subtypes: dict[str, list[float]] = defaultdict(list)
        for k, v in pair_vals.items():
            types[info[k]["type"]].append(v)
            subtypes[f"{info[k]['type']}/{info[k]['subtype']}"].append(v)
        res["by_type"] = {t: {"n": len(v), "score": _mean(v)} for t, v in sorted(types.items())}
        res["by_subtype"] = {t: {"n": len(v), "score": _mean(v)} for t, v in sorted(subtypes.items())}
    res["items"] = items
    return res


def _by_key(items, field) -> dict:
    d: dict[tuple, list[float]] = defaultdict(list)
    for it in items:
        d[tuple(it["key"])].append(it[field])
    return {k: sum(v) / len(v) for k, v in d.items()}


def _mean(vals) -> float:
    vals = list(vals)
    return sum(vals) / len(vals) if vals else float("nan")


def run_zerospeech(root: Path, kind: str, split: str, modality: str, scorer, normalize: bool = True,
                   submission_dir: Path | None = None) -> dict:
    """Evaluate one (task, split, modality); optionally write ``<submission>/<kind>/<split>.txt``."""
    gold = Path(root) / kind / split / "gold.csv"
    rows = read_gold(gold, kind, check_wavs=modality == "speech")
    pairs = pair_rows(rows, kind, gold)
    scores = score_files(rows, kind, modality, scorer, normalize, gold)
    res = evaluate_pairs(pairs, scores, kind, normalize)
    res.update(task="swuggy" if kind == "lexical" else "sblimp", split=split, modality=modality,
               gold=str(gold))
    if submission_dir is not None:
        write_scores(Path(submission_dir) / kind / f"{split}.txt", scores, normalize)
    return res


def write_scores(path: Path, scores: dict[str, Score], normalize: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for stem in sorted(scores):
            f.write(f"{stem} {scores[stem].value(normalize):.6f}\n")
    return path


# Fields of the official `zrc` (PyPI zerospeech-benchmarks) sLM21 ``meta.yaml``: its pydantic
# MetaFile requires benchmark_name (a literal, "sLM21" here), model_info.{system_description,
# train_set} and publication.{authors, publication_year (int), institution}; code_url is a
# top-level field; no string may look like a template ("<...>"). We cannot call that package
# (it pins pydantic<2, which our stack has outgrown), so check_meta below encodes those rules.
META_REQUIRED = (("benchmark_name",), ("model_info", "system_description"), ("model_info", "train_set"),
                 ("publication", "authors"), ("publication", "publication_year"),
                 ("publication", "institution"), ("open_source",))
PROJECT_URL = "https://github.com/spiritlm/spiritlm"


@dataclass
class SubmissionMeta:
    """The recipe's ``[zerospeech.meta]`` table: who made the system and on what it was trained.
    Empty fields get defaults that pass the official validation, and a warning says which ones
    to set before submitting to the leaderboard."""

    authors: str = ""  # full names, comma-separated (default: "anonymous")
    author_label: str = ""  # short label, e.g. "Doe et al." (the platform may overwrite it)
    institution: str = ""  # default: "unaffiliated"
    publication_year: int = 0  # 0 = this year
    paper_title: str = ""
    paper_url: str = ""
    team: str = ""
    system_description: str = ""
    train_set: str = ""  # default: the data sources of the model's training recipe, if saved
    gpu_budget: str = ""  # GPU hours, as text (the format's field is a string)
    code_url: str = PROJECT_URL
    open_source: bool = True


def train_set_of(model_dir: Path | str | None) -> str:
    """The data a `spiritlm train` export was trained on, from the recipe it saved beside the
    weights (``spiritlm_train_config.yaml``): source names and paths, or "" if not known."""
    if not model_dir:
        return ""
    p = Path(model_dir) / "spiritlm_train_config.yaml"
    if not p.is_file():
        return ""
    cfg = yaml.safe_load(p.read_text()) or {}
    data = cfg.get("data") or {}
    sources = data.get("sources") or []
    if not sources:
        return "synthetic random documents (spiritlm smoke test)"
    return "; ".join(f"{s.get('name') or s.get('kind', 'source')}: {s.get('path', '?')}" for s in sources)


def submission_meta(model_id: str, meta: SubmissionMeta | None = None, model_dir: Path | str | None = None,
                    year: int | None = None) -> tuple[dict, list[str]]:
    """(the ``meta.yaml`` mapping, the fields that fell back to defaults)."""
    import datetime

    m = meta or SubmissionMeta()
    defaulted = []

    def pick(name: str, value, default):
        if value in ("", 0, None):
            defaulted.append(name)
            return default
        return value

    train_set = m.train_set or train_set_of(model_dir)
    meta_d = {
        "benchmark_name": "sLM21",
        "model_info": {
            "model_id": model_id,
            "system_description": m.system_description or
            "Spirit LM-style speech-text LM (spiritlm); scores are token-normalised log-probabilities",
            "train_set": pick("train_set", train_set, "unspecified"),
            "gpu_budget": m.gpu_budget or None,
        },
        "publication": {
            "author_label": m.author_label,
            "authors": pick("authors", m.authors, "anonymous"),
            "paper_title": m.paper_title or None,
            "paper_url": m.paper_url or None,
            "publication_year": int(pick("publication_year", m.publication_year,
                                         year or datetime.datetime.now(datetime.timezone.utc).year)),
            "institution": pick("institution", m.institution, "unaffiliated"),
            "team": m.team or None,
            "DOI": None,
        },
        "open_source": bool(m.open_source),
        "code_url": m.code_url or None,
    }
    return meta_d, defaulted


def check_meta(meta: dict) -> list[str]:
    """Problems the official sLM21 validation would report for this ``meta.yaml`` mapping (errors
    only; its warnings -- paper title/URL, GPU budget -- are advice)."""
    import re

    problems = []
    if meta.get("benchmark_name") != "sLM21":
        problems.append(f"benchmark_name={meta.get('benchmark_name')!r}: must be 'sLM21'")
    for path in META_REQUIRED[1:]:
        node = meta
        for k in path:
            node = node.get(k) if isinstance(node, dict) else None
        name = ".".join(path)
        if path[-1] == "publication_year":
            if isinstance(node, bool) or not isinstance(node, int):
                problems.append(f"{name}={node!r}: must be an integer year")
        elif path[-1] == "open_source":
            if not isinstance(node, bool):
                problems.append(f"{name}={node!r}: must be true or false")
        elif not isinstance(node, str) or not node:
            problems.append(f"{name}: was not found or empty")
    if "code" in (meta.get("publication") or {}):
        problems.append("publication.code: the format has a top-level code_url instead")

    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{where}{k}.")
        elif isinstance(node, str) and re.match(r"<.*>", node):
            problems.append(f"{where[:-1]}: has value from template ({node!r})")
    walk(meta, "")
    return problems


def write_submission_meta(out: Path, model_id: str, meta: SubmissionMeta | None = None,
                          model_dir: Path | str | None = None) -> list[str]:
    """``meta.yaml`` + ``params.yaml`` of a ZeroSpeech sLM21 submission (score files:
    write_scores). Returns the meta fields that fell back to defaults (also logged)."""
    import logging

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_d, defaulted = submission_meta(model_id, meta, model_dir)
    problems = check_meta(meta_d)
    if problems:  # only reachable through a recipe value such as a "<...>" template string
        raise ValueError(f"zerospeech.meta: {'; '.join(problems)}; fix these fields in the recipe's "
                         "[zerospeech.meta] table")
    if defaulted:
        logging.getLogger(__name__).warning(
            "%s/meta.yaml: %s left at defaults; set them in [zerospeech.meta] (e.g. --set "
            "zerospeech.meta.authors='Jane Doe') before submitting to the ZeroSpeech leaderboard",
            out, ", ".join(defaulted))
    # params.yaml as `zrc submission:init sLM21` writes it (semantic scoring settings; our
    # submission has no semantic part, so the values are the format's defaults)
    params = {"quiet": False,
              "semantic": {"metric": "euclidean", "pooling": "mean", "synthetic": True, "librispeech": True,
                           "n_jobs": 1}}
    (out / "meta.yaml").write_text(yaml.safe_dump(meta_d, sort_keys=False))
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return defaulted


def check_submission(out: Path, root: Path, kinds=("lexical", "syntactic"), splits=("dev",)) -> list[str]:
    """Problems with a submission against the dataset's gold files (empty list = valid)."""
    problems = []
    out, root = Path(out), Path(root)
    for f in ("meta.yaml", "params.yaml"):
        if not (out / f).is_file():
            problems.append(f"missing {out / f}")
    if (out / "meta.yaml").is_file():
        meta = yaml.safe_load((out / "meta.yaml").read_text()) or {}
        problems += [f"{out / 'meta.yaml'}: {p}" for p in check_meta(meta)]
    for kind in kinds:
        for split in splits:
            sub, gold = out / kind / f"{split}.txt", root / kind / split / "gold.csv"
            if not sub.is_file():
                problems.append(f"missing {sub}")
                continue
            stems = {r["filename"] for r in read_gold(gold, kind, check_wavs=False)}
            seen = set()
            for i, line in enumerate(sub.read_text().splitlines(), 1):
                parts = line.split()
                if len(parts) != 2:
                    problems.append(f"{sub}:{i}: expected '<stem> <score>'")
                    continue
                try:
                    float(parts[1])
                except ValueError:
                    problems.append(f"{sub}:{i}: score {parts[1]!r} is not a number")
                seen.add(parts[0])
            if seen != stems:
                problems.append(f"{sub}: {len(stems - seen)} missing / {len(seen - stems)} extra stems")
    return problems
