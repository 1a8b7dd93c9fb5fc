"""Text + speech tokenizer: a text tokenizer extended with the speech vocabulary.

The text tokenizer is LLaMA-2's SentencePiece ``tokenizer.model`` (the release; what follows
describes it) or any ``tokenizer.json`` -- Llama-3, Qwen2.5/3, SmolLM2, OLMo-2 --
through :mod:`spiritlm.hf_text`, whose docstring says how word starts and reserved ids are handled.

Ids are those of ``spiritlm.vocab``: the text ids first (0..base-1), then ``[Text]``,
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

import hashlib
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

import numpy as np
import sentencepiece as spm

from spiritlm.hf_text import HF_FILE, HFText
from spiritlm.vocab import (SPIRITLM, VocabLayout, ids_to_units, layout_from_added_tokens, parse_speech_tokens,
                            units_to_ids)

LAYOUT_FILE = "spiritlm_vocab.json"
SP_FILE = "tokenizer.model"

Segment = tuple[str, Union[str, Mapping]]  # ("text", "hello") | ("speech", units dict or string)


class TokenizerError(ValueError):
    pass


class SentencePieceText:
    """The text half of a LLaMA-2-style SentencePiece ``tokenizer.model`` (the release's path):
    what :class:`SpiritTokenizer` needs from a text tokenizer, as :class:`spiritlm.hf_text.HFText`
    gives it for a ``tokenizer.json``."""

    kind = SP_FILE

    def __init__(self, proto: bytes, legacy: bool = True):
        self.sp = spm.SentencePieceProcessor()
        self.sp.load_from_serialized_proto(proto)
        self.proto, self.legacy = proto, legacy
        self.size = self.sp.get_piece_size()
        self.bos_id, self.eos_id, self.unk_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()
        self.sha256 = hashlib.sha256(proto).hexdigest()

    def piece_id(self, content: str) -> int | None:
        i = self.sp.piece_to_id(content)
        return None if i == self.unk_id else int(i)

    def encode(self, text: str, first: bool) -> list[int]:
        if not text:
            return []
        if self.legacy or first:
            return self.sp.encode(text)
        # Non-legacy: no dummy-prefix space after a marker. Encode behind the unk piece and cut
        # it off again (HF's way), since SentencePiece cannot turn the prefix off per call.
        unk = self.sp.id_to_piece(self.unk_id)
        n_unk = len(self.sp.encode(unk))
        return self.sp.encode(unk + text)[n_unk:]

    def encode_words(self, words: Sequence[str]) -> list[list[int]]:
        """Each word with its dummy prefix: ``cat`` -> ``▁cat``, as mid-sentence."""
        return self.sp.encode(list(words)) if words else []

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])


TextBackend = Union[SentencePieceText, HFText]


class SpiritTokenizer:
    """Text + speech ids on a SentencePiece ``tokenizer.model`` (LLaMA-2, Mistral; the release)
    or, through :class:`spiritlm.hf_text.HFText`, on a ``tokenizer.json`` (Llama-3, Qwen2.5/3,
    SmolLM2, OLMo-2). ``sp_model``: the SentencePiece model (path or bytes) or a text backend.

    BOS: the tokenizer's own; a tokenizer without one (Qwen) starts documents with its EOS
    (``<|endoftext|>``, the separator it was pretrained with), as the trainer's ``data.bos_id``
    must then do too (checked at train start)."""

    def __init__(
        self,
        sp_model: Union[str, Path, bytes, TextBackend],
        layout: VocabLayout | None = None,
        add_bos: bool = True,
        legacy: bool = True,
    ):
        if isinstance(sp_model, (SentencePieceText, HFText)):
            self.text = sp_model
        elif isinstance(sp_model, bytes):
            self.text = SentencePieceText(sp_model, legacy)
        else:
            path = Path(sp_model)
            if not path.is_file():
                raise FileNotFoundError(f"SentencePiece model not found: {path}")
            self.text = SentencePieceText(path.read_bytes(), legacy)
        self.sp = getattr(self.text, "sp", None)  # the SentencePiece processor, if that is the backend
        self._proto = getattr(self.text, "proto", None)
        n = self.text.size
        if layout is None:
            layout = VocabLayout(base_vocab_size=n) if n != SPIRITLM.base_vocab_size else SPIRITLM
        if layout.base_vocab_size != n:
            raise TokenizerError(
                f"the text tokenizer ({self.text.kind}) has {n} ids in use but the vocabulary layout puts "
                f"[Text] at {layout.base_vocab_size}; set base_vocab_size={n} or use the matching tokenizer"
            )
        if isinstance(self.text, HFText):
            clash = [(t, self.text.piece_id(t)) for t in layout.added_tokens()[:2] + layout.added_tokens()[2:]
                     if self.text.piece_id(t) is not None]
            if clash:
                t, i = clash[0]
                raise TokenizerError(
                    f"{self.text.where}: the base tokenizer already has {t} as id {i} ({len(clash)} of our "
                    f"token names in all): the speech tokens must be new ids after its {n}. Use the base "
                    "model's own tokenizer.json, without tokens named like ours")
        self.layout = layout
        self.add_bos = add_bos
        self.legacy = legacy
        self.bos_id = self.text.bos_id if self.text.bos_id >= 0 else self.text.eos_id
        self.eos_id = self.text.eos_id
        self._tag_to_id = layout._token_to_id
        self._added = layout.added_tokens()

    def __reduce__(self):  # picklable for the data stage's worker processes
        if isinstance(self.text, HFText):
            return (_from_hf_state, (self.text.data, self.text.config, self.text.where, self.layout, self.add_bos))
        return (SpiritTokenizer, (self._proto, self.layout, self.add_bos, self.legacy))

    @property
    def sha256(self) -> str:
        """The text tokenizer's identity (SentencePiece: the file's bytes; tokenizer.json: its
        canonical JSON without our tokens), recorded in shards and checked at train start."""
        return self.text.sha256

    # ---- loading / saving ----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory: Union[str, Path], **kwargs) -> "SpiritTokenizer":
        """Load ``tokenizer.model`` (+ our layout file or the HF config's ``legacy`` flag), or, when
        the directory has none, ``tokenizer.json`` (+ ``tokenizer_config.json``)."""
        d = Path(directory)
        meta = json.loads((d / LAYOUT_FILE).read_text()) if (d / LAYOUT_FILE).is_file() else {}
        if "layout" not in kwargs and meta:
            kwargs["layout"] = VocabLayout(**meta["layout"])
        if not (d / SP_FILE).is_file():
            if not (d / HF_FILE).is_file():
                raise FileNotFoundError(
                    f"{d} has neither {SP_FILE} nor {HF_FILE}: point at a LLaMA-2 / Spirit LM checkpoint "
                    "directory, an HF model directory with its tokenizer files, or a directory written by "
                    "SpiritTokenizer.save_pretrained")
            text = HFText.from_dir(d)
            if "layout" not in kwargs:
                layout = layout_from_added_tokens(hf_added_tokens(d), text.size, where=str(d))
                if layout is not None:
                    kwargs["layout"] = layout
            if "add_bos" not in kwargs and "add_bos" in meta:
                kwargs["add_bos"] = bool(meta["add_bos"])
            return cls(text, **kwargs)
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
        """SentencePiece: ``tokenizer.model`` + an HF ``tokenizer_config.json`` listing the added
        tokens; tokenizer.json: the family's own files with the speech tokens added. Both with
        ``spiritlm_vocab.json``; both load with ``AutoTokenizer`` and give the same ids (tested).

        No ``tokenizer.json`` is written for SentencePiece on purpose: HF then converts from
        ``tokenizer.model`` and honours ``legacy``, as it does for the released checkpoints' directories.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"layout": asdict(self.layout), "legacy": self.legacy, "add_bos": self.add_bos,
                "text_tokenizer": self.text.kind}
        if isinstance(self.text, HFText):
            self.text.save(d, [(self.layout.base_vocab_size + k, t) for k, t in enumerate(self._added)],
                           self.add_bos)
            (d / LAYOUT_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            return d
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
        del meta["text_tokenizer"]  # the SentencePiece layout file stays as it was
        (d / LAYOUT_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return d

    # ---- encoding --------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.layout.vocab_size

    def _sp_encode(self, text: str, first: bool) -> list[int]:
        """``first``: as at the start of a string (SentencePiece: with the dummy prefix); else as
        after a marker -- mid-sentence for a tokenizer.json, per ``legacy`` for SentencePiece."""
        return self.text.encode(text, first)

    def span_ids(self, text: str) -> list[int]:
        """A text document's ids after its ``[Text]`` marker (no BOS): its first word as mid-sentence,
        like every word of an interleaved span (SentencePiece: the dummy prefix ``▁``)."""
        return self.text.encode(text, first=self.sp is not None)  # SentencePiece: sp.encode(text), as ever

    def word_ids(self, words: Sequence[str]) -> list[list[int]]:
        """Every word's ids on its own, in its mid-sentence form (``▁cat``, ``Ġcat``): a span's
        ids are the concatenation of its words', so no merge crosses a word or a marker."""
        return self.text.encode_words(words)

    def encode_text(self, text: str, bos: bool | None = None) -> list[int]:
        """Plain text through SentencePiece only: tags in ``text`` stay text."""
        return self.encode(text, bos=bos, speech_tags=False)

    def encode(self, text: str, bos: bool | None = None, speech_tags: bool = True) -> list[int]:
        """Encode a string; with ``speech_tags`` the layout's tags become their token ids."""
        ids = [self.bos_id] if (self.add_bos if bos is None else bos) and self.bos_id >= 0 else []
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
        ids = [self.bos_id] if (self.add_bos if bos is None else bos) and self.bos_id >= 0 else []
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
                ids.extend(self._sp_encode(content, first=self.legacy and self.sp is not None))
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
                    out.append(self.text.decode(run))
                    run = []
                if i >= self.layout.vocab_size:
                    raise TokenizerError(f"id {i} is outside the vocabulary (size {self.layout.vocab_size})")
                out.append(self._added[i - base])
            elif not (skip_bos and i == self.bos_id):
                run.append(i)
        if run:
            out.append(self.text.decode(run))
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
    return layout_from_added_tokens(hf_added_tokens(d), text_size_of_dir(d), where=str(d))


def has_text_tokenizer(directory: Union[str, Path]) -> bool:
    d = Path(directory)
    return (d / SP_FILE).is_file() or (d / HF_FILE).is_file()


def text_size_of_dir(directory: Union[str, Path]) -> int:
    """Ids of a directory's text tokenizer (tokenizer.model first, else tokenizer.json), our speech
    tokens left out: where ``[Text]`` goes."""
    d = Path(directory)
    if (d / SP_FILE).is_file():
        sp = spm.SentencePieceProcessor()
        sp.load(str(d / SP_FILE))
        return sp.get_piece_size()
    return HFText.from_dir(d).size


def text_sha256_of_dir(directory: Union[str, Path]) -> str:
    """The identity :attr:`SpiritTokenizer.sha256` gives, from a directory (or a tokenizer.model)."""
    p = Path(directory)
    if p.is_file() and p.name != HF_FILE:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    if (p / SP_FILE).is_file():
        return hashlib.sha256((p / SP_FILE).read_bytes()).hexdigest()
    return HFText.from_dir(p).sha256


def _from_hf_state(data, config, where, layout, add_bos) -> "SpiritTokenizer":
    return SpiritTokenizer(HFText(data, config, where), layout=layout, add_bos=add_bos)


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
