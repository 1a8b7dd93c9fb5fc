"""Word and phone times of real speech from its transcript: pocketsphinx's forced alignment with
the English acoustic model and CMU dictionary its wheel ships (no download, CPU, ~0.1 s per
second of speech).

    utt = align_utterance(wav_16k, "and mister john dashwood had then leisure", id="0870")
    utt.words   # [Word("and", 0.20, 0.37), ...]
    utt.phones  # [Phone("AE", 0.20, 0.31), Phone("N", 0.31, 0.34), ...]  (ARPAbet, no stress)

What needs it: PNMI and ABX of speech units on real recordings (``spiritlm tokenizer report``),
which need phone labels per frame; the demo corpus gets them from espeak instead. Times are at
pocketsphinx's 10-ms frames. Silences and fillers are left out of ``phones`` (frames there read
as silence), and pronunciation variants (``to(3)``) are written as the word.

Also the one place that turns a waveform into what pocketsphinx reads (:func:`pocketsphinx_pcm`),
shared with the recogniser of the intelligibility checks (``spiritlm.vocoder.asr``).
"""

from __future__ import annotations

import re

import numpy as np

from spiritlm.manifest import Phone, Utterance, Word

FRAME_S = 0.01  # pocketsphinx's frame shift
PAD = 4000  # 0.25 s of near-silence each side: the decoder loses a last word without it


def pocketsphinx_pcm(wav: np.ndarray, noise: float = 1e-4, seed: int = 0, pad: int = PAD) -> bytes:
    """16-bit PCM bytes of ``wav`` (16 kHz float) with ``pad`` samples each side and a whisper of
    fixed noise (seeded): pocketsphinx's voice activity detection can stall on digital silence."""
    x = np.concatenate([np.zeros(pad, np.float32), np.asarray(wav, np.float32), np.zeros(pad, np.float32)])
    x = x + np.random.default_rng(seed).standard_normal(x.size).astype(np.float32) * noise
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def normalize_transcript(text: str) -> str:
    """Lower case, letters, digits and apostrophes only: how the CMU dictionary spells words."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def align_utterance(wav: np.ndarray, text: str, id: str = "utt", speaker: str = "speaker",
                    noise: float = 1e-4, seed: int = 0) -> Utterance:
    """An :class:`~spiritlm.manifest.Utterance` of ``wav`` (16 kHz mono float) with the word and
    phone times of ``text`` forced-aligned to it. Raises ValueError when a word is not in the
    dictionary or the alignment fails (e.g. the transcript is not what is spoken)."""
    import pocketsphinx as ps

    words = normalize_transcript(text)
    if not words:
        raise ValueError(f"{id}: empty transcript; give the words spoken")
    dec = ps.Decoder(samprate=16000, loglevel="FATAL")
    missing = [w for w in words.split() if dec.lookup_word(w) is None]
    if missing:
        raise ValueError(f"{id}: words not in pocketsphinx's CMU dictionary: {missing}; spell them as the "
                         "dictionary does (or drop the utterance)")
    pcm = pocketsphinx_pcm(wav, noise, seed)
    dec.set_align_text(words)
    for second_pass in (False, True):  # words first, then phones and states within them
        if second_pass:
            dec.set_alignment()
        dec.start_utt()
        dec.process_raw(pcm, full_utt=True)
        dec.end_utt()
    alignment = dec.get_alignment()
    if alignment is None:
        raise ValueError(f"{id}: pocketsphinx could not align the transcript to the audio (is it what is spoken?)")
    offset = PAD / 16000
    duration = len(wav) / 16000

    def clip(frames: int) -> float:
        return round(min(max(frames * FRAME_S - offset, 0.0), duration), 3)

    out_words, out_phones = [], []
    for w in alignment:
        name = w.name.split("(")[0]
        if name.startswith("<") or name.startswith("+") or name.startswith("["):  # silence, fillers
            continue
        start, end = clip(w.start), clip(w.start + w.duration)
        if end > start:
            out_words.append(Word(name, start, end))
        for p in w:
            ps_, pe = clip(p.start), clip(p.start + p.duration)
            if p.name != "SIL" and not p.name.startswith("+") and pe > ps_:
                out_phones.append(Phone(p.name, ps_, pe))
    if not out_phones:
        raise ValueError(f"{id}: the alignment holds no phone")
    return Utterance(id=id, audio_path="", duration=duration, sample_rate=16000, text=words, speaker=speaker,
                     words=out_words, phones=out_phones)
