"""Shared helpers for the data-stage tests: a tiny synthetic aligned corpus + BPE model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOCAB = "the cat sat on a mat dog ran far away big small red blue green house tree".split()


def make_corpus(root: Path, n: int = 12, seed: int = 0, min_words: int = 4, max_words: int = 20,
                text_docs: int = 10) -> dict:
    """Noise WAVs with exact word times, a manifest, a text corpus and a 320-piece BPE model."""
    import soundfile as sf

    from spiritlm.manifest import Utterance, Word, write_manifest
    from spiritlm.text_tokenizer import train_sentencepiece

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    utts = []
    for i in range(n):
        words = [str(w) for w in rng.choice(VOCAB, int(rng.integers(min_words, max_words)))]
        t, ws = 0.1, []
        for w in words:
            d = float(rng.uniform(0.15, 0.35))
            ws.append(Word(w, round(t, 4), round(t + d, 4)))
            t += d + float(rng.uniform(0, 0.08))
        audio = (rng.standard_normal(int((t + 0.15) * 16000)) * 0.1).astype(np.float32)
        sf.write(root / f"u{i:04d}.wav", audio, 16000)
        utts.append(Utterance(f"u{i:04d}", f"u{i:04d}.wav", len(audio) / 16000, 16000,
                              " ".join(words).capitalize() + ".", f"spk{i % 3}", words=ws))
    write_manifest(root / "manifest.jsonl", utts)
    (root / "text.txt").write_text(
        "\n".join(" ".join(rng.choice(VOCAB, 12)) for _ in range(text_docs)) + "\n")
    tok = root / "tok"
    if not (tok / "tokenizer.model").is_file():
        train_sentencepiece([" ".join(VOCAB)] * 3 + [u.text for u in utts], tok, vocab_size=320)
    return {"root": root, "manifest": root / "manifest.jsonl", "text": root / "text.txt",
            "tokenizer": tok / "tokenizer.model", "utts": utts}


def prepare_overrides(c: dict, out: Path, *extra: str) -> list[str]:
    return [f"output_dir={out}", f"text_tokenizer={c['tokenizer']}",
            f"inputs.manifests=[{c['manifest']}]", f"inputs.text_corpora=[{c['text']}]",
            "chunk_size=4", "progress=false", "shards.target_mb=0.01", "shards.row_group_mb=0.004",
            *extra]


def shard_bytes(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted(Path(out).rglob("shard-*.parquet"))}
