"""Reports (Table 4 layout, JSON, JSONL, PNG), paired comparison, and the suite end to end on a
hermetic fixture dataset (tone wavs + fake encoder + tiny random model)."""

import csv
import json

import numpy as np
import pytest

from spiritlm.eval.report import (comparison_markdown, mcnemar_exact, markdown_table, paired_compare,
                                  plot_comparison, sign_flip_p, write_report)

torch = pytest.importorskip("torch")


def _res(acc, n=4, complete=True):
    return {"accuracy": acc, "complete": complete,
            "items": [{"key": [i], "voice": "v", "score": float(i < acc * n)} for i in range(n)]}


def test_markdown_layout_and_files(tmp_path):
    results = {"swuggy": {"T": _res(0.75), "S": _res(0.5)}, "sblimp": {"S": _res(0.25, complete=False)},
               "storycloze": {"T2S": _res(1.0)}, "stsp": {"T2T": {"accuracy": 0.4, "complete": True, "items": []}},
               "asr": {"ASR": {"wer": 0.3, "shots": 10, "n": 5, "complete": True, "items": []}}}
    md = markdown_table(results, "m")
    head = md.splitlines()[2]
    assert head.startswith("| Model | WUGGY T | WUGGY S | BLIMP T | BLIMP S | Topic-StoryCloze T |")
    row = md.splitlines()[4]
    assert row.startswith("| m | 75.0 | 50.0 | -- | 25.0* |")
    assert "INCOMPLETE (not final): sblimp/S" in md
    assert "| STSP accuracy | 0.40 |" in md and "| ASR (10-shot) | WER % | 30.0 | 5 |" in md
    paths = write_report(tmp_path, results, "m")
    data = json.loads(paths["json"].read_text())
    assert data["results"]["swuggy"]["T"]["accuracy"] == 0.75 and "items" not in data["results"]["swuggy"]["T"]
    lines = [json.loads(x) for x in paths["items"].read_text().splitlines()]
    assert {(x["task"], x["setting"]) for x in lines} == {("swuggy", "T"), ("swuggy", "S"), ("sblimp", "S"),
                                                         ("storycloze", "T2S")}
    assert paths["chart"].read_bytes()[:4] == b"\x89PNG"


def test_paired_compare():
    a = [{"task": "t", "setting": "S", "key": [i], "score": 1.0} for i in range(20)]
    b = [{"task": "t", "setting": "S", "key": [i], "score": float(i % 2)} for i in range(20)]
    r = paired_compare(a, b)["t/S"]
    assert r["n"] == 20 and r["diff"] == 0.5 and r["a_only"] == 10 and r["b_only"] == 0
    assert r["mcnemar_p"] == pytest.approx(2 / 2**10)
    assert r["ci95"][0] > 0.2 and r["ci95"][1] <= 0.75
    assert mcnemar_exact(3, 3) == 1.0
    assert r["test"] == "mcnemar" and r["p"] == r["mcnemar_p"]


def test_paired_compare_over_seeds_averages_items_and_shows_each_seed(tmp_path):
    def run(fn):
        return [{"task": "t", "setting": "S", "key": [i], "voice": "v", "score": fn(i)} for i in range(40)]

    # A is right on every item in both seeds; B is right on half the items in seed 0 and on none
    # in seed 1 -> per-item mean differences 0.5 or 1.0, a clear pooled effect
    a = [run(lambda i: 1.0), run(lambda i: 1.0)]
    b = [run(lambda i: float(i % 2)), run(lambda i: 0.0)]
    r = paired_compare(a, b)["t/S"]
    assert r["runs"] == [2, 2] and r["n"] == 40 and r["test"] == "sign-flip"
    assert r["diff"] == pytest.approx(0.75) and r["per_run_diff"] == pytest.approx([0.5, 1.0])
    assert r["p"] < 1e-3 and "mcnemar_p" not in r
    # no effect: identical runs -> p = 1, and an item missing from one run is left out everywhere
    same = paired_compare(a, [run(lambda i: 1.0), run(lambda i: 1.0)[:-1]])["t/S"]
    assert same["n"] == 39 and same["p"] == 1.0 and same["diff"] == 0.0
    assert r["per_run_acc_a"] == [1.0, 1.0] and r["per_run_acc_b"] == pytest.approx([0.5, 0.0])
    md = comparison_markdown(paired_compare(a, b), "A", "B")
    assert "sign-flip p" in md and "diff per seed" in md and "+50.0 +100.0" in md
    png = plot_comparison(paired_compare(a, b), tmp_path / "cmp.png", "A", "B")  # a dot per seed
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_sign_flip_p_matches_the_binomial_test_on_plus_minus_one():
    # +-1 differences: the sign-flip null is the binomial(n, 1/2) of McNemar's test
    d = np.array([1.0] * 9 + [-1.0] * 1 + [0.0] * 30)
    assert sign_flip_p(d, n_perm=200000) == pytest.approx(mcnemar_exact(9, 1), abs=0.003)


def _fixture_data(root):
    from spiritlm.eval.testing import write_tone

    lex = root / "zs" / "lexical" / "dev"
    syn = root / "zs" / "syntactic" / "dev"
    rows = []
    for k, (w, n) in enumerate([("cat", "cag"), ("dog", "dob")]):
        for v in ("V1", "V2"):
            for text, c in ((w, 1), (n, 0)):
                stem = f"{w}{v}{c}"
                write_tone(lex / f"{stem}.wav", 0.2 + 0.05 * c, 200 + 40 * k + 13 * c)
                rows.append([k, stem, v, 3, text, "x", 1, c])
    with open(lex / "gold.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "filename", "voice", "frequency", "word", "phones", "length", "correct"]] + rows)
    rows = []
    for k, (g, b) in enumerate([("the dog runs", "the dog run"), ("I saw it", "I it saw")]):
        for text, c in ((g, 1), (b, 0)):
            stem = f"s{k}{c}"
            write_tone(syn / f"{stem}.wav", 0.3, 300 + 20 * k + 7 * c)
            rows.append([k, stem, "V1", "agr", "sv", text, c])
    with open(syn / "gold.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "filename", "voice", "type", "subtype", "transcription", "correct"]] + rows)
    for k in range(2):
        write_tone(root / "sc" / "speech" / f"{2 * k}_x{k}_correct.wav", 0.4, 250 + k)
        write_tone(root / "sc" / "speech" / f"{2 * k + 1}_x{k}_incorrect.wav", 0.4, 270 + k)
        for part in ("mutual", "correct", "incorrect"):
            write_tone(root / "sc" / "cross" / f"{k}_{part}.wav", 0.3, 310 + 9 * k + len(part))
            (root / "sc" / "cross" / f"{k}_{part}.txt").write_text(f"the {part} story {k}\n")
    recs = []
    for k, (text, s) in enumerate([("a wonderful day", "positive"), ("a terrible day", "negative"),
                                   ("the table is red", "neutral")]):
        write_tone(root / "stsp" / f"{k}.wav", 0.3, 400 + 10 * k)
        recs.append({"id": k, "wav_path": f"{k}.wav", "asr": text, "sentiment": s, "emotion": "x", "split": "test"})
    (root / "stsp" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (root / "asr").mkdir()
    utts = [{"id": f"u{k}", "audio_path": f"../stsp/{k}.wav", "text": r["asr"]} for k, r in enumerate(recs)]
    (root / "asr" / "test.jsonl").write_text("".join(json.dumps(u) + "\n" for u in utts))


def _recipe(tmp_path, sections: str, top: str = ""):
    """An eval recipe over `_fixture_data(tmp_path / "data")` with the fake speech encoder."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""
data_root = "{tmp_path / 'data'}"
speech_encoder = "spiritlm.eval.testing:FakeSpeechEncoder"
device = "cpu"
{top}
[zerospeech]
root = "zs"
[storycloze]
speech = "sc/speech"
cross = "sc/cross"
""" + sections)
    return recipe


def test_suite_end_to_end_and_cli(tmp_path):
    from spiritlm.cli import main
    from spiritlm.eval.testing import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path / "model")
    _fixture_data(tmp_path / "data")
    recipe = _recipe(tmp_path, """
[stsp]
manifest = "stsp/test.jsonl"
settings = ["T2T", "S2T", "T2S"]
[fewshot]
asr_manifest = "asr/test.jsonl"
n_shots = 1
asr_max_new_tokens = 5
""")
    out = tmp_path / "out"
    assert main(["eval", str(recipe), "--model", str(model_dir), "--out", str(out), "--name", "tiny"]) == 0
    data = json.loads((out / "results.json").read_text())
    r = data["results"]
    assert data["status"] == "complete"
    assert set(r["swuggy"]) == {"T", "S"} and set(r["storycloze"]) == {"T", "S", "T2S", "S2T"}
    assert r["swuggy"]["S"]["n_pairs"] == 2 and r["sblimp"]["T"]["n_pairs"] == 2
    assert r["stsp"]["T2S"]["complete"] is False and "vocoder" in r["stsp"]["T2S"]["skipped"]
    assert 0 <= r["stsp"]["T2T"]["accuracy"] <= 1 and r["asr"]["ASR"]["n"] == 3
    md = (out / "report.md").read_text()
    assert "| tiny |" in md and "INCOMPLETE (not final): stsp/T2S" in md
    sub = out / "zerospeech_submission"
    assert (sub / "meta.yaml").is_file() and (sub / "params.yaml").is_file()
    assert len((sub / "lexical" / "dev.txt").read_text().splitlines()) == 8
    assert (out / "config.yaml").is_file() and (out / "chart.png").is_file()
    # paired comparison of a run with itself: no difference
    assert main(["eval-compare", str(out), str(out), "--out", str(tmp_path / "cmp")]) == 0
    cmp = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert all(v["diff"] == 0 for v in cmp.values()) and (tmp_path / "cmp" / "comparison.png").is_file()
    # a broken data set: the report is written, flagged INCOMPLETE, and the command fails
    (tmp_path / "data" / "sc" / "cross" / "1_mutual.txt").unlink()
    assert main(["eval", str(recipe), "--model", str(model_dir), "--out", str(tmp_path / "bad")]) == 1
    assert "INCOMPLETE RUN" in (tmp_path / "bad" / "report.md").read_text()
    assert json.loads((tmp_path / "bad" / "results.json").read_text())["status"].startswith("INCOMPLETE")


def test_bench_eval_small(tmp_path):
    from spiritlm.eval.bench import bench_eval

    r = bench_eval(n_pairs=3, context_len=12, ending_len=6, item_len=5, story_len=40, tmp_dir=tmp_path,
                   tiny_hidden=32, tiny_layers=2, rounds=2, min_round_s=0.01)  # harness smoke run
    assert r["pairs"] == 9 and r["max_abs_logprob_diff"] < 1e-3 and r["context_tokens_saved"] > 0
    assert r["max_abs_logprob_diff_pack_all"] < 1e-3 and r["pack_all_s"] > 0
    assert r["pairs_per_s_batched"] > 0 and r["pairs_per_s_one_at_a_time"] > 0


def test_comparison_names_the_test_of_each_row_when_they_differ():
    # one run each: t/S is scored 0/1 (McNemar), t/T has a tie (0.5) and gets the sign-flip test
    a = [{"task": "t", "setting": s, "key": [i], "score": 1.0} for s in ("S", "T") for i in range(10)]
    b = [{"task": "t", "setting": "S", "key": [i], "score": 0.0} for i in range(10)]
    b += [{"task": "t", "setting": "T", "key": [i], "score": 0.5 if i == 0 else 0.0} for i in range(10)]
    cmp = paired_compare(a, b)
    assert cmp["t/S"]["test"] == "mcnemar" and cmp["t/T"]["test"] == "sign-flip"
    md = comparison_markdown(cmp, "A", "B")
    assert "| paired p |" in md and md.rstrip().endswith("t/T.")


def test_each_model_is_tested_against_chance_on_two_way_tasks():
    from spiritlm.eval.report import chance_p

    # 0/1 items: the exact binomial test; 15 of 20 right -> p = 0.041
    assert chance_p(np.array([1.0] * 15 + [0.0] * 5), binary=True) == pytest.approx(0.0414, abs=1e-4)
    # items averaged over seeds: sign-flip test of score - 0.5; all at 0.5 carry no evidence
    assert chance_p(np.full(30, 0.5), binary=False) == 1.0
    assert chance_p(np.array([0.75] * 30), binary=False) < 1e-3

    def items(task, setting, fn, n=40):
        return [{"task": task, "setting": setting, "key": [i], "score": fn(i)} for i in range(n)]

    a = items("topic_storycloze", "T2S", lambda i: float(i % 4 != 0)) + items("stsp", "T2T", lambda i: 1.0)
    b = items("topic_storycloze", "T2S", lambda i: float(i % 2)) + items("stsp", "T2T", lambda i: 0.0)
    cmp = paired_compare(a, b)
    r = cmp["topic_storycloze/T2S"]
    assert r["chance_p_a"] == pytest.approx(mcnemar_exact(30, 10)) and r["chance_p_b"] == 1.0
    assert "chance_p_a" not in cmp["stsp/T2T"]  # three-way: 50% is not chance
    md = comparison_markdown(cmp, "A", "B")
    assert "| p vs chance (A / B) |" in md and "| 0.0022 / 1 |" in md and md.count("| -- |") == 1


def test_transfer_check_reads_the_ablation_claims_off_the_comparison():
    from spiritlm.eval.report import transfer_check

    def items(setting, fn, n=60):
        return [{"task": "topic_storycloze", "setting": setting, "key": [i], "score": fn(i)} for i in range(n)]

    # A: S at chance, T->S clearly right and ahead of B, S->T right but B is right as often
    a = items("S", lambda i: float(i % 2)) + items("T2S", lambda i: 1.0) + items("S2T", lambda i: 1.0)
    b = items("S", lambda i: float(i % 2)) + items("T2S", lambda i: float(i % 2)) + items("S2T", lambda i: 1.0)
    text = transfer_check(paired_compare(a, b), "interleaved", "no_interleaving")
    lines = text.splitlines()
    assert lines[1] == "  S: interleaved 50.0%, NOT reliably above chance (p = 1)"
    assert "T->S: interleaved 100.0%, above chance" in lines[2] and "; ahead of no_interleaving: +50.0" in lines[2]
    assert "S->T: interleaved 100.0%, above chance" in lines[3] and "NOT reliably ahead of no_interleaving: +0.0" in lines[3]
    # five claims, Holm-adjusted: S above chance (p = 1) and S->T ahead (p = 1) do not hold
    assert lines[4] == "  Holm-adjusted over these 5 tests, 3 hold: T->S above chance, T->S ahead, S->T above chance"
    assert lines[5] == "  (one training seed per model)"
    # several seeds: each seed's accuracy is shown, and the counts of both models
    multi = transfer_check(paired_compare([a, a], [b, b]), "A", "B").splitlines()
    assert "T->S: A 100.0% (per seed 100.0, 100.0)" in multi[2] and "(2 / 2 training seeds of A / B" in multi[-1]
    # a setting that was not run says so instead of passing silently
    assert "T->S: not evaluated" in transfer_check(paired_compare(items("S", lambda i: 1.0), items("S", lambda i: 0.0)),
                                                   "A", "B")


def test_holm_adjusts_step_down():
    from spiritlm.eval.report import holm

    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5] and holm([0.9, 0.9]) == [1.0, 1.0]


def test_units_cache_encodes_the_benchmark_audio_once(tmp_path):
    """`units_cache`: a second model evaluated with the same speech encoder reads the units of
    the first run instead of encoding the audio again; another encoder's file is not read."""
    from spiritlm.cli import main
    from spiritlm.eval.testing import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path / "model")
    _fixture_data(tmp_path / "data")
    cache = tmp_path / "cache" / "units.npz"
    recipe = _recipe(tmp_path, "", f'units_cache = "{cache}"')

    def run(name: str, *extra: str) -> dict:
        assert main(["eval", str(recipe), "--model", str(model_dir), "--out", str(tmp_path / name), *extra]) == 0
        return json.loads((tmp_path / name / "results.json").read_text())

    first = run("a")
    written = cache.stat().st_mtime_ns
    second = run("b")
    assert first["speech_files_encoded"] > 0 and second["speech_files_encoded"] == 0
    assert cache.stat().st_mtime_ns == written  # nothing new encoded: the file is not rewritten
    assert first["results"] == second["results"]
    other = ["--set", "speech_encoder_args={hubert_size: 400}"]  # another encoder: its own units
    third = run("c", *other)
    assert third["speech_files_encoded"] == first["speech_files_encoded"]
    assert third["results"] != first["results"]
    assert run("d", *other)["speech_files_encoded"] == 0  # the file now holds the new encoder's units
    cache.write_bytes(b"not a zip")  # a broken file: encoded again
    assert run("e", *other)["speech_files_encoded"] == third["speech_files_encoded"]
    assert run("f", *other)["speech_files_encoded"] == 0
