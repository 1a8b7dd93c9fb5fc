"""Every reason an item is dropped (or kept without words / as speech only) by the data stage.

The reports (``<manifest>.report.json``, ``<out>.report.json`` of ``prepare align``,
``report.json`` + ``drops.jsonl`` of ``prepare shards``) count items by these short names;
data_prep/README.md explains each with what to do (a test checks that the README lists every
one, and that the code uses no reason missing here).
"""

from __future__ import annotations

# reason -> the commands that report it
DROP_REASONS: dict[str, tuple[str, ...]] = {
    # the audio
    "audio_missing": ("manifest", "shards"),
    "audio_unreadable": ("manifest", "align", "shards"),
    "silent_audio": ("align", "shards"),
    "duration_mismatch": ("shards",),
    "bad_units": ("shards",),
    # transcripts and text
    "no_transcript": ("manifest",),
    "empty_transcript": ("manifest", "align", "shards"),
    "non_utf8": ("manifest", "shards"),
    "invalid_json": ("shards",),
    "empty_text": ("shards",),
    "duplicate_id": ("manifest", "shards"),
    "split_excluded": ("shards",),
    # lhotse imports
    "no_recording": ("manifest",),
    "partial_recording": ("manifest",),
    # word alignments
    "no_alignment": ("align",),
    "alignment_failed": ("align",),
    "unalignable_characters": ("align",),
    "alignment_uncovered_speech": ("align",),
    "alignment_implausible_duration": ("align",),
    "alignment_empty": ("shards",),
    "alignment_incomplete": ("align", "shards"),
    "alignment_overruns_audio": ("align", "shards"),
    "alignment_not_monotonic": ("align", "shards"),
    "bad_record": ("shards",),
}
