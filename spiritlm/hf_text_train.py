"""Byte-level BPE tokenizers trained offline in the conventions of today's LLM families.

No tokenizer can be downloaded here, so tests and the demo's ``backbone`` part train small ones
with the ``tokenizers`` library, laid out as the families ship theirs (``tokenizer.json`` +
``tokenizer_config.json``; what :class:`spiritlm.hf_text.HFText` reads):

* ``llama3``: Llama-3's split regex + byte-level; ``<|begin_of_text|>``, ``<|end_of_text|>`` and
  reserved ``<|reserved_special_token_N|>`` ids after the BPE pieces; BOS added by the
  post-processor (TemplateProcessing), as Llama-3's file does.
* ``qwen2``: Qwen2's regex (digits one by one), NFC; ``<|endoftext|>``, ``<|im_start|>``,
  ``<|im_end|>`` after the pieces; no BOS (Qwen2.5 and Qwen3 share this tokenizer).
* ``gpt2``: GPT-2's byte-level pre-tokenizer, the special tokens at ids 0.. (SmolLM2's layout:
  ``<|endoftext|>`` = 0, ``<|im_start|>`` = 1, ``<|im_end|>`` = 2); no BOS added.
* ``olmo2``: cl100k's regex (OLMo-2's GPT-2-class tokenizer), ``<|endoftext|>`` and ``<|pad|>``
  after the pieces; BOS = EOS = ``<|endoftext|>``, not added.

Deterministic: the same texts give the same file (one BPE trainer, fixed input order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
STYLES = ("llama3", "qwen2", "gpt2", "olmo2")


class BPETrainError(ValueError):
    pass


def _split(regex: str):
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def train_bpe_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1000,
                        style: str = "llama3", reserved: int = 8, max_length: int = 2048) -> Path:
    """Train a byte-level BPE of ``style`` (see the module docstring) on ``texts``; write
    ``tokenizer.json`` + ``tokenizer_config.json`` into ``out_dir``; return ``out_dir``."""
    if style not in STYLES:
        raise BPETrainError(f"style={style!r}: use one of {', '.join(STYLES)}")
    texts = [t for t in texts if t]
    if not texts:
        raise BPETrainError("no text to train the BPE tokenizer on")
    tok = Tokenizer(models.BPE(byte_fallback=False, ignore_merges=style == "llama3"))
    if style == "qwen2":
        tok.normalizer = normalizers.NFC()
    if style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = _split({"llama3": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT, "olmo2": LLAMA3_SPLIT}[style])
    tok.decoder = decoders.ByteLevel()
    first = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if style == "gpt2" else []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=first, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(texts, trainer=trainer)
    config: dict = {"model_max_length": max_length, "clean_up_tokenization_spaces": False}
    if style == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>"
                                                                for i in range(reserved)]
        tok.add_special_tokens(specials)
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
            special_tokens=[("<|begin_of_text|>", bos)])
        config.update(tokenizer_class="PreTrainedTokenizerFast", bos_token="<|begin_of_text|>",
                      eos_token="<|end_of_text|>")
    elif style == "qwen2":
        tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        config.update(tokenizer_class="Qwen2Tokenizer", bos_token=None, eos_token="<|endoftext|>",
                      pad_token="<|endoftext|>", errors="replace")
    elif style == "gpt2":
        config.update(tokenizer_class="GPT2Tokenizer", bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                      unk_token="<|endoftext|>")
    else:
        tok.add_special_tokens(["<|endoftext|>", "<|pad|>"])
        config.update(tokenizer_class="GPT2Tokenizer", bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                      pad_token="<|pad|>", unk_token="<|endoftext|>")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = json.loads(tok.to_str())
    config["added_tokens_decoder"] = {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
        for t in data.get("added_tokens", [])}
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out

