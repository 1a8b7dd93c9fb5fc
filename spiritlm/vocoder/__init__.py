"""Unit HiFi-GAN vocoders: speech units -> 16 kHz waveform.

Modules: ``model`` (the generator, named like the released state_dict), ``release`` (reading
the release's ``hifigan_*`` folders without unpickling code), ``vocoder`` (the ``Vocoder`` API:
``from_release``, ``load``, ``save``, ``decode``), ``losses`` (mel L1, discriminators), ``fit``
(``spiritlm vocoder fit``) and ``asr`` (pocketsphinx transcription and evaluation hooks).
Imports are lazy so that ``spiritlm --help`` stays fast.
"""

from __future__ import annotations

__all__ = ["Vocoder", "VocoderFitConfig", "fit_vocoder"]


def __getattr__(name: str):
    if name == "Vocoder":
        from spiritlm.vocoder.vocoder import Vocoder

        return Vocoder
    if name in ("VocoderFitConfig", "fit_vocoder"):
        from spiritlm.vocoder import fit

        return getattr(fit, name)
    raise AttributeError(f"module 'spiritlm.vocoder' has no attribute {name!r}")
