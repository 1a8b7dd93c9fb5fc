"""Praat TextGrid (long and short text formats, UTF-8 or UTF-16) and CTM, read and write.

Own parser, no dependency: the file is read as a stream of values -- quoted strings (``""`` is
an escaped quote), numbers and ``<exists>`` flags -- with the long format's ``key =`` prefixes
and ``[n]`` indices ignored, so both formats share one reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_TOKEN_RE = re.compile(r'"((?:[^"]|"")*)"|(<exists>|<absent>)|([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)')
_INDEX_RE = re.compile(r"\[\s*\d*\s*\]")
_COMMENT_RE = re.compile(r"!.*$", re.M)


class TextGridError(ValueError):
    pass


@dataclass
class Tier:
    name: str
    kind: str  # "IntervalTier" | "TextTier"
    xmin: float
    xmax: float
    items: list = field(default_factory=list)  # (start, end, label) | (time, label)


def _decode(data: bytes, where: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TextGridError(f"{where}: not UTF-8/UTF-16 (byte {e.start}); re-save it as UTF-8") from None


def parse_textgrid(text: str, where: str = "TextGrid") -> list[Tier]:
    text = _INDEX_RE.sub(" ", text)
    vals: list = []
    for line in text.splitlines():
        # a '!' comment only outside quotes: drop it from lines without quotes
        if '"' not in line:
            line = _COMMENT_RE.sub("", line)
        for m in _TOKEN_RE.finditer(line):
            if m.group(1) is not None:
                vals.append(("s", m.group(1).replace('""', '"')))
            elif m.group(2) is not None:
                vals.append(("f", m.group(2)))
            else:
                vals.append(("n", float(m.group(3))))
    pos = 0

    def take(kind: str):
        nonlocal pos
        if pos >= len(vals):
            raise TextGridError(f"{where}: file ends early (value #{pos})")
        k, v = vals[pos]
        pos += 1
        if k != kind:
            raise TextGridError(f"{where}: value #{pos} is {v!r}, expected a "
                                f"{ {'s': 'string', 'n': 'number', 'f': 'flag'}[kind]}")
        return v

    if take("s") != "ooTextFile" or take("s") != "TextGrid":
        raise TextGridError(f"{where}: not a Praat TextGrid (header is not ooTextFile/TextGrid)")
    take("n"), take("n")
    if pos < len(vals) and vals[pos][0] == "f":
        if take("f") == "<absent>":
            return []
    tiers = []
    for _ in range(int(take("n"))):
        kind, name = take("s"), take("s")
        xmin, xmax, n = take("n"), take("n"), int(take("n"))
        tier = Tier(name, kind, xmin, xmax)
        for _ in range(n):
            if kind == "IntervalTier":
                tier.items.append((take("n"), take("n"), take("s")))
            elif kind == "TextTier":
                tier.items.append((take("n"), take("s")))
            else:
                raise TextGridError(f"{where}: unknown tier class {kind!r}")
        tiers.append(tier)
    return tiers


def read_textgrid(path) -> list[Tier]:
    p = Path(path)
    return parse_textgrid(_decode(p.read_bytes(), str(p)), str(p))


def textgrid_words(tiers: list[Tier], tier: str = "words") -> list[tuple[str, float, float]]:
    """The word intervals (non-empty labels, stripped) of tier ``tier`` -- or of MFA's
    ``"<speaker> - words"`` tier, or the only interval tier."""
    intervals = [t for t in tiers if t.kind == "IntervalTier"]
    pick = [t for t in intervals if t.name == tier] or \
           [t for t in intervals if t.name.endswith(f" - {tier}")]
    if not pick and len(intervals) == 1:
        pick = intervals
    if not pick:
        raise TextGridError(f"no interval tier named {tier!r}; tiers: {[t.name for t in tiers]}")
    return [(lab.strip(), s, e) for s, e, lab in pick[0].items if lab.strip()]


def _q(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


def write_textgrid(tiers: list[Tier], xmin: float, xmax: float, short: bool = False) -> str:
    """Serialise (long or short format); ``parse_textgrid`` reads it back exactly."""
    out = ['File type = "ooTextFile"', 'Object class = "TextGrid"', ""] if not short else \
        ['"ooTextFile"', '"TextGrid"']
    if short:
        out += [repr(xmin), repr(xmax), "<exists>", str(len(tiers))]
    else:
        out += [f"xmin = {xmin!r}", f"xmax = {xmax!r}", "tiers? <exists>", f"size = {len(tiers)}",
                "item []:"]
    for i, t in enumerate(tiers, 1):
        if short:
            out += [_q(t.kind), _q(t.name), repr(t.xmin), repr(t.xmax), str(len(t.items))]
            for it in t.items:
                out += [repr(x) if not isinstance(x, str) else _q(x) for x in it]
            continue
        out += [f"    item [{i}]:", f"        class = {_q(t.kind)}", f"        name = {_q(t.name)}",
                f"        xmin = {t.xmin!r}", f"        xmax = {t.xmax!r}"]
        what = "intervals" if t.kind == "IntervalTier" else "points"
        out.append(f"        {what}: size = {len(t.items)}")
        for j, it in enumerate(t.items, 1):
            out.append(f"        {what} [{j}]:")
            if t.kind == "IntervalTier":
                out += [f"            xmin = {it[0]!r}", f"            xmax = {it[1]!r}",
                        f"            text = {_q(it[2])}"]
            else:
                out += [f"            number = {it[0]!r}", f"            mark = {_q(it[1])}"]
    return "\n".join(out) + "\n"


def read_ctm(path) -> dict[str, list[tuple[str, float, float]]]:
    """CTM lines ``<utt> <channel> <start> <duration> <word> [<confidence>]`` (``;;`` comments)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"CTM file not found: {p}")
    out: dict[str, list] = {}
    for lineno, line in enumerate(_decode(p.read_bytes(), str(p)).splitlines(), 1):
        if not line.strip() or line.startswith(";;"):
            continue
        parts = line.split()
        if len(parts) < 5:
            raise TextGridError(f"{p}:{lineno}: a CTM line needs utt, channel, start, duration, word")
        try:
            start, dur = float(parts[2]), float(parts[3])
        except ValueError:
            raise TextGridError(f"{p}:{lineno}: start/duration are not numbers: {line!r}") from None
        out.setdefault(parts[0], []).append((parts[4], start, round(start + dur, 6)))
    return out


def write_ctm(alignments: dict[str, list[tuple[str, float, float]]]) -> str:
    return "".join(f"{u} 1 {s:.3f} {e - s:.3f} {w}\n"
                   for u, ws in alignments.items() for w, s, e in ws)
