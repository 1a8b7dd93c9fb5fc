"""Continuous speech input (SpeechLLM, Tiny Audio): encoder -> frame stacking -> projector -> LM.

Files: ``config.py`` (the recipe), ``encoders.py`` (HuBERT, HF encoders, the CTC conformer and
``CTCHead``), ``projectors.py``, ``model.py`` (the model, trainable parts, saving and loading),
``data.py`` (manifest reader, feature cache, packing), ``spec.py`` (the trainer hooks),
``bench.py`` (cached vs recomputed encoder features). ASR evaluation: ``asr.py`` (greedy / beam decoding, WER).
"""

from spiritlm.models.spec import register
from spiritlm.models.continuous.spec import SPEC

register(SPEC)

__all__ = ["SPEC"]
