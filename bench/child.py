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
from engine.errors import StageError, UserError
from engine.gpu import GpuRecorder

USER_ERROR = "bench-child: error: "  # how the parent knows a one-line error from a crash


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


class ReadSettings(dict):
    """The bench's settings, noting which ones a scenario reads: the results file lists only
    those (a BasicVSR++ run's said model=animevideov3-x2, an option it never used)."""

    def __init__(self, values: dict) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def main() -> int:
    name, path, settings = sys.argv[1], Path(sys.argv[2]), ReadSettings(json.loads(sys.argv[3]))
    fn, _ = SCENARIOS[name]
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch, GpuRecorder(interval_s=0.2) as gpu:
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            result = fn(path, Path(scratch), settings)
        except (UserError, StageError) as exc:  # the engine's own one-line errors: the parent shows them as such
            print(f"{USER_ERROR}{exc}", file=sys.stderr)
            return 2
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    summary = gpu.record.summary()
    result["gpu"] = summary[0] if summary else None  # the first GPU: the one a scenario uses
    # a scenario may time only its own part (model-only: not the decoding that fills memory)
    timed = result.pop("timed_s", wall)
    result["wall_s"] = timed
    # over the same part as wall_s: every thread of this process, decoding and encoding included
    result["cpu_s"] = result.pop("timed_cpu_s", cpu)
    result["settings_read"] = sorted(settings.read)
    result["fps"] = result["frames"] / timed if timed else 0.0
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
