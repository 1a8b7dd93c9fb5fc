"""Few-shot ASR and TTS (paper appendix formats), 10-shot by default.

Data: a JSONL manifest, one utterance per line with ``audio_path`` (or ``wav_path``) and ``text``
(or ``asr``); relative paths are relative to the manifest. Shots come from a second manifest
(``shots``) or, if none is given, from the same one (never the test item itself).

* ASR prompt: ``[Speech]<units_1>[Text] transcript_1\\n ... [Speech]<units>[Text]`` -> greedy text
  (ended by EOS, by a ``[Speech]`` marker -- the next shot, as the prompt taught -- or cut at
  the first newline), scored by corpus WER after normalisation (lower-case, punctuation
  removed, whitespace collapsed) with :func:`spiritlm.stats.wer` (``jiwer``; empty text by its rule).
* TTS prompt: ``[Text] text_1[Speech]<units_1> ... [Text] text[Speech]`` -> speech tokens (ended
  by EOS or a ``[Text]`` marker) ->
  ``vocoder(units) -> wav`` -> ``asr(wav) -> text`` -> corpus CER and WER. Both hooks are
  pluggable (a :class:`spiritlm.vocoder.Vocoder` hook is told the units are deduplicated); with a
  vocoder and no ASR hook the transcripts come from pocketsphinx, offline. Without a vocoder TTS
  is reported as skipped, never as a number.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Callable

from spiritlm import stats
from spiritlm.eval.generate import generate_batch, model_context, output_speech_ids, output_text, vocode_ids
from spiritlm.eval.zerospeech import LayoutError

log = logging.getLogger(__name__)

normalize_text = stats.normalize_text  # the one ASR normalisation (spiritlm.stats)


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER of normalised texts (:func:`spiritlm.stats.wer`; NaN with no reference words)."""
    return float(stats.asr_wer(refs, hyps)["wer"])


def cer(refs: list[str], hyps: list[str]) -> float:
    """Corpus CER of normalised texts (:func:`spiritlm.stats.cer`, the same empty-text rule)."""
    return float(stats.cer([normalize_text(r) for r in refs], [normalize_text(h) for h in hyps])["cer"])


def read_utterances(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path} not found: few-shot ASR/TTS reads a JSONL with audio_path and text")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        wav = r.get("audio_path") or r.get("wav_path")
        text = r.get("text") if r.get("text") is not None else r.get("asr")
        if not wav or text is None:
            raise LayoutError(f"{path}:{i}: needs 'audio_path' (or 'wav_path') and 'text' (or 'asr')")
        p = Path(wav)
        out.append({"id": str(r.get("id", i)), "wav": p if p.is_absolute() else path.parent / p, "text": text})
    if not out:
        raise LayoutError(f"{path}: empty manifest")
    return out


def _shots(pool, test, n, rng):
    cands = [u for u in pool if u["id"] != test["id"]]
    if len(cands) < n:
        raise LayoutError(f"only {len(cands)} shot utterances (other than the test item) for {n} shots: "
                          f"lower fewshot.n_shots to {len(cands)} or fewer, or give more shots "
                          f"(fewshot.shots_manifest; mini benchmarks: mini.sizes.asr_shots)")
    return rng.sample(cands, n)


def _prompts(test: list, pool: list, n_shots: int, seed: int, tok, encoder, task: str,
             has_pitch: bool, has_style: bool, limit: int | None = None) -> tuple[list[list[int]], list[int]]:
    """Few-shot prompts in the paper's appendix formats: ASR shots are ``[Speech]... [Text]
    transcript\n`` and the item ends in ``[Speech]... [Text]``; TTS is the reverse. ``limit``:
    the most tokens a prompt may hold (the model's context less the answer's budget): the earliest
    shots are dropped until it fits, so the model never reads past the positions it was built for
    (the same shots are drawn either way). -> (prompts, shots kept per item)."""
    rng = random.Random(seed)
    prompts, kept = [], []
    marker = "text" if task == "asr" else "speech"
    for u in test:
        shot_segs = []
        for s in _shots(pool, u, n_shots, rng):
            if task == "asr":
                shot_segs.append([("speech", encoder(s["wav"])), ("text", s["text"] + "\n")])
            else:
                shot_segs.append([("text", s["text"]), ("speech", encoder(s["wav"]))])
        item = ("speech", encoder(u["wav"])) if task == "asr" else ("text", u["text"])
        first = 0
        while True:
            segs = [seg for pair in shot_segs[first:] for seg in pair] + [item]
            ids = tok.encode_segments(segs, has_pitch=has_pitch, has_style=has_style, trailing_marker=marker)
            if limit is None or len(ids) <= limit or first == len(shot_segs):
                break
            first += 1
        prompts.append(ids)
        kept.append(len(shot_segs) - first)
    return prompts, kept


def _prompt_limit(model, max_new_tokens: int) -> int | None:
    ctx = model_context(model)
    return None if ctx is None else max(1, ctx - max_new_tokens)


def _shots_report(n_shots: int, kept: list[int]) -> dict:
    """How many shots the prompts held: ``shots`` asked, ``shots_used`` (min / mean) when the
    context made some prompts drop their earliest shots."""
    if not kept or min(kept) == n_shots:
        return {}
    log.warning("few-shot prompts longer than the model's context: %d of %d items kept fewer than %d shots "
                "(as few as %d)", sum(k < n_shots for k in kept), len(kept), n_shots, min(kept))
    return {"shots_used": {"min": min(kept), "mean": sum(kept) / len(kept)}}


def run_asr(manifest: Path, model, tok, encoder, shots: Path | None = None, n_shots: int = 10,
            max_new_tokens: int = 60, seed: int = 0, max_items: int = 0, has_pitch=False, has_style=False) -> dict:
    if encoder is None:
        raise ValueError("few-shot ASR needs a speech encoder (set speech_encoder in the recipe)")
    test = read_utterances(manifest)[: max_items or None]
    pool = read_utterances(shots) if shots else test
    prompts, kept = _prompts(test, pool, n_shots, seed, tok, encoder, "asr", has_pitch, has_style,
                             _prompt_limit(model, max_new_tokens))
    gens = generate_batch(model, tok, prompts, "text", do_sample=False, max_new_tokens=max_new_tokens,
                          stop_at_switch=True)
    items = []
    for u, outs in zip(test, gens):
        hyp = output_text(outs).split("\n")[0].strip()
        items.append({"id": u["id"], "ref": u["text"], "hyp": hyp,
                      "wer": wer([u["text"]], [hyp]) if normalize_text(u["text"]) else None})
    return {"task": "asr", "shots": n_shots, **_shots_report(n_shots, kept), "n": len(items), "complete": True,
            "wer": wer([i["ref"] for i in items], [i["hyp"] for i in items]), "items": items}


def run_tts(manifest: Path, model, tok, encoder, vocoder: Callable | None, asr: Callable | None,
            shots: Path | None = None, n_shots: int = 10, max_new_tokens: int = 300, seed: int = 0,
            max_items: int = 0, has_pitch=False, has_style=False) -> dict:
    if vocoder is None:
        return {"task": "tts", "skipped": "TTS needs a vocoder: fewshot.vocoder = \"spiritlm.vocoder.asr:vocoder_hook\" "
                "with fewshot.hook_args.vocoder = {directory = ...} (a `spiritlm vocoder fit` output) or "
                "{release = ..., variant = ...}", "complete": False}
    if encoder is None:
        raise ValueError("few-shot TTS needs a speech encoder for the shots (set speech_encoder)")
    asr_name = getattr(asr, "__name__", type(asr).__name__)
    if asr is None:
        from spiritlm.vocoder.asr import PocketsphinxASR

        asr, asr_name = PocketsphinxASR(), "pocketsphinx"
    test = read_utterances(manifest)[: max_items or None]
    pool = read_utterances(shots) if shots else test
    prompts, kept = _prompts(test, pool, n_shots, seed, tok, encoder, "tts", has_pitch, has_style,
                             _prompt_limit(model, max_new_tokens))
    gens = generate_batch(model, tok, prompts, "speech", max_new_tokens=max_new_tokens, seed=seed,
                          has_pitch=has_pitch, has_style=has_style, stop_at_switch=True)
    items = []
    for u, outs in zip(test, gens):
        gen = output_speech_ids(outs)
        hyp = asr(vocode_ids(vocoder, gen, tok)) if gen else ""
        items.append({"id": u["id"], "ref": u["text"], "hyp": hyp, "n_speech_tokens": len(gen)})
    refs, hyps = [i["ref"] for i in items], [i["hyp"] for i in items]
    return {"task": "tts", "shots": n_shots, **_shots_report(n_shots, kept), "n": len(items), "complete": True,
            "asr": asr_name, "cer": cer(refs, hyps), "wer": wer(refs, hyps), "items": items}
