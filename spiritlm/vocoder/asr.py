"""Offline speech recognition for intelligibility checks: pocketsphinx with the English acoustic
model, dictionary and language model its wheel ships (no download, no GPU).

    asr = PocketsphinxASR()
    asr(wav_16k)          # -> "the cat sat on the mat"
    asr("a.wav")

Also the evaluation hooks the suite loads by name (``fewshot.asr``, ``fewshot.vocoder``,
``stsp.vocoder`` as ``"package.module:factory"``):

    fewshot.asr = "spiritlm.vocoder.asr:PocketsphinxASR"
    fewshot.vocoder = "spiritlm.vocoder.asr:vocoder_hook"
    fewshot.hook_args.vocoder = {directory = "runs/vocoder"}     # or {release = DIR, variant = "base"}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spiritlm.phone_align import pocketsphinx_pcm


class PocketsphinxASR:
    def __init__(self, noise: float = 1e-4, seed: int = 0):
        import pocketsphinx  # noqa: F401  (fail early with ImportError)

        # a whisper of fixed noise and padding: see spiritlm.phone_align.pocketsphinx_pcm
        self.noise, self.seed = noise, seed

    def __call__(self, audio: Any, sample_rate: int = 16000) -> str:
        from spiritlm.audio import load_audio

        wav = load_audio(audio if isinstance(audio, (str, Path)) else np.asarray(audio, np.float32), sample_rate)
        pcm = pocketsphinx_pcm(wav, self.noise, self.seed)
        import pocketsphinx as ps

        # a fresh decoder per utterance (~0.5 s): one decoder adapts its cepstral mean across
        # utterances, which made a transcript depend on what was decoded before it
        dec = ps.Decoder(loglevel="FATAL")
        dec.start_utt()
        dec.process_raw(pcm, full_utt=True)
        dec.end_utt()
        hyp = dec.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""


def vocoder_hook(directory: str = "", release: str = "", variant: str = "base", device: str | None = None,
                 speaker: Any = None):
    """``units -> 16 kHz waveform`` from a vocoder directory (``spiritlm vocoder fit``) or the
    release's ``speech_tokenizer/`` folder (``release=``, ``variant=``)."""
    from spiritlm.vocoder.vocoder import Vocoder

    if bool(directory) == bool(release):
        raise ValueError("vocoder hook: give exactly one of directory= (a `spiritlm vocoder fit` output) or "
                         "release= (the release's speech_tokenizer/ folder, with variant=base|expressive)")
    voc = Vocoder.load(directory, device) if directory else Vocoder.from_release(release, variant, device)
    if speaker is not None:
        voc.default_speaker = speaker

    def vocode(units) -> np.ndarray:
        return voc(units)

    vocode.vocoder = voc  # type: ignore[attr-defined]
    return vocode
