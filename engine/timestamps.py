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

Each stream is repaired by the same rule, but a jump back in one stream's own timestamps
(where a concatenated part starts) does not continue the other streams from where each stood:
the parts of a stream are rarely as long as the video's (an AAC track carries its priming and
its last packet's padding, 27 ms more than 2 s of video per part), and continuing each stream
on its own drifted the audio 27 ms later at every join. The video's repair logs each jump it
meets (`JumpLog`: where the input jumped from and to, and where the video's frame went) and a
copied stream jumping back at the same place of the input (both ends within `JUMP_MATCH_S`)
is placed the video's way: its first packet after the jump at the output time the video gave
the same input time, then its own step from there. Where the part before ran longer than its
video, its packets wholly inside that overlap are dropped (and counted), and the first that
reaches past it starts where the part before ends: the audio stays continuous, each part late
by less than one packet, and the next jump places the next part afresh (no drift). The count
of frames and packets repaired goes to the user in one line and to the report.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from fractions import Fraction

import av

from engine.errors import UserError
from engine.image_input import open_media
from engine.video_stream import main_video

# H.264/HEVC reorder frames by at most 16 (the largest decoded picture buffer): in decode
# order a healthy pts is later than every pts more than this many packets before it.
REORDER_DEPTH = 16
MODES = ("repair", "refuse")
JUMP_MATCH_S = 1.0  # a copied stream's jump back is the video's when both ends are this close


@dataclass(frozen=True)
class Jump:
    """Where one stream's input timestamps went back, in seconds: from `before` to `after`,
    and where the repair put the item at `after`."""

    before: Fraction
    after: Fraction
    out: Fraction


class JumpLog:
    """The video's jumps back, appended by the source's repair (decode thread) and read by the
    side-stream copier (sink thread): a list only ever appended to."""

    def __init__(self, time_base: Fraction) -> None:
        self.time_base = Fraction(time_base)
        self.jumps: list[Jump] = []

    def add(self, before: int, after: int, out: int) -> None:
        tb = self.time_base
        self.jumps.append(Jump(before * tb, after * tb, out * tb))

    def match(self, before: Fraction, after: Fraction, start: int = 0) -> int | None:
        """The index of the video's first jump from `start` on at the same place of the input as
        a copied stream's, if any (in order: the parts of `cat a.ts a.ts` jump alike)."""
        for i in range(start, len(self.jumps)):
            jump = self.jumps[i]
            if abs(jump.before - before) <= JUMP_MATCH_S and abs(jump.after - after) <= JUMP_MATCH_S:
                return i
        return None


class TimestampRepair:
    """The rule above for one stream. Call it with each timestamp in presentation order."""

    def __init__(self, step: Fraction | None, *, refuse: bool = False, what: str = "frame",
                 strict: bool = True, jump_log: JumpLog | None = None):
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
        self.jump_log = jump_log             # the video's: where it jumped back, for the copier
        self.last_input: int | None = None   # the last timestamp given (not None), as it came
        self.dropped = 0                     # items wholly inside the part before (`jump_to`): dropped
        self._overlap = False                # a part placed by `jump_to` may overlap the one before

    def jumps_back(self, pts: int | None) -> bool:
        """Whether `pts` goes back from the last input timestamp (a concatenated part starts)."""
        return pts is not None and self.last_input is not None and pts < self.last_input

    def __call__(self, pts: int | None, duration: int | Fraction | None = None,
                 jump_to: int | None = None) -> int | None:
        """The repaired timestamp. `jump_to` (at a jump back, `jumps_back`): where the video
        put the same input time; the run starts there, and returns None for an item that
        would start before the last one (to be dropped)."""
        jumped = self.jumps_back(pts)
        before = self.last_input
        if pts is not None:
            self.last_input = pts
        out = self._repair(pts, duration, jump_to)
        if jumped and self.jump_log is not None and out is not None:
            self.jump_log.add(before, pts, out)
        return out

    def _repair(self, pts: int | None, duration, jump_to: int | None) -> int | None:
        index, self._index = self._index, self._index + 1
        if jump_to is not None and self.last is not None and not self.refuse:
            self._run_anchor, self._run_units, self._overlap = jump_to, Fraction(0), True
            self._run_step = self._choose_step()
            return self._place(self._run_anchor, index, duration)
        if pts is not None and (self.last is None or pts > self.last or (not self.strict and pts == self.last)):
            if self.last is not None and self._run_anchor is None and pts > self.last:
                self._interval = pts - self.last  # between two good timestamps
            self._run_anchor, self._overlap = None, False
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
        return self._place(self._run_anchor + round(self._run_units), index, duration)

    def _place(self, new: int, index: int, duration) -> int | None:
        length = self._run_step or self._last_duration
        if self._overlap and length:
            # The part before ran longer than its video (AAC priming and padding): items wholly
            # inside it go; the first that reaches past its end starts there, and the part
            # follows on late by less than one item (the next jump places the next part afresh).
            end_before = self.last + round(length)
            if new + length <= end_before:
                self.dropped += 1
                return None
            if new < end_before:
                self._run_anchor += end_before - new
                new = end_before
            self._overlap = False
        if new <= self.last:
            new = self.last + 1
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


HOLE_S = 1.0  # a skip shorter than this in a constant-rate stream is a camera's dropped frames


class HoleWatch:
    """Finds a hole in a constant-rate video: Matroska's demuxer skips damaged data without an
    error, so 200 kB of zeros mid-file left 232 frames (9.7 s) out of the output and nothing
    said. Only a stream whose every other interval is exactly one frame counts (a variable-rate
    recording's long gaps are its content), and only a skip over `HOLE_S`."""

    def __init__(self, step: Fraction | None, time_base: Fraction):
        self.step, self.time_base = step, time_base
        self.last: int | None = None
        self.holes: list[tuple[float, float]] = []  # (at s, skipped s)
        self.irregular = False

    def feed(self, pts: int) -> None:
        if self.step is None or self.irregular:
            return
        if self.last is not None:
            interval = pts - self.last
            if abs(interval - self.step) > 1:  # one time-base unit of rounding
                skipped = float((interval - self.step) * self.time_base)
                if skipped > HOLE_S:
                    self.holes.append((float(self.last * self.time_base), skipped))
                else:
                    self.irregular = True  # variable rate, or a repaired stretch: not ours to judge
        self.last = pts

    def note(self, rate: Fraction) -> str | None:
        if self.irregular or not self.holes:
            return None
        at, skipped = self.holes[0]
        more = f" ({len(self.holes)} such skips)" if len(self.holes) > 1 else ""
        return (f"note: the video's timestamps skip {skipped:.1f} s after {at:.1f} s (about "
                f"{round(skipped * rate)} frames at {float(rate):g} fps) in an otherwise constant-rate "
                f"stream{more}: those frames are missing from the input (damaged data the demuxer "
                f"skipped, or a gap in the recording), and from the output")
