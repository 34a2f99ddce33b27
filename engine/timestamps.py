"""Broken input timestamps: the repair rule, and the up-front check for `--timestamps refuse`.

Some files carry video timestamps that cannot be encoded as they are: every frame at pts 0
(some screen recorders, tools that write frames without timestamps), a pts repeated in the
middle, a jump backwards (MPEG-TS files concatenated byte for byte), or none at all (raw
streams). The rule, applied to every stream the engine writes (video frames at the source,
copied audio/subtitle packets in `engine.streamcopy`):

- A timestamp later than the previous one is kept as it is, so variable frame rate stays
  variable and a stretch of good timestamps after a broken one is untouched.
- A timestamp that is missing, repeated or earlier than the previous one is regenerated:
  the first bad one starts a run anchored at the previous good timestamp, and the k-th
  frame of the run gets anchor + k × (one frame at the nominal rate), rounded once from the
  anchor so that no rounding error accumulates. Where the good timestamps just before the
  run are spaced more than 2× away from the nominal frame (a VFR stretch, or a remuxed
  Matroska file whose "frame rate" is its 1000 Hz tick), their own spacing is used instead. (Matroska's block durations are whole
  milliseconds: 41 ms for 23.976 fps drifts 1.6 % if summed.) Without a nominal rate the
  container's own durations are summed instead. Audio runs count samples
  (frame_size / sample_rate) for the same reason.

Each stream is repaired on its own by the same rule; since a concatenation (or a broken
recorder) breaks every stream at the same point, each continues from where it stood and
they stay in sync to within a frame. The count of frames and packets repaired goes to the
user in one line and to the report.
"""

from __future__ import annotations

from collections import deque
from fractions import Fraction

import av

from engine.errors import UserError
from engine.image_input import open_media
from engine.video_stream import main_video

# H.264/HEVC reorder frames by at most 16 (the largest decoded picture buffer): in decode
# order a healthy pts is later than every pts more than this many packets before it.
REORDER_DEPTH = 16
MODES = ("repair", "refuse")


class TimestampRepair:
    """The rule above for one stream. Call it with each timestamp in presentation order."""

    def __init__(self, step: Fraction | None, *, refuse: bool = False, what: str = "frame",
                 strict: bool = True):
        self.step = step            # one frame (or packet) in time_base units; None: use durations
        self.refuse = refuse
        self.strict = strict        # False: an equal timestamp is fine (two subtitles at once)
        self.what = what
        self.last: int | None = None
        self.repaired = 0
        self.first_bad: int | None = None   # index (seq) of the first repaired item
        self._index = 0
        self._run_anchor: int | None = None  # pts before the current run of repairs
        self._run_units: Fraction = Fraction(0)
        self._last_duration: int | Fraction | None = None
        self._interval: int | None = None    # the last interval between two good timestamps
        self._run_step: Fraction | None = None

    def __call__(self, pts: int | None, duration: int | Fraction | None = None) -> int:
        index, self._index = self._index, self._index + 1
        if pts is not None and (self.last is None or pts > self.last or (not self.strict and pts == self.last)):
            if self.last is not None and self._run_anchor is None and pts > self.last:
                self._interval = pts - self.last  # between two good timestamps
            self._run_anchor = None
            self.last = pts
            self._last_duration = duration
            return pts
        if self.last is None:  # the very first has no timestamp: start the timeline at 0
            self.last = 0
            self._last_duration = duration
            self.repaired += 1
            self.first_bad = index
            return 0
        if self.refuse:
            problem = "has no timestamp" if pts is None else (
                f"repeats pts {pts}" if pts == self.last else f"goes back to pts {pts} after {self.last}")
            raise UserError(f"input has broken timestamps: {self.what} {index} {problem} "
                            "(use --timestamps repair to regenerate them)")
        if self._run_anchor is None:
            self._run_anchor, self._run_units = self.last, Fraction(0)
            self._run_step = self._choose_step()
        self._run_units += self._run_step or Fraction(self._last_duration or duration or 1)
        new = max(self.last + 1, self._run_anchor + round(self._run_units))
        self.last = new
        self._last_duration = duration
        self.repaired += 1
        if self.first_bad is None:
            self.first_bad = index
        return new


    def _choose_step(self) -> Fraction | None:
        """The nominal frame, unless the good timestamps just before disagree with it by more
        than 2× (a VFR stretch, or a container that reports its tick rate as the frame rate):
        then the last good interval."""
        if self._interval and (not self.step or not 0.5 <= self.step / self._interval <= 2):
            return Fraction(self._interval)
        return self.step


def frame_step(rate: Fraction | None, time_base: Fraction | None) -> Fraction | None:
    """One frame at `rate`, in `time_base` units (exact, a fraction)."""
    if not rate or not time_base:
        return None
    return 1 / (Fraction(rate) * Fraction(time_base))


def packet_step(stream: av.stream.Stream) -> Fraction | None:
    """One audio packet in the stream's time base, from its sample count (exact), if fixed."""
    cc = stream.codec_context
    if stream.type != "audio" or not getattr(cc, "frame_size", 0) or not getattr(cc, "sample_rate", 0):
        return None
    return Fraction(cc.frame_size, cc.sample_rate) / Fraction(stream.time_base)


class PacketTimestampCheck:
    """Finds broken video timestamps from packets in decode order, without decoding.

    A pts is broken when it is missing, repeats one seen before, or is not later than every
    pts more than REORDER_DEPTH packets back (B-frames reorder within that depth). Memory is
    the last REORDER_DEPTH timestamps, whatever the length.
    """

    def __init__(self) -> None:
        self.problem: str | None = None
        self._window: deque[int] = deque()
        self._floor: int | None = None  # highest pts more than REORDER_DEPTH packets back
        self._index = 0

    def feed(self, pts: int | None) -> None:
        index, self._index = self._index, self._index + 1
        if self.problem is not None:
            return
        if pts is None:
            self.problem = f"video packet {index} has no timestamp"
        elif pts in self._window or pts == self._floor:
            self.problem = f"video packet {index} repeats pts {pts}"
        elif self._floor is not None and pts < self._floor:
            self.problem = f"video packet {index} goes back to pts {pts} after {self._floor}"
        else:
            self._window.append(pts)
            if len(self._window) > REORDER_DEPTH:
                oldest = self._window.popleft()
                self._floor = oldest if self._floor is None else max(self._floor, oldest)


def scan_video_timestamps(path: str) -> str | None:
    """Why the video timestamps of `path` are broken, or None. For `--timestamps refuse`,
    so that such input is refused before any output exists."""
    check = PacketTimestampCheck()
    with open_media(path) as container:
        try:
            for packet in container.demux(main_video(container)):
                if packet.size:
                    check.feed(packet.pts)
                    if check.problem:
                        break
        except av.error.FFmpegError:
            pass  # a damaged file is the truncation check's to report
    return check.problem
