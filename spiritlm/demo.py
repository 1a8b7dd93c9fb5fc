"""``spiritlm demo``: the whole pipeline on the embedded default (the synthetic demo corpus).

Each step is a function of the resolved config and the outputs of earlier steps. A step's output
directory holds ``STEP_DONE.json`` with a hash of everything it depends on; a rerun skips steps
whose hash matches, so the demo is resumable and a second run costs nothing. The time of every
step is measured and printed at the end, next to where the outputs are.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from spiritlm.config import save_config, to_dict
from spiritlm.corpus.demo import DemoCorpusConfig

DONE = "STEP_DONE.json"


@dataclass
class DemoConfig:
    out_dir: str = "runs/demo"
    seed: int = 0
    corpus: DemoCorpusConfig = field(default_factory=lambda: DemoCorpusConfig(out_dir=""))
    text_vocab_size: int = 2000  # SentencePiece BPE pieces trained on the demo text corpus


@dataclass
class StepResult:
    name: str
    seconds: float
    cached: bool
    outputs: dict[str, Any]


class Pipeline:
    """Runs named steps in order with hash-based caching and timing."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.results: list[StepResult] = []

    def run(self, name: str, deps: Any, fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        step_dir = self.out_dir / name
        key = hashlib.sha256(json.dumps(to_dict(deps), sort_keys=True, default=str).encode()).hexdigest()
        done = step_dir / DONE
        t0 = time.perf_counter()
        if done.is_file():
            rec = json.loads(done.read_text())
            if rec.get("key") == key:
                self.results.append(StepResult(name, time.perf_counter() - t0, True, rec["outputs"]))
                print(f"[{name}] cached ({rec['seconds']:.1f} s when built)")
                return rec["outputs"]
        print(f"[{name}] running ...", flush=True)
        step_dir.mkdir(parents=True, exist_ok=True)
        outputs = fn(step_dir)
        seconds = time.perf_counter() - t0
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "seconds": seconds, "outputs": outputs}, indent=1, default=str))
        tmp.replace(done)  # written last: a killed step reruns
        self.results.append(StepResult(name, seconds, False, outputs))
        print(f"[{name}] done in {seconds:.1f} s")
        return outputs

    def report(self) -> str:
        lines = ["| step | time (s) | cached |", "|---|---:|---|"]
        for r in self.results:
            lines.append(f"| {r.name} | {r.seconds:.1f} | {'yes' if r.cached else 'no'} |")
        total = sum(r.seconds for r in self.results)
        lines.append(f"| **total** | {total:.1f} | |")
        return "\n".join(lines)


def _corpus_step(cfg: DemoConfig, step_dir: Path) -> dict[str, Any]:
    from spiritlm.corpus.demo import build_demo_corpus

    corpus = build_demo_corpus(_corpus_cfg(cfg, step_dir))
    return {"root": str(corpus.root), "manifest": str(corpus.manifest_path),
            "text_corpus": str(corpus.text_corpus_path), "stats": corpus.stats}


def _corpus_cfg(cfg: DemoConfig, step_dir: Path) -> DemoCorpusConfig:
    from dataclasses import replace

    return replace(cfg.corpus, out_dir=cfg.corpus.out_dir or str(step_dir / "corpus"))


def _text_tokenizer_step(cfg: DemoConfig, corpus: dict, step_dir: Path) -> dict[str, Any]:
    from spiritlm.text_tokenizer import SpiritTokenizer, train_sentencepiece

    texts = [json.loads(line)["text"] for line in open(corpus["text_corpus"], encoding="utf-8")]
    sp = train_sentencepiece(texts, step_dir / "sp", vocab_size=cfg.text_vocab_size)
    tok = SpiritTokenizer(sp)
    out = tok.save_pretrained(step_dir / "tokenizer")
    return {"dir": str(out), "base_vocab_size": tok.layout.base_vocab_size, "vocab_size": len(tok)}


def run_demo(cfg: DemoConfig) -> Pipeline:
    out = Path(cfg.out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.resolved.yaml")
    pipe = Pipeline(out)
    corpus = pipe.run("corpus", cfg.corpus, lambda d: _corpus_step(cfg, d))
    text_tok = pipe.run(
        "text_tokenizer", [cfg.text_vocab_size, corpus["stats"]],
        lambda d: _text_tokenizer_step(cfg, corpus, d),
    )
    _show_examples(corpus, text_tok)
    print("\n" + pipe.report())
    print(f"\noutputs: {out}")
    return pipe


def _show_examples(corpus: dict, text_tok: dict) -> None:
    from spiritlm.manifest import read_manifest
    from spiritlm.text_tokenizer import SpiritTokenizer

    tok = SpiritTokenizer.from_pretrained(text_tok["dir"])
    utt = read_manifest(corpus["manifest"])[0]
    ids = tok.encode_segments([("text", utt.text)])
    print(f"\nexample utterance {utt.id} ({utt.duration:.2f} s, voice {utt.speaker}): {utt.text!r}")
    print(f"  words: " + " ".join(f"{w.word}@{w.start:.2f}-{w.end:.2f}" for w in utt.words[:6]) + " ...")
    print(f"  text ids: {ids[:16]} ... ({len(ids)} tokens)")
