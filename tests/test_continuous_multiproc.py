"""Two processes on gloo train the continuous model: ZeRO-1 and ZeRO-2 give the same losses,
rank 0 fills the frozen-encoder feature cache while rank 1 waits and reads it, and a resumed
run continues exactly. Slow (process start + DeepSpeed import twice); the one-process paths are
covered fast in test_continuous_train.py."""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")


def _worker(rank: int, world: int, port: int, out_dir: str, tok: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import gc

    torch.set_num_threads(1)
    from spiritlm.config import load_config
    from spiritlm.models.continuous.config import ContinuousTrainConfig
    from spiritlm.train.trainer import Trainer

    results = {}
    for stage in (1, 2):
        name = f"z{stage}"
        cfg = load_config(ContinuousTrainConfig, "train/continuous_tiny.toml", [
            f"model.tokenizer={tok}", f"run_dir={os.path.join(out_dir, name)}", "steps=4", "log.every=1",
            f"deepspeed.zero_stage={stage}", "micro_batch_size=1", "global_batch_size=4",
            "continuous.trainable=lora", "continuous.train_encoder=false", "continuous.encoder.ctc_weight=0",
            "continuous.data.cache_features=true", "continuous.data.synthetic=24", "checkpoint.export_hf=false"])
        t = Trainer(cfg)
        t.fit(until_step=2)
        del t
        gc.collect()
        t = Trainer(cfg)
        resumed_at = t.step
        t.fit()
        with open(os.path.join(out_dir, name, "metrics.jsonl")) as f:
            logged = [json.loads(x)["loss"] for x in f]
        results[name] = {"losses": logged, "resumed_at": resumed_at}
        del t
        gc.collect()
    if rank == 0:
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(results, f)


@pytest.mark.slow
def test_two_process_zero1_zero2(tmp_path):
    import torch.multiprocessing as mp

    from spiritlm.models.continuous.data import synthetic_utterances
    from spiritlm.text_tokenizer import train_sentencepiece
    from spiritlm.train.engine import free_port

    tok = tmp_path / "tok"
    train_sentencepiece([t for _, t, _ in synthetic_utterances(60)] + ["the cat sat"] * 3, tok, vocab_size=300)
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), str(tok)), nprocs=2, join=True)
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["z1"]["resumed_at"] == r["z2"]["resumed_at"] == 2
    assert len(r["z1"]["losses"]) == 4
    assert r["z1"]["losses"] == pytest.approx(r["z2"]["losses"], abs=1e-5)
    assert list((tmp_path / "z1" / "features").rglob("features-*.parquet"))
