"""Reports: a Markdown table laid out like the paper's Table 4, JSON, per-item JSONL, a PNG chart,
and a paired comparison of two models on the same items.

``results`` is ``{task: {setting: result}}`` with tasks ``swuggy, sblimp, topic_storycloze,
storycloze`` (settings ``T, S, T2S, S2T``), ``stsp`` (settings ``T2T, T2S, S2S, S2T``) and
``asr``/``tts``. A result is a dict with ``accuracy`` (or ``wer``/``cer``), ``complete`` and
``items``. A result that is missing prints as ``--``; one that is not complete prints with a
``*`` and the report says so -- partial numbers are never shown as final.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from spiritlm import stats

TABLE4 = [("swuggy", "WUGGY", ("T", "S")), ("sblimp", "BLIMP", ("T", "S")),
          ("topic_storycloze", "Topic-StoryCloze", ("T", "S", "T2S", "S2T")),
          ("storycloze", "StoryCloze", ("T", "S", "T2S", "S2T"))]
STSP_SETTINGS = ("T2T", "T2S", "S2S", "S2T")
ARROW = {"T2S": "T→S", "S2T": "S→T", "T2T": "T→T", "S2S": "S→S"}
PAPER_BASE_7B = {("swuggy", "T"): 80.3, ("swuggy", "S"): 69.0, ("sblimp", "T"): 73.3, ("sblimp", "S"): 58.3,
                 ("topic_storycloze", "T"): 98.0, ("topic_storycloze", "S"): 82.9,
                 ("topic_storycloze", "T2S"): 72.7, ("topic_storycloze", "S2T"): 88.6,
                 ("storycloze", "T"): 79.4, ("storycloze", "S"): 61.0, ("storycloze", "T2S"): 59.5,
                 ("storycloze", "S2T"): 64.6}


def _cell(res: Mapping | None, key: str = "accuracy", scale: float = 100.0, digits: int = 1) -> str:
    if not res or key not in res or res[key] is None or (isinstance(res[key], float) and math.isnan(res[key])):
        return "--"
    star = "" if res.get("complete", True) else "*"
    return f"{res[key] * scale:.{digits}f}{star}"


def markdown_table(results: Mapping, model_name: str = "model", paper_row: bool = True) -> str:
    head = ["Model"]
    for _, title, settings in TABLE4:
        head += [f"{title} {ARROW.get(s, s)}" for s in settings]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    row = [model_name]
    for task, _, settings in TABLE4:
        row += [_cell(results.get(task, {}).get(s)) for s in settings]
    lines.append("| " + " | ".join(row) + " |")
    if paper_row:
        prow = ["Spirit LM Base 7B (paper)"]
        for task, _, settings in TABLE4:
            prow += [f"{PAPER_BASE_7B[(task, s)]:.1f}" for s in settings]
        lines.append("| " + " | ".join(prow) + " |")
    out = ["## Zero-shot comprehension (accuracy %, token-normalised log-likelihood)", "", *lines, ""]
    stsp = results.get("stsp", {})
    few = {k: results[k][k.upper()] for k in ("asr", "tts") if results.get(k, {}).get(k.upper())}
    if stsp or few:
        out += ["## STSP and few-shot", "", "| Task | " + " | ".join(ARROW[s] for s in STSP_SETTINGS) + " |",
                "|---|" + "---|" * len(STSP_SETTINGS)]
        if stsp:
            out.append("| STSP accuracy | " + " | ".join(_cell(stsp.get(s), scale=1.0, digits=2)
                                                        for s in STSP_SETTINGS) + " |")
            skipped = {s: r["skipped"] for s, r in stsp.items() if r.get("skipped")}
            for s, why in skipped.items():
                out.append(f"| STSP {ARROW.get(s, s)} skipped | {why} | | | |")
        out += ["", "| Few-shot | metric | value | n |", "|---|---|---|---|"]
        for k, res in few.items():
            if res.get("skipped"):
                out.append(f"| {k.upper()} | -- | skipped: {res['skipped']} | -- |")
                continue
            metric = "wer" if k == "asr" else "cer"
            used = res.get("shots_used")  # prompts cut to the model's context: say how far
            shots = f"{res.get('shots', '?')}-shot" + (f", as few as {used['min']} to fit the context" if used else "")
            out.append(f"| {k.upper()} ({shots}) | {metric.upper()} % | "
                       f"{_cell(res, metric)} | {res.get('n', '--')} |")
        out.append("")
    cls = results.get("speech_cls", {}).get("S")
    if cls:
        out += ["## Few-shot speech classification", "", "| Task | shots/class | classes | accuracy % | chance % | n |",
                "|---|---|---|---|---|---|",
                f"| speech → [Text] label | {cls.get('shots_per_class', '?')} | {len(cls.get('labels', []))} | "
                f"{_cell(cls)} | {100 * cls.get('chance', float('nan')):.1f} | {cls.get('n', '--')} |", ""]
    out += text_ability_table(results.get("lm_eval", {}))
    partial = [f"{t}/{s}" for t, d in results.items() if isinstance(d, Mapping)
               for s, r in d.items() if isinstance(r, Mapping) and not r.get("complete", True)]
    if partial:
        out.append(f"\\* INCOMPLETE (not final): {', '.join(partial)}")
    return "\n".join(out) + "\n"


PAPER_MMLU = {"Spirit LM Base 7B": 36.9}  # MMLU accuracy %, the paper's text-ability number


def text_ability_table(lm_eval: Mapping) -> list[str]:
    """Rows of the lm-evaluation-harness tasks the recipe asked for (``text_tasks``), beside the
    speech rows; a group's subtasks stay in results.json."""
    rows = {t: r for t, r in lm_eval.items() if isinstance(r, Mapping) and r.get("requested", True)}
    if not rows:
        return []
    out = ["## Text ability (lm-evaluation-harness)", "", "| Task | acc % | acc_norm % | n |", "|---|---|---|---|"]
    for task, r in rows.items():
        out.append(f"| {task} | {_cell(r, 'acc')} | {_cell(r, 'acc_norm')} | {r.get('n', '--')} |")
    if "mmlu" in rows:
        out.append(f"| mmlu, Spirit LM Base 7B (paper) | {PAPER_MMLU['Spirit LM Base 7B']:.1f} | -- | -- |")
    return out + [""]


def summary(results: Mapping) -> dict:
    """Every number but the per-item records."""
    def strip(x):
        if isinstance(x, Mapping):
            return {k: strip(v) for k, v in x.items() if k != "items"}
        return x
    return strip(results)


def write_report(out_dir: Path, results: Mapping, model_name: str = "model", extra: Mapping | None = None) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "json": out / "results.json", "items": out / "items.jsonl",
             "chart": out / "chart.png"}
    paths["markdown"].write_text(f"# Evaluation: {model_name}\n\n" + markdown_table(results, model_name))
    data = {"model": model_name, "results": summary(results), **(extra or {})}
    paths["json"].write_text(json.dumps(data, indent=2, default=str) + "\n")
    with open(paths["items"], "w", encoding="utf-8") as f:
        for task, d in results.items():
            if not isinstance(d, Mapping):
                continue
            for setting, res in d.items():
                for it in (res or {}).get("items", []) if isinstance(res, Mapping) else []:
                    f.write(json.dumps({"task": task, "setting": setting, **it}, default=str) + "\n")
    plot_chart(results, paths["chart"], model_name)
    return paths


def plot_chart(results: Mapping, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, vals = [], []
    for task, name, settings in TABLE4:
        for s in settings:
            r = results.get(task, {}).get(s)
            if r and r.get("accuracy") is not None:
                labels.append(f"{name}\n{ARROW.get(s, s)}")
                vals.append(100 * r["accuracy"])
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(labels) + 1), 3.5))
    ax.bar(range(len(vals)), vals, color="#4c72b0")
    ax.axhline(50, color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(range(len(vals)), labels, fontsize=7)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy %")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---- paired comparison ------------------------------------------------------------------------
def item_key(it: Mapping) -> tuple:
    k = it.get("key", it.get("id"))
    return (it["task"], it["setting"], json.dumps(k), it.get("voice", ""))


def read_items(path: Path) -> list[dict]:
    p = Path(path)
    if p.is_dir():
        p = p / "items.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: run `spiritlm eval` for that model first")
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (A right only), c (B right only)
    (:func:`spiritlm.stats.mcnemar_exact`)."""
    return stats.mcnemar_exact(b, c)


def _as_runs(items: Sequence) -> list[list[dict]]:
    return [list(r) for r in items] if items and isinstance(items[0], (list, tuple)) else [list(items)]


def sign_flip_p(diffs: np.ndarray, n_perm: int = 20000, seed: int = 0) -> float:
    """Two-sided paired sign-flip (permutation) test of mean(diffs) = 0, Monte Carlo, seeded
    (:func:`spiritlm.stats.sign_flip_test`)."""
    return stats.sign_flip_test(diffs, n_perm=n_perm, rng=seed)


# Tasks scored as a choice between two candidates, where 50% is chance. (STSP is three-way.)
TWO_WAY_TASKS = ("swuggy", "sblimp", "storycloze", "topic_storycloze")


def chance_p(scores: np.ndarray, binary: bool, seed: int = 0) -> float:
    """Two-sided p of "accuracy = 50%" from per-item scores in [0, 1].

    0/1 scores: the exact binomial test (McNemar's formula on right/wrong counts). Scores in
    between (ties, or averaged over seeds): a sign-flip test of the items' ``score - 0.5``, whose
    null -- each item as likely to lean to either candidate -- is what a chance model gives.
    """
    s = np.asarray(scores, dtype=np.float64)
    if binary:
        return stats.binomial_test(int(np.count_nonzero(s == 1.0)), s.size, 0.5)
    return sign_flip_p(s - 0.5, seed=seed)


def paired_compare(items_a: Sequence, items_b: Sequence, n_boot: int = 2000, seed: int = 0) -> dict:
    """Per (task, setting): accuracies on the shared items, difference A-B with a bootstrap 95% CI
    over items, and a paired test.

    ``items_a`` / ``items_b``: one run's items, or a list of runs of the same model (e.g. one per
    training seed). With one run of 0/1 scores the test is McNemar's exact test. With several,
    every item's score is first averaged over the runs (only items scored in every run count),
    the test is a paired sign-flip test on those per-item differences, and ``per_run_diff`` holds
    the difference of each pair of runs (run i of A against run i of B) so the spread across
    seeds is visible next to the pooled estimate. For two-way tasks (``TWO_WAY_TASKS``)
    ``chance_p_a`` / ``chance_p_b`` test each model's pooled accuracy against 50%."""
    runs_a, runs_b = _as_runs(items_a), _as_runs(items_b)
    maps_a = [{item_key(it): it["score"] for it in r if "score" in it} for r in runs_a]
    maps_b = [{item_key(it): it["score"] for it in r if "score" in it} for r in runs_b]
    shared = set.intersection(*(set(m) for m in maps_a + maps_b))
    groups: dict[tuple, list] = defaultdict(list)
    for k in sorted(shared):
        groups[(k[0], k[1])].append(k)
    rng = np.random.default_rng(seed)
    single = len(runs_a) == len(runs_b) == 1
    out = {}
    for (task, setting), keys in sorted(groups.items()):
        n = len(keys)
        a_kr = np.array([[m[k] for m in maps_a] for k in keys], dtype=np.float64)  # items x runs
        b_kr = np.array([[m[k] for m in maps_b] for k in keys], dtype=np.float64)
        a, b = a_kr.mean(1), b_kr.mean(1)
        d = a - b
        binary = single and set(np.unique(np.concatenate([a, b]))) <= {0.0, 1.0}
        bb, cc = int(np.count_nonzero(d > 0)), int(np.count_nonzero(d < 0))
        r = {"n": n, "runs": [len(runs_a), len(runs_b)], "acc_a": float(a.mean()), "acc_b": float(b.mean()),
             "diff": float(d.mean()), "ci95": list(stats.paired_bootstrap_ci(a, b, n_boot=n_boot, rng=rng)),
             "a_only": bb, "b_only": cc}
        if binary:
            r["p"] = r["mcnemar_p"] = mcnemar_exact(bb, cc)
            r["test"] = "mcnemar"
        else:
            r["p"] = sign_flip_p(d, seed=seed)
            r["test"] = "sign-flip"
        if task in TWO_WAY_TASKS:
            for side, x in (("a", a), ("b", b)):
                r[f"chance_p_{side}"] = chance_p(x, single and set(np.unique(x)) <= {0.0, 1.0}, seed)
        if len(runs_a) > 1 or len(runs_b) > 1:
            r["per_run_acc_a"] = [float(x) for x in a_kr.mean(0)]
            r["per_run_acc_b"] = [float(x) for x in b_kr.mean(0)]
        if len(runs_a) == len(runs_b) > 1:
            r["per_run_diff"] = [float(x) for x in (a_kr - b_kr).mean(0)]
        out[f"{task}/{setting}"] = r
    return out


def comparison_markdown(cmp: Mapping, name_a: str = "A", name_b: str = "B") -> str:
    multi = any("per_run_diff" in r for r in cmp.values())
    tests = {r["test"] for r in cmp.values()}
    test = {frozenset({"mcnemar"}): "McNemar p", frozenset({"sign-flip"}): "sign-flip p"}.get(
        frozenset(tests), "paired p")
    head = f"| task/setting | n | {name_a} | {name_b} | diff (95% CI) | {test} | p vs chance ({name_a} / {name_b}) |"
    lines = [head + (" diff per seed |" if multi else ""), "|---|---|---|---|---|---|---|" + ("---|" if multi else "")]
    for k, r in cmp.items():
        p = r["p"]
        chance = (f"{r['chance_p_a']:.2g} / {r['chance_p_b']:.2g}" if "chance_p_a" in r else "--")
        row = (f"| {k} | {r['n']} | {100 * r['acc_a']:.1f} | {100 * r['acc_b']:.1f} | "
               f"{100 * r['diff']:+.1f} ({100 * r['ci95'][0]:+.1f}, {100 * r['ci95'][1]:+.1f}) | {p:.3g} | {chance} |")
        if multi:
            row += " " + " ".join(f"{100 * x:+.1f}" for x in r.get("per_run_diff", [])) + " |"
        lines.append(row)
    if test == "paired p":
        lines.append("")
        lines.append("paired p: McNemar's exact test where every item scored 0 or 1, a sign-flip test "
                     "where items scored in between (ties 0.5, or averaged over seeds): "
                     + ", ".join(k for k, r in cmp.items() if r["test"] == "sign-flip") + ".")
    if any("chance_p_a" in r for r in cmp.values()):
        lines.append("")
        lines.append("p vs chance: each model's accuracy against 50% on two-way tasks (exact binomial "
                     "test on 0/1 items; sign-flip test of score - 0.5 where items are tied or averaged "
                     "over seeds).")
    return "\n".join(lines) + "\n"


def holm(ps: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, family-wise error) in the order given
    (:func:`spiritlm.stats.holm`)."""
    return stats.holm(ps)


def transfer_check(cmp: Mapping, name_a: str, name_b: str, task: str = "topic_storycloze",
                   alpha: float = 0.05) -> str:
    """The paper's ablation read off ``cmp``: is A (interleaved) above chance on S, T->S and S->T,
    and above B (no interleaving) across modalities? One line per claim, with its numbers and,
    with several seeds, A's accuracy per seed. A last line adjusts the claims' p-values for
    testing five of them at once (Holm), since a lone p near 0.05 among five is weak."""
    lines = [f"check ({task}, two-sided p < {alpha}):"]
    tests: list[tuple[str, float, bool]] = []  # (claim, p, direction right)
    for setting, label in (("S", "S"), ("T2S", "T->S"), ("S2T", "S->T")):
        r = cmp.get(f"{task}/{setting}")
        if r is None or "chance_p_a" not in r:
            lines.append(f"  {label}: not evaluated")
            continue
        above = r["acc_a"] > 0.5 and r["chance_p_a"] < alpha
        seeds = r.get("per_run_acc_a", [])
        per_seed = f" (per seed {', '.join(f'{100 * x:.1f}' for x in seeds)})" if len(seeds) > 1 else ""
        claim = (f"  {label}: {name_a} {100 * r['acc_a']:.1f}%{per_seed}, "
                 f"{'above chance' if above else 'NOT reliably above chance'} (p = {r['chance_p_a']:.2g})")
        tests.append((f"{label} above chance", r["chance_p_a"], r["acc_a"] > 0.5))
        if setting != "S":
            ahead = r["diff"] > 0 and r["p"] < alpha
            claim += (f"; {'ahead of' if ahead else 'NOT reliably ahead of'} {name_b}: "
                      f"{100 * r['diff']:+.1f} points (p = {r['p']:.2g})")
            tests.append((f"{label} ahead", r["p"], r["diff"] > 0))
        lines.append(claim)
    if tests:
        adj = holm([p for _, p, _ in tests])
        held = [name for (name, _, right), q in zip(tests, adj) if right and q < alpha]
        lines.append(f"  Holm-adjusted over these {len(tests)} tests, {len(held)} hold: "
                     + (", ".join(held) or "none"))
    runs = next(iter(cmp.values()), {}).get("runs", [1, 1])
    if runs[0] == runs[1] == 1:
        lines.append("  (one training seed per model)")
    else:
        lines.append(f"  ({runs[0]} / {runs[1]} training seeds of {name_a} / {name_b}; each item's score "
                     "averaged over them, so the p-values are over items, for these trained models)")
    return "\n".join(lines) + "\n"


def plot_comparison(cmp: Mapping, path: Path, name_a: str = "A", name_b: str = "B") -> Path:
    """Grouped bars (A, B) per task/setting with the paired p above; with several runs per model
    (seeds) the bars are the pooled accuracies and each run is a black dot on its bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(cmp)
    x = np.arange(len(keys))
    a = [100 * cmp[k]["acc_a"] for k in keys]
    b = [100 * cmp[k]["acc_b"] for k in keys]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(keys) + 1), 3.5))
    ax.bar(x - 0.2, a, 0.4, label=name_a, color="#4c72b0")
    ax.bar(x + 0.2, b, 0.4, label=name_b, color="#dd8452")
    for i, k in enumerate(keys):
        p = cmp[k]["p"]
        top = max([a[i], b[i]] + [100 * v for v in cmp[k].get("per_run_acc_a", []) + cmp[k].get("per_run_acc_b", [])])
        ax.text(i, top + 2, f"p={p:.2g}", ha="center", fontsize=6)
        for dx, field in ((-0.2, "per_run_acc_a"), (0.2, "per_run_acc_b")):
            runs = cmp[k].get(field, [])
            if runs:
                ax.scatter(np.full(len(runs), i + dx), [100 * v for v in runs], s=6, color="black", zorder=3,
                           label="one seed" if i == 0 and dx < 0 else None)
    ax.axhline(50, color="grey", ls="--", lw=1)
    ax.set_xticks(x, [k.replace("/", "\n") for k in keys], fontsize=7)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy %")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
