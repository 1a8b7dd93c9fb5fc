"""The evaluation suite: a typed config (recipes in ``eval/``) and ``run_suite``.

    cfg = load_config(EvalConfig, "eval/demo_suite.toml", ["model=runs/demo/train_interleaved/run/hf"])
    paths = run_suite(cfg)          # report.md, results.json, items.jsonl, chart.png, config.yaml

Relative data paths are resolved against ``data_root``. An empty path switches a task off (it
prints as ``--``). Hooks (vocoder, ASR, classifiers, the speech encoder) are
``"package.module:factory"`` strings called with the matching ``*_args`` table.
If a task fails the report is still written, marked INCOMPLETE, and the error is re-raised.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from spiritlm.components.scoring import ScorerStats
from spiritlm.config import ConfigError, save_config
from spiritlm.eval.fewshot_cls import SpeechClsConfig
from spiritlm.eval.harness import HarnessConfig
from spiritlm.eval.zerospeech import SubmissionMeta
from spiritlm.models import locate_model, model_spec, what_it_can_do
from spiritlm.precision import resolve_eval_dtype

log = logging.getLogger(__name__)


@dataclass
class ScoringConfig:
    normalize: bool = True  # token-normalised log-likelihood (the paper's tables); False = sum
    # rows x padded length per forward; 0 = by device (2048 on a CPU, where small batches are
    # faster, 16384 on a GPU: spiritlm.components.scoring.default_batch_tokens)
    batch_tokens: int = 0
    max_row_tokens: int = 4096  # context + packed continuations per row
    share_context: bool = True
    # continuations beginning alike (a spoken story's two wavs) share their common start: scored once
    share_prefixes: bool = True
    min_shared_prefix: int = 32  # tokens; a shorter common start is not worth the tree mask


@dataclass
class ZeroSpeechConfig:
    root: str = ""  # ZeroSpeech 2021 root: lexical/<split>/gold.csv, syntactic/<split>/gold.csv
    splits: list[str] = field(default_factory=lambda: ["dev"])
    modalities: list[str] = field(default_factory=lambda: ["T", "S"])
    lexical: bool = True
    syntactic: bool = True
    lexical_metric: Literal["invocab", "all"] = "invocab"
    submission: bool = True  # write <out>/zerospeech_submission (speech scores)
    meta: SubmissionMeta = field(default_factory=SubmissionMeta)  # the submission's meta.yaml


@dataclass
class StoryClozeConfig:
    text: str = ""  # CSV / JSONL / cross-modal dir
    speech: str = ""  # dir of <2k>_<id>_correct.wav / <2k+1>_<id>_incorrect.wav
    cross: str = ""  # dir of <k>_mutual|correct|incorrect .wav + .txt
    settings: list[str] = field(default_factory=lambda: ["T", "S", "T2S", "S2T"])


@dataclass
class StspConfig:
    manifest: str = ""
    settings: list[str] = field(default_factory=lambda: ["T2T", "S2T", "T2S", "S2S"])
    fewshot: dict[str, str] = field(default_factory=dict)  # setting -> few-shot JSONL
    n_shots: int = 0
    text_classifier: str = "lexicon"  # "lexicon", "hf:<dir>", "module:factory" or ""
    speech_classifier: str = ""  # "hf:<dir>" (audio-classification) or "module:factory"
    vocoder: str = ""  # "module:factory" -> callable(units) -> 16 kHz wav
    hook_args: dict[str, Any] = field(default_factory=dict)
    max_items: int = 0
    seed: int = 0


@dataclass
class FewShotConfig:
    asr_manifest: str = ""
    tts_manifest: str = ""
    shots_manifest: str = ""
    n_shots: int = 10
    asr_max_new_tokens: int = 60
    vocoder: str = ""
    asr: str = ""  # ASR hook for TTS CER: "module:factory" -> callable(wav) -> text
    hook_args: dict[str, Any] = field(default_factory=dict)
    max_items: int = 0
    seed: int = 0


@dataclass
class MiniConfig:
    build: bool = False  # build the mini benchmarks into data_root first (cached)
    seed: int = 0
    sizes: dict[str, int] = field(default_factory=dict)


@dataclass
class EvalConfig:
    model: str = ""
    name: str = ""
    output_dir: str = "runs/eval"
    data_root: str = "."
    device: str = "auto"
    # "auto": bfloat16 where the device runs it natively (AMX / AVX512_BF16 CPUs, bf16 GPUs), else
    # float32 (spiritlm.precision.resolve_eval_dtype); the choice and why go into results.json.
    # float32 is the default: the release checkpoints' numbers and the harness-equality tests.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    speech_encoder: str = ""  # "package.module:factory" returning a speech unit encoder (spiritlm.unit_encoder)
    speech_encoder_args: dict[str, Any] = field(default_factory=dict)
    # A .npz of the benchmark audio's units (files under data_root): read before the run and
    # written after it, so evaluating several models with one speech encoder encodes the audio
    # once. It records the encoder (factory, arguments, and the size and time of the files they
    # name); a file from another encoder is not read, and is replaced. "" = no file.
    units_cache: str = ""
    has_pitch: bool = False  # Expressive: true + has_style
    has_style: bool = False
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    zerospeech: ZeroSpeechConfig = field(default_factory=ZeroSpeechConfig)
    storycloze: StoryClozeConfig = field(default_factory=StoryClozeConfig)
    topic_storycloze: StoryClozeConfig = field(default_factory=StoryClozeConfig)
    stsp: StspConfig = field(default_factory=StspConfig)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)
    speech_cls: SpeechClsConfig = field(default_factory=SpeechClsConfig)  # few-shot speech classification
    # text ability through lm-evaluation-harness: task/group names, e.g. ["mmlu", "hellaswag"]
    text_tasks: list[str] = field(default_factory=list)
    harness: HarnessConfig = field(default_factory=HarnessConfig)
    mini: MiniConfig = field(default_factory=MiniConfig)


def load_hook(spec: str, args: dict | None = None, task: str = "text-classification"):
    if not spec:
        return None
    if spec == "lexicon":
        from spiritlm.eval.stsp import LexiconSentimentClassifier

        return LexiconSentimentClassifier()
    if spec.startswith("hf:"):
        from spiritlm.eval.stsp import HFClassifier

        return HFClassifier(spec[3:], task=task)
    from spiritlm.eval.model import build_from_spec

    hook = build_from_spec(spec, args, setting="hook")  # a function, or an object with .encode
    return hook if callable(hook) and not hasattr(hook, "encode") else hook.encode


def _model_name(model_dir: Path) -> str:
    """A report's default model name: the directory's name, or for a `spiritlm train` export
    (``<run_dir>/hf``, or ``<step>/run/hf`` in the demo) the run's."""
    parts = [p for p in model_dir.absolute().parts if p not in ("/", "hf", "run")]
    return parts[-1] if parts and model_dir.name == "hf" else model_dir.name


IN_PROGRESS = "IN_PROGRESS"
RESULT_FILES = ("results.json", "report.md", "items.jsonl", "chart.png", "config.yaml")


def mark_in_progress(out: Path) -> None:
    """Before a run writes anything into ``out``: an earlier run's results move to
    ``out/previous/`` (kept, never mixed with this run's files) and an ``IN_PROGRESS`` marker
    is written; the marker goes once this run's results are all written. A run killed midway
    leaves the marker and no results.json, never an earlier run's results marked complete
    beside this run's config."""
    import os
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    if (out / "results.json").is_file():
        prev = out / "previous"
        shutil.rmtree(prev, ignore_errors=True)
        prev.mkdir()
        for name in RESULT_FILES:
            if (out / name).is_file():
                os.replace(out / name, prev / name)
    (out / IN_PROGRESS).write_text(
        "an evaluation is writing into this folder, or was killed: its results are not here yet; "
        "rerun `spiritlm eval` with this config.yaml. An earlier run's results are in previous/\n")


class _NoScorer:
    """Where a family scores nothing (it may still transcribe): the report's scorer fields stay empty."""

    progress_desc = ""

    def __init__(self):
        self.stats = ScorerStats()  # nothing scored: every count stays 0


def run_suite(cfg: EvalConfig, model=None, tokenizer=None, encoder=None, spec=None) -> dict:
    """Run every configured task the model's family can do; write the report. ``model`` /
    ``tokenizer`` / ``encoder`` may be passed in (the demo does) instead of being loaded from
    ``cfg.model`` / ``cfg.speech_encoder``; ``spec`` is then the model's family (default: the unit
    LM). A task or setting the family's capabilities exclude is skipped, and the report says why."""
    from spiritlm.eval.model import (CachedEncoder, StaleUnitsError, encoder_identity,
                                     load_speech_encoder, resolve_device)
    from spiritlm.eval.report import write_report

    root = Path(cfg.data_root)
    name = cfg.name or (_model_name(Path(cfg.model)) if cfg.model else "model")
    out = Path(cfg.output_dir)
    model_dir = None
    if model is None:  # refused before anything is written to the output folder
        if not cfg.model:
            raise ValueError("no model: pass --model DIR (a checkpoint directory) or set model= in the recipe")
        spec, model_dir = locate_model(cfg.model)  # the family, from its own marker file
        if spec.scorer is None and spec.asr is None:
            raise ConfigError(f"{cfg.model}: a {spec.name} model offers no evaluation task of this suite "
                              f"({spec.description}); instead it can {what_it_can_do(spec)}")
    device = resolve_device(cfg.device)
    dtype, dtype_reason = resolve_eval_dtype(cfg.dtype, device.split(":")[0])
    if model is not None:
        dtype_reason += " -- not applied: the model was passed in as it is"
    log.info("scoring precision: %s", dtype_reason)
    mark_in_progress(out)
    save_config(cfg, out / "config.yaml")
    if cfg.mini.build:
        from spiritlm.eval.mini import build_mini_benchmarks

        build_mini_benchmarks(root, seed=cfg.mini.seed, sizes=cfg.mini.sizes or None)
    if model is None:
        model, tokenizer = spec.load(model_dir, device, dtype)
    spec = spec or model_spec("unit_lm")
    caps = spec.capabilities
    skipped: dict[str, str] = {}  # "task/setting" -> why the family cannot run it
    if encoder is None:
        encoder = load_speech_encoder(cfg.speech_encoder, cfg.speech_encoder_args)
    elif not isinstance(encoder, CachedEncoder):
        encoder = CachedEncoder(encoder)
    units_cache = Path(cfg.units_cache) if cfg.units_cache and encoder is not None else None
    identity = encoder_identity(cfg.speech_encoder, cfg.speech_encoder_args) if units_cache else ""
    if units_cache is not None and units_cache.is_file():
        import zipfile

        try:
            n = encoder.load_units(units_cache, root, identity)
            log.info("units of %d audio files read from %s", n, units_cache)
        except StaleUnitsError as e:
            log.warning("%s: the audio is encoded again and the file replaced", e)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # truncated, not ours
            log.warning("units file %s unreadable (%s: %s): the audio is encoded again and the file "
                        "replaced", units_cache, type(e).__name__, e)
    sc = cfg.scoring
    # the family's scorer: the same items for every family (a continuous model reads speech as
    # audio embeddings, a hybrid one adds its features at the speech frames)
    scorer = spec.scorer(model, tokenizer, encoder, sc, cfg) if spec.scorer is not None else _NoScorer()

    def allowed(task: str, setting: str) -> bool:
        if caps.can_score(task, setting):
            return True
        skipped[f"{task}/{setting}"] = caps.why_not(spec.name, task, setting)
        return False
    p = lambda s: (root / s) if s else None  # noqa: E731
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}
    error = None
    try:
        zs = cfg.zerospeech
        if zs.root:
            from spiritlm.eval.zerospeech import run_zerospeech, write_submission_meta

            sub = out / "zerospeech_submission" if zs.submission else None
            for kind, on, task in (("lexical", zs.lexical, "swuggy"), ("syntactic", zs.syntactic, "sblimp")):
                if not on:
                    continue
                for split in zs.splits:
                    for mod in zs.modalities:
                        if not allowed(task, mod):
                            continue
                        t = time.perf_counter()
                        scorer.progress_desc = f"{task}/{mod}"
                        res = run_zerospeech(p(zs.root), kind, split, "speech" if mod == "S" else "text",
                                             scorer, sc.normalize, sub if mod == "S" else None)
                        if kind == "lexical" and zs.lexical_metric == "invocab" and res["n_pairs_invocab"]:
                            res["accuracy_all"], res["accuracy"] = res["accuracy"], res["accuracy_invocab"]
                        res["complete"] = True
                        key = mod if split == zs.splits[0] else f"{mod}@{split}"
                        results.setdefault(task, {})[key] = res
                        timings[f"{task}/{key}"] = time.perf_counter() - t
            if sub is not None and "S" in zs.modalities:
                write_submission_meta(sub, name, zs.meta, cfg.model or None)
        for task, c in (("storycloze", cfg.storycloze), ("topic_storycloze", cfg.topic_storycloze)):
            from spiritlm.eval.storycloze import run_storycloze

            for s in c.settings:
                src = {"T": c.text or c.cross, "S": c.speech, "T2S": c.cross, "S2T": c.cross}[s]
                if not src or not allowed(task, s):
                    continue
                t = time.perf_counter()
                scorer.progress_desc = f"{task}/{s}"
                res = run_storycloze(s, p(src), scorer, sc.normalize, task)
                res["complete"] = True
                results.setdefault(task, {})[s] = res
                timings[f"{task}/{s}"] = time.perf_counter() - t
        st = cfg.stsp
        generates = caps.generate and caps.speech_out  # STSP, few-shot ASR/TTS prompt the model to write
        if st.manifest and not generates:
            skipped["stsp"] = f"the {spec.name} family does not generate speech"
        if st.manifest and generates:
            from spiritlm.eval.stsp import run_stsp

            tc = load_hook(st.text_classifier, st.hook_args.get("text_classifier"))
            spc = load_hook(st.speech_classifier, st.hook_args.get("speech_classifier"), "audio-classification")
            voc = load_hook(st.vocoder, st.hook_args.get("vocoder"))
            for s in st.settings:
                t = time.perf_counter()
                fs = st.fewshot.get(s)
                results.setdefault("stsp", {})[s] = run_stsp(
                    s, p(st.manifest), model, tokenizer, encoder, p(fs) if fs else None, st.n_shots, tc, spc,
                    voc, cfg.has_pitch, cfg.has_style, st.seed, max_items=st.max_items)
                timings[f"stsp/{s}"] = time.perf_counter() - t
        fc = cfg.fewshot
        if fc.asr_manifest and not generates and spec.asr is not None:  # zero-shot: trained to transcribe
            from spiritlm.eval.fewshot import read_utterances

            t = time.perf_counter()
            test = read_utterances(p(fc.asr_manifest))[: fc.max_items or None]  # the unit model's items
            res = spec.asr(model, [(u["id"], str(u["wav"]), u["text"]) for u in test], fc.asr_max_new_tokens)
            results["asr"] = {"ASR": {**res, "task": "asr", "shots": 0, "complete": True}}
            timings["asr"] = time.perf_counter() - t
        elif fc.asr_manifest and not generates:
            skipped["asr"] = f"the {spec.name} family neither generates nor transcribes"
        elif fc.asr_manifest and generates:
            from spiritlm.eval.fewshot import run_asr

            t = time.perf_counter()
            results["asr"] = {"ASR": run_asr(p(fc.asr_manifest), model, tokenizer, encoder,
                                             p(fc.shots_manifest), fc.n_shots, fc.asr_max_new_tokens, fc.seed,
                                             fc.max_items, cfg.has_pitch, cfg.has_style)}
            timings["asr"] = time.perf_counter() - t
        if fc.tts_manifest and not generates:
            skipped["tts"] = f"the {spec.name} family does not generate speech"
        if fc.tts_manifest and generates:
            from spiritlm.eval.fewshot import run_tts

            results["tts"] = {"TTS": run_tts(p(fc.tts_manifest), model, tokenizer, encoder,
                                             load_hook(fc.vocoder, fc.hook_args.get("vocoder")),
                                             load_hook(fc.asr, fc.hook_args.get("asr")), p(fc.shots_manifest),
                                             fc.n_shots, seed=fc.seed, max_items=fc.max_items,
                                             has_pitch=cfg.has_pitch, has_style=cfg.has_style)}
        cc = cfg.speech_cls
        if cc.manifest and allowed("speech_cls", "S"):
            from spiritlm.eval.fewshot_cls import build_mini_speech_cls, run_speech_cls

            t = time.perf_counter()
            if cc.mini:
                held = root / "heldout_texts.txt"  # the other mini benchmarks' texts stay out
                build_mini_speech_cls(p(cc.manifest).parent, cfg.mini.seed, cc.mini_sizes or None,
                                      set(held.read_text().splitlines()) if held.is_file() else set())
            scorer.progress_desc = "speech_cls"
            results["speech_cls"] = {"S": run_speech_cls(cc, p(cc.manifest), p(cc.shots_manifest), scorer)}
            timings["speech_cls"] = time.perf_counter() - t
        if cfg.text_tasks:
            from spiritlm.eval.harness import run_harness

            t = time.perf_counter()
            results["lm_eval"] = run_harness(cfg.text_tasks, cfg.harness, cfg.model or None, model, tokenizer,
                                             device, dtype, root)
            timings["lm_eval"] = time.perf_counter() - t
    except BaseException as e:  # write what exists, flagged, then fail loudly
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        extra = {"status": "complete" if error is None else f"INCOMPLETE ({error})", "timings_s": timings,
                 "family": spec.name, "skipped": skipped, "dtype": dtype, "dtype_reason": dtype_reason,
                 "scorer": vars(scorer.stats), "normalize": sc.normalize,
                 "speech_files_encoded": encoder.calls if encoder is not None else 0}
        # what was encoded stays valid, even when a task failed; nothing new, nothing to write
        if units_cache is not None and encoder.calls > 0:
            try:
                units_cache.parent.mkdir(parents=True, exist_ok=True)
                n = encoder.save_units(units_cache, root, identity)
                log.info("units of %d audio files written to %s", n, units_cache)
            except (OSError, ValueError) as e:
                log.warning("units file %s not written: %s", units_cache, e)
        paths = write_report(out, results, name, extra)
        if error is not None:
            md = paths["markdown"]
            md.write_text(f"**INCOMPLETE RUN -- failed with {error}; numbers below are partial.**\n\n"
                          + md.read_text())
        (out / IN_PROGRESS).unlink(missing_ok=True)  # every result of this run is written
    log.info("eval report: %s", paths["markdown"])
    return {"paths": paths, "results": results, "timings": timings,
            "speech_files_encoded": extra["speech_files_encoded"]}

