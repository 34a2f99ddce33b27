"""The stage contract. A stage is a transform and nothing else.

Life of a stage instance: ``open(ctx)`` → ``process*`` → ``flush()`` at end of stream →
``close()``. The runner owns threads, channels, batching and windowing; a stage never
touches any of them. Each worker thread gets its own instance, so a stage may keep state
without locks.

Frames marked as duplicates (``meta["dup_of"]``, set by the dedup stage) bypass every
later stage: the runner passes them on untouched, batches and windows are built from
unique frames only, and the sink gives each duplicate its reference's result.

Three kinds:

- `MapStage`: one frame in, one frame out.
- `BatchStage`: up to `batch_size` frames in, the same frames out (the last batch may be short).
  A stage that keeps batches in flight (a device pipeline) overrides `submit_batch` and
  `drain_batches` and returns each batch when it is done, in the order given.
- `WindowStage`: a temporal model sees up to `window_size` consecutive frames, consecutive
  windows sharing `overlap` frames of context on each side. The runner emits each frame
  exactly once, from the window where it sits furthest from the edge.

Who may hold a frame's pixels in which form (see `Frame`):

- A decoded frame holds its `picture` (YUV planes in the decoder's buffers). Analysis
  stages may read the planes; any stage may read `data` (host RGB, converted once).
- Only a model stage (`takes_device = True`, device work through engine/inference.py) reads
  a picture's planes for its model or leaves its results on a device (`Frame.set_tensor`),
  and only when the runner says so in `StageContext.handoff`:
  - "device": the next stage is a model stage; leave results as device tensors, which it
    takes as they are (no host memory between two models);
  - "picture": the sink comes next and encodes `StageContext.picture_format`; hand it
    `av.VideoFrame`s in that format (`Frame.set_picture`), converted on the device;
  - "array": a CPU stage or an image sink comes next; hand it host RGB (`frame.data = ...`).
- A stage that is not a model stage never sees a tensor it must handle: reading `data`
  brings a device tensor back to the host, in that one place (`Frame.data`), so the
  contract holds whatever the handoff. Any stage may replace pixels with `data = array`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import numpy as np

from engine.errors import UserError
from engine.frame import Frame

StageKind = Literal["map", "batch", "window"]


@dataclass(frozen=True)
class StageContext:
    """What a stage may know about the run when it opens."""

    worker: int               # 0..workers-1
    workers: int
    width: int | None         # input frame size, when the source knows it
    height: int | None
    frame_rate: float | None
    frames_total: int | None
    device: str = "cpu"
    #: What this stage's results should be when it hands frames on (model stages only):
    #: "array" (host RGB), "device" (tensors for the next model stage), "picture" (the sink's
    #: format, `picture_format`). Any stage may ignore it and set `data`: that is always right.
    handoff: str = "array"
    #: When handoff == "picture": (pix_fmt, colorspace, color_range) as FFmpeg names them;
    #: `engine.colour.PictureFormat.of(*picture_format)` (None if it cannot make that format).
    picture_format: tuple[str, int, int] | None = None
    #: Call now and then inside one long call (a window of 96 frames through BasicVSR++ on the
    #: CPU takes an hour): the stall watchdog then times the gaps, not the whole call.
    progress: Callable[[], None] = lambda: None


class Stage:
    """Base of every stage. Subclasses set `name` and `kind` and implement one process method."""

    name: ClassVar[str] = ""
    kind: ClassVar[StageKind]
    #: Frames this stage holds at once per worker; the runner sizes the reorder window with it.
    #: Batch and window stages override it with their option.
    span: int = 1
    #: Longest run of frames this stage may mark as duplicates (the dedup stage's max_run).
    #: Duplicates skip batches and windows, so the runner widens its reorder window by it.
    dup_run: int = 0
    #: True if the stage must see frames in seq order (temporal state). The runner then
    #: reads its input through a reorder buffer, whatever runs in parallel upstream.
    needs_order: ClassVar[bool] = False
    #: True for model stages that take decoded planes and device tensors as input (through
    #: engine/inference.py); the runner then lets the stage before leave frames on the device.
    takes_device: ClassVar[bool] = False
    #: True if the stage keeps state from frame to frame that no bounded stretch of earlier
    #: frames rebuilds (a recurrent model's previous output). It runs with one worker and in
    #: order; `--resume` runs segments in plan order and starts each where the one before
    #: ended: `export_state` after the segment's last frame, `import_state` before the next
    #: one's first (engine/segment_job.py).
    carries_state: ClassVar[bool] = False
    #: `frame.meta` keys this stage reads and some stage before it must write (`provides`).
    #: The job refuses a pipeline where none does: `text-detect,inpaint` used to run as a
    #: plain transcode that removed nothing. A stage whose needs hang on its options sets
    #: them on the instance.
    requires: tuple[str, ...] = ()
    provides: ClassVar[tuple[str, ...]] = ()
    #: Counters the stage always reports, 0 until counted: a run that found nothing shows
    #: `text_frames=0`, and a report reader's `counters["text_frames"]` does not raise.
    counted: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()

    def open(self, ctx: StageContext) -> None:
        """Load models, allocate buffers. Called once per worker, in that worker's thread."""

    def flush(self) -> list[Frame]:
        """End of stream: return any frames the stage still holds (most hold none)."""
        return []

    def close(self) -> None:
        """Release resources. Called exactly once per opened instance, also after a failure."""

    @classmethod
    def run_note(cls, counters: dict[str, float]) -> str | None:
        """What the user should hear after a run from this stage's counters (all workers, all
        segments added up): a run that did nothing it was asked to, say. None: nothing."""
        return None

    def count(self, key: str, n: int | float = 1) -> None:
        """Add to a counter that appears in the progress display and the report."""
        self.counters[key] += n

    def describe(self) -> dict[str, Any]:
        """Settings as resolved when the stage opened (device, precision, ...), for the report."""
        return {}

    def export_state(self) -> dict[str, np.ndarray]:
        """`carries_state` stages: the state after the last frame processed, as host arrays
        that `import_state` restores exactly (bit for bit: resumed output must not change)."""
        raise NotImplementedError

    def import_state(self, state: dict[str, np.ndarray]) -> None:
        """`carries_state` stages: continue from `export_state`'s result (after `open`)."""
        raise NotImplementedError

    def weight_files(self) -> list[str]:
        """Files whose contents decide this stage's results (model weights). `--resume` hashes
        them into its job key, so a segment made with other weights is never reused."""
        return []

    def output_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The frame size this stage hands on for width×height frames, known before it opens
        (None when only its loaded model can say). The job refuses an impossible output size
        before starting; the runner opens each stage with its own input size."""
        return width, height


#: Frames larger than this a side are refused before the run (x264, x265 and ProRes stop near
#: it; a frame this size is already 0.8-1.6 GB of RGB).
MAX_SIDE = 16384


def check_frame_size(stage: str, width: int, height: int) -> None:
    """One stage's output size against MAX_SIDE: before the run where it is known, else where
    the stage learns it (a model's scale from its weights), before any frame that size exists."""
    if max(width, height) > MAX_SIDE:
        raise UserError(f"stage '{stage}': output would be {width}x{height}; frames may be at most "
                        f"{MAX_SIDE} pixels a side")


def frame_sizes(stages: list[Stage], width: int | None, height: int | None) -> list[tuple[int, int] | None]:
    """Each stage's input size, then the pipeline's output size, as far as known before the run."""
    sizes: list[tuple[int, int] | None] = [(width, height) if width and height else None]
    for stage in stages:
        sizes.append(None if sizes[-1] is None else stage.output_size(*sizes[-1]))
    return sizes


class MapStage(Stage):
    kind: ClassVar[StageKind] = "map"

    def process(self, frame: Frame) -> Frame:
        raise NotImplementedError


class BatchStage(Stage):
    kind: ClassVar[StageKind] = "batch"

    def __init__(self, batch_size: int = 4) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size  # read before every batch: a stage may lower it as it runs
        self.span = batch_size

    def process_batch(self, frames: list[Frame]) -> list[Frame]:
        """Return the same frames, in the same order, with their results."""
        raise NotImplementedError

    def submit_batch(self, frames: list[Frame]) -> list[list[Frame]]:
        """Hand over one batch; return the batches finished by now, oldest first.

        The default finishes each batch at once. A stage that overlaps batches (upload of
        one while another computes) returns them later; it must then set `span` to cover
        every frame it may hold, and give back the rest in `drain_batches`.
        """
        return [self.process_batch(frames)]

    def drain_batches(self) -> list[list[Frame]]:
        """End of stream: the batches still in flight, oldest first."""
        return []


class WindowStage(Stage):
    kind: ClassVar[StageKind] = "window"
    needs_order: ClassVar[bool] = True
    #: A frame's result depends on its whole window, not only on `overlap` frames either side
    #: (a recurrent model propagating through the window: BasicVSR++). A segment then starts
    #: and ends where a single pass's windows fall (engine/segment_job.py).
    recurrent: ClassVar[bool] = False

    def __init__(self, window_size: int = 8, overlap: int = 2) -> None:
        super().__init__()
        if window_size < 1 or overlap < 0 or window_size <= 2 * overlap:
            raise ValueError(
                f"window_size must exceed 2 × overlap (got window_size={window_size}, overlap={overlap})")
        self.window_size = window_size
        self.overlap = overlap
        self.span = window_size

    def process_window(self, frames: list[Frame]) -> list[np.ndarray]:
        """Return one output image per input frame, in order, without modifying the inputs.

        The runner gives a full window (`window_size` frames) as soon as it has one, so the
        stream's last window is always shorter: a stage may tell it by its length (inpaint and
        text-mask fill only the frames a window emits). A stream that ends on a full window
        gets one more, of the 2 × `overlap` frames shared with it.

        Context frames at either edge reappear in the next window as inputs, so they must
        keep their original pixels; the runner attaches each result to a fresh frame record
        and emits only the frames this window owns.
        """
        raise NotImplementedError
