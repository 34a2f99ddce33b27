"""GPU telemetry through NVML (package nvidia-ml-py). Absent GPU or driver: no telemetry."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    utilization_pct: int
    memory_used_mib: int
    memory_total_mib: int


class GpuMonitor:
    """Reads utilisation and memory of every visible GPU. `available` is False without NVML."""

    def __init__(self) -> None:
        self._handles: list = []
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                             for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound and friends: no GPU here
            self._handles = []

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def sample(self) -> list[GpuSample]:
        nvml, out = self._nvml, []
        for i, h in enumerate(self._handles):
            try:
                util = nvml.nvmlDeviceGetUtilizationRates(h)
                mem = nvml.nvmlDeviceGetMemoryInfo(h)
                name = nvml.nvmlDeviceGetName(h)
            except Exception:  # noqa: BLE001 - a GPU that stops answering drops out of the display
                continue
            out.append(GpuSample(i, name if isinstance(name, str) else name.decode(),
                                 int(util.gpu), mem.used // 2**20, mem.total // 2**20))
        return out

    def driver(self) -> str | None:
        """The NVIDIA driver version, None without a GPU."""
        if not self._handles:
            return None
        try:
            version = self._nvml.nvmlSystemGetDriverVersion()
        except Exception:  # noqa: BLE001
            return None
        return version if isinstance(version, str) else version.decode()

    def close(self) -> None:
        if self._nvml is not None and self._handles:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self._handles = []


class GpuRecord:
    """What the GPUs did over a run: per GPU, mean and peak utilisation and peak memory over
    every sample, and the samples themselves with their times, thinned (every other one
    dropped, the stride doubled) to stay under `max_points`: a 10-hour job's report stays small
    and its series stays evenly spaced."""

    def __init__(self, max_points: int = 1200):
        self.max_points = max_points
        self.series: list[tuple[float, list[GpuSample]]] = []
        self.stride = 1
        self._count = 0
        self._gpus: dict[int, dict] = {}

    def add(self, t: float, samples: list[GpuSample]) -> None:
        if not samples:
            return
        for g in samples:
            s = self._gpus.setdefault(g.index, {"index": g.index, "name": g.name, "samples": 0, "util_sum": 0,
                                                "util_max_pct": 0, "memory_max_mib": 0,
                                                "memory_total_mib": g.memory_total_mib})
            s["samples"] += 1
            s["util_sum"] += g.utilization_pct
            s["util_max_pct"] = max(s["util_max_pct"], g.utilization_pct)
            s["memory_max_mib"] = max(s["memory_max_mib"], g.memory_used_mib)
        if self._count % self.stride == 0:
            self.series.append((t, samples))
            if len(self.series) > self.max_points:
                self.series = self.series[::2]
                self.stride *= 2
        self._count += 1

    def __bool__(self) -> bool:
        return bool(self._gpus)

    def summary(self) -> list[dict]:
        out = []
        for s in self._gpus.values():
            s = dict(s)
            s["util_mean_pct"] = round(s.pop("util_sum") / s["samples"], 1)
            out.append(s)
        return out

    def as_dict(self, driver: str | None, interval_s: float) -> dict:
        return {"driver": driver, "interval_s": interval_s * self.stride, "gpus": self.summary(),
                "samples": [{"t": round(t, 3), "gpus": [[g.index, g.utilization_pct, g.memory_used_mib]
                                                         for g in gpus]} for t, gpus in self.series]}


class GpuRecorder:
    """Samples every GPU on its own thread at a fixed rate, whatever draws the display: once at
    `start`, every `interval_s`, once at `stop` (a run shorter than the interval still has two).
    Without NVML it starts no thread and records nothing."""

    def __init__(self, interval_s: float = 0.5, max_points: int = 1200):
        self.interval_s = interval_s
        self.monitor = GpuMonitor()
        self.record = GpuRecord(max_points)
        self.latest: list[GpuSample] = []
        self.driver = self.monitor.driver()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def _sample(self) -> None:
        self.latest = self.monitor.sample()
        self.record.add(time.perf_counter() - self._started, self.latest)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> GpuRecorder:
        self._started = time.perf_counter()
        if self.monitor.available:
            self._sample()
            self._thread = threading.Thread(target=self._loop, name="engine-gpu", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._sample()
        self.monitor.close()

    def report(self) -> dict | None:
        """The report's "gpu" entry; None without a GPU."""
        return self.record.as_dict(self.driver, self.interval_s) if self.record else None

    def __enter__(self) -> GpuRecorder:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
