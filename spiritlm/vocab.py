"""The Spirit LM vocabulary and the speech-string format of the released checkpoints.

Token ids sit on top of a base LM's SentencePiece vocabulary (LLaMA-2: 32000 pieces):

    [Text]      base + 0          (32000 for LLaMA-2)
    [Speech]    base + 1          (32001)
    [Hu0..500]  base + 2 ...      (32002 .. 32502)   HuBERT units, 501 of them
    [Pi0..63]   next 64           (32503 .. 32566)   pitch (F0 VQ-VAE) units
    [St0..99]   next 100          (32567 .. 32666)   style units

A speech string is built from per-stream unit sequences (one value per frame of that stream):
each stream is deduplicated on its own (HuBERT and pitch are, style is not), token ``i`` of a
stream gets the time ``i / rate`` of its first frame, and all tokens are merged by time with a
stable sort over the list built style, pitch, HuBERT -- so ties come out St < Pi < Hu. The HuBERT
rate is 24.99 rather than 25 on purpose: it puts a HuBERT token just after a pitch/style token
that starts at the same instant. This reproduces the release's strings byte for byte (see the
golden test built from the release's own test vector).

Decoding a string back gives one pitch and one style value per (deduplicated) HuBERT unit: each
unit takes the latest pitch/style seen before it; units before the first pitch/style take the
first one seen.

Besides strings, ``units_to_ids`` / ``ids_to_units`` go straight between unit streams and token
ids with numpy, for data preparation at scale (`spiritlm bench vocab` measures both paths).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Mapping, Sequence, Union

import numpy as np

STREAMS = ("hubert", "pitch", "style")
# Merge order: the list is built style, pitch, hubert before the stable sort (ties St < Pi < Hu).
MERGE_ORDER = ("style", "pitch", "hubert")

UnitSeq = Union[str, Sequence[int], np.ndarray]


class SpeechStringError(ValueError):
    """A malformed speech string or token-id sequence; the message names the position."""


class UnitError(ValueError):
    """Unit values that do not fit the vocabulary (out of range, not integers, missing stream)."""


@dataclass(frozen=True)
class StreamSpec:
    name: str  # "hubert" | "pitch" | "style"
    prefix: str  # tag prefix inside brackets: "Hu" -> "[Hu12]"
    size: int  # number of units (codebook size)
    rate: float  # frames per second of the stream before deduplication
    dedup: bool  # collapse runs of identical consecutive units
    offset: int  # token id of unit 0


@dataclass(frozen=True)
class VocabLayout:
    """Where the speech vocabulary sits. Defaults are the released Spirit LM layout."""

    base_vocab_size: int = 32000
    text_marker: str = "[Text]"
    speech_marker: str = "[Speech]"
    hubert_size: int = 501
    hubert_prefix: str = "Hu"
    hubert_rate: float = 24.99
    hubert_dedup: bool = True
    pitch_size: int = 64
    pitch_prefix: str = "Pi"
    pitch_rate: float = 12.5
    pitch_dedup: bool = True
    style_size: int = 100
    style_prefix: str = "St"
    style_rate: float = 1.0
    style_dedup: bool = False
    # What filled the [Hu*] rows: "hubert" (HuBERT k-means / the release's quantizer) or "semantic"
    # (an ASR-supervised encoder, spiritlm.tokenizer.semantic). Same ids and string rules; recorded
    # so that shards of one family are never mixed with, or trained into a model of, the other.
    unit_family: str = "hubert"

    def __post_init__(self) -> None:
        if self.base_vocab_size < 0:
            raise ValueError(f"base_vocab_size must be >= 0, got {self.base_vocab_size}")
        for name in STREAMS:
            size = getattr(self, f"{name}_size")
            rate = getattr(self, f"{name}_rate")
            prefix = getattr(self, f"{name}_prefix")
            if size < (1 if name == "hubert" else 0):  # Base models have no pitch/style tokens
                raise ValueError(f"{name}_size must be >= {1 if name == 'hubert' else 0}, got {size}")
            if not rate > 0:
                raise ValueError(f"{name}_rate must be > 0, got {rate}")
            if not re.fullmatch(r"[A-Za-z]+", prefix):
                raise ValueError(f"{name}_prefix must be letters only, got {prefix!r}")
        prefixes = [self.hubert_prefix, self.pitch_prefix, self.style_prefix]
        if len(set(prefixes)) != 3:
            raise ValueError(f"stream prefixes must differ, got {prefixes}")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.unit_family):
            raise ValueError(f"unit_family must be a lower-case name such as 'hubert' or 'semantic', got {self.unit_family!r}")
        if self.text_marker == self.speech_marker:
            raise ValueError("text_marker and speech_marker must differ")

    # ---- ids -------------------------------------------------------------------------------
    @property
    def text_id(self) -> int:
        return self.base_vocab_size

    @property
    def speech_id(self) -> int:
        return self.base_vocab_size + 1

    @cached_property
    def streams(self) -> dict[str, StreamSpec]:
        out, offset = {}, self.base_vocab_size + 2
        for name in STREAMS:  # id order: hubert, pitch, style
            size = getattr(self, f"{name}_size")
            out[name] = StreamSpec(
                name=name,
                prefix=getattr(self, f"{name}_prefix"),
                size=size,
                rate=float(getattr(self, f"{name}_rate")),
                dedup=bool(getattr(self, f"{name}_dedup")),
                offset=offset,
            )
            offset += size
        return out

    @cached_property
    def stream_offsets(self) -> np.ndarray:
        """Token id of unit 0 per stream, indexed like STREAMS (hubert, pitch, style)."""
        return np.array([self.streams[s].offset for s in STREAMS], dtype=np.int64)

    @property
    def vocab_size(self) -> int:
        """Number of ids in use: base + 2 markers + all units (32667 for Spirit LM)."""
        style = self.streams["style"]
        return style.offset + style.size

    def padded_vocab_size(self, multiple: int = 256) -> int:
        """Embedding rows rounded up (the model cards list 32512 for Base, 32768 for Expressive)."""
        return -(-self.vocab_size // multiple) * multiple

    def added_tokens(self) -> list[str]:
        """All added token strings in id order, starting at ``base_vocab_size``."""
        toks = [self.text_marker, self.speech_marker]
        for spec in self.streams.values():
            toks.extend(f"[{spec.prefix}{i}]" for i in range(spec.size))
        return toks

    @cached_property
    def _token_to_id(self) -> dict[str, int]:
        return {t: self.base_vocab_size + i for i, t in enumerate(self.added_tokens())}

    def token_to_id(self, token: str) -> int:
        try:
            return self._token_to_id[token]
        except KeyError:
            raise KeyError(f"{token!r} is not a speech/marker token of this layout") from None

    def id_to_token(self, token_id: int) -> str:
        i = int(token_id) - self.base_vocab_size
        if not 0 <= i < self.vocab_size - self.base_vocab_size:
            raise KeyError(f"id {token_id} is not a speech/marker id of this layout")
        return self.added_tokens()[i]

    def stream_of_ids(self, ids: np.ndarray) -> np.ndarray:
        """Per id: -1 text (base vocab), -2 a marker, 0/1/2 for hubert/pitch/style."""
        ids = np.asarray(ids)
        out = np.full(ids.shape, -1, dtype=np.int8)
        out[(ids == self.text_id) | (ids == self.speech_id)] = -2
        for k, spec in enumerate(self.streams.values()):
            out[(ids >= spec.offset) & (ids < spec.offset + spec.size)] = k
        return out

    def is_speech_id(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= self.base_vocab_size + 2) & (ids < self.vocab_size)

    @cached_property
    def _tag_re(self) -> re.Pattern:
        prefixes = "|".join(re.escape(s.prefix) for s in self.streams.values())
        markers = f"{re.escape(self.text_marker)}|{re.escape(self.speech_marker)}"
        return re.compile(rf"\[({prefixes})(\d+)\]|{markers}")

    @cached_property
    def _prefix_to_stream(self) -> dict[str, StreamSpec]:
        return {s.prefix: s for s in self.streams.values()}


SPIRITLM = VocabLayout()  # Spirit LM Expressive: 32667 ids (model card: 32768 rows padded)
SPIRITLM_BASE = VocabLayout(pitch_size=0, style_size=0)  # Base: 32503 ids (32512 rows padded)
# Embedding rows of the released checkpoints (model cards): the ids above, padded to 256.
RELEASED_ROWS = {"base": 32512, "expressive": 32768}
# The most padding rows a checkpoint may have beyond its ids: more means another vocabulary.
MAX_PAD_MULTIPLE = 1024


class LayoutMismatchError(ValueError):
    """A tokenizer, checkpoint or shard set whose vocabulary is not the one expected; the message
    says what was found, what was expected and what to change."""


def layout_name(layout: VocabLayout) -> str:
    """'Base' / 'Expressive' (the released stream sizes) or the sizes themselves."""
    sizes = (layout.hubert_size, layout.pitch_size, layout.style_size)
    if sizes == (501, 0, 0):
        return "Base"
    if sizes == (501, 64, 100):
        return "Expressive"
    return f"hubert {sizes[0]}, pitch {sizes[1]}, style {sizes[2]}"


def describe_layout(layout: VocabLayout) -> str:
    """e.g. 'Base ([Text]=32000 ... [Hu500]=32502, 32503 ids)'."""
    last = layout.added_tokens()[-1]
    return (f"{layout_name(layout)} ([Text]={layout.text_id} ... {last}={layout.vocab_size - 1}, "
            f"{layout.vocab_size} ids)")


def rows_fit(layout: VocabLayout, rows: int) -> bool:
    """Whether a model with ``rows`` embedding rows holds exactly this layout (its ids, plus at
    most the padding of MAX_PAD_MULTIPLE)."""
    return layout.vocab_size <= rows <= layout.padded_vocab_size(MAX_PAD_MULTIPLE)


def layout_for_rows(rows: int, base_vocab_size: int = 32000) -> VocabLayout | None:
    """The released layout that a checkpoint of ``rows`` rows holds, when nothing else says so
    (no layout file, no added tokens): Expressive if its ids fit (32768), else Base (32512), else
    None. Only a fallback: rows alone cannot tell a Base model padded far from an Expressive one."""
    for layout in (replace(SPIRITLM, base_vocab_size=base_vocab_size),
                   replace(SPIRITLM_BASE, base_vocab_size=base_vocab_size)):
        if rows_fit(layout, rows):
            return layout
    return None


def expected_rows_text(base_vocab_size: int = 32000) -> str:
    b = replace(SPIRITLM_BASE, base_vocab_size=base_vocab_size)
    e = replace(SPIRITLM, base_vocab_size=base_vocab_size)
    return (f"{base_vocab_size} rows (a text-only LLaMA, which `spiritlm train` extends), "
            f"{b.vocab_size}-{b.padded_vocab_size(MAX_PAD_MULTIPLE)} (Base; released: "
            f"{b.padded_vocab_size(256)}) or {e.vocab_size}-{e.padded_vocab_size(MAX_PAD_MULTIPLE)} "
            f"(Expressive; released: {e.padded_vocab_size(256)})")


_ADDED_RE = re.compile(r"\[(Hu|Pi|St)(\d+)\]")


def layout_from_added_tokens(added: Mapping[str, int], base_vocab_size: int,
                             where: str = "the tokenizer") -> VocabLayout | None:
    """The layout that a tokenizer's added tokens (content -> id, as in HF's
    ``added_tokens_decoder``) describe, or None when it lists no speech tokens. Stream sizes are
    counted from the ``[HuN]``/``[PiN]``/``[StN]`` tokens; every id must then be where the layout
    puts it, else :class:`LayoutMismatchError` names the first token that is not."""
    counts = {"Hu": 0, "Pi": 0, "St": 0}
    for content in added:
        m = _ADDED_RE.fullmatch(content)
        if m:
            counts[m.group(1)] = max(counts[m.group(1)], int(m.group(2)) + 1)
    if counts["Hu"] == 0 and "[Text]" not in added:
        return None
    try:
        layout = VocabLayout(base_vocab_size=base_vocab_size, hubert_size=counts["Hu"],
                             pitch_size=counts["Pi"], style_size=counts["St"])
    except ValueError as e:
        raise LayoutMismatchError(f"{where}: its added tokens describe no speech layout ({e})") from None
    for token, want in layout._token_to_id.items():
        got = added.get(token)
        if got != want:
            raise LayoutMismatchError(
                f"{where}: {token} has id {got if got is not None else '(missing)'}, the {layout_name(layout)} "
                f"layout puts it at {want} ([Text] right after the {base_vocab_size} ids of the text tokenizer, "
                "then [Speech], [Hu*], [Pi*], [St*]); write a spiritlm_vocab.json describing this checkpoint's "
                "layout, or use the tokenizer that came with it")
    return layout


# ---- units -> merged tokens ----------------------------------------------------------------
def _as_units(values: UnitSeq, spec: StreamSpec) -> np.ndarray:
    if isinstance(values, str):
        parts = values.split()
        try:
            arr = np.array([int(p) for p in parts], dtype=np.int64)
        except ValueError:
            bad = next(i for i, p in enumerate(parts) if not p.lstrip("-").isdigit())
            raise UnitError(f"{spec.name} unit #{bad} is {parts[bad]!r}, not an integer") from None
    else:
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise UnitError(f"{spec.name} units must be 1-D, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise UnitError(f"{spec.name} units must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
    bad = np.flatnonzero((arr < 0) | (arr >= spec.size))
    if bad.size:
        i = int(bad[0])
        raise UnitError(
            f"{spec.name} unit #{i} = {int(arr[i])} is outside [0, {spec.size}) "
            f"({bad.size} out-of-range values in total)"
        )
    return arr


def merge_streams(
    units: Mapping[str, UnitSeq],
    has_pitch: bool = False,
    has_style: bool = False,
    layout: VocabLayout = SPIRITLM,
) -> tuple[np.ndarray, np.ndarray]:
    """Dedup each stream, then merge by time. Returns (stream index 0/1/2 per token, unit per token)."""
    wanted = ["hubert"] + (["pitch"] if has_pitch else []) + (["style"] if has_style else [])
    missing = [s for s in wanted if s not in units]
    if missing:
        raise UnitError(f"units lack stream(s) {missing}; got keys {sorted(units)}")
    times, codes, kinds = [], [], []
    for name in MERGE_ORDER:
        if name not in wanted:
            continue
        spec = layout.streams[name]
        u = _as_units(units[name], spec)
        if spec.dedup and u.size:
            pos = np.flatnonzero(np.concatenate(([True], u[1:] != u[:-1])))
        else:
            pos = np.arange(u.size)
        times.append(pos / spec.rate)  # float64, same values as Python's i / rate
        codes.append(u[pos])
        kinds.append(np.full(pos.size, STREAMS.index(name), dtype=np.int8))
    t = np.concatenate(times)
    order = np.argsort(t, kind="stable")
    return np.concatenate(kinds)[order], np.concatenate(codes)[order]


def units_to_string(
    units: Mapping[str, UnitSeq],
    has_pitch: bool = False,
    has_style: bool = False,
    layout: VocabLayout = SPIRITLM,
) -> str:
    """Unit streams -> the release's speech string, e.g. ``[St71][Pi39][Hu99][Hu49]``."""
    kinds, codes = merge_streams(units, has_pitch, has_style, layout)
    prefixes = [layout.streams[s].prefix for s in STREAMS]
    return "".join(f"[{prefixes[k]}{c}]" for k, c in zip(kinds.tolist(), codes.tolist()))


def units_to_ids(
    units: Mapping[str, UnitSeq],
    has_pitch: bool = False,
    has_style: bool = False,
    layout: VocabLayout = SPIRITLM,
) -> np.ndarray:
    """Unit streams -> token ids (int64), identical to tokenizing ``units_to_string``'s output."""
    kinds, codes = merge_streams(units, has_pitch, has_style, layout)
    return layout.stream_offsets[kinds] + codes


# ---- merged tokens -> units ----------------------------------------------------------------
def _expand(kinds: np.ndarray, codes: np.ndarray) -> dict[str, np.ndarray]:
    """One pitch/style value per HuBERT token: the latest seen before it, else the first seen."""
    hu = np.flatnonzero(kinds == 0)
    out = {"hubert": codes[hu]}
    for k, name in ((1, "pitch"), (2, "style")):
        at = np.flatnonzero(kinds == k)
        if at.size == 0:
            continue
        # index of the latest stream-k token at or before every position (-1 = none yet)
        last = np.full(kinds.size, -1, dtype=np.int64)
        last[at] = at
        last = np.maximum.accumulate(last)[hu]
        last[last < 0] = at[0]
        out[name] = codes[last]
    return out


def parse_speech_tokens(string: str, layout: VocabLayout) -> tuple[np.ndarray, np.ndarray]:
    """A speech string -> (stream index per token into ``STREAMS`` (int8), unit per token),
    in string order, without dedup or timing; raises :class:`SpeechStringError` naming the
    first bad character."""
    kinds, codes = [], []
    pos = 0
    for m in layout._tag_re.finditer(string):
        if m.start() != pos:
            _raise_at(string, pos, layout)
        pos = m.end()
        if m.group(1) is None:
            if m.group(0) == layout.text_marker:
                raise SpeechStringError(
                    f"text marker {layout.text_marker} at character {m.start()}: a speech string "
                    "holds speech tokens only (use spiritlm.text_tokenizer for mixed sequences)"
                )
            continue  # a [Speech] marker carries no unit
        spec = layout._prefix_to_stream[m.group(1)]
        value = int(m.group(2))
        if value >= spec.size:
            raise SpeechStringError(
                f"{m.group(0)} at character {m.start()}: {spec.name} unit {value} is outside "
                f"[0, {spec.size})"
            )
        kinds.append(STREAMS.index(spec.name))
        codes.append(value)
    if pos != len(string):
        _raise_at(string, pos, layout)
    return np.array(kinds, dtype=np.int8), np.array(codes, dtype=np.int64)


def _raise_at(string: str, pos: int, layout: VocabLayout) -> None:
    rest = string[pos : pos + 16]
    close = string.find("]", pos)
    if not rest.startswith("["):
        why = "text between speech tokens"
    elif close < 0:
        why = "truncated token (no closing ']')"
    else:
        why = f"unknown tag {string[pos:close + 1]!r}"
    raise SpeechStringError(f"malformed speech string at character {pos} ({rest!r}...): {why}")


def string_to_units(string: str, layout: VocabLayout = SPIRITLM) -> dict[str, str]:
    """Speech string -> space-separated units, pitch/style expanded to one per HuBERT unit.

    Returns ``{"hubert": ...}`` plus ``"pitch"``/``"style"`` when the string holds any.
    """
    kinds, codes = parse_speech_tokens(string, layout)
    return {k: " ".join(map(str, v.tolist())) for k, v in _expand(kinds, codes).items()}


def ids_to_units(ids: Sequence[int] | np.ndarray, layout: VocabLayout = SPIRITLM) -> dict[str, np.ndarray]:
    """Token ids -> unit arrays (int64), the same expansion as ``string_to_units``.

    ``[Speech]`` markers are skipped; any text id or ``[Text]`` marker is an error.
    """
    ids = np.asarray(ids, dtype=np.int64)
    kinds = layout.stream_of_ids(ids)
    keep = ids != layout.speech_id
    bad = np.flatnonzero(keep & (kinds < 0))
    if bad.size:
        i = int(bad[0])
        what = "the [Text] marker" if ids[i] == layout.text_id else "not a speech token id"
        raise SpeechStringError(f"token #{i} (id {int(ids[i])}) is {what}")
    ids, kinds = ids[keep], kinds[keep]
    return _expand(kinds, ids - layout.stream_offsets[kinds.astype(np.int64)])


def dedup(units: np.ndarray) -> np.ndarray:
    """Collapse runs of identical consecutive values (``unique_consecutive``)."""
    units = np.asarray(units)
    if units.size == 0:
        return units
    return units[np.concatenate(([True], units[1:] != units[:-1]))]
