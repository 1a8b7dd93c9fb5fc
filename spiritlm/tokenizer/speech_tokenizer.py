"""One API for speech tokens: ``SpeechTokenizer`` (HuBERT units + optional pitch and style).

    tok = SpeechTokenizer.load("out/tokenizer-demo")
    units = tok.encode("a.wav")      # {"hubert": int64[T], "pitch": ..., "style": ..., "duration": s, ...}
    tok.to_string(units)             # "[St3][Pi12][Hu41][Hu7]..."  (spiritlm.vocab format)
    tok.to_ids(units)                # token ids on top of the 32000 LLaMA-2 pieces
    results = tok.encode_many(paths) # batched; a bad file yields its AudioError, the rest succeed
    tok = SpeechTokenizer.from_release("checkpoints/speech_tokenizer", variant="expressive")  # Meta's files

A tokenizer directory is self-describing: ``tokenizer.yaml`` (the resolved config, paths relative
to the directory), ``hubert/`` (HF HubertModel, safetensors), the codebooks (``.npy`` /
``.safetensors``) and ``manifest.json`` with the sha256 of every file, checked on load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from spiritlm.config import load_config, save_config
from spiritlm.audio import AudioError, AudioInput, load_audio
from spiritlm.tokenizer.config import TokenizerCfg, check_one_unit_family, preset_config, unit_family
from spiritlm.vocab import SPIRITLM, VocabLayout, units_to_ids, units_to_string

log = logging.getLogger(__name__)

FORMAT = "spiritlm-speech-tokenizer"
VERSION = 1


class TokenizerDirError(ValueError):
    """A tokenizer directory that is incomplete or was modified after saving."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class SpeechTokenizer:
    def __init__(self, cfg: TokenizerCfg, featurizer, quantizer, pitch_model=None, style_quantizer=None,
                 style_featurizer=None, speaker_f0: dict[str, float] | None = None):
        self.cfg = cfg
        self.featurizer = featurizer
        self.quantizer = quantizer
        self.pitch_model = pitch_model
        self.style_quantizer = style_quantizer
        self.style_featurizer = style_featurizer
        self.speaker_f0 = dict(speaker_f0 or {})
        if cfg.pitch.enabled and pitch_model is None:
            raise ValueError("pitch.enabled but no pitch VQ-VAE: set pitch.path or run `spiritlm tokenizer fit`")
        if cfg.style.enabled and style_quantizer is None:
            raise ValueError("style.enabled but no style quantizer: set style.path or run `spiritlm tokenizer fit`")
        self.layout = self._layout()
        self.streams: tuple[str, ...] = self.available_streams  # what encode() returns by default

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: TokenizerCfg, model=None, root: Path | None = None) -> "SpeechTokenizer":
        """Build from paths in ``cfg`` (relative ones resolved against ``root``)."""
        from spiritlm.tokenizer.hubert import load_hubert
        from spiritlm.tokenizer.kmeans import KMeansQuantizer, LinearQuantizer

        def res(p: str) -> str:
            return str(root / p) if root is not None and p and not Path(p).is_absolute() else p

        check_one_unit_family(cfg)
        if cfg.release.path:  # the release's files, read where they lie
            from spiritlm.tokenizer.release import build_from_release

            return build_from_release(cls, cfg, root)
        if cfg.semantic.enabled:
            if model is None:
                from spiritlm.tokenizer.semantic import load_semantic_encoder

                model = load_semantic_encoder(cfg.semantic.kind, res(cfg.semantic.path))
        elif cfg.mfcc.enabled:
            model = None  # no encoder
        elif model is None:
            model = load_hubert(res(cfg.hubert.path))
        feat = featurizer_for(cfg, model)
        if not cfg.units.path:
            raise ValueError("units.path is empty: give centroids (.npy) / LinearQuantizer weights, or run `spiritlm tokenizer fit`")
        if cfg.units.kind == "linear":
            quant = LinearQuantizer.load(res(cfg.units.path), blank_rule=cfg.units.blank_rule or None)
        else:
            quant = KMeansQuantizer.load(res(cfg.units.path), allow_pickle=cfg.units.allow_pickle)
        if hasattr(quant, "dim") and quant.dim != feat.dim:
            raise ValueError(f"units codebook has dim {quant.dim} but HuBERT layer features have dim {feat.dim}")
        pitch_model = style_q = style_feat = None
        if cfg.pitch.enabled and cfg.pitch.path:
            from spiritlm.tokenizer.f0_vqvae import load_vqvae

            pitch_model = load_vqvae(res(cfg.pitch.path))
        if cfg.style.enabled and cfg.style.path:
            if cfg.style.kind == "classifier":
                from spiritlm.tokenizer.style import StyleClassifier

                style_q = StyleClassifier(res(cfg.style.path))
            else:
                style_q = KMeansQuantizer.load(res(cfg.style.path))
                style_feat = featurizer_for(cfg, model, layer=cfg.style.layer)
        speaker_f0 = {}
        if root is not None and (root / "speaker_f0.json").is_file():
            speaker_f0 = json.loads((root / "speaker_f0.json").read_text())
        return cls(cfg, feat, quant, pitch_model, style_q, style_feat, speaker_f0)

    @classmethod
    def from_release(cls, directory: str | Path, variant: str = "base", device: str | None = None,
                     f0_method: str = "yaapt") -> "SpeechTokenizer":
        """Meta's released tokenizer from its ``speech_tokenizer/`` folder, files as shipped
        (``variant``: ``"base"`` = HuBERT units, ``"expressive"`` = + pitch and style); see
        ``spiritlm.tokenizer.release``. ``f0_method="fcpe"`` (the release's default) cannot run here."""
        from spiritlm.tokenizer.config import TokenizerCfg

        cfg = TokenizerCfg(name=f"release-{variant}")
        cfg.release = dataclasses.replace(cfg.release, path=str(directory), variant=variant, f0_method=f0_method)
        if device:
            cfg.hubert = dataclasses.replace(cfg.hubert, device=device)
        return cls.from_config(cfg)

    @classmethod
    def preset(cls, name: str, **paths: str) -> "SpeechTokenizer":
        """``preset("base", hubert=..., units=...)`` / ``preset("expressive", ..., pitch=..., style=...)``."""
        return cls.from_config(preset_config(name, **paths))

    def _layout(self) -> VocabLayout:
        sizes = {"hubert": self.quantizer.size,
                 "pitch": self.cfg.pitch.codebook if self.cfg.pitch.enabled else 0,
                 "style": self.style_quantizer.size if self.style_quantizer is not None else 0}
        # merge timing: HuBERT at (frame rate - 0.04 %), e.g. 24.99 for 25 Hz like the release,
        # so a HuBERT token sorts just after a pitch/style token starting at the same instant
        rate = round(self.featurizer.frame_rate * 24.99 / 25.0, 6)
        if sizes["hubert"] <= SPIRITLM.hubert_size and sizes["pitch"] <= SPIRITLM.pitch_size and sizes["style"] <= SPIRITLM.style_size:
            # ids compatible with the released checkpoints
            layout = SPIRITLM if rate == SPIRITLM.hubert_rate else dataclasses.replace(SPIRITLM, hubert_rate=rate)
        else:
            layout = VocabLayout(hubert_size=max(sizes["hubert"], 1), pitch_size=max(sizes["pitch"], 1),
                                 style_size=max(sizes["style"], 1), hubert_rate=rate)
        if unit_family(self.cfg) != "hubert":  # same ids, another unit family: recorded in the layout
            layout = dataclasses.replace(layout, unit_family=unit_family(self.cfg))
        return layout

    # ---- encoding ------------------------------------------------------------------------
    def load_wav(self, source: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        return load_audio(source, sample_rate, min_samples=self.featurizer.hop)

    def encode(self, source: AudioInput, sample_rate: int | None = None, speaker: str | None = None,
               streams: Sequence[str] | None = None) -> dict:
        out = self.encode_many([source], sample_rate=sample_rate, speakers=[speaker], streams=streams)[0]
        if isinstance(out, Exception):
            raise out
        return out

    def encode_many(self, sources: Sequence[AudioInput], sample_rate: int | None = None,
                    speakers: Sequence[str | None] | None = None, progress: bool = False,
                    streams: Sequence[str] | None = None) -> list[dict | AudioError]:
        """Batched encode. Each item is a units dict, or the ``AudioError`` of a bad input.

        ``streams`` (default: ``self.streams``, i.e. every stream this tokenizer has) limits the
        work: ``["hubert"]`` encodes Base units with an Expressive tokenizer without running the
        F0 extractor or the style encoder.
        """
        want = self._check_streams(streams if streams is not None else self.streams)
        do_pitch = self.pitch_model is not None and "pitch" in want
        do_style = self.style_quantizer is not None and "style" in want
        results: list[Any] = [None] * len(sources)
        wavs, ok = [], []
        for i, src in enumerate(sources):
            try:
                wavs.append(self.load_wav(src, sample_rate))
                ok.append(i)
            except AudioError as e:
                log.warning("skipping %s", e)
                results[i] = e
        # units and style features of one model come from one pass through it
        feats, style_feats = self.featurizer.features_with(self.style_featurizer if do_style else None,
                                                           wavs, progress=progress)
        for j, i in enumerate(ok):
            wav = wavs[j]
            units: dict[str, Any] = {"hubert": self._units(feats[j], len(wav))}
            if len(units["hubert"]) == 0:
                results[i] = AudioError(_name(sources[i]), "too short: no complete HuBERT frame")
                continue
            if do_pitch:
                spk = speakers[i] if speakers is not None else None
                units["pitch"] = self._pitch_units(wav, spk)
            if do_style:
                units["style"] = self._style_units(wav, style_feats[j] if style_feats is not None else None)
            units["duration"] = len(wav) / 16000.0
            units["frames"] = {k: int(len(v)) for k, v in units.items() if isinstance(v, np.ndarray)}
            results[i] = units
        return results

    @property
    def available_streams(self) -> tuple[str, ...]:
        return ("hubert",) + (("pitch",) if self.pitch_model is not None else ()) + (
            ("style",) if self.style_quantizer is not None else ())

    def _check_streams(self, streams: Sequence[str] | None) -> tuple[str, ...]:
        have = self.available_streams
        if streams is None:
            return have
        bad = [s for s in streams if s not in have]
        if bad or "hubert" not in streams:
            raise ValueError(f"streams {list(streams)}: this tokenizer has {list(have)} "
                             "(and 'hubert' is always encoded)")
        return tuple(streams)

    def _units(self, feats_TD: np.ndarray, n_samples: int) -> np.ndarray:
        """Quantize; the release's blank rule wraps round within each (<= 100 s) chunk, as its
        ``encode_units`` quantizes chunk by chunk, so such quantizers see one chunk at a time."""
        if getattr(self.quantizer, "blank_rule", None) != "wrap_left":
            return self.quantizer(feats_TD)
        from spiritlm.tokenizer.hubert import conv_out_length

        f = self.featurizer
        sizes = [conv_out_length(min(f.max_chunk, n_samples - s), f.kernels, f.strides)
                 for s in range(0, n_samples, f.max_chunk) if min(f.max_chunk, n_samples - s) >= f.min_chunk]
        assert sum(sizes) == len(feats_TD), (sizes, len(feats_TD))
        parts = np.split(feats_TD, np.cumsum(sizes)[:-1]) if sizes else []
        return np.concatenate([self.quantizer(x) for x in parts]) if parts else np.zeros(0, np.int64)

    def _pitch_units(self, wav: np.ndarray, speaker: str | None) -> np.ndarray:
        if hasattr(self.pitch_model, "tokenize"):  # the release's pitch tokenizer: F0 + VQ-VAE in one
            return self.pitch_model.tokenize(wav)
        _, x, _ = self.pitch_features(wav, speaker)
        return self.pitch_model.encode(x)

    def pitch_features(self, wav: np.ndarray, speaker: str | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """-> (F0 in Hz at 200 frames/s, the (2, T) VQ-VAE input, the log-F0 mean subtracted):
        the speaker's mean with ``norm="speaker"`` when known, else the utterance's own."""
        from spiritlm.tokenizer.pitch import extract_f0, f0_features

        pc = self.cfg.pitch
        f0 = extract_f0(wav, pc.method, pc.f0_min, pc.f0_max)
        mean = None
        if pc.norm == "speaker" and speaker is not None and speaker in self.speaker_f0:
            mean = self.speaker_f0[speaker]
        elif pc.norm == "none":
            mean = 0.0
        x, used = f0_features(f0, mean)
        return f0, x, used

    def _style_units(self, wav: np.ndarray, feats: np.ndarray | None) -> np.ndarray:
        if feats is None:  # classifier kind works on the waveform
            return self.style_quantizer(wav)
        from spiritlm.tokenizer.style import pool_windows

        return self.style_quantizer(pool_windows(feats, len(wav), self.featurizer.frame_rate))

    def to_string(self, units: dict) -> str:
        return units_to_string(units, "pitch" in units, "style" in units, self.layout)

    def to_ids(self, units: dict) -> np.ndarray:
        return units_to_ids(units, "pitch" in units, "style" in units, self.layout)

    # ---- persistence ---------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        from spiritlm.tokenizer.kmeans import KMeansQuantizer

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.cfg.release.path:
            return self._save_release_reference(d)
        cfg = dataclasses.replace(self.cfg)  # shallow; sub-configs replaced below
        enc_dir = "semantic" if self.cfg.semantic.enabled else "hubert"
        if (d / enc_dir).exists():
            shutil.rmtree(d / enc_dir)
        if self.cfg.semantic.enabled:
            cfg.semantic = dataclasses.replace(self.cfg.semantic, path=enc_dir)
            self.featurizer.model.save(d / enc_dir)
        elif self.cfg.mfcc.enabled:
            pass  # no encoder to save
        else:
            cfg.hubert = dataclasses.replace(self.cfg.hubert, path=enc_dir)
            self.featurizer.model.save_pretrained(str(d / enc_dir), safe_serialization=True)
        if isinstance(self.quantizer, KMeansQuantizer):
            cfg.units = dataclasses.replace(self.cfg.units, kind="kmeans", path="hubert_units.npy", allow_pickle=False)
            self.quantizer.save(d / "hubert_units.npy")
        else:
            from safetensors.torch import save_file

            cfg.units = dataclasses.replace(self.cfg.units, kind="linear", path="hubert_linear_quantizer.safetensors",
                                            blank_rule=self.quantizer.blank_rule)
            save_file({k: v.contiguous() for k, v in self.quantizer.state_dict().items()}, str(d / cfg.units.path))
        cfg.pitch = dataclasses.replace(self.cfg.pitch)
        if self.pitch_model is not None:
            from spiritlm.tokenizer.f0_vqvae import save_vqvae

            cfg.pitch.path = "pitch_vqvae.safetensors"
            save_vqvae(self.pitch_model, d / cfg.pitch.path)
        if self.speaker_f0:
            (d / "speaker_f0.json").write_text(json.dumps(self.speaker_f0, indent=1, sort_keys=True))
        cfg.style = dataclasses.replace(self.cfg.style)
        if self.style_quantizer is not None:
            if isinstance(self.style_quantizer, KMeansQuantizer):
                cfg.style.path = "style_units.npy"
                self.style_quantizer.save(d / cfg.style.path)
            else:
                cfg.style.path = "style_classifier"
                self.style_quantizer.model.save_pretrained(str(d / "style_classifier"), safe_serialization=True)
        cfg.demo = dataclasses.replace(self.cfg.demo, enabled=False)  # the saved model is already trained
        save_config(cfg, d / "tokenizer.yaml")
        files = sorted(p for p in d.rglob("*") if p.is_file() and p.name != "manifest.json")
        manifest = {"format": FORMAT, "version": VERSION, "name": cfg.name,
                    "streams": self._stream_sizes(),
                    "files": {str(p.relative_to(d)): sha256_file(p) for p in files}}
        (d / "manifest.json").write_text(json.dumps(manifest, indent=1))
        return d

    def _stream_sizes(self) -> dict:
        return {"hubert": {"size": self.quantizer.size, "rate": self.featurizer.frame_rate},
                **({"pitch": {"size": self.cfg.pitch.codebook, "rate": 12.5}} if self.pitch_model is not None else {}),
                **({"style": {"size": self.style_quantizer.size, "rate": 1.0}} if self.style_quantizer is not None else {})}

    def _save_release_reference(self, d: Path) -> Path:
        """A tokenizer directory that points at the release's folder instead of copying it:
        ``tokenizer.yaml`` (absolute ``release.path``) and ``manifest.json`` with the sha256 of
        every release file used, checked on ``load``."""
        from spiritlm.tokenizer.release import release_files

        rel = Path(self.cfg.release.path)
        units = self.cfg.units.path if Path(self.cfg.units.path) != rel / "hubert_25hz/L11_quantizer_500.pt" else ""
        save_config(self.cfg, d / "tokenizer.yaml")
        manifest = {"format": FORMAT, "version": VERSION, "name": self.cfg.name, "streams": self._stream_sizes(),
                    "files": {"tokenizer.yaml": sha256_file(d / "tokenizer.yaml")},
                    "release_files": {str(p): sha256_file(p) for p in release_files(rel, self.cfg.release.variant, units)}}
        (d / "manifest.json").write_text(json.dumps(manifest, indent=1))
        return d

    @classmethod
    def load(cls, directory: str | Path, verify: bool = True, device: str | None = None,
             streams: Sequence[str] | None = None) -> "SpeechTokenizer":
        """``streams``: what ``encode`` returns by default (e.g. ``["hubert"]`` for Base units
        from an Expressive directory); every stream the directory has when None."""
        d = Path(directory)
        man_path = d / "manifest.json"
        if not man_path.is_file():
            raise TokenizerDirError(f"{d}: no manifest.json -- not a tokenizer directory (create one with `spiritlm tokenizer fit`)")
        manifest = json.loads(man_path.read_text())
        if manifest.get("format") != FORMAT:
            raise TokenizerDirError(f"{man_path}: format {manifest.get('format')!r} is not {FORMAT!r}")
        if verify:
            for rel, digest in manifest["files"].items():
                p = d / rel
                if not p.is_file():
                    raise TokenizerDirError(f"{d}: file {rel} listed in manifest.json is missing")
                if sha256_file(p) != digest:
                    raise TokenizerDirError(
                        f"{d}: {rel} does not match its sha256 in manifest.json (modified or corrupt); "
                        "re-create the directory or pass verify=False if the change is intended"
                    )
            for path, digest in manifest.get("release_files", {}).items():  # release files used in place
                if not Path(path).is_file():
                    raise TokenizerDirError(f"{d}: the release file {path} it points at is missing")
                if sha256_file(Path(path)) != digest:
                    raise TokenizerDirError(f"{d}: the release file {path} changed since the directory was written "
                                            "(sha256 differs); re-run `spiritlm tokenizer fit` or pass verify=False")
        overrides = [f"hubert.device={device}"] if device else []
        cfg = load_config(TokenizerCfg, d / "tokenizer.yaml", overrides)
        tok = cls.from_config(cfg, root=d)
        tok.streams = tok._check_streams(streams)
        return tok


def featurizer_for(cfg: TokenizerCfg, model, layer: int | None = None):
    """The featurizer of the tokenizer's unit family at ``layer`` (default: the units' layer):
    HuBERT's, the semantic encoder's when ``semantic.enabled``, MFCCs when ``mfcc.enabled``."""
    if cfg.mfcc.enabled:
        from spiritlm.tokenizer.mfcc_units import MfccFeaturizer

        if layer:
            raise ValueError(f"layer={layer}: MFCC units have no encoder layers")
        return MfccFeaturizer(cfg.mfcc.hop)
    if cfg.semantic.enabled:
        from spiritlm.tokenizer.semantic import SemanticFeaturizer

        return SemanticFeaturizer.from_cfg(cfg.semantic, model, layer)
    from spiritlm.tokenizer.hubert import HubertFeaturizer

    return HubertFeaturizer.from_cfg(cfg.hubert, model, layer)


def _name(src: AudioInput) -> str:
    return str(src) if isinstance(src, (str, Path)) else "<array>"
