"""``Vocoder``: speech units -> 16 kHz waveform, from the release's files or from ``spiritlm vocoder fit``.

    voc = Vocoder.from_release("checkpoints/speech_tokenizer", variant="base")
    voc = Vocoder.load("runs/vocoder")                  # a directory written by `spiritlm vocoder fit`
    wav, sr = voc.decode(tok.encode("a.wav"))           # frame-level streams: resynthesis
    wav, sr = voc.decode("[Hu12][Hu7][Hu93]...")        # a speech string (or token ids): deduplicated

How units are expanded to frames, as the release does it:

* **deduplicated** input (speech strings, token ids; a dict whose pitch has one value per HuBERT
  unit): every HuBERT unit gets ``round(exp(d) - 1)`` frames (at least 1) from the duration
  predictor (a vocoder without one repeats each unit ``default_duration`` times); pitch/style
  codes, one per HuBERT unit after the string's expansion, are repeated the same way.
* **frame-level** input (what ``SpeechTokenizer.encode`` returns): units are used as they are,
  pitch codes are repeated ``round(f0_hop_size / code_hop_size)`` times and style codes
  ``round(style_hop_size / code_hop_size)`` times, then cut to (or padded with the last value up
  to) the number of HuBERT frames.

A dict is taken as frame-level when its pitch length differs from its HuBERT length (the
release's rule) or when its HuBERT units repeat consecutively (a deduplicated sequence never
does); ``deduplicated=`` overrides the guess.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from spiritlm.vocab import SPIRITLM, UnitError, VocabLayout, ids_to_units, string_to_units
from spiritlm.vocoder.model import GeneratorCfg, UnitHiFiGAN
from spiritlm.vocoder.release import (RELEASE_DEFAULTS, VocoderFileError, read_generator_state, read_labels,
                                      read_release_config, release_dir)

if TYPE_CHECKING:
    from spiritlm.vocoder.spectral import SpectralUnitVocoder

FORMAT = "spiritlm-vocoder"
VERSION = 1
WEIGHTS = "generator.safetensors"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _as_int_array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, str):
        x = x.split()
    a = np.asarray(x)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu" and not (a.dtype.kind in "fU" and
                                                                   np.all(np.asarray(a, float) % 1 == 0))):
        raise UnitError(f"{name} units must be a 1-D sequence of integers, got {a.dtype} of shape {a.shape}")
    return a.astype(np.int64)


def _upsample(code: np.ndarray, n: int, ratio: int, name: str) -> np.ndarray:
    """Repeat each code ``ratio`` times, then cut to ``n`` or pad with the last value."""
    up = np.repeat(code, ratio)
    if abs(len(up) - n) > 2 * ratio:
        raise UnitError(f"{len(code)} {name} frames do not fit {n} HuBERT frames at {ratio} HuBERT frames per "
                        f"{name} frame: give streams of one utterance (frame-level, as encode() returns them)")
    if len(up) < n:
        up = np.concatenate([up, np.full(n - len(up), up[-1] if len(up) else 0, np.int64)])
    return up[:n]


class Vocoder:
    def __init__(self, model: "UnitHiFiGAN | SpectralUnitVocoder", speakers: Sequence[str] = (), styles: Sequence[str] = (),
                 default_speaker: int | None = 0, default_style: int | None = 0, default_duration: int = 1,
                 layout: VocabLayout = SPIRITLM, source: str = ""):
        self.model = model.eval()
        self.cfg: GeneratorCfg = model.cfg
        self.speakers, self.styles = list(speakers), list(styles)
        self.default_speaker, self.default_style = default_speaker, default_style
        self.default_duration = max(1, int(default_duration))
        self.layout = layout
        self.source = source

    @property
    def sample_rate(self) -> int:
        return self.cfg.sampling_rate

    @property
    def hop(self) -> int:
        return self.cfg.hop

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_release(cls, directory: str | Path, variant: str = "base", device: str | None = None,
                     speaker: int | None = None, style: int | None = None) -> "Vocoder":
        """The release's ``hifigan_spiritlm_base/`` or ``hifigan_spiritlm_expressive_w2v2/``;
        ``directory`` is its ``speech_tokenizer/`` folder (or the vocoder folder itself)."""
        d = release_dir(directory, variant)
        cfg = read_release_config(d)
        model = UnitHiFiGAN(cfg)
        sd = read_generator_state(d / "generator.pt")
        _load_state(model, sd, d / "generator.pt")
        speakers = read_labels(d / "speakers.txt") if (d / "speakers.txt").is_file() else []
        styles = read_labels(d / "styles.txt") if (d / "styles.txt").is_file() else []
        defaults = RELEASE_DEFAULTS[variant]

        def fits(i, n):  # the release's default labels, when this table is large enough to hold them
            return i if i is not None and i < n else 0

        voc = cls(model, speakers, styles,
                  default_speaker=speaker if speaker is not None else fits(defaults["speaker"], cfg.num_speakers),
                  default_style=style if style is not None else fits(defaults["style"], cfg.num_styles),
                  source=f"release:{d}")
        return voc.to(device) if device else voc

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None, verify: bool = True) -> "Vocoder":
        """A directory written by :meth:`save` (``spiritlm vocoder fit``)."""
        from safetensors.torch import load_file

        d = Path(directory)
        cp = d / "config.json"
        if not cp.is_file():
            raise VocoderFileError(f"{d}: no config.json -- not a vocoder directory (train one with "
                                   "`spiritlm vocoder fit`, or use Vocoder.from_release for the release's files)")
        meta = json.loads(cp.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            if (d / "generator.pt").is_file():
                raise VocoderFileError(f"{d} holds the release's generator.pt: use Vocoder.from_release "
                                       "(CLI: --release DIR --variant base|expressive)")
            raise VocoderFileError(f"{cp}: format {meta.get('format')!r} is not {FORMAT!r}")
        w = d / WEIGHTS
        if not w.is_file():
            raise VocoderFileError(f"{w} is missing")
        if verify and meta.get("sha256") and _sha256(w) != meta["sha256"]:
            raise VocoderFileError(f"{w} does not match its sha256 in config.json (modified or corrupt); "
                                   "re-train or pass verify=False if the change is intended")
        kind = meta.get("kind", "hifigan")
        if meta.get("condition", "units") != "units":
            raise VocoderFileError(f"{d} was fitted on continuous features (data.condition="
                                   f"{meta['condition']!r}, a diagnosis run): it cannot decode units")
        if kind == "spectral":
            from spiritlm.vocoder.spectral import SpectralCfg, SpectralUnitVocoder

            model = SpectralUnitVocoder(SpectralCfg(**meta["spectral"]))
        elif kind == "hifigan":
            model = UnitHiFiGAN(GeneratorCfg(**meta["generator"]))
        else:
            raise VocoderFileError(f"{cp}: kind {kind!r} is not 'hifigan' or 'spectral'")
        _load_state(model, load_file(str(w)), w)
        layout = VocabLayout(**meta["layout"]) if meta.get("layout") else SPIRITLM
        voc = cls(model, meta.get("speakers", []), meta.get("styles", []), meta.get("default_speaker", 0),
                  meta.get("default_style", 0), meta.get("default_duration", 1), layout, source=str(d))
        return voc.to(device) if device else voc

    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(sd, str(d / WEIGHTS))
        # kind "spectral": units -> spectrogram + Griffin-Lim (spectral.py); else the unit HiFi-GAN
        kind = "spectral" if type(self.model).__name__ == "SpectralUnitVocoder" else "hifigan"
        meta = {"format": FORMAT, "version": VERSION, "kind": kind,
                "spectral" if kind == "spectral" else "generator": dataclasses.asdict(self.cfg),
                "speakers": self.speakers, "styles": self.styles, "default_speaker": self.default_speaker,
                "default_style": self.default_style, "default_duration": self.default_duration,
                "layout": dataclasses.asdict(self.layout), "sha256": _sha256(d / WEIGHTS), **(extra or {})}
        (d / "config.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return d

    def to(self, device: str | torch.device) -> "Vocoder":
        self.model.to(device)
        return self

    # ---- units -> frames -----------------------------------------------------------------
    def _label(self, value: int | str | None, labels: list[str], default: int | None, what: str, n: int) -> int:
        if value is None:
            value = default if default is not None else 0
        if isinstance(value, str) and not value.lstrip("-").isdigit():
            if value not in labels:
                raise ValueError(f"{what} {value!r} is not one of this vocoder's {what}s: {labels[:20]}")
            return labels.index(value)
        i = int(value)
        if not 0 <= i < n:
            raise ValueError(f"{what} {i} is outside [0, {n})")
        return i

    def streams(self, units: Any, deduplicated: bool | None = None) -> tuple[dict[str, np.ndarray], bool]:
        """Any accepted units form -> ({"hubert", ["pitch"], ["style"]} int64 arrays, deduplicated)."""
        if isinstance(units, str):
            s, dedup = {k: _as_int_array(v, k) for k, v in string_to_units(units, self.layout).items()}, True
        elif isinstance(units, dict):
            if "hubert" not in units:
                raise UnitError(f"units dict has no 'hubert' stream (keys: {sorted(units)})")
            s = {k: _as_int_array(units[k], k) for k in ("hubert", "pitch", "style") if units.get(k) is not None}
            hu = s["hubert"]
            if deduplicated is not None:
                dedup = deduplicated
            elif "pitch" in s and len(s["pitch"]) != len(hu):
                dedup = False
            else:
                dedup = not bool(np.any(hu[1:] == hu[:-1])) if len(hu) > 1 else True
        else:  # token ids
            s, dedup = ids_to_units(np.asarray(units, dtype=np.int64), self.layout), True
        if deduplicated is not None:
            dedup = deduplicated
        if len(s["hubert"]) == 0:
            raise UnitError("no HuBERT units to vocode")
        for k, n in (("hubert", self.cfg.num_embeddings), ("pitch", self.cfg.num_f0_tokens),
                     ("style", self.cfg.num_style_tokens)):
            if k in s and n and (s[k].min() < 0 or s[k].max() >= n):
                raise UnitError(f"{k} unit {int(s[k].max() if s[k].max() >= n else s[k].min())} is outside this "
                                f"vocoder's [0, {n})")
        return s, dedup

    def frames(self, units: Any, deduplicated: bool | None = None) -> dict[str, np.ndarray]:
        """Units -> frame-level {"hubert", ["pitch"], ["style"]} aligned one per vocoder frame."""
        s, dedup = self.streams(units, deduplicated)
        hu = s["hubert"]
        need = [k for k, n in (("pitch", self.cfg.num_f0_tokens), ("style", self.cfg.num_style_tokens))
                if n and k not in s]
        if need:
            raise UnitError(f"this vocoder needs {' and '.join(need)} units (an Expressive vocoder); got only "
                            f"{sorted(s)}")
        out: dict[str, np.ndarray] = {}
        if dedup:
            for k in ("pitch", "style"):
                if k in s and len(s[k]) != len(hu):
                    raise UnitError(f"deduplicated units need one {k} value per HuBERT unit ({len(hu)}), got "
                                    f"{len(s[k])}")
            if self.model.dur_predictor is not None:
                with torch.inference_mode():
                    dur = self.model.predict_durations(torch.from_numpy(hu)[None].to(self.device))[0].cpu().numpy()
            else:
                dur = np.full(len(hu), self.default_duration, np.int64)
            out["hubert"] = np.repeat(hu, dur)
            for k in ("pitch", "style"):
                if k in s:
                    out[k] = np.repeat(s[k], dur)
        else:
            out["hubert"] = hu
            for k, hop in (("pitch", self.cfg.f0_hop_size), ("style", self.cfg.style_hop_size)):
                if k in s:
                    out[k] = _upsample(s[k], len(hu), max(1, round(hop / self.cfg.code_hop_size)), k)
        return {k: v for k, v in out.items()
                if k == "hubert" or (k == "pitch" and self.cfg.num_f0_tokens) or (k == "style" and self.cfg.num_style_tokens)}

    # ---- decoding ------------------------------------------------------------------------
    def decode(self, units: Any, speaker: int | str | None = None, style: int | str | None = None,
               deduplicated: bool | None = None) -> tuple[np.ndarray, int]:
        """Units (a dict of streams as ``SpeechTokenizer.encode`` returns, a speech string, or
        token ids) -> (float32 waveform in [-1, 1], sample rate)."""
        f = self.frames(units, deduplicated)
        dev = self.device

        def t(x):
            return torch.from_numpy(np.ascontiguousarray(x))[None].to(dev)

        spk = sty = None
        if self.cfg.multispkr:
            spk = torch.tensor([self._label(speaker, self.speakers, self.default_speaker, "speaker",
                                            self.cfg.num_speakers)], device=dev)
        if self.cfg.multistyle:
            sty = torch.tensor([self._label(style, self.styles, self.default_style, "style", self.cfg.num_styles)],
                               device=dev)
        with torch.inference_mode():
            wav = self.model(t(f["hubert"]), t(f["pitch"]) if "pitch" in f else None,
                             t(f["style"]) if "style" in f else None, spk, sty)[0]
        return wav.float().cpu().numpy(), self.sample_rate

    def __call__(self, units: Any) -> np.ndarray:
        """The evaluation hook form: units -> 16 kHz waveform."""
        wav, sr = self.decode(units)
        if sr != 16000:
            from spiritlm.audio import resample

            wav = resample(wav, sr, 16000)
        return wav


def _load_state(model: UnitHiFiGAN, sd: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise VocoderFileError(f"{path}: state_dict does not fit the generator its config describes: missing "
                               f"{missing[:6]}{'...' if len(missing) > 6 else ''}, unexpected "
                               f"{unexpected[:6]}{'...' if len(unexpected) > 6 else ''}")
    bad = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if sd[k].shape != v.shape]
    if bad:
        raise VocoderFileError(f"{path}: tensor shapes do not fit its config: {bad[:4]}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})
