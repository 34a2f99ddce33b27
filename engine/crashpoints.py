"""Named crash points for fault tests: `ENGINE_CRASH_AT=NAME[:N]` kills the process with
SIGKILL the N-th time (default 1st) the code passes `crash_point(NAME)`.

Real code paths stop exactly where a power cut or `kill -9` could stop them (half a manifest
written, a segment renamed but not recorded, the join half muxed); the tests then resume
and compare. Unset (always, outside tests), a crash point costs one string comparison.
The variable is read when the module is imported: set it for the process, not mid-run.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_passed: Counter[str] = Counter()
# read once: crash points sit on per-packet paths, and os.environ lookups are not free
_TARGET, _, _NTH = os.environ.get("ENGINE_CRASH_AT", "").partition(":")


def crash_point(name: str) -> None:
    if name != _TARGET:
        return
    _passed[name] += 1
    if _passed[name] == int(_NTH or 1):
        os.kill(os.getpid(), signal.SIGKILL)
