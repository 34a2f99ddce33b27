"""Named crash points for fault tests: `ENGINE_CRASH_AT=NAME[:N[:SIGNAL]]` kills the process
with SIGKILL (or sends it SIGNAL: INT, TERM, HUP) the N-th time (default 1st) the code passes
`crash_point(NAME)`.

Real code paths stop exactly where a power cut or `kill -9` could stop them (half a manifest
written, a segment renamed but not recorded, the join half muxed); the tests then resume
and compare. Unset (always, outside tests), a crash point costs one string comparison.
The variable is read when the module is imported: set it for the process, not mid-run.

`ENGINE_CRASH_ONCE=FILE` makes the kill happen once across processes: only the process that
creates FILE (exclusively) dies, so a retried Ray task (a new worker process, counting from
zero again) runs through.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_passed: Counter[str] = Counter()
# read once: crash points sit on per-packet paths, and os.environ lookups are not free
_TARGET, _, _WHEN = os.environ.get("ENGINE_CRASH_AT", "").partition(":")
_NTH, _, _SIGNAL = _WHEN.partition(":")
_ONCE = os.environ.get("ENGINE_CRASH_ONCE", "")


def crash_point(name: str) -> None:
    if name != _TARGET:
        return
    _passed[name] += 1
    if _passed[name] == int(_NTH or 1) and _first_to_crash():
        os.kill(os.getpid(), getattr(signal, f"SIG{_SIGNAL}") if _SIGNAL else signal.SIGKILL)


def _first_to_crash() -> bool:
    if not _ONCE:
        return True
    try:
        os.close(os.open(_ONCE, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
