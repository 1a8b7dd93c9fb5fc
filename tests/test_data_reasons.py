"""data_prep/README.md lists every drop reason the data stage reports, with what to do; the
code reports no reason missing from spiritlm/data/reasons.py (issue 19)."""

from __future__ import annotations

import re
from pathlib import Path

from spiritlm.data.reasons import DROP_REASONS

REPO = Path(__file__).resolve().parents[1]
# where a reason is given in the data stage's code: AlignmentError/RecordError("x", ...),
# report.drop(id, "x", ...), {"reason": "x"}, return "x", message / yield id, None, "x"
PATTERNS = [r'(?:AlignmentError|RecordError)\(\s*"([a-z0-9_]+)"', r'\.drop\([^,()]+, "([a-z0-9_]+)"',
            r'"reason": "([a-z0-9_]+)"', r'return "([a-z0-9_]+)", ', r'yield \w+, None, "([a-z0-9_]+)"',
            r'else \(\s*"([a-z0-9_]+)" if isinstance', r'"([a-z0-9_]+)" if isinstance\(e, AudioError\)']


def reasons_in_code() -> set[str]:
    found = set()
    for f in sorted((REPO / "spiritlm" / "data").glob("*.py")):
        text = f.read_text()
        for pat in PATTERNS:
            found |= set(re.findall(pat, text))
    return found


def test_every_reason_in_the_code_is_listed():
    found = reasons_in_code()
    assert {"audio_unreadable", "duration_mismatch", "alignment_uncovered_speech", "split_excluded",
            "invalid_json", "bad_record"} <= found  # the patterns see every kind of call site
    assert found - set(DROP_REASONS) == set(), "add them to spiritlm/data/reasons.py and the README"
    assert set(DROP_REASONS) - found == set(), "stale entries in spiritlm/data/reasons.py"


def test_readme_explains_every_reason():
    text = (REPO / "data_prep" / "README.md").read_text()
    table = dict(re.findall(r"^\| `([a-z0-9_]+)` \| ([^|]+) \|", text, flags=re.M))
    assert set(table) == set(DROP_REASONS)
    for reason, stages in DROP_REASONS.items():  # the commands that report it, as in the code
        assert [s.strip() for s in table[reason].split(",")] == list(stages), reason
