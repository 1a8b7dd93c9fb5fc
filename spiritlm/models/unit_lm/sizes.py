"""Named sizes of the unit LM built from scratch, defined once (as torchtitan names its model
configs beside the model): the model's ``model.tiny`` fields and the batch it was sized with.

- ``test``: the smallest that trains (unit tests, the train benches' smoke size);
- ``cpu``: ``train/tiny_cpu.toml``, a CPU smoke run in minutes (the recipe spells the same
  numbers out so that the file is readable alone; a test keeps the two equal);
- ``demo``: the demo's language model (``spiritlm demo``: its ``train_overrides``), which
  ``spiritlm bench train --size demo`` measures.

``overrides(name)`` gives them as ``--set`` strings, in the order the demo has always written
them (the demo's resolved train config, and so its cached steps, do not change).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TinySize:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    seq_len: int  # tokens per packed row
    micro_batch_size: int
    global_batch_size: int
    # the text vocabulary it is sized for (model.tiny.base_vocab_size when no tokenizer is given;
    # the demo trains its SentencePiece model with this many pieces)
    text_vocab_size: int

    def model_fields(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                  "num_key_value_heads", "max_position_embeddings")}


SIZES: dict[str, TinySize] = {
    "test": TinySize(32, 64, 2, 4, 2, 128, seq_len=64, micro_batch_size=2, global_batch_size=4, text_vocab_size=256),
    "cpu": TinySize(64, 176, 2, 4, 2, 512, seq_len=256, micro_batch_size=4, global_batch_size=8,
                    text_vocab_size=1000),
    "demo": TinySize(128, 352, 4, 4, 4, 1024, seq_len=512, micro_batch_size=4, global_batch_size=8,
                     text_vocab_size=2000),
}


def tiny_size(name: str) -> TinySize:
    if name not in SIZES:
        raise KeyError(f"unit LM size {name!r} is not defined: use one of {sorted(SIZES)} "
                       "(spiritlm/models/unit_lm/sizes.py)")
    return SIZES[name]


def batch_overrides(name: str) -> list[str]:
    s = tiny_size(name)
    return [f"data.seq_len={s.seq_len}", f"micro_batch_size={s.micro_batch_size}",
            f"global_batch_size={s.global_batch_size}"]


def model_overrides(name: str) -> list[str]:
    return [f"model.tiny.{k}={v}" for k, v in tiny_size(name).model_fields().items()]


def overrides(name: str) -> list[str]:
    """The batch then the model, as ``--set`` strings."""
    return [*batch_overrides(name), *model_overrides(name)]
