"""The continuous-input speech LM: encoder -> stack k -> projector -> LM input embeddings.

    model = build_continuous(cfg)                  # a ContinuousTrainConfig
    logits_BTV, aux = model(batch)                 # batch: see spiritlm.models.continuous.data

A batch row holds one or more utterances (packing): ``input_ids_BT`` with the audio slots
(``slots``: (row, start, n) per utterance, in the order of the batch's audio) whose embeddings are
replaced by the projected frames -- spliced in with ``index_put`` (autograd flows into the
projector). ``position_ids_BT`` restart at every utterance and the attention is block-diagonal,
so each utterance's logits equal those of it alone (tested).

Trainable parts (``continuous.trainable``): ``projector`` (encoder and LM frozen), ``lora``
(projector + peft LoRA adapters on ``lora.target_modules`` of the LM), ``all`` (projector + LM;
the conformer too with ``train_encoder``). Frozen parts get ``requires_grad=False`` and stay out
of the optimizer.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from spiritlm.artifacts import hf_directory, load_state, typed_section
from spiritlm.components.checkpoint import replace_dir
from spiritlm.config import ConfigError
from spiritlm.models.continuous.config import ContinuousConfig, ContinuousTrainConfig, encoder_frozen
from spiritlm.models.continuous.encoders import CharVocab, CTCHead, ConformerEncoder, build_encoder, pad_frames
from spiritlm.models.continuous.projectors import build_projector
from spiritlm.models.continuous.text import LMTokenizer

log = logging.getLogger(__name__)
CONFIG_FILE = "continuous.json"


class ContinuousSpeechLM(nn.Module):
    def __init__(self, cfg: ContinuousConfig, lm: nn.Module, tokenizer: LMTokenizer, encoder: nn.Module,
                 seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.tok = tokenizer
        self.encoder = encoder
        self.lm = lm
        g = torch.random.fork_rng()
        with g:  # the projector's initial weights depend on the seed only
            torch.manual_seed(seed)
            self.projector = build_projector(cfg.projector, encoder.dim, self.lm_config.hidden_size)
            self.ctc = CTCHead(encoder.dim, len(CharVocab())) if cfg.encoder.ctc_weight > 0 else None
        self.chars = CharVocab()
        self.config = self.lm_config  # the trainer reads model.config (FLOPs per token)
        self.block_mask = True

    @property
    def lm_config(self):
        return self.lm.config

    # ---- audio -> embeddings ----------------------------------------------------------------
    def frames_for(self, n_samples: int) -> int:
        """LM embeddings an utterance of ``n_samples`` gets (0: too short for one stack)."""
        return int(self.encoder.num_frames(n_samples)) // self.cfg.projector.stack

    def encode(self, wavs):
        grad = any(p.requires_grad for p in self.encoder.parameters())
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return self.encoder(wavs)

    def audio_embeddings(self, audio: dict, ctc_targets=None):
        """``audio``: {"wavs": [1-D arrays]} or {"feats": [(T_i, D) tensors]} ->
        (list of (n_i, H) embeddings, auxiliary loss: MoE balance + weighted CTC)."""
        dev = next(self.projector.parameters()).device
        if "feats" in audio:
            x_BTD, lens_B = pad_frames([f.to(dev) for f in audio["feats"]])
        else:
            x_BTD, lens_B = self.encode(audio["wavs"])
        dtype = next(self.projector.parameters()).dtype
        y_BNH, n_B, aux = self.projector(x_BTD.to(dtype), lens_B)
        if self.ctc is not None and ctc_targets is not None and self.training:
            aux = aux + self.cfg.encoder.ctc_weight * self.ctc.loss(x_BTD, lens_B, ctc_targets)
        return [y_BNH[i, : int(n)] for i, n in enumerate(n_B.tolist())], aux

    def embed(self, input_ids_BT: torch.Tensor, embs: list[torch.Tensor], slots) -> torch.Tensor:
        """Token embeddings with each utterance's audio embeddings spliced at its slots."""
        table = self.lm.get_input_embeddings()
        x_BTH = table(input_ids_BT)
        if not embs:
            return x_BTH
        rows, cols, vals = [], [], []
        for (b, start, n), e in zip(slots, embs):
            if e.shape[0] != n:
                raise ValueError(f"utterance at row {b}, position {start}: {n} audio slots but the "
                                 f"encoder gave {e.shape[0]} embeddings (features from another encoder?)")
            rows.append(torch.full((n,), b, dtype=torch.long))
            cols.append(torch.arange(start, start + n))
            vals.append(e)
        idx = (torch.cat(rows).to(x_BTH.device), torch.cat(cols).to(x_BTH.device))
        return x_BTH.index_put(idx, torch.cat(vals).to(x_BTH.dtype))

    def forward(self, batch: dict):
        dev = self.lm.get_input_embeddings().weight.device
        embs, aux = self.audio_embeddings(batch["audio"], batch.get("ctc_targets"))
        ids = batch["input_ids_BT"].to(dev)
        x = self.embed(ids, embs, batch["slots"])
        pos = batch["position_ids_BT"].to(dev)
        mask = None
        if self.block_mask:
            from spiritlm.components.packing import block_mask_B1TT

            mask = block_mask_B1TT(pos, x.dtype)
        out = self.lm(inputs_embeds=x, position_ids=pos, attention_mask=mask, use_cache=False)
        return out.logits, aux

    def gradient_checkpointing_enable(self, **kw):
        """``model.activation_checkpointing``: the LM's layers (the trainer calls this)."""
        self.lm.gradient_checkpointing_enable(**kw)

    # ---- parts: counts, saving, loading ---------------------------------------------------------
    def parts(self) -> dict[str, list[nn.Parameter]]:
        lora, lm = [], []
        for n, p in self.lm.named_parameters():
            (lora if "lora_" in n else lm).append(p)
        out = {"encoder": list(self.encoder.parameters()), "projector": list(self.projector.parameters()),
               "lm": lm, "lora": lora}
        if self.ctc is not None:
            out["ctc"] = list(self.ctc.parameters())
        return out

    def param_counts(self) -> dict[str, dict[str, int]]:
        return {k: {"trainable": sum(p.numel() for p in ps if p.requires_grad),
                    "total": sum(p.numel() for p in ps)} for k, ps in self.parts().items()}

    def is_peft(self) -> bool:
        return hasattr(self.lm, "peft_config")

    def save_parts(self, out: Path) -> Path:
        """Projector (+ CTC head, + conformer when trained) as safetensors, LoRA adapters in
        peft's layout (``adapter/adapter_model.safetensors`` + ``adapter_config.json``)."""
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file(_cpu_state(self.projector), out / "projector.safetensors")
        if self.ctc is not None:
            save_file(_cpu_state(self.ctc), out / "ctc.safetensors")
        if isinstance(self.encoder, ConformerEncoder):
            save_file(_cpu_state(self.encoder), out / "encoder.safetensors")
        if self.is_peft():
            self.lm.save_pretrained(str(out / "adapter"))
        (out / CONFIG_FILE).write_text(json.dumps({"continuous": asdict(self.cfg)}, indent=2) + "\n")
        return out

    def export_merged(self, out: Path, extra_files: dict[str, str] | None = None) -> Path:
        """A standalone directory: the LM with LoRA merged (HF ``save_pretrained``, safetensors),
        its tokenizer, and the parts (``load_continuous`` reads it back)."""
        out = Path(out)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        lm = copy.deepcopy(self.lm).merge_and_unload() if self.is_peft() else self.lm
        lm.save_pretrained(str(tmp), safe_serialization=True)
        if self.tok.sp is not None:
            shutil.copy(self.tok.directory / "tokenizer.model", tmp / "tokenizer.model")
        else:
            self.tok.hf.save_pretrained(str(tmp))
        cfg = copy.deepcopy(self.cfg)
        cfg.projector.checkpoint = cfg.lora.checkpoint = ""
        if isinstance(self.encoder, ConformerEncoder):
            cfg.encoder.checkpoint = "encoder.safetensors"
        elif cfg.encoder.path:  # a pretrained encoder is referenced, not copied: keep a path that
            cfg.encoder.path = str(Path(cfg.encoder.path).resolve())  # works from any directory
        saved, self.cfg = self.cfg, cfg
        try:
            peft_lm, self.lm = self.lm, lm  # parts without the adapter: it is merged
            self.save_parts(tmp)
        finally:
            self.cfg, self.lm = saved, peft_lm
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        return replace_dir(tmp, out)  # out is the old export, the new one or absent, never partial


def _cpu_state(m: nn.Module) -> dict:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in m.state_dict().items()}


# ---- building -----------------------------------------------------------------------------------
def load_lm(model_cfg, dtype=torch.float32, vocab_size: int | None = None):
    """A local HF causal-LM directory (``model.checkpoint``), or the tiny LLaMA builder."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from spiritlm.models.unit_lm.model import tiny_llama_config

    if model_cfg.checkpoint:
        d = Path(model_cfg.checkpoint)
        if not (d / "config.json").is_file():
            raise ConfigError(f"model.checkpoint={d} has no config.json: point it at a local HF causal-LM "
                              "directory, or leave it empty for the tiny model")
        return AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype,
                                                    attn_implementation=model_cfg.attn_implementation)
    config = tiny_llama_config(model_cfg.tiny, vocab_size=vocab_size)
    config._attn_implementation = model_cfg.attn_implementation
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the tiny LM's weights do not depend on the run seed
        return LlamaForCausalLM(config).to(dtype)


def tokenizer_dir(model_cfg) -> str:
    d = model_cfg.tokenizer or model_cfg.checkpoint
    if not d:
        raise ConfigError("the continuous model needs the LM's tokenizer: set model.tokenizer (a directory "
                          "with tokenizer.model or tokenizer.json) or model.checkpoint")
    return d


def apply_trainable(model: ContinuousSpeechLM) -> ContinuousSpeechLM:
    c = model.cfg
    model.lm.requires_grad_(c.trainable == "all")
    model.encoder.requires_grad_(not encoder_frozen(c) and isinstance(model.encoder, ConformerEncoder))
    model.projector.requires_grad_(True)
    if model.ctc is not None:
        model.ctc.requires_grad_(not encoder_frozen(c))
    if c.trainable == "lora":
        from peft import LoraConfig, PeftModel, get_peft_model

        if c.lora.checkpoint:
            model.lm = PeftModel.from_pretrained(model.lm, c.lora.checkpoint, is_trainable=True)
        else:
            names = {n.split(".")[-1] for n, _ in model.lm.named_modules()}
            missing = [m for m in c.lora.target_modules if m not in names]
            if missing:
                raise ConfigError(f"continuous.lora.target_modules {missing} are not modules of the LM; "
                                  f"LLaMA/Qwen names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj")
            model.lm = get_peft_model(model.lm, LoraConfig(
                r=c.lora.r, lora_alpha=c.lora.alpha, lora_dropout=c.lora.dropout,
                target_modules=list(c.lora.target_modules), bias="none"))
    if c.projector.checkpoint:
        load_state(model.projector, c.projector.checkpoint, f"{c.projector.kind} projector",
                   "continuous.projector.checkpoint")
    return model


def build_continuous(cfg: ContinuousTrainConfig, dtype=torch.float32, lm=None) -> ContinuousSpeechLM:
    c = cfg.continuous
    from spiritlm.models.continuous.config import validate_continuous

    validate_continuous(c)
    tok = LMTokenizer(tokenizer_dir(cfg.model), c.audio_token)
    if lm is None:
        lm = load_lm(cfg.model, dtype, vocab_size=tok.size)
    if lm.get_input_embeddings().weight.shape[0] < tok.size:
        raise ConfigError(f"the LM has {lm.get_input_embeddings().weight.shape[0]} embedding rows but its "
                          f"tokenizer {tok.directory} has {tok.size} pieces: use the LM's own tokenizer")
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        encoder = build_encoder(c.encoder)
    model = ContinuousSpeechLM(c, lm, tok, encoder, seed=cfg.seed)
    model.block_mask = True
    model.to(dtype)
    return apply_trainable(model)


def load_continuous(directory: str | Path, device: str = "cpu", dtype=torch.float32) -> ContinuousSpeechLM:
    """A directory written by ``export_merged`` -> the model, in eval mode."""
    from transformers import AutoModelForCausalLM

    d = Path(directory)
    f = d / CONFIG_FILE
    if not f.is_file():
        raise ConfigError(f"{d}: no {CONFIG_FILE}; not a continuous-input model export (spiritlm train "
                          "with a train/continuous_*.toml recipe writes one to <run_dir>/hf)")
    c = typed_section(f, _continuous_from_dict, "continuous")
    if c.encoder.kind == "conformer":
        c.encoder.checkpoint = str(d / "encoder.safetensors")
    tok = LMTokenizer(d, c.audio_token)
    with hf_directory(d):
        lm = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype)
    encoder = build_encoder(c.encoder)
    c.trainable = "projector"  # nothing to add: adapters are merged
    c.projector.checkpoint = str(d / "projector.safetensors")
    model = ContinuousSpeechLM(c, lm, tok, encoder)
    if model.ctc is not None and (d / "ctc.safetensors").is_file():
        load_state(model.ctc, d / "ctc.safetensors", "CTC head")
    model.to(dtype)
    apply_trainable(model)
    return model.to(device).eval()


def _continuous_from_dict(d: dict) -> ContinuousConfig:
    """Through the typed loader: the same checks as a recipe."""
    from spiritlm.config import load_config

    return load_config(ContinuousTrainConfig, None, [], base={"continuous": d}).continuous
