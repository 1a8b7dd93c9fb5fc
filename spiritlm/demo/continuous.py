"""``spiritlm demo --part continuous``: SpeechLLM- and Tiny-Audio-style continuous-input models
beside the demo's interleaved unit model, on the same start, encoder, speech, steps and items.

What is shared with the unit model (read from the demo's cached steps): the text-pretrained start
(``ctx.start``), the text tokenizer, the demo's HuBERT (``ctx.speech_tok``; its frames, not its
units), the aligned training utterances (``ctx.manifest``), steps / batch / sequence length /
precision (``train/continuous_demo.toml``, steps taken from the demo's ``train_overrides``) and
the benchmark draws. What differs is how speech reaches the LM and what trains:

* ``speechllm`` (arXiv 2307.11795): frames stacked x3, a linear projection, prepended
  (``[audio] <BOS> transcript``), LoRA r 8 / alpha 16 on q/k/v/o. (The paper's encoder is a CTC
  conformer trained with the LM; here it is the unit model's HuBERT, frozen, so the input side
  is the same for both models.)
* ``speechllm_frozen``: the same with the LM frozen (projector only), the paper's other setting.
* ``tinyaudio``: stage 1 trains an MLP projector over frames stacked x4 at ``<audio>``
  placeholders with encoder and LM frozen, stage 2 adds LoRA; the two stages share the unit
  model's step count (``stage1_share`` of it in stage 1). With ``eval_stage1`` the stage-1
  model (frozen LM, projector only) is evaluated too.

Evaluation, on the demo's draws, with the eval suite (so both kinds of model score the same
items): StoryCloze and Topic-StoryCloze S->T on every draw; ASR WER on the dev draw's few-shot
ASR items (the only ASR items the unit model has: the test draws hold two-way tasks only; the
unit model transcribes them 10-shot, a continuous model zero-shot, as it was trained) and, for
the continuous models only, on the corpus' held-out utterances (stories up to ~12 s, whose
10-shot unit prompts would exceed the unit model's 1024 positions). Claims: the S->T columns
pool the TEST draws (paired against the unit model's seeds, each item averaged over its seeds);
the WER columns come from the dev draw and the held-out corpus split, labelled so. T->S does not
exist for a model that reads speech but does not write it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spiritlm.demo import main as demo
from spiritlm.demo.continuous_table import compare_step, unit_steps
from spiritlm.precision import pin_precision

log = logging.getLogger(__name__)

PART = "continuous"
RESULT_VERSION = "continuous-part-v1"

# style -> stages: (step name suffix, overrides of train/continuous_demo.toml). A stage's
# "{prev}" is replaced by the previous stage's projector checkpoint.
STYLES: dict[str, list[tuple[str, list[str]]]] = {
    "speechllm": [("speechllm", [
        "continuous.placement=prepend", "continuous.projector.kind=linear", "continuous.projector.stack=3",
        "continuous.trainable=lora", "continuous.lora.r=8", "continuous.lora.alpha=16",
        "continuous.lora.target_modules=[q_proj, k_proj, v_proj, o_proj]"])],
    "speechllm_frozen": [("speechllm_frozen", [
        "continuous.placement=prepend", "continuous.projector.kind=linear", "continuous.projector.stack=3",
        "continuous.trainable=projector"])],
    "tinyaudio": [
        ("tinyaudio_stage1", ["continuous.placement=placeholder", "continuous.projector.kind=mlp",
                              "continuous.projector.stack=4", "continuous.trainable=projector", "optim.lr=1e-3"]),
        ("tinyaudio", ["continuous.placement=placeholder", "continuous.projector.kind=mlp",
                       "continuous.projector.stack=4", "continuous.trainable=lora", "continuous.lora.r=8",
                       "continuous.lora.alpha=16", "continuous.lora.target_modules=[q_proj, k_proj, v_proj, o_proj]",
                       "continuous.projector.checkpoint={prev}", "optim.lr=1e-3"])],
}

# The continuous models' evaluation: the cross-modal settings a continuous model can score
# (S->T; T as a check that LoRA kept the text LM), no sWUGGY/sBLIMP speech, no STSP.
EVAL_OVERRIDES = ('speech_encoder=""', 'zerospeech.root=""', "storycloze.settings=[T, S2T]", "topic_storycloze.settings=[T, S2T]",
                  'stsp.manifest=""', 'speech_cls.manifest=""')


@dataclass
class ContinuousPartConfig:
    """``--set 'part_overrides.continuous=[styles=[tinyaudio], steps=400]'``"""
    recipe: str = "train/continuous_demo.toml"
    styles: list[str] = field(default_factory=lambda: ["speechllm", "tinyaudio"])
    steps: int = 0  # 0 = the unit models' steps (the demo's train_overrides)
    stage1_share: float = 0.5  # Tiny Audio: the share of the steps spent in stage 1
    eval_stage1: bool = True  # also evaluate the Tiny-Audio stage-1 model (frozen LM)
    seed: int = 0
    heldout_max: int = 0  # held-out corpus utterances for WER (0 = all)
    heldout_max_new_tokens: int = 96  # stories run to ~60 pieces; 40 (the few-shot default) cuts them
    train_overrides: list[str] = field(default_factory=list)  # applied to every training (last)


def part_config(ctx) -> ContinuousPartConfig:
    from spiritlm.config import ConfigError, load_config

    opts = load_config(ContinuousPartConfig, None, ctx.overrides(PART))
    unknown = [s for s in opts.styles if s not in STYLES]
    if unknown or not opts.styles:
        raise ConfigError(f"part_overrides.continuous styles={opts.styles}: use some of {sorted(STYLES)}")
    if not 0 < opts.stage1_share < 1:
        raise ConfigError(f"stage1_share={opts.stage1_share}: give a share between 0 and 1, e.g. 0.5")
    if ctx.start is None:
        raise ConfigError("the continuous part starts from the demo's text-pretrained model: run the demo with "
                          "text_pretrain_steps > 0 (its default)")
    return opts


def stage_steps(opts: ContinuousPartConfig, total: int, n_stages: int) -> list[int]:
    if n_stages == 1:
        return [total]
    first = max(1, round(total * opts.stage1_share))
    if first >= total:
        from spiritlm.config import ConfigError

        raise ConfigError(f"{total} steps cannot be split into two stages; raise steps")
    return [first, total - first]


def train_config(ctx, opts: ContinuousPartConfig, overrides: list[str], steps: int, run_dir: Path):
    """The resolved ``ContinuousTrainConfig`` of one stage: the recipe, pointed at the demo's
    start, tokenizer, HuBERT and training utterances, with the shared feature cache."""
    from spiritlm.config import load_config
    from spiritlm.models.continuous.config import ContinuousTrainConfig

    tcfg = load_config(ContinuousTrainConfig, ctx.recipe(opts.recipe), [
        f"seed={opts.seed}", f"run_dir={run_dir}", f"steps={steps}",
        f"model.checkpoint={ctx.start['hf']}", f"model.tokenizer={ctx.text_tok['dir']}",
        f"continuous.encoder.path={ctx.speech_tok['dir']}",
        f"continuous.data.manifests={json.dumps([str(ctx.manifest)])}", "continuous.data.split=train",
        f"continuous.data.features_dir={ctx.out / 'continuous_features' / 'features'}",
        *overrides, *opts.train_overrides])
    return pin_precision(tcfg, "cpu")  # the step's key holds the precision trained in


def _inputs_hash(ctx) -> list[str]:
    """The content the trained weights depend on besides the config (paths alone would keep a
    stale model after a retrained start or tokenizer)."""
    return [ctx.file_hash(Path(ctx.start["hf"]) / "model.safetensors"),
            ctx.file_hash(Path(ctx.text_tok["dir"]) / "tokenizer.model"),
            ctx.file_hash(Path(ctx.speech_tok["dir"]) / "hubert" / "model.safetensors"),
            ctx.file_hash(ctx.manifest)]


def _key(tcfg) -> dict:
    from spiritlm.demo.files import train_config_key

    return train_config_key(tcfg)


def _features_step(tcfg, step_dir: Path) -> dict[str, Any]:
    """Frozen-encoder frames of the training utterances, computed once for every style."""
    import time

    from spiritlm.models.continuous.model import build_continuous
    from spiritlm.models.continuous.spec import make_batches

    t0 = time.perf_counter()
    model = build_continuous(tcfg)
    batches = make_batches(tcfg, model, progress=True)
    return {"dir": str(tcfg.continuous.data.features_dir), "utterances": len(batches.utts),
            "seconds": time.perf_counter() - t0}


def _train_step(tcfg, step_dir: Path) -> dict[str, Any]:
    from spiritlm.train import train

    run = Path(train(tcfg))
    return {"run_dir": str(run), "hf": str(run / "hf"), "projector": str(run / "parts" / "projector.safetensors")}


def _eval_step(ctx, name: str, hf: str, label: str, step_dir: Path) -> dict[str, Any]:
    from spiritlm.eval.suite import run_suite

    extra = () if label == "dev" else demo.TEST_EVAL_OVERRIDES
    ecfg = demo.eval_config(ctx.cfg, ctx.draws[label], ctx.speech_tok,
                        [f"model={hf}", f"name={name}", f"output_dir={step_dir}", *EVAL_OVERRIDES], extra)
    run_suite(ecfg)
    return {"dir": str(step_dir)}


def _heldout_asr_step(ctx, opts: ContinuousPartConfig, hf: str, step_dir: Path) -> dict[str, Any]:
    from spiritlm.models.continuous.asr import evaluate_asr
    from spiritlm.models.continuous.model import load_continuous
    from spiritlm.transcripts import manifest_items

    items = manifest_items(ctx.corpus["manifest"], split="heldout")[: opts.heldout_max or None]
    if not items:
        raise ValueError(f"{ctx.corpus['manifest']} has no 'heldout' utterances to score WER on")
    res = evaluate_asr(load_continuous(hf), items, max_new_tokens=opts.heldout_max_new_tokens)
    out = step_dir / "asr_heldout.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    return {"file": str(out), "wer": res["wer"], "n": res["n"]}


def run(ctx) -> dict:
    """The part: features, trainings (one after the other: a part runs in one CPU slot), the
    evaluations on every draw, held-out ASR, and the table (``continuous_compare/``)."""
    from spiritlm.config import to_dict

    opts = part_config(ctx)
    total = opts.steps or unit_steps(ctx.cfg)
    inputs = _inputs_hash(ctx)
    first = STYLES[opts.styles[0]][0][1]
    fcfg = train_config(ctx, opts, first, total, ctx.out / "continuous_features" / "run")
    fc = fcfg.continuous
    feats = ctx.pipe.run("continuous_features", [RESULT_VERSION, inputs, to_dict(fc.encoder), to_dict(fc.data),
                                                 fcfg.data.seq_len], lambda d: _features_step(fcfg, d))

    models: dict[str, dict] = {}  # name -> {"hf", "run_dirs", "steps", "style"}
    for style in opts.styles:
        stages = STYLES[style]
        prev, runs = None, []
        for (name, over), steps in zip(stages, stage_steps(opts, total, len(stages))):
            over = [o.replace("{prev}", prev["projector"]) if prev else o for o in over]
            step = f"continuous_train_{name}"
            tcfg = train_config(ctx, opts, over, steps, ctx.out / step / "run")
            deps = [RESULT_VERSION, _key(tcfg), inputs, feats["utterances"]]
            if prev is not None:
                deps.append(ctx.file_hash(prev["projector"]))
            out = ctx.pipe.run(step, deps, lambda d, c=tcfg: _train_step(c, d))
            runs.append(out["run_dir"])
            if name != style and opts.eval_stage1:  # an intermediate stage worth a row of its own
                models[name] = {"hf": out["hf"], "run_dirs": list(runs), "steps": steps, "style": style}
            prev = out
        models[style] = {"hf": prev["hf"], "run_dirs": runs, "steps": total, "style": style}

    evals: dict[str, dict[str, dict]] = {}
    heldout: dict[str, dict] = {}
    for name, m in models.items():
        weights = ctx.file_hash(Path(m["hf"]) / "model.safetensors")
        proj = ctx.file_hash(Path(m["hf"]) / "projector.safetensors")
        evals[name] = {}
        for label, draw in ctx.draws.items():
            step = f"continuous_eval_{name}" + ("" if label == "dev" else f"_{label}")
            deps = [RESULT_VERSION, weights, proj, EVAL_OVERRIDES, ctx.cfg.eval_overrides,
                    ctx.file_hash(Path(draw["root"]) / "COMPLETE.json"), ctx.file_hash(ctx.recipe(ctx.cfg.eval_recipe)),
                    *demo.scoring_key(ctx.cfg)]
            evals[name][label] = ctx.pipe.run(step, deps, lambda d, n=name, h=m["hf"], lb=label: _eval_step(ctx, n, h, lb, d))
        heldout[name] = ctx.pipe.run(
            f"continuous_asr_heldout_{name}", [RESULT_VERSION, weights, proj, opts.heldout_max,
                                               opts.heldout_max_new_tokens, ctx.file_hash(ctx.corpus["manifest"])],
            lambda d, h=m["hf"]: _heldout_asr_step(ctx, opts, h, d))

    for m in models.values():  # training time of the model, its stages summed, as recorded when they ran
        m["train_s"] = sum(_recorded_seconds(Path(r).parent) for r in m["run_dirs"])
    if not ctx.evals or not ctx.draws:
        from spiritlm.config import ConfigError

        raise ConfigError("the continuous models are trained and cached, but the demo's benchmark draws or its unit "
                          "models' evaluations are not finished yet: run the part again when the main demo is done "
                          "(the cached steps are reused)")
    unit = {label: [e["dir"] for e in es] for label, es in ctx.evals["interleaved"].items()}
    deps = [RESULT_VERSION, unit, {n: {k: ctx.file_hash(Path(e["dir"]) / "items.jsonl") for k, e in ev.items()}
                                   for n, ev in evals.items()},
            {n: ctx.file_hash(h["file"]) for n, h in heldout.items()}, models, ctx.seeds]
    cmp = ctx.pipe.run("continuous_compare", deps, lambda d: compare_step(
        ctx, models, {n: {k: e["dir"] for k, e in ev.items()} for n, ev in evals.items()},
        {n: h["file"] for n, h in heldout.items()}, unit, d))
    print("\n== continuous-input models beside the interleaved unit model ==")
    print(Path(cmp["markdown"]).read_text())
    return {"table": cmp["markdown"], "json": cmp["json"], "models": {n: m["hf"] for n, m in models.items()}}


def _recorded_seconds(step_dir: Path) -> float:
    done = step_dir / "STEP_DONE.json"
    return float(json.loads(done.read_text()).get("seconds", 0.0)) if done.is_file() else 0.0
