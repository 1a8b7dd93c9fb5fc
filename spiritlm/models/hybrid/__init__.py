"""Hybrid speech input (Whisper-GPT, arXiv 2412.11449): at every speech step the continuous frame
(log-mel at the unit rate, or HuBERT features) goes through a small projector and is fused with
the embedding of the aligned unit; the LM predicts the next unit.

Files: ``config.py`` (the recipe), ``features.py`` (frame features aligned with the units, and
their store built in the data stage), ``data.py`` (undeduplicated documents with a feature per
speech position, packed with the unit LM's packer), ``model.py`` (the model, saving, loading),
``spec.py`` (the trainer hooks), ``scoring.py`` (the evaluation suite's scorer with features;
held-out NLL per unit), ``demo_part.py`` (the paper's comparison at demo scale).
"""

from spiritlm.models.spec import register
from spiritlm.models.hybrid.spec import SPEC

register(SPEC)

__all__ = ["SPEC"]
