"""`engine stream IN OUT --ray [ADDRESS]`: the segments of one video, or of many, as Ray tasks.

The driver is this process. For each input it prepares the ordinary resumable job
(engine/resume.py: plan, key, manifest, reuse), then hands each missing segment to Ray as a
task that carries only a description (`SegmentTask`: paths, frame range, context, pipeline,
encoder), never frames. A worker decodes its own range from the input, runs the one-machine
runner (engine/segment_job.py) and writes the segment file into the job's work directory
(a partial file, fsynced, renamed only when complete). The driver alone records finished
segments in the manifest (one writer, atomic rewrites) and joins them in plan order: the
output is the one `--resume` gives with the same plan, whichever task finished first.

- Resources: a task reserves `cpus` CPUs and, when a model stage runs on CUDA, one GPU
  (`gpus`), so each GPU runs one segment at a time; Ray sets CUDA_VISIBLE_DEVICES for it.
- Order where it matters: a segment whose context comes from the run of the one before
  (dedup's anchors) is still submitted at once, speculatively: its worker guesses the context
  start from a short pre-scan (engine/segment_job.py, `speculative_start`). The driver checks
  each guess in plan order, once the segment before is accepted: a hit is recorded, a miss
  is deleted and run again with the true context. Only accepted segments are recorded, each
  after the one before, so the manifest never holds a guess. A stage that carries state
  cannot be guessed: those segments run as a chain, one after another; chains of different
  inputs run side by side.
- Faults: a worker process or a node that dies costs its segments in flight, which Ray runs
  again elsewhere (`max_retries`); a restarted driver reuses every recorded segment.
- Failures are values: a segment that fails (bad input, a stage error) returns its message,
  and the job fails with the one-line error it would give on one machine.
- Every node reads the input and writes the work directory at the same absolute paths (a
  shared filesystem), and runs the same engine, PyAV and FFmpeg (checked per task).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import shutil
import signal
import socket
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from engine import interrupts
from engine.errors import EngineError, StageError, Terminated, UserError
from engine.gpu import GpuMonitor
from engine.job import JobConfig, check_config, reporter_note
from engine.manifest import versions
from engine.metrics import RunSnapshot, SegmentCounts, StageSnapshot, WorkerSnapshot, added
from engine.progress import make_reporter
from engine.registry import StageSpec, stage_class
from engine.resume import SegmentedJob, default_work_dir
from engine.segment_job import SegmentResult, SegmentRun, SegmentTask, file_digest
from engine.segments import Segment

OBJECT_STORE_BYTES = 128 << 20   # only descriptions and results travel; Ray's default is 30 % of RAM
MAX_RETRIES = 3                  # runs of a segment after its worker or node died
CONNECT_TIMEOUT_S = 5.0          # Ray itself retries an unreachable address for minutes
REPORT_EVERY_S = 1.0             # a worker's progress snapshot to the driver
NODE_CHECK_S = 5.0               # how often the driver looks for a node that can run a segment
FORWARDED_ENV = "ENGINE_"        # variables the workers get (ENGINE_STAGE_MODULES, crash points)
RESOURCE_UNIT = 0.0001           # Ray's resolution for fractional resources: less is refused (ValueError)
STALE_S = 10 * REPORT_EVERY_S    # a worker row not heard from this long is gone (its worker died)


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None   # None: start a local Ray on this machine
    cpus: float = 1.0            # CPUs one segment task reserves
    gpus: float | None = None    # GPUs one segment task reserves; None: 1 if a model stage runs on CUDA
    max_retries: int = MAX_RETRIES

    def __post_init__(self) -> None:
        # checked before Ray starts: Ray refuses < 0.0001 with a traceback, inf only once started
        if not (math.isfinite(self.cpus) and self.cpus >= RESOURCE_UNIT):
            # also NaN and 0: a task that reserves no CPU would oversubscribe the node
            raise UserError(f"--ray-cpus must be a finite number >= {RESOURCE_UNIT:g}, got {self.cpus}")
        if self.gpus is not None and not (self.gpus == 0 or (math.isfinite(self.gpus) and self.gpus >= RESOURCE_UNIT)):
            raise UserError(f"--ray-gpus must be 0 or a finite number >= {RESOURCE_UNIT:g}, got {self.gpus}")


class SegmentFailed(EngineError):
    """A segment failed on a worker: its message and exit code, as on one machine."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def import_ray():
    """Ray, imported only for `--ray`: an optional extra."""
    try:
        import ray
    except ModuleNotFoundError as exc:
        if exc.name != "ray":  # installed, but a module it needs is missing
            raise UserError(f"--ray: Ray is installed but cannot be imported: {type(exc).__name__}: {exc}") \
                from None
        raise UserError("--ray needs Ray, an optional extra: pip install 'engine[ray]'") from None
    except (ImportError, OSError) as exc:  # a broken wheel, a shared library it cannot load
        raise UserError(f"--ray: Ray is installed but cannot be imported: {type(exc).__name__}: {exc}") \
            from None
    return ray


def run_on_ray(configs: list[JobConfig], options: RayOptions, finished: list[dict] | None = None,
               committed=None) -> list[dict]:
    """Run every input's job on Ray; one report per input, in the order given. `finished` (a
    batch's) gets each input's report as soon as its output is in place, so a batch that
    fails later can still say which are done; `committed` (a batch's), each job's
    `SegmentedJob.committed`."""
    try:
        return _run_on_ray(configs, options, finished, committed)
    except KeyboardInterrupt as exc:
        # stopped and wound down: a second Ctrl-C on the way out must not kill it by the signal
        interrupts.stopped()
        raise _as_heard(exc) from None


def _run_on_ray(configs: list[JobConfig], options: RayOptions, finished: list[dict] | None,
                committed=None) -> list[dict]:
    ray = import_ray()
    configs = [_absolute(c) for c in configs]
    for config in configs:  # the cheap checks first: a bad option costs no start-up
        check_config(config)
    if options.address is not None:
        _check_reachable(options.address)  # before the plan takes work directories
    fresh = {os.path.abspath(c.work_dir or default_work_dir(c.output)) for c in configs
             if not os.path.exists(c.work_dir or default_work_dir(c.output))}
    jobs: list[SegmentedJob] = []
    driver: RayDriver | None = None
    handlers = {s: signal.getsignal(s) for s in interrupts.STOP_SIGNALS}
    started_ray = False
    try:
        # Plan (packet scan, cut checks, manifests) while Ray starts: both are serial parts.
        with ThreadPoolExecutor(1, thread_name_prefix="engine-plan") as pool:
            planned = pool.submit(_prepare, configs, jobs, committed)
            started = time.perf_counter()
            try:
                started_ray = True
                where = _connect_held(ray, options.address, handlers)
            finally:
                startup_s = time.perf_counter() - started
                planned.exception()  # wait for the plan either way: it holds the work directories
        plan_s = planned.result()
        driver = RayDriver(ray, jobs, options, where, startup_s, plan_s, finished)
        return driver.run()
    finally:
        def unused() -> None:  # refused or stopped before any segment was given to Ray
            if driver is None or not driver.submitted:
                for job in jobs:
                    if os.path.abspath(job.work_dir) in fresh and not job.manifest.segments:
                        shutil.rmtree(job.work_dir, ignore_errors=True)

        _wind_down([ray.shutdown] if started_ray else [], *(job.release for job in jobs), unused)
        _restore(handlers)  # after the wind-down, which puts back the handlers it found


def _wind_down(*steps) -> None:
    """Run each step once, to its end, through further stop signals (they are noted, as the
    runner's wind-down does: engine/interrupts.py): a second Ctrl-C inside ray.shutdown or a
    reporter's join used to leave Ray's agents running and exit 1. A step interrupted by a
    signal Python raised before the handlers changed runs again."""
    todo = [step for group in steps for step in (group if isinstance(group, list) else [group])]

    def run() -> None:
        while todo:
            todo[0]()
            todo.pop(0)

    interrupts.unstoppable(run, _noted)


def _noted(exc: KeyboardInterrupt) -> None:
    """A stop signal during a wind-down: the run is over either way (failed, stopped, or its
    outputs in place): noted as a late one, which the CLI reports if the job succeeded."""
    interrupts.late.append(getattr(exc, "signum", signal.SIGINT))


_heard: list[int] = []  # stop signals this process received since the driver installed its handlers


def _hearing(handler):
    """`handler`, noting the signal first: Ray's waits turn whatever a handler raised into a
    plain KeyboardInterrupt (a SIGTERM read as "interrupted", exit 130)."""
    if not callable(handler):
        return handler

    def hear(signum, frame):
        _heard.append(signum)
        return handler(signum, frame)

    hear.wrapped = handler
    return hear


def _as_heard(exc: KeyboardInterrupt) -> KeyboardInterrupt:
    """The stop the user gave: SIGTERM and SIGHUP keep their numbers through Ray's waits."""
    if type(exc) is KeyboardInterrupt and _heard and _heard[0] != signal.SIGINT:
        return Terminated(_heard[0])
    return exc


def _restore(handlers: dict) -> None:
    if threading.current_thread() is threading.main_thread():
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _connect_held(ray, address: str | None, handlers: dict) -> str:
    """`connect` with stop signals held until Ray is up: a Ctrl-C inside ray.init left its agents
    running (or ended in SIGSEGV). Ray puts its own SIGTERM handler in (sys.exit, no message,
    nothing shut down): it is kept out, and the engine's handlers, noting each signal, put back."""
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    setter = getattr(utils, "set_sigterm_handler", None)
    stops: list[KeyboardInterrupt] = []
    where: list[str] = []

    def start() -> None:
        if not where:
            where.append(connect(ray, address))

    if setter is not None:
        utils.set_sigterm_handler = lambda handler: None
    try:
        interrupts.unstoppable(start, stops.append)
    finally:
        if setter is not None:
            utils.set_sigterm_handler = setter
        if threading.current_thread() is threading.main_thread():
            for signum, handler in handlers.items():
                signal.signal(signum, _hearing(handler))
    if stops:
        raise stops[0]
    return where[0]


def _prepare(configs: list[JobConfig], jobs: list[SegmentedJob], committed=None) -> float:
    started = time.perf_counter()
    for config in configs:
        jobs.append(SegmentedJob.prepare(config))
        jobs[-1].committed = committed
    return time.perf_counter() - started


def _absolute(config: JobConfig) -> JobConfig:
    """Workers run elsewhere, in other directories: every path they see is absolute."""
    ab = os.path.abspath
    return dataclasses.replace(config, input=ab(config.input), output=ab(config.output), resume=True,
                               work_dir=ab(config.work_dir) if config.work_dir else None)


def connect(ray, address: str | None) -> str:
    """Start a local Ray (no address) or join a cluster; a one-line error if that fails."""
    common = dict(log_to_driver=False, logging_level="ERROR")
    if address is None:
        # "local": a new Ray of our own, even where `ray start` left one running. Its workers
        # inherit this environment; a runtime_env would cost a fresh worker start (seconds).
        try:
            ray.init(address="local", object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False,
                     **common)
        except Exception as exc:  # noqa: BLE001 - no room in /tmp, ports taken, ...
            raise UserError(f"cannot start a local Ray: {_first_line(exc)}") from None
        return "a local Ray"
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    try:
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, **common)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
        raise UserError(f"cannot connect to Ray at {address}: {_first_line(exc)}") from None
    return f"Ray at {address}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _check_reachable(address: str) -> None:
    """Ray retries an address that does not answer, or that is not a Ray server, for minutes:
    refuse it in at most CONNECT_TIMEOUT_S."""
    if address == "auto":  # Ray finds a local cluster itself, or says at once that there is none
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if host.startswith("[") and host.endswith("]"):  # [::1]:6379
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"invalid Ray address '{address}'; expected HOST:PORT (a port 1-65535), "
                        f"ray://HOST:PORT or auto")
    hint = "is `ray start --head` running there?"
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S) as sock:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return  # a TLS handshake first: the plain gRPC check below does not apply
            answer = _http2_answer(sock, deadline)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise UserError(f"cannot reach Ray at {address}: {why} ({hint})") from None
    if not answer:
        raise UserError(f"{address} answers but is not a Ray server (no gRPC there): give the port "
                        f"`ray start --head --port` was given (6379 by default)")


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _http2_answer(sock: socket.socket, deadline: float) -> bool:
    """Whether the server behind `sock` speaks HTTP/2, as Ray's GCS (gRPC) does: it answers
    a client preface with a SETTINGS frame. An HTTP/1 server (Ray's dashboard, any web
    server), a closed connection or silence until `deadline` is not a Ray server."""
    sock.sendall(HTTP2_PREFACE)
    header = b""
    while len(header) < 9:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            chunk = sock.recv(9 - len(header))
        except socket.timeout:
            return False
        if not chunk:
            return False
        header += chunk
    return header[3] == 0x04 and header[5:9] == b"\x00\x00\x00\x00"  # SETTINGS on stream 0


def gpus_per_segment(specs: list[StageSpec], options: RayOptions, cluster_gpus: float) -> float:
    """The option if given; else one GPU when a model stage may run on CUDA and there are GPUs."""
    if options.gpus is not None:
        return options.gpus
    for spec in specs:
        params = inspect.signature(stage_class(spec.name).__init__).parameters
        if "device" in params:
            device = str(spec.options.get("device", params["device"].default))
            if not device.startswith("cpu") and cluster_gpus > 0:
                return 1.0
    return 0.0


@dataclass
class _Input:
    """One input's job, as the driver tracks it."""

    number: int
    job: SegmentedJob
    todo: deque[Segment]
    table_ref: object = None
    running: int = 0
    results: dict[int, SegmentResult] = field(default_factory=dict)
    held: dict[int, tuple[dict, str]] = field(default_factory=dict)  # finished, not yet checked
    hits: int = 0      # speculated context starts found right
    misses: int = 0    # ... found wrong: the segment ran again
    prescan_s: float = 0.0  # wall time of the pre-scans of checked segments, hits and misses
    workers: dict[int, dict] = field(default_factory=dict)  # who ran each segment (last attempt)
    frames_done: int = 0
    report: dict | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.job.config.input)

    def key(self, seg: Segment) -> str:
        return f"{self.number}/{seg.index}"


class RayDriver:
    """Submits tasks, records results as they come, joins each input when it is complete."""

    def __init__(self, ray, jobs: list[SegmentedJob], options: RayOptions, where: str, startup_s: float,
                 plan_s: float = 0.0, finished: list[dict] | None = None):
        self.ray = ray
        self.finished = finished if finished is not None else []  # reports, as each input is in place
        self.plan_s = plan_s
        self.options = options
        self.where = where
        self.startup_s = startup_s
        self.inputs = [_Input(i, job, deque(s for s in job.plan.segments if s.index not in job.reused))
                       for i, job in enumerate(jobs)]
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        self.cpus = options.cpus
        self.gpus = max(gpus_per_segment(job.specs, options, max((n.get("GPU", 0) for n in nodes), default=0))
                        for job in jobs)
        self._check_fits(nodes)
        self.slots = self._count_slots(nodes)
        self.in_flight: dict[object, tuple[_Input, Segment, str]] = {}  # ref → input, segment, file
        self.live: dict[str, WorkerSnapshot] = {}   # replaced whole: the reporter thread reads it
        self.submitted = 0  # tasks given to Ray
        # what the reporter thread reads, replaced as one (never a segment both finished and
        # running, or neither): frames and stages of the segments finished, and the segments in
        # flight (key → frames)
        self._view: tuple[int, list[StageSnapshot], int, dict[str, int]] = (0, [], 0, {})
        self._stages: list[StageSnapshot] = []  # the accepted segments' stages, added up
        self._stage_frames = 0  # ... and their own frames (the rest of the first stage's are context)
        self.started = time.perf_counter()
        self.stall_timeout_s = max(job.config.runner.stall_timeout_s for job in jobs)
        self._nodes_checked = time.monotonic()
        self._no_node_since: float | None = None
        self.frames_total = sum(s.frames for inp in self.inputs for s in inp.todo)

    def _slots_on(self, resources: dict) -> int:
        """How many segments one node runs at once (its CPUs and GPUs)."""
        fits = [int(resources.get(name, 0) // need) for name, need in (("CPU", self.cpus), ("GPU", self.gpus))
                if need > 0]
        return min(fits) if fits else 0

    def _count_slots(self, nodes: list[dict]) -> int:
        """How many segments the cluster's nodes run at once."""
        return max(1, sum(self._slots_on(n) for n in nodes))

    def _check_fits(self, nodes: list[dict]) -> None:
        """A task that no node can hold would wait forever: refuse it."""
        for name, need in (("CPU", self.cpus), ("GPU", self.gpus)):
            most = max((n.get(name, 0) for n in nodes), default=0)
            if need > 0 and most < need:
                hint = " (--ray-gpus 0 runs segments on CPUs)" if name == "GPU" else ""
                raise UserError(f"each segment needs {need:g} {name} but no node of {self.where} has "
                                f"that many (the most is {most:g}){hint}")

    # ---- the run --------------------------------------------------------------------------

    def run(self) -> list[dict]:
        ray = self.ray
        quiet = all(inp.job.config.quiet for inp in self.inputs)
        reporter = make_reporter(quiet)
        if not quiet:
            reporter_note(reporter, self._notes())
        node = ray.get_runtime_context().get_node_id()  # the board stays with the driver's node
        affinity = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node, soft=True)
        # progress only: restarted elsewhere if its node goes (then attempts counted before are lost)
        self.board = ray.remote(num_cpus=0, scheduling_strategy=affinity, max_restarts=-1,
                                max_task_retries=-1)(ProgressBoard).remote()
        self.remote = ray.remote(run_segment).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.options.max_retries,
            retry_exceptions=False)  # failures come back as values; only lost workers are retried
        for inp in self.inputs:
            inp.table_ref = ray.put(inp.job.table)  # once per input, not once per task
        self._board_read = None
        reporter.start(self.snapshot)
        ok = False
        try:
            self._submit_ready()
            self._join_complete()  # inputs whose segments were all reused
            while self.in_flight:
                ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=0.5)
                self._poll_board()
                for ref in ready:
                    self._finished(ref)
                self._submit_ready()
                self._join_complete()
                self._check_nodes()
            ok = True
        finally:
            # a failure: stop the other segments (their partials are strays)
            _wind_down(self._cancel_in_flight, lambda: reporter.stop(self.snapshot() if ok else None))
        if not quiet:
            reporter_note(reporter, [n for inp in self.inputs for n in self._after_notes(inp)])
        return [inp.report for inp in self.inputs]

    def _cancel_in_flight(self) -> None:
        while self.in_flight:
            ref = next(iter(self.in_flight))
            self.ray.cancel(ref, force=True)
            del self.in_flight[ref]

    def _check_nodes(self) -> None:
        """Ray waits for ever for a node that can hold a task: give up after the stall timeout."""
        now = time.monotonic()
        if now - self._nodes_checked < NODE_CHECK_S:
            return
        self._nodes_checked = now
        alive = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]
        fits = any(self._slots_on(n) for n in alive)  # some node can hold a segment
        self.slots = self._count_slots(alive)
        if fits:
            self._no_node_since = None
        elif self._no_node_since is None:
            self._no_node_since = now
        elif now - self._no_node_since > self.stall_timeout_s:
            raise EngineError(f"no node of {self.where} has been able to run a segment for "
                              f"{self.stall_timeout_s:g} s (nodes lost?); run the same command again to resume")

    def _notes(self) -> list[str]:
        notes = [f"ray: {self.where}, each segment reserves {self.cpus:g} CPU"
                 + (f" and {self.gpus:g} GPU" if self.gpus else "")]
        for inp in self.inputs:
            job = inp.job
            prefix = f"{inp.name}: " if len(self.inputs) > 1 else ""
            notes += [prefix + line for line in (job.sink_note, *job.notes)]
            if job.context.speculative and len(inp.todo) > 1:
                notes.append(f"{prefix}segments run side by side: each guesses dedup's context from the "
                             f"{job.context.speculation_frames} frames before it; guesses are checked in plan order")
            elif job.context.sequential and len(inp.todo) > 1:
                notes.append(f"{prefix}segments run in order, one at a time (carried state comes from the "
                             f"segment before)")
        return notes

    def _after_notes(self, inp: _Input) -> list[str]:
        """What the user hears of an input once its segments are done: what they said, then
        how the guesses went."""
        prefix = f"{inp.name}: " if len(self.inputs) > 1 else ""
        return [prefix + n for n in inp.job.after_notes] + self._speculation_notes(inp)

    def _speculation_notes(self, inp: _Input) -> list[str]:
        if not inp.hits + inp.misses:
            return []
        prefix = f"{inp.name}: " if len(self.inputs) > 1 else ""
        return [f"{prefix}speculation: {inp.hits} of {inp.hits + inp.misses} guessed contexts right, "
                f"{inp.misses} segment(s) run again"]

    def _submit_ready(self) -> None:
        for inp in self.inputs:
            context = inp.job.context
            chain = context.sequential and not context.speculative  # carried state: one at a time
            while inp.todo and not (chain and inp.running):
                if context.speculative and len(self.in_flight) >= self.slots:
                    break  # held back, not queued in Ray: a rerun after a miss goes first, and a
                    # segment whose predecessor is recorded by then needs no guess
                seg = inp.todo.popleft()
                # guess only what is not known: segment 0, or one whose predecessor is recorded, is not
                speculate = context.speculative and seg.index > 0 \
                    and seg.index - 1 not in inp.job.manifest.segments
                task = dataclasses.replace(inp.job.task(seg, speculate), table=None)  # the table travels once
                ref = self.remote.remote(task, inp.table_ref, self.board, inp.key(seg),
                                         f"{inp.name} #{seg.index}", versions())
                self.in_flight[ref] = (inp, seg, task.output)
                self.submitted += 1
                inp.running += 1
                self._publish()

    def _finished(self, ref) -> None:
        inp, seg, path = self.in_flight.pop(ref)
        inp.running -= 1
        self.board.forget.remote(inp.key(seg))  # its row goes (a rerun posts a new one)
        try:
            try:
                outcome = self.ray.get(ref)
            except self.ray.exceptions.RayError as exc:  # retries spent: workers or nodes kept dying
                raise EngineError(f"{inp.name} segment {seg.index}: Ray gave up after "
                                  f"{self.options.max_retries} retries: {type(exc).__name__}") from None
            if not inp.job.context.ordered:
                self._accept(inp, seg, outcome, path)
                return
            inp.held[seg.index] = (outcome, path)  # even a failure: with a wrong guess it may not be real
            self._check_in_order(inp)
        finally:
            self._publish()

    def _publish(self) -> None:
        """What the display shows, as one: accepted and held segments' frames (a held one
        that turns out a miss is taken off again), their stages, and those in flight."""
        held = sum(o["result"].frames for inp in self.inputs for o, _ in inp.held.values()
                   if o.get("result") is not None)
        context = self._stages[0].items - self._stage_frames if self._stages else 0
        flying = {inp.key(seg): seg.frames for inp, seg, _ in self.in_flight.values()}
        self._view = (sum(inp.frames_done for inp in self.inputs) + held, self._stages, context, flying)

    def _count(self, result: SegmentResult) -> None:
        """An accepted segment's stages, added to the run's (as --resume's display adds them)."""
        self._stages = added(self._stages, _stage_snapshots(result.stages))
        self._stage_frames += result.frames

    def _check_in_order(self, inp: _Input) -> None:
        """Accept held results in plan order while the next one's context start is the true one
        (c_true from the accepted segment before); a wrong guess is deleted and run again."""
        job = inp.job
        for seg in job.plan.segments:
            if seg.index in job.manifest.segments:
                continue
            if seg.index not in inp.held:
                return
            outcome, path = inp.held.pop(seg.index)
            if outcome.get("result") is not None:
                inp.prescan_s += outcome["result"].prescan_s
            if outcome.get("speculated"):
                if outcome.get("decode_start") != job.task(seg).decode_start:
                    inp.misses += 1
                    _remove(path)
                    inp.todo.appendleft(seg)  # its predecessor is recorded: it runs with the true context
                    return
                inp.hits += 1
            self._accept(inp, seg, outcome, path)

    def _accept(self, inp: _Input, seg: Segment, outcome: dict, path: str) -> None:
        if outcome.get("error"):  # in a batch, which input: segments of all of them run interleaved
            prefix = f"{inp.name}: " if len(self.inputs) > 1 else ""
            raise SegmentFailed(prefix + outcome["error"], outcome["exit_code"])
        result: SegmentResult = outcome["result"]
        if not os.path.isfile(path) or file_digest(path) != (result.size, result.sha256):
            raise UserError(f"segment file {path} written by {outcome['worker']} does not reach the driver "
                            f"intact: the work directory must be on a filesystem every node shares")
        inp.job.record(seg, result)  # the one writer of the manifest
        inp.results[seg.index] = result
        inp.workers[seg.index] = {k: outcome[k] for k in ("worker", "node", "gpu_ids", "cpu_s", "began", "ended",
                                                          "decode_start", "speculated")}
        inp.frames_done += seg.frames
        self._count(result)

    def _join_complete(self) -> None:
        for inp in self.inputs:
            if inp.report is not None or inp.todo or inp.running or inp.held:
                continue
            interrupts.raise_pending()  # noted while the input before finished: stop the rest now
            with interrupts.finishing(inp.job.config.output):  # in place: a signal cannot undo it
                self._finish_input(inp)
        if any(inp.report is None for inp in self.inputs):
            interrupts.raise_pending()

    def _finish_input(self, inp) -> None:
        """Join `inp`'s segments into its output, remove its work directory, write its report."""
        started = time.perf_counter()
        inp.job.join()
        join_s = time.perf_counter() - started
        attempts = self._attempts()
        extra = {"ray": {
            "where": self.where, "startup_s": round(self.startup_s, 3), "plan_s": round(self.plan_s, 3),
            "join_s": round(join_s, 3),
            "cpus_per_segment": self.cpus, "gpus_per_segment": self.gpus,
            "sequential": inp.job.context.sequential and not inp.job.context.speculative,
            "speculation": {"frames": inp.job.context.speculation_frames if inp.job.context.speculative
                            else 0, "hits": inp.hits, "misses": inp.misses,
                            "prescan_s": round(inp.prescan_s, 3)},
            "workers": {str(i): w for i, w in sorted(inp.workers.items())},
            "attempts": {str(s.index): attempts.get(inp.key(s), 0) for s in inp.job.plan.segments
                         if s.index in inp.results}}}
        inp.job.notes.extend(self._speculation_notes(inp))
        inp.report = inp.job.finish(inp.results, self.started, inp.frames_done, join_s, extra)
        self.finished.append(inp.report)

    # ---- progress -------------------------------------------------------------------------

    def _poll_board(self) -> None:
        """Take the workers' latest snapshots without waiting for them."""
        if self._board_read is not None:
            ready, _ = self.ray.wait([self._board_read], timeout=0)
            if not ready:
                return
            try:
                live, _ = self.ray.get(self._board_read)
            except self.ray.exceptions.RayError:  # the board's node went: progress, never the job
                live = {}
            keys = {inp.key(seg) for inp, seg, _ in self.in_flight.values()}
            self.live = {k: v for k, v in live.items() if k in keys}
        self._board_read = self.board.read.remote()

    def _attempts(self) -> dict[str, int]:
        try:
            return self.ray.get(self.board.read.remote(), timeout=30)[1]
        except self.ray.exceptions.RayError:
            return {}

    def snapshot(self) -> RunSnapshot:
        """The reporter thread's view: each frame counted once (a finished segment's worker row
        is not added to it), workers only for segments still in flight."""
        frames, stages, context, flying = self._view
        live = self.live
        workers = [w for k, w in live.items() if k in flying]
        done = sum(len(inp.results) for inp in self.inputs)
        reused = sum(len(inp.job.reused) for inp in self.inputs)
        pending = sum(len(inp.todo) + inp.running + len(inp.held) for inp in self.inputs)
        frames += sum(min(w.frames, flying[k]) for k, w in live.items() if k in flying)
        return RunSnapshot(elapsed_s=time.perf_counter() - self.started, frames_done=frames,
                           frames_total=self.frames_total, stages=stages,
                           segments=SegmentCounts(done, reused, pending, len(workers), context_frames=context),
                           workers=workers)


def _stage_snapshots(stages: list[dict]) -> list[StageSnapshot]:
    """A segment's per-stage figures (`StageSnapshot.as_dict`) as the display's."""
    return [StageSnapshot(st["name"], st["kind"], st["workers"], st["items"], st["busy_s"], st["wait_in_s"],
                          st["wait_out_s"], dict(st["counters"]), settings=st.get("settings", {}))
            for st in stages]


class ProgressBoard:
    """A Ray actor on the driver's node: workers post snapshots, the driver reads them all.
    A row not heard from for STALE_S is left out (its worker died; a rerun posts anew)."""

    def __init__(self) -> None:
        self.live: dict[str, WorkerSnapshot] = {}
        self.heard: dict[str, float] = {}
        self.attempts: dict[str, int] = {}

    def started(self, key: str, snap: WorkerSnapshot) -> None:
        self.attempts[key] = self.attempts.get(key, 0) + 1
        self.update(key, snap)

    def update(self, key: str, snap: WorkerSnapshot) -> None:
        self.live[key] = snap
        self.heard[key] = time.monotonic()

    def forget(self, key: str) -> None:
        """The segment is finished (or failed): no row for it."""
        self.live.pop(key, None)
        self.heard.pop(key, None)

    def read(self) -> tuple[dict[str, WorkerSnapshot], dict[str, int]]:
        now = time.monotonic()
        return ({k: v for k, v in self.live.items() if now - self.heard.get(k, now) < STALE_S},
                dict(self.attempts))


def run_segment(task: SegmentTask, table, board, key: str, label: str, expected: dict) -> dict:
    """A Ray task: one segment with the one-machine runner. Failures come back as values."""
    import ray

    context = ray.get_runtime_context()
    name = f"{ray.util.get_node_ip_address()}:{os.getpid()}"
    where = {"worker": name, "node": context.get_node_id()[:12], "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
             "began": time.time()}  # wall clock: when segments ran side by side, across nodes
    try:  # acknowledged: a worker killed right after still counts as an attempt
        ray.get(board.started.remote(key, WorkerSnapshot(name, label, 0, 0.0)), timeout=10)
    except ray.exceptions.RayError:  # includes GetTimeoutError: progress never holds up work
        pass
    mine = versions()
    if mine != expected:  # x264's bytes, the manifest key: every node must run the same build
        return {"error": f"{name} runs {mine}, the driver {expected}: install the same engine, "
                         f"PyAV and FFmpeg on every node", "exit_code": 2, **where}
    where.update(speculated=task.decode_start is None, decode_start=task.decode_start)
    stop = threading.Event()
    running: list[SegmentRun] = []  # once the pre-scan (if any) is done
    started = time.perf_counter()

    def report() -> None:  # from the start: a row that stops being heard from is a dead worker's
        gpu = GpuMonitor()  # no NVML here: no telemetry, never an error
        try:
            while not stop.wait(REPORT_EVERY_S):
                frames = running[0].frames_written if running else 0
                fps = frames / (time.perf_counter() - started)
                board.update.remote(key, WorkerSnapshot(name, label, frames, fps, gpu.sample()))
        finally:
            gpu.close()

    reporter = threading.Thread(target=report, name="engine-ray-progress", daemon=True)
    reporter.start()
    try:
        try:
            run = SegmentRun(dataclasses.replace(task, table=table))  # a speculative one pre-scans here
        except BaseException as exc:  # noqa: BLE001 - reported to the driver, which fails the job
            return {**_failure(exc), **where}
        where["decode_start"] = run.decode_start
        started = time.perf_counter()
        running.append(run)
        cpu = time.process_time()  # the worker process runs one task at a time: its CPU is this segment's
        try:
            result = run.run()
        except BaseException as exc:  # noqa: BLE001
            return {**_failure(exc), **where}
    finally:
        stop.set()
        reporter.join()
    return {"result": result, **where, "cpu_s": round(time.process_time() - cpu, 3), "ended": time.time()}


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:  # a failed run leaves no file
        pass


def _failure(exc: BaseException) -> dict:
    """An exception as plain data (StageError does not pickle): message and exit code."""
    if isinstance(exc, StageError) and isinstance(exc.cause, UserError):
        message, code = str(exc.cause), exc.exit_code
    elif isinstance(exc, EngineError):
        message, code = str(exc), exc.exit_code
    else:
        message, code = f"{type(exc).__name__}: {exc}", 1
    return {"error": message, "exit_code": code}
