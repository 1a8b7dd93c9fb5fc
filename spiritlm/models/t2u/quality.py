"""How good are a T2U model's units? Measured on held-out aligned records no training saw.

    spiritlm t2u report --t2u runs/t2u/run/hf --shards HELDOUT/aligned --lm LM_EXPORT --vocoder VOCODER --out DIR

One window per held-out record (words drawn as the interleaving's speech spans are: ``span``, by
default 5..15 words, seeded by the record id), and for each window two unit sequences: the real
ones (what interleaving writes for these words, ``pairs.window_units``) and the T2U model's, from
the window's text alone. Three numbers, each for both:

* **unit edit distance**: Levenshtein distance of the T2U sequence to the real one over the real
  one's length (the corpus rate: errors over all windows / real units over all windows, the WER
  rule of ``spiritlm.stats``, units as words);
* **speech LM NLL**: a unit LM's (``--lm``, e.g. the demo's interleaved model) negative
  log-likelihood per unit of ``[Speech] units`` -- do the T2U units read like speech to a model
  trained on real units? Lower is more predictable, not necessarily better (a T2U model that
  writes the most likely units can beat real speech here); read it beside the other two;
* **vocoder WER**: pocketsphinx on the CPU vocoder's audio of each sequence (``--vocoder``, a
  ``spiritlm vocoder fit`` output trained on the same units), against the window's words.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from spiritlm.config import ConfigError
from spiritlm.data.interleave import SpanDist
from spiritlm.models.t2u.decode import T2U, DecodeConfig
from spiritlm.models.t2u.pairs import window, window_text, window_units


@dataclass
class QualityConfig:
    t2u: str = ""
    shards: str = ""  # held-out aligned shards
    lm: str = ""
    vocoder: str = ""
    max_windows: int = 200
    seed: int = 0
    mode: Literal["greedy", "sample"] = "sample"
    span: SpanDist = field(default_factory=lambda: SpanDist("uniform", 5, 15))


def heldout_records(shards: str, n: int):
    """The first ``n`` aligned records of a shard folder, in file order."""
    import pyarrow.parquet as pq

    from spiritlm.data.reader import verified_shard_files
    from spiritlm.data.shards import row_to_record

    recs = []
    for f in verified_shard_files(shards):
        for row in pq.read_table(f).to_pylist():
            if row["kind"] == "aligned" and row["words"]:
                recs.append(row_to_record(row))
                if len(recs) >= n:
                    return recs
    if not recs:
        raise ConfigError(f"{shards}: no aligned record there; give the data stage's aligned/ folder of held-out data")
    return recs


def unit_error_rate(real: list[np.ndarray], hyp: list[np.ndarray]) -> dict:
    from spiritlm.stats import wer

    out = wer([" ".join(map(str, r.tolist())) for r in real], [" ".join(map(str, h.tolist())) for h in hyp])
    return {"unit_edit_rate": out["wer"], "real_units": out["words"]}


@torch.no_grad()
def lm_nll(lm_dir: str, named_seqs: dict[str, list[np.ndarray]], layout, batch: int = 16) -> dict[str, list[float]]:
    """Per-sequence mean NLL (nats per unit) of ``BOS [Speech] units`` under a unit LM (loaded once
    for every set of sequences)."""
    from spiritlm.models import load_model_dir

    _, model, tok = load_model_dir(lm_dir)
    lay = tok.layout
    if (lay.base_vocab_size, lay.hubert_size, lay.unit_family) != (layout.base_vocab_size, layout.hubert_size,
                                                                   layout.unit_family):
        raise ConfigError(f"--lm {lm_dir}: its vocabulary ({lay.base_vocab_size} text + {lay.hubert_size} "
                          f"{lay.unit_family} units) is not the T2U model's ({layout.base_vocab_size} + "
                          f"{layout.hubert_size} {layout.unit_family}); give a unit LM trained on the same units")
    return {name: _nll(model, tok.bos_id, lay.speech_id, seqs, batch) for name, seqs in named_seqs.items()}


def _nll(model, bos_id: int, speech_id: int, seqs: list[np.ndarray], batch: int) -> list[float]:
    out: list[float] = []
    for b in range(0, len(seqs), batch):
        rows = [np.concatenate(([bos_id, speech_id], s)) for s in seqs[b:b + batch]]
        T = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), T), dtype=torch.long)
        att = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.as_tensor(r)
            att[i, :len(r)] = 1
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=att).logits.float(), -1)
        tgt = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        for i, r in enumerate(rows):
            n = len(r) - 2  # the units (the [Speech] marker is given)
            out.append(float(-tgt[i, 1:1 + n].mean()) if n else float("nan"))
    return out


def vocoder_wer(voc_dir: str, named_seqs: dict[str, list[np.ndarray]], texts: list[str], layout,
                speakers) -> dict[str, dict]:
    """Pocketsphinx's WER against ``texts`` of each set of sequences vocoded (one vocoder, one ASR)."""
    from spiritlm.stats import asr_wer
    from spiritlm.vocab import ids_to_units
    from spiritlm.vocoder.asr import PocketsphinxASR
    from spiritlm.vocoder.vocoder import Vocoder

    voc = Vocoder.load(voc_dir)
    asr = PocketsphinxASR()
    out = {}
    for name, seqs in named_seqs.items():
        hyps = []
        for s, spk in zip(seqs, speakers):
            wav, _ = voc.decode(ids_to_units(s, layout), speaker=spk if spk in voc.speakers else None,
                                deduplicated=True)
            hyps.append(asr(wav) if len(wav) else "")
        out[name] = asr_wer(texts, hyps)
    return out


def quality_report(cfg: QualityConfig, out_dir: str | Path) -> dict:
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t2u = T2U(cfg.t2u)
    recs = heldout_records(cfg.shards, cfg.max_windows)
    from spiritlm.data.reader import ShardReader

    reader = ShardReader(cfg.shards, shuffle=False)
    if reader.meta.get("tokenizer_sha256") != t2u.meta.get("tokenizer_sha256") or \
            reader.meta.get("speech_encoder") != t2u.meta.get("speech_encoder"):
        raise ConfigError(f"--shards {cfg.shards}: made with another text tokenizer or speech encoder "
                          f"({reader.meta.get('speech_encoder')}) than the T2U model's training shards "
                          f"({t2u.meta.get('speech_encoder')}); measure on held-out shards of the same data stage")
    wins = [window(r, cfg.span, cfg.seed, 0) for r in recs]
    real = window_units(recs, wins, reader.interleaver)  # the shards' own: their layout and frame rates
    keep = [i for i, u in enumerate(real) if u is not None and not t2u.unseen_ids(window_text(recs[i], *wins[i])).size]
    texts = [" ".join(recs[i].words[wins[i][0]:wins[i][0] + wins[i][1]]) for i in keep]
    spans = [window_text(recs[i], *wins[i]) for i in keep]
    real = [real[i] for i in keep]
    t1 = time.perf_counter()
    hyp, cut = t2u.generate(spans, cfg.seed, DecodeConfig(mode=cfg.mode), [wins[i][1] for i in keep])
    decode_s = time.perf_counter() - t1
    rows = {"real": {"units_per_word": sum(map(len, real)) / max(1, sum(wins[i][1] for i in keep))},
            "t2u": {"units_per_word": sum(map(len, hyp)) / max(1, sum(wins[i][1] for i in keep)),
                    "cut": int(cut.sum()), **unit_error_rate(real, hyp)}}
    both = {"real": real, "t2u": hyp}
    if cfg.lm:
        for name, nll in lm_nll(cfg.lm, both, t2u.layout).items():
            rows[name]["lm_nll"] = float(np.nanmean(nll))
    if cfg.vocoder:
        speakers = [recs[i].speaker for i in keep]
        for name, w in vocoder_wer(cfg.vocoder, both, texts, t2u.layout, speakers).items():
            rows[name]["vocoder_wer"] = w["wer"]
    report = {"t2u": cfg.t2u, "t2u_sha256": t2u.sha256, "shards": cfg.shards, "windows": len(keep),
              "skipped_windows": len(recs) - len(keep), "config": asdict(cfg), "rows": rows,
              "decode_units_per_s": round(sum(map(len, hyp)) / decode_s, 1) if decode_s else None,
              "wall_s": round(time.perf_counter() - t0, 1)}
    md = quality_markdown(report)
    (out / "quality.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (out / "quality.md").write_text(md + "\n")
    report["markdown"] = md
    return report


def _f(x, nd=3):
    return "—" if x is None else f"{x:.{nd}f}"


def quality_markdown(report: dict) -> str:
    r, t = report["rows"]["real"], report["rows"]["t2u"]
    lines = [f"T2U units vs real units on {report['windows']} held-out windows ({report['config']['span']['min']}-"
             f"{report['config']['span']['max']} words, decoding {report['config']['mode']}, seed "
             f"{report['config']['seed']}; {report['skipped_windows']} windows skipped: no unit or unseen text)", "",
             "| units | units/word | unit edit rate vs real | speech-LM NLL/unit | vocoder WER |",
             "|---|---|---|---|---|",
             f"| real | {_f(r['units_per_word'], 2)} | 0 | {_f(r.get('lm_nll'))} | {_f(r.get('vocoder_wer'))} |",
             f"| T2U | {_f(t['units_per_word'], 2)} | {_f(t['unit_edit_rate'])} | {_f(t.get('lm_nll'))} | "
             f"{_f(t.get('vocoder_wer'))} |", "",
             f"T2U decoding: {report['decode_units_per_s']} units/s; {t['cut']} windows cut at the length cap."]
    return "\n".join(lines)
