"""One segment, on one machine: decode its range with context, run the normal runner, keep its
own frames, encode them to a file of their own.

A `SegmentTask` is plain data (input path, frame range, context, pipeline, encoder), so a
driver can run it here (engine/resume.py) or hand it to another process or machine.

The context rule, in one place (`context_start`, `context_stop`):

- A window stage with `overlap` O gives a frame the same result whenever the frame has O
  (unique) frames of context on each side in its window (the contract in engine/stage.py).
  Chained window stages add up: O = the sum of their overlaps.
- dedup's state after a unique frame depends on that frame alone: its reference becomes that
  frame and its run count 0 (stages/dedup.py). So a fresh dedup started at a frame that was
  unique in the whole-video run makes exactly the whole-video decisions from there on.
- Hence segment [s, e) decodes [c, e + R):
  - without dedup, c = s − O;
  - with dedup, c = the U-th last unique frame before s, U = O + 1. The last unique frame
    before s is dedup's reference for the duplicates that open the segment, and they show
    its processed pixels, so it needs its own O unique frames of context. The previous
    segment's run records its last unique frames (`tail_unique`); its decisions are the
    whole-video ones, so segments with dedup run in order.
  - R = O × (1 + dup_run): duplicate runs are at most dup_run long, so R frames after e
    hold at least O unique ones.
  Frames outside [s, e) are processed for context and dropped before the encoder.
- Speculative context (`--ray`: segments with dedup side by side). A segment whose c is not
  known yet (the one before has not run) guesses it: a pre-scan decodes [max(0, s − L), s)
  through the stages up to the last duplicate-marking one only (non-window stages: dedup
  comes first), dedup starting fresh at s − L, and records which frames are unique, no
  pixels. Its last U unique frames before s give c_spec by the same rule; the segment then
  runs exactly as above with decode_start = c_spec, and its `SegmentResult` says which c it
  used. L = SPECULATE_RUNS × U × (1 + dup_run): [s − L, s) holds at least SPECULATE_RUNS × U
  unique frames of the whole-video run, so a fresh chain that starts out of phase (a hold
  longer than dup_run) has that many changes to fall back into step before the U frames
  that decide c. If s − L <= 0 the pre-scan is the whole-video run itself: c_spec is c.
  Why a check of c alone suffices: the driver, once segment k − 1's accepted result is known,
  computes c_true = context_start(seg_k, tail_{k−1}) and accepts k iff c_true == c_spec
  (else deletes k's file and runs k again with c_true). c_true is unique in the whole-video
  run, so a fresh dedup from c_spec = c_true makes the whole-video decisions (the dedup rule
  above), and the decode starts at the frame the sequential rule starts at: same frames,
  same decisions, same windows, same bytes. Only accepted segments are recorded, in plan
  order, so a restarted driver reuses exactly what is proven. A guess is never trusted:
  a wrong one costs a rerun of that segment, never a wrong frame.
- A recurrent window stage (`WindowStage.recurrent`: BasicVSR++ propagates through its whole
  window) gives a frame a result that depends on where its window starts, not only on O
  frames around it. A single pass puts windows of K frames at 0, step, 2·step, ... (step =
  K − 2O, in unique frames), window j emitting [j·step + O, j·step + K − O). So a segment
  decodes from the start of the window that emits its first needed frame to the end of the
  one that emits its last: the same windows, the same frames. Without dedup, c = the window
  start of s and the stop the window end of e − 1. After dedup, windows count unique frames:
  each segment's run numbers its unique frames from `unique_start` (the unique index of c)
  and records the index of its tail's first (`tail_index`). The stream's last window (the
  rest after the last full one) runs to the end, past where the step would put it: without
  dedup the frame count places it; after dedup the unique count is not known yet, so c is the
  first window start after L − K (L: the last unique frame before s), which the last window
  cannot precede (U = K tail frames reach it); from any of the single pass's window starts
  the same windows follow. R = K × (1 + dup_run). Such segments run in order (no
  speculation: a pre-scan cannot know the unique index). A second window stage beside a
  recurrent one: refused.
- dedup after a window stage would compare processed pixels that lack context at c: refused.
- A stage that `carries_state` (a recurrent model's previous output) depends on every frame
  before, which no context rebuilds. Its segments run in order, each starting from the state
  the one before ended with (`state_in`/`state_out`, npz files next to the segments). Without
  dedup there is no context (c = s, R = 0). With dedup (O = 0) the one context frame is the
  last unique frame before s: the last frame the state saw, whose result the stage gives
  again without stepping. Window overlap would feed it frames twice: refused.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from engine import image_input
from engine.crashpoints import crash_point
from engine.durable import fsync_dir, fsync_file
from engine.encoders import EncoderChoice, has_alpha
from engine.errors import UserError, ValidationError
from engine.frame import Frame
from engine.frame_size import size_note
from engine.metrics import RunSnapshot
from engine.range_source import RangeSource
from engine.registry import StageSpec
from engine.runner import Pipeline, RunnerOptions
from engine.segments import FrameTable, Segment
from engine.sink import VideoSink
from engine.stage import WindowStage

#: Unique frames (in units of U) a speculative pre-scan covers before a segment (see the
#: module docstring): L = SPECULATE_RUNS × U × (1 + dup_run) frames.
SPECULATE_RUNS = 4
from engine.streamcopy import CopyPlan


@dataclass(frozen=True)
class PipelineContext:
    """How much context a pipeline needs around a segment (see the module docstring)."""

    overlap: int    # unique frames of context each side (sum of window stages' overlaps)
    dup_run: int    # longest duplicate run (dedup's max_run); 0 without dedup
    stateful: tuple[int, ...] = ()  # pipeline indices of the stages that carry state
    marking: int = 0  # stages up to and including the last duplicate-marking one (pre-scan)
    window: int = 0   # a recurrent window stage's window (K), the pipeline's only window stage; 0: none

    @classmethod
    def of(cls, specs: list[StageSpec]) -> PipelineContext:
        overlap = dup_run = marking = window = 0
        stateful = []
        windows = False
        recurrent = ""  # the recurrent window stage's name, once seen
        for index, spec in enumerate(specs):
            stage = spec.build()  # constructors are cheap and validate
            if stage.dup_run:
                marking = index + 1
            # a segment's context goes back to a unique frame the marking stage chose; a window
            # stage (even without overlap: its windows would fall elsewhere) or carried state
            # before it would be given frames it never had in a single pass
            if stage.dup_run and (windows or stateful):
                kind = "a window stage" if windows else f"'{specs[stateful[0]].name}' (state carried from frame to frame)"
                raise UserError(f"--resume cannot cut a pipeline where '{spec.name}' (duplicate "
                                f"marking) follows {kind}; put it first")
            if isinstance(stage, WindowStage) and (recurrent or (windows and stage.recurrent)):
                raise UserError(f"--resume cannot cut a pipeline where '{recurrent or spec.name}' (recurrent: "
                                f"each frame depends on its whole window) runs beside another window stage")
            windows = windows or isinstance(stage, WindowStage)
            if isinstance(stage, WindowStage):
                overlap += stage.overlap
                if stage.recurrent:
                    recurrent, window = spec.name, stage.window_size
            dup_run = max(dup_run, stage.dup_run)
            if stage.carries_state:
                stateful.append(index)
        if stateful and overlap:
            name = specs[stateful[0]].name
            raise UserError(f"--resume cannot cut a pipeline where '{name}' (state carried from frame "
                            f"to frame) runs beside window stages with overlap; run it without --resume")
        return cls(overlap, dup_run, tuple(stateful), marking, window)

    @property
    def ordered(self) -> bool:
        """Whether a segment's context depends on the run of the segment before."""
        return self.dup_run > 0

    @property
    def sequential(self) -> bool:
        """Whether segments must run in plan order, each after the one before is recorded."""
        return self.ordered or bool(self.stateful)

    @property
    def speculative(self) -> bool:
        """Whether a segment's context can be guessed and checked (dedup without carried state;
        not before a recurrent stage, whose windows fall by unique frames counted from the start)."""
        return self.ordered and not self.stateful and not self.window

    @property
    def keep_unique(self) -> int:
        if not self.ordered:
            return 0
        # recurrent: back to the first window start after the last unique frame − K (`unique_start`)
        return self.window if self.window else self.overlap + 1

    @property
    def _step(self) -> int:
        return self.window - 2 * self.overlap  # a single pass's windows start every `step` (unique) frames

    def _window(self, frame: int, frames: int) -> int:
        """The index of the single pass's window that emits (unique) frame `frame`, in a stream
        of `frames`. Full windows run as soon as they fill, so the stream's last window is the
        rest after the last full one: it emits to the end, past where its index would say."""
        regular = max(0, (frame - self.overlap) // self._step)
        full = 0 if frames < self.window else (frames - self.window) // self._step + 1
        # the rest after the last full window, if it holds frames that window did not emit
        last = full if full == 0 or frames > full * self._step + self.overlap else full - 1
        return min(regular, last)

    @property
    def speculation_frames(self) -> int:
        """L: frames a speculative pre-scan decodes before a segment's start."""
        return SPECULATE_RUNS * self.keep_unique * (1 + self.dup_run)

    def context_start(self, segment: Segment, previous_tail: list[int] | None, tail_index: int = 0,
                      frames: int | None = None) -> int:
        """c: the first frame segment's run decodes. `tail_index`: the unique index (unique
        frames before it, whole video) of `previous_tail[0]`, for a recurrent stage after dedup;
        `frames`: the video's, for a recurrent stage without dedup (its last window)."""
        if not self.ordered:
            if self.window:
                if frames is None:
                    raise ValueError("a recurrent stage's context needs the video's frame count")
                return self._window(segment.start, frames) * self._step
            return max(0, segment.start - self.overlap)
        if segment.start == 0:
            return 0
        if not previous_tail:
            raise ValueError(f"segment {segment.index} needs the unique frames of the one before")
        if self.window:
            return previous_tail[self.unique_start(segment, previous_tail, tail_index) - tail_index]
        return previous_tail[-self.keep_unique] if len(previous_tail) >= self.keep_unique \
            else previous_tail[0]

    def unique_start(self, segment: Segment, previous_tail: list[int] | None, tail_index: int = 0,
                     frames: int | None = None) -> int:
        """The unique index of the context start: where a recurrent stage's windows begin."""
        if not self.ordered:
            return self.context_start(segment, previous_tail, tail_index, frames) if self.window else 0
        if segment.start == 0 or not self.window:
            return 0
        last = tail_index + len(previous_tail) - 1  # the last unique frame before s
        # The unique count is not known yet, so neither is where the stream's last window
        # starts: anywhere after last − K. Start at the first window there: from any of the
        # single pass's window starts, the same windows follow (a window or less of extra work).
        start = max(0, -(-(last - self.window + 1) // self._step)) * self._step
        if start < tail_index:
            raise ValueError(f"segment {segment.index}: the unique frames recorded before it do not "
                             f"reach back to its window's start")
        return start

    def context_stop(self, segment: Segment, frames: int) -> int:
        if self.window and not self.ordered:  # to the end of the window that emits the last frame
            window = self._window(segment.end - 1, frames)
            if window == self._window(frames - 1, frames):  # the last: it runs to the end
                return frames
            return min(frames, window * self._step + self.window)
        # recurrent after dedup: up to a whole window of unique frames past the end
        reach = self.window if self.window else self.overlap
        return min(frames, segment.end + reach * (1 + self.dup_run))


@dataclass(frozen=True)
class SegmentTask:
    """Everything one segment's run needs. Plain data: it can travel to another process."""

    input: str
    segment: Segment
    decode_start: int | None  # first frame decoded (<= segment.start): context; None: speculate
    decode_stop: int        # one past the last frame decoded (>= segment.end)
    table: FrameTable
    specs: list[StageSpec]
    encoder: EncoderChoice
    output: str             # the segment file, written as a partial and renamed when complete
    keep_unique: int = 0    # how many of the last unique frames to report (dedup context)
    unique_start: int = 0   # unique frames (whole video) before decode_start: the tail's indices
    runner: RunnerOptions = field(default_factory=RunnerOptions)
    state_in: str | None = None   # the carried state the segment before ended with (npz)
    state_out: str | None = None  # where this segment's end state goes (stateful pipelines)
    context: PipelineContext | None = None  # with decode_start None: how to guess it
    deinterlace: str = "off"  # --deinterlace (the range decodes a frame either side for it)
    image_rate: str | None = None  # an image-sequence input's rate (engine/image_input.py), for workers
    frame_size: tuple[int, int] | None = None  # the job's (first frame's) size: engine/frame_size.py


@dataclass(frozen=True)
class SegmentResult:
    index: int
    frames: int
    size: int
    sha256: str
    tail_unique: list[int]   # last unique frames up to the segment's end (context for the next)
    decoded: int             # frames decoded, context included
    elapsed_s: float
    state_sha256: str = ""   # of `state_out`, when the pipeline carries state
    decode_start: int = 0    # the context start the run used (speculated or given)
    speculated: bool = False  # decode_start was guessed by a pre-scan: the driver checks it
    prescan_s: float = 0.0   # the pre-scan's wall time (the cost of speculating)
    #: what the segment's source and sink said (alpha, cropping, ...), and what its source did
    #: in numbers (`deinterlace`, `frame_size`): the driver adds them up for the whole job
    notes: list[str] = field(default_factory=list)
    source: dict = field(default_factory=dict)
    #: the run's figures: per stage (`StageSnapshot.as_dict`; context frames included), the
    #: encoder as it ran (`VideoSink.describe`), dedup's decisions on the segment's own frames
    stages: list[dict] = field(default_factory=list)
    encoder: dict = field(default_factory=dict)
    dedup: dict = field(default_factory=dict)
    tail_index: int = 0      # unique frames (whole video) before tail_unique[0]


class TrimmingSink:
    """Writes frames [start, end) to `inner`; context frames only pass by.

    Also keeps the seqs of the last unique (not `dup_of`) frames before `end`, context
    included: the decisions there are the whole-video ones (see the module docstring).
    """

    name = "encode"

    def __init__(self, inner: VideoSink, start: int, end: int, keep_unique: int, unique_start: int = 0):
        self.inner = inner
        self.start, self.end = start, end
        self.written = 0
        self.tail_unique: deque[int] = deque(maxlen=max(keep_unique, 1))
        self.uniques = unique_start  # unique index after the last unique frame before `end`
        self.kinds: Counter[str] = Counter()  # dedup's decisions on [start, end): unique, exact_..., near_...

    def write(self, frame: Frame) -> bool:
        """Whether `frame` was written (False: context, let by; the encode row counts only those written)."""
        if frame.seq < self.end and frame.meta.get("dup_of") is None:
            self.tail_unique.append(frame.seq)
            self.uniques += 1
        if not self.start <= frame.seq < self.end:
            return False
        self.kinds["unique" if frame.meta.get("dup_of") is None else frame.meta.get("dup_kind", "duplicate")] += 1
        self.inner.write(frame)
        self.written += 1
        crash_point("segment-frame")
        return True

    @property
    def tail_index(self) -> int:
        return self.uniques - len(self.tail_unique)

    def finish(self, frames: int) -> None:
        if self.written != self.end - self.start:
            raise ValidationError(f"segment frames [{self.start}, {self.end}): "
                                  f"{self.written} reached the encoder")
        self.inner.finish(self.written)

    def commit(self) -> None:
        self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()

    @property
    def notes(self) -> list[str]:
        return self.inner.notes

    @property
    def picture_format(self):
        # the runner offers stages the sink's picture format; a segment must get the
        # single pass's offer, or its pixels go through another RGB-to-YUV conversion
        return self.inner.picture_format


def file_digest(path: str) -> tuple[int, str]:
    """(size, sha256) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


class UniqueRecorder:
    """The pre-scan's sink: keeps the seqs of the last unique frames; no pixels, no file."""

    name = "uniques"

    def __init__(self, keep: int):
        self.tail_unique: deque[int] = deque(maxlen=max(keep, 1))

    def write(self, frame: Frame) -> None:
        if frame.meta.get("dup_of") is None:
            self.tail_unique.append(frame.seq)
        crash_point("speculate-frame")

    def finish(self, frames: int) -> None:
        pass

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass

    notes: list[str] = []


WORK_DIR_HINT = " (the segments recorded there are kept: make room and run the job again)"


def work_dir_label(work_dir: str) -> str:
    """What a failed write of a segment names: the work directory, not a file hidden in it."""
    return f"--resume's work directory {os.path.abspath(work_dir)}"


def register_image_rate(task: SegmentTask) -> None:
    if task.image_rate is not None:
        image_input.set_rate(task.input, Fraction(task.image_rate))


def speculative_start(task: SegmentTask) -> int:
    """c_spec: the context start guessed from a pre-scan of [max(0, s − L), s) with a fresh
    dedup (see the module docstring). The caller's driver checks it against the true one."""
    context, seg = task.context, task.segment
    if context is None or not context.speculative:
        raise ValueError(f"segment {seg.index}: no context start, and the pipeline's cannot be guessed")
    if seg.start == 0:
        return 0
    first = max(0, seg.start - context.speculation_frames)
    register_image_rate(task)
    source = RangeSource(task.input, task.table.frame_range(first, seg.start), task.deinterlace,
                         task.frame_size)
    try:
        recorder = UniqueRecorder(context.keep_unique)
        Pipeline(source, task.specs[:context.marking], recorder, task.runner).run()
    finally:
        source.close()
    return context.context_start(seg, list(recorder.tail_unique))


class SegmentRun:
    """Runs one `SegmentTask` with the ordinary one-machine runner. One instance, one run.
    A task without a context start first guesses it (`speculative_start`)."""

    def __init__(self, task: SegmentTask):
        register_image_rate(task)  # a Ray worker's process: the driver's registration is not here
        self.speculated = task.decode_start is None
        started = time.perf_counter()
        self.decode_start = speculative_start(task) if self.speculated else task.decode_start
        self.prescan_s = time.perf_counter() - started if self.speculated else 0.0
        self.task = task
        seg = task.segment
        self.source = RangeSource(task.input, task.table.frame_range(self.decode_start, task.decode_stop),
                                  task.deinterlace, task.frame_size, counted=range(seg.start, seg.end))
        self.source.alpha_kept = (("all" if not task.specs else "untouched") if has_alpha(task.encoder.pix_fmt)
                                  else None)
        try:
            inner = VideoSink(task.output, task.encoder, self.source.info, input_path=task.input,
                              copy_plan=CopyPlan(),  # other streams: once, at the join
                              shown_as=work_dir_label(os.path.dirname(task.output)), write_hint=WORK_DIR_HINT)
            self.sink = TrimmingSink(inner, seg.start, seg.end, task.keep_unique, task.unique_start)
            states = load_states(task.state_in) if task.state_in else None
            self.pipeline = Pipeline(self.source, task.specs, self.sink, task.runner, states)
        except BaseException:
            self.source.close()
            raise

    def snapshot(self) -> RunSnapshot:
        return self.pipeline.snapshot()

    @property
    def frames_written(self) -> int:
        return self.sink.written

    def run(self) -> SegmentResult:
        result = self.pipeline.run()
        fsync_file(self.task.output)  # the manifest must never name a file the disk lost
        size, digest = file_digest(self.task.output)
        state_digest = save_states(self.task.state_out, result.states) if self.task.state_out else ""
        seg = self.task.segment
        return SegmentResult(seg.index, seg.frames, size, digest,
                             list(self.sink.tail_unique) if self.task.keep_unique else [],
                             result.frames_in, result.elapsed_s, state_digest, self.decode_start,
                             self.speculated, self.prescan_s, *self._said(),
                             [st.as_dict(result.elapsed_s) for st in result.stages], self.sink.inner.describe(),
                             dict(self.sink.kinds) if any("unique" in st.counters for st in result.stages) else {},
                             self.sink.tail_index if self.task.keep_unique else 0)

    def _said(self) -> tuple[list[str], dict]:
        """(notes, numbers) for the driver. Counts cover the segment's own frames: the size
        holder sees only those; the deinterlacer counts only those."""
        source = self.source
        numbers = {"frame_size": source.size_holder.describe()}
        if source.deinterlacer is not None:
            numbers["deinterlace"] = source.deinterlacer.describe()
        # the per-segment notes on what was counted are replaced by the job's sums
        counted = [source.deinterlacer.note() if source.deinterlacer else None,
                   size_note(numbers["frame_size"])]
        notes = [n for n in source.notes + self.sink.notes if n not in counted]
        return notes, numbers


def save_states(path: str, states: dict[int, dict[str, np.ndarray]]) -> str:
    """Write the stages' end states to `path` (npz, `INDEX/NAME` keys) durably; its sha256."""
    tmp = f"{path}.partial"
    with open(tmp, "wb") as fh:
        np.savez(fh, **{f"{index}/{name}": array for index, state in sorted(states.items())
                        for name, array in sorted(state.items())})
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")
    return file_digest(path)[1]


def load_states(path: str) -> dict[int, dict[str, np.ndarray]]:
    states: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            index, name = key.split("/", 1)
            states.setdefault(int(index), {})[name] = data[key]
    return states
