"""Recipe of a text-to-unit (T2U) model (``train/t2u_demo.toml``): typed dataclasses.

A T2U recipe is a :class:`~spiritlm.components.config.TrainConfig` (same ``model`` section: a LLaMA
with the speech vocabulary, same trainer, ZeRO, checkpoints and logs) plus ``model_type = "t2u"``
and a ``[t2u]`` section. Its documents are made from the data stage's **aligned** records, one per
record and epoch: a window of ``span`` consecutive words, written

    [Text] <the words' BPE ids> [Speech] <the window's deduplicated units> [Text]

where the units are exactly those real interleaving gives a speech span over these words (the
straddling rule of ``spiritlm.data.interleave``). The loss is on the units and the closing
``[Text]`` only (the text is the condition); the closing ``[Text]`` is how a decoded span ends, as
speech spans end in an interleaved document. Zeng et al. 2024 train such a text-to-token model to
write the speech spans of synthetic interleaved data (``spiritlm prepare synth-interleave``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spiritlm.components.config import TrainConfig
from spiritlm.config import ConfigError
from spiritlm.data.interleave import SpanDist

# the file beside a T2U export that says which speech tokens it writes (spec.py writes it,
# decode.py reads it)
MARKER = "spiritlm_t2u.json"
FORMAT = "spiritlm-t2u-v1"


@dataclass
class T2USection:
    # words per training window: uniform 1..15 covers the speech spans of the default interleaving
    # (5..15 words) and shorter ones, so the model also learns where a word's units start and end
    span: SpanDist = field(default_factory=lambda: SpanDist("uniform", 1, 15))
    # a window whose text + units would exceed this many tokens is shortened from its end
    max_tokens: int = 1024


@dataclass
class T2UConfig(TrainConfig):
    model_type: str = "t2u"
    t2u: T2USection = field(default_factory=T2USection)

    def __post_init__(self) -> None:
        if self.model_type != "t2u":
            raise ConfigError(f"model_type={self.model_type!r} in a T2U recipe: set model_type = \"t2u\"")
        if self.t2u.max_tokens < 8:
            raise ConfigError(f"t2u.max_tokens={self.t2u.max_tokens}: set 8 or more (text + units of one window)")
