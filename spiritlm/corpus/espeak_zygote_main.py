"""The zygote's own process: ``python -c "from spiritlm.corpus.espeak_zygote_main import main; main()"``,
started by :class:`spiritlm.corpus.espeak_zygote.Zygote` (why there is a zygote: that module).

A module of its own because its loop runs :meth:`spiritlm.corpus.espeak.ESpeak.map_forked` with
direct forks, while ``map_forked`` in a large process hands its calls to the zygote: the parent's
side (``espeak`` -> ``espeak_zygote``) and this side (-> ``espeak``, ``espeak_zygote``'s framing)
then import in one direction only.
"""

from __future__ import annotations

import os
import sys

from spiritlm.corpus.espeak import get_espeak
from spiritlm.corpus.espeak_zygote import recv, send


def main() -> None:
    """The zygote's loop: read a call, run it with direct forks, answer; stop at EOF."""
    # The protocol owns stdout; anything a library prints goes to stderr instead.
    inp, out = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    es = get_espeak()
    while True:
        try:
            fn, items, processes = recv(inp)
        except EOFError:
            return
        try:
            reply = (True, es.map_forked(fn, items, processes, direct=True))
        except Exception as e:  # noqa: BLE001 - sent back and raised in the parent
            reply = (False, str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}")
        send(out, reply)
