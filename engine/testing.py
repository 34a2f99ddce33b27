"""Test doubles, shipped so tests and users can build pipelines without media.

- `ListSource`: frames from arrays, optionally failing at a given seq.
- `CollectingSink`: keeps what it receives; commit/abort are recorded.
- Stages under ``test.*`` names: an arithmetic map/batch/window stage that proves which
  frame is which, a jitter stage for property tests, a faulty stage of every kind, and a
  stage that stalls. Importing this module registers them (for the CLI:
  ``ENGINE_STAGE_MODULES=engine.testing``).
"""

from __future__ import annotations

import random
import threading
import time
from fractions import Fraction
from typing import Iterator, Literal

import numpy as np

from engine.frame import Frame
from engine.registry import register_stage
from engine.stage import BatchStage, MapStage, WindowStage


INDEX_BITS = 12  # clips of up to 4096 frames


def index_frame(seq: int, height: int = 48, width: int = 64) -> np.ndarray:
    """An RGB frame whose pixels spell `seq`, robust to lossy codecs.

    The top third is a barcode: INDEX_BITS columns, white for a set bit, black for a clear
    one, most significant bit first. The rest is a gradient that moves with `seq`, so the
    encoder has real motion to code.
    """
    data = np.empty((height, width, 3), np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    data[...] = ((xs * 4 + ys * 2 + seq * 3) % 200 + 28).astype(np.uint8)[..., None]
    band = max(1, height // 3)
    edges = np.linspace(0, width, INDEX_BITS + 1).astype(int)
    for bit in range(INDEX_BITS):
        on = (seq >> (INDEX_BITS - 1 - bit)) & 1
        data[:band, edges[bit]:edges[bit + 1]] = 255 if on else 0
    return data


def frame_index(data: np.ndarray) -> int:
    """Read back the index written by `index_frame` (codec noise and scaling tolerated)."""
    height, width = data.shape[:2]
    band = data[: max(1, height // 3)].astype(np.float32)
    if data.dtype == np.uint16:
        band /= 257.0
    edges = np.linspace(0, width, INDEX_BITS + 1).astype(int)
    seq = 0
    for bit in range(INDEX_BITS):
        lo, hi = edges[bit], edges[bit + 1]
        # sample the middle of each cell, away from edges where the codec smears
        cell = band[band.shape[0] // 4: max(band.shape[0] * 3 // 4, 1),
                    lo + (hi - lo) // 4: max(hi - (hi - lo) // 4, lo + 1)]
        seq = (seq << 1) | int(cell.mean() > 127)
    return seq


class ListSource:
    name = "decode"

    def __init__(self, count: int, *, height: int = 48, width: int = 64, pts_step: int = 1001,
                 time_base: Fraction = Fraction(1, 24000), fail_at: int | None = None):
        self.count, self.height, self.width = count, height, width
        self.pts_step, self.time_base, self.fail_at = pts_step, time_base, fail_at
        self.frames_total: int | None = count
        self.frame_rate: float | None = 1 / float(pts_step * time_base)
        self.closed = False

    def frames(self) -> Iterator[Frame]:
        for seq in range(self.count):
            if seq == self.fail_at:
                raise OSError(f"source failure injected at {seq}")
            yield Frame.from_array(seq, seq * self.pts_step, self.time_base,
                                   index_frame(seq, self.height, self.width))

    def close(self) -> None:
        self.closed = True


class ImagesSource(ListSource):
    """A `ListSource` of the given H×W×3 images, one frame each (pts and time base as ListSource's)."""

    def __init__(self, images: list[np.ndarray], **options) -> None:
        super().__init__(len(images), height=images[0].shape[0], width=images[0].shape[1], **options)
        self.images = images

    def frames(self) -> Iterator[Frame]:
        for seq, image in enumerate(self.images):
            yield Frame.from_array(seq, seq * self.pts_step, self.time_base, image)


class CollectingSink:
    name = "collect"

    def __init__(self, fail_at: int | None = None):
        self.frames: list[Frame] = []
        self.fail_at = fail_at
        self.finished_with: int | None = None
        self.committed = False
        self.aborted = 0

    def write(self, frame: Frame) -> None:
        if frame.seq == self.fail_at:
            raise OSError(f"sink failure injected at {frame.seq}")
        self.frames.append(frame)

    def finish(self, frames: int) -> None:
        self.finished_with = frames

    def commit(self) -> None:
        self.committed = True

    def abort(self) -> None:
        self.aborted += 1


def _add(frame: Frame, value: int) -> Frame:
    frame.data = (frame.data.astype(np.int16) + value).clip(0, 255).astype(np.uint8)
    return frame


@register_stage("test.add")
class AddMap(MapStage):
    """Adds `value` to every pixel (proves a frame went through exactly once)."""

    def __init__(self, value: int = 1):
        super().__init__()
        self.value = value

    def process(self, frame: Frame) -> Frame:
        self.count("added")
        return _add(frame, self.value)


@register_stage("test.batch-add")
class AddBatch(BatchStage):
    """Batch version of test.add; records the batch sizes it saw."""

    def __init__(self, value: int = 1, batch_size: int = 4):
        super().__init__(batch_size=batch_size)
        self.value = value

    def process_batch(self, frames: list[Frame]) -> list[Frame]:
        self.count(f"batch_of_{len(frames)}")
        return [_add(f, self.value) for f in frames]


@register_stage("test.mark-dups")
class MarkDuplicates(MapStage):
    """Marks frames as duplicates the way dedup does: in each group of `every`, all but the
    first are duplicates of the first."""

    needs_order = True

    def __init__(self, every: int = 3):
        super().__init__()
        self.every = every
        self.dup_run = every - 1

    def process(self, frame: Frame) -> Frame:
        if frame.seq % self.every:
            frame.meta["dup_of"] = frame.seq - frame.seq % self.every
            frame.drop_pixels()
        return frame


@register_stage("test.lagging-batch")
class LaggingBatch(AddBatch):
    """Like test.batch-add, but keeps `lag` batches in flight, as a device pipeline does:
    each call returns the batch given `lag` calls earlier, the rest at the end."""

    def __init__(self, value: int = 1, batch_size: int = 4, lag: int = 2):
        super().__init__(value=value, batch_size=batch_size)
        self.lag = lag
        self.span = batch_size * (lag + 1)
        self._held: list[list[Frame]] = []

    def submit_batch(self, frames: list[Frame]) -> list[list[Frame]]:
        self._held.append(self.process_batch(frames))
        return [self._held.pop(0)] if len(self._held) > self.lag else []

    def drain_batches(self) -> list[list[Frame]]:
        done, self._held = self._held, []
        return done


@register_stage("test.window-sum")
class WindowSum(WindowStage):
    """Returns each frame's pixels unchanged (checks windowing).

    Asserts the window is in seq order and holds no duplicates, so a runner bug cannot hide.
    """

    def __init__(self, window_size: int = 5, overlap: int = 1):
        super().__init__(window_size=window_size, overlap=overlap)

    def process_window(self, frames: list[Frame]) -> list[np.ndarray]:
        seqs = [f.seq for f in frames]
        if seqs != sorted(set(seqs)) or any(f.meta.get("dup_of") is not None for f in frames):
            raise AssertionError(f"window out of order or holding duplicates: {seqs}")
        self.count("windows")
        return [f.data.copy() for f in frames]


@register_stage("test.recurrent-sum")
class RecurrentWindowSum(WindowSum):
    """test.window-sum declared recurrent (each frame depends on its whole window), for the
    segment context rule."""

    recurrent = True


@register_stage("test.jitter")
class Jitter(MapStage):
    """Waits a random 0..max_ms per frame, so parallel workers finish out of order."""

    def __init__(self, max_ms: float = 2.0, seed: int = 0):
        super().__init__()
        self.max_ms = max_ms
        self._rng = random.Random(seed)

    def process(self, frame: Frame) -> Frame:
        time.sleep(self._rng.uniform(0, self.max_ms) / 1000)  # simulated work, not synchronisation
        return frame


class _Boom(RuntimeError):
    pass


class _FailAt:
    """Shared by the faulty stages: raise at seq `at`, in `phase` (process, open or flush)."""

    at: int
    phase: str

    def open(self, ctx) -> None:
        if self.phase == "open":
            raise _Boom("failure injected in open")

    def flush(self) -> list[Frame]:
        if self.phase == "flush":
            raise _Boom("failure injected in flush")
        return []

    def _check(self, frames: list[Frame]) -> None:
        if self.phase == "process" and any(f.seq == self.at for f in frames):
            raise _Boom(f"failure injected at seq {self.at}")


Phase = Literal["process", "open", "flush"]


@register_stage("test.fail-map")
class FailMap(_FailAt, MapStage):
    """Map stage that raises at frame `at`."""

    def __init__(self, at: int = 0, phase: Phase = "process"):
        MapStage.__init__(self)
        self.at, self.phase = at, phase

    def process(self, frame: Frame) -> Frame:
        self._check([frame])
        return frame


@register_stage("test.fail-batch")
class FailBatch(_FailAt, BatchStage):
    """Batch stage that raises on the batch holding frame `at`."""

    def __init__(self, at: int = 0, phase: Phase = "process", batch_size: int = 4):
        BatchStage.__init__(self, batch_size=batch_size)
        self.at, self.phase = at, phase

    def process_batch(self, frames: list[Frame]) -> list[Frame]:
        self._check(frames)
        return frames


@register_stage("test.fail-window")
class FailWindow(_FailAt, WindowStage):
    """Window stage that raises on the window holding frame `at`."""

    def __init__(self, at: int = 0, phase: Phase = "process", window_size: int = 5, overlap: int = 1):
        WindowStage.__init__(self, window_size=window_size, overlap=overlap)
        self.at, self.phase = at, phase

    def process_window(self, frames: list[Frame]) -> list[np.ndarray]:
        self._check(frames)
        return [f.data for f in frames]


#: Set by tests to let stalled stages go once the run has been abandoned.
RELEASE_STALLED = threading.Event()


@register_stage("test.stall")
class Stall(MapStage):
    """Blocks inside `process` at frame `at`, like a hung model call, until released."""

    def __init__(self, at: int = 0):
        super().__init__()
        self.at = at

    def process(self, frame: Frame) -> Frame:
        if frame.seq == self.at:
            RELEASE_STALLED.wait()
        return frame
