"""Which HF causal LMs the unit model continues, and how their config is read.

Any local HF causal-LM directory loads through the Auto classes with ``trust_remote_code`` off.
Tested end to end (tiny random models built from each family's config, a tokenizer of the
family's kind; ``tests/test_backbones.py``): LLaMA-2 and Llama-3 (``llama``; SmolLM2 is this
architecture with a GPT-2-style BPE), Qwen2.5 (``qwen2``), Qwen3 (``qwen3``), Mistral
(``mistral``), OLMo-2 (``olmo2``). Other causal-LM families transformers knows are let through
with a warning (untested here); what cannot work is refused before any weight is read:

* no causal-LM head (``model_type`` not in transformers' causal-LM mapping: BERT-style encoders
  have one only as a decoder head, T5/BART are encoder-decoders), or ``is_encoder_decoder``;
* code that is not in transformers (``auto_map`` for an unknown ``model_type``: we never run a
  checkpoint's own Python);
* a multimodal config wrapping a text model (``text_config``): point at the text model itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from spiritlm.artifacts import hf_directory
from spiritlm.config import ConfigError

log = logging.getLogger(__name__)

TESTED_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "olmo2")
# encoder models that transformers maps to a *decoder* LM head: not a pretrained causal LM
ENCODER_FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "bert-generation",
                    "data2vec-text", "xlm-roberta-xl", "roberta-prelayernorm", "rembert")


def load_backbone_config(directory: str | Path) -> PretrainedConfig:
    """The checkpoint's config, or a ConfigError saying why this family cannot be continued."""
    d = Path(directory)
    if not (d / "config.json").is_file():
        raise ConfigError(
            f"model.checkpoint={d} has no config.json: point it at a local HF causal-LM checkpoint "
            "directory (config.json + *.safetensors + its tokenizer files), or leave it empty for the tiny model")
    try:
        with hf_directory(d):
            config = AutoConfig.from_pretrained(d, trust_remote_code=False)
    except ValueError as e:  # an unknown model_type needs the checkpoint's own code
        raise ConfigError(
            f"{d / 'config.json'}: transformers cannot build this model without running the checkpoint's "
            f"own code ({e}); we never do (trust_remote_code is off). Use a family transformers ships "
            f"(tested: {', '.join(TESTED_FAMILIES)}) or upgrade transformers if the family is newer") from None
    kind = getattr(config, "model_type", "")
    why = None
    if getattr(config, "is_encoder_decoder", False):
        why = "an encoder-decoder model, not a decoder-only causal LM"
    elif kind in ENCODER_FAMILIES:
        why = "an encoder (its causal-LM class is a decoder head added on top, never pretrained as one)"
    elif kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        why = ("a model without a causal-LM head in transformers" +
               ("; it wraps a text model (text_config): point model.checkpoint at that text model"
                if getattr(config, "text_config", None) is not None else ""))
    if why:
        raise ConfigError(f"{d / 'config.json'}: model_type={kind!r} is {why}; the unit model continues a "
                          f"causal LM (tested: {', '.join(TESTED_FAMILIES)})")
    if kind not in TESTED_FAMILIES:
        log.warning("%s: model_type=%r is a causal LM, but not one of the families tested here (%s); "
                    "check the first steps' losses", d, kind, ", ".join(TESTED_FAMILIES))
    return config


def ties_embeddings(config: PretrainedConfig) -> bool:
    """Whether input and output embeddings are one tensor (Qwen2.5-0.5B, Llama-3.2-1B, SmolLM2)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", False))
