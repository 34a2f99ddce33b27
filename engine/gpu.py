"""GPU telemetry through NVML (package nvidia-ml-py). Absent GPU or driver: no telemetry."""

from __future__ import annotations

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
