"""Semantic units (issue 35): an ASR-supervised encoder's layer, quantised like HuBERT's.

HuBERT units are learned without labels; on the demo's scale they keep about as much phonetic
information as k-means on MFCCs (PNMI 0.54 vs 0.55), and the speech-only benchmarks stay at
chance. Supervised semantic tokens (GLM-4-Voice's Whisper-encoder + VQ at 12.5 Hz, CosyVoice's S3
tokens) come from an encoder trained to transcribe, so its layers are pushed towards what words
are said. Here the encoder is:

* ``kind = "conformer"``: the small conformer over log-mel of :mod:`spiritlm.tokenizer.conformer`
  with a character CTC head, trained on the corpus' transcripts by :func:`train_ctc_conformer`
  (or loaded: our ``semantic/`` directory, or the continuous / streaming family's export);
* ``kind = "hf"``: any local HF ``*ForCTC`` model (wav2vec2 / HuBERT / WavLM fine-tuned for ASR).

:class:`SemanticFeaturizer` has the interface the speech tokenizer expects of a featurizer
(``features_many``, ``features_with``, ``frame_rate``, ``hop``, ``dim``, ``num_frames``), so
k-means, dedup, ids, strings and the data stage are the HuBERT path's, unchanged. Frames may be
averaged ``k`` at a time (``semantic.frame_rate`` = the encoder's rate / k, e.g. 12.5 Hz).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from spiritlm.config import ConfigError, from_dict
from spiritlm.tokenizer.config import SemanticCfg
from spiritlm.tokenizer.conformer import CHARS, CharVocab, ConformerConfig, ConformerEncoder, CTCHead
from spiritlm.tokenizer.fit_loop import FitLoop
from spiritlm.tokenizer.hubert import features_with, receptive_field, resolve_device

log = logging.getLogger(__name__)

ENCODER_JSON = "encoder.json"


# ---- the encoders ------------------------------------------------------------------------------
class ConformerCTC(torch.nn.Module):
    """The conformer and its character CTC head: ``layers(wav_BS, lens_B, layers)``."""

    kind = "conformer"

    def __init__(self, c: ConformerConfig, chars: str = CHARS, train_log: dict | None = None):
        super().__init__()
        self.cfg = c
        self.vocab = CharVocab(chars)
        self.encoder = ConformerEncoder(c)
        self.ctc = CTCHead(c.dim, len(self.vocab))
        self.train_log = dict(train_log or {})

    @property
    def n_layers(self) -> int:
        return len(self.encoder.blocks)

    @property
    def native_rate(self) -> float:
        return self.encoder.frame_rate

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def min_samples(self) -> int:
        return self.encoder.min_samples

    def layers(self, wav_BS: torch.Tensor, lens_B: torch.Tensor, layers: Sequence[int]):
        return self.encoder.forward_layers(wav_BS, lens_B, layers)

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.encoder.state_dict().items()}, str(directory / "encoder.safetensors"))
        save_file({k: v.contiguous() for k, v in self.ctc.state_dict().items()}, str(directory / "ctc.safetensors"))
        (directory / ENCODER_JSON).write_text(json.dumps(
            {"kind": "conformer", "conformer": dataclasses.asdict(self.cfg), "chars": self.vocab.chars,
             # wall time is not saved here: the directory's files (and so its manifest hash, which
             # downstream caches key on) must be the same on every rerun; fit writes it to metrics.json
             "train_log": {k: v for k, v in self.train_log.items() if k != "seconds"}}, indent=1, sort_keys=True))


class HFCTCEncoder(torch.nn.Module):
    """A local HF ``*ForCTC`` model; its hidden states are the features (frozen, fp32)."""

    kind = "hf"

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()
        cfg = model.config
        self.strides = list(getattr(cfg, "conv_stride", []))
        self.kernels = list(getattr(cfg, "conv_kernel", []))
        if not self.strides:
            raise ConfigError(f"semantic.kind='hf': {type(model).__name__} has no conv_stride in its config; "
                              "only waveform encoders (wav2vec2, HuBERT, WavLM, data2vec-audio) are supported")

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def native_rate(self) -> float:
        return 16000.0 / float(np.prod(self.strides))

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def min_samples(self) -> int:
        return receptive_field(self.kernels, self.strides)

    def layers(self, wav_BS: torch.Tensor, lens_B: torch.Tensor, layers: Sequence[int]):
        if wav_BS.shape[0] != 1:  # one waveform per forward: exact (no padding statistics)
            raise ValueError("HFCTCEncoder runs one waveform at a time")
        out = self.model(wav_BS, output_hidden_states=True)
        hs = out.hidden_states
        frames = torch.tensor([hs[-1].shape[1]], device=wav_BS.device)
        return {x: hs[x] for x in layers}, frames

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(str(directory), safe_serialization=True)


def _has_ctc_head(config) -> bool:
    return any(a.endswith("ForCTC") for a in (getattr(config, "architectures", None) or []))


def load_semantic_encoder(kind: str, path: str | Path) -> ConformerCTC | HFCTCEncoder:
    """Load the encoder of a semantic recipe; refuse one without an ASR (CTC) head, with the fix."""
    d = Path(path)
    if not d.is_dir():
        raise ConfigError(f"semantic.path={str(path)!r} is not a directory (a trained encoder: our semantic/ dir, a "
                          "continuous/streaming export, or a local HF *ForCTC model); leave it empty to train one")
    if kind == "hf":
        from transformers import AutoConfig, AutoModelForCTC

        config = AutoConfig.from_pretrained(str(d), local_files_only=True)
        if not _has_ctc_head(config):
            raise ConfigError(f"semantic.path={d}: {config.architectures or 'its model'} has no CTC head, so it was not "
                              "trained to transcribe; semantic units need an ASR-supervised encoder (an HF *ForCTC "
                              "model), or use semantic.kind='conformer' to train one on the corpus' transcripts")
        return HFCTCEncoder(AutoModelForCTC.from_pretrained(str(d), local_files_only=True).float())
    from safetensors.torch import load_file

    if (d / ENCODER_JSON).is_file():
        meta = json.loads((d / ENCODER_JSON).read_text())
        conf, chars = meta.get("conformer", {}), meta.get("chars", CHARS)
        where = f"{d / ENCODER_JSON}: conformer"
    elif (d / "continuous.json").is_file():  # the continuous / streaming families' export
        enc = json.loads((d / "continuous.json").read_text())["continuous"]["encoder"]
        if enc.get("kind", "conformer") != "conformer":
            raise ConfigError(f"{d}/continuous.json: its encoder is {enc.get('kind')!r}, not the conformer; "
                              "use semantic.kind='hf' for an HF encoder")
        conf, chars, meta = enc.get("conformer", {}), CHARS, {}
        where = f"{d}/continuous.json: continuous.encoder.conformer"
    else:
        raise ConfigError(f"semantic.path={d}: no {ENCODER_JSON} or continuous.json beside the weights; point it at "
                          "a tokenizer's semantic/ directory or a conformer model's export (e.g. runs/streaming_ctc_demo/hf)")
    if not (d / "ctc.safetensors").is_file():
        raise ConfigError(f"semantic.path={d}: no ctc.safetensors, so this conformer has no CTC head and was not "
                          "trained to transcribe; export one trained with continuous.encoder.ctc_weight > 0, or "
                          "leave semantic.path empty to train one here")
    m = ConformerCTC(from_dict(ConformerConfig, conf, where), chars, meta.get("train_log"))
    m.encoder.load_state_dict(load_file(str(d / "encoder.safetensors")))
    m.ctc.load_state_dict(load_file(str(d / "ctc.safetensors")))
    return m.eval()


# ---- the featurizer ----------------------------------------------------------------------------
def pool_factor(frame_rate: float, native_rate: float) -> int:
    """Frames averaged per unit for ``semantic.frame_rate``; refused unless it is the encoder's
    rate divided by a whole number (units then tile time exactly, which dedup and the merge of
    streams by time assume)."""
    if frame_rate == 0:
        return 1
    k = native_rate / frame_rate
    if frame_rate < 0 or k < 1 - 1e-9 or abs(k - round(k)) > 1e-6:
        ok = ", ".join(f"{native_rate / j:g}" for j in (1, 2, 3, 4))
        raise ConfigError(f"semantic.frame_rate={frame_rate:g}: the encoder gives {native_rate:g} frames/s, and units "
                          f"must average a whole number of its frames; choose one of {ok} (or 0 for {native_rate:g})")
    return int(round(k))


class SemanticFeaturizer:
    """Layer ``layer`` of a semantic encoder, ``pool`` frames averaged per unit. On CPU each
    (<= ``max_chunk_s``) chunk runs alone, unpadded, so a file's units never depend on which
    files were encoded with it (as :class:`~spiritlm.tokenizer.hubert.HubertFeaturizer`)."""

    def __init__(self, encoder, layer: int = 0, frame_rate: float = 0.0, device: str | torch.device = "auto",
                 max_chunk_s: float = 100.0):
        n = encoder.n_layers
        if not 0 <= layer <= n:
            raise ConfigError(f"semantic.layer={layer} but the encoder has {n} layers; pick 1..{n} (0 = the last)")
        self.model = encoder
        self.layer = layer or n
        self.pool = pool_factor(frame_rate, encoder.native_rate)
        self.frame_rate = encoder.native_rate / self.pool
        self.hop = int(round(16000 / self.frame_rate))
        self.dim = encoder.dim
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model.to(self.device).eval()
        self.max_chunk = int(max_chunk_s * 16000)
        self.min_chunk = max(encoder.min_samples, self.hop)

    @classmethod
    def from_cfg(cls, cfg: SemanticCfg, model=None, layer: int | None = None) -> "SemanticFeaturizer":
        if model is None:
            model = load_semantic_encoder(cfg.kind, cfg.path)
        return cls(model, cfg.layer if layer is None else layer, cfg.frame_rate, cfg.device, cfg.max_chunk_s)

    def shares_pass_with(self, other) -> bool:
        return (isinstance(other, SemanticFeaturizer) and other.model is self.model and other.pool == self.pool
                and other.max_chunk == self.max_chunk and other.device == self.device)

    def features_with(self, other, wavs: Sequence[np.ndarray], progress: bool = False):
        return features_with(self, other, wavs, progress)

    def _chunks(self, n_samples: int) -> list[tuple[int, int]]:
        return [(s, min(self.max_chunk, n_samples - s)) for s in range(0, n_samples, self.max_chunk)
                if min(self.max_chunk, n_samples - s) >= self.min_chunk]

    def num_frames(self, n_samples: int) -> int:
        if isinstance(self.model, ConformerCTC):
            return sum(int(self.model.encoder.num_frames(n)) // self.pool for _, n in self._chunks(n_samples))
        from spiritlm.tokenizer.hubert import conv_out_length

        return sum(int(conv_out_length(n, self.model.kernels, self.model.strides)) // self.pool
                   for _, n in self._chunks(n_samples))

    def features(self, wav: np.ndarray) -> np.ndarray:
        return self.features_many([wav])[0]

    def features_many(self, wavs: Sequence[np.ndarray], progress: bool = False) -> list[np.ndarray]:
        return self.features_many_at(wavs, [self.layer], progress)[self.layer]

    @torch.inference_mode()
    def features_many_at(self, wavs: Sequence[np.ndarray], layers: Sequence[int],
                         progress: bool = False) -> dict[int, list[np.ndarray]]:
        """{layer: [(T_i, D) float32]} from one pass per chunk; (T_i = frames // pool)."""
        layers = sorted(set(int(x) for x in layers))
        result: dict[int, list[np.ndarray]] = {x: [] for x in layers}
        it = wavs
        if progress:
            from tqdm import tqdm

            it = tqdm(wavs, desc="semantic", unit="file")
        for wav in it:
            wav = np.asarray(wav, dtype=np.float32)
            parts: dict[int, list[np.ndarray]] = {x: [] for x in layers}
            for s, n in self._chunks(len(wav)):
                x_BS = torch.from_numpy(np.ascontiguousarray(wav[s : s + n]))[None].to(self.device)
                h, frames = self.model.layers(x_BS, torch.tensor([n], device=self.device), layers)
                T = int(frames[0]) // self.pool * self.pool
                for x in layers:
                    f = h[x][0, :T].float()
                    if self.pool > 1:
                        f = f.reshape(T // self.pool, self.pool, -1).mean(1)
                    parts[x].append(f.cpu().numpy())
            for x in layers:
                result[x].append(np.concatenate(parts[x]) if parts[x] else np.zeros((0, self.dim), np.float32))
        return result


# ---- training the conformer with CTC -------------------------------------------------------------
def _transcripts(rows, vocab: CharVocab, max_audio_s: float, min_samples: int):
    """-> (waveforms, character ids, word times [(start, end, ids)] or None, skip counts)."""
    from spiritlm.tokenizer.corpus_audio import iter_wavs

    wavs, targets, words, skipped = [], [], [], {"no_transcript": 0, "too_long": 0}
    for u, w in iter_wavs(rows, min_samples):
        ids = vocab.encode(u.text or "")
        if not ids:
            skipped["no_transcript"] += 1
            continue
        if len(w) > max_audio_s * 16000:
            skipped["too_long"] += 1
            continue
        wavs.append(w)
        targets.append(ids)
        ws = [(x.start, x.end, vocab.encode(x.word)) for x in u.words]
        words.append([x for x in ws if x[2]] or None)
    return wavs, targets, words, skipped


def _crop(wav, words, crop_s: float, gen: torch.Generator, space: int):
    """A random run of whole words no longer than ``crop_s`` (at least one word), its audio from
    midway into the gap before the first word to midway into the gap after the last, and its
    transcript (words joined by spaces) -> (samples, ids)."""
    n = len(words)
    first = int(torch.randint(n, (1,), generator=gen))
    last = first
    while last + 1 < n and words[last + 1][1] - words[first][0] <= crop_s:
        last += 1
    lo = 0.0 if first == 0 else (words[first - 1][1] + words[first][0]) / 2
    hi = len(wav) / 16000 if last == n - 1 else (words[last][1] + words[last + 1][0]) / 2
    ids: list[int] = []
    for i in range(first, last + 1):
        ids += ([space] if ids else []) + words[i][2]
    return wav[int(lo * 16000): int(np.ceil(hi * 16000))], ids


def ctc_wer(model: ConformerCTC, wavs, texts) -> float:
    """Greedy CTC transcripts of ``wavs`` against ``texts`` (jiwer, lower-cased, as CharVocab sees them)."""
    import jiwer

    hyps, refs = [], []
    with torch.inference_mode():
        for w, t in zip(wavs, texts):
            x, n = model.encoder([w])
            hyps.append(model.vocab.decode(model.ctc.greedy(x, n)[0]).strip())
            refs.append(model.vocab.decode(model.vocab.encode(t)).strip())
    keep = [(r, h) for r, h in zip(refs, hyps) if r]
    return float(jiwer.wer([r for r, _ in keep], [h for _, h in keep])) if keep else float("nan")


def train_ctc_conformer(cfg: SemanticCfg, rows, heldout_rows=(), seed: int = 0,
                        progress: bool = True) -> ConformerCTC:
    """Train the conformer + character CTC head on ``rows`` [(utterance, audio path)] with their
    transcripts (``utterance.text``). Batches are random utterances, whole (no crops: CTC needs
    the full transcript), length-limited by ``max_audio_s``; AdamW, warmup then cosine."""
    threads_before = torch.get_num_threads()
    if cfg.threads:  # restored at the end: the caller's later steps keep their own thread count
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, rows, heldout_rows, seed, progress)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: SemanticCfg, rows, heldout_rows, seed: int, progress: bool) -> ConformerCTC:
    torch.manual_seed(seed)
    model = ConformerCTC(cfg.conformer)
    wavs, targets, words, skipped = _transcripts(rows, model.vocab, cfg.max_audio_s, model.min_samples)
    if not wavs:
        raise ConfigError(f"semantic units: none of the {len(rows)} training utterances has a transcript (manifest "
                          f"'text') and audio under semantic.max_audio_s={cfg.max_audio_s:g} s ({skipped}); an "
                          "ASR-supervised encoder needs transcribed speech, or set semantic.path to a trained one")
    if any(skipped.values()):
        log.warning("semantic encoder: skipped %s of %d training utterances", skipped, len(rows))
    space = model.vocab.encode("a b")[1]
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    warm = max(1, min(cfg.warmup_steps, cfg.steps))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + np.cos(np.pi * (step - warm) / max(1, cfg.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    loop = FitLoop(cfg.steps, params, opt, sched, "semantic encoder (CTC)", "ctc", "semantic.max_minutes",
                   cfg.max_minutes, progress)
    for _ in loop:
        pick = torch.randint(len(wavs), (cfg.batch_size,), generator=gen).tolist()
        if cfg.crop_s > 0:
            batch = [_crop(wavs[i], words[i], cfg.crop_s, gen, space) if words[i] else (wavs[i], targets[i])
                     for i in pick]
        else:
            batch = [(wavs[i], targets[i]) for i in pick]
        x_BTD, lens_B = model.encoder([w for w, _ in batch])
        loss = model.ctc.loss(x_BTD, lens_B, [t for _, t in batch])
        if loop.step(loss):
            break
    model.eval()
    run = loop.close()
    log_ = {**{k: run[k] for k in ("steps", "steps_planned", "capped", "seconds")}, "utterances": len(wavs),
            "skipped": skipped,
            "ctc_first": round(run["loss_first"], 4) if run["loss_first"] is not None else None,
            "ctc_last": round(run["loss_last"], 4) if run["loss_last"] is not None else None}
    held = list(heldout_rows)[: cfg.heldout_max]
    if held:
        from spiritlm.tokenizer.corpus_audio import iter_wavs

        pairs = [(w, u.text) for u, w in iter_wavs(held, model.min_samples) if u.text]
        log_["heldout_utterances"] = len(pairs)
        log_["heldout_wer"] = round(ctc_wer(model, [w for w, _ in pairs], [t for _, t in pairs]), 4)
    model.train_log = log_
    log.info("semantic encoder: %s", log_)
    return model
