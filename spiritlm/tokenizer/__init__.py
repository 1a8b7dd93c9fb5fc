"""Speech tokenizer: HuBERT units, pitch (F0 VQ-VAE) tokens and style tokens.

Modules: ``audio`` (loading/validation), ``hubert`` (dense features), ``fairseq_convert``
(fairseq checkpoint -> HF HubertModel without running pickled code), ``kmeans`` (faiss k-means,
LinearQuantizer), ``pitch`` + ``f0_vqvae``, ``style``, ``speech_tokenizer`` (the
``SpeechTokenizer`` API and tokenizer directories), ``fit`` / ``tiny_hubert`` /
``tiny_hubert_train`` (training; ``corpus_audio`` reads a manifest split's audio), ``metrics``
(PNMI, perplexity, bitrate), ``bench`` and ``cli``. Imports are lazy so that
``spiritlm --help`` stays fast.
"""

from __future__ import annotations

__all__ = ["SpeechTokenizer", "AudioError", "fit_demo_tokenizer", "fit_tokenizer", "bench_tokenizer"]


def __getattr__(name: str):
    if name == "SpeechTokenizer":
        from spiritlm.tokenizer.speech_tokenizer import SpeechTokenizer

        return SpeechTokenizer
    if name == "AudioError":
        from spiritlm.audio import AudioError

        return AudioError
    if name == "fit_demo_tokenizer":
        from spiritlm.tokenizer.tiny_hubert import fit_demo_tokenizer

        return fit_demo_tokenizer
    if name == "fit_tokenizer":
        from spiritlm.tokenizer.fit import fit_tokenizer

        return fit_tokenizer
    if name == "bench_tokenizer":
        from spiritlm.tokenizer.bench import bench_tokenizer

        return bench_tokenizer
    raise AttributeError(f"module 'spiritlm.tokenizer' has no attribute {name!r}")
