"""Runs one scenario once in this process and prints its measurements as JSON.

    python -m bench.child SCENARIO INPUT SETTINGS_JSON
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.scenarios import SCENARIOS
from engine.gpu import GpuMonitor


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


class GpuSampler:
    """Samples NVML every `interval_s` on its own thread while a scenario runs."""

    def __init__(self, interval_s: float = 0.2):
        self.monitor = GpuMonitor()
        self.samples: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.interval_s = interval_s

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.extend(self.monitor.sample())

    def __enter__(self) -> GpuSampler:
        if self.monitor.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.monitor.close()

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        util = [s.utilization_pct for s in self.samples]
        return {"name": self.samples[0].name, "util_mean_pct": sum(util) / len(util),
                "util_max_pct": max(util), "memory_max_mib": max(s.memory_used_mib for s in self.samples)}


def main() -> int:
    name, path, settings = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    fn, _ = SCENARIOS[name]
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch, GpuSampler() as gpu:
        started, cpu_started = time.perf_counter(), time.process_time()
        result = fn(path, Path(scratch), settings)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    result["gpu"] = gpu.summary()
    # a scenario may time only its own part (model-only: not the decoding that fills memory)
    timed = result.pop("timed_s", wall)
    result["wall_s"] = timed
    result["cpu_s"] = cpu  # every thread of this process, decoding and encoding included
    result["fps"] = result["frames"] / timed if timed else 0.0
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
