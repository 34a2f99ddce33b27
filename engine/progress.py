"""Progress display, off the hot path: a reporter thread reads snapshots and draws them.

Three reporters behind one interface: `RichReporter` (live display on a terminal),
`LogReporter` (a plain line every few seconds, for CI logs and pipes) and `NullReporter`
(``--quiet``). Workers never call into them; they only bump their own counters.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Callable, TextIO

from engine.gpu import GpuRecorder, GpuSample
from engine.metrics import RateWindow, RunSnapshot, StageSnapshot

SnapshotFn = Callable[[], RunSnapshot]


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


def _context(snap: RunSnapshot) -> str:
    """The summary's word on `--resume`'s stage counts: they include the context frames."""
    n = snap.segments.context_frames if snap.segments is not None else 0
    return f"  (stage counts include {n} context frames decoded at segment cuts)" if n else ""


def _segments(snap: RunSnapshot) -> str:
    """`--resume`: segments finished, reused and pending; frames then count this run's work."""
    seg = snap.segments
    if seg is None:
        return ""
    running = f"{seg.running} running, " if seg.running else ""
    return (f"segments {seg.done + seg.reused}/{seg.total} ({seg.reused} reused, {running}"
            f"{seg.pending} pending)  ")


def _done(snap: RunSnapshot) -> str:
    total = f"{'~' if snap.total_estimated else ''}{snap.frames_total}" if snap.frames_total else "?"
    return f"{_segments(snap)}{snap.frames_done}/{total}"


class Reporter:
    """Interface: `start(snapshot_fn)`, then `stop(final_snapshot)` once the run is over."""

    interval_s = 0.5
    gpu_interval_s = 0.5  # GPU samples for the report: a fixed rate, whatever the display's

    def __init__(self, record_gpu: bool = True) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshot: SnapshotFn | None = None
        self.record_gpu = record_gpu
        self.gpu: GpuRecorder | None = None  # opened in start(): NVML init is not free
        self.timeline: list[dict] = []   # queue fill over time, if `record_timeline`
        self.record_timeline = False
        self._rate = RateWindow()         # the live fps and ETA: recent, not the run's average

    def start(self, snapshot: SnapshotFn) -> None:
        self._snapshot = snapshot
        if self.record_gpu:
            self.gpu = GpuRecorder(self.gpu_interval_s).start()
        self._thread = threading.Thread(target=self._loop, name="engine-progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        # Woken every 0.25 s at most: a run that starts stopping (Ctrl-C, a failed stage) says so
        # at once, not at the next 5 s log line; its threads may take seconds to unwind.
        step = min(self.interval_s, 0.25)
        next_draw = self.interval_s
        told = False
        while not self._stop.wait(step):
            snap = self._snapshot()
            if snap.elapsed_s < next_draw and (told or snap.stopping is None):
                continue
            next_draw = snap.elapsed_s + self.interval_s
            told = told or snap.stopping is not None
            snap = self._rate.annotate(snap)
            gpus = self.gpu.latest if self.gpu is not None else []
            if self.record_timeline:
                self.timeline.append({"t": round(snap.elapsed_s, 3), "done": snap.frames_done,
                                      "queues": {s.name: s.queue_fill for s in snap.stages
                                                 if s.queue_capacity}})
            self.draw(snap, gpus)

    def gpu_report(self) -> dict | None:
        """The report's "gpu" entry (summary per GPU, timed samples); None without a GPU."""
        return self.gpu.report() if self.gpu is not None else None

    def draw(self, snap: RunSnapshot, gpus: list[GpuSample]) -> None:
        """Draw one update. Runs on the reporter thread."""

    def stop(self, final: RunSnapshot | None) -> None:
        """Stop drawing; print the summary of `final` (None when the run failed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.close_display()
        if self.gpu is not None:
            self.gpu.stop()
        if final is not None:
            self.summary(final)

    def close_display(self) -> None:
        """Take down whatever is on screen before the summary is printed."""

    def summary(self, snap: RunSnapshot) -> None:
        """Print the end-of-run table."""


class NullReporter(Reporter):
    """`--quiet`: nothing drawn, no display thread; GPU samples only when a report wants them."""

    def __init__(self, record_gpu: bool = False) -> None:
        super().__init__(record_gpu)

    def start(self, snapshot: SnapshotFn) -> None:
        self._snapshot = snapshot
        if self.record_gpu:
            self.gpu = GpuRecorder(self.gpu_interval_s).start()


class RecordingReporter(Reporter):
    """Draws nothing; records queue fill over time and GPU samples (for benchmarks)."""

    interval_s = 0.1

    def __init__(self) -> None:
        super().__init__()
        self.record_timeline = True


class LogReporter(Reporter):
    """One plain line every `interval_s` seconds, for logs that are not terminals."""

    interval_s = 5.0

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        super().__init__()
        self.stream = stream
        self._said_stopping = False

    def draw(self, snap: RunSnapshot, gpus: list[GpuSample]) -> None:
        busiest = max(snap.stages, key=lambda s: s.busy_s, default=None)
        gpu = "".join(f" gpu{g.index} {g.utilization_pct}% {g.memory_used_mib}MiB" for g in gpus)
        workers = "".join(f" [{w.name} {w.fps:.1f} fps]" for w in snap.workers)
        if snap.stopping is not None:
            if not self._said_stopping:  # once: the lines after it would all say the same
                print(f"[engine] stopping ({snap.stopping}): waiting for the stages to end",
                      file=self.stream, flush=True)
            self._said_stopping = True
            return
        print(f"[engine] {_done(snap)} frames  {snap.current_fps:.1f} fps  eta {_eta(snap.eta_s)}"
              f"  busiest {busiest.name if busiest else '-'}{gpu}{workers}", file=self.stream, flush=True)

    def summary(self, snap: RunSnapshot) -> None:
        print(f"[engine] done: {_segments(snap)}{snap.frames_done} frames in {snap.elapsed_s:.2f} s "
              f"({snap.fps:.1f} fps){_context(snap)}", file=self.stream)
        width = max([16] + [len(s.label) for s in snap.stages])
        for s in snap.stages:
            extra = " ".join(f"{k}={v}" for k, v in s.counters.items())
            print(f"[engine]   {s.label:<{width}} {s.items:>7} items  busy {s.busy_s:8.2f} s  "
                  f"blocked {s.blocked_s:8.2f} s  {extra}".rstrip(), file=self.stream)
        self.stream.flush()


COMPACT_COLUMNS = ("stage", "items", "fps", "queue")


class RichReporter(Reporter):
    """Live table on a terminal: progress, fps, ETA, per-stage throughput and queue fill, GPU."""

    interval_s = 0.25

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True)
        self._live = Live(console=self.console, auto_refresh=False, transient=True)

    def start(self, snapshot: SnapshotFn) -> None:
        self._live.start()
        super().start(snapshot)

    def _table(self, snap: RunSnapshot, gpus: list[GpuSample], title: str | None):
        from rich.markup import escape
        from rich.table import Table

        columns = ("stage", "workers", "items", "fps", "busy", "blocked", "queue", "counters")
        # under ~72 columns eight columns leave each too narrow to show a figure: keep four
        keep = [columns.index(c) for c in (COMPACT_COLUMNS if self.console.width < 72 else columns)]
        table = Table(title=title, title_justify="left", expand=False)
        for i in keep:
            # fold, not "…": on 80 columns the counters are the figures a user looks for
            table.add_column(columns[i], justify="left" if columns[i] in ("stage", "counters") else "right",
                             overflow="fold")

        def row(*cells: str) -> None:  # "upscale [cpu fp32 batch 1]" is text, not rich markup
            table.add_row(*(escape(cells[i]) for i in keep))

        for s in snap.stages:
            row(*_stage_cells(s, snap.elapsed_s))
        for g in gpus:
            row(f"gpu{g.index}", "", "", "", f"{g.utilization_pct}%", "",
                f"{g.memory_used_mib}/{g.memory_total_mib} MiB", g.name)
        nodes = {}  # --ray: each worker's segment, then each node's GPUs once
        for w in snap.workers:
            row(w.name, "1", str(w.frames), f"{w.fps:.1f}", "", "", "", w.segment)
            nodes.setdefault(w.name.rsplit(":", 1)[0], w.gpus)
        for node, samples in nodes.items():
            for g in samples:
                row(f"{node} gpu{g.index}", "", "", "", f"{g.utilization_pct}%", "",
                    f"{g.memory_used_mib}/{g.memory_total_mib} MiB", g.name)
        return table

    def draw(self, snap: RunSnapshot, gpus: list[GpuSample]) -> None:
        self._live.update(self.view(snap, gpus), refresh=True)

    def view(self, snap: RunSnapshot, gpus: list[GpuSample]):
        """What the live display shows for `snap`."""
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        total = snap.frames_total or max(snap.frames_done, 1)
        if snap.total_estimated and snap.frames_done >= total:
            total = None  # past a guessed end: rich pulses the bar
        header = (f"{_done(snap)} frames  {snap.current_fps:.1f} fps  elapsed {_eta(snap.elapsed_s)}"
                  f"  eta {_eta(snap.eta_s)}")
        if snap.stopping is not None:
            header = f"stopping ({snap.stopping}): waiting for the stages to end"
        bar = ProgressBar(total=total, completed=min(snap.frames_done, total or snap.frames_done),
                          width=min(60, self.console.width))
        top = Table.grid()  # a grid ends its lines; a bare ProgressBar does not, and the
        top.add_row(Text(header, overflow="fold"))  # header after it was cut below ~110 columns
        top.add_row(bar)
        return Group(top, self._table(snap, gpus, None))

    def close_display(self) -> None:
        self._live.stop()

    def summary(self, snap: RunSnapshot) -> None:
        self.console.print(self._table(
            snap, [], f"done: {_segments(snap)}{snap.frames_done} frames in {snap.elapsed_s:.2f} s "
                      f"({snap.fps:.1f} fps){_context(snap)}"))
        if self.console.width < 72:  # the compact table has no counters column: the results
            from rich.markup import escape  # a user looks for (duplicates, text frames) below it

            for st in snap.stages:
                if st.counters:
                    self.console.print(escape(f"{st.name}: " + " ".join(f"{k}={v}" for k, v in st.counters.items())))


def _stage_cells(s: StageSnapshot, elapsed: float) -> list[str]:
    fps = s.items / elapsed if elapsed > 0 else 0.0
    queue = f"{s.queue_fill}/{s.queue_capacity}" if s.queue_capacity else ""
    counters = "\n".join(f"{k}={v}" for k, v in s.counters.items())  # one a line: none cut in two
    return [s.label, str(s.workers), str(s.items), f"{fps:.1f}", f"{s.busy_s:.1f}s",
            f"{s.blocked_s:.1f}s", queue, counters]


def make_reporter(quiet: bool, stream: TextIO = sys.stderr, record_gpu: bool = False) -> Reporter:
    """The display for where output goes; `record_gpu`: sample the GPUs even when quiet (a
    report is wanted)."""
    if quiet:
        return NullReporter(record_gpu)
    # a dumb terminal (Emacs' shell, some CI runners) cannot redraw: rich's live display draws
    # nothing there, so it gets the plain lines a log gets
    if stream.isatty() and os.environ.get("TERM", "") not in ("dumb", "unknown"):
        return RichReporter()
    return LogReporter(stream)
