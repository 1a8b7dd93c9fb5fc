"""A tiny synthetic "speech" corpus for tests and offline smoke runs (no espeak needed).

Utterances are sequences of phone-like segments: voiced phones are harmonic sources at a
speaker- and time-varying F0 shaped by three formant resonances; unvoiced phones are band-passed
noise; silences are near-silent. Written as 16 kHz WAVs plus a ``spiritlm.manifest`` JSONL with
phone alignments, so PNMI can be measured against known labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# name: (F1, F2, F3, voiced)
PHONES = {
    "a": (800, 1200, 2500, True), "i": (300, 2300, 3000, True), "u": (320, 800, 2300, True),
    "e": (500, 1900, 2600, True), "o": (500, 900, 2400, True), "m": (280, 1000, 2200, True),
    "n": (280, 1700, 2600, True), "l": (380, 1100, 2700, True), "s": (5000, 7000, 0, False),
    "f": (1500, 4000, 0, False), "sh": (2500, 3500, 0, False), "sil": (0, 0, 0, False),
}


def synth_phone(name: str, n: int, f0_start: float, f0_end: float, scale: float, rng) -> np.ndarray:
    f1, f2, f3, voiced = PHONES[name]
    if name == "sil":
        return (rng.standard_normal(n) * 1e-3).astype(np.float32)
    if not voiced:
        from scipy.signal import butter, lfilter

        b, a = butter(2, [f1 / 8000 * scale, min(f2 / 8000 * scale, 0.99)], btype="band")
        return (0.1 * lfilter(b, a, rng.standard_normal(n))).astype(np.float32)
    f0 = np.linspace(f0_start, f0_end, n)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    out = np.zeros(n)
    for h in range(1, int(7000 / max(f0_start, f0_end))):
        fh = h * f0
        gain = sum(1.0 / (1 + ((fh - F * scale) / (80 + 0.1 * F)) ** 2) for F in (f1, f2, f3))
        out += gain * np.sin(h * phase)
    env = np.minimum(1, np.minimum(np.arange(n), np.arange(n)[::-1]) / 80)
    return (0.08 * out * env).astype(np.float32)


def make_synthetic_corpus(root: str | Path, n_utts: int = 20, seed: int = 0, n_speakers: int = 3,
                          mean_phones: int = 12, heldout: int = 0) -> Path:
    """Write ``root/manifest.jsonl`` + ``root/audio/*.wav``; returns the manifest path."""
    import soundfile as sf

    from spiritlm.manifest import Phone, Utterance, write_manifest

    root = Path(root)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [p for p in PHONES if p != "sil"]
    speakers = [(110 + 70 * i, 1.0 + 0.06 * i) for i in range(n_speakers)]
    utts = []
    for u in range(n_utts):
        spk = u % n_speakers
        f0_base, scale = speakers[spk]
        segs = [("sil", 0.1)] + [(str(rng.choice(names)), float(rng.uniform(0.06, 0.16)))
                                 for _ in range(max(2, rng.poisson(mean_phones)))] + [("sil", 0.1)]
        audio, phones, t = [], [], 0
        for name, dur in segs:
            n = int(dur * 16000)
            f0a, f0b = f0_base * rng.uniform(0.85, 1.15, size=2)
            audio.append(synth_phone(name, n, f0a, f0b, scale, rng))
            phones.append(Phone(name, round(t / 16000, 5), round((t + n) / 16000, 5)))
            t += n
        wav = np.concatenate(audio)
        rel = f"audio/syn-{u:04d}.wav"
        sf.write(root / rel, wav, 16000, subtype="PCM_16")
        utts.append(Utterance(id=f"syn-{u:04d}", audio_path=rel, duration=len(wav) / 16000, sample_rate=16000,
                              text="", speaker=f"spk{spk}", phones=phones,
                              split="heldout" if u >= n_utts - heldout else "train", kind="sentence"))
    write_manifest(root / "manifest.jsonl", utts)
    return root / "manifest.jsonl"
