"""Continuous-input model: stacking, projectors, placement, loss on text, packing isolation with
spliced embeddings, trainable parts, peft adapters round trip, CTC head, bad input."""

import numpy as np
import pytest
import torch

from spiritlm.config import ConfigError, load_config
from spiritlm.models.continuous.config import ContinuousTrainConfig, ProjectorConfig
from spiritlm.models.continuous.data import (ContinuousBatches, read_utterances, synthetic_utterances,
                                             utterance_sequence)
from spiritlm.models.continuous.encoders import CharVocab, ConformerEncoder, CTCHead
from spiritlm.models.continuous.model import build_continuous
from spiritlm.models.continuous.projectors import build_projector, stack_frames
from spiritlm.models.continuous.spec import text_loss
from spiritlm.components.packing import IGNORE

TINY = ["continuous.encoder.conformer.dim=32", "continuous.encoder.conformer.layers=1",
        "continuous.encoder.conformer.heads=2", "continuous.data.synthetic=12",
        "continuous.data.cache_features=false", "data.seq_len=96"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from spiritlm.text_tokenizer import train_sentencepiece

    d = tmp_path_factory.mktemp("tok")
    texts = [t for _, t, _ in synthetic_utterances(60)] + ["the cat sat on the mat"] * 3
    train_sentencepiece(texts, d, vocab_size=300)
    return d


def make_cfg(tok_dir, tmp_path, *overrides):
    return load_config(ContinuousTrainConfig, None, [f"model.tokenizer={tok_dir}", f"run_dir={tmp_path}"]
                       + TINY + list(overrides))


def test_stack_frames_shapes_and_order():
    x = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)
    s, n = stack_frames(x, torch.tensor([7, 5]), 3)
    assert s.shape == (2, 2, 9) and n.tolist() == [2, 1]
    assert torch.equal(s[0, 1], x[0, 3:6].reshape(-1))  # frames 3, 4, 5 concatenated in order


@pytest.mark.parametrize("kind", ["linear", "mlp", "qformer", "moe", "mosa"])
def test_projector_shapes_and_padding_invariance(kind):
    torch.manual_seed(0)
    cfg = ProjectorConfig(kind=kind, stack=4, window=8, queries=2, hidden=24, heads=2)
    proj = build_projector(cfg, 6, 16).eval()
    x = torch.randn(2, 21, 6)
    lens = torch.tensor([21, 13])
    y, n, aux = proj(x, lens)
    assert y.shape == (2, 5, 16) and n.tolist() == [5, 3] and aux.dim() == 0
    # a padded row's valid outputs equal the same frames alone (padding never leaks)
    alone, n1, _ = proj(x[1:, :13], torch.tensor([13]))
    assert torch.allclose(y[1, :3], alone[0, :3], atol=1e-5)
    if kind == "moe":
        assert aux.item() > 0  # balance loss on


def test_mlp_projector_layout():
    p = build_projector(ProjectorConfig(kind="mlp", stack=4), 8, 16)
    lin1, norm1, act, lin2, norm2 = p.net
    assert lin1.bias is None and lin1.in_features == 32 and isinstance(act, torch.nn.GELU)
    assert lin2.bias is not None and type(norm1).__name__ == type(norm2).__name__ == "RMSNorm"


def test_conformer_batch_equals_alone():
    from spiritlm.models.continuous.config import ConformerConfig

    torch.manual_seed(0)
    enc = ConformerEncoder(ConformerConfig(dim=32, layers=2, heads=2)).eval()
    rng = np.random.default_rng(0)
    wavs = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (8000, 5000, 3210)]
    x, lens = enc(wavs)
    for i, w in enumerate(wavs):
        xi, li = enc([w])
        assert li.item() == lens[i].item() == enc.num_frames(w.size)
        assert torch.allclose(x[i, : lens[i]], xi[0], atol=1e-5)


@pytest.mark.parametrize("placement", ["prepend", "placeholder"])
def test_sequence_layout_and_loss_only_on_text(placement):
    ids, tg, start = utterance_sequence(3, [10, 11], placement, bos=1, eos=2, audio_id=0)
    if placement == "prepend":
        assert ids == [0, 0, 0, 1, 10, 11, 2] and start == 0
        assert tg == [IGNORE, IGNORE, IGNORE, 10, 11, 2, IGNORE]
    else:
        assert ids == [1, 0, 0, 0, 10, 11, 2] and start == 1
        assert tg == [IGNORE, IGNORE, IGNORE, 10, 11, 2, IGNORE]
    # every target is a transcript token or EOS
    assert [t for t in tg if t != IGNORE] == [10, 11, 2]


@pytest.mark.parametrize("placement", ["prepend", "placeholder"])
def test_embeddings_land_at_their_slots(tok_dir, tmp_path, placement):
    m = build_continuous(make_cfg(tok_dir, tmp_path, f"continuous.placement={placement}")).eval()
    from spiritlm.models.continuous.spec import make_batches

    batch = make_batches(make_cfg(tok_dir, tmp_path, f"continuous.placement={placement}"), m,
                         progress=False).next_batch(2)
    embs, _ = m.audio_embeddings(batch["audio"])
    x = m.embed(batch["input_ids_BT"], embs, batch["slots"])
    tokens = m.lm.get_input_embeddings()(batch["input_ids_BT"])
    audio_pos = torch.zeros(batch["input_ids_BT"].shape, dtype=torch.bool)
    for (b, start, n), e in zip(batch["slots"], embs):
        assert torch.equal(x[b, start : start + n], e)
        audio_pos[b, start : start + n] = True
        bos_at = start + n if placement == "prepend" else start - 1
        assert batch["input_ids_BT"][b, bos_at].item() == m.tok.bos_id
    assert torch.equal(x[~audio_pos], tokens[~audio_pos])
    # no target on an audio slot, but for placeholders the last slot predicts the first word
    if placement == "placeholder":
        for b, start, n in batch["slots"]:
            audio_pos[b, start + n - 1] = False
    assert (batch["targets_BT"][audio_pos] == IGNORE).all()


def test_packed_utterance_logits_equal_alone(tok_dir, tmp_path):
    """Document isolation with spliced embeddings: every utterance of a packed row gets the
    logits it gets alone (positions restart, block-diagonal mask)."""
    cfg = make_cfg(tok_dir, tmp_path, "continuous.projector.kind=moe")
    m = build_continuous(cfg).eval()
    from spiritlm.models.continuous.spec import make_batches

    packed = make_batches(cfg, m, progress=False)
    batch = packed.next_batch(1)
    n = len(batch["slots"])
    assert n >= 3
    starts = [s for _, s, _ in batch["slots"]]
    last = int((batch["targets_BT"][0] != IGNORE).nonzero().max()) + 2  # the last utterance's EOS + 1
    with torch.no_grad():
        logits, _ = m(batch)
        for k in sorted({0, 1, n - 1}):  # the first, one in the middle, the one before the padding
            u = packed.utts[batch["utt_index"][k]]
            alone = ContinuousBatches([u], cfg.data.seq_len, "prepend", m.tok.bos_id, m.tok.eos_id,
                                      m.tok.audio_id, pad_id=m.tok.eos_id, pack=False).next_batch(1)
            la, _ = m(alone)
            seg = logits[0, starts[k] : starts[k + 1] if k + 1 < n else last]
            assert torch.allclose(seg, la[0, : seg.shape[0]], atol=1e-4)


def test_projector_only_freezes_the_rest(tok_dir, tmp_path):
    cfg = make_cfg(tok_dir, tmp_path, "continuous.trainable=projector")
    m = build_continuous(cfg)
    from spiritlm.models.continuous.spec import make_batches

    batch = make_batches(cfg, m, progress=False).next_batch(2)
    logits, aux = m(batch)
    (text_loss(logits, batch["targets_BT"])[0] + aux).backward()
    assert all(p.grad is None for p in m.lm.parameters())
    assert all(p.grad is None for p in m.encoder.parameters())
    assert all(p.grad is not None for p in m.projector.parameters())
    counts = m.param_counts()
    assert counts["lm"]["trainable"] == 0 and counts["projector"]["trainable"] == counts["projector"]["total"] > 0


def test_lora_adapters_save_load_same_outputs(tok_dir, tmp_path):
    cfg = make_cfg(tok_dir, tmp_path, "continuous.trainable=lora")
    m = build_continuous(cfg)
    assert m.is_peft()
    counts = m.param_counts()
    assert counts["lora"]["trainable"] > 0 and counts["lm"]["trainable"] == 0
    names = {n for n, p in m.lm.named_parameters() if p.requires_grad}
    assert names and all(any(f".{t}." in n for t in ("q_proj", "k_proj", "v_proj", "o_proj")) for n in names)
    with torch.no_grad():  # non-zero adapters (peft starts lora_B at 0)
        for n, p in m.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
        for p in m.projector.parameters():
            p.add_(0.01)
    m.eval()
    from spiritlm.models.continuous.spec import make_batches

    batch = make_batches(cfg, m, progress=False).next_batch(1)
    with torch.no_grad():
        ref, _ = m(batch)
    parts = m.save_parts(tmp_path / "parts")
    assert (parts / "adapter" / "adapter_model.safetensors").is_file()
    assert (parts / "adapter" / "adapter_config.json").is_file()
    assert (parts / "projector.safetensors").is_file()
    cfg2 = make_cfg(tok_dir, tmp_path, "continuous.trainable=lora", f"continuous.lora.checkpoint={parts / 'adapter'}",
                    f"continuous.projector.checkpoint={parts / 'projector.safetensors'}",
                    f"continuous.encoder.checkpoint={parts / 'encoder.safetensors'}")
    m2 = build_continuous(cfg2).eval()
    with torch.no_grad():
        out, _ = m2(batch)
    assert torch.allclose(ref, out, atol=1e-5)
    # merged export reads back with the same outputs
    from spiritlm.models.continuous.model import load_continuous

    m3 = load_continuous(m.export_merged(tmp_path / "hf"))
    with torch.no_grad():
        out3, _ = m3(batch)
    assert torch.allclose(ref, out3, atol=1e-4)


def test_ctc_head_loss_and_greedy():
    torch.manual_seed(0)
    voc = CharVocab()
    head = CTCHead(8, len(voc))
    x = torch.randn(2, 12, 8, requires_grad=True)
    loss = head.loss(x, torch.tensor([12, 9]), [voc.encode("ab"), voc.encode("a b")])
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert x.grad is not None
    assert voc.decode(voc.encode("It's A b!")) == "it's a b"
    assert all(isinstance(s, list) for s in head.greedy(x.detach(), torch.tensor([12, 9])))


def test_bad_input_counted_skips(tok_dir, tmp_path):
    cfg = make_cfg(tok_dir, tmp_path)
    m = build_continuous(cfg)
    import soundfile as sf

    from spiritlm.manifest import Utterance, write_manifest

    d = tmp_path / "corpus"
    (d / "audio").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = [("ok", 16000, "one two three"), ("short", 300, "one"), ("cyr", 16000, "привет мир как дела"),
            ("empty", 16000, "  ")]
    utts = []
    for uid, n, text in rows:
        sf.write(d / "audio" / f"{uid}.wav", (rng.standard_normal(n) * 0.1).astype(np.float32), 16000)
        utts.append(Utterance(uid, f"audio/{uid}.wav", n / 16000, 16000, text or "x", "spk"))
    utts[-1] = Utterance("empty", "audio/empty.wav", 1.0, 16000, "x", "spk")
    utts.append(Utterance("missing", "audio/missing.wav", 1.0, 16000, "one", "spk"))
    write_manifest(d / "manifest.jsonl", utts)
    kept, skips = read_utterances(cfg.continuous.data, m.tok, m.frames_for, 96, "prepend",
                                  manifests=[str(d / "manifest.jsonl")])
    assert [u.id for u in kept] == ["ok", "empty"]
    assert skips == {"too_short": 1, "uncovered_script": 1, "unreadable_audio": 1}


def test_encoder_width_or_rate_mismatch_is_a_config_error(tok_dir, tmp_path):
    with pytest.raises(ConfigError, match="gives 32-d frames; set dim=32"):
        build_continuous(make_cfg(tok_dir, tmp_path, "continuous.encoder.dim=768"))
    with pytest.raises(ConfigError, match="runs at 25 Hz; set frame_rate=25"):
        build_continuous(make_cfg(tok_dir, tmp_path, "continuous.encoder.frame_rate=50"))


def test_hf_tokenizer_directory(tmp_path):
    """A HF tokenizer dir (tokenizer.json, e.g. Qwen3) instead of a SentencePiece model: BOS/EOS,
    the <audio> piece as placeholder id, and a script it does not cover counts as uncovered."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from spiritlm.models.continuous.text import LMTokenizer

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<audio>", "one", "two", "three"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            additional_special_tokens=["<audio>"]).save_pretrained(tmp_path)
    tok = LMTokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.audio_id) == (1, 2, 3)
    assert tok.encode("one two") == [4, 5] and tok.decode([1, 4, 5, 2]) == "one two"
    assert tok.uncovered("one two", tok.encode("one two")) == 0.0
    assert tok.uncovered("привет", tok.encode("привет")) == 1.0


def test_decode_drops_ids_beyond_the_text_vocabulary(tmp_path):
    """An LM whose rows extend past the SentencePiece model (speech vocabulary appended) may
    generate such an id; decoding drops it instead of raising OUT_OF_RANGE."""
    import sentencepiece as spm

    from spiritlm.models.continuous.text import LMTokenizer

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(["the cat sat on the mat", "a dog ran in the park"] * 50))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "tokenizer"), vocab_size=20,
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1)
    tok = LMTokenizer(str(tmp_path))
    ids = tok.encode("the cat")
    assert tok.decode(ids + [tok.sp.get_piece_size() + 5]) == tok.decode(ids) == "the cat"
