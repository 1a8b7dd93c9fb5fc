"""Few-shot speech classification in the paper's prompt format, and its mini version.

Prompt (k shots per class, shuffled with the seed; the test item is never among its shots)::

    [Speech]<units of shot 1>[Text] label_1\\n[Speech]<units of shot 2>[Text] label_2\\n ...
    [Speech]<units of the item>[Text]

Each candidate label is then scored as the continuation ``label\\n`` (the newline closes the
label, so "past" and "past event" are told apart) by the suite's :class:`Scorer` -- one
log-likelihood per label, all labels of an item share the prompt's computation -- and the
prediction is the argmax (sum of log-probs by default; ``normalize = true`` for per-token
means). Closed-set ranking rather than free generation: every output is a valid label and the
score is deterministic.

Data layout (a real intent-classification set, e.g. SLURP or Speech Commands, converted to it)::

    <dir>/test.jsonl     {"id": "...", "audio_path": "audio/0001.wav", "label": "set_alarm"}
    <dir>/shots.jsonl    same fields; the pool the k shots per class are drawn from (a train split)

``audio_path`` relative to the manifest. The label text shown to the model is the label with
``_`` as spaces unless ``label_text`` maps it (``{set_alarm = "set an alarm"}``). SLURP: one line
per recording with ``label = intent``; Speech Commands: ``label`` = the keyword folder.

Mini version (``build_mini_speech_cls``): sentence type from the demo grammar's templates --
existential ("there are three cups in the kitchen"), description ("the lamp is green") and past
("the dog slept near the river yesterday") -- spoken by espeak, held-out sentences only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import random
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from spiritlm.eval.zerospeech import LayoutError

MINI_CLS_VERSION = 1
# grammar template -> label text of the mini task
MINI_CLASSES = {"there": "existence", "copula": "description", "past": "past"}


@dataclass
class SpeechClsConfig:
    manifest: str = ""  # test JSONL {id, audio_path, label}; "" = off
    shots_manifest: str = ""  # shot pool JSONL (same fields); "" = the test manifest, minus the item
    n_shots: int = 2  # shots per class (the paper's k)
    label_text: dict[str, str] = field(default_factory=dict)  # label -> text in the prompt
    normalize: bool = False  # False: summed log-prob of "label\n"; True: per token
    max_items: int = 0
    seed: int = 0
    mini: bool = False  # build the mini sentence-type set at <data_root>/<dir of manifest>
    mini_sizes: dict[str, int] = field(default_factory=dict)  # test / shots per class, voices


def read_cls_manifest(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path} not found: speech classification reads a JSONL with id, audio_path, label "
                          "(eval/README.md, Few-shot speech classification)")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        wav, label = r.get("audio_path") or r.get("wav_path"), r.get("label")
        if not wav or label in (None, ""):
            raise LayoutError(f"{path}:{i}: needs 'audio_path' and 'label'")
        p = Path(wav)
        out.append({"id": str(r.get("id", i)), "wav": p if p.is_absolute() else path.parent / p,
                    "label": str(label)})
    if not out:
        raise LayoutError(f"{path}: empty manifest")
    return out


def pick_shots(pool: list[dict], item: dict, labels: list[str], k: int, rng: random.Random) -> list[dict]:
    """k shots per class (never the item itself), in a seeded random order."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for u in pool:
        if u["id"] != item["id"] or u["wav"] != item["wav"]:
            by_label[u["label"]].append(u)
    shots = []
    for lab in labels:
        cands = by_label.get(lab, [])
        if len(cands) < k:
            raise LayoutError(f"only {len(cands)} shot(s) of class {lab!r} for {k} per class: lower "
                              f"speech_cls.n_shots or add shots (speech_cls.shots_manifest)")
        shots += rng.sample(cands, k)
    rng.shuffle(shots)
    return shots


def run_speech_cls(cfg: SpeechClsConfig, manifest: Path, shots_manifest: Path | None, scorer) -> dict:
    """Accuracy of the label ranking over the test manifest (+ per class, chance, items)."""
    from spiritlm.components.scoring import Request

    test = read_cls_manifest(manifest)[: cfg.max_items or None]
    pool = read_cls_manifest(shots_manifest) if shots_manifest else read_cls_manifest(manifest)
    labels = sorted({u["label"] for u in pool})
    unknown = sorted({u["label"] for u in test} - set(labels))
    if unknown:
        raise LayoutError(f"test label(s) {unknown} have no shots in {shots_manifest or manifest}")
    text = {lab: cfg.label_text.get(lab, lab.replace("_", " ")) for lab in labels}
    rng = random.Random(cfg.seed)
    reqs = []
    for u in test:
        ctx = []
        for s in pick_shots(pool, u, labels, cfg.n_shots, rng):
            ctx += [("speech", s["wav"]), ("text", text[s["label"]] + "\n")]
        ctx.append(("speech", u["wav"]))
        reqs += [Request(ctx, [("text", text[lab] + "\n")]) for lab in labels]
    scores = scorer.score(reqs)
    items, per_class = [], defaultdict(list)
    for i, u in enumerate(test):
        sc = scores[i * len(labels): (i + 1) * len(labels)]
        vals = [s.value(cfg.normalize) for s in sc]
        pred = labels[max(range(len(labels)), key=vals.__getitem__)]
        ok = float(pred == u["label"])
        per_class[u["label"]].append(ok)
        items.append({"id": u["id"], "label": u["label"], "pred": pred, "score": ok,
                      "logliks": {lab: s.logprob for lab, s in zip(labels, sc)},
                      "n_tokens": {lab: s.n_tokens for lab, s in zip(labels, sc)}})
    n = len(items)
    return {"task": "speech_cls", "shots_per_class": cfg.n_shots, "labels": labels, "n": n, "complete": True,
            "accuracy": sum(it["score"] for it in items) / n, "chance": 1.0 / len(labels),
            "by_class": {lab: {"n": len(v), "accuracy": sum(v) / len(v)} for lab, v in sorted(per_class.items())},
            "normalize": cfg.normalize, "items": items}


# ---- mini version (demo) ---------------------------------------------------------------------
MINI_DEFAULTS = {"test": 10, "shots": 6, "voices": 2}  # per class


def build_mini_speech_cls(out_dir: str | Path, seed: int = 0, sizes: dict | None = None,
                          exclude: set[str] | frozenset[str] = frozenset(), processes: int = 2) -> dict[str, Path]:
    """Mini sentence-type classification: ``<out_dir>/{test.jsonl, shots.jsonl, audio/}``.

    Held-out grammar sentences only (``split_of(text) == "heldout"``), none in ``exclude``
    (e.g. the other mini benchmarks' ``heldout_texts.txt``); test and shot sentences distinct.
    Deterministic in (seed, sizes, exclude); a complete build with the same hash is reused."""
    from spiritlm.corpus.grammar import GRAMMAR_VERSION

    sz = dict(MINI_DEFAULTS)
    bad = set(sizes or {}) - set(sz)
    if bad:
        raise ValueError(f"unknown speech_cls mini size key(s) {sorted(bad)}; valid: {sorted(sz)}")
    sz.update(sizes or {})
    out = Path(out_dir)
    ident = {"version": MINI_CLS_VERSION, "grammar": GRAMMAR_VERSION, "seed": seed, "sizes": sz,
             "exclude": hashlib.sha256("\n".join(sorted(exclude)).encode()).hexdigest()[:16]}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    paths = {"test": out / "test.jsonl", "shots": out / "shots.jsonl", "root": out}
    marker = out / "COMPLETE.json"
    done = lambda: marker.is_file() and json.loads(marker.read_text()).get("hash") == h  # noqa: E731
    if done():
        return paths
    out.parent.mkdir(parents=True, exist_ok=True)
    # evaluations run side by side may build the same set at once: one builds, the others wait
    # and reuse it (never deleting a finished build another process may be reading)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done():
            _build_mini_cls(out, h, ident, sz, seed, exclude, processes)
    return paths


def _build_mini_cls(out: Path, h: str, ident: dict, sz: dict, seed: int, exclude, processes: int) -> None:
    from spiritlm.corpus.grammar import Grammar
    from spiritlm.eval.mini import VOICES, _heldout, _write_jsonl
    from spiritlm.eval.mini_synth import Job, SynthPool

    tmp = out.with_name(out.name + ".tmp-build")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "audio").mkdir(parents=True)
    g = Grammar(f"spiritlm-mini/{seed}/speech_cls")
    voices = VOICES[: max(1, sz["voices"])]
    used: set[str] = set(exclude)
    jobs, rows = [], {"test": [], "shots": []}
    k = 0
    for part in ("test", "shots"):
        for template, label in MINI_CLASSES.items():
            for _ in range(sz[part]):
                def draw(t=template):
                    while True:
                        s, tt = g.tagged_sentence()
                        if tt == t:
                            return s, s
                text = _heldout(draw, used)
                rel = f"audio/{k:04d}.wav"
                jobs.append(Job(text, tmp / rel, voices[k % len(voices)]))
                rows[part].append({"id": f"c{k:04d}", "audio_path": rel, "label": label, "text": text,
                                   "template": template, "speaker": voices[k % len(voices)]})
                k += 1
    pool = SynthPool(seed, processes, total=len(jobs))
    try:
        pool.run(jobs)
    finally:
        pool.close()
    _write_jsonl(tmp / "test.jsonl", rows["test"])
    _write_jsonl(tmp / "shots.jsonl", rows["shots"])
    (tmp / "COMPLETE.json").write_text(json.dumps({"hash": h, **ident}, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)  # an older build (another hash)
    tmp.rename(out)
