"""The release's style encoder (``style_encoder_w2v2/``): one style token per second.

Layout: a HF ``Wav2Vec2ForSequenceClassification`` directory (``config.json`` +
``pytorch_model.bin``, 100 classes; the state_dict may carry an extra ``_float_tensor`` buffer).
Rule (read from the release's published behaviour, our own code): the waveform (each <= 100 s chunk
of ``encode_units``) is normalised to zero mean and unit variance (wav2vec2-base feature
extractor: ``(x - mean) / sqrt(var + 1e-7)``), wav2vec2 runs over all of it, its last hidden
states go through the classifier's ``projector``, are mean-pooled over consecutive chunks of 50
frames (1 s at 50 Hz; the last, partial chunk is pooled over what it has), and each pooled chunk
goes through the ``classifier``; the token is the argmax. A file of ``n`` samples gives
``ceil(frames / 50)`` tokens with wav2vec2's ``frames = (n - 400) // 320 + 1``.

This differs from our own ``classifier`` style kind (``style.StyleClassifier``: each 1 s window
classified on its own, no normalisation), which keeps its behaviour for our own directories.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

POOL = 50  # wav2vec2 frames per style token (1 s at 50 Hz)


def release_style_tokens(n_samples: int, kernels=(10, 3, 3, 3, 3, 2, 2), strides=(5, 2, 2, 2, 2, 2, 2)) -> int:
    from spiritlm.tokenizer.hubert import conv_out_length

    return math.ceil(int(conv_out_length(int(n_samples), kernels, strides)) / POOL)


class ReleaseStyleEncoder:
    """``style_encoder_w2v2/`` -> ``__call__(wav) -> int64[tokens]`` with the release's pooling."""

    kind = "release_w2v2"

    def __init__(self, directory: str | Path, device: str = "cpu", max_chunk: int = 100 * 16000,
                 min_chunk: int = 1280):
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

        d = Path(directory)
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"{d}: no config.json (the release's style_encoder_w2v2/ is a HF "
                                    "Wav2Vec2ForSequenceClassification directory: config.json + pytorch_model.bin)")
        if not any((d / f).is_file() for f in ("pytorch_model.bin", "model.safetensors")):
            raise FileNotFoundError(f"{d}: no pytorch_model.bin (or model.safetensors) next to config.json")
        import json

        try:
            conf = json.loads((d / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{d / 'config.json'}: not JSON ({e})") from None
        if conf.get("model_type") != "wav2vec2":
            raise ValueError(f"{d / 'config.json'}: model_type={conf.get('model_type')!r}, the release's style "
                             "encoder is a wav2vec2 sequence classifier (model_type 'wav2vec2')")
        try:  # weights_only=True: a .bin is a pickle and must not run code
            model, info = Wav2Vec2ForSequenceClassification.from_pretrained(
                str(d), weights_only=True, output_loading_info=True)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{d}: cannot load as Wav2Vec2ForSequenceClassification "
                             f"({type(e).__name__}: {str(e)[:300]})") from None
        missing = [k for k in info.get("missing_keys", []) if "masked_spec_embed" not in k]
        bad = info.get("mismatched_keys", [])
        if missing or bad:
            raise ValueError(f"{d}: weights do not fill the model config.json describes: missing "
                             f"{list(missing)[:6]}, mismatched {list(bad)[:6]}")
        self.model = model.eval().to(device)
        self.device = device
        self.size = int(model.config.num_labels)
        # wav2vec2-base's preprocessing (zero mean, unit variance), built locally: no download
        self.extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                  do_normalize=True, return_attention_mask=False)
        self.max_chunk, self.min_chunk = int(max_chunk), int(min_chunk)

    @torch.inference_mode()
    def tokens_of_chunk(self, wav: np.ndarray) -> np.ndarray:
        x = self.extractor(np.asarray(wav, dtype=np.float32), sampling_rate=16000, return_tensors="pt").input_values
        h_BTD = self.model.wav2vec2(x.to(self.device))[0]
        h_BTD = self.model.projector(h_BTD)
        pooled = torch.stack([h_BTD[:, i : i + POOL].mean(1) for i in range(0, h_BTD.shape[1], POOL)], 1)
        return self.model.classifier(pooled).argmax(-1)[0].cpu().numpy().astype(np.int64)

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        out = [self.tokens_of_chunk(wav[s : s + self.max_chunk]) for s in range(0, len(wav), self.max_chunk)
               if len(wav[s : s + self.max_chunk]) >= self.min_chunk]
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def num_tokens(self, n_samples: int) -> int:
        c = self.model.config
        total = 0
        for s in range(0, n_samples, self.max_chunk):
            n = min(self.max_chunk, n_samples - s)
            if n >= self.min_chunk:
                total += release_style_tokens(n, c.conv_kernel, c.conv_stride)
        return total
