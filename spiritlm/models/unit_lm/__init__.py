"""The Spirit LM unit model (``model_type = "unit_lm"``, the default family): LLaMA continued on
speech units interleaved with text. ``model.py`` builds/extends the LM, ``load.py`` loads a saved
one, ``spec.py`` holds the trainer and evaluation hooks."""

from spiritlm.models.spec import register
from spiritlm.models.unit_lm.spec import SPEC

register(SPEC)

__all__ = ["SPEC"]
