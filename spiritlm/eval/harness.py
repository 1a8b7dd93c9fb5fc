"""Text ability through lm-evaluation-harness (``lm_eval``), used as is.

Our exports and the released Spirit LM checkpoints are HF LLaMA directories whose tokenizer
(``tokenizer.model`` + the speech tokens as added tokens) loads with ``AutoTokenizer``, so the
harness's own ``hf`` model runs on them unchanged; this module only builds its arguments from the
suite recipe and turns its output into our report's rows:

    text_tasks = ["mmlu", "hellaswag"]   # in an eval/*.toml suite recipe: harness task/group names
    [harness]
    include_path = "text_tasks"     # local task YAMLs (relative to data_root), e.g. offline copies
    num_fewshot = 5                 # the paper's MMLU is 5-shot

Offline: set ``HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1`` and either have the datasets in the HF
cache already, or point a local task YAML at local files (``dataset_path: json`` +
``dataset_kwargs: {data_files: {test: /data/mmlu/test.jsonl}}``; eval/README.md, Text ability).
A task the harness cannot find or load raises :class:`HarnessError` with what to set.

Results: ``{task: {"acc": ..., "acc_norm": ..., "n": ..., "items": [...]}}`` with one item per
document (the harness's per-choice log-likelihoods, its target and whether argmax was right), so
``spiritlm eval-compare`` pairs text items like the speech ones.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from spiritlm.text_tokenizer import has_text_tokenizer

log = logging.getLogger(__name__)


class HarnessError(ValueError):
    """A harness task that cannot run as configured; the message says what to change."""


@dataclass
class HarnessConfig:
    include_path: str = ""  # directory of local task YAMLs (relative to data_root)
    builtin_tasks: bool = True  # index the harness's own tasks too (false: only include_path, faster)
    num_fewshot: int = -1  # -1 = each task's default (MMLU in the paper: 5)
    limit: int = 0  # documents per task (0 = all); for smoke runs only
    batch_size: int = 8
    max_length: int = 0  # 0 = the model config's max_position_embeddings
    seed: int = 1234  # the harness's few-shot sampling seed
    log_samples: bool = True  # per-document items into items.jsonl


def _metric(value: Any) -> float | None:
    if value is None or isinstance(value, str):
        return None
    v = float(value)
    return None if math.isnan(v) else v


def run_harness(tasks: Sequence[str], cfg: HarnessConfig, model_dir: str | Path | None = None, model=None,
                tokenizer=None, device: str = "cpu", dtype: str = "float32", root: Path | None = None) -> dict:
    """Evaluate the harness ``tasks`` with the harness's HF model on ``model_dir`` (or on an already
    loaded HF ``model`` + our ``tokenizer``, as the demo passes them). -> ``{task: result}``."""
    if not tasks:
        return {}
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:  # the `eval` extra
        raise HarnessError(f"lm-evaluation-harness is not installed ({e}); pip install 'lm-eval>=0.4'") from None
    include = None
    if cfg.include_path:
        include = Path(cfg.include_path)
        if root is not None and not include.is_absolute():
            include = Path(root) / include
        if not include.is_dir():
            raise HarnessError(f"harness.include_path={include} is not a directory of task YAMLs")
    if include is None and not cfg.builtin_tasks:
        raise HarnessError("harness.builtin_tasks=false needs harness.include_path (a directory of task YAMLs)")
    tm = TaskManager(include_path=str(include) if include else None, include_defaults=cfg.builtin_tasks)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise HarnessError(f"harness task(s) {unknown} not found in lm-eval "
                           f"{getattr(lm_eval, '__version__', '')}"
                           + (f" nor in {include}" if include else "")
                           + "; check the names (`lm-eval ls tasks`) or add a task YAML to harness.include_path")
    kw: dict[str, Any] = {"batch_size": cfg.batch_size, "device": device, "dtype": dtype}
    if cfg.max_length:
        kw["max_length"] = cfg.max_length
    if model is not None:
        kw["pretrained"] = model
        kw["tokenizer"] = _hf_tokenizer(tokenizer, model_dir)
    else:
        if not model_dir:
            raise HarnessError("harness: no model directory; set model= (a checkpoint directory)")
        kw["pretrained"] = str(model_dir)
    lm = HFLM(**kw)
    try:
        out = lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), num_fewshot=None if cfg.num_fewshot < 0 else cfg.num_fewshot,
            limit=cfg.limit or None, task_manager=tm, log_samples=cfg.log_samples,
            random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
            fewshot_random_seed=cfg.seed, bootstrap_iters=0)
    except (ConnectionError, OSError) as e:
        raise HarnessError(f"harness could not load a task's data ({type(e).__name__}: {e}); offline, "
                           "point a local task YAML (harness.include_path) at local files: "
                           "dataset_path: json, dataset_kwargs: {data_files: {test: FILE}}") from e
    res = harness_results(out)
    for task, r in res.items():  # the report shows these; subtasks (MMLU's 57) stay in results.json
        r["requested"] = task in tasks
    return res


def _hf_tokenizer(tokenizer, model_dir):
    """The HF tokenizer the harness needs: the model directory's, or ours saved and reloaded
    (our SpiritTokenizer writes the layout AutoTokenizer reads, with the same ids)."""
    import tempfile

    from transformers import AutoTokenizer

    if model_dir and has_text_tokenizer(model_dir):
        return AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer is None:
        raise HarnessError("harness: pass a tokenizer with the model, or a model directory holding "
                           "tokenizer.model or tokenizer.json")
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        return AutoTokenizer.from_pretrained(d)


def harness_results(out: dict) -> dict:
    """The harness's output dict -> our ``{task: result}`` (accuracy = acc, items per document)."""
    res: dict[str, dict] = {}
    groups = set(out.get("groups", {}))
    samples = out.get("samples", {}) or {}
    n_samples = out.get("n-samples", {}) or {}
    for task, metrics in out.get("results", {}).items():
        r: dict[str, Any] = {"complete": True, "group": task in groups, "source": "lm-eval"}
        for k, v in metrics.items():
            if k in ("alias", "name", "sample_len"):
                continue
            name, _, filt = k.partition(",")
            if filt == "none" and not name.endswith("_stderr"):
                r[name] = _metric(v)
        if "acc" in r:
            r["accuracy"] = r["acc"]
        n = n_samples.get(task, {})
        if n:
            r["n"] = n.get("effective", n.get("original"))
        items = []
        for s in samples.get(task, []):
            lls = [float(x[0]) for x in s.get("filtered_resps", s.get("resps", []))
                   if isinstance(x, (list, tuple)) and x and isinstance(x[0], (int, float))]
            target = s.get("target")
            it = {"id": s.get("doc_id"), "target": target, "logliks": lls}
            if "acc" in s:
                it["score"] = float(s["acc"])
            items.append(it)
        if items:
            r["items"] = items
            r.setdefault("n", len(items))
        res[task] = r
    for group, subtasks in (out.get("group_subtasks") or {}).items():  # a group's n: its documents
        if group in res and "n" not in res[group]:
            ns = [res[t]["n"] for t in subtasks if isinstance(res.get(t, {}).get("n"), int)]
            if ns:
                res[group]["n"] = sum(ns)
    return res
