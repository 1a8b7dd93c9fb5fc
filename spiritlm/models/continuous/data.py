"""Data of the continuous-input model: a reader over the data stage's manifests, frozen-encoder
features cached in shards, and the packer of spliced rows.

Input: the data stage's utterance manifests (JSON Lines, :mod:`spiritlm.manifest`: ``audio_path``
+ ``text`` + ``split``), read by :func:`read_utterances`. Bad input is a *counted skip*, logged
with its reason, never a crash mid-run: audio too short for one stacked frame (``too_short``),
longer than ``max_audio_s`` or than a row (``too_long``), unreadable (``unreadable_audio``), an
empty transcript (``empty_text``), a transcript in a script the LM tokenizer does not cover
(``uncovered_script``: more than ``max_uncovered`` of its bytes fall to byte/unk pieces).

One utterance is the sequence (``A`` = an audio slot, its embedding spliced in later)::

    prepend      A A A ... A <BOS> t_1 ... t_n <EOS>      (SpeechLLM)
    placeholder  <BOS> <audio> ... <audio> t_1 ... t_n <EOS>   (Tiny Audio; the slot ids are the
                                                            tokenizer's <audio> piece)

targets are the transcript and ``<EOS>`` only (loss on text). :class:`ContinuousBatches` packs
whole utterances into rows of ``seq_len`` (never cut; positions restart per utterance; the rest
of a row is padding with no target), deals them to ranks (utterance ``r, r + w, ...`` of a
seeded per-epoch order) and resumes exactly from ``state_dict``.

Feature cache (:class:`FeatureCache`): when the encoder is frozen, its frames are computed once
and written as Parquet shards (``id``, ``n_frames``, ``dim``, ``feats`` float32, and ``size`` +
``sha256`` of the audio they were computed from) with the encoder's identity in
``metadata.json``; a cache of another encoder is rebuilt, never read, and an entry whose audio
is no longer the same bytes (a file rewritten in place, an id pointed at another file, a cache
written before entries recorded their audio) is computed again (:func:`input_identity`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from spiritlm.components.packing import IGNORE

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000


@dataclass
class Utt:
    id: str
    text: str
    text_ids: list[int]
    n_samples: int
    n_slots: int
    path: str = ""
    wav: np.ndarray | None = field(default=None, repr=False)  # in-memory audio (synthetic)
    ctc_ids: list[int] = field(default_factory=list)


def utterance_sequence(n_slots: int, text_ids: Sequence[int], placement: str, bos: int, eos: int,
                       audio_id: int, with_eos: bool = True) -> tuple[list[int], list[int], int]:
    """-> (ids, next-token targets, first audio slot). Targets: the transcript and EOS only."""
    text = list(text_ids) + ([eos] if with_eos else [])
    if placement == "prepend":
        ids = [audio_id] * n_slots + [bos] + text
        start, first_pred = 0, n_slots  # BOS predicts t_1
    else:
        ids = [bos] + [audio_id] * n_slots + text
        start, first_pred = 1, n_slots  # the last audio slot predicts t_1
    tg = [IGNORE] * len(ids)
    for j, t in enumerate(text):
        tg[first_pred + j] = t
    return ids, tg, start


# ---- reading the manifests ------------------------------------------------------------------
def _n_samples(path: Path) -> int:
    """Samples at 16 kHz through the project's one audio loader, which also rejects NaN, silent
    or lying files: decoding every file once here (rather than reading its header) is what
    keeps a bad file from stopping a run mid-way."""
    from spiritlm.data.encoders import read_audio

    return int(read_audio(path).size)


def synthetic_utterances(n: int, seed: int = 0) -> list[tuple[str, str, np.ndarray]]:
    """Tone 'speech': each word of a 6-word vocabulary is 0.12 s of its own frequency, so the
    transcript is a function of the audio (a smoke test that a model can learn)."""
    words = ["one", "two", "three", "four", "five", "six"]
    freqs = [300.0, 500.0, 700.0, 900.0, 1100.0, 1300.0]
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.12 * SAMPLE_RATE)) / SAMPLE_RATE
    out = []
    for i in range(n):
        k = rng.integers(2, 5)
        idx = rng.integers(0, len(words), size=k)
        wav = np.concatenate([0.3 * np.sin(2 * np.pi * freqs[j] * t) for j in idx]).astype(np.float32)
        out.append((f"syn-{i:05d}", " ".join(words[j] for j in idx), wav))
    return out


def read_utterances(data_cfg, tok, frames_for, seq_len: int, placement: str, chars=None,
                    manifests: Sequence[str] | None = None, split: str | None = None,
                    seed: int = 0) -> tuple[list[Utt], Counter]:
    """Manifest utterances of ``split`` -> kept utterances and the skip counts by reason."""
    from spiritlm.manifest import read_manifest

    skips: Counter = Counter()
    out: list[Utt] = []
    manifests = list(data_cfg.manifests if manifests is None else manifests)
    split = data_cfg.split if split is None else split
    items: list[tuple[str, str, str, np.ndarray | None]] = []
    for m in manifests:
        mdir = Path(m).parent
        for u in read_manifest(m):
            if split and u.split != split:
                continue
            items.append((u.id, u.text, str(u.audio_file(mdir)), None))
    if not manifests and data_cfg.synthetic:
        items = [(i, t, "", w) for i, t, w in synthetic_utterances(data_cfg.synthetic, seed)]
    for uid, text, path, wav in items:
        text = text.lower() if data_cfg.lowercase else text
        if not text.strip():
            skips["empty_text"] += 1
            continue
        ids = tok.encode(text)
        if tok.uncovered(text, ids) > data_cfg.max_uncovered:
            skips["uncovered_script"] += 1
            log.debug("%s: transcript not covered by the LM tokenizer: %r", uid, text[:60])
            continue
        try:
            n = wav.size if wav is not None else _n_samples(Path(path))
        except Exception as e:  # soundfile: unreadable/missing files are skipped, counted
            skips["unreadable_audio"] += 1
            log.debug("%s: %s", uid, e)
            continue
        if n > data_cfg.max_audio_s * SAMPLE_RATE:
            skips["too_long"] += 1
            continue
        slots = frames_for(n)
        if slots < 1:
            skips["too_short"] += 1
            continue
        if slots + len(ids) + 2 > seq_len:
            skips["too_long"] += 1
            continue
        out.append(Utt(uid, text, ids, n, slots, path, wav, chars.encode(text) if chars else []))
    if skips:
        log.warning("continuous data: %d utterances kept, skipped %s", len(out),
                    ", ".join(f"{v} {k}" for k, v in sorted(skips.items())))
    return out, skips


def load_wav(u: Utt) -> np.ndarray:
    if u.wav is not None:
        return u.wav
    from spiritlm.data.encoders import read_audio

    return read_audio(u.path)


# ---- the feature cache ---------------------------------------------------------------------------
def input_identity(u: Utt) -> dict:
    """What a cached entry was computed from: the size and SHA-256 of the utterance's audio file
    (of its samples, for in-memory audio).

    A content hash rather than (path, size, mtime_ns): audio is rewritten in place with the same
    size (fixed-length clips rendered again, a corpus re-extracted from an archive, which puts
    the old mtimes back, two writes within one tick of the kernel's coarse file clock), and then
    the stat says nothing changed. The hash is one more read of a file that ``read_utterances``
    has just decoded -- far cheaper than encoding it. The path is left out on purpose: the same
    bytes elsewhere (a corpus moved or copied) are the same input and give the same frames, while
    an id pointed at another file, or a file rewritten, gives other bytes."""
    if u.wav is not None:
        x = np.ascontiguousarray(u.wav)
        return {"size": int(x.nbytes), "sha256": hashlib.sha256(x.tobytes()).hexdigest()}
    from spiritlm.data.shards import sha256_file

    try:
        return {"size": Path(u.path).stat().st_size, "sha256": sha256_file(u.path)}
    except FileNotFoundError:
        from spiritlm.config import ConfigError

        raise ConfigError(f"{u.path}: the audio of utterance {u.id} is missing, so its cached features cannot be "
                          "checked against it; restore the file or drop the utterance from the manifest that "
                          "lists it") from None


def encoder_identity(enc_cfg, seed: int = 0) -> dict:
    """What the cached frames depend on: the encoder's kind, layer and files (size + mtime); a
    conformer without a checkpoint also its initialisation seed."""
    ident = {"kind": enc_cfg.kind, "layer": enc_cfg.layer, "path": str(enc_cfg.path),
             "checkpoint": str(enc_cfg.checkpoint)}
    if enc_cfg.kind == "conformer" and not enc_cfg.checkpoint:
        ident["seed"] = seed
    files = []
    for p in (enc_cfg.path, enc_cfg.checkpoint):
        if p and Path(p).exists():
            for f in sorted([Path(p)] if Path(p).is_file() else Path(p).rglob("*")):
                if f.is_file():
                    st = f.stat()
                    files.append([str(f), st.st_size, int(st.st_mtime)])
    ident["files"] = files
    if enc_cfg.kind == "conformer":
        from dataclasses import asdict

        ident["conformer"] = asdict(enc_cfg.conformer)
    return ident


class FeatureCache:
    """Frozen-encoder frames of utterances, in Parquet shards under ``directory``; each entry
    with the identity of the audio it came from (``inputs``, :func:`input_identity`)."""

    def __init__(self, directory: str | Path, identity: Mapping):
        self.dir = Path(directory)
        self.identity = json.loads(json.dumps(identity))
        self.feats: dict[str, np.ndarray] = {}
        self.inputs: dict[str, dict | None] = {}  # None: an entry of a cache that recorded no audio identity

    def _meta(self) -> Path:
        return self.dir / "metadata.json"

    def load(self) -> int:
        """Read the entries as written (a rank that waited for rank 0's :meth:`build` trusts them;
        :meth:`build` checks each against its audio)."""
        import pyarrow.parquet as pq

        if not self._meta().is_file():
            return 0
        meta = json.loads(self._meta().read_text())
        if meta.get("identity") != self.identity:
            log.warning("%s: features of another encoder; they are computed again", self.dir)
            return 0
        for f in sorted(self.dir.glob("features-*.parquet")):
            t = pq.read_table(f)
            n_rows = t.num_rows
            # a cache written before entries recorded their audio has no such columns: its entries
            # are kept as unchecked (None), and build() computes them again
            sizes = t.column("size").to_pylist() if "size" in t.column_names else [None] * n_rows
            hashes = t.column("sha256").to_pylist() if "sha256" in t.column_names else [None] * n_rows
            for uid, n, d, x, size, h in zip(t.column("id").to_pylist(), t.column("n_frames").to_pylist(),
                                             t.column("dim").to_pylist(), t.column("feats").to_numpy(),
                                             sizes, hashes):
                self.feats[uid] = np.asarray(x, dtype=np.float32).reshape(n, d)
                self.inputs[uid] = {"size": size, "sha256": h} if h else None
        return len(self.feats)

    def build(self, utts: Sequence[Utt], encoder, batch: int = 8, progress: bool = True) -> int:
        """Encode what is missing or was cached from other audio (batches of ``batch``), then write
        all shards again atomically. Returns the number of utterances encoded."""
        import pyarrow as pa
        from tqdm.auto import tqdm

        from spiritlm.data.shards import atomic_write_table

        # taken before encoding: a file rewritten while it is encoded is caught on the next run
        now = {u.id: input_identity(u) for u in utts}
        todo = [u for u in utts if u.id not in self.feats or self.inputs.get(u.id) != now[u.id]]
        changed = sum(u.id in self.feats and self.inputs.get(u.id) is not None for u in todo)
        unrecorded = sum(u.id in self.feats and self.inputs.get(u.id) is None for u in todo)
        if changed or unrecorded:
            log.warning("%s: %d cached entries computed again: %d because their audio changed since they were "
                        "cached, %d because the cache did not record their audio", self.dir,
                        changed + unrecorded, changed, unrecorded)
        if todo:
            with torch.no_grad():
                for i in tqdm(range(0, len(todo), batch), desc="encoder features", unit="batch",
                              disable=not progress):
                    chunk = todo[i : i + batch]
                    x, lens = encoder([load_wav(u) for u in chunk])
                    for u, xi, n in zip(chunk, x, lens.tolist()):
                        self.feats[u.id] = xi[:n].float().cpu().numpy()
                        self.inputs[u.id] = now[u.id]
            self.dir.mkdir(parents=True, exist_ok=True)
            ids = sorted(self.feats)
            per = 512
            for s in range(0, len(ids), per):
                part = ids[s : s + per]
                ins = [self.inputs.get(k) or {} for k in part]
                table = pa.table({"id": part, "n_frames": [self.feats[k].shape[0] for k in part],
                                  "dim": [self.feats[k].shape[1] for k in part],
                                  "feats": [self.feats[k].reshape(-1) for k in part],
                                  "size": pa.array([i.get("size") for i in ins], pa.int64()),
                                  "sha256": pa.array([i.get("sha256") for i in ins], pa.string())})
                atomic_write_table(table, self.dir / f"features-{s // per:05d}.parquet")
            tmp = self._meta().with_suffix(".tmp")
            tmp.write_text(json.dumps({"identity": self.identity, "n": len(ids)}, indent=1))
            tmp.replace(self._meta())
        return len(todo)

    def get(self, uid: str) -> torch.Tensor:
        return torch.from_numpy(self.feats[uid])


def cache_dir_for(run_dir: str | Path, enc_cfg, features_dir: str = "", seed: int = 0) -> Path:
    if features_dir:
        return Path(features_dir)
    h = hashlib.sha256(json.dumps(encoder_identity(enc_cfg, seed), sort_keys=True).encode()).hexdigest()[:12]
    return Path(run_dir) / "features" / h


# ---- packing ------------------------------------------------------------------------------------
class ContinuousBatches:
    """Rows of whole utterances (see the module doc); ``next_batch`` is what the trainer calls."""

    def __init__(self, utts: Sequence[Utt], seq_len: int, placement: str, bos: int, eos: int,
                 audio_id: int, pad_id: int = 0, seed: int = 0, rank: int = 0, world: int = 1,
                 cache: FeatureCache | None = None, pack: bool = True):
        if len(utts) < world:
            from spiritlm.config import ConfigError

            raise ConfigError(f"{len(utts)} usable utterances for {world} ranks: add data (the skip counts "
                              "are in the log)")
        self.utts, self.T, self.placement = list(utts), seq_len, placement
        self.bos, self.eos, self.audio_id, self.pad = bos, eos, audio_id, pad_id
        self.seed, self.rank, self.world = seed, rank, world
        self.cache, self.pack = cache, pack
        self.epoch, self.pos = 0, 0
        self.pending = -1  # an utterance that did not fit the last row: it starts the next one
        self._order: tuple[int, np.ndarray] | None = None

    def _next_index(self) -> int:
        if self.pending >= 0:
            i, self.pending = self.pending, -1
            return i
        g = self.pos * self.world + self.rank
        if g >= len(self.utts) - (len(self.utts) % self.world):  # equal shares per rank
            self.epoch, self.pos, g = self.epoch + 1, 0, self.rank
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, np.random.default_rng([self.seed, self.epoch, 11]).permutation(len(self.utts)))
        self.pos += 1
        return int(self._order[1][g])

    def next_row(self) -> tuple[dict, list[int]]:
        ids = np.full(self.T, self.pad, dtype=np.int64)
        tg = np.full(self.T, IGNORE, dtype=np.int64)
        pos = np.zeros(self.T, dtype=np.int64)
        n, members = 0, []
        while True:
            i = self._next_index()
            u = self.utts[i]
            s_ids, s_tg, start = utterance_sequence(u.n_slots, u.text_ids, self.placement, self.bos,
                                                    self.eos, self.audio_id)
            if members and (n + len(s_ids) > self.T or not self.pack):
                self.pending = i
                break
            L = len(s_ids)
            ids[n : n + L], tg[n : n + L], pos[n : n + L] = s_ids, s_tg, np.arange(L)
            members.append((i, n + start))
            n += L
            if not self.pack:
                break
        # padding gets positions from 0: a segment of its own that no real token attends to
        if n < self.T:
            pos[n:] = np.arange(self.T - n)
        return {"ids": ids, "tg": tg, "pos": pos}, members

    def next_batch(self, batch_size: int) -> dict:
        rows, slots, audio, ctc, which = [], [], [], [], []
        for b in range(batch_size):
            r, members = self.next_row()
            rows.append(r)
            for i, start in members:
                u = self.utts[i]
                which.append(i)
                slots.append((b, start, u.n_slots))
                audio.append(self.cache.get(u.id) if self.cache is not None else load_wav(u))
                ctc.append(u.ctc_ids)
        return {"input_ids_BT": torch.from_numpy(np.stack([r["ids"] for r in rows])),
                "targets_BT": torch.from_numpy(np.stack([r["tg"] for r in rows])),
                "position_ids_BT": torch.from_numpy(np.stack([r["pos"] for r in rows])),
                "slots": slots, "ctc_targets": ctc, "utt_index": which,
                "audio": {"feats": audio} if self.cache is not None else {"wavs": audio}}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "pending": self.pending, "seed": self.seed,
                "world": self.world}

    def load_state_dict(self, state: Mapping) -> None:
        if (state["seed"], state["world"]) != (self.seed, self.world):
            from spiritlm.config import ConfigError

            raise ConfigError(f"the checkpoint's data position was saved with seed={state['seed']}, "
                              f"world size={state['world']}: resume with the same settings")
        self.epoch, self.pos, self.pending = state["epoch"], state["pos"], state["pending"]
