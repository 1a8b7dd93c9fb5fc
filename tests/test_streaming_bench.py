"""`spiritlm bench stream` at toy size: runs end to end on the harness, each streaming call decodes
exactly one chunk, the streaming state is flat in the audio's length while the non-streaming
model's cache and peak memory grow (memory is deterministic; times are reported, never asserted)."""

import numpy as np
import torch

from spiritlm.models.streaming.bench import bench_stream, format_table, peak_alloc_bytes


def test_peak_alloc_bytes_sees_transient_tensors():
    def f():
        a = torch.ones(256, 256)
        b = a @ a  # noqa: F841  (two 256 KiB tensors alive at once)
        return None

    assert peak_alloc_bytes(f) >= 2 * 256 * 256 * 4


def test_bench_stream_toy_flat_stream_growing_full(capsys):
    r = bench_stream("toy", factors=(1, 3), train_s=2.0, chunk_s=0.64, tokens=2, rounds=1, min_round_s=0.01)
    a, b = r["rows"]
    assert a["stream_state_bytes"] == b["stream_state_bytes"] > 0  # bounded caches: the same bytes
    assert b["full_state_bytes"] > 2.5 * a["full_state_bytes"]  # the whole sequence's cache grows ~3x
    assert b["full_peak_bytes"] > 2 * a["full_peak_bytes"]
    assert b["stream_peak_bytes"] <= 1.2 * a["stream_peak_bytes"]
    assert all(np.isfinite(x["stream_ms"]) and np.isfinite(x["full_ms"]) for x in r["rows"])
    assert set(r["measurement"]["ratios"]) >= {"stream 1x/full 1x", "stream 3x/full 3x", "stream 1x/stream 3x"}
    out = capsys.readouterr().out
    assert "ratio stream 3x / full 3x" in out and "| 3x (6 s) |" in out and "growth 3x audio" in out
    assert format_table(r).count("\n") == 4


def test_bench_stream_is_registered():
    from spiritlm.commands.bench_cmd import BENCHES

    assert "stream" in BENCHES


def _manifest(root, durations, split="heldout"):
    import soundfile as sf

    from spiritlm.manifest import Utterance, write_manifest

    (root / "audio").mkdir(exist_ok=True)
    utts = []
    rng = np.random.default_rng(0)
    for i, d in enumerate(durations):
        sf.write(root / "audio" / f"{i}.wav", (0.1 * rng.standard_normal(int(d * 16000))).astype(np.float32), 16000)
        utts.append(Utterance(f"u{i}", f"audio/{i}.wav", d, 16000, f"word{i} and more", "s", split=split))
    write_manifest(root / "m.jsonl", utts)
    return root / "m.jsonl"


def test_longform_items_cover_the_same_words_at_every_length(tmp_path):
    from spiritlm.models.streaming.bench import longform_items

    m = _manifest(tmp_path, [0.5, 0.7, 0.4, 0.9, 0.6])
    words = " ".join(f"word{i} and more" for i in range(5))
    for target, n in ((0.6, 3), (1.5, 2), (10.0, 1)):
        items = longform_items(m, target, gap_s=0.1)
        assert " ".join(it["ref"] for it in items) == words
        assert len(items) == n, [it["n_utts"] for it in items]
        assert all(it["seconds"] >= min(target, 3.1) for it in items)
        assert items[0]["wav"].size == int(16000 * sum([0.5, 0.7, 0.4, 0.9, 0.6][: items[0]["n_utts"]])) + 1600 * (items[0]["n_utts"] - 1)


def test_longform_wer_and_chunk_table_run_on_toy_models(tmp_path):
    from spiritlm.config import load_config
    from spiritlm.models.continuous.config import ContinuousTrainConfig
    from spiritlm.models.continuous.model import build_continuous
    from spiritlm.models.streaming.bench import (chunk_table, format_chunk_table, format_longform, longform_wer,
                                                 random_models)

    stream, _ = random_models("toy", tmp_path, chunk_s=0.32)
    stream.scfg.max_chunk_tokens = 2
    stream.export_merged(tmp_path / "s")
    cfg = load_config(ContinuousTrainConfig, None, [f"model.tokenizer={tmp_path / 'tok'}", f"run_dir={tmp_path / 'c'}",
                                                   "continuous.encoder.kind=conformer", "continuous.encoder.conformer.dim=32",
                                                   "continuous.encoder.conformer.layers=1", "continuous.encoder.conformer.heads=2",
                                                   "model.tiny.hidden_size=32", "model.tiny.num_hidden_layers=1"])
    build_continuous(cfg).export_merged(tmp_path / "c")
    m = _manifest(tmp_path, [1.2, 0.7, 1.1, 2.5])  # 1x: [0] [1 2] [3]; 2x: [0 1] [2 3]
    res = longform_wer({"stream": str(tmp_path / "s"), "full": str(tmp_path / "c")}, m, factors=(1, 2), train_s=1.0,
                       progress=False)
    assert [(r["model"], r["factor"], r["items"]) for r in res["rows"]] == [("stream", 1, 3), ("stream", 2, 2),
                                                                             ("full", 1, 3), ("full", 2, 2)]
    assert all(np.isfinite(r["wer"]) for r in res["rows"]) and res["rows"][2]["kind"] == "continuous"
    assert "| stream |" in format_longform(res)
    tab = chunk_table(tmp_path / "s", m, chunks_s=(0.32, 0.64), windows=(0, 1), progress=False)
    assert [r["trained"] for r in tab["rows"]] == [False, True, False, False]
    assert "(trained)" in format_chunk_table(tab)


def test_demo_tables_on_tiny_models(tmp_path, capsys):
    """The streaming demo part's tables, end to end on tiny random models: distil + export the
    chunked encoder, long-form WER for the three models, the chunk table; cached on a rerun."""
    import types

    from spiritlm.config import load_config
    from spiritlm.demo.parts import DemoContext
    from spiritlm.models.continuous.config import ContinuousTrainConfig
    from spiritlm.models.continuous.model import build_continuous
    from spiritlm.models.streaming.bench import _tokenizer, demo_tables
    from spiritlm.models.streaming.config import StreamingTrainConfig
    from spiritlm.models.streaming.model import build_streaming
    from spiritlm.pipeline import Pipeline

    tok = _tokenizer(tmp_path)
    conf = ["continuous.encoder.kind=conformer", "continuous.encoder.conformer.n_mels=16",
            "continuous.encoder.conformer.dim=32", "continuous.encoder.conformer.layers=1",
            "continuous.encoder.conformer.heads=2", "continuous.projector.stack=2",
            "model.tiny.hidden_size=32", "model.tiny.num_hidden_layers=1", f"model.tokenizer={tok}"]
    ctc = tmp_path / "ctc"
    build_continuous(load_config(ContinuousTrainConfig, None, conf + [f"run_dir={ctc}"])).export_merged(ctc / "hf")
    ch = tmp_path / "chunked"
    build_streaming(load_config(StreamingTrainConfig, None, conf + [f"run_dir={ch}", "streaming.max_chunk_tokens=2"])
                    ).export_merged(ch / "hf")
    m = _manifest(tmp_path, [1.3, 1.6, 1.4, 1.5, 2.9, 1.7])
    import json

    rows = [json.loads(x) for x in m.read_text().splitlines()]
    for r in rows[:4]:
        r["split"] = "train"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # as in the demo: ctx.manifest holds the aligned training records only, the corpus manifest the held-out split
    train_only = tmp_path / "aligned_train.jsonl"
    train_only.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    ctx = types.SimpleNamespace(out=tmp_path / "demo", manifest=str(train_only), corpus={"manifest": str(m)},
                                pipe=Pipeline(tmp_path / "demo"), file_hash=DemoContext.file_hash)
    runs = {k: {"run_dir": str(d), "hf": str(d / "hf")} for k, d in (("ctc", ctc), ("chunked", ch))}
    out = demo_tables(ctx, chunked=runs["chunked"], baseline=runs["ctc"], ctc=runs["ctc"], factors=(1, 2),
                      distil_steps=2)
    assert (tmp_path / "demo" / "parts" / "streaming" / "chunked_stream" / "hf" / "streaming.json").is_file()
    lf = out["longform"]["rows"]
    assert {r["model"] for r in lf} == {"streaming, chunked encoder", "streaming, full-context encoder",
                                       "non-streaming twin"} and len(lf) == 6
    assert out["longform"]["train_s"] == 1.6 and len(out["chunk_table"]["rows"]) == 9
    assert "| non-streaming twin |" in capsys.readouterr().out
    again = demo_tables(ctx, chunked=runs["chunked"], baseline=runs["ctc"], ctc=runs["ctc"], factors=(1, 2),
                        distil_steps=2)
    assert again["longform"]["rows"] == lf  # cached steps
