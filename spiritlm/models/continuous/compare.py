"""The comparison table: continuous-input models beside the interleaved unit model.

    spiritlm continuous compare --out runs/compare.md \\
        unit=runs/demo/eval_unit  projector=runs/eval_proj  lora=runs/eval_lora  full=runs/eval_full

Each ``name=EVAL_DIR`` is a ``spiritlm eval`` output (``results.json`` + ``items.jsonl``) of one
model; its training run is read from the model's ``spiritlm_train_config.yaml`` when present.
Columns: ASR WER (continuous: zero-shot transcription; unit: the suite's few-shot ASR) with a
bootstrap 95% CI over utterances (corpus WER of each resample), StoryCloze / Topic-StoryCloze
S->T accuracy with a bootstrap 95% CI over items, trainable parameters (``param_counts.json``;
a unit model trains all of them) and training tokens/s (mean of the logged rates).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from spiritlm import stats
from spiritlm.stats import normalize_text  # the one ASR normalisation


def _errors_words(items: Sequence[dict]) -> list[stats.EditCounts]:
    """Per-utterance word alignment counts of normalised ``ref`` / ``hyp`` (the ASR normalisation;
    empty text by :mod:`spiritlm.stats`' rule)."""
    return stats.word_errors([normalize_text(it["ref"]) for it in items], [normalize_text(it["hyp"]) for it in items])


def wer_with_ci(items: Sequence[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Corpus WER of ``items`` ({"ref", "hyp"}) and a bootstrap 95% CI over utterances."""
    counts = _errors_words(items)
    e = np.asarray([c.errors for c in counts], float)
    w = np.asarray([c.words for c in counts], float)
    if not w.sum():
        return {"wer": float("nan"), "ci95": [float("nan")] * 2, "n": 0}
    lo, hi = stats.bootstrap_ci(e, w, n_boot=n_boot, rng=seed)
    return {"wer": float(e.sum() / w.sum()), "ci95": [lo, hi], "n": len(items)}


def _utterance_errors(runs: Sequence[Sequence[dict]]) -> dict[str, tuple[float, int]]:
    """id -> (word errors averaged over the runs, reference words) of utterances every run scored."""
    per: dict[str, list] = {}
    for items in runs:
        for it, c in zip(items, _errors_words(items)):
            per.setdefault(str(it["id"]), []).append((c.errors, c.words))
    return {k: (float(np.mean([e for e, _ in v])), v[0][1]) for k, v in per.items() if len(v) == len(runs)}


def paired_wer(runs_a: Sequence[Sequence[dict]], runs_b: Sequence[Sequence[dict]], n_boot: int = 2000,
               seed: int = 0) -> dict:
    """Corpus WER of A and B on the utterances both scored (each utterance's errors averaged over
    a model's runs, e.g. training seeds), and a paired bootstrap 95% CI over utterances of each
    WER and of A - B. ``runs_*``: one list of {"id", "ref", "hyp"} per run."""
    ea, eb = _utterance_errors(runs_a), _utterance_errors(runs_b)
    ids = sorted(set(ea) & set(eb))
    if not ids or not sum(ea[i][1] for i in ids):  # no reference words: no WER
        nan = float("nan")
        return {"n": 0, "wer_a": nan, "wer_b": nan, "diff": nan, "ci95": [nan, nan], "ci95_a": [nan, nan],
                "ci95_b": [nan, nan]}
    a = np.array([ea[i][0] for i in ids])
    b = np.array([eb[i][0] for i in ids])
    w = np.array([ea[i][1] for i in ids], float)
    ci = stats.paired_bootstrap(a, b, w, n_boot=n_boot, rng=seed)
    return {"n": len(ids), "words": int(w.sum()), "wer_a": float(a.sum() / w.sum()), "wer_b": float(b.sum() / w.sum()),
            "diff": float((a.sum() - b.sum()) / w.sum()), "ci95": list(ci["diff"]), "ci95_a": list(ci["a"]),
            "ci95_b": list(ci["b"]), "runs": [len(runs_a), len(runs_b)]}


def acc_with_ci(scores: Sequence[float], n_boot: int = 2000, seed: int = 0) -> dict:
    s = np.asarray(scores, float)
    lo, hi = stats.bootstrap_ci(s, n_boot=n_boot, rng=seed)
    return {"accuracy": float(s.mean()) if s.size else float("nan"), "ci95": [lo, hi], "n": int(s.size)}


def _run_dir_of(model: str) -> Path | None:
    f = Path(model) / "spiritlm_train_config.yaml" if model else None
    if f is None or not f.is_file():
        return None
    import yaml

    return Path(yaml.safe_load(f.read_text())["run_dir"])


def summarize(eval_dir: str | Path) -> dict:
    """One eval folder -> {asr, storycloze, topic_storycloze, trainable, total, tokens_per_s}."""
    import yaml

    d = Path(eval_dir)
    items: dict[tuple[str, str], list[dict]] = {}
    for line in (d / "items.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            it = json.loads(line)
            items.setdefault((it["task"], it["setting"]), []).append(it)
    out: dict = {}
    if items.get(("asr", "ASR")):
        out["asr"] = wer_with_ci(items[("asr", "ASR")])
    for task in ("storycloze", "topic_storycloze"):
        if items.get((task, "S2T")):
            out[task] = acc_with_ci([it["score"] for it in items[(task, "S2T")]])
    cfg = yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").is_file() else {}
    model = (cfg or {}).get("model", "")
    weights = Path(model) / "model.safetensors" if model else None
    if weights is not None and weights.is_file() and not (Path(model) / "continuous.json").is_file():
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:  # a unit model trains every parameter
            out["trainable"] = out["total"] = int(sum(np.prod(f.get_slice(k).get_shape()) for k in f.keys()))
    run = _run_dir_of(model)
    if run is not None and run.is_dir():
        pc = run / "param_counts.json"
        if pc.is_file():
            counts = json.loads(pc.read_text())
            out["trainable"] = sum(v["trainable"] for v in counts.values())
            out["total"] = sum(v["total"] for v in counts.values())
        m = run / "metrics.jsonl"
        if m.is_file():
            rates = [json.loads(x).get("tokens_per_s") for x in m.read_text().splitlines() if x.strip()]
            rates = [r for r in rates if r]
            if rates:
                out["tokens_per_s"] = float(np.mean(rates))
    return out


def _cell(r: dict | None, key: str, pct: bool = True) -> str:
    if not r or key not in r or r[key] != r[key]:
        return "--"
    f = 100.0 if pct else 1.0
    lo, hi = r["ci95"]
    return f"{f * r[key]:.1f} [{f * lo:.1f}, {f * hi:.1f}]"


def table(rows: dict[str, dict]) -> str:
    head = ("| model | ASR WER % [95% CI] | StoryCloze S→T % [95% CI] | Topic-StoryCloze S→T % [95% CI] "
            "| trainable params | tokens/s |")
    lines = [head, "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        tr = f"{r['trainable']:,} / {r['total']:,}" if "trainable" in r else "--"
        tps = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "--"
        lines.append(f"| {name} | {_cell(r.get('asr'), 'wer')} | {_cell(r.get('storycloze'), 'accuracy')} | "
                     f"{_cell(r.get('topic_storycloze'), 'accuracy')} | {tr} | {tps} |")
    return "\n".join(lines) + "\n"
