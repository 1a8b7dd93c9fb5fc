"""The text half of a byte-level-BPE (or any ``tokenizer.json``) tokenizer: Llama-3, Qwen2.5/3,
SmolLM2, OLMo-2 ship no SentencePiece ``tokenizer.model``, only HF ``tokenizers`` files.

:class:`HFText` is what :class:`spiritlm.text_tokenizer.SpiritTokenizer` needs from a text
tokenizer -- size, BOS/EOS, a span's ids, per-word ids, decoding, an identity, saving -- for a
``tokenizer.json``; :class:`spiritlm.text_tokenizer.SentencePieceText` is the same for LLaMA-2's
``tokenizer.model`` (the release's path, unchanged). We use the ``tokenizers`` library itself
(no ``transformers`` tokenizer class) so that ids are exactly those of the file, and write the
speech tokens into the file's own ``added_tokens`` so that ``AutoTokenizer`` loads the export.

Word starts. Interleaving cuts text at word boundaries, so every word is encoded on its own in
the form it has *mid-sentence* -- byte-level ``Ġword`` (" word"), SentencePiece-style ``▁word`` --
and a text span is the concatenation of its words' ids: no BPE merge crosses a word, a
``[Text]`` or a ``[Speech]`` marker. Which form a tokenizer uses (a leading space, or a
normaliser that prepends one itself) is measured once at load (:func:`word_prefix`): the
mid-sentence ids of a probe word are read off ``encode("a " + word)`` and compared with
``encode(" " + word)`` and ``encode(word)``.

The base vocabulary is every id in use -- the BPE pieces and the reserved/special tokens
(Llama-3's 256 ``<|reserved_special_token_*|>``, Qwen's ``<|im_start|>`` ...) -- so ``[Text]``
goes right after the highest one. Our own speech tokens, when a file holds them (an export),
are not part of it: they are split off at load and the identity hash leaves them out, so a
tokenizer and its export hash alike.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Iterable, Sequence, Union

from tokenizers import Tokenizer

HF_FILE = "tokenizer.json"
HF_CONFIG = "tokenizer_config.json"
# the speech vocabulary's token names (spiritlm.vocab): never part of a base tokenizer
OUR_TOKEN_RE = re.compile(r"\[(Text|Speech|Hu\d+|Pi\d+|St\d+)\]")
PROBE_WORDS = ("hello", "world", "speech", "the", "Paris", "42")


class HFTextError(ValueError):
    """A tokenizer.json this project cannot use as it is; the message names the file and the fix."""


def _token_content(value) -> str | None:
    """``bos_token`` in tokenizer_config.json: a string, an AddedToken dict, or null."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def base_tokenizer_json(data: dict) -> dict:
    """A tokenizer.json dict without our speech tokens (the base tokenizer an export was made from)."""
    out = copy.deepcopy(data)
    out["added_tokens"] = [t for t in data.get("added_tokens") or []
                           if not OUR_TOKEN_RE.fullmatch(str(t.get("content", "")))]
    return out


def identity_sha256(data: dict) -> str:
    """SHA-256 of the base tokenizer's canonical JSON (keys sorted; our tokens left out)."""
    canon = json.dumps(base_tokenizer_json(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def word_prefix(tok: Tokenizer, where: str = "the tokenizer") -> str:
    """" " when a word is written with its leading space to get its mid-sentence ids (byte-level
    BPE: ``Ġword``), "" when the tokenizer adds the word-start mark itself (a Metaspace
    pre-tokenizer that prepends ``▁``, or ``add_prefix_space``). Raises when neither form gives
    the mid-sentence ids of the probe words."""
    anchor = tok.encode("a", add_special_tokens=False).ids
    for prefix in (" ", ""):
        ok = True
        for w in PROBE_WORDS:
            mid = tok.encode("a " + w, add_special_tokens=False).ids
            if mid[: len(anchor)] != anchor or tok.encode(prefix + w, add_special_tokens=False).ids != mid[len(anchor):]:
                ok = False
                break
        if ok:
            return prefix
    raise HFTextError(
        f"{where}: cannot tell how this tokenizer starts a word mid-sentence (neither 'word' nor ' word' "
        f"encodes like the word after 'a '); interleaving needs per-word ids that concatenate to the "
        "sentence's. Use the tokenizer.json the model was pretrained with, unmodified")


class HFText:
    """The text tokenizer of a ``tokenizer.json`` (see the module docstring)."""

    kind = "tokenizer.json"

    def __init__(self, data: dict, config: dict | None = None, where: str = HF_FILE):
        self.where = where
        self.data = base_tokenizer_json(data)
        self.config = dict(config or {})
        try:
            self.tok = Tokenizer.from_str(json.dumps(self.data))
        except Exception as e:  # tokenizers raises its own Exception subclass
            raise HFTextError(f"{where}: not a tokenizer.json the `tokenizers` library reads ({e})") from None
        vocab = self.tok.get_vocab(with_added_tokens=True)
        if not vocab:
            raise HFTextError(f"{where}: the tokenizer has an empty vocabulary")
        self.size = max(vocab.values()) + 1  # reserved / special tokens included
        self.sha256 = identity_sha256(self.data)
        self.bos_id = self._special_id("bos_token")
        self.eos_id = self._special_id("eos_token")
        self.unk_id = self._special_id("unk_token")
        self.prefix = word_prefix(self.tok, where)
        if "add_bos_token" in self.config:
            self.adds_bos = bool(self.config["add_bos_token"]) and self.bos_id >= 0
        else:  # the post-processor decides (Llama-3's TemplateProcessing adds <|begin_of_text|>)
            ids = self.tok.encode("a", add_special_tokens=True).ids
            self.adds_bos = self.bos_id >= 0 and bool(ids) and ids[0] == self.bos_id

    def _special_id(self, key: str) -> int:
        content = _token_content(self.config.get(key))
        if content is None:
            return -1
        i = self.tok.token_to_id(content)
        if i is None:
            raise HFTextError(f"{self.where}: tokenizer_config.json names {key}={content!r}, which the "
                              "tokenizer does not have; use the tokenizer files that came with the model")
        return int(i)

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, directory: Union[str, Path]) -> "HFText":
        d = Path(directory)
        f = d / HF_FILE if d.is_dir() else d
        if not f.is_file():
            raise HFTextError(f"{f} not found: a byte-level-BPE tokenizer directory holds tokenizer.json "
                              "(save one with transformers' AutoTokenizer.from_pretrained(...).save_pretrained(DIR))")
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HFTextError(f"{f}: not valid JSON ({e})") from None
        cfg_file = f.parent / HF_CONFIG
        config = {}
        if cfg_file.is_file():
            try:
                config = json.loads(cfg_file.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise HFTextError(f"{cfg_file}: not valid JSON ({e})") from None
        return cls(data, config, where=str(f))

    # ---- encoding --------------------------------------------------------------------------
    def piece_id(self, content: str) -> int | None:
        i = self.tok.token_to_id(content)
        return None if i is None else int(i)

    def encode(self, text: str, first: bool) -> list[int]:
        """``text`` at the start of the string (``first``) as the tokenizer encodes it; after a
        marker, as the same words mid-sentence (a leading word start unless it has whitespace)."""
        if not text:
            return []
        if not first and self.prefix and not text[0].isspace():
            text = self.prefix + text
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_words(self, words: Sequence[str]) -> list[list[int]]:
        """Each word's mid-sentence ids (one batch call into the Rust tokenizer)."""
        if not words:
            return []
        return [e.ids for e in self.tok.encode_batch([self.prefix + w for w in words], add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    # ---- saving ----------------------------------------------------------------------------
    def save(self, directory: Path, added: Iterable[tuple[int, str]], add_bos: bool) -> None:
        """tokenizer.json with the speech tokens appended to its ``added_tokens`` (ids checked) and
        tokenizer_config.json with them in ``added_tokens_decoder``: the family's own files, which
        ``AutoTokenizer`` loads with the same ids."""
        data = copy.deepcopy(self.data)
        config = copy.deepcopy(self.config)
        decoder = dict(config.get("added_tokens_decoder") or {})
        for i, content in added:
            entry = {"id": int(i), "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                     "normalized": False, "special": False}
            data.setdefault("added_tokens", []).append(entry)
            decoder[str(int(i))] = {k: v for k, v in entry.items() if k != "id"}
        config["added_tokens_decoder"] = decoder
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        config.setdefault("clean_up_tokenization_spaces", False)
        check = Tokenizer.from_str(json.dumps(data))
        for i, content in added:
            if check.token_to_id(content) != int(i):
                raise HFTextError(f"{self.where}: {content} would get id {check.token_to_id(content)} in the "
                                  f"exported tokenizer.json, not {i}")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / HF_FILE).write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        (directory / HF_CONFIG).write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        stale = directory / "tokenizer.model"  # a SentencePiece file would be taken for the tokenizer
        if stale.exists():
            stale.unlink()
