"""The pipeline runner: threads, channels, batching, windowing, ordering, cancellation.

Threads of one run::

    decode ──ch──▶ stage 1 (W1 workers) ──ch──▶ … ──ch──▶ sink thread (reorder → validate → write)
                                                                ▲
    main thread: watchdog + joins; re-raises the first failure ─┘

- Every channel is bounded, so memory is capped by the sum of capacities, whatever the
  video length: a slow consumer blocks its producer (backpressure).
- End of stream is each producer closing its output channel; a stage flushes when its
  input channel reports EOS.
- The first exception anywhere cancels the token: every blocked put/get wakes and
  raises `Cancelled`, every worker unwinds and closes its stage, and the main thread
  joins them all and re-raises the error, naming the stage and the frame's seq.
- A stage stuck inside its own code for longer than `stall_timeout_s` is a failure too.
- OpenCV's threads per call are the run's choice (`opencv_threads`; default OpenCV's own). On
  top of the runner's workers its pool often spins: 1 halves the dedup stage's own CPU time
  and takes 5–20 % off the caption job's CPU. But the caption job's wall time came out 2–24 %
  longer on 2 cores. So 1 suits jobs that share a machine, where CPU is what runs
  out; the default stays OpenCV's.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import cv2
import numpy as np

from engine import interrupts
from engine.channel import EOS, CancelToken, Channel
from engine.errors import Cancelled, EngineError, StageError, Terminated, UserError
from engine.frame import Frame
from engine.metrics import RunSnapshot, StageSnapshot, WorkerMetrics, aggregate
from engine.registry import StageSpec
from engine.reorder import ReorderBuffer, WorkerGate
from engine.stage import BatchStage, MapStage, Stage, StageContext, WindowStage, frame_sizes
from engine.validate import SequenceValidator

# How far a parallel stage's workers may run ahead of the slowest before they wait for it
# (see WorkerGate): twice what the workers hold, at least GATE_MIN_LEAD frames (one frame each
# for a map stage: jitter must not make them wait). More would let the reorder buffer
# downstream hold that many processed frames (768 4K frames for 2 workers of batch 8 × ring 3 × 2 GPUs).
GATE_MIN_LEAD = 16
# The watchdog looks every 50 ms: a gap this long between two looks means the process was
# stopped or the machine slept, and the stall clock restarts (a job suspended past
# --stall-timeout failed as stalled when resumed with `fg`).
SUSPENDED_GAP_S = 2.0


class Source(Protocol):
    """Produces frames with seq 0..N-1, or first_seq.. when it has a `first_seq` attribute
    (a segment's source: engine/range_source.py). `frames_total` is an estimate, None if unknown."""

    name: str
    frames_total: int | None
    width: int | None
    height: int | None
    frame_rate: float | None

    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


class Sink(Protocol):
    """Consumes frames in seq order. Output becomes visible only in `commit`."""

    name: str

    def write(self, frame: Frame) -> bool | None: ...  # False: not written (a segment's context frame)

    def finish(self, frames: int) -> None:
        """End of stream: flush, close and verify the output (still under a temporary name)."""

    def commit(self) -> None:
        """Move the verified output into place."""

    def abort(self) -> None:
        """Remove whatever partial output exists. Safe to call more than once."""


class Interrupted(EngineError):
    """The user pressed Ctrl-C (or the run was otherwise asked to stop)."""

    exit_code = 130

    @classmethod
    def by(cls, exc: KeyboardInterrupt) -> Interrupted:
        """The error for the interrupt `exc`: Ctrl-C, or SIGTERM (exit 143, as a shell reports it)."""
        if isinstance(exc, Terminated):
            stop = cls("hung up" if exc.signum == signal.SIGHUP else "terminated")
            stop.exit_code = 128 + exc.signum
            return stop
        return cls("interrupted")


@dataclass(frozen=True)
class RunnerOptions:
    sink_queue: int = 8            # processed frames waiting for the encoder
    stall_timeout_s: float = 300.0 # a stage inside one call for longer than this has failed
    join_timeout_s: float = 10.0   # how long cancelled threads get to unwind
    device: str = "cpu"
    #: OpenCV's threads per call during the run (module docstring); 0: OpenCV's own choice.
    #: Process-wide, as OpenCV has no other setting: restored when the last run in flight ends.
    opencv_threads: int = 0


_opencv_lock = threading.Lock()
_opencv_runs = 0
_opencv_before = 0


@contextmanager
def opencv_thread_setting(threads: int) -> Iterator[None]:
    """OpenCV's threads per call while runs are in flight (0: OpenCV's default). The setting is
    process-wide: the first run in sets it, the last one out puts the caller's back, so runs
    that overlap (a library running two pipelines at once) share the first one's setting."""
    global _opencv_runs, _opencv_before
    with _opencv_lock:
        if _opencv_runs == 0:
            _opencv_before = cv2.getNumThreads()
            cv2.setNumThreads(threads or -1)  # -1: OpenCV's default
        _opencv_runs += 1
    try:
        yield
    finally:
        with _opencv_lock:
            _opencv_runs -= 1
            if _opencv_runs == 0:
                cv2.setNumThreads(_opencv_before)


@dataclass
class RunResult:
    frames_in: int
    frames_out: int
    elapsed_s: float
    stages: list[StageSnapshot] = field(default_factory=list)
    #: The end state of each stage that `carries_state`, by its index in the pipeline.
    states: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)


@dataclass
class _Node:
    """Runtime state of one stage: its spec, its input channel, one metrics object per worker."""

    name: str
    kind: str
    inbox: Channel | None
    metrics: list[WorkerMetrics]
    gate: WorkerGate | None = None  # parallel workers: how far they may run ahead of the slowest


class Pipeline:
    """Runs source → stages → sink on threads. One instance, one run."""

    def __init__(self, source: Source, specs: list[StageSpec], sink: Sink,
                 options: RunnerOptions = RunnerOptions(),
                 states: dict[int, dict[str, np.ndarray]] | None = None):
        self.source = source
        self.specs = list(specs)
        # stages that carry state start from these (by pipeline index): a segment continuing
        # where the one before ended (see Stage.carries_state)
        self._states_in = dict(states or {})
        self._states_out: dict[int, dict[str, np.ndarray]] = {}
        self.sink = sink
        self.options = options
        self.first_seq = getattr(source, "first_seq", 0)  # a segment's source starts mid-video
        self.token = CancelToken()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self._interrupt: KeyboardInterrupt | None = None  # a Ctrl-C taken while supervising
        self._frames_in = 0
        self._nodes: list[_Node] = []
        self._alive = 0
        self._alive_lock = threading.Lock()
        self._all_done = threading.Event()
        self._sink_lock = threading.Lock()
        self._sink_ended = False
        self._abort_when_sink_ends = False
        self._build()

    # ---- wiring -------------------------------------------------------------------------

    def _build(self) -> None:
        # Channel i is the inbox of stage i (the last one is the sink's). Its producers are
        # the workers of whatever stands before it; its capacity is the consumer's `queue`.
        probes = [spec.build() for spec in self.specs]  # constructors are cheap: open() loads
        # the sink's queue holds at least one whole batch of the last stage, so emitting a
        # finished batch never stalls a device pipeline behind the encoder
        last_batch = probes[-1].batch_size if probes and isinstance(probes[-1], BatchStage) else 0
        capacities = [spec.queue for spec in self.specs] + [max(self.options.sink_queue, last_batch)]
        producers = [1] + [spec.workers for spec in self.specs]
        consumers = [spec.name for spec in self.specs] + [self.sink.name]
        inboxes = [Channel(f"→{name}", cap, prod, self.token)
                   for name, cap, prod in zip(consumers, capacities, producers)]
        self._nodes.append(_Node(self.source.name, "source", None, [WorkerMetrics()]))
        leads = []
        for spec, probe, inbox in zip(self.specs, probes, inboxes):
            # a worker may be this many seqs past the oldest frame a sibling holds; more
            # than what the workers hold, so that ordinary jitter never makes one wait
            lead = max(GATE_MIN_LEAD, 2 * spec.workers * probe.span) if spec.workers > 1 else 0
            leads.append(lead + spec.workers if lead else 0)  # + each worker's one take past it
            self._nodes.append(_Node(spec.name, probe.kind, inbox,
                                     [WorkerMetrics() for _ in range(spec.workers)],
                                     WorkerGate(spec.workers, lead, self.token) if lead else None))
        self._nodes.append(_Node(self.sink.name, "sink", inboxes[-1], [WorkerMetrics()]))
        # Frames arrive out of order only through parallel workers, and how far ahead one can
        # get is bounded by everything in flight between the source and the sink, and by
        # each parallel stage's gate.
        in_flight = sum(spec.workers * probe.span for spec, probe in zip(self.specs, probes)) + sum(leads)
        # Duplicates skip batches and windows, so they can overtake the unique frames held
        # there by up to `dup_run` each (see stages/dedup.py).
        overtake = 1 + max((p.dup_run for p in probes), default=0)
        self.reorder_window = in_flight * overtake + sum(capacities) + 1
        # stages after one that marks duplicates always report how many they skipped (0 too)
        self._skips = [any(p.dup_run for p in probes[:i]) for i in range(len(probes))]
        self._inboxes = inboxes
        self._handoffs = _handoffs(probes, getattr(self.sink, "picture_format", None))
        # each stage opens with its own input size: after an upscale or a resize it is not the source's
        self._input_sizes = frame_sizes(probes, self.source.width, self.source.height)

    # ---- observation --------------------------------------------------------------------

    def snapshot(self) -> RunSnapshot:
        elapsed = time.perf_counter() - self._started if self._started else 0.0
        stages = [aggregate(n.name, n.kind, n.metrics,
                            len(n.inbox) if n.inbox is not None else 0,  # an empty Channel is falsy
                            n.inbox.capacity if n.inbox is not None else 0) for n in self._nodes]
        error = self.token.error
        return RunSnapshot(elapsed_s=elapsed, frames_done=stages[-1].items,
                           frames_total=self.source.frames_total, stages=stages,
                           total_estimated=getattr(self.source, "frames_estimated", False),
                           stopping=(str(error) or type(error).__name__) if error is not None else None)

    # ---- threads --------------------------------------------------------------------------

    def _guard(self, node: _Node, metrics: WorkerMetrics, body: Callable[[], None]) -> None:
        """Run a thread body; turn any failure into the run's first error (if it is first)."""
        try:
            body()
        except BaseException as exc:  # noqa: BLE001 - a failure must travel, whatever it is
            self._fail(node, metrics, exc)

    def _fail(self, node: _Node, metrics: WorkerMetrics, exc: BaseException) -> None:
        """Record `exc` as the run's error if it is the first (named by the call it broke)."""
        if isinstance(exc, Cancelled):
            return
        error = exc if isinstance(exc, StageError) else StageError(node.name, metrics.call_seq, exc,
                                                                        metrics.call_last)
        if error is not exc:
            error.__cause__ = exc
        self.token.cancel(error)

    def _emit(self, out: Channel, metrics: WorkerMetrics, frame: Frame) -> None:
        metrics.wait_out_s += out.put(frame)
        metrics.items += 1

    def _run_source(self, out: Channel) -> None:
        node = self._nodes[0]
        metrics = node.metrics[0]

        def close() -> None:
            with metrics.busy(None):  # watched: a close that never returns is a stall too
                self.source.close()

        def body() -> None:
            with _closed_after(close, lambda exc: self._fail(node, metrics, exc)):
                frames = self.source.frames()
                while True:
                    with metrics.busy(self._frames_in):
                        frame = next(frames, None)
                    if frame is None:
                        break
                    self._frames_in += 1
                    self._emit(out, metrics, frame)
            out.close()  # only on success: a failed source must not look like end of stream

        self._guard(node, metrics, body)

    def _run_worker(self, node: _Node, spec: StageSpec, worker: int, out: Channel) -> None:
        metrics = node.metrics[worker]
        inbox: Any = node.inbox
        if node.gate is not None:
            inbox, out = _GatedInbox(inbox, node.gate, worker), _GatedOut(out, node.gate, worker)

        def body() -> None:
            index = [n is node for n in self._nodes].index(True) - 1  # the stage's place in the pipeline
            stage = spec.build()

            def close() -> None:
                with metrics.busy(None):  # watched: a model runtime hung on teardown is a stall
                    stage.close()

            metrics.counters.update(dict.fromkeys(stage.counted, 0))
            if self._skips[index]:
                metrics.counters["skipped_duplicates"] += 0
            stage.counters = metrics.counters  # stage counters land straight in the metrics
            size = self._input_sizes[index] or (None, None)
            ctx = StageContext(worker=worker, workers=spec.workers, width=size[0],
                               height=size[1], frame_rate=self.source.frame_rate,
                               frames_total=self.source.frames_total, device=self.options.device,
                               handoff=self._handoffs[index],
                               picture_format=getattr(self.sink, "picture_format", None),
                               progress=metrics.heard)
            # a stage whose open failed half-way is closed too
            with _closed_after(close, lambda exc: self._fail(node, metrics, exc)):
                with metrics.busy(None):
                    stage.open(ctx)
                if stage.carries_state and index in self._states_in:
                    stage.import_state(self._states_in[index])
                metrics.settings = stage.describe()
                self._drive(stage, inbox, out, metrics)
                with metrics.busy(None):
                    tail = stage.flush()
                    if stage.carries_state:
                        self._states_out[index] = stage.export_state()
                metrics.settings = stage.describe()  # final values (a batch halved on OOM, ...)
                for frame in tail:
                    self._emit(out, metrics, frame)
            out.close()

        self._guard(node, metrics, body)

    def _take(self, inbox: Channel, metrics: WorkerMetrics) -> Any:
        item, waited = inbox.get()
        metrics.wait_in_s += waited
        return item

    def _inputs(self, stage: Stage, inbox: Channel, out: Channel,
                metrics: WorkerMetrics) -> Iterator[Frame]:
        """The frames this stage must process: in seq order if it needs order, and
        without duplicates, which are passed straight on (they reuse their reference's result)."""
        ordered = ReorderBuffer(self.reorder_window, self.first_seq) if stage.needs_order else None
        while (item := self._take(inbox, metrics)) is not EOS:
            for frame in ordered.push(item) if ordered is not None else (item,):
                if frame.meta.get("dup_of") is None:
                    yield frame
                else:
                    metrics.counters["skipped_duplicates"] += 1
                    self._emit(out, metrics, frame)
        if ordered is not None:
            ordered.finish()

    def _drive(self, stage: Stage, inbox: Channel, out: Channel, metrics: WorkerMetrics) -> None:
        frames = self._inputs(stage, inbox, out, metrics)
        if isinstance(stage, MapStage):
            for frame in frames:
                with metrics.busy(frame.seq):
                    result = stage.process(frame)
                _check_same(stage, [frame], [result])
                self._emit(out, metrics, result)
        elif isinstance(stage, BatchStage):
            self._drive_batches(stage, frames, out, metrics)
        elif isinstance(stage, WindowStage):
            self._drive_window(stage, frames, out, metrics)
        else:
            raise TypeError(f"stage '{stage.name}' is not a MapStage, BatchStage or WindowStage")

    def _drive_batches(self, stage: BatchStage, frames: Iterator[Frame], out: Channel,
                       metrics: WorkerMetrics) -> None:
        """Batches of up to `batch_size` unique frames. A stage may hold several batches in
        flight; each must come back whole and in the order it was given."""
        sent: deque[list[Frame]] = deque()

        def emit(done: list[list[Frame]]) -> None:
            for results in done:
                if not sent:
                    raise ValueError("stage returned a batch it was never given")
                _check_same(stage, sent.popleft(), results)
                for result in results:
                    self._emit(out, metrics, result)

        batch: list[Frame] = []
        for frame in itertools.chain(frames, (None,)):  # None: end of stream
            if frame is not None:
                batch.append(frame)
            if batch and (frame is None or len(batch) >= stage.batch_size):
                sent.append(batch)
                # named by its smallest seq: frames from parallel workers upstream arrive out of
                # order (a descheduled worker's frame can come a dozen frames late)
                with metrics.busy(min(f.seq for f in batch), max(f.seq for f in batch)):
                    done = stage.submit_batch(batch)
                emit(done)
                batch = []
        held = [f.seq for f in itertools.chain.from_iterable(sent)]  # out of order across batches too
        with metrics.busy(min(held, default=None), max(held, default=None)):
            done = stage.drain_batches()
        emit(done)
        if sent:
            raise ValueError(f"stage ended with {len(sent)} batch(es) never returned")

    def _drive_window(self, stage: WindowStage, frames: Iterator[Frame], out: Channel,
                      metrics: WorkerMetrics) -> None:
        """Windows of `window_size` frames; consecutive windows share 2 × `overlap` frames.

        A window covering [s, s+K) emits [s+O, s+K-O) — the first window from s, the last
        to its end — so every frame leaves exactly once, and away from the stream's ends
        each emitted frame had `overlap` frames of context on both sides.
        """
        size, overlap = stage.window_size, stage.overlap
        window: list[Frame] = []
        emitted = 0  # frames at the head of `window` that already left

        def run(final: bool) -> None:
            nonlocal window, emitted
            with metrics.busy(window[0].seq, window[-1].seq):  # every frame the call holds
                results = stage.process_window(list(window))
            if len(results) != len(window):
                raise ValueError(f"window stage returned {len(results)} results for "
                                 f"{len(window)} frames")
            end = len(window) if final else len(window) - overlap
            for frame, result in zip(window[emitted:end], results[emitted:end]):
                self._emit(out, metrics, frame.with_data(result))
            if not final:
                window = window[len(window) - 2 * overlap:] if overlap else []
                emitted = overlap if overlap else 0

        for frame in frames:
            window.append(frame)
            if len(window) == size:  # run at once: the last window is always a shorter one
                run(final=False)
        if len(window) > emitted:
            run(final=True)

    def _run_sink(self) -> None:
        node = self._nodes[-1]
        metrics = node.metrics[0]

        def body() -> None:
            reorder: ReorderBuffer[Frame] = ReorderBuffer(self.reorder_window, self.first_seq)
            validator = SequenceValidator(self.first_seq)
            reference: Frame | None = None  # latest unique frame: what duplicates reuse
            while (item := self._take(node.inbox, metrics)) is not EOS:
                for frame in reorder.push(item):
                    dup_of = frame.meta.get("dup_of")
                    if dup_of is None:
                        reference = frame
                        frame.share_pixels()  # before the sink's threads convert it
                    elif reference is None or reference.seq != dup_of:
                        raise ValueError(f"frame seq {frame.seq} is marked a duplicate of seq "
                                         f"{dup_of}, which is not the latest unique frame")
                    else:
                        frame.reuse_pixels(reference)
                    validator.check(frame)
                    with metrics.busy(frame.seq):
                        passed = self.sink.write(frame)
                    metrics.items += passed is not False  # False: a context frame the sink let by
            reorder.finish()
            # EOS here means every upstream thread finished, so the source's count is final.
            validator.finish(self._frames_in)
            with metrics.busy(None):
                if hasattr(self.sink, "heartbeat"):  # a long re-read of the output is progress
                    self.sink.heartbeat = lambda: (metrics.heard(), self.token.raise_if_cancelled())
                self.sink.finish(validator.count)

        try:
            self._guard(node, metrics, body)
        finally:
            with self._sink_lock:  # see _abort_sink
                self._sink_ended = True
                late = self._abort_when_sink_ends
            if late:
                try:
                    self.sink.abort()
                except BaseException:  # noqa: BLE001 - the run's own error is what the user hears
                    pass

    # ---- the run ----------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Run to completion. Raises the first failure (a StageError, or Interrupted)."""
        self._started = time.perf_counter()
        with opencv_thread_setting(self.options.opencv_threads):
            return self._run()

    def _run(self) -> RunResult:
        self._spawn(self.source.name, self._run_source, self._inboxes[0])
        for spec, node, out in zip(self.specs, self._nodes[1:-1], self._inboxes[1:]):
            for w in range(spec.workers):
                self._spawn(f"{spec.name}-{w}", self._run_worker, node, spec, w, out)
        self._spawn(self.sink.name, self._run_sink)
        # start only once every thread is counted: a source that finishes before the next
        # thread exists would otherwise bring the count to 0 and end the run early
        for thread in self._threads:
            thread.start()
        try:
            self._supervise()
        except KeyboardInterrupt as exc:
            self._interrupt = exc  # no call here: a second Ctrl-C cannot land before the wind-down
        finally:
            # the threads' end and the partial's removal: a Ctrl-C from here on only stops the job
            interrupts.unstoppable(self._wind_down, self._stopped)
        if self.token.error is not None:
            raise self.token.error
        try:
            self.sink.commit()
        except OSError as exc:  # e.g. the output's place was taken by a directory during the run
            interrupts.unstoppable(self.sink.abort)
            where = getattr(self.sink, "path", None) or getattr(self.sink, "pattern", None) or exc.filename
            raise UserError(f"cannot put the output in place at {where or 'its path'}: "
                            f"{exc.strerror or exc}") from None
        except BaseException:  # a Ctrl-C before the output moved: nothing may be left behind
            interrupts.unstoppable(self.sink.abort)
            raise
        snap = self.snapshot()
        return RunResult(frames_in=self._frames_in, frames_out=snap.frames_done,
                         elapsed_s=snap.elapsed_s, stages=snap.stages, states=dict(self._states_out))

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        def tracked() -> None:
            try:
                target(*args)
            finally:
                with self._alive_lock:
                    self._alive -= 1
                    if self._alive == 0:
                        self._all_done.set()  # wakes the supervisor at once, no polling lag

        with self._alive_lock:
            self._alive += 1
        # daemon: a stage stuck in native code must not keep the process alive after we report it
        thread = threading.Thread(target=tracked, name=f"engine-{name}", daemon=True)
        self._threads.append(thread)  # started by run(), after every thread is counted

    def _supervise(self) -> None:
        """Wait for the run to end; meanwhile watch for stages stuck in one call."""
        limit = self.options.stall_timeout_s
        tick = resumed = time.perf_counter()
        while not self._all_done.wait(0.05):
            if self.token.cancelled:
                return
            now = time.perf_counter()
            if now - tick > SUSPENDED_GAP_S:
                # the clock ran while nothing of ours could: the process was stopped (Ctrl-Z,
                # SIGSTOP) or the machine slept. No stage stalled then: time them from now
                resumed = now
            tick = now
            for node in self._nodes:
                for m in node.metrics:
                    started = m.call_started
                    if started is not None and now - max(started, m.call_heard, resumed) > limit:
                        self.token.cancel(StageError(node.name, m.call_seq, TimeoutError(
                            f"stalled: no result for {limit:g} s"), m.call_last))
                        return

    def _stopped(self, exc: KeyboardInterrupt) -> None:
        self.token.cancel(Interrupted.by(exc))

    def _wind_down(self) -> None:
        """Every thread ended (or named as stuck); after a failure, the partial output removed."""
        if self._interrupt is not None:
            self.token.cancel(Interrupted.by(self._interrupt))  # the first error wins: safe to repeat
        stuck = self._join_all()
        if self.token.error is None and stuck:
            self.token.cancel(EngineError(f"threads did not finish: {', '.join(stuck)}"))
        if self.token.error is not None:
            self._abort_sink()

    def _abort_sink(self) -> None:
        """Remove the partial output, but never under a sink thread still writing it (one
        past the join's grace period, in an encoder's flush): that thread aborts as it ends."""
        with self._sink_lock:
            if not self._sink_ended:
                self._abort_when_sink_ends = True
                return
        try:
            self.sink.abort()
        except Exception as exc:  # noqa: BLE001 - the run's own error is what the user must hear
            self.token.error.add_note(f"and the partial output could not be removed: {exc}")

    def _join_all(self) -> list[str]:
        """Join every thread within the grace period. Returns the names of any still running."""
        deadline = time.perf_counter() + self.options.join_timeout_s
        for thread in self._threads:
            while thread.is_alive() and time.perf_counter() < deadline:
                try:
                    thread.join(0.1)
                except KeyboardInterrupt as exc:  # a second Ctrl-C must not skip the cleanup
                    self.token.cancel(Interrupted.by(exc))
        return [t.name for t in self._threads if t.is_alive()]


@contextmanager
def _closed_after(close: Callable[[], None], failed: Callable[[BaseException], None]) -> Iterator[None]:
    """Run `close` after the block, whatever happens. After a failure, `failed` records it
    first (named by the call it broke; a close that then hangs is no stall to report), and a
    failing `close` must not replace it (a sticky CUDA error raised again by the model's close)."""
    try:
        yield
    except BaseException as exc:
        failed(exc)
        try:
            close()
        except BaseException:  # noqa: BLE001 - the failure in flight is the one to report
            pass
        raise
    close()


class _GatedInbox:
    """A parallel worker's inbox: it waits its turn at the stage's gate before each take."""

    def __init__(self, inbox: Channel, gate: WorkerGate, worker: int):
        self._inbox, self._gate, self._worker = inbox, gate, worker

    def get(self) -> tuple[Any, float]:
        waited = self._gate.wait_turn(self._worker)
        item, blocked = self._inbox.get()
        if item is not EOS:
            self._gate.took(self._worker, item.seq, holds=item.meta.get("dup_of") is None)
        return item, waited + blocked


class _GatedOut:
    """A parallel worker's outbox: a frame put on is no longer held at the gate."""

    def __init__(self, out: Channel, gate: WorkerGate, worker: int):
        self._out, self._gate, self._worker = out, gate, worker

    def put(self, frame: Frame) -> float:
        waited = self._out.put(frame)
        self._gate.passed(self._worker, frame.seq)
        return waited

    def close(self) -> None:
        self._out.close()


def _handoffs(probes: list[Stage], picture_format: Any) -> list[str]:
    """What each stage hands on (see engine/stage.py): device tensors to a following model
    stage, pictures in the encoder's format to a video sink, host RGB otherwise."""
    handoffs = []
    for i, probe in enumerate(probes):
        after = probes[i + 1] if i + 1 < len(probes) else None
        if after is not None:
            handoffs.append("device" if after.takes_device else "array")
        else:
            handoffs.append("picture" if picture_format is not None else "array")
    return handoffs


def _check_same(stage: Stage, inputs: list[Frame], outputs: list[Frame]) -> None:
    """A stage returns exactly the frames it was given: none lost, none added, none swapped."""
    if len(outputs) != len(inputs) or any(
            not isinstance(o, Frame) or o.seq != i.seq for i, o in zip(inputs, outputs)):
        got = [getattr(o, "seq", type(o).__name__) for o in outputs]
        raise ValueError(f"stage must return its input frames in order: "
                         f"sent seq {[f.seq for f in inputs]}, got {got}")
