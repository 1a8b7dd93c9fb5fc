"""Hermetic helpers for tests and smoke runs: a tiny random Spirit LM directory and a fake encoder.

    d = make_tiny_model_dir(tmp_path / "model")     # tokenizer.model + config.json + weights
    enc = FakeSpeechEncoder()                       # deterministic units from the wav's bytes
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from spiritlm.models.unit_lm.families import TINY_TEXT  # noqa: F401 -- re-exported: the tests import it from here
from spiritlm.text_tokenizer import SpiritTokenizer, train_sentencepiece


def make_tiny_model_dir(out: str | Path, vocab_size: int = 300, hidden: int = 32, layers: int = 2,
                        seed: int = 0, speech_vocab: bool = True) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_sentencepiece(TINY_TEXT, out, vocab_size=vocab_size)
    tok = SpiritTokenizer.from_pretrained(out)
    tok.save_pretrained(out)
    n = tok.layout.padded_vocab_size(64) if speech_vocab else tok.layout.base_vocab_size
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=n, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger logits than the default init, so that scores differ clearly
        model.lm_head.weight.normal_(0, 0.5)
    model.save_pretrained(out)
    return out


class FakeSpeechEncoder:
    """Deterministic units from the audio content: ~25 HuBERT units/s, 12.5 pitch, 1 style."""

    def __init__(self, hubert_size: int = 501, pitch_size: int = 64, style_size: int = 100):
        self.sizes = (hubert_size, pitch_size, style_size)

    def __call__(self, wav) -> dict[str, np.ndarray]:
        if isinstance(wav, (str, Path)):
            import soundfile as sf

            wav, sr = sf.read(str(wav), dtype="float32")
        wav = np.asarray(wav, dtype=np.float32)
        n = max(2, int(len(wav) / 16000 * 25))
        seed = int.from_bytes(hashlib.sha256(wav.tobytes()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        hu = rng.integers(0, self.sizes[0], n)
        return {"hubert": hu, "pitch": rng.integers(0, self.sizes[1], n // 2 + 1),
                "style": rng.integers(0, self.sizes[2], n // 25 + 1)}


def write_tone(path: str | Path, seconds: float = 0.5, freq: float = 220.0, sr: int = 16000) -> Path:
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(p), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return p


def write_items(d: str | Path, scores, setting: str = "T2S", task: str = "topic_storycloze") -> dict:
    """An evaluation directory holding only ``items.jsonl`` (one 0/1 or averaged score per item,
    keys "0", "1", ...), as the comparisons read it -> ``{"dir": d}`` like an eval step's output."""
    d = Path(d)
    d.mkdir(parents=True)
    with open(d / "items.jsonl", "w") as f:
        for i, s in enumerate(scores):
            f.write(json.dumps({"task": task, "setting": setting, "key": str(i), "score": s}) + "\n")
    return {"dir": str(d)}


def two_test_draws(root: str | Path, test_scores: dict[str, list]) -> tuple[dict, dict]:
    """The evaluations a part's comparison reads, for tests: every model scores ``[1, 1]`` on the dev
    draw and its ``test_scores`` on each of two test draws -> (``{model: {label: [eval]}}``, draws)."""
    root = Path(root)
    evals = {name: {"dev": [write_items(root / name / "dev", [1, 1])],
                    "test1": [write_items(root / name / "t1", scores)],
                    "test2": [write_items(root / name / "t2", scores)]} for name, scores in test_scores.items()}
    return evals, {"dev": {"seed": 0}, "test1": {"seed": 11}, "test2": {"seed": 12}}
