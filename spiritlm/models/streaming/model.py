"""The chunk-synchronous streaming speech LM (SpeechLLM-XL at demo size).

    model = build_streaming(cfg)                  # a StreamingTrainConfig
    logits_BTV, aux = model(batch)                # batch: spiritlm.models.streaming.data.StreamingBatches
    model = load_streaming("runs/streaming_demo") # a run dir (its hf/) or an export dir

The continuous family's parts, reused as they are: encoder (ConformerEncoder / HuBERT / HF, or
the chunked conformer of ``stream_encoder.py``), frame stacking + projector, the LM and its
tokenizer (``continuous.model.load_lm``), trainable parts, LoRA, saving. What differs:

* the audio embeddings of an utterance are spliced at the audio positions of its chunked sequence
  (``audio_pos``, not one contiguous run), see :mod:`spiritlm.models.streaming.data`;
* attention is the limited window (:mod:`spiritlm.models.streaming.mask`): chunk k sees itself
  causally and the ``window`` chunks before it;
* positions: ``position_ids`` count from 0 through the whole utterance (stream). The LM is LLaMA
  with RoPE, whose attention scores depend only on the DISTANCE between query and key positions,
  so with the window a query only ever sees distances below (window + 1) chunks -- the distances
  training covered -- however long the stream; the absolute value never enters. (A decoder may
  therefore also re-base positions to the start of its window: same logits, tested in
  ``test_streaming_model.py``.) ``max_position_embeddings`` bounds nothing in HF's RoPE.
* ``$`` (end of chunk) is the LM's EOS id unless ``streaming.eoc_id`` says otherwise: its output
  row exists and the text start already means "stop here" by it; no new embedding row is needed
  because ``$`` is not fed back by default (``streaming.eoc_input``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from spiritlm.artifacts import hf_directory, load_state, read_json, typed_section
from spiritlm.config import ConfigError
from spiritlm.models.continuous.config import ContinuousConfig, encoder_frozen
from spiritlm.models.continuous.encoders import build_encoder, check_encoder
from spiritlm.models.continuous.model import ContinuousSpeechLM, apply_trainable, load_lm, tokenizer_dir
from spiritlm.models.continuous.text import LMTokenizer
from spiritlm.models.streaming.config import StreamingConfig, StreamingTrainConfig, chunk_frames, validate_streaming
from spiritlm.models.streaming.mask import window_attention_mask

STREAMING_FILE = "streaming.json"


class StreamingSpeechLM(ContinuousSpeechLM):
    def __init__(self, cfg: ContinuousConfig, scfg: StreamingConfig, lm, tokenizer: LMTokenizer, encoder,
                 seed: int = 0):
        super().__init__(cfg, lm, tokenizer, encoder, seed=seed)
        validate_streaming(scfg)
        self.scfg = scfg
        self.chunk_frames = chunk_frames(scfg, encoder.frame_rate, cfg.projector.stack)
        self.slots_per_chunk = self.chunk_frames // cfg.projector.stack
        self.eoc_id = scfg.eoc_id if scfg.eoc_id >= 0 else tokenizer.eos_id
        if self.eoc_id >= lm.get_input_embeddings().weight.shape[0]:
            raise ConfigError(f"streaming.eoc_id={self.eoc_id} is outside the LM's vocabulary")

    # ---- the LM under the window mask -------------------------------------------------------------
    def attn_implementation(self) -> str:
        return getattr(self.lm.config, "_attn_implementation", "sdpa") or "sdpa"

    def lm_logits(self, x_BTH: torch.Tensor, position_ids_BT: torch.Tensor, chunk_BT: torch.Tensor,
                  window: int | None = None) -> torch.Tensor:
        """Logits of input embeddings under the window mask (``window``: default the config's)."""
        w = self.scfg.window if window is None else window
        mask = window_attention_mask(position_ids_BT, chunk_BT, w, self.attn_implementation(), x_BTH.dtype)
        return self.lm(inputs_embeds=x_BTH, position_ids=position_ids_BT, attention_mask=mask,
                       use_cache=False).logits

    def embed_at(self, input_ids_BT: torch.Tensor, embs: list[torch.Tensor], audio_pos) -> torch.Tensor:
        """Token embeddings with utterance i's audio embeddings written at ``audio_pos[i] = (row,
        positions)`` (index_put: gradients reach the projector)."""
        x_BTH = self.lm.get_input_embeddings()(input_ids_BT)
        if not embs:
            return x_BTH
        rows, cols, vals = [], [], []
        for (b, positions), e in zip(audio_pos, embs):
            if e.shape[0] != len(positions):
                raise ValueError(f"utterance in row {b}: {len(positions)} audio slots but the encoder gave "
                                 f"{e.shape[0]} embeddings (features from another encoder or chunk setting?)")
            rows.append(torch.full((len(positions),), b, dtype=torch.long))
            cols.append(torch.as_tensor(positions, dtype=torch.long))
            vals.append(e)
        idx = (torch.cat(rows).to(x_BTH.device), torch.cat(cols).to(x_BTH.device))
        return x_BTH.index_put(idx, torch.cat(vals).to(x_BTH.dtype))

    def forward(self, batch: dict):
        dev = self.lm.get_input_embeddings().weight.device
        embs, aux = self.audio_embeddings(batch["audio"], batch.get("ctc_targets"))
        x = self.embed_at(batch["input_ids_BT"].to(dev), embs, batch["audio_pos"])
        logits = self.lm_logits(x, batch["position_ids_BT"].to(dev), batch["chunk_BT"].to(dev))
        return logits, aux

    # ---- saving ---------------------------------------------------------------------------------
    def save_parts(self, out: Path) -> Path:
        out = super().save_parts(out)
        (Path(out) / STREAMING_FILE).write_text(json.dumps({"streaming": asdict(self.scfg)}, indent=2) + "\n")
        return out


# ---- building -----------------------------------------------------------------------------------
def build_stream_encoder(cfg: ContinuousConfig, scfg: StreamingConfig):
    """The continuous family's encoder ("full"), or the chunked conformer ("chunked")."""
    if scfg.encoder == "full":
        return build_encoder(cfg.encoder)
    if cfg.encoder.kind != "conformer":
        raise ConfigError("streaming.encoder='chunked' is the chunked conformer: set continuous.encoder.kind="
                          "'conformer' (or streaming.encoder='full' for a HuBERT/HF encoder)")
    try:
        from spiritlm.models.streaming.stream_encoder import ChunkedConformerEncoder
    except ImportError as e:  # the chunked encoder lives in its own module (issue 22, deliverable 4)
        raise ConfigError(f"streaming.encoder='chunked' needs spiritlm.models.streaming.stream_encoder ({e}); "
                          "use streaming.encoder='full'") from e
    c = cfg.encoder.conformer
    frame_rate = 1000.0 / (c.hop_ms * c.subsample)
    enc = ChunkedConformerEncoder(c, chunk_frames=chunk_frames(scfg, frame_rate, cfg.projector.stack),
                                  left_chunks=scfg.encoder_left_chunks)
    if cfg.encoder.checkpoint:
        load_state(enc, cfg.encoder.checkpoint, "chunked Conformer encoder", "continuous.encoder.checkpoint")
    check_encoder(enc, cfg.encoder)
    return enc


def _load_ctc(model: StreamingSpeechLM, path: str) -> None:
    if not path:
        return
    if model.ctc is None:
        raise ConfigError("streaming.ctc_checkpoint is set but the model has no CTC head: set "
                          "continuous.encoder.ctc_weight > 0")
    load_state(model.ctc, path, "CTC head", "streaming.ctc_checkpoint")


def build_streaming(cfg: StreamingTrainConfig, dtype=torch.float32, lm=None) -> StreamingSpeechLM:
    from spiritlm.models.continuous.config import validate_continuous

    c, s = cfg.continuous, cfg.streaming
    validate_continuous(c)
    validate_streaming(s)
    tok = LMTokenizer(tokenizer_dir(cfg.model), c.audio_token)
    if lm is None:
        lm = load_lm(cfg.model, dtype, vocab_size=tok.size)
    if lm.get_input_embeddings().weight.shape[0] < tok.size:
        raise ConfigError(f"the LM has {lm.get_input_embeddings().weight.shape[0]} embedding rows but its "
                          f"tokenizer {tok.directory} has {tok.size} pieces: use the LM's own tokenizer")
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        encoder = build_stream_encoder(c, s)
    model = StreamingSpeechLM(c, s, lm, tok, encoder, seed=cfg.seed)
    _load_ctc(model, s.ctc_checkpoint)
    model.to(dtype)
    apply_trainable(model)
    if model.ctc is not None and encoder_frozen(c):
        model.ctc.requires_grad_(False)
    return model


def export_dir(path: str | Path) -> Path:
    """A run dir (its ``hf/``) or an export dir itself."""
    d = Path(path)
    if (d / "hf" / STREAMING_FILE).is_file():
        return d / "hf"
    if (d / STREAMING_FILE).is_file():
        return d
    raise ConfigError(f"{d}: no {STREAMING_FILE} (nor hf/{STREAMING_FILE}); not a streaming-model run "
                      "(spiritlm train with a train/streaming_*.toml recipe writes <run_dir>/hf)")


def load_streaming(path: str | Path, device: str = "cpu", dtype=torch.float32) -> StreamingSpeechLM:
    """A run dir or an export written by ``export_merged`` -> the model, in eval mode."""
    from transformers import AutoModelForCausalLM

    from spiritlm.config import load_config

    d = export_dir(path)
    raw = {"continuous": read_json(d / "continuous.json", "continuous"),
           "streaming": read_json(d / STREAMING_FILE, "streaming")}
    cfg = typed_section(d / STREAMING_FILE, lambda _: load_config(StreamingTrainConfig, None, [], base=raw),
                        "streaming")
    c, s = cfg.continuous, cfg.streaming
    if c.encoder.kind == "conformer":
        c.encoder.checkpoint = str(d / "encoder.safetensors")
    tok = LMTokenizer(d, c.audio_token)
    with hf_directory(d):
        lm = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype)
    encoder = build_stream_encoder(c, s)
    c.trainable = "projector"  # nothing to add: adapters are merged
    c.projector.checkpoint = str(d / "projector.safetensors")
    s.ctc_checkpoint = ""
    model = StreamingSpeechLM(c, s, lm, tok, encoder)
    if model.ctc is not None and (d / "ctc.safetensors").is_file():
        load_state(model.ctc, d / "ctc.safetensors", "CTC head")
    model.to(dtype)
    apply_trainable(model)
    return model.to(device).eval()
