"""sWUGGY/sBLIMP: pairing rules (ties, several voices), breakdowns, layout errors, submission;
StoryCloze layouts. A fake scorer gives fixed scores so the rules are checked exactly."""

import csv
from pathlib import Path

import pytest

from spiritlm.components.scoring import Score
from spiritlm.eval.storycloze import read_cross_dir, read_speech_dir, read_text_items, run_storycloze
from spiritlm.eval.zerospeech import (LayoutError, check_submission, pair_rows, read_gold, run_zerospeech,
                                      write_submission_meta)


class FakeScorer:
    """Score = table[stem or text] (sum), with a fixed token count of 2."""

    def __init__(self, table):
        self.table = table
        self.calls = 0

    def score(self, reqs):
        out = []
        for r in reqs:
            self.calls += 1
            kind, x = r.continuation[0]
            key = Path(x).stem if kind == "speech" else x
            if r.context:
                ck, cx = r.context[0]
                key = (Path(cx).stem if ck == "speech" else cx, key)
            out.append(Score(float(self.table[key]), 2))
        return out


LEX_COLS = ["id", "filename", "voice", "frequency", "word", "phones", "length", "correct"]
SYN_COLS = ["id", "filename", "voice", "type", "subtype", "transcription", "correct"]


def _write(d: Path, cols, rows, wavs=True):
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "gold.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
    if wavs:
        for r in rows:
            (d / f"{r[1]}.wav").write_bytes(b"RIFF")
    return d / "gold.csv"


def _lexical(root: Path):
    rows = [  # id, stem, voice, freq, word, phones, length, correct
        [1, "a1", "V1", 0, "brick", "b r I k", 4, 1], [1, "b1", "V1", 0, "bruck", "b r V k", 4, 0],
        [1, "a2", "V2", 0, "brick", "b r I k", 4, 1], [1, "b2", "V2", 0, "bruck", "b r V k", 4, 0],
        [2, "c1", "V1", 7, "dog", "d O g", 3, 1], [2, "d1", "V1", 7, "dag", "d a g", 3, 0],
        [2, "c2", "V2", 7, "dog", "d O g", 3, 1], [2, "d2", "V2", 7, "dag", "d a g", 3, 0],
        [3, "e1", "V1", 500, "the", "D @", 2, 1], [3, "f1", "V1", 500, "thu", "D u", 2, 0],
    ]
    return _write(root / "lexical" / "dev", LEX_COLS, rows)


def test_lexical_pairing_voices_ties_bands(tmp_path):
    _lexical(tmp_path)
    # id1: V1 right, V2 tie -> 0.75; id2: V1 wrong, V2 right -> 0.5; id3: right -> 1
    table = {"a1": -1, "b1": -2, "a2": -3, "b2": -3, "c1": -5, "d1": -4, "c2": -1, "d2": -9, "e1": 0, "f1": -1,
             "brick": -1, "bruck": -1, "dog": -2, "dag": -1, "the": -1, "thu": -5}
    res = run_zerospeech(tmp_path, "lexical", "dev", "speech", FakeScorer(table), normalize=False,
                         submission_dir=tmp_path / "sub")
    assert res["n_pairs"] == 3 and res["n_items"] == 5
    assert res["accuracy"] == pytest.approx((0.75 + 0.5 + 1) / 3)
    assert res["by_frequency"]["oov"] == {"n": 1, "score": 0.75}
    assert res["by_frequency"]["6-20"]["score"] == 0.5 and res["by_frequency"][">100"]["score"] == 1.0
    assert res["by_frequency"]["1-5"]["n"] == 0
    assert res["accuracy_invocab"] == pytest.approx(0.75)
    lines = (tmp_path / "sub" / "lexical" / "dev.txt").read_text().splitlines()
    assert len(lines) == 10 and lines[0] == "a1 -1.000000"  # normalize=False: the sum is written
    # text version: one score per distinct text, tie on brick/bruck
    fs = FakeScorer(table)
    rt = run_zerospeech(tmp_path, "lexical", "dev", "text", fs, normalize=False)
    assert fs.calls == 6 and rt["accuracy"] == pytest.approx((0.5 + 0 + 1) / 3)


def test_submission_format(tmp_path):
    _lexical(tmp_path)
    table = {s: -i for i, s in enumerate(["a1", "b1", "a2", "b2", "c1", "d1", "c2", "d2", "e1", "f1"])}
    sub = tmp_path / "sub"
    run_zerospeech(tmp_path, "lexical", "dev", "speech", FakeScorer(table), True, sub)
    write_submission_meta(sub, "tiny")
    assert check_submission(sub, tmp_path, kinds=("lexical",)) == []
    for line in (sub / "lexical" / "dev.txt").read_text().splitlines():
        stem, val = line.split(" ")
        float(val)
    (sub / "lexical" / "dev.txt").write_text("a1 0.1\n")
    assert any("missing" in p for p in check_submission(sub, tmp_path, kinds=("lexical",)))


def test_syntactic_positional_pairing_and_types(tmp_path):
    rows = [  # k-th correct pairs with k-th incorrect, in file order
        [1, "g1", "V1", "agr", "sv", "The dog runs.", 1], [1, "g2", "V2", "agr", "sv", "The dog runs.", 1],
        [1, "h1", "V1", "agr", "sv", "The dog run.", 0], [1, "h2", "V2", "agr", "sv", "The dog run.", 0],
        [2, "i1", "V1", "order", "wo", "I saw it.", 1], [2, "j1", "V1", "order", "wo", "I it saw.", 0],
    ]
    _write(tmp_path / "syntactic" / "dev", SYN_COLS, rows)
    table = {"g1": -1, "h1": -2, "g2": -2, "h2": -2, "i1": -3, "j1": -1}
    res = run_zerospeech(tmp_path, "syntactic", "dev", "speech", FakeScorer(table), normalize=True)
    assert res["by_type"]["agr"] == {"n": 1, "score": 0.75}
    assert res["by_type"]["order"]["score"] == 0.0
    assert res["accuracy"] == pytest.approx(0.375)


def test_layout_errors(tmp_path):
    g = _write(tmp_path / "a", LEX_COLS[:-1], [[1, "x", "V", 1, "w", "p", 1]])
    with pytest.raises(LayoutError, match=r"missing column\(s\) \['correct'\]"):
        read_gold(g, "lexical")
    g = _write(tmp_path / "b", LEX_COLS, [[1, "x", "V", 1, "w", "p", 1, 1], [1, "y", "V", 1, "n", "p", 1, 0]],
               wavs=False)
    with pytest.raises(LayoutError, match="wav file.*missing"):
        read_gold(g, "lexical")
    g = _write(tmp_path / "c", LEX_COLS, [[1, "x", "V", 1, "w", "p", 1, 1], [2, "y", "V", 1, "n", "p", 1, 0]])
    with pytest.raises(LayoutError, match="unpaired"):
        pair_rows(read_gold(g, "lexical"), "lexical", g)
    g = _write(tmp_path / "d", SYN_COLS, [[1, "x", "V", "t", "s", "a", 1], [1, "y", "V", "t", "s", "b", 1],
                                          [1, "z", "V", "t", "s", "c", 0]])
    with pytest.raises(LayoutError, match="2 correct vs 1 incorrect"):
        pair_rows(read_gold(g, "syntactic"), "syntactic", g)
    g = _write(tmp_path / "e", SYN_COLS, [[1, "x", "V1", "t", "s", "a", 1], [1, "z", "V2", "t", "s", "c", 0]])
    with pytest.raises(LayoutError, match="mixes voices"):
        pair_rows(read_gold(g, "syntactic"), "syntactic", g)
    with pytest.raises(LayoutError, match="gold.csv not found"):
        read_gold(tmp_path / "nope" / "gold.csv", "lexical")


def _stories(d: Path, n=3, cross=True):
    (d / "speech").mkdir(parents=True)
    (d / "cross").mkdir()
    for k in range(n):
        (d / "speech" / f"{2 * k}_st{k}_correct.wav").write_bytes(b"")
        (d / "speech" / f"{2 * k + 1}_st{k}_incorrect.wav").write_bytes(b"")
        for part in ("mutual", "correct", "incorrect"):
            (d / "cross" / f"{k}_{part}.wav").write_bytes(b"")
            (d / "cross" / f"{k}_{part}.txt").write_text(f"{part} {k}\n")


def test_storycloze_layouts_and_settings(tmp_path):
    _stories(tmp_path)
    assert [s["id"] for s in read_speech_dir(tmp_path / "speech")] == ["st0", "st1", "st2"]
    assert read_cross_dir(tmp_path / "cross")["1"]["correct"]["txt"] == "correct 1"
    table = {}
    for k in range(3):
        table[f"{k}_correct"], table[f"{k}_incorrect"] = -1, -2 + k  # k=1 tie, k=2 wrong
        table[f"{2 * k}_st{k}_correct"], table[f"{2 * k + 1}_st{k}_incorrect"] = -1, -3
        table[(f"mutual {k}", f"{k}_correct")] = -1
        table[(f"mutual {k}", f"{k}_incorrect")] = -2 + k
        table[(f"{k}_mutual", f"correct {k}")] = -1
        table[(f"{k}_mutual", f"incorrect {k}")] = -5
        table[(f"mutual {k}", f"correct {k}")] = -1
        table[(f"mutual {k}", f"incorrect {k}")] = 0
    sc = FakeScorer(table)
    assert run_storycloze("S", tmp_path / "speech", sc)["accuracy"] == 1.0
    assert run_storycloze("T2S", tmp_path / "cross", sc)["accuracy"] == pytest.approx(0.5)
    assert run_storycloze("S2T", tmp_path / "cross", sc)["accuracy"] == 1.0
    assert run_storycloze("T", tmp_path / "cross", sc)["accuracy"] == 0.0


def test_storycloze_csv_and_errors(tmp_path):
    p = tmp_path / "sc.csv"
    p.write_text("InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
                 "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\n"
                 "x,a,b,c,d,bad end,good end,2\n")
    it = read_text_items(p)[0]
    assert it == {"id": "x", "context": "a b c d", "correct": "good end", "incorrect": "bad end"}
    (tmp_path / "bad.csv").write_text("InputStoryid,InputSentence1\nx,a\n")
    with pytest.raises(LayoutError, match="missing column"):
        read_text_items(tmp_path / "bad.csv")
    _stories(tmp_path / "s")
    (tmp_path / "s" / "speech" / "5_st2_incorrect.wav").unlink()
    with pytest.raises(LayoutError, match="lack their correct or incorrect"):
        read_speech_dir(tmp_path / "s" / "speech")
    (tmp_path / "s" / "cross" / "2_mutual.txt").unlink()
    with pytest.raises(LayoutError, match="2_mutual.txt is missing"):
        read_cross_dir(tmp_path / "s" / "cross")


# ---- meta.yaml against the official sLM21 format ------------------------------------------------
# The official validator (PyPI zerospeech-benchmarks, `zrc`) pins pydantic<2 and cannot be
# installed beside our stack, so its MetaFile schema (v0.9.4) is restated here as a pydantic
# model: the types it parses plus the non-empty checks its get_validation() reports as errors.
def _official_schema():
    from typing import Literal, Optional

    from pydantic import BaseModel

    class ModelInfo(BaseModel):
        model_id: Optional[str] = None
        system_description: str
        train_set: str
        gpu_budget: Optional[str] = None

    class Publication(BaseModel):
        author_label: str = ""
        authors: str
        paper_title: Optional[str] = None
        paper_url: Optional[str] = None
        publication_year: int
        bib_reference: Optional[str] = None
        DOI: Optional[str] = None
        institution: str
        team: Optional[str] = None

    class Meta(BaseModel):
        username: Optional[str] = None
        submission_id: Optional[str] = None
        benchmark_name: Literal["prosAudit", "sLM21", "abxLS", "abx17", "tde17"]
        model_info: ModelInfo
        publication: Publication
        open_source: bool
        code_url: Optional[str] = None

    return Meta


def _official_errors(meta: dict) -> list[str]:
    import pydantic

    try:
        m = _official_schema().model_validate(meta)
    except pydantic.ValidationError as e:
        return [str(e)]
    errs = []
    for name, v in (("model_info.system_description", m.model_info.system_description),
                    ("model_info.train_set", m.model_info.train_set), ("publication.authors", m.publication.authors),
                    ("publication.institution", m.publication.institution)):
        if not v:
            errs.append(f"{name}: was not found or empty")
    if m.benchmark_name != "sLM21":
        errs.append("not sLM21")
    return errs


def test_submission_meta_passes_official_validation(tmp_path, caplog):
    import yaml

    from spiritlm.eval.zerospeech import SubmissionMeta, check_meta

    # defaults only: valid, with a warning naming what to fill in
    with caplog.at_level("WARNING"):
        defaulted = write_submission_meta(tmp_path / "a", "tiny")
    meta = yaml.safe_load((tmp_path / "a" / "meta.yaml").read_text())
    assert _official_errors(meta) == [] and check_meta(meta) == []
    assert meta["benchmark_name"] == "sLM21" and isinstance(meta["publication"]["publication_year"], int)
    assert meta["code_url"] and "code" not in meta["publication"]
    assert set(defaulted) == {"authors", "institution", "publication_year", "train_set"}
    assert "zerospeech.meta.authors" in caplog.text
    params = yaml.safe_load((tmp_path / "a" / "params.yaml").read_text())
    assert params["semantic"]["metric"] == "euclidean" and params["quiet"] is False

    # recipe fields win; train_set read from the recipe an export saved beside its weights
    model = tmp_path / "hf"
    model.mkdir()
    (model / "spiritlm_train_config.yaml").write_text(yaml.safe_dump(
        {"data": {"sources": [{"name": "speech", "path": "data/speech"}, {"name": "text", "path": "data/text"}]}}))
    m = SubmissionMeta(authors="Jane Doe, John Roe", institution="Example Lab", publication_year=2025,
                       code_url="https://example.org/code", gpu_budget="12")
    assert write_submission_meta(tmp_path / "b", "mine", m, model) == []
    meta = yaml.safe_load((tmp_path / "b" / "meta.yaml").read_text())
    assert _official_errors(meta) == []
    assert meta["model_info"]["train_set"] == "speech: data/speech; text: data/text"
    assert meta["publication"]["authors"] == "Jane Doe, John Roe" and meta["publication"]["publication_year"] == 2025

    # what the issue found in the old file is caught, by both checks
    old = {"model_info": {"model_id": "x", "system_description": "d", "train_set": "", "gpu_budget": 0.0},
           "publication": {"author_label": "", "authors": "", "publication_year": None, "institution": None,
                           "code": None}, "open_source": True}
    assert _official_errors(old)
    found = " ".join(check_meta(old))
    for what in ("benchmark_name", "train_set", "authors", "publication_year", "institution", "code_url"):
        assert what in found
    # a template value is refused before anything is written
    with pytest.raises(ValueError, match="template"):
        write_submission_meta(tmp_path / "c", "x", SubmissionMeta(authors="<required(str)>"))
    assert not (tmp_path / "c" / "meta.yaml").exists()
