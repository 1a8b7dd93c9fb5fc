"""A small helper process that forks the espeak children for a large parent process.

:meth:`spiritlm.corpus.espeak.ESpeak.map_forked` runs every synthesis in a ``fork()`` so each one
starts from a pristine espeak. The cost of a fork (and of the child's exit) grows with the
parent's resident memory: page tables are copied and torn down. In a fresh process it is a few
milliseconds; in the demo's process after it has trained two models (~2.5 GB resident) it was
~100 ms of kernel time per wav: the 1,542 mini-benchmark wavs took 166 s there, 27 s in a fresh
process.

So a parent above :data:`ZYGOTE_RSS_BYTES` hands the whole ``map_forked`` call to a *zygote*: a
fresh ``python`` that imports only espeak and the zygote's two modules, initialises espeak the
same way and forks the children itself. The children are forks of a pristine, initialised espeak
either way, so the output bytes are the same on both paths (``tests/test_corpus.py`` checks this).

This module is the parent's side and the pipe's framing; the zygote's loop is
:func:`spiritlm.corpus.espeak_zygote_main.main`, apart so that this module imports nothing of espeak.

Protocol (stdin/stdout of the zygote, pickles behind an 8-byte length): the parent sends
``(fn, items, processes)``; the zygote answers ``(True, results)`` or ``(False, message)``.
``fn`` and whatever ``items`` hold must be picklable by reference (module-level functions).
"""

from __future__ import annotations

import atexit
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

# Above this resident size a fork costs more than the round trip through the zygote.
ZYGOTE_RSS_BYTES = 512 * 2**20


def resident_bytes() -> int:
    """Resident memory of this process (Linux ``/proc``; 0 elsewhere, i.e. fork directly)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def send(f: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("<Q", len(data)))
    f.write(data)
    f.flush()


def recv(f: BinaryIO) -> Any:
    head = f.read(8)
    if len(head) < 8:
        raise EOFError("zygote pipe closed")
    (n,) = struct.unpack("<Q", head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError("zygote pipe closed mid-message")
    return pickle.loads(data)  # our own child's output, never a file from elsewhere


class Zygote:
    """The helper process; started on first use, stopped at exit (or after a broken call)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        atexit.register(self.close)

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[2])  # so an uninstalled checkout works too
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        return subprocess.Popen(
            [sys.executable, "-c", "from spiritlm.corpus.espeak_zygote_main import main; main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def map(self, fn: Callable, items: Sequence[Any], processes: int) -> list[Any]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = self._start()
        try:
            send(self._proc.stdin, (fn, list(items), processes))
            ok, payload = recv(self._proc.stdout)
        except BaseException:
            # Interrupted or broken mid-call: the pipe is out of step, so the zygote goes.
            self.close()
            raise
        if not ok:
            raise RuntimeError(payload)
        return payload

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # EOF: the zygote's loop ends
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            proc.stdout.close()
