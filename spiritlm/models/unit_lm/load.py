"""Loading a saved unit LM (``spiritlm.models.unit_lm``) for evaluation and generation.

A model directory is a HF causal-LM checkpoint (``config.json`` + weights) with ``tokenizer.model``
(LLaMA-2, Mistral) or ``tokenizer.json`` (Llama-3, Qwen2.5/3, SmolLM2, OLMo-2): either one of ours (``spiritlm train`` exports ``spiritlm_vocab.json`` beside it) or a released
Spirit LM checkpoint (32000 SentencePiece pieces + the speech tokens as added tokens): Base
(``SPIRITLM_BASE``, 32512 rows) or Expressive (``SPIRITLM``, 32768 rows), told apart by its added
tokens (or, without any, by its rows). :func:`load_model` refuses a directory without the speech
vocabulary with a message that says what to do.
"""

from __future__ import annotations

from pathlib import Path

from spiritlm.artifacts import hf_directory
from spiritlm.text_tokenizer import LAYOUT_FILE, SP_FILE, SpiritTokenizer, has_text_tokenizer, layout_of_hf_dir
from spiritlm.vocab import LayoutMismatchError, describe_layout, expected_rows_text, layout_for_rows, rows_fit


class ModelDirError(ValueError):
    """A model directory that cannot be evaluated; the message names the file and the fix."""


def load_tokenizer(model_dir: str | Path, rows: int | None = None) -> SpiritTokenizer:
    """The directory's tokenizer with its speech layout, from (first found) ``spiritlm_vocab.json``,
    the added tokens of a released checkpoint (Base: ``[Hu*]`` only; Expressive: also ``[Pi*]``,
    ``[St*]``), or -- when neither says -- the model's embedding ``rows`` (32512: Base, 32768:
    Expressive; ``layout_for_rows``)."""
    d = Path(model_dir)
    if not has_text_tokenizer(d):
        raise ModelDirError(
            f"{d / SP_FILE} not found (nor tokenizer.json): a model directory needs its text tokenizer. "
            "`spiritlm train` exports it when the run has one (--set model.tokenizer=DIR, or a "
            "model.checkpoint holding tokenizer.model or tokenizer.json); else copy the tokenizer the model "
            "was trained with (the release's tokenizer.model for Spirit LM) into the directory"
        )
    try:
        tok = SpiritTokenizer.from_pretrained(d)
        if not (d / LAYOUT_FILE).is_file() and layout_of_hf_dir(d) is None and rows is not None:
            by_rows = layout_for_rows(rows, tok.text.size)
            if by_rows is not None and by_rows != tok.layout:
                tok = SpiritTokenizer.from_pretrained(d, layout=by_rows)
    except (LayoutMismatchError, ValueError) as e:  # TokenizerError / HFTextError too
        raise ModelDirError(str(e)) from None
    if tok.sp is None:  # tokenizer.json: SpiritTokenizer refused base tokens named like ours
        return tok
    marker_piece = tok.sp.piece_to_id(tok.layout.text_marker)
    if marker_piece != tok.sp.unk_id():
        raise ModelDirError(
            f"{d / SP_FILE} holds {tok.layout.text_marker} as SentencePiece piece {marker_piece}: the "
            "speech tokens are expected as added tokens on top of the base pieces (LLaMA-2: 32000); "
            "use the base LLaMA-2 tokenizer.model with the added tokens in tokenizer_config.json"
        )
    return tok


def check_speech_vocab(model_dir: Path, model_vocab: int, tok: SpiritTokenizer) -> None:
    """The model's embedding rows must hold the tokenizer's layout: every id, and at most the
    padding of ``MAX_PAD_MULTIPLE`` beyond it (more rows means another vocabulary)."""
    layout = tok.layout
    need = layout.vocab_size
    if model_vocab < need:
        hint = ("this looks like a text-only LLaMA. Continue-pretrain it with `spiritlm train` (which "
                "adds the speech embeddings) or point --model at a Spirit LM checkpoint directory"
                if model_vocab == layout.base_vocab_size else
                f"the tokenizer and the model disagree (expected {expected_rows_text(layout.base_vocab_size)}); "
                "use the tokenizer files that came with the model")
        raise ModelDirError(
            f"{model_dir / 'config.json'}: vocab_size={model_vocab} but the speech vocabulary needs "
            f"{need} ids ({describe_layout(layout)}); {hint}"
        )
    if not rows_fit(layout, model_vocab):
        raise ModelDirError(
            f"{model_dir / 'config.json'}: vocab_size={model_vocab} is neither Spirit LM layout for this "
            f"tokenizer ({describe_layout(layout)}): expected {expected_rows_text(layout.base_vocab_size)}; "
            "use the tokenizer files that came with the model"
        )


def load_model(model_dir: str | Path, device: str = "cpu", dtype: str = "float32"):
    """-> (model in eval mode, SpiritTokenizer). Checks the speech vocabulary first."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    d = Path(model_dir)
    if not (d / "config.json").is_file():
        raise ModelDirError(
            f"{d / 'config.json'} not found: --model must be a HF checkpoint directory "
            "(config.json, *.safetensors, tokenizer.model), e.g. one exported by `spiritlm train`"
        )
    with hf_directory(d):
        config = AutoConfig.from_pretrained(d)
    tok = load_tokenizer(d, rows=int(config.vocab_size))
    check_speech_vocab(d, int(config.vocab_size), tok)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise ModelDirError(f"dtype={dtype!r}: use float32, bfloat16 or float16")
    with hf_directory(d):
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch_dtype)
    model.to(device).eval()
    return model, tok
