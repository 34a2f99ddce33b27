"""Runs one scenario once in this process and prints its measurements as JSON.

    python -m bench.child SCENARIO INPUT SETTINGS_JSON
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench.scenarios import SCENARIOS


def peak_rss_mib() -> float:
    """This process's own peak RSS. Not getrusage's ru_maxrss: Linux carries that over exec,
    so a child would report its parent's peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    name, path, settings = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    fn, _ = SCENARIOS[name]
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        started = time.perf_counter()
        result = fn(path, Path(scratch), settings)
        wall = time.perf_counter() - started
    result["wall_s"] = wall
    result["fps"] = result["frames"] / wall if wall else 0.0
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
