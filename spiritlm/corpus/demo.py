"""The deterministic demo corpus: synthetic speech (espeak-ng) + a text-only corpus, from the
grammar in :mod:`spiritlm.corpus.grammar`.

    from spiritlm.corpus.demo import DemoCorpusConfig, build_demo_corpus
    corpus = build_demo_corpus(DemoCorpusConfig(out_dir="data/demo", seed=0))
    corpus.manifest_path, corpus.text_corpus_path, corpus.audio_dir, corpus.stats

Layout of ``out_dir``::

    manifest.jsonl      speech manifest (spiritlm.manifest format), audio paths relative to it
    audio/<id>.wav      16 kHz mono PCM_16
    text_corpus.jsonl   {"text": ..., "kind": ...} one document per line, "train" split only
    COMPLETE.json       completion marker: config hash, config, stats (written last)

Properties:

* deterministic: utterance ``i`` is a pure function of ``(seed, i)`` -- its text, kind, voice,
  style, leading silence and espeak noise seed come from ``random.Random(f"...{seed}/{i}")``, and
  each utterance is synthesised in its own fork of a process whose espeak never synthesised
  (``num_workers`` forks run at once; see :mod:`spiritlm.corpus.espeak`). The number of workers
  does not change any byte of the manifest or the audio. No multiprocessing start-method
  concerns: nothing re-imports ``__main__``.
* ``target_minutes``: utterances are added in index order until the total duration reaches it.
* cached: a complete corpus whose marker holds the same config hash is returned at once. The
  corpus is built in a temporary sibling directory that is renamed into place only when complete,
  so an interrupted build never looks complete.
* held out: each document's split comes from :func:`spiritlm.corpus.grammar.split_of`; the text
  corpus contains only "train" documents (multi-sentence paragraphs only if every sentence is
  "train"), and the manifest records the split of every utterance.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spiritlm.corpus.grammar import GRAMMAR_VERSION, Grammar, split_of, words_of
from spiritlm.manifest import Phone, Style, Utterance, Word, read_manifest, write_manifest

CORPUS_VERSION = 1
SAMPLE_RATE = 16000
MARKER = "COMPLETE.json"
DEFAULT_VOICES = ("en-us", "en-us+m3", "en-us+f2", "en-us+f4", "en+m1", "en+f3",
                  "en-gb-x-rp+m7", "en-us+m6")


@dataclass
class DemoCorpusConfig:
    out_dir: str | os.PathLike = "data/demo_corpus"
    seed: int = 0
    target_minutes: float = 40.0  # speech; the build stops at the first utterance reaching it
    n_text_documents: int = 30000  # text-only corpus (sentences, paragraphs, stories)
    voices: tuple[str, ...] = DEFAULT_VOICES
    rate_wpm: tuple[int, int] = (140, 200)  # espeakRATE, inclusive range
    pitch: tuple[int, int] = (30, 70)  # espeakPITCH 0-99
    pitch_range: tuple[int, int] = (30, 80)  # espeakRANGE 0-99
    lead_silence_s: tuple[float, float] = (0.10, 0.25)
    speech_kinds: tuple[tuple[str, float], ...] = (("story", 0.35), ("sentence", 0.40),
                                                   ("sentiment", 0.25))
    text_kinds: tuple[tuple[str, float], ...] = (("sentence", 0.35), ("story", 0.35),
                                                 ("sentiment", 0.15), ("paragraph", 0.15))
    heldout_fraction: float = 0.1
    num_workers: int = 2  # does not change the output (excluded from the hash)

    def identity(self) -> dict[str, Any]:
        """Everything that determines the output (not ``out_dir`` / ``num_workers``)."""
        d = asdict(self)
        d.pop("out_dir")
        d.pop("num_workers")
        d = json.loads(json.dumps(d))  # tuples -> lists
        for k in ("target_minutes", "heldout_fraction"):  # 40 and 40.0 are the same config
            d[k] = float(d[k])
        d["lead_silence_s"] = [float(x) for x in d["lead_silence_s"]]
        for k in ("speech_kinds", "text_kinds"):
            d[k] = [[name, float(w)] for name, w in d[k]]
        try:
            from importlib.metadata import version

            espeak = version("espeakng-loader")
        except Exception:  # noqa: BLE001
            espeak = "unknown"
        d["_versions"] = {"corpus": CORPUS_VERSION, "grammar": GRAMMAR_VERSION,
                          "espeakng_loader": espeak}
        return d

    def hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class DemoCorpus:
    root: Path
    manifest_path: Path
    text_corpus_path: Path
    audio_dir: Path
    config_hash: str
    stats: dict[str, Any] = field(default_factory=dict)
    cached: bool = False

    @classmethod
    def at(cls, root: Path, config_hash: str, stats: dict, cached: bool) -> "DemoCorpus":
        return cls(root, root / "manifest.jsonl", root / "text_corpus.jsonl", root / "audio",
                   config_hash, stats, cached)

    def utterances(self) -> list[Utterance]:
        return read_manifest(self.manifest_path)


# --- utterance specs ------------------------------------------------------------------------
def make_spec(cfg: DemoCorpusConfig, index: int) -> dict[str, Any]:
    """Everything about utterance ``index`` except its audio (a pure function of seed/index)."""
    rng = random.Random(f"spiritlm-demo/{cfg.seed}/{index}")
    g = Grammar(f"spiritlm-demo-text/{cfg.seed}/{index}")
    kinds, weights = zip(*cfg.speech_kinds)
    kind = rng.choices(kinds, weights)[0]
    if kind == "story":
        st = g.story()
        text, extra = st.text, {"topic": st.topic, "arc": st.arc, "character": st.character}
    elif kind == "sentiment":
        ss = g.sentiment_sentence()
        text, extra = ss.text, {"sentiment": ss.label}
    elif kind == "sentence":
        text, template = g.tagged_sentence()
        extra = {"template": template}
    else:
        raise ValueError(f"unknown speech kind {kind!r}")
    lo, hi = cfg.lead_silence_s
    return {
        "id": f"demo-{index:05d}", "index": index, "kind": kind, "text": text, "extra": extra,
        "voice": rng.choice(cfg.voices), "rate": rng.randint(*cfg.rate_wpm),
        "pitch": rng.randint(*cfg.pitch), "range": rng.randint(*cfg.pitch_range),
        "lead": rng.randint(int(lo * SAMPLE_RATE), int(hi * SAMPLE_RATE)),
        "espeak_seed": rng.getrandbits(31), "split": split_of(text, cfg.heldout_fraction),
    }


def render(spec: dict[str, Any], syn) -> tuple[np.ndarray, list[Word], list[Phone]]:
    """Resample an espeak :class:`~spiritlm.corpus.espeak.Synthesis` to 16 kHz, prepend the
    spec's leading silence, and convert word/phone times to seconds in the final file."""
    import soxr

    expected = words_of(spec["text"])
    got = [w.label for w in syn.words]
    if got != expected:
        raise RuntimeError(f"{spec['id']}: espeak words {got} != text words {expected}")
    x = syn.audio.astype(np.float32) / 32768.0
    y = soxr.resample(x, syn.sample_rate, SAMPLE_RATE, quality="HQ")
    y = np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)
    lead = int(spec["lead"])
    audio = np.concatenate([np.zeros(lead, np.int16), y])
    dur = len(audio) / SAMPLE_RATE

    def t(sample: int) -> float:  # native-rate sample -> seconds in the 16 kHz file
        return round(min(lead / SAMPLE_RATE + sample / syn.sample_rate, dur), 5)

    words = [Word(w.label, t(w.start), t(w.end)) for w in syn.words]
    phones = [Phone(p.label, t(p.start), t(p.end)) for p in syn.phones]
    if lead:  # the leading silence joins the first pause (or becomes one)
        if phones and phones[0].phone.startswith("_"):
            phones[0] = Phone(phones[0].phone, 0.0, phones[0].end)
        else:
            phones.insert(0, Phone("_", 0.0, t(0)))
    return audio, words, phones


def _request(spec: dict[str, Any]):
    from spiritlm.corpus.espeak import SynthRequest

    return SynthRequest(spec["text"], spec["voice"], spec["rate"], spec["pitch"], spec["range"],
                        spec["espeak_seed"], tag=spec["id"])


def synthesize_spec(spec: dict[str, Any]) -> tuple[np.ndarray, list[Word], list[Phone]]:
    """16 kHz int16 audio and word/phone times (s) of one spec, exactly as the build makes them."""
    from spiritlm.corpus.espeak import get_espeak

    return render(spec, get_espeak().synthesize_many([_request(spec)])[0])


def _render_and_write(spec: dict[str, Any], syn, audio_dir: str) -> dict[str, Any]:
    import soundfile as sf

    audio, words, phones = render(spec, syn)
    sf.write(os.path.join(audio_dir, f"{spec['id']}.wav"), audio, SAMPLE_RATE,
             subtype="PCM_16", format="WAV")
    return {"audio_path": f"audio/{spec['id']}.wav", "n_samples": len(audio), "words": words,
            "phones": phones}


# --- text corpus ----------------------------------------------------------------------------
def iter_text_documents(cfg: DemoCorpusConfig):
    """Yield (text, kind) train documents of the text-only corpus, forever."""
    g = Grammar(f"spiritlm-demo-textcorpus/{cfg.seed}")
    rng = random.Random(f"spiritlm-demo-textcorpus-kinds/{cfg.seed}")
    kinds, weights = zip(*cfg.text_kinds)
    frac = cfg.heldout_fraction
    while True:
        kind = rng.choices(kinds, weights)[0]
        if kind == "sentence":
            parts = [g.sentence()]
        elif kind == "sentiment":
            parts = [g.sentiment_sentence().text]
        elif kind == "paragraph":
            parts = [g.sentence() for _ in range(rng.randint(2, 5))]
        elif kind == "story":
            parts = []
            text = g.story().text
        else:
            raise ValueError(f"unknown text kind {kind!r}")
        if parts:
            text = " ".join(parts)
            if any(split_of(p, frac) != "train" for p in parts):
                continue
        if split_of(text, frac) == "train":
            yield text, kind


def _write_text_corpus(path: Path, cfg: DemoCorpusConfig) -> dict[str, int]:
    n_words = 0
    gen = iter_text_documents(cfg)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for _ in range(cfg.n_text_documents):
            text, kind = next(gen)
            n_words += len(words_of(text))
            f.write(json.dumps({"text": text, "kind": kind}) + "\n")
    return {"n_text_documents": cfg.n_text_documents, "n_text_words": n_words}


# --- build ----------------------------------------------------------------------------------
@dataclass
class _RenderPost:
    """``post`` of a synthesis batch: each child renders and writes its own WAV. A picklable
    object, not a closure, so a large parent can hand the batch to the espeak zygote."""

    by_id: dict[str, dict[str, Any]]
    audio_dir: str

    def __call__(self, _es, req, syn) -> dict[str, Any]:
        return _render_and_write(self.by_id[req.tag], syn, self.audio_dir)


def _synth_batch(es, specs, audio_dir: str, workers: int) -> list[dict[str, Any]]:
    """Synthesise a batch; each child renders and writes its own WAV (see ``_RenderPost``)."""
    post = _RenderPost({s["id"]: s for s in specs}, audio_dir)
    return es.synthesize_many([_request(s) for s in specs], processes=workers, post=post)


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _cleanup_stale(root: Path) -> None:
    """Remove temp/old dirs left by builds whose process is gone (killed mid-build)."""
    for p in [*root.parent.glob(f".{root.name}.tmp-*"), *root.parent.glob(f".{root.name}.old-*")]:
        try:
            pid = int(p.name[len(root.name) + 6:].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            pass


def _check_config(cfg: DemoCorpusConfig) -> None:
    from spiritlm.corpus.espeak import voice_exists

    missing = [v for v in cfg.voices if not voice_exists(v)]
    if missing:
        raise ValueError(f"espeak voices not found in the shipped data: {missing}")
    for name in ("rate_wpm", "pitch", "pitch_range", "lead_silence_s"):
        lo, hi = getattr(cfg, name)
        if lo > hi:
            raise ValueError(f"{name}: empty range {lo}..{hi}")
    if cfg.target_minutes <= 0 or cfg.n_text_documents < 0:
        raise ValueError("target_minutes must be > 0 and n_text_documents >= 0")


def build_demo_corpus(cfg: DemoCorpusConfig | None = None, progress: bool = True) -> DemoCorpus:
    """Build (or load from cache) the demo corpus described by ``cfg``."""
    from tqdm.auto import tqdm

    cfg = cfg or DemoCorpusConfig()
    root = Path(cfg.out_dir).absolute()
    h = cfg.hash()
    marker = _read_marker(root)
    if marker is not None and marker.get("config_hash") == h and (root / "manifest.jsonl").is_file():
        return DemoCorpus.at(root, h, marker.get("stats", {}), cached=True)
    if root.exists() and marker is None and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and is not a demo corpus (no {MARKER}); "
                              "refusing to overwrite it")
    _check_config(cfg)
    root.parent.mkdir(parents=True, exist_ok=True)
    _cleanup_stale(root)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    audio_dir = tmp / "audio"
    audio_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        stats = _build_into(tmp, cfg, progress, tqdm)
        stats["build_seconds"] = round(time.perf_counter() - t0, 2)
        (tmp / MARKER).write_text(json.dumps(
            {"config_hash": h, "config": cfg.identity(), "stats": stats}, indent=1) + "\n")
        marker = _read_marker(root)
        if marker is not None and marker.get("config_hash") == h:  # a concurrent build won
            shutil.rmtree(tmp, ignore_errors=True)
            return DemoCorpus.at(root, h, marker.get("stats", {}), cached=True)
        old = None
        if root.exists():
            old = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(root, old)
        os.replace(tmp, root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(f"demo corpus: {stats['n_utterances']} utterances, "
              f"{stats['total_minutes']:.1f} min of speech, {stats['n_words']} words, "
              f"{stats['n_text_documents']} text documents; built in "
              f"{stats['build_seconds']:.1f} s -> {root}")
    return DemoCorpus.at(root, h, stats, cached=False)


def _build_into(tmp: Path, cfg: DemoCorpusConfig, progress: bool, tqdm) -> dict[str, Any]:
    audio_dir = tmp / "audio"
    target = cfg.target_minutes * 60.0
    workers = max(1, int(cfg.num_workers))
    batch = 16 * workers
    utts: list[Utterance] = []
    total = 0.0
    index = 0
    import soundfile  # noqa: F401  - imported before forking, not in every child
    import soxr  # noqa: F401

    from spiritlm.corpus.espeak import get_espeak

    es = get_espeak()
    bar = tqdm(total=round(target), unit="s", desc="demo speech", disable=not progress,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]")
    try:
        while total < target:
            specs = [make_spec(cfg, i) for i in range(index, index + batch)]
            results = _synth_batch(es, specs, str(audio_dir), workers)
            for spec, res in zip(specs, results):
                if total >= target:  # synthesised past the target: drop (deterministic cut)
                    os.unlink(audio_dir / f"{spec['id']}.wav")
                    continue
                dur = res["n_samples"] / SAMPLE_RATE
                utts.append(Utterance(
                    id=spec["id"], audio_path=res["audio_path"], duration=dur,
                    sample_rate=SAMPLE_RATE, text=spec["text"], speaker=spec["voice"],
                    style=Style(spec["rate"], spec["pitch"], spec["range"]),
                    words=res["words"], phones=res["phones"], split=spec["split"],
                    kind=spec["kind"], extra=spec["extra"]))
                bar.update(min(dur, target - total))
                total += dur
            index += batch
    finally:
        bar.close()
    write_manifest(tmp / "manifest.jsonl", utts)
    text_stats = _write_text_corpus(tmp / "text_corpus.jsonl", cfg)

    def count(key) -> dict[str, int]:
        out: dict[str, int] = {}
        for u in utts:
            k = key(u)
            out[k] = out.get(k, 0) + 1
        return dict(sorted(out.items()))

    return {
        "n_utterances": len(utts), "total_seconds": round(total, 3),
        "total_minutes": round(total / 60, 3), "n_words": sum(len(u.words) for u in utts),
        "splits": count(lambda u: u.split), "kinds": count(lambda u: u.kind),
        "speakers": count(lambda u: u.speaker), **text_stats,
    }
