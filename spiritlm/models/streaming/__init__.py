"""Streaming speech LM with linear cost (SpeechLLM-XL, issue 22): chunk-synchronous audio/text
interleaving, CTC forced alignment and a limited attention window.

Files: ``config.py`` (the recipe), ``align.py`` (CTC Viterbi forced alignment, tokens -> end
frames), ``data.py`` (chunk assignment, ``X_1 y_1 $ ... X_K y_K $`` sequences, packing, the
alignment cache), ``mask.py`` (the window mask: explicit and FlexAttention), ``model.py`` (the
model, ``load_streaming``), ``spec.py`` (trainer hooks), ``decode.py`` (reference chunked greedy
decoding and WER), ``demo_part.py`` (``spiritlm demo --part streaming``). The streaming encoder,
the bounded-cache decoder and the benchmarks: ``stream_encoder.py``, ``infer.py``, ``bench.py``.
"""

from spiritlm.models.spec import register
from spiritlm.models.streaming.spec import SPEC

register(SPEC)

__all__ = ["SPEC"]
