"""Mini benchmarks from the demo grammar and espeak, in exactly the real layouts.

    paths = build_mini_benchmarks("data/mini_bench", seed=0, sizes={"swuggy": 40})

Layout of ``out_dir`` (each part readable by the same code as the real set)::

    zerospeech/lexical/dev/{gold.csv,<stem>.wav}     mini-sWUGGY (ZeroSpeech 2021 columns)
    zerospeech/syntactic/dev/{gold.csv,<stem>.wav}   mini-sBLIMP (type = grammar phenomenon)
    storycloze/{text.csv,speech/,cross/}             mini-StoryCloze  (CSV / <2k>_<id>_correct.wav / <k>_mutual...)
    topic_storycloze/{text.csv,speech/,cross/}       mini-Topic-StoryCloze
    stsp/{test.jsonl,fewshot_T2T.jsonl,audio/}       mini-STSP (happy/sad/default espeak styles)
    fewshot/{asr_test.jsonl,shots.jsonl,audio/}      mini few-shot ASR/TTS
    heldout_texts.txt                                every text used, one per line (exclusion list)
    COMPLETE.json                                    hash of (version, seed, sizes, voices, excluded texts)
                                                     and the sWUGGY pairs replaced; written last

Held out: every sentence/story/sentiment item is drawn until
``spiritlm.corpus.grammar.split_of(text) == "heldout"``; the demo text corpus never contains
those documents. Real words of mini-sWUGGY are (by design) known words; non-words and
ungrammatical sentences never occur in training. Deterministic: a pure function of ``seed`` and
``sizes``; a complete build with the same hash is reused; builds go to a temporary directory
renamed into place at the end.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from spiritlm import stats
from spiritlm.eval.mini_synth import Job, SynthPool

log = logging.getLogger(__name__)

MINI_VERSION = 2  # 2: sWUGGY non-words that sound exactly like their word are redrawn
DEFAULT_SIZES = {"swuggy": 40, "sblimp": 36, "storycloze": 24, "topic_storycloze": 24, "stsp": 30,
                 "stsp_fewshot": 15, "asr": 12, "asr_shots": 20, "voices": 2}
VOICES = ("en-us", "en-us+f2", "en-us+m3", "en-us+m1")
STYLES = {"positive": ("happy", 190, 75, 90), "negative": ("sad", 130, 25, 20),
          "neutral": ("default", 165, 50, 50)}


def _stem(*parts) -> str:
    h = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=16).hexdigest()
    return "m" + h[:10]


def _heldout(draw, used: set, tries: int = 5000):
    from spiritlm.corpus.grammar import split_of

    for _ in range(tries):
        item, text = draw()
        if text not in used and split_of(text) == "heldout":
            used.add(text)
            return item
    raise RuntimeError("could not draw a held-out item; the grammar's held-out fraction may be 0")


def word_frequencies(seed: int = 0, n_docs: int = 3000) -> Counter:
    """Word counts in the first ``n_docs`` documents of the demo text corpus (frequency bands)."""
    from spiritlm.corpus.demo import DemoCorpusConfig, iter_text_documents
    from spiritlm.corpus.grammar import words_of

    gen = iter_text_documents(DemoCorpusConfig(seed=seed))
    c: Counter = Counter()
    for _ in range(n_docs):
        c.update(w.lower() for w in words_of(next(gen)[0]))
    return c


def _build_zerospeech(out: Path, g, sizes, voices, synth, pool, used) -> list[str]:
    """Writes mini-sWUGGY and mini-sBLIMP; returns the word/non-word pairs rejected because the
    non-word sounds exactly like its word (replaced by the next pair drawn)."""
    freq = word_frequencies()
    lex = out / "zerospeech" / "lexical" / "dev"
    rows, seen, k, replaced = [], set(), 0, []
    while k < sizes["swuggy"]:  # the wav names depend on k: synthesise candidates, then name them
        cands = []
        while len(cands) < sizes["swuggy"] - k:
            word, non = g.wuggy_pair()
            if word in seen or not freq.get(word.lower()):  # in-vocabulary words only
                continue
            seen.add(word)
            cands.append([(v, text, correct, Job(text, None, v)) for v in voices
                          for text, correct in ((word, 1), (non, 0))])
        pool.run([c[3] for block in cands for c in block], strict=False)
        for block in cands:
            if any(c[3].failed for c in block):  # espeak could not say it: draw another pair
                continue
            word = block[0][1]
            if _sounds_like_its_word(block):  # no model could tell them apart: draw another pair
                replaced.append(f"{word}/{block[1][1]}")
                continue
            for v, text, correct, job in block:
                stem = _stem("lex", k, v, correct)
                pool.write(job, lex / f"{stem}.wav")
                rows.append({"id": k, "filename": stem, "voice": v, "frequency": freq.get(word, 0),
                             "word": text, "phones": " ".join(job.phones), "length": len(job.phones),
                             "correct": correct})
            k += 1
    _write_csv(lex / "gold.csv", ["id", "filename", "voice", "frequency", "word", "phones", "length", "correct"], rows)
    from spiritlm.corpus.grammar import PHENOMENA

    syn = out / "zerospeech" / "syntactic" / "dev"
    rows = []
    for k in range(sizes["sblimp"]):
        ph = PHENOMENA[k % len(PHENOMENA)]
        pair = _heldout(lambda: (lambda p: (p, p.good))(g.minimal_pair(ph)), used)
        for v in voices:
            for text, correct in ((pair.good, 1), (pair.bad, 0)):
                stem = _stem("syn", k, v, correct)
                synth(text, syn / f"{stem}.wav", v)
                rows.append({"id": k, "filename": stem, "voice": v, "type": pair.phenomenon,
                             "subtype": pair.phenomenon, "transcription": text, "correct": correct})
    _write_csv(syn / "gold.csv", ["id", "filename", "voice", "type", "subtype", "transcription", "correct"], rows)
    return replaced


def _sounds_like_its_word(block) -> bool:
    """True when, in some voice, the non-word's espeak phones or audio equal its word's.

    espeak reads some spellings exactly as the word (eight/aight, birds/bourds: same phones, same
    samples) or with another phone label for the same sound (warm/woarm: 'O@' vs 'o@', same
    samples). Such a pair scores 0.5 for every model, so it measures nothing."""
    by_voice: dict[str, dict[int, Job]] = {}
    for v, _text, correct, job in block:
        by_voice.setdefault(v, {})[correct] = job
    for jobs in by_voice.values():
        w, n = jobs[1], jobs[0]
        if w.phones == n.phones or (w.audio is not None and n.audio is not None
                                    and np.array_equal(w.audio, n.audio)):
            return True
    return False


def _build_storycloze(out: Path, g, n: int, topic: bool, voices, synth, used) -> None:
    rows = []
    for k in range(n):
        st = _heldout(lambda: (lambda s: (s, s.text))(g.story()), used)
        bad = st.other_topic_ending if topic else st.wrong_ending
        ctx = " ".join(st.context)
        sid = f"s{k:04d}"
        v = voices[k % len(voices)]
        synth(f"{ctx} {st.ending}", out / "speech" / f"{2 * k}_{sid}_correct.wav", v)
        synth(f"{ctx} {bad}", out / "speech" / f"{2 * k + 1}_{sid}_incorrect.wav", v)
        for part, text in (("mutual", ctx), ("correct", st.ending), ("incorrect", bad)):
            synth(text, out / "cross" / f"{k}_{part}.wav", v)
            (out / "cross" / f"{k}_{part}.txt").write_text(text + "\n", encoding="utf-8")
        right = 1 + (k % 2)
        e1, e2 = (st.ending, bad) if right == 1 else (bad, st.ending)
        rows.append({"InputStoryid": sid, **{f"InputSentence{j + 1}": s for j, s in enumerate(st.context)},
                     "RandomFifthSentenceQuiz1": e1, "RandomFifthSentenceQuiz2": e2, "AnswerRightEnding": right})
    _write_csv(out / "text.csv", ["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3",
                                  "InputSentence4", "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2",
                                  "AnswerRightEnding"], rows)


def _build_stsp(out: Path, g, sizes, voices, synth, used) -> None:
    labels = ("positive", "negative", "neutral")
    recs, shots = [], []
    for k in range(sizes["stsp"] + sizes["stsp_fewshot"]):
        label = labels[k % 3]
        s = _heldout(lambda: (lambda x: (x, x.text))(g.sentiment_sentence(label)), used)
        emotion, rate, pitch, rng_ = STYLES[label]
        if k < sizes["stsp"]:
            v = voices[k % len(voices)]
            rel = f"audio/{k:04d}_{emotion}.wav"
            synth(s.text, out / rel, v, rate, pitch, rng_)
            recs.append({"id": k, "wav_path": rel, "asr": s.text, "sentiment": label, "emotion": emotion,
                         "split": "test", "speaker": v})
        else:
            words = s.text.split()
            half = max(1, len(words) // 2)
            shots.append({"id": f"fs{k}", "prompt": "[Text]" + " ".join(words[:half]),
                          "generation": " " + " ".join(words[half:]), "sentiment": label})
    _write_jsonl(out / "test.jsonl", recs)
    _write_jsonl(out / "fewshot_T2T.jsonl", shots)


def _build_fewshot(out: Path, g, sizes, voices, synth, used) -> None:
    recs = []
    for k in range(sizes["asr"] + sizes["asr_shots"]):
        text = _heldout(lambda: (lambda s: (s, s))(g.sentence()), used)
        v = voices[k % len(voices)]
        rel = f"audio/{k:04d}.wav"
        synth(text, out / rel, v)
        recs.append({"id": f"u{k:04d}", "audio_path": rel, "text": text, "speaker": v})
    _write_jsonl(out / "asr_test.jsonl", recs[: sizes["asr"]])
    _write_jsonl(out / "shots.jsonl", recs[sizes["asr"]:])


def _write_csv(path: Path, cols, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def _write_jsonl(path: Path, recs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")


def mini_paths(out_dir: str | Path) -> dict[str, Path]:
    o = Path(out_dir)
    return {"zerospeech": o / "zerospeech", "storycloze_text": o / "storycloze" / "text.csv",
            "storycloze_speech": o / "storycloze" / "speech", "storycloze_cross": o / "storycloze" / "cross",
            "topic_storycloze_text": o / "topic_storycloze" / "text.csv",
            "topic_storycloze_speech": o / "topic_storycloze" / "speech",
            "topic_storycloze_cross": o / "topic_storycloze" / "cross",
            "stsp_manifest": o / "stsp" / "test.jsonl", "stsp_fewshot_T2T": o / "stsp" / "fewshot_T2T.jsonl",
            "asr_manifest": o / "fewshot" / "asr_test.jsonl", "shots_manifest": o / "fewshot" / "shots.jsonl",
            "heldout_texts": o / "heldout_texts.txt", "root": o}


def build_mini_benchmarks(out_dir: str | Path, seed: int = 0, sizes: dict | None = None,
                          processes: int = 2, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Path]:
    """Build (or reuse) the mini benchmarks; returns the paths of every part (see module doc).

    Items are drawn serially (seeded); the wavs are then synthesised ``processes`` at a time, each
    in a fresh espeak fork, so the output bytes do not depend on ``processes`` (not hashed).
    ``exclude``: held-out texts no item of this draw may use (the ``heldout_texts.txt`` of other
    draws), so a test draw shares no sentence or story with the dev draw. sWUGGY words are known
    words by design and may recur across draws."""
    from spiritlm.corpus.grammar import GRAMMAR_VERSION, Grammar

    sz = dict(DEFAULT_SIZES)
    unknown = set(sizes or {}) - set(sz)
    if unknown:
        raise ValueError(f"unknown mini benchmark size key(s) {sorted(unknown)}; valid: {sorted(sz)}")
    sz.update(sizes or {})
    out = Path(out_dir)
    ident = {"version": MINI_VERSION, "grammar": GRAMMAR_VERSION, "seed": seed, "sizes": sz}
    if exclude:
        ident["exclude"] = hashlib.sha256("\n".join(sorted(exclude)).encode()).hexdigest()[:16]
    h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    marker = out / "COMPLETE.json"
    if marker.is_file() and json.loads(marker.read_text()).get("hash") == h:
        return mini_paths(out)
    tmp = out.with_name(out.name + ".tmp-build")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    voices = VOICES[: max(1, sz["voices"])]
    jobs: list[Job] = []

    def synth(text: str, path: Path, *style) -> None:  # plan a wav; all are synthesised at the end
        path.parent.mkdir(parents=True, exist_ok=True)
        jobs.append(Job(text, path, *style))

    n_wavs = (2 * len(voices) * (sz["swuggy"] + sz["sblimp"]) + 5 * (sz["storycloze"] + sz["topic_storycloze"])
              + sz["stsp"] + sz["asr"] + sz["asr_shots"])
    pool = SynthPool(seed, processes, total=n_wavs)
    used: set[str] = set(exclude)
    g = lambda part: Grammar(f"spiritlm-mini/{seed}/{part}")  # noqa: E731
    try:
        replaced = _build_zerospeech(tmp, g("zerospeech"), sz, voices, synth, pool, used)
        _build_storycloze(tmp / "storycloze", g("sc"), sz["storycloze"], False, voices, synth, used)
        _build_storycloze(tmp / "topic_storycloze", g("tsc"), sz["topic_storycloze"], True, voices, synth, used)
        _build_stsp(tmp / "stsp", g("stsp"), sz, voices, synth, used)
        _build_fewshot(tmp / "fewshot", g("asr"), sz, voices, synth, used)
        pool.run(jobs)
    finally:
        pool.close()
    if replaced:
        log.info("mini-sWUGGY (seed %d): %d pair(s) replaced, the non-word sounding exactly like its "
                 "word: %s", seed, len(replaced), ", ".join(replaced))
    (tmp / "heldout_texts.txt").write_text("".join(t + "\n" for t in sorted(used - set(exclude))),
                                           encoding="utf-8")
    (tmp / "COMPLETE.json").write_text(json.dumps({"hash": h, **ident, "swuggy_replaced": replaced},
                                                  indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return mini_paths(out)


def ending_length_balance(task_root: str | Path) -> dict:
    """Do the correct and incorrect endings of a (Topic-)StoryCloze draw differ in length?

    Reads ``text.csv`` and ``cross/<k>_{correct,incorrect}.wav`` under ``task_root`` and returns
    the mean length of each in words and seconds, and the accuracy (with an exact two-sided p vs
    50%) of two scorers that see only length: "the shorter ending is right", in words and in
    seconds. A length confound would show as one of them far from 50%; the grammar draws the
    incorrect ending (another topic's ending, same arc) from the same distribution as the correct
    one, so none is expected."""
    import soundfile as sf

    root = Path(task_root)
    with open(root / "text.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    words, secs = [], []
    for k, r in enumerate(rows):
        e1, e2 = r["RandomFifthSentenceQuiz1"], r["RandomFifthSentenceQuiz2"]
        good, bad = (e1, e2) if r["AnswerRightEnding"] == "1" else (e2, e1)
        words.append((len(good.split()), len(bad.split())))
        secs.append(tuple(sf.info(str(root / "cross" / f"{k}_{part}.wav")).duration
                          for part in ("correct", "incorrect")))
    out: dict = {"n": len(rows)}
    for name, pairs in (("words", np.array(words, float)), ("seconds", np.array(secs, float))):
        if not len(pairs):
            continue
        shorter_right = int(np.count_nonzero(pairs[:, 0] < pairs[:, 1]))
        longer_right = int(np.count_nonzero(pairs[:, 0] > pairs[:, 1]))
        ties = len(pairs) - shorter_right - longer_right
        out[name] = {"correct_mean": float(pairs[:, 0].mean()), "incorrect_mean": float(pairs[:, 1].mean()),
                     "shorter_is_right": (shorter_right + 0.5 * ties) / len(pairs),
                     "p": stats.binomial_test(shorter_right, shorter_right + longer_right, 0.5)}
    return out
