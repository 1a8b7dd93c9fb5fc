"""Training data input: document sources, a weighted mixture, per-rank sharding, resumable position.

The trainer reads **documents**: ``{"input_ids": 1-D int array, "kind": "speech"|"text"|"interleaved"}``
(token ids of ``spiritlm.vocab``: ``[Speech][Hu12]...``, ``[Text]the cat``...). A document is one
training sequence before packing; ``spiritlm.components.packing`` packs documents into ``seq_len`` rows.

Parquet shards (what the data-prep stage writes, one directory per source)::

    <dir>/*.parquet            read in sorted name order
      input_ids : list<int32>  token ids of one document (BOS included or not: see DataConfig.add_bos)
      kind      : string       "speech" | "text" | "interleaved"
      ...                      any other columns (words, alignments, units) for an interleave_fn
    file key-value metadata "spiritlm" (optional), or <dir>/metadata.json (optional):
      {"base_vocab_size": 32000, "vocab_size": 32667}   -> checked against the model's layout

``interleave_fn(record, seed, epoch) -> ids`` (optional, per source) builds a document's ids from
its whole record each time it is read, so interleaving spans can be resampled every epoch (the
``input_ids`` column is then not needed). ``seed`` is unique per (run seed, document).
``make_sources`` attaches one by itself to a configured source whose shards hold the data stage's
``aligned`` records (words, times, units; no ``input_ids``): the source's ``kind`` says how they
are read (``ALIGNED_AS``): interleaved afresh every epoch, or as speech-only / text-only documents
(the paper's no-interleaving ablation reads the same records as speech).

Determinism: the order of a source in an epoch is a function of (seed, epoch, source name) only;
rank ``r`` of ``w`` takes documents ``r, r + w, r + 2w ...`` of that order; which source the next
document comes from follows the mixture weights (default one third each, as in the paper) as
shares of tokens (``data.mixture_unit = "tokens"``, the paper's unit: see ``MixtureStream``) or
drawn per document (``"documents"``). ``MixtureStream.state_dict()`` captures all of it exactly.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Protocol, Sequence

import numpy as np

from spiritlm.config import ConfigError
from spiritlm.vocab import VocabLayout, describe_layout

KINDS = ("speech", "interleaved", "text")
# Row kinds of the data-prep shards that mix both modalities count as interleaved documents.
KIND_ALIASES = {"aligned": "interleaved", "asr": "interleaved", "tts": "interleaved"}
InterleaveFn = Callable[[dict, int, int], Sequence[int]]
# How a source of each kind reads the data stage's ``aligned`` records (spiritlm.data.reader).
ALIGNED_AS = {"interleaved": "interleave", "any": "interleave", "speech": "speech", "text": "text"}


class DataError(ValueError):
    """Bad shard content (a missing column, an id outside the vocabulary); says where."""


class Source(Protocol):
    name: str

    def __len__(self) -> int: ...

    def order(self, seed: int, epoch: int) -> np.ndarray: ...

    def read(self, index: int, seed: int, epoch: int) -> dict: ...


def _name_key(name: str) -> int:
    return zlib.crc32(name.encode())


def doc_seed(seed: int, name: str, index: int) -> int:
    return (seed * 1_000_003 + _name_key(name) * 7919 + index) % (2**63)


class ParquetSource:
    """Documents from ``<dir>/*.parquet`` (schema above); shuffled by file, then by row in a file."""

    def __init__(self, path: str | Path, name: str = "", kind: str = "any",
                 interleave_fn: Optional[InterleaveFn] = None):
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.name = name or self.path.name
        self.kind = kind
        self.interleave_fn = interleave_fn
        from spiritlm.data.reader import verified_shard_files

        # the data stage's shards: every one listed in its index.json, present and intact (a
        # kind folder not written yet by an unfinished run is refused there, saying what to rerun)
        self.files = verified_shard_files(self.path)
        if not self.path.is_dir():
            raise ConfigError(f"data source {self.name}: {self.path} is not a directory of Parquet shards")
        if not self.files:
            raise ConfigError(f"data source {self.name}: no *.parquet files in {self.path}")
        self.rows = [pq.ParquetFile(f).metadata.num_rows for f in self.files]
        self.starts = np.concatenate([[0], np.cumsum(self.rows)]).astype(np.int64)
        schema = pq.read_schema(self.files[0])
        need = ["kind"] + ([] if interleave_fn else ["input_ids"])
        missing = [c for c in need if c not in schema.names]
        if missing:
            raise DataError(f"{self.files[0]}: missing column(s) {missing}; the schema is in spiritlm/components/mixture.py")
        self.meta = self._read_meta(schema)
        self._cache: tuple[int, object] | None = None

    def _read_meta(self, schema) -> dict:
        kv = schema.metadata or {}
        if b"spiritlm" in kv:
            return json.loads(kv[b"spiritlm"])
        f = self.path / "metadata.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def order(self, seed: int, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([seed, epoch, _name_key(self.name)])
        parts = []
        for f in rng.permutation(len(self.files)):
            parts.append(self.starts[f] + rng.permutation(self.rows[f]))
        return np.concatenate(parts)

    def _table(self, f: int):
        if self._cache is None or self._cache[0] != f:
            import pyarrow.parquet as pq

            self._cache = (f, pq.read_table(self.files[f], memory_map=True))
        return self._cache[1]

    def read(self, index: int, seed: int, epoch: int) -> dict:
        f = int(np.searchsorted(self.starts, index, side="right") - 1)
        table = self._table(f)
        row = index - int(self.starts[f])
        if self.interleave_fn is not None:
            record = {c: table.column(c)[row].as_py() for c in table.column_names}
            ids = self.interleave_fn(record, doc_seed(seed, self.name, index), epoch)
            kind = self.kind if self.kind != "any" else record.get("kind")
        else:
            ids = table.column("input_ids")[row].values
            kind = table.column("kind")[row].as_py()
            if ids is None:
                raise DataError(f"{self.files[f]} row {row}: a {kind!r} record without input_ids; "
                                f"read it through an interleave_fn (make_sources attaches one to "
                                f"configured sources of aligned records)")
            ids = ids.to_numpy(zero_copy_only=False)
        kind = KIND_ALIASES.get(kind, kind)
        return {"input_ids": np.asarray(ids, dtype=np.int64), "kind": kind}


class SyntheticSource:
    """Random documents of one kind (demo and tests): text pieces, speech units, or both."""

    def __init__(self, kind: str, layout: VocabLayout, num_docs: int = 512, max_len: int = 300,
                 name: str = "", bos_id: int = 1, text_vocab: int = 0):
        if kind not in KINDS:
            raise ConfigError(f"synthetic source kind {kind!r}: use one of {KINDS}")
        self.kind, self.layout, self.n, self.max_len = kind, layout, num_docs, max_len
        self.name = name or f"synthetic-{kind}"
        self.bos_id = bos_id
        self.text_vocab = min(text_vocab or layout.base_vocab_size, layout.base_vocab_size)
        self.meta = {"base_vocab_size": layout.base_vocab_size, "vocab_size": layout.vocab_size}

    def __len__(self) -> int:
        return self.n

    def order(self, seed: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch, _name_key(self.name)]).permutation(self.n)

    def _span(self, rng, kind: str, n: int) -> list[int]:
        L = self.layout
        if kind == "text":
            # a little structure to learn: ascending runs of pieces
            start = rng.integers(3, max(4, self.text_vocab - n))
            return [L.text_id] + [int(min(start + i, self.text_vocab - 1)) for i in range(n)]
        hu = L.streams["hubert"]
        pi, st = L.streams["pitch"], L.streams["style"]
        out = [L.speech_id]
        if st.size:  # the Base layout has no pitch/style tokens
            out.append(st.offset + int(rng.integers(st.size)))
        for i in range(n):
            if i % 3 == 0 and pi.size:
                out.append(pi.offset + int(rng.integers(pi.size)))
            out.append(hu.offset + int(rng.integers(hu.size)))
        return out

    def read(self, index: int, seed: int, epoch: int) -> dict:
        # depends on (index, epoch): interleaving differs between epochs, as in the paper
        rng = np.random.default_rng([index, epoch if self.kind == "interleaved" else 0, _name_key(self.name)])
        n = int(rng.integers(4, self.max_len))
        ids = [self.bos_id]
        if self.kind == "interleaved":
            mod = "text" if rng.random() < 0.5 else "speech"
            while len(ids) < n:
                ids += self._span(rng, mod, int(rng.integers(3, 20)))
                mod = "speech" if mod == "text" else "text"
        else:
            ids += self._span(rng, self.kind, n)
        return {"input_ids": np.asarray(ids, dtype=np.int64), "kind": self.kind}


def check_meta(sources: Sequence, layout: VocabLayout, rows: int, tokenizer_sha256: str | None = None) -> None:
    """Shard metadata must match the model's vocabulary (and, when both are known, its
    tokenizer.model byte for byte); the message says what was found, expected, and to change."""
    _check_unit_families(sources)
    for s in sources:
        meta = getattr(s, "meta", {}) or {}
        made_with = meta.get("tokenizer_sha256")
        if tokenizer_sha256 and made_with and made_with != tokenizer_sha256:
            raise ConfigError(
                f"data source {s.name}: shards were tokenized with another tokenizer.model (sha256 "
                f"{made_with[:12]}...) than the model's ({tokenizer_sha256[:12]}...): the same ids would "
                "mean other pieces. Prepare the shards with the model's tokenizer, or point "
                "model.tokenizer at the one the shards were made with"
            )
        base, vs = meta.get("base_vocab_size"), meta.get("vocab_size")
        if base is not None and int(base) != layout.base_vocab_size:
            raise ConfigError(
                f"data source {s.name}: shards were tokenized with base_vocab_size={base} but the "
                f"model's text tokenizer has {layout.base_vocab_size} pieces; use the same "
                "tokenizer.model for data prep and model.checkpoint/model.tokenizer (or model.tiny.base_vocab_size)"
            )
        named = meta.get("vocab_layout")
        if named:  # the data stage records its layout and which streams its speech holds
            _check_shard_layout(s.name, named, meta, layout)
        elif vs is not None and int(vs) > rows:
            raise ConfigError(
                f"data source {s.name}: shards use {vs} ids but the model has {rows} embedding rows; "
                "set model.hubert_size/pitch_size/style_size to the data-prep layout"
            )


def _check_unit_families(sources: Sequence) -> None:
    """The [Hu*] ids of HuBERT units and of semantic units (spiritlm.tokenizer.semantic) are the
    same rows with other meanings: one training run reads speech of one unit family only."""
    fams: dict[str, list[str]] = {}
    for s in sources:
        if getattr(s, "kind", "") == "text":  # text-only sources hold no unit
            continue
        named = (getattr(s, "meta", {}) or {}).get("vocab_layout") or {}
        fams.setdefault(str(named.get("unit_family", "hubert")), []).append(s.name)
    if len(fams) > 1:
        got = "; ".join(f"{f}: {', '.join(names)}" for f, names in sorted(fams.items()))
        raise ConfigError(f"data sources hold speech units of different families ({got}): the same [Hu*] ids would "
                          "mean different units. Prepare every speech source with one speech tokenizer "
                          "(speech.tokenizer_dir), or train one model per unit family")


def _check_shard_layout(name: str, named: Mapping, meta: Mapping, layout: VocabLayout) -> None:
    """The shards' ids must mean the same in the model: the same HuBERT stream, and the same
    pitch/style streams when the shards hold them (``has_pitch``/``has_style``). Shards without
    pitch/style (Base data, even when written with the full layout) fit a Base model."""
    used = {"hubert_size": True,
            "pitch_size": bool(meta.get("has_pitch", named.get("pitch_size", 0))),
            "style_size": bool(meta.get("has_style", named.get("style_size", 0)))}
    bad = [k for k, on in used.items() if on and named.get(k) != getattr(layout, k)]
    if bad:
        got = ", ".join(f"{k.split('_')[0]} {named.get(k)}" for k in bad)
        fix = " ".join(f"model.{k}={named.get(k)}" for k in bad)
        raise ConfigError(
            f"data source {name}: shards hold speech tokens of another vocabulary ({got}); the model's "
            f"is {describe_layout(layout)}. Prepare the shards with the model's layout, or set {fix}"
        )


MIXTURE_UNITS = ("tokens", "documents")


class MixtureStream:
    """Endless per-rank document stream over weighted sources (an epoch per source wraps around).

    ``unit`` says what the weights share out:

    * ``"tokens"`` (default): each source gets its weight's share of the *tokens* read. The paper
      has each of its three data kinds "sampled one third of the time" (REFERENCE.md; the search
      tools here return only the first part of the paper's page, so the sentence could not be
      re-read word for word). Its unit of training is the fixed 4096-token sequence (batch 4 x
      4096 per GPU), so a kind sampled for a third of the sequences is a third of the tokens the
      model sees; and with its sizes (text 307B tokens, speech-only 28B, aligned 8B, ~100B tokens
      trained) only a token share makes the three "seen about equally": sampling per document
      would let token shares follow mean document length, long text documents crowding out short
      utterances. The next document comes from the source furthest below its token share (weight
      x tokens read - its tokens; ties to the first), so realised shares match the weights to
      within one document at every point of the run. Which document of that source comes next
      stays the shuffled per-epoch order below.
    * ``"documents"``: a source drawn per document from the weights (the older behaviour).
    """

    def __init__(self, sources: Sequence, weights: Optional[Sequence[float]] = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1, max_id: Optional[int] = None, unit: str = "tokens"):
        if unit not in MIXTURE_UNITS:
            raise ConfigError(f"data.mixture_unit={unit!r}: use one of {MIXTURE_UNITS} ('tokens' is the paper's)")
        self.unit = unit
        if not sources:
            raise ConfigError("no data sources: add [[data.sources]] entries to the recipe")
        self.sources = list(sources)
        w = np.asarray(weights if weights is not None else [1.0] * len(sources), dtype=np.float64)
        if w.shape != (len(sources),) or (w < 0).any() or w.sum() <= 0:
            raise ConfigError(f"mixture weights {list(w)} must be non-negative, one per source, not all zero")
        self.probs = w / w.sum()
        for s, p in zip(self.sources, self.probs):
            if p > 0 and len(s) < world_size:
                raise ConfigError(f"data source {s.name} has {len(s)} documents, fewer than {world_size} ranks")
        self.seed, self.rank, self.world = seed, rank, world_size
        self.max_id = max_id
        self.rng = np.random.default_rng([seed, rank, 7])
        self.cursor = [[0, 0] for _ in self.sources]  # per source: (epoch, local position)
        self._orders: dict[tuple[int, int], np.ndarray] = {}
        self.docs_read = 0
        self.tokens_read = np.zeros(len(self.sources), dtype=np.int64)  # per source, this rank

    def _order(self, k: int, epoch: int) -> np.ndarray:
        key = (k, epoch)
        if key not in self._orders:
            self._orders = {kk: v for kk, v in self._orders.items() if kk[0] != k}
            self._orders[key] = self.sources[k].order(self.seed, epoch)
        return self._orders[key]

    def __iter__(self) -> Iterator[dict]:
        return self

    def _pick(self) -> int:
        if self.unit == "documents":
            return int(self.rng.choice(len(self.sources), p=self.probs))
        deficit = self.probs * (self.tokens_read.sum() + 1) - self.tokens_read
        deficit[self.probs == 0] = -np.inf
        return int(np.argmax(deficit))

    def __next__(self) -> dict:
        k = self._pick()
        src = self.sources[k]
        epoch, pos = self.cursor[k]
        g = pos * self.world + self.rank
        if g >= len(src):
            epoch, pos, g = epoch + 1, 0, self.rank
        self.cursor[k] = [epoch, pos + 1]
        index = int(self._order(k, epoch)[g])
        doc = src.read(index, self.seed, epoch)
        ids = doc["input_ids"]
        if self.max_id is not None and ids.size and (ids.min() < 0 or ids.max() >= self.max_id):
            raise DataError(
                f"data source {src.name}, document {index}: id {int(ids.max())} outside [0, {self.max_id}); "
                "the shards and the model use different vocabularies"
            )
        doc["source"] = src.name
        self.docs_read += 1
        self.tokens_read[k] += max(ids.size, 1)  # an empty document still moves its source on
        return doc

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "cursor": [list(c) for c in self.cursor],
                "docs_read": self.docs_read, "seed": self.seed, "rank": self.rank, "world": self.world,
                "tokens_read": self.tokens_read.tolist(), "unit": self.unit}

    def load_state_dict(self, state: Mapping) -> None:
        if (state["seed"], state["world"]) != (self.seed, self.world):
            raise ConfigError(
                f"checkpoint data position was saved with seed={state['seed']}, world size={state['world']}; "
                f"this run has seed={self.seed}, world size={self.world}: resume with the same settings"
            )
        if state.get("unit", "documents") != self.unit:
            raise ConfigError(
                f"checkpoint data position was saved with data.mixture_unit={state.get('unit', 'documents')!r}; "
                f"this run has {self.unit!r}: resume with the same setting")
        self.rng.bit_generator.state = state["rng"]
        self.cursor = [list(c) for c in state["cursor"]]
        self.docs_read = state["docs_read"]
        self.tokens_read = np.asarray(state.get("tokens_read", [0] * len(self.sources)), dtype=np.int64)


def make_sources(data_cfg, layout: VocabLayout, interleave_fns: Optional[Mapping[str, InterleaveFn]] = None,
                 text_vocab: int = 0):
    """Sources + weights from ``DataConfig`` (synthetic speech/interleaved/text if none are listed)."""
    interleave_fns = interleave_fns or {}
    if not data_cfg.sources:
        srcs = [SyntheticSource(k, layout, data_cfg.synthetic_docs, max_len=int(data_cfg.seq_len * 1.5),
                                bos_id=data_cfg.bos_id, text_vocab=text_vocab) for k in KINDS]
        return srcs, [1.0, 1.0, 1.0]
    srcs = []
    for i, s in enumerate(data_cfg.sources):
        name = s.name or f"source{i}"
        fn = interleave_fns.get(name)
        if fn is None and holds_aligned_records(s.path):
            from spiritlm.data.reader import interleave_fn_for

            fn = interleave_fn_for(s.path, aligned_as=ALIGNED_AS[s.kind])
        src = ParquetSource(s.path, name=name, kind=s.kind, interleave_fn=fn)
        check_synthetic(src, bool(getattr(s, "synthetic", False)))
        srcs.append(src)
    return srcs, [s.weight for s in data_cfg.sources]


def check_synthetic(src, declared: bool) -> None:
    """A source's ``synthetic`` setting must say what its shards are (their metadata's ``synthetic``,
    written by ``spiritlm prepare synth-interleave``), both ways."""
    made = (src.meta or {}).get("synthetic")
    if made and not declared:
        raise ConfigError(f"data source {src.name}: {src.path} holds synthetic interleaved documents (speech spans "
                          f"written by a T2U model, sha256 {str(made.get('t2u_sha256', '?'))[:12]}...), not recorded "
                          "speech; set synthetic = true in its [[data.sources]] entry to train on them")
    if declared and not made:
        raise ConfigError(f"data source {src.name}: synthetic = true, but {src.path} holds no shards of `spiritlm "
                          "prepare synth-interleave` (their metadata has no 'synthetic'); point it at the synthetic "
                          "shards' interleaved/ folder, or set synthetic = false")


def holds_aligned_records(path: str | Path) -> bool:
    """Whether a shard directory has rows of kind ``aligned``.

    The data stage's ``index.json`` (in the directory or its parent) lists the row kinds of each
    file; it answers for every file it lists with the size found on disk. Other files are read,
    the ``kind`` column only.
    """
    import json

    import pyarrow.parquet as pq

    path = Path(path)
    files = sorted(path.glob("*.parquet"))
    listed: dict[Path, dict] = {}
    for root in (path, path.parent):
        index = root / "index.json"
        if index.is_file():
            try:
                entries = json.loads(index.read_text()).get("shards", [])
                listed = {(root / e["name"]).resolve(): e for e in entries if "name" in e and "kinds" in e}
            except (OSError, ValueError, AttributeError, TypeError):
                listed = {}  # an unreadable index: read the files themselves
            break
    for f in files:
        e = listed.get(f.resolve())
        if e is not None and e.get("bytes") == f.stat().st_size:
            if e["kinds"].get("aligned", 0) > 0:
                return True
            continue
        if "kind" not in pq.read_schema(f).names:
            return False  # ParquetSource reports the missing column
        kinds = pq.read_table(f, columns=["kind"]).column("kind")
        if "aligned" in kinds.unique().to_pylist():
            return True
    return False