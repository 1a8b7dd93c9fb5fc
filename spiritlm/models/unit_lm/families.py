"""Tiny stand-ins for the LLM families the unit model continues, built offline.

``make_tiny_checkpoint("qwen2.5", DIR, texts)`` writes what a downloaded base model directory
holds -- ``config.json`` + ``model.safetensors`` + ``generation_config.json`` + the family's
tokenizer files -- with a random model from the family's own transformers config (a few
thousand parameters) and a tokenizer of the family's kind trained on ``texts``
(:mod:`spiritlm.hf_text_train`, or SentencePiece for LLaMA-2/Mistral). The real checkpoints
cannot be downloaded here; these carry every property the code path depends on: the config
class, tied or untied embeddings, padding rows past the tokenizer's ids (Qwen2.5: 151936 rows
for 151665 ids; OLMo-2: 100352 for 100278), reserved special ids before ``[Text]`` (Llama-3),
special tokens at ids 0.. (SmolLM2), no BOS (Qwen).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from spiritlm.hf_text_train import train_bpe_tokenizer
from spiritlm.text_tokenizer import SpiritTokenizer, train_sentencepiece


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # transformers' config model_type
    tokenizer: str  # "sentencepiece" or a spiritlm.hf_text_train style
    tie: bool  # the reference size's tie_word_embeddings
    pad_rows_to: int = 0  # embedding rows padded to a multiple (0: exactly the tokenizer's ids)
    reference: str = ""


FAMILIES = {f.name: f for f in (
    Family("llama2", "llama", "sentencepiece", False, reference="LLaMA-2-7B (the release's base)"),
    Family("llama3", "llama", "llama3", True, reference="Llama-3.2-1B"),
    Family("smollm2", "llama", "gpt2", True, reference="SmolLM2-135M/360M/1.7B"),
    Family("qwen2.5", "qwen2", "qwen2", True, pad_rows_to=64, reference="Qwen2.5-0.5B"),
    Family("qwen3", "qwen3", "qwen2", True, pad_rows_to=64, reference="Qwen3-0.6B"),
    Family("mistral", "mistral", "sentencepiece", False, reference="Mistral-7B-v0.1"),
    Family("olmo2", "olmo2", "olmo2", False, pad_rows_to=128, reference="OLMo-2-1124-7B"),
)}


# A few sentences to train a tiny tokenizer on (tests, the GPU check, the toy-size benches).
TINY_TEXT = [
    "the cat sat on the mat and the dog slept near the river",
    "a small bird sang in the garden every morning",
    "she walked to the market to buy some fresh fruit",
    "he was very happy to bring the little dog home",
    "they went home wet and hungry after the long day",
    "the cake came out of the oven soft and sweet",
    "what a wonderful day it was at the beach",
    "nobody came to the party and it rained all day",
] * 4


def make_tiny_checkpoint(family: str, out_dir: str | Path, texts: Sequence[str], vocab_size: int = 400,
                         hidden: int = 32, layers: int = 2, max_positions: int = 512, seed: int = 0) -> Path:
    """A tiny random ``family`` base model directory (see the module docstring)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if family not in FAMILIES:
        raise ValueError(f"family={family!r}: use one of {', '.join(FAMILIES)}")
    f = FAMILIES[family]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if f.tokenizer == "sentencepiece":
        train_sentencepiece(texts, out, vocab_size=vocab_size)
        (out / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True, "add_eos_token": False,
             "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2) + "\n")
    else:
        train_bpe_tokenizer(texts, out, vocab_size=vocab_size, style=f.tokenizer)
    tok = SpiritTokenizer.from_pretrained(out)
    n = tok.text.size
    rows = -(-n // f.pad_rows_to) * f.pad_rows_to if f.pad_rows_to else n
    extra = {"head_dim": hidden // 4} if f.model_type == "qwen3" else {}
    config = AutoConfig.for_model(
        f.model_type, vocab_size=rows, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        tie_word_embeddings=f.tie, bos_token_id=tok.text.bos_id if tok.text.bos_id >= 0 else None,
        eos_token_id=tok.eos_id, **extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.max_length = 64  # a setting of the family's own, which exports must keep
    model.save_pretrained(out, safe_serialization=True)
    return out
