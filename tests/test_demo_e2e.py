"""One full tiny pipeline pass, as `spiritlm demo` runs it: corpus -> text and speech tokenizers
-> offline alignment -> shards -> DeepSpeed training of both ablation models -> mini benchmarks
-> evaluation -> paired comparison. Sizes are cut so CI runs it in a few minutes."""

import json
from pathlib import Path

import pytest

from spiritlm.config import load_config
from spiritlm.demo.main import DemoConfig, run_demo

TINY = [
    "corpus.target_minutes=1.5",
    "corpus.n_text_documents=600",
    "text_vocab_size=600",
    "tokenizer_overrides=[demo.steps=20, demo.max_minutes=0.3, demo.hidden=64, demo.ffn=128, "
    "demo.conv_dim=64, demo.layers=2, demo.mfcc_k=30, units.k=30, units.niter=10, style.layer=2, "
    "style.k=8, pitch.train_steps=20, pitch.max_files=10]",
    "align_measure_limit=6",
    "text_pretrain_steps=0",  # from scratch first; the shared text start is run second (below)
    "train_overrides=[steps=6, checkpoint.every=3, log.every=2, data.seq_len=128, "
    "micro_batch_size=2, global_batch_size=4, deepspeed.precision=bf16]",  # the demo's precision
    "mini_sizes={swuggy: 4, sblimp: 4, storycloze: 4, topic_storycloze: 4, stsp: 3, "
    "stsp_fewshot: 3, asr: 2, asr_shots: 2, voices: 1}",
    # the few-shot speech classification set is built in the mini step, so its audio is encoded once
    "eval_overrides=['stsp.settings=[T2T]', 'fewshot.n_shots=2', 'speech_cls.manifest=speech_cls/test.jsonl', "
    "'speech_cls.mini_sizes={test: 1, shots: 2, voices: 1}']",
    # two test draws (recorded seeds: a test may not draw fresh ones), disjoint from the dev draw
    "test_seeds=[11, 12]",
    "test_sizes={swuggy: 2, sblimp: 2, storycloze: 2, topic_storycloze: 3, stsp: 0, stsp_fewshot: 0, "
    "asr: 0, asr_shots: 0, voices: 1}",
]
DEV_ONLY = ["test_seeds=[]", "test_draws=0"]


def test_tiny_demo_runs_every_stage_and_resumes(tmp_path):
    # the first run trains its two models side by side (the default); later runs one after the
    # other in this process (side_by_side=1), which spawns no processes and is quicker at this size
    cfg = load_config(DemoConfig, None, [f"out_dir={tmp_path / 'demo'}", *TINY])
    pipe = run_demo(cfg)
    names = [r.name for r in pipe.results]
    assert names == ["corpus", "text_tokenizer", "speech_tokenizer", "align", "shards",
                     "train_interleaved", "train_no_interleaving", "mini_benchmarks", "mini_test",
                     "bench_units", "bench_units_test", "eval_interleaved", "eval_interleaved_test1",
                     "eval_interleaved_test2", "eval_no_interleaving", "eval_no_interleaving_test1",
                     "eval_no_interleaving_test2", "compare"]
    out = {r.name: r.outputs for r in pipe.results}
    assert out["shards"]["report"]["kept"].get("aligned", 0) > 0
    # the benchmark audio is encoded once, for both evaluations (side by side, in other processes)
    wavs = list(Path(out["mini_benchmarks"]["root"]).rglob("*.wav"))
    assert wavs and out["bench_units"]["files"] == len(wavs)
    assert {n: o["encoded_here"] for n, o in out.items() if n.startswith("eval_") and o["encoded_here"]} == {}
    # the test draws: the recorded seeds, no text shared with the dev draw, claims read from them
    dev_texts = set(Path(out["mini_benchmarks"]["paths"]["heldout_texts"]).read_text().splitlines())
    test_draws = out["mini_test"]["draws"]
    assert [d["seed"] for d in test_draws] == [11, 12]
    for d in test_draws:
        texts = set(Path(d["paths"]["heldout_texts"]).read_text().splitlines())
        assert texts and not texts & dev_texts
    assert out["bench_units_test"]["draws"][1]["files"] == len(list(Path(test_draws[1]["root"]).rglob("*.wav")))
    assert "claims are read from 2 test draws (mini seeds 11, 12" in out["compare"]["protocol"]
    pooled = json.loads(Path(out["compare"]["json"]).read_text())["pooled"]
    assert pooled["topic_storycloze/T"]["n"] == 2 * 3 and "stsp/T2T" not in pooled
    assert list(Path(out["mini_benchmarks"]["root"]).glob("speech_cls/audio/*.wav"))
    from spiritlm.pipeline import available_cores

    if available_cores() > 1:  # one core: every step runs in this process
        assert all(r.side_by_side for r in pipe.results if r.name.startswith(("train_", "eval_")))
    prosody = out["speech_tokenizer"]["metrics"]["prosody"]  # F0 VQ-VAE and style codebook fitted
    assert prosody["pitch"]["cents_error"] > 0 and prosody["style"]["tokens_per_s"] > 0
    for v in ("interleaved", "no_interleaving"):
        assert (Path(out[f"train_{v}"]["hf"]) / "config.json").is_file()
        results = json.loads((Path(out[f"eval_{v}"]["dir"]) / "results.json").read_text())
        assert results  # numbers for every configured task
    assert "topic_storycloze" in out["compare"]["markdown"]
    assert out["compare"]["check"].startswith("check (topic_storycloze")  # the ablation's claims, read off
    assert Path(out["compare"]["png"]).is_file()
    # the stage recipes' defaults name what `spiritlm demo` writes under its default out_dir
    from spiritlm.data.prepare import PrepareConfig
    from spiritlm.eval.suite import EvalConfig

    repo = Path(__file__).resolve().parents[1]

    def as_default(p):
        return (Path(DemoConfig().out_dir) / Path(p).relative_to(Path(cfg.out_dir).absolute())).as_posix()

    prep = load_config(PrepareConfig, repo / "data_prep" / "demo.toml")
    assert prep.speech.tokenizer_dir == as_default(out["speech_tokenizer"]["dir"])
    assert prep.text_tokenizer == as_default(out["text_tokenizer"]["dir"])
    suite = load_config(EvalConfig, repo / "eval" / "demo_suite.toml")
    assert suite.speech_encoder_args["directory"] == as_default(out["speech_tokenizer"]["dir"])
    # the two models trained side by side (1 thread each) equal the same training run here
    from safetensors.torch import load_file

    from spiritlm.demo.main import train_step
    from spiritlm.components.config import TrainConfig

    import torch

    run = Path(out["train_interleaved"]["run_dir"])
    # at the thread count they used: oneDNN/MKL split a GEMM's reduction by thread (on an AMX Xeon a
    # 2-thread fp32 weight gradient differs in the last bits from the 1-thread one), so bitwise
    # equality is a claim about equal thread counts; the summary records the count
    side_threads = json.loads((run / "summary.json").read_text())["torch_threads"]
    threads = torch.get_num_threads()
    torch.set_num_threads(side_threads)
    try:
        here = train_step(load_config(TrainConfig, run / "config.yaml", [f"run_dir={tmp_path / 'here'}"]))
    finally:
        torch.set_num_threads(threads)
    assert json.loads((Path(here["run_dir"]) / "summary.json").read_text())["torch_threads"] == side_threads
    side, same = (load_file(Path(d) / "model.safetensors") for d in (out["train_interleaved"]["hf"], here["hf"]))
    assert side.keys() == same.keys() and all(side[k].equal(same[k]) for k in side)
    # a second run reuses every step
    again = run_demo(cfg)
    assert all(r.cached for r in again.results)
    # a shared text-only start: the data steps stay cached, both variants continue from it
    # (no test draw here, nor in the later runs but one, to keep the test short)
    pre = run_demo(load_config(DemoConfig, None, [f"out_dir={tmp_path / 'demo'}", *TINY, *DEV_ONLY,
                                                   "text_pretrain_steps=2", "side_by_side=1"]))  # later --set wins
    res = {r.name: r for r in pre.results}
    assert res["shards"].cached and not res["text_pretrain"].cached
    start = res["text_pretrain"].outputs["hf"]
    for v in ("interleaved", "no_interleaving"):
        assert not res[f"train_{v}"].cached
        tcfg = (Path(res[f"train_{v}"].outputs["hf"]) / "spiritlm_train_config.yaml").read_text()
        assert start in tcfg  # model.checkpoint points at the shared start
    # a second training seed: seed 0's models are reused, seed 1's are trained and evaluated,
    # and the comparison pools both test draws x both seeds and shows each seed's gap
    two = run_demo(load_config(DemoConfig, None, [f"out_dir={tmp_path / 'demo'}", *TINY,
                                                   "text_pretrain_steps=2", "side_by_side=1", "train_seeds=[0, 1]"]))
    res2 = {r.name: r for r in two.results}
    for v in ("interleaved", "no_interleaving"):
        assert res2[f"train_{v}"].cached and res2[f"eval_{v}"].cached
        assert not res2[f"train_{v}_seed1"].cached and not res2[f"eval_{v}_seed1"].cached
        tcfg = (Path(res2[f"train_{v}_seed1"].outputs["hf"]) / "spiritlm_train_config.yaml").read_text()
        assert "seed: 1" in tcfg and start in tcfg
    cmp = json.loads(Path(res2["compare"].outputs["json"]).read_text())["pooled"]
    assert all(r["runs"] == [2, 2] and len(r["per_run_diff"]) == 2 for r in cmp.values())
    assert cmp["topic_storycloze/T"]["n"] == 2 * 3
    assert "diff per seed" in res2["compare"].outputs["markdown"]
    # other benchmark sizes: same paths, other items -> every evaluation reruns, no training does
    more = [t.replace("topic_storycloze: 4", "topic_storycloze: 6") for t in TINY]
    three = run_demo(load_config(DemoConfig, None, [f"out_dir={tmp_path / 'demo'}", *more, *DEV_ONLY,
                                                     "text_pretrain_steps=2", "side_by_side=1", "train_seeds=[0, 1]"]))
    res3 = {r.name: r for r in three.results}
    assert all(r.cached for n, r in res3.items() if n.startswith("train"))
    assert not any(r.cached for n, r in res3.items() if n.startswith(("eval", "mini", "compare")))
    cmp3 = json.loads(Path(res3["compare"].outputs["json"]).read_text())
    assert cmp3["draws"]["dev"]["topic_storycloze/T"]["n"] == 6 and cmp3["pooled"]["topic_storycloze/T"]["n"] == 6
    assert "NO TEST DRAW" in res3["compare"].outputs["protocol"]  # test_draws=0: the report says so
    # more continued-training steps: the text start (whose own steps are text_pretrain_steps)
    # stays cached; both models retrain from it
    longer = [t.replace("train_overrides=[steps=6,", "train_overrides=[steps=8,") for t in more]
    assert longer != more
    four = run_demo(load_config(DemoConfig, None, [f"out_dir={tmp_path / 'demo'}", *longer, *DEV_ONLY,
                                                    "text_pretrain_steps=2", "side_by_side=1"]))
    res4 = {r.name: r for r in four.results}
    assert res4["text_pretrain"].cached and res4["shards"].cached
    assert not res4["train_interleaved"].cached and not res4["train_no_interleaving"].cached


def test_demo_speech_is_spoken_in_the_benchmark_voices():
    """The demo is speaker-dependent by design (an hour of speech cannot teach a from-scratch LM
    words across many voices): its corpus voices must be exactly the mini benchmarks' voices."""
    from spiritlm.eval.mini import VOICES

    cfg = DemoConfig()
    assert set(cfg.corpus.voices) == set(VOICES[: cfg.mini_sizes["voices"]])
    assert cfg.corpus.rate_wpm[0] <= 165 <= cfg.corpus.rate_wpm[1]  # the benchmarks' espeak rate
