"""STSP (speech-text sentiment preservation), release data layout.

Test manifest: JSONL records ``{"id", "wav_path", "asr", "sentiment", "emotion", "split", ...}``
(``wav_path`` relative to the manifest's directory unless absolute). Few-shot files: JSONL
``{"prompt", "generation", "sentiment"}`` where prompt/generation are strings (speech as speech
strings ``[Speech][Hu..]...``, text as ``[Text]...``), one file per setting.

Settings ``T2T, T2S, S2S, S2T`` (input -> output modality). For each test item the model
continues the item (text: its ``asr``; speech: its wav) in the output modality with temperature
0.8, top-p 0.95, at most 50 text / 300 speech tokens, retrying up to 3 times on empty output.
Few-shot: ``ceil(n_shots/3)`` examples per sentiment class, each ``{prompt}{generation}``, joined
with ``\\n``, then the test item -- which, unlike the release, stays in the prompt. The output's
sentiment is judged by a text classifier (text outputs) or, for speech outputs, vocoded through the
vocoder hook, by a speech classifier -- or, when none is configured, by the text classifier on an
offline transcript (pocketsphinx unless an ``asr`` hook is given); the metric is the accuracy
against the item's sentiment. Without a vocoder, speech outputs are reported as skipped.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Callable

from spiritlm.eval.generate import generate, generate_batch, output_speech_ids, output_text, vocode_ids
from spiritlm.eval.zerospeech import LayoutError

EMOTION_TO_SENTIMENT = {"happy": "positive", "amused": "positive", "sad": "negative", "angry": "negative",
                        "default": "neutral", "neutral": "neutral"}
SENTIMENTS = ("positive", "negative", "neutral")


def read_manifest(path: Path, split: str | None = "test") -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path} not found: STSP needs a JSONL manifest with wav_path, asr, sentiment, "
                          "emotion, split, id per line")
    recs = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        if "sentiment" not in r and r.get("emotion") in EMOTION_TO_SENTIMENT:
            r["sentiment"] = EMOTION_TO_SENTIMENT[r["emotion"]]
        missing = [k for k in ("id", "wav_path", "asr", "sentiment") if k not in r]
        if missing:
            raise LayoutError(f"{path}:{i}: missing key(s) {missing}")
        if split and r.get("split", split) != split:
            continue
        wav = Path(r["wav_path"])
        r["wav"] = wav if wav.is_absolute() else path.parent / wav
        recs.append(r)
    if not recs:
        raise LayoutError(f"{path}: no records with split={split!r}")
    return recs


def read_fewshot(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path} not found: few-shot files are JSONL with prompt, generation, sentiment")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            r = json.loads(line)
            missing = [k for k in ("prompt", "generation", "sentiment") if k not in r]
            if missing:
                raise LayoutError(f"{path}:{i}: missing key(s) {missing}")
            out.append(r)
    return out


def fewshot_prefix(pool: list[dict], n_shots: int, rng: random.Random, exclude_id=None) -> str:
    """ceil(n/3) examples per class, shuffled, each ``{prompt}{generation}``, joined by newlines."""
    if n_shots <= 0:
        return ""
    per = math.ceil(n_shots / 3)
    chosen = []
    for s in SENTIMENTS:
        cands = [r for r in pool if r["sentiment"] == s and (exclude_id is None or r.get("id") != exclude_id)]
        if len(cands) < per:
            raise LayoutError(f"few-shot pool has {len(cands)} '{s}' examples, {per} needed for {n_shots} shots")
        chosen += rng.sample(cands, per)
    rng.shuffle(chosen)
    return "\n".join(f"{r['prompt']}{r['generation']}" for r in chosen) + "\n"


class LexiconSentimentClassifier:
    """Counts polar words (the demo grammar's lexicon when available, else a small built-in list)."""

    POS = {"good", "great", "happy", "wonderful", "love", "loved", "nice", "best", "glad", "lovely", "perfect"}
    NEG = {"bad", "sad", "terrible", "awful", "hate", "hated", "angry", "worst", "horrible", "cried", "lost"}

    def __init__(self):
        try:
            from spiritlm.corpus.grammar import NEGATIVE_WORDS, POSITIVE_WORDS

            self.pos, self.neg = set(POSITIVE_WORDS), set(NEGATIVE_WORDS)
        except Exception:  # the corpus package is optional here
            self.pos, self.neg = self.POS, self.NEG

    def __call__(self, text: str) -> str:
        import re

        ws = [w.lower() for w in re.findall(r"[A-Za-z]+", text)]
        s = sum(w in self.pos for w in ws) - sum(w in self.neg for w in ws)
        return "positive" if s > 0 else "negative" if s < 0 else "neutral"


class HFClassifier:
    """A local HF checkpoint as a sentiment classifier (``task`` text-classification or
    audio-classification); emotion labels map to sentiments via EMOTION_TO_SENTIMENT."""

    def __init__(self, directory: str, task: str = "text-classification", device: str = "cpu"):
        from transformers import pipeline

        if not Path(directory).is_dir():
            raise LayoutError(f"classifier directory {directory} not found (a local HF checkpoint)")
        self.pipe = pipeline(task, model=directory, device=device)

    def __call__(self, x) -> str:
        label = str(self.pipe(x)[0]["label"]).lower()
        return EMOTION_TO_SENTIMENT.get(label, label)


def run_stsp(setting: str, manifest: Path, model, tok, encoder=None, fewshot: Path | None = None,
             n_shots: int = 0, text_classifier: Callable | None = None,
             speech_classifier: Callable | None = None, vocoder: Callable | None = None,
             has_pitch: bool = False, has_style: bool = False, seed: int = 0, retries: int = 3,
             max_items: int = 0, temperature: float = 0.8, top_p: float = 0.95,
             max_new_tokens: int | None = None, asr: Callable | None = None) -> dict:
    if setting not in ("T2T", "T2S", "S2S", "S2T"):
        raise ValueError(f"STSP setting {setting!r}: use T2T, T2S, S2S or S2T")
    out_mod = "text" if setting[-1] == "T" else "speech"
    if out_mod == "text" and text_classifier is None:
        return {"skipped": "no text sentiment classifier configured", "complete": False}
    judge = "text classifier"
    if out_mod == "speech":
        if vocoder is None:
            return {"skipped": "speech outputs need a vocoder (stsp.vocoder = \"spiritlm.vocoder.asr:vocoder_hook\" "
                               "with stsp.hook_args.vocoder = {directory = ...} or {release = ..., variant = ...})",
                    "complete": False}
        if speech_classifier is None:
            if text_classifier is None:
                return {"skipped": "speech outputs need stsp.speech_classifier, or a text classifier to judge "
                                   "their transcripts", "complete": False}
            if asr is None:
                from spiritlm.vocoder.asr import PocketsphinxASR

                asr = PocketsphinxASR()
            tc, transcribe = text_classifier, asr
            speech_classifier = lambda wav: tc(transcribe(wav))  # noqa: E731
            judge = "text classifier on the ASR transcript of the vocoded speech"
        else:
            judge = "speech classifier on the vocoded speech"
    recs = read_manifest(manifest)
    if max_items:
        recs = recs[:max_items]
    pool = read_fewshot(fewshot) if (fewshot and n_shots) else []
    rng = random.Random(seed)
    prompts = []
    for r in recs:
        inp = ("text", r["asr"]) if setting[0] == "T" else ("speech", r["wav"])
        if inp[0] == "speech" and encoder is None:
            raise ValueError("STSP speech inputs need a speech encoder (set speech_encoder in the recipe)")
        content = encoder(inp[1]) if inp[0] == "speech" else inp[1]
        prefix = fewshot_prefix(pool, n_shots, rng, r.get("id")) if pool else ""
        ids = tok.encode(prefix, speech_tags=True) if prefix else [tok.bos_id]
        prompts.append(ids + tok.encode_segments([(inp[0], content)], has_pitch=has_pitch, has_style=has_style,
                                                 bos=False, trailing_marker=out_mod))
    kw = dict(has_pitch=has_pitch, has_style=has_style, temperature=temperature, top_p=top_p,
              max_new_tokens=max_new_tokens)
    pick = (lambda outs: output_text(outs)) if out_mod == "text" else (lambda outs: output_speech_ids(outs))
    gens = [pick(o) for o in generate_batch(model, tok, prompts, out_mod, seed=seed, **kw)]
    tries = [1] * len(recs)
    for k, ids in enumerate(prompts):  # retries on empty output, one item at a time
        while not gens[k] and tries[k] <= retries:
            tries[k] += 1
            gens[k] = pick(generate(model, tok, None, out_mod, prompt_ids=ids, seed=seed * 100003 + k * 7 + tries[k],
                                    **kw))
    items = []
    for k, (r, gen) in enumerate(zip(recs, gens)):
        pred = None
        if gen:
            if out_mod == "text":
                pred = text_classifier(gen)
            else:
                pred = speech_classifier(vocode_ids(vocoder, gen, tok))
        items.append({"id": r["id"], "sentiment": r["sentiment"], "pred": pred, "tries": tries[k],
                      "output": gen if out_mod == "text" else tok.speech_ids_to_string(gen) if gen else "",
                      "score": float(pred == r["sentiment"])})
    return {"setting": setting, "accuracy": sum(i["score"] for i in items) / len(items), "n": len(items),
            "n_shots": n_shots, "empty_outputs": sum(1 for i in items if i["pred"] is None), "judge": judge,
            "complete": True, "items": items}
