"""The text-to-unit family (``model_type = "t2u"``): text spans -> the project's speech tokens, for
synthetic interleaved data made from text alone (Zeng et al. 2024; ``spiritlm t2u fit``,
``spiritlm prepare synth-interleave``)."""

from spiritlm.models.spec import register
from spiritlm.models.t2u.spec import SPEC

register(SPEC)
