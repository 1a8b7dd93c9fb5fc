"""The hybrid family through the project's own tools: ``spiritlm train`` (DeepSpeed, checkpoints,
exact resume, export) and ``spiritlm eval``'s suite (a hybrid export scored by HybridScorer, the
item files the report tools read). Tiny models on the data stage's tiny shards."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch

from spiritlm.config import load_config
from spiritlm.models.hybrid.config import HybridTrainConfig
from test_hybrid import prepared  # noqa: F401  (the data stage's tiny shards)


def _cfg(prepared, run_dir, *extra):  # noqa: F811
    p = prepared
    return load_config(HybridTrainConfig, None, [
        f"run_dir={run_dir}", f"model.tokenizer={p['c']['tokenizer'].parent}", "model.pad_multiple=64",
        "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "model.tiny.num_hidden_layers=1",
        "model.tiny.num_attention_heads=2", "model.tiny.num_key_value_heads=2",
        "model.tiny.max_position_embeddings=256", "data.seq_len=128", "micro_batch_size=2", "global_batch_size=2",
        "hybrid.features.n_mels=16", "hybrid.projector.dim=16", f"hybrid.data.manifests=[{p['c']['manifest']}]",
        f"hybrid.data.features_dir={p['root'] / 'features'}", "optim.lr=3e-3", "log.every=1",
        "log.progress_bar=false", "log.tensorboard=false", "log.plots=false", "deepspeed.precision=fp32", *extra],
        base={"data": {"sources": [
            {"name": "speech", "path": str(p["shards"] / "aligned"), "kind": "speech"},
            {"name": "interleaved", "path": str(p["shards"] / "aligned"), "kind": "interleaved"},
            {"name": "text", "path": str(p["shards"] / "text"), "kind": "text"}]}})


def _run(cfg, until=None):
    from spiritlm.train.trainer import Trainer

    t = Trainer(cfg)
    t.fit(until_step=until)
    return t


def _losses(run_dir):
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_trainer_resumes_exactly_and_exports_a_loadable_model(prepared, tmp_path):  # noqa: F811
    from spiritlm.models.hybrid.model import load_hybrid

    over = ["steps=4", "checkpoint.every=2"]
    full = _run(_cfg(prepared, tmp_path / "full", *over))
    _run(_cfg(prepared, tmp_path / "part", *over, "checkpoint.export_hf=false"), until=2)
    _run(_cfg(prepared, tmp_path / "part", *over, "checkpoint.export_hf=false"))  # resumes at step 2
    assert len(_losses(tmp_path / "full")) == 4
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")
    rec = full.history[-1]
    assert rec["loss/speech"] and rec["loss/text"]  # interleaved + speech + text sources all read
    counts = json.loads((tmp_path / "full" / "param_counts.json").read_text())
    assert set(counts) == {"lm", "projector", "fusion", "all"}
    model, tok = load_hybrid(tmp_path / "full" / "hf")
    batch = full.packer.next_batch(2)
    trained = full.engine.module.eval()
    with torch.no_grad():
        assert torch.allclose(model(batch), trained(batch), atol=1e-5)
    assert model.frame_rate == 25.0 and tok.layout == trained.layout


def _lexical_set(prepared, root):  # noqa: F811
    """A two-pair ZeroSpeech lexical split from the tiny corpus' wavs (real layout, gold.csv)."""
    d = root / "lexical" / "dev"
    d.mkdir(parents=True)
    wavs = sorted(prepared["c"]["root"].glob("u*.wav"))[:4]
    rows = []
    for i, w in enumerate(wavs):
        shutil.copy(w, d / f"f{i}.wav")
        rows.append({"id": str(i // 2), "filename": f"f{i}", "voice": "v", "frequency": "3", "word": f"w{i}",
                     "phones": "", "length": "1", "correct": str(1 - i % 2)})
    with open(d / "gold.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    return d


def test_suite_scores_a_hybrid_export_with_its_features(prepared, tmp_path):  # noqa: F811
    from spiritlm.eval.model import CachedEncoder
    from spiritlm.components.scoring import Request
    from spiritlm.eval.suite import EvalConfig, run_suite
    from spiritlm.eval.testing import FakeSpeechEncoder
    from spiritlm.models.hybrid.model import load_hybrid

    _run(_cfg(prepared, tmp_path / "run", "steps=2"))
    d = _lexical_set(prepared, tmp_path / "bench")
    cfg = load_config(EvalConfig, None, [
        f"model={tmp_path / 'run' / 'hf'}", f"output_dir={tmp_path / 'eval'}", f"data_root={tmp_path / 'bench'}",
        "device=cpu", "speech_encoder=spiritlm.eval.testing:FakeSpeechEncoder", "zerospeech.root=.",
        "zerospeech.modalities=[S]", "zerospeech.syntactic=false", "zerospeech.submission=false"])
    out = run_suite(cfg)
    assert out["results"]["swuggy"]["S"]["complete"]
    items = [json.loads(x) for x in (tmp_path / "eval" / "items.jsonl").read_text().splitlines()]
    assert len(items) == 2 and all(it["task"] == "swuggy" and it["setting"] == "S" for it in items)
    # the item's summed log-prob is the hybrid scorer's (undeduplicated units + features) of that wav
    model, tok = load_hybrid(tmp_path / "run" / "hf")
    sc = model.make_scorer(tok, CachedEncoder(FakeSpeechEncoder()))
    good = sc.score([Request([], [("speech", str(d / "f0.wav"))])])[0]
    it = next(i for i in items if i["good"] == "f0")
    assert it["good_tokens"] == good.n_tokens == len(FakeSpeechEncoder()(str(d / "f0.wav"))["hubert"])
    assert math.isclose(it["good_sum"], good.logprob, rel_tol=1e-5)
    assert np.isfinite(it["bad_sum"]) and (tmp_path / "eval" / "report.md").is_file()
