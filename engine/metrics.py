"""Per-thread counters and their snapshots. Workers write; the reporter thread only reads.

Each worker owns one `WorkerMetrics` and is its only writer, so the hot path takes no lock.
Readers (progress display, watchdog, report) may see a value one update stale, which is fine.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator


class WorkerMetrics:
    """What one thread of one stage has done so far."""

    __slots__ = ("items", "busy_s", "wait_in_s", "wait_out_s", "counters",
                 "call_started", "call_heard", "call_seq", "call_last", "settings")

    def __init__(self) -> None:
        self.items = 0           # frames that left this worker
        self.busy_s = 0.0        # time inside the stage's own code
        self.wait_in_s = 0.0     # blocked waiting for input (starved)
        self.wait_out_s = 0.0    # blocked on a full output channel (backpressure)
        self.counters: Counter[str] = Counter()
        self.call_started: float | None = None  # set while inside stage code
        self.call_heard = 0.0  # the call's start, or its latest sign of progress: for the watchdog
        self.call_seq: int | None = None
        self.call_last: int | None = None  # a batch's or window's last frame; None: one frame
        self.settings: dict = {}  # what the stage resolved when it opened (device, batch, ...)

    @contextmanager
    def busy(self, seq: int | None, last: int | None = None) -> Iterator[None]:
        self.call_seq, self.call_last = seq, last
        self.call_heard = self.call_started = started = time.perf_counter()
        try:
            yield
        finally:
            # call_started first: a reader between the two lines sees the call at most once
            self.call_started = None
            self.busy_s += time.perf_counter() - started

    def heard(self) -> None:
        """The call in progress is still making progress: the stall watchdog starts over."""
        self.call_heard = time.perf_counter()


@dataclass(frozen=True)
class StageSnapshot:
    name: str
    kind: str
    workers: int
    items: int
    busy_s: float
    wait_in_s: float
    wait_out_s: float
    counters: dict[str, int | float] = field(default_factory=dict)
    queue_fill: int = 0        # items waiting in this stage's input channel
    queue_capacity: int = 0
    settings: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The name, plus where a model stage runs: a user must see at once whether it is the GPU."""
        s = self.settings
        if "device" not in s:
            return self.name
        tile = f" tile {s['tile']}" if s.get("tile") else ""
        group = f"window {s['window']}" if "window" in s else f"batch {s.get('batch', '?')}"
        return f"{self.name} [{s['device']} {s.get('precision', '')} {group}{tile}]"

    @property
    def blocked_s(self) -> float:
        return self.wait_in_s + self.wait_out_s

    def as_dict(self, elapsed_s: float) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "workers": self.workers,
            "items": self.items,
            "busy_s": round(self.busy_s, 4),
            "blocked_s": round(self.blocked_s, 4),
            "wait_in_s": round(self.wait_in_s, 4),
            "wait_out_s": round(self.wait_out_s, 4),
            "fps": round(self.items / elapsed_s, 3) if elapsed_s > 0 else 0.0,
            "counters": dict(self.counters),
            **({"settings": self.settings} if self.settings else {}),
        }


def _busy_now(w: WorkerMetrics, now: float) -> float:
    """Busy time including the call in progress: a stage stuck in one long call (a model
    warming up, a stall) is the busiest, not the idlest."""
    busy = w.busy_s  # before call_started: the worker clears call_started, then adds to busy_s,
    started = w.call_started  # so a call that ends in between is counted at most once
    return busy + (max(0.0, now - started) if started is not None else 0.0)


def aggregate(name: str, kind: str, workers: list[WorkerMetrics],
              queue_fill: int = 0, queue_capacity: int = 0) -> StageSnapshot:
    counters: Counter[str] = Counter()
    for w in workers:
        counters.update(w.counters)
    now = time.perf_counter()
    return StageSnapshot(
        name=name, kind=kind, workers=len(workers),
        items=sum(w.items for w in workers),
        busy_s=sum(_busy_now(w, now) for w in workers),
        wait_in_s=sum(w.wait_in_s for w in workers),
        wait_out_s=sum(w.wait_out_s for w in workers),
        counters=dict(counters),
        queue_fill=queue_fill, queue_capacity=queue_capacity,
        settings=next((w.settings for w in workers if w.settings), {}),
    )


def added(before: list[StageSnapshot], now: list[StageSnapshot]) -> list[StageSnapshot]:
    """The stages of several runs of one pipeline, one after another (`--resume`'s segments),
    as one: counts and times added up (as the report's `_summed_stages` does), the queues and
    settings the latest run's."""
    if not before:
        return list(now)
    if not now:
        return list(before)
    out = []
    for b, n in zip(before, now):
        counters = Counter(b.counters)
        counters.update(n.counters)
        out.append(StageSnapshot(n.name, n.kind, n.workers, b.items + n.items, b.busy_s + n.busy_s,
                                 b.wait_in_s + n.wait_in_s, b.wait_out_s + n.wait_out_s, dict(counters),
                                 n.queue_fill, n.queue_capacity, n.settings or b.settings))
    return out


@dataclass(frozen=True)
class SegmentCounts:
    """A segmented (--resume) job: segments finished this run, reused from before, still to do."""

    done: int
    reused: int
    pending: int       # still to finish this run, `running` included
    running: int = 0   # in flight on Ray workers (engine/ray_job.py)
    context_frames: int = 0  # decoded again at the cuts of finished segments: in the stages' counts

    @property
    def total(self) -> int:
        return self.done + self.reused + self.pending


@dataclass(frozen=True)
class WorkerSnapshot:
    """A Ray worker running a segment, as it last reported (engine/ray_job.py)."""

    name: str          # node address and process id
    segment: str       # which input and segment
    frames: int        # frames of the segment encoded so far
    fps: float
    gpus: list = field(default_factory=list)  # GpuSample of the worker's node (NVML), if any


@dataclass(frozen=True)
class RunSnapshot:
    """Everything the display needs, taken at one instant."""

    elapsed_s: float
    frames_done: int
    frames_total: int | None  # best estimate of the input's frame count, None if unknown
    stages: list[StageSnapshot]
    segments: SegmentCounts | None = None  # frames then count this run's work only
    workers: list[WorkerSnapshot] = field(default_factory=list)  # --ray: one per segment in flight

    recent_fps: float | None = None  # over the last RateWindow.window_s, when a display keeps one
    total_estimated: bool = False    # frames_total is duration × rate (until engine/frame_count.py counts)
    stopping: str | None = None      # why the run is stopping (Ctrl-C, a failed stage), until it has

    @property
    def fps(self) -> float:
        """The average over the whole run so far."""
        return self.frames_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def current_fps(self) -> float:
        return self.recent_fps if self.recent_fps is not None else self.fps

    @property
    def eta_s(self) -> float | None:
        """From the recent rate: the whole-run average counts start-up (model loading) and
        stretches that went faster (duplicates skipped) and was 4× too hopeful on the sample."""
        rate = self.current_fps
        if not self.frames_total or self.frames_done == 0 or rate <= 0:
            return None
        if self.total_estimated and self.frames_done >= self.frames_total:
            return None  # past a guessed end: the end is not known, not reached
        return max(0.0, (self.frames_total - self.frames_done) / rate)


class RateWindow:
    """Frames per second over the last `window_s` seconds of snapshots (the display's ETA)."""

    window_s = 30.0
    min_span_s = 2.0  # less history than this: the whole-run average

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def annotate(self, snap: RunSnapshot) -> RunSnapshot:
        samples = self._samples
        samples.append((snap.elapsed_s, snap.frames_done))
        while len(samples) > 2 and snap.elapsed_s - samples[1][0] >= self.window_s:
            samples.popleft()  # keep one sample at or beyond the window's start
        (t0, n0), (t1, n1) = samples[0], samples[-1]
        if t1 - t0 < self.min_span_s:
            return snap
        return replace(snap, recent_fps=(n1 - n0) / (t1 - t0))
