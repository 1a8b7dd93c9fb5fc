"""The recipes for other backbones (train/README.md, "Recipes for other backbones"):
``qwen2.5_0.5b_single_gpu.toml`` (SLAM's one-GPU-day budget), ``llama3.2_1b.toml`` and
``qwen2.5_7b.toml`` (SIMS-like, multi-node ZeRO-3).

Each recipe is resolved the way ``spiritlm train RECIPE --print-config`` resolves it (the CLI itself,
and ``load_config`` into the config class its ``model_type`` names, then ``validate_config`` at the
world sizes it is meant for). Neither reads the checkpoint, so none of this needs the weights.

The headers' arithmetic is checked against the project's own: the speech ids and embedding rows
against ``VocabLayout``, FLOPs per token and tokens/s against ``model_flops_per_token`` (what
``spiritlm bench mfu`` and the trainer's MFU use) on each backbone's published architecture, and
the token budgets against steps x global batch x seq_len.

``test_vocabulary_plan_on_a_weightless_checkpoint`` goes one step further: the trainer's vocabulary
planning (``plan_model``: config.json and tokenizer only, no weights) on a stub directory holding
the backbone's real config.json and a byte-level BPE tokenizer.json of its real size, with its
special tokens at their real ids. [Text] must land right after the tokenizer's last id (Qwen2.5:
151665, not after its 151936 embedding rows), the rows must be the header's, and ``data.bos_id``
must pass the trainer's BOS check (Qwen2.5 has no BOS: its documents start with <|endoftext|>).
(Training these families end to end on tiny random models is ``tests/test_backbones.py``.)
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from spiritlm.components.config import validate_config
from spiritlm.components.metrics import model_flops_per_token
from spiritlm.config import ConfigError, load_config, read_recipe
from spiritlm.vocab import VocabLayout

REPO = Path(__file__).resolve().parents[1]
H100_BF16 = 989e12
MFU = 0.40  # assumed in the headers (no GPU measured them)

# the backbones' published config.json (the fields the planning and the FLOPs read)
QWEN05 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
          "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
          "num_key_value_heads": 2, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
          "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "vocab_size": 151936,
          "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
          "sliding_window": 32768, "use_sliding_window": False, "max_window_layers": 24,
          "torch_dtype": "bfloat16"}
QWEN7 = {**QWEN05, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
         "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 131072,
         "sliding_window": 131072, "max_window_layers": 28, "tie_word_embeddings": False,
         "vocab_size": 152064}
LLAMA32_1B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
              "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
              "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 131072,
              "rope_theta": 500000.0, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
                                                       "low_freq_factor": 1.0,
                                                       "original_max_position_embeddings": 8192,
                                                       "rope_type": "llama3"},
              "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "vocab_size": 128256,
              "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
              "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16"}

# the tokenizers: BPE pieces, then the special tokens in id order
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                 "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
                 "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
                 "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                 "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)])
QWEN_TOK = {"bpe": 151643, "specials": QWEN_SPECIALS, "bos_token": None, "eos_token": "<|endoftext|>",
            "bos_piece": "<|endoftext|>"}
LLAMA3_TOK = {"bpe": 128000, "specials": LLAMA3_SPECIALS, "bos_token": "<|begin_of_text|>",
              "eos_token": "<|end_of_text|>", "bos_piece": "<|begin_of_text|>"}

# what each recipe must resolve to, and the numbers its header states
RECIPES = {
    "qwen2.5_0.5b_single_gpu.toml": dict(
        arch=QWEN05, tok=QWEN_TOK, checkpoint="checkpoints/Qwen2.5-0.5B", seq_len=2048, bos_id=151643,
        zero_stage=2, sizes=(501, 0, 0), pad_multiple=128, text_ids=151665, rows=152192,
        activation_checkpointing=False, linear_ce="chunked", micro=8, global_batch=128, worlds=(1, 2, 4, 8),
        n="494.2M", flops="3.49e9", tokens_s="113,000"),
    "llama3.2_1b.toml": dict(
        arch=LLAMA32_1B, tok=LLAMA3_TOK, checkpoint="checkpoints/Llama-3.2-1B", seq_len=4096, bos_id=128000,
        zero_stage=2, sizes=(501, 64, 100), pad_multiple=256, text_ids=128256, rows=129024,
        activation_checkpointing=False, linear_ce="chunked", micro=4, global_batch=256,
        worlds=(1, 2, 4, 8, 16, 64), n="1237.3M", flops="9.03e9", tokens_s="43,800"),
    "qwen2.5_7b.toml": dict(
        arch=QWEN7, tok=QWEN_TOK, checkpoint="checkpoints/Qwen2.5-7B", seq_len=4096, bos_id=151643,
        zero_stage=3, sizes=(501, 0, 0), pad_multiple=256, text_ids=151665, rows=152320,
        activation_checkpointing=True, linear_ce="plain", micro=4, global_batch=256, worlds=(16, 32, 64),
        n="7071.2M", flops="4.74e10", tokens_s="8,350"),
}
NAMES = sorted(RECIPES)


def _path(name: str) -> Path:
    return REPO / "train" / name


def _load(name: str, overrides=()):
    """As `spiritlm train RECIPE --print-config` loads it: the config class its model_type names."""
    from spiritlm.models import config_class_of_recipe

    return load_config(config_class_of_recipe(read_recipe(_path(name))), _path(name), list(overrides))


def _header(name: str) -> str:
    """The recipe's comment lines, joined without the '#' (numbers may wrap across lines)."""
    lines = [ln[1:].strip() for ln in _path(name).read_text().splitlines() if ln.startswith("#")]
    return " ".join(lines)


def _sci(x: float) -> str:
    mantissa, exp = f"{x:.2e}".split("e")
    return f"{mantissa}e{int(exp)}"


def _layout(name: str) -> VocabLayout:
    e = RECIPES[name]
    cfg = _load(name)
    return VocabLayout(base_vocab_size=e["text_ids"], hubert_size=cfg.model.hubert_size,
                       pitch_size=cfg.model.pitch_size, style_size=cfg.model.style_size)


@pytest.mark.parametrize("name", NAMES)
def test_print_config_resolves(name, capsys):
    """The command line itself; --print-config reads no checkpoint (none exists here)."""
    from spiritlm.cli import main

    e = RECIPES[name]
    assert main(["train", str(_path(name)), "--print-config"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    m, d, ds = out["model"], out["data"], out["deepspeed"]
    assert m["checkpoint"] == e["checkpoint"]
    assert d["seq_len"] == e["seq_len"] and d["bos_id"] == e["bos_id"] and d["add_bos"] is True
    assert ds["precision"] == "bf16" and ds["zero_stage"] == e["zero_stage"]
    assert (m["hubert_size"], m["pitch_size"], m["style_size"]) == e["sizes"]
    assert m["vocab_rows"] == "padded" and m["pad_multiple"] == e["pad_multiple"]
    assert m["attn_implementation"] == "flash_attention_2" and m["packed_attention"] == "position_ids"
    assert m["activation_checkpointing"] is e["activation_checkpointing"]
    assert m["linear_ce"] == e["linear_ce"]
    assert m["rope_theta"] is None  # the backbone's own θ is kept
    assert out["micro_batch_size"] == e["micro"] and out["global_batch_size"] == e["global_batch"]
    assert out.get("model_type", "unit_lm") == "unit_lm"


@pytest.mark.parametrize("name", NAMES)
def test_recipe_validates_at_its_world_sizes(name):
    from spiritlm.components.packing import isolation_plan

    cfg = _load(name)
    for world in RECIPES[name]["worlds"]:
        validate_config(cfg, world_size=world)
    # flash's varlen kernel keeps packed documents apart; sdpa, the stated fallback, does too
    assert isolation_plan(cfg.model.attn_implementation, cfg.model.packed_attention, "cuda") == "varlen"
    assert isolation_plan("sdpa", cfg.model.packed_attention, "cuda") == "position_ids"
    validate_config(_load(name, ["model.attn_implementation=sdpa"]), world_size=RECIPES[name]["worlds"][0])


@pytest.mark.parametrize("name", NAMES)
def test_header_ids_and_rows(name):
    """[Text], [Speech], [Hu0] (and [Pi0], [St0]) and the padded rows the header states."""
    e, lay = RECIPES[name], _layout(name)
    head = _header(name)
    assert lay.text_id == e["text_ids"] and lay.speech_id == e["text_ids"] + 1
    assert lay.padded_vocab_size(e["pad_multiple"]) == e["rows"]
    assert f"[Text] = {lay.text_id}" in head and f"[Speech] = {lay.speech_id}" in head
    hu = lay.streams["hubert"]
    assert f"[Hu0..500] = {hu.offset}..{hu.offset + hu.size - 1}" in head
    if lay.pitch_size:
        pi, st = lay.streams["pitch"], lay.streams["style"]
        assert f"[Pi0..63] = {pi.offset}..{pi.offset + pi.size - 1}" in head
        assert f"[St0..99] = {st.offset}..{st.offset + st.size - 1}" in head
    assert f"{lay.vocab_size} ids" in head and f"= {e['rows']} rows" in head
    assert e["rows"] >= e["arch"]["vocab_size"]  # the trainer grows the checkpoint, never shrinks it
    assert f"has {e['arch']['vocab_size']}" in head  # the checkpoint's own rows are stated


@pytest.mark.parametrize("name", NAMES)
def test_header_throughput_is_bench_mfus_arithmetic(name):
    """N, FLOPs per token and tokens/s at 40% of an H100, as model_flops_per_token computes them."""
    e, cfg = RECIPES[name], _load(name)
    a = e["arch"]
    c = SimpleNamespace(**{k: a[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "num_key_value_heads")},
                        vocab_size=e["rows"])
    flops = model_flops_per_token(c, cfg.data.seq_len)
    attention = 12 * a["num_hidden_layers"] * a["hidden_size"] * cfg.data.seq_len
    n = (flops - attention) / 6
    tokens_s = MFU * H100_BF16 / flops
    head = _header(name)
    assert f"{n / 1e6:.1f}M" in head
    assert f"{_sci(flops)} FLOPs per token" in head
    assert f"{float(f'{tokens_s:.3g}'):,.0f} tokens/s" in head
    assert "assumed, not measured" in head


def test_token_budgets():
    # SLAM: one GPU-day at the header's rate
    cfg = _load("qwen2.5_0.5b_single_gpu.toml")
    per_step = cfg.global_batch_size * cfg.data.seq_len
    assert per_step == 262_144 and cfg.steps == 37_000
    c = SimpleNamespace(**{k: QWEN05[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                   "num_attention_heads", "num_key_value_heads")},
                        vocab_size=RECIPES["qwen2.5_0.5b_single_gpu.toml"]["rows"])
    one_day = MFU * H100_BF16 / model_flops_per_token(c, cfg.data.seq_len) * 86_400
    assert 0.95 * one_day < cfg.steps * per_step <= one_day
    assert cfg.optim.warmup_steps == cfg.steps // 100  # slamkit's 1% warmup
    # Llama-3.2-1B: 10B tokens
    cfg = _load("llama3.2_1b.toml")
    assert cfg.steps * cfg.global_batch_size * cfg.data.seq_len == pytest.approx(10e9, rel=1e-3)
    assert cfg.optim.warmup_steps == cfg.steps // 100
    # SIMS: 15B tokens, the product written out in the header
    cfg = _load("qwen2.5_7b.toml")
    total = cfg.steps * cfg.global_batch_size * cfg.data.seq_len
    assert total == pytest.approx(15e9, rel=1e-3)
    assert f"{total:,}" in _header("qwen2.5_7b.toml")
    assert cfg.optim.warmup_steps == cfg.steps // 100


def test_readme_lists_the_recipes():
    text = (REPO / "train" / "README.md").read_text()
    assert "## Recipes for other backbones" in text
    for name in NAMES:
        assert f"`{name}`" in text


def _stub_checkpoint(d: Path, arch: dict, tok: dict) -> Path:
    """config.json + a byte-level BPE tokenizer.json of the backbone's size (the 256 byte symbols and
    filler pieces, no merges, then its special tokens at their real ids); no weights."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(arch))
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({f"piece{i}": i for i in range(len(vocab), tok["bpe"])})
    t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens(tok["specials"])
    t.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tok["bos_token"],
        "eos_token": tok["eos_token"]}))
    return d


@pytest.mark.parametrize("name", NAMES)
def test_vocabulary_plan_on_a_weightless_checkpoint(name, tmp_path):
    from transformers import AutoTokenizer

    from spiritlm.models.unit_lm.model import load_run_tokenizer, plan_model, rope_theta_of
    from spiritlm.models.unit_lm.spec import check_bos

    e = RECIPES[name]
    d = _stub_checkpoint(tmp_path / Path(e["checkpoint"]).name, e["arch"], e["tok"])
    tok = AutoTokenizer.from_pretrained(d)
    # the stub is the backbone's tokenizer as far as ids go; the recipe's BOS is its document start
    assert len(tok) == e["text_ids"]
    assert tok.convert_tokens_to_ids(e["tok"]["bos_piece"]) == e["bos_id"] == e["arch"]["bos_token_id"]
    if e["tok"]["bos_token"] is None:
        assert tok.bos_token_id is None  # Qwen2.5 has no BOS: hence data.bos_id = <|endoftext|>
    cfg = _load(name, [f"model.checkpoint={d}"])
    config, layout, rows = plan_model(cfg.model)
    assert layout.base_vocab_size == e["text_ids"], "[Text] must follow the tokenizer's last id"
    assert (layout.hubert_size, layout.pitch_size, layout.style_size) == e["sizes"]
    assert rows == e["rows"]
    assert config.max_position_embeddings >= cfg.data.seq_len
    assert rope_theta_of(config) == e["arch"]["rope_theta"]
    # the trainer's own check: data.bos_id is the id the tokenizer starts a document with (what
    # evaluation and generation prepend)
    check_bos(cfg, load_run_tokenizer(cfg.model, layout))
    with pytest.raises(ConfigError, match="data.bos_id"):
        check_bos(_load(name, [f"model.checkpoint={d}", "data.bos_id=1"]), load_run_tokenizer(cfg.model, layout))
