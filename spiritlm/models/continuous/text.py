"""The LM's text tokenizer as the continuous model uses it: a SentencePiece ``tokenizer.model``
(our exports, LLaMA) or any HF tokenizer directory (Qwen3 ...), behind one small interface."""

from __future__ import annotations

from pathlib import Path

from spiritlm.config import ConfigError


class LMTokenizer:
    def __init__(self, directory: str | Path, audio_token: str = "<audio>"):
        d = Path(directory)
        self.directory = d
        if (d / "tokenizer.model").is_file():
            import sentencepiece as spm

            self.sp = spm.SentencePieceProcessor()
            self.sp.load(str(d / "tokenizer.model"))
            self.hf = None
            self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
            self.unk_id = self.sp.unk_id()
            self.size = self.sp.get_piece_size()
            aid = self.sp.piece_to_id(audio_token)
        elif (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            self.sp = None
            self.hf = AutoTokenizer.from_pretrained(str(d))
            self.eos_id = self.hf.eos_token_id
            self.bos_id = self.hf.bos_token_id if self.hf.bos_token_id is not None else self.eos_id
            self.unk_id = self.hf.unk_token_id if self.hf.unk_token_id is not None else -1
            self.size = len(self.hf)
            aid = self.hf.convert_tokens_to_ids(audio_token)
        else:
            raise ConfigError(f"{d}: no tokenizer.model / tokenizer.json; set model.tokenizer to the LM's "
                              "tokenizer directory")
        if self.bos_id is None or self.bos_id < 0 or self.eos_id is None or self.eos_id < 0:
            raise ConfigError(f"{d}: the tokenizer has no BOS/EOS ids; the continuous model needs both")
        # the placeholder's id: the tokenizer's <audio> piece if it has one, else unk (a piece the
        # LM never predicts here: its embedding is replaced and its target ignored)
        self.audio_id = aid if aid is not None and aid >= 0 and aid != self.unk_id else max(self.unk_id, 0)

    def encode(self, text: str) -> list[int]:
        if self.sp is not None:
            return list(self.sp.encode(text))
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids if int(i) not in (self.bos_id, self.eos_id)]
        if self.sp is not None:
            # an LM with the speech vocabulary appended (the demo's text start) can generate a
            # [Hu*]/[Text]/[Speech] row beyond the SentencePiece model: it is not text, so it is dropped
            # (it counts as a deletion in the WER) instead of crashing the decoder
            n = self.sp.get_piece_size()
            return self.sp.decode([i for i in ids if 0 <= i < n])
        return self.hf.decode(ids, skip_special_tokens=True)

    def uncovered(self, text: str, ids: list[int]) -> float:
        """Share of characters the vocabulary does not cover: SentencePiece byte-fallback or unk
        pieces (a script the tokenizer never saw), or for HF tokenizers text lost in a round trip."""
        letters = [c for c in text if not c.isspace()]
        if not letters:
            return 1.0
        if self.sp is not None:
            bad = sum(1 for i in ids if self.sp.is_byte(i) or i == self.unk_id)
            # a byte piece stands for one UTF-8 byte: measure the share in bytes
            return min(1.0, bad / len("".join(letters).encode("utf-8")))
        back = self.hf.decode(ids, skip_special_tokens=True)
        unk = sum(1 for i in ids if i == self.unk_id)
        lost = sum(1 for c in letters if c not in back)
        return min(1.0, (lost + unk) / len(letters))
