"""Speech encoders of the continuous-input model, and the reusable CTC head.

Every encoder is an ``nn.Module`` with ``dim`` (frame width), ``frame_rate`` (frames per second),
``min_samples`` (the shortest waveform that gives one frame), ``num_frames(n_samples)`` and
``forward(wavs) -> (x_BTD, lens_B)`` over a list of 1-D float32 16 kHz waveforms. A row's valid
frames are exactly what the same waveform gives alone (padding never leaks: tested).

* :class:`HubertEncoder` -- our HF ``HubertModel`` (a speech-tokenizer dir's ``hubert/``, a HF
  dir or a fairseq ``.pt``) through :class:`spiritlm.tokenizer.hubert.HubertFeaturizer` (its
  batching with exact padding masks); frozen.
* :class:`HFEncoder` -- any local HF speech encoder taking ``input_values`` (wav2vec2, HuBERT,
  WavLM, data2vec-audio ...) through ``AutoModel``; one forward per waveform (exact), frozen.
* :class:`ConformerEncoder` -- a small conformer over log-mel filterbanks, trained here with a
  :class:`CTCHead` (SpeechLLM's encoder at demo size).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from spiritlm.artifacts import load_state
from spiritlm.config import ConfigError
from spiritlm.models.continuous.config import EncoderConfig
# the conformer, log-mel and CTC pieces live in the tokenizer layer (semantic units use them too);
# re-exported here so that the families' imports and checkpoints are unchanged
from spiritlm.tokenizer.conformer import (CHARS, SAMPLE_RATE, CharVocab, ConformerBlock, ConformerConfig,  # noqa: F401
                                          ConformerEncoder, CTCHead, LogMel, _ConvModule, _FFN, _pad_wavs,
                                          _sinusoids, mel_filters, pad_frames, valid_mask)


# ---- pretrained HF encoders (frozen) ---------------------------------------------------------
def _hidden_at(hidden_states, layer: int):
    return hidden_states[layer] if layer > 0 else hidden_states[-1]


def _keep_fp32(model: nn.Module) -> None:
    """A frozen pretrained encoder runs in fp32 (the release's HuBERT numbers) even when the
    trainer casts the whole module to bf16: it holds no optimizer state, so casting back is safe."""
    p = next(model.parameters())
    if p.dtype != torch.float32:
        model.float()


class HubertEncoder(nn.Module):
    """Our HuBERT through ``HubertFeaturizer`` (exact batched padding); features of ``layer``."""

    def __init__(self, path: str, layer: int = 0):
        super().__init__()
        from spiritlm.tokenizer.hubert import HubertFeaturizer, load_hubert

        p = Path(path)
        if p.is_dir() and (p / "hubert" / "config.json").is_file():  # a speech-tokenizer dir
            p = p / "hubert"
        self.model = load_hubert(p)
        self.model.requires_grad_(False)
        layer = layer or self.model.config.num_hidden_layers
        self.feat = HubertFeaturizer(self.model, layer, device=torch.device("cpu"))
        self.dim, self.frame_rate = self.feat.dim, self.feat.frame_rate
        self.min_samples = self.feat.min_chunk

    def num_frames(self, n_samples):
        return torch.as_tensor(self.feat.num_frames(int(n_samples)))

    def forward(self, wavs):
        _keep_fp32(self.model)
        dev = next(self.model.parameters()).device
        self.feat.device = dev
        feats = self.feat.features_many([np.asarray(w, dtype=np.float32) for w in wavs])
        return pad_frames([torch.from_numpy(f).to(dev) for f in feats])


class HFEncoder(nn.Module):
    """A local HF speech encoder (``AutoModel``; ``input_values`` models). One forward per
    waveform, so no padding convention of the model matters; layer-normalised input when its
    feature-extractor config says ``do_normalize``."""

    def __init__(self, path: str, layer: int = 0):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        p = Path(path)
        if not (p / "config.json").is_file():
            raise ConfigError(f"continuous.encoder.path={p}: no config.json; point it at a local HF "
                              "speech encoder directory")
        config = AutoConfig.from_pretrained(p)
        if not hasattr(config, "conv_stride"):
            raise ConfigError(f"{p}: model_type={config.model_type!r} takes no raw waveform "
                              "(input_values); use a wav2vec2/HuBERT/WavLM-style encoder")
        self.model = AutoModel.from_pretrained(p)
        self.model.requires_grad_(False)
        self.model.eval()
        self.layer = layer
        self.kernels, self.strides = list(config.conv_kernel), list(config.conv_stride)
        self.dim = config.hidden_size
        self.frame_rate = SAMPLE_RATE / float(np.prod(self.strides))
        pre = p / "preprocessor_config.json"
        self.normalize = bool(json.loads(pre.read_text()).get("do_normalize", False)) if pre.is_file() else False
        self.min_samples = int(self.kernels[0] + sum((k - 1) * int(np.prod(self.strides[:i]))
                                                     for i, k in enumerate(self.kernels) if i > 0))

    def num_frames(self, n_samples):
        from spiritlm.tokenizer.hubert import conv_out_length

        return torch.as_tensor(conv_out_length(int(n_samples), self.kernels, self.strides))

    def forward(self, wavs):
        _keep_fp32(self.model)
        dev = next(self.model.parameters()).device
        out = []
        for w in wavs:
            x = torch.as_tensor(np.asarray(w, dtype=np.float32), device=dev)[None]
            if self.normalize:
                x = (x - x.mean()) / (x.std(unbiased=False) + 1e-7)
            hs = self.model(input_values=x, output_hidden_states=True).hidden_states
            out.append(_hidden_at(hs, self.layer)[0])
        return pad_frames(out)


def build_encoder(c: EncoderConfig) -> nn.Module:
    if c.kind == "hubert":
        enc = HubertEncoder(c.path, c.layer)
    elif c.kind == "hf":
        enc = HFEncoder(c.path, c.layer)
    else:
        enc = ConformerEncoder(c.conformer)
        if c.checkpoint:
            load_state(enc, c.checkpoint, "Conformer encoder", "continuous.encoder.checkpoint")
    check_encoder(enc, c)
    return enc


def check_encoder(enc, c: EncoderConfig) -> None:
    """The recipe's expected width / frame rate against the encoder's; the message says the fix."""
    if c.dim and enc.dim != c.dim:
        raise ConfigError(f"continuous.encoder.dim={c.dim} but the {c.kind} encoder at "
                          f"{c.path or '(conformer)'} gives {enc.dim}-d frames; set dim={enc.dim} (or 0 "
                          "to accept the encoder's) and retrain the projector for it")
    if c.frame_rate and abs(enc.frame_rate - c.frame_rate) > 1e-6:
        raise ConfigError(f"continuous.encoder.frame_rate={c.frame_rate} but the {c.kind} encoder runs at "
                          f"{enc.frame_rate:g} Hz; set frame_rate={enc.frame_rate:g} (or 0) and choose "
                          "projector.stack for the LM rate you want")
