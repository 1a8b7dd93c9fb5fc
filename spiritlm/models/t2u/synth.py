"""``spiritlm prepare synth-interleave RECIPE``: interleaved shards made from text alone.

Zeng et al. 2024 (the GLM-4-Voice pretraining) lift interleaving's limit -- aligned speech -- by
writing the speech spans of interleaved documents with a text-to-token model instead of
recording them. Here: every document of the recipe's text corpora is cut into spans exactly as real
interleaving cuts an aligned record (``interleave.text_span`` / ``speech_span`` / ``start``, the
same SplitMix64 stream seeded by (document id, seed)); text spans keep their words' BPE ids (each
word in its mid-sentence form, as interleaved text spans are written) and every speech span's words
go through the T2U model (``spiritlm t2u fit``), whose units replace them. No audio is made.

The run is the data stage's own pipeline (``spiritlm.data.prepare.run_prepare``): chunks of
documents processed by local workers or Ray tasks, each chunk written atomically to ``_work/``,
shards streamed from the chunks in order, ``index.json`` last -- so a rerun is byte-identical, a
run killed at any point resumes where it stopped, and a finished one is "up to date". The shards
are ``kind = "interleaved"`` rows under ``<out>/interleaved/``; their metadata holds the T2U
model's vocabulary, unit family, frame rates and speech encoder (so the trainer mixes them with the
real shards of that tokenizer, and only those) and ``synthetic``: the T2U checkpoint's SHA-256, the
seed and the decoding settings. Row ids are ``synth/<document id>``. Train on them as one more
source: ``kind = "interleaved"``, ``synthetic = true``.

What is skipped is counted in ``report.json``, never dropped silently: documents with fewer than
``min_words`` words (``too_few_words``) and the text corpus' bad lines (``non_utf8``,
``invalid_json``, ``empty_text``) are dropped; a speech span with a text id the T2U model never saw
in training (another script, a word piece outside its data) stays text (``synthetic.spans_unseen_text``),
as does a span the model gives no unit (``spans_no_units``); spans cut at the length cap are counted
(``spans_cut``). A run that writes no document at all fails after its report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from spiritlm.config import ConfigError
from spiritlm.data.interleave import SPEECH, TEXT, InterleaveConfig, RecordRng, sample_spans
from spiritlm.data.prepare import ShardsConfig
from spiritlm.data.records import encode_words, written_tokens
from spiritlm.models.t2u.decode import T2U, DecodeConfig

log = logging.getLogger(__name__)


@dataclass
class SynthInputs:
    text_corpora: list[str] = field(default_factory=list)  # .txt (one document per line) or .jsonl
    text_field: str = "text"
    text_min_chars: int = 1
    # the first this many documents (after the corpora's bad lines are dropped); 0 = all. A model
    # sees a fixed token budget: making more synthetic documents than it will read costs T2U time only
    max_documents: int = 0

    # what ``spiritlm.data.work.collect_items`` also reads: this command reads no speech
    @property
    def manifests(self) -> list:
        return []

    @property
    def speech_only_manifests(self) -> list:
        return []

    @property
    def splits(self) -> list:
        return []


@dataclass
class SynthConfig:
    output_dir: str = "runs/synth_shards"
    t2u: str = ""  # a T2U export (the hf/ folder of `spiritlm t2u fit`)
    text_tokenizer: str = ""  # "" = the T2U export's own; another must be the same tokenizer
    seed: int = 0
    device: str = "cpu"
    workers: int = 1
    backend: Literal["local", "ray"] = "local"
    ray_gpus_per_worker: float = 0.0
    start_method: Literal["auto", "fork", "spawn"] = "auto"
    chunk_size: int = 64  # documents per work unit (and per T2U batch set)
    progress: bool = True
    keep_work: bool = False
    min_words: int = 2  # a document needs a text and a speech span to be interleaved
    inputs: SynthInputs = field(default_factory=SynthInputs)
    interleave: InterleaveConfig = field(default_factory=InterleaveConfig)  # the real interleaving's spans
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.chunk_size < 1 or self.min_words < 1:
            raise ConfigError(f"workers={self.workers}, chunk_size={self.chunk_size}, min_words={self.min_words}: "
                              "each must be 1 or more")
        if self.interleave.mode != "words":
            raise ConfigError(f"interleave.mode={self.interleave.mode!r}: synthetic interleaving cuts documents "
                              "into word spans; use interleave.mode=words")


class SynthContext:
    """What a worker needs to turn a chunk of text documents into synthetic interleaved rows."""

    encoder_spec = "t2u"  # a model built in each worker (``work.start_method``: spawn)

    def __init__(self, cfg: SynthConfig, tokenizer, t2u: T2U | None = None):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.t2u = t2u or T2U(cfg.t2u, cfg.device)
        self.layout = self.t2u.layout
        check_tokenizer(cfg, self.t2u, tokenizer)

    def __getstate__(self) -> dict:
        return {"cfg": self.cfg, "tok": self.tokenizer}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["cfg"], state["tok"])

    @classmethod
    def create(cls, cfg: SynthConfig) -> "SynthContext":
        from spiritlm.data.work import load_text_tokenizer

        if not cfg.t2u:
            raise ConfigError("t2u is not set: give the hf/ folder of a `spiritlm t2u fit` run "
                              "(--set t2u=runs/t2u/run/hf)")
        t2u = T2U(cfg.t2u, cfg.device)  # it loads its own tokenizer: another is read only when named
        return cls(cfg, load_text_tokenizer(cfg.text_tokenizer) if cfg.text_tokenizer else t2u.tokenizer, t2u)

    def items(self, cfg: SynthConfig) -> tuple[list[dict], list[dict]]:
        """The text documents of the corpora, in order, the first ``inputs.max_documents`` of them."""
        from spiritlm.data.work import collect_items

        items, drops = collect_items(cfg)
        n = cfg.inputs.max_documents
        self.documents_available = len(items)
        return (items[:n] if n else items), drops

    def tokenizer_sha256(self) -> str:
        return self.tokenizer.sha256

    def fingerprint(self) -> str:
        return self.tokenizer_sha256()[:16] + ":t2u-" + self.t2u.sha256[:16]

    def metadata(self, config: dict) -> dict:
        m = self.t2u.meta
        return {"tokenizer_sha256": self.tokenizer_sha256(), "base_vocab_size": self.layout.base_vocab_size,
                "vocab_size": self.layout.vocab_size, "frame_rates": m["frame_rates"],
                "vocab_layout": asdict(self.layout), "has_pitch": m["has_pitch"], "has_style": m["has_style"],
                "speech_encoder": m["speech_encoder"], "bos": False, "config": config,
                "synthetic": {"t2u_sha256": self.t2u.sha256, "seed": self.cfg.seed,
                              "decode": asdict(self.cfg.decode), "method": "t2u"}}

    # ---- one chunk --------------------------------------------------------------------------
    def process(self, items: list[dict]) -> tuple[list[dict], dict]:
        from spiritlm.data.shards import ids_row
        from spiritlm.data.work import _Stats

        t_chunk = time.perf_counter()
        cfg, lay, st = self.cfg, self.layout, _Stats()
        rows: list[dict] = []
        syn = {"documents": 0, "spans_speech": 0, "spans_unseen_text": 0, "spans_no_units": 0, "spans_cut": 0,
               "words_text": 0, "words_speech": 0, "units": 0}
        docs = []  # (id, BPE ids, word offsets into them, span lengths, span modalities)
        queries = []  # (doc, span, bpe, n_words)
        for it in items:
            st.d["items"] += 1
            words = written_tokens(it["text"])
            if len(words) < cfg.min_words:
                st.drop(it["id"], "too_few_words", f"{it['id']}: {len(words)} word(s), min_words={cfg.min_words}")
                continue
            bpe, lens = encode_words(self.tokenizer, words)
            offs = np.concatenate(([0], np.cumsum(lens)))
            lengths, mods = sample_spans(len(words), cfg.interleave, RecordRng(it["id"], cfg.seed, 0))
            mods = list(mods)
            w = 0
            for k, (n, m) in enumerate(zip(lengths, mods)):
                ids = bpe[offs[w]:offs[w + n]]
                if m == SPEECH:
                    if self.t2u.unseen_ids(ids).size:
                        mods[k] = TEXT
                        syn["spans_unseen_text"] += 1
                    else:
                        queries.append((len(docs), k, ids, n))
                w += n
            docs.append((it["id"], bpe, offs, lengths, mods))
        t0 = time.perf_counter()
        units, cut = (self.t2u.generate([q[2] for q in queries], cfg.seed, cfg.decode, [q[3] for q in queries])
                      if queries else ([], np.zeros(0, bool)))
        st.d["encode_seconds"] += time.perf_counter() - t0
        by_span = {(q[0], q[1]): (u, c) for q, u, c in zip(queries, units, cut)}
        for d, (rid, bpe, offs, lengths, mods) in enumerate(docs):
            out, prev, w = [], None, 0
            for k, (n, m) in enumerate(zip(lengths, mods)):
                body = bpe[offs[w]:offs[w + n]]
                if m == SPEECH:
                    u, c = by_span[(d, k)]
                    if not len(u):
                        m = TEXT
                        syn["spans_no_units"] += 1
                    else:
                        body = u
                        syn["spans_speech"] += 1
                        syn["spans_cut"] += int(c)
                        syn["units"] += len(u)
                        st.d["frames_encoded"] += len(u)
                syn["words_speech" if m == SPEECH else "words_text"] += n
                if m != prev:
                    out.append(lay.speech_id if m == SPEECH else lay.text_id)
                    prev = m
                out.extend(int(x) for x in body)
                w += n
            ids = np.asarray(out, dtype=np.int32)
            rows.append(ids_row(f"synth/{rid}", "interleaved", ids))
            st.inc("kept", "interleaved")
            st.tokens(ids, lay)
            syn["documents"] += 1
        syn["seconds"] = time.perf_counter() - t_chunk  # this chunk's work (summed over chunks: robust to resumes)
        st.d["synthetic"] = syn
        return rows, st.d


def check_tokenizer(cfg: SynthConfig, t2u: T2U, tokenizer) -> None:
    """The text ids must mean what they meant to the T2U model, and its units what they mean in the
    vocabulary the shards will be trained with."""
    made = t2u.meta.get("tokenizer_sha256")
    if made and tokenizer.sha256 != made:
        raise ConfigError(f"text_tokenizer={cfg.text_tokenizer or cfg.t2u}: not the text tokenizer the T2U model "
                          f"{cfg.t2u} was trained with (sha256 {tokenizer.sha256[:12]}... vs {made[:12]}...); leave "
                          "text_tokenizer empty to use the T2U export's own")
    lay, want = tokenizer.layout, t2u.layout
    if (lay.base_vocab_size, lay.hubert_size) != (want.base_vocab_size, want.hubert_size):
        raise ConfigError(f"{cfg.t2u}: the T2U model writes the vocabulary {want.base_vocab_size} text + "
                          f"{want.hubert_size} units, the text tokenizer's is {lay.base_vocab_size} + {lay.hubert_size}; "
                          "use a T2U model trained on shards of this tokenizer")


def synth_interleave(cfg: SynthConfig) -> dict:
    """Run (or resume) the job; the report (``report.json``) with the throughput added."""
    from spiritlm.data.prepare import run_prepare

    t0 = time.perf_counter()
    ctx = SynthContext.create(cfg)
    report = run_prepare(cfg, ctx, t0)
    syn = report.get("synthetic", {})
    words = syn.get("words_text", 0) + syn.get("words_speech", 0)
    secs = syn.get("seconds", 0.0)  # worker seconds over all chunks, this run's and a killed run's
    report["throughput"] = {"text_words_per_s": round(words / secs, 1) if secs else None,
                            "units_per_s": round(syn.get("units", 0) / secs, 1) if secs else None,
                            "units_per_s_decode": report.get("units_per_s"), "workers": cfg.workers,
                            "worker_seconds": round(secs, 3)}
    if hasattr(ctx, "documents_available"):  # this run read the corpora (not "up to date")
        from spiritlm.data.prepare import _atomic_json

        report["documents_available"] = ctx.documents_available
        _atomic_json(Path(cfg.output_dir) / "report.json", report)  # with the throughput and the corpus size
    if not syn.get("documents"):
        raise ConfigError(f"{cfg.output_dir}: no document was written ({report.get('dropped')}); the reasons are in "
                          f"{Path(cfg.output_dir) / 'drops.jsonl'} -- is {cfg.inputs.text_corpora} the text corpus the "
                          f"recipe says (format, text_field={cfg.inputs.text_field!r})?")
    total = syn.get("spans_speech", 0) + syn.get("spans_unseen_text", 0)
    if total and syn.get("spans_unseen_text", 0) > 0.5 * total:
        log.warning("%d of %d speech spans stayed text: their words hold text ids the T2U model never saw (another "
                    "script or domain than its training data?)", syn["spans_unseen_text"], total)
    return report


def format_synth_report(report: dict) -> str:
    syn = report.get("synthetic", {})
    tp = report.get("throughput", {})
    avail = report.get("documents_available")
    lines = [f"documents: {syn.get('documents', 0)} written"
             + (f" (the first {syn.get('documents', 0) + sum(report.get('dropped', {}).values())} of {avail} read)"
                if avail else "") + ", dropped: "
             + (", ".join(f"{k}={v}" for k, v in report.get("dropped", {}).items()) or "none"),
             f"speech spans: {syn.get('spans_speech', 0)} written by the T2U model, {syn.get('spans_unseen_text', 0)} "
             f"kept as text (unseen text ids), {syn.get('spans_no_units', 0)} kept as text (no unit), "
             f"{syn.get('spans_cut', 0)} cut at the length cap",
             f"words: {syn.get('words_text', 0)} as text, {syn.get('words_speech', 0)} as speech; units: {syn.get('units', 0)}",
             f"rows: {report.get('rows')} in {report.get('shards')} shard(s); tokens: "
             + ", ".join(f"{k}={v}" for k, v in report.get("tokens", {}).items()),
             f"throughput per worker: {tp.get('text_words_per_s')} text words/s, {tp.get('units_per_s')} units/s "
             f"(T2U decoding alone: {tp.get('units_per_s_decode')} units/s); {tp.get('worker_seconds')} worker-s, "
             f"wall {report.get('wall_s')} s"]
    if report.get("up_to_date"):
        lines.insert(0, "up to date (same config, inputs, tokenizer and T2U model): nothing to do")
    return "\n".join(lines)

