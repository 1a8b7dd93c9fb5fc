"""Text + speech tokenizer: a LLaMA-2-style SentencePiece model extended with the speech vocabulary.

Ids are those of ``spiritlm.vocab``: the SentencePiece pieces first (0..base-1), then ``[Text]``,
``[Speech]``, ``[Hu*]``, ``[Pi*]``, ``[St*]``. A directory written by ``save_pretrained`` loads
with ``transformers.AutoTokenizer``/``LlamaTokenizer.from_pretrained`` and gives the same ids
(tested), laid out like the released Spirit LM checkpoints (``tokenizer.model`` + added tokens).

Literal tags in user text: ``encode(text)`` treats ``[Hu12]``, ``[Speech]`` ... anywhere in the
string as speech/marker tokens -- what the released HF tokenizer does with added tokens. To keep
untrusted text as text, use ``encode(text, speech_tags=False)`` (or ``encode_text``): the string
then goes through SentencePiece alone and ``[Hu12]`` becomes ordinary pieces. ``encode_segments``
builds mixed sequences from typed segments and never reads tags out of text.

``legacy`` mirrors HF's LlamaTokenizer flag: True (our default, and HF 4.x's default) gives every
text chunk after a marker SentencePiece's dummy-prefix space (``[Text]the`` -> ``[Text] ▁the``),
which matches word-level interleaving where every word starts with ``▁``; False prefixes only
the very start of the string.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

import numpy as np
import sentencepiece as spm

from spiritlm.vocab import (SPIRITLM, VocabLayout, ids_to_units, layout_from_added_tokens, parse_speech_tokens,
                            units_to_ids)

LAYOUT_FILE = "spiritlm_vocab.json"
SP_FILE = "tokenizer.model"

Segment = tuple[str, Union[str, Mapping]]  # ("text", "hello") | ("speech", units dict or string)


class TokenizerError(ValueError):
    pass


class SpiritTokenizer:
    def __init__(
        self,
        sp_model: Union[str, Path, bytes],
        layout: VocabLayout | None = None,
        add_bos: bool = True,
        legacy: bool = True,
    ):
        self.sp = spm.SentencePieceProcessor()
        if isinstance(sp_model, bytes):
            self.sp.load_from_serialized_proto(sp_model)
            self._proto = sp_model
        else:
            path = Path(sp_model)
            if not path.is_file():
                raise FileNotFoundError(f"SentencePiece model not found: {path}")
            self._proto = path.read_bytes()
            self.sp.load_from_serialized_proto(self._proto)
        n = self.sp.get_piece_size()
        if layout is None:
            layout = VocabLayout(base_vocab_size=n) if n != SPIRITLM.base_vocab_size else SPIRITLM
        if layout.base_vocab_size != n:
            raise TokenizerError(
                f"the SentencePiece model has {n} pieces but the vocabulary layout puts [Text] at "
                f"{layout.base_vocab_size}; set base_vocab_size={n} or use the matching tokenizer.model"
            )
        self.layout = layout
        self.add_bos = add_bos
        self.legacy = legacy
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self._tag_to_id = layout._token_to_id
        self._added = layout.added_tokens()

    # ---- loading / saving ----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory: Union[str, Path], **kwargs) -> "SpiritTokenizer":
        """Load ``tokenizer.model`` (+ our layout file or the HF config's ``legacy`` flag)."""
        d = Path(directory)
        if not (d / SP_FILE).is_file():
            raise FileNotFoundError(
                f"{d} has no {SP_FILE}: point at a LLaMA-2 / Spirit LM checkpoint directory "
                "or a directory written by SpiritTokenizer.save_pretrained"
            )
        if "layout" not in kwargs and (d / LAYOUT_FILE).is_file():
            kwargs["layout"] = VocabLayout(**json.loads((d / LAYOUT_FILE).read_text())["layout"])
        if "layout" not in kwargs:  # a released checkpoint: the added tokens say Base or Expressive
            layout = layout_of_hf_dir(d)
            if layout is not None:
                kwargs["layout"] = layout
        cfg_file = d / "tokenizer_config.json"
        if "legacy" not in kwargs and cfg_file.is_file():
            legacy = json.loads(cfg_file.read_text()).get("legacy")
            if legacy is not None:
                kwargs["legacy"] = bool(legacy)
        return cls(d / SP_FILE, **kwargs)

    def save_pretrained(self, directory: Union[str, Path]) -> Path:
        """Write ``tokenizer.model`` + an HF ``tokenizer_config.json`` listing the added tokens.

        No ``tokenizer.json`` is written on purpose: HF then converts from ``tokenizer.model``
        and honours ``legacy``, as it does for the released checkpoints' directories.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / SP_FILE).write_bytes(self._proto)
        stale = d / "tokenizer.json"  # an older export's fast file would override legacy
        if stale.exists():
            stale.unlink()
        added = {}
        for i in (self.sp.unk_id(), self.bos_id, self.eos_id):
            if i >= 0:
                added[str(i)] = _added_token(self.sp.id_to_piece(i), special=True)
        for k, tok in enumerate(self._added):
            added[str(self.layout.base_vocab_size + k)] = _added_token(tok, special=False)
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "legacy": self.legacy,
            "add_bos_token": self.add_bos,
            "add_eos_token": False,
            "bos_token": self.sp.id_to_piece(self.bos_id),
            "eos_token": self.sp.id_to_piece(self.eos_id),
            "unk_token": self.sp.id_to_piece(self.sp.unk_id()),
            "pad_token": None,
            "clean_up_tokenization_spaces": False,
            "added_tokens_decoder": added,
        }
        (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        meta = {"layout": asdict(self.layout), "legacy": self.legacy, "add_bos": self.add_bos}
        (d / LAYOUT_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return d

    # ---- encoding --------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.layout.vocab_size

    def _sp_encode(self, text: str, first: bool) -> list[int]:
        if not text:
            return []
        if self.legacy or first:
            return self.sp.encode(text)
        # Non-legacy: no dummy-prefix space after a marker. Encode behind the unk piece and cut
        # it off again (HF's way), since SentencePiece cannot turn the prefix off per call.
        unk = self.sp.id_to_piece(self.sp.unk_id())
        n_unk = len(self.sp.encode(unk))
        return self.sp.encode(unk + text)[n_unk:]

    def encode_text(self, text: str, bos: bool | None = None) -> list[int]:
        """Plain text through SentencePiece only: tags in ``text`` stay text."""
        return self.encode(text, bos=bos, speech_tags=False)

    def encode(self, text: str, bos: bool | None = None, speech_tags: bool = True) -> list[int]:
        """Encode a string; with ``speech_tags`` the layout's tags become their token ids."""
        ids = [self.bos_id] if (self.add_bos if bos is None else bos) else []
        if not speech_tags:
            ids.extend(self._sp_encode(text, first=True))
            return ids
        pos = 0
        for m in self.layout._tag_re.finditer(text):
            tag_id = self._tag_to_id.get(m.group(0))
            if tag_id is None:  # e.g. [Hu999]: out of range, so it is text, as in HF
                continue
            ids.extend(self._sp_encode(text[pos : m.start()], first=pos == 0))
            ids.append(tag_id)
            pos = m.end()
        ids.extend(self._sp_encode(text[pos:], first=pos == 0))
        return ids

    def encode_segments(
        self,
        segments: Iterable[Segment],
        has_pitch: bool = False,
        has_style: bool = False,
        bos: bool | None = None,
        trailing_marker: str | None = None,
    ) -> list[int]:
        """Typed segments -> ids with a marker at every modality change (as the release prompts).

        Speech is a units dict (``{"hubert": ..., "pitch": ..., "style": ...}``) or a speech
        string; text is never scanned for tags. ``trailing_marker`` ("text"/"speech") appends the
        marker of the modality to continue in, if it differs from the last segment's.
        """
        ids = [self.bos_id] if (self.add_bos if bos is None else bos) else []
        prev = None
        for kind, content in segments:
            kind = kind.lower()
            if kind not in ("text", "speech"):
                raise TokenizerError(f"segment kind must be 'text' or 'speech', got {kind!r}")
            if kind != prev:
                ids.append(self.layout.text_id if kind == "text" else self.layout.speech_id)
            if kind == "text":
                if not isinstance(content, str):
                    raise TokenizerError(f"a text segment holds a str, got {type(content).__name__}")
                ids.extend(self._sp_encode(content, first=self.legacy))
            elif isinstance(content, str):
                ids.extend(self._speech_string_ids(content))
            else:
                ids.extend(units_to_ids(content, has_pitch, has_style, self.layout).tolist())
            prev = kind
        if trailing_marker is not None and trailing_marker != prev:
            ids.append(self.layout.text_id if trailing_marker == "text" else self.layout.speech_id)
        return ids

    def _speech_string_ids(self, string: str) -> list[int]:
        # The strict parser names the position of any malformed tag.
        kinds, codes = parse_speech_tokens(string, self.layout)
        return (self.layout.stream_offsets[kinds.astype(np.int64)] + codes).tolist()

    # ---- decoding --------------------------------------------------------------------------
    def decode(self, ids: Sequence[int], skip_bos: bool = True) -> str:
        """Ids -> string: text runs through SentencePiece, speech/marker ids as their tags."""
        out: list[str] = []
        run: list[int] = []
        base = self.layout.base_vocab_size
        for i in ids:
            i = int(i)
            if i >= base:
                if run:
                    out.append(self.sp.decode(run))
                    run = []
                if i >= self.layout.vocab_size:
                    raise TokenizerError(f"id {i} is outside the vocabulary (size {self.layout.vocab_size})")
                out.append(self._added[i - base])
            elif not (skip_bos and i == self.bos_id):
                run.append(i)
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)

    def speech_ids_to_string(self, ids: Sequence[int]) -> str:
        """Speech ids -> speech string; raises on text ids ([Speech] markers are dropped)."""
        ids_to_units(ids, self.layout)  # validates: names the first non-speech id
        base = self.layout.base_vocab_size
        return "".join(self._added[int(i) - base] for i in ids if int(i) != self.layout.speech_id)


def hf_added_tokens(directory: Union[str, Path]) -> dict[str, int]:
    """content -> id of the added tokens an HF tokenizer directory lists (``tokenizer_config.json``'s
    ``added_tokens_decoder``, ``added_tokens.json``, ``tokenizer.json``'s ``added_tokens``)."""
    d = Path(directory)
    out: dict[str, int] = {}
    f = d / "added_tokens.json"
    if f.is_file():
        out.update({str(k): int(v) for k, v in json.loads(f.read_text()).items()})
    f = d / "tokenizer.json"
    if f.is_file():
        for t in json.loads(f.read_text()).get("added_tokens") or []:
            out[t["content"]] = int(t["id"])
    f = d / "tokenizer_config.json"
    if f.is_file():
        dec = json.loads(f.read_text()).get("added_tokens_decoder") or {}
        out.update({v["content"]: int(k) for k, v in dec.items() if isinstance(v, dict) and "content" in v})
    return out


def layout_of_hf_dir(directory: Union[str, Path]) -> VocabLayout | None:
    """The speech layout (Base or Expressive, or other stream sizes) that a directory's added
    tokens describe; None when it lists none. Raises LayoutMismatchError on misplaced ids."""
    d = Path(directory)
    sp = spm.SentencePieceProcessor()
    sp.load(str(d / SP_FILE))
    return layout_from_added_tokens(hf_added_tokens(d), sp.get_piece_size(), where=str(d))


def pad_sentencepiece(sp_model: Union[str, Path, bytes], n_pieces: int) -> bytes:
    """A SentencePiece model grown to ``n_pieces`` with UNUSED pieces (never produced by
    encoding): a small trained tokenizer with LLaMA-2's 32000 pieces, so that tiny test models
    carry the release's real ids ([Text] = 32000 ...)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(sp_model if isinstance(sp_model, bytes) else Path(sp_model).read_bytes())
    if len(m.pieces) > n_pieces:
        raise TokenizerError(f"the model has {len(m.pieces)} pieces, more than {n_pieces}")
    for i in range(len(m.pieces), n_pieces):
        p = m.pieces.add()
        p.piece, p.score, p.type = f"<unused{i}>", 0.0, pb.ModelProto.SentencePiece.UNUSED
    return m.SerializeToString()


def _added_token(content: str, special: bool) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special}


def train_sentencepiece(
    texts: Iterable[str],
    out_dir: Union[str, Path],
    vocab_size: int = 1000,
    seed_sentences: int = 2_000_000,
) -> Path:
    """Train a small LLaMA-style BPE SentencePiece model (byte fallback, identity normalisation,
    digits split, unk/bos/eos = 0/1/2). Deterministic: one thread, no input sampling."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = list(texts)
    if not texts:
        raise TokenizerError("no text to train the SentencePiece model on")
    options = dict(
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        num_threads=1,
        input_sentence_size=seed_sentences,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    proto = io.BytesIO()  # in memory: a file prefix would be recorded in the model (not deterministic)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=proto, vocab_size=vocab_size, **options
        )
    except RuntimeError as e:  # e.g. vocab_size below the 256 byte pieces + characters
        raise TokenizerError(f"SentencePiece training failed: {e}") from None
    (out / SP_FILE).write_bytes(proto.getvalue())
    return out / SP_FILE
