"""The segment plan: where a video can be cut, found from its packets, never its pixels.

1. `scan_packets` demuxes the video stream without decoding: every packet's pts (sorted
   into presentation order, so a frame's seq is its rank) and keyframe flag. About 3k fps at
   1080p and 19k at 360p, against 73 and 1.0k for a full decode (see DESIGN.md).
2. `plan_segments` cuts at the first keyframe at least `length` frames after the last cut.
3. Each cut is verified: a fresh decoder fed from the cut's packet must give exactly the
   expected pts for its first `VERIFY_FRAMES` frames. FFmpeg's decoders output nothing
   before a picture they can decode fully, so a keyframe that cannot start a decode (an
   H.264 recovery point not yet recovered, a flag on the wrong picture) shows as a late or
   missing first frame. A cut that fails merges its segment with the one after: the cut
   moves on to the next keyframe that verifies. Leading pictures (pts before the cut,
   decoded after it: open GOP, HEVC RASL) are dropped by a decode that starts at the cut;
   they belong to the segment before, whose decode runs on through the cut's packet until it
   has them. Past these frames, each segment's own decode checks every frame's pts against
   the scan (engine/range_source.py), and its encoder's frame count is checked too.

A `Segment` is only a description (frame range and the pts of its first frame): any runner
on any machine that can read the input can produce it. Temporal context is not part of the
plan: it depends on the pipeline (`engine/segment_job.py`).
"""

from __future__ import annotations

import bisect
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction

from engine.errors import UserError
from engine.range_source import FrameRange, RangeSource
from engine.source import open_input
from engine.video_stream import main_video

# frames checked after a cut: more than any decoder's reorder delay, and a small cost per cut
# (a whole GOP each would add a sixth of a decode at 60 s segments and 10 s GOPs)
VERIFY_FRAMES = 32
VERIFY_THREADS = min(8, os.cpu_count() or 1)  # cut checks side by side


@dataclass(frozen=True)
class FrameTable:
    """Every frame of the video, from its packets: pts in presentation order, keyframe seqs."""

    pts: list[int]
    keyframes: list[int]
    time_base: Fraction

    def __len__(self) -> int:
        return len(self.pts)

    def frame_range(self, first: int, stop: int) -> FrameRange:
        return FrameRange(first, stop, self.pts, self.keyframes)

    def keyframe_at_or_after(self, seq: int) -> int | None:
        i = bisect.bisect_left(self.keyframes, seq)
        return self.keyframes[i] if i < len(self.keyframes) else None


def scan_packets(path: str, max_frames: int | None = None) -> FrameTable:
    """Read the video stream's packets (no decoding) into a `FrameTable`."""
    container = open_input(path)
    try:
        stream = main_video(container)
        pts: list[int] = []
        keys: list[int] = []
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:
                continue  # a flush packet, or a frame an MP4/MOV edit list hides (never decoded out)
            if packet.pts is None:
                raise UserError(f"cannot cut {path} into segments: its video packets have no "
                                f"timestamps (remux it, or run without --resume)")
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
        time_base = Fraction(stream.time_base)
    finally:
        container.close()
    if not pts:
        raise UserError(f"input has no video frames: {path}")
    order = sorted(pts)
    if any(a == b for a, b in zip(order, order[1:])):
        raise UserError(f"cannot cut {path} into segments: two video packets share a timestamp")
    seq_of = {p: i for i, p in enumerate(order)}
    keyframes = sorted(seq_of[p] for p in keys)
    if max_frames is not None:
        order = order[:max_frames]
        keyframes = [k for k in keyframes if k < max_frames]
    if not keyframes or keyframes[0] != 0:
        keyframes = [0, *[k for k in keyframes if k != 0]]  # decoding always starts at the start
    return FrameTable(order, keyframes, time_base)


@dataclass(frozen=True)
class Segment:
    """Frames [start, end) of the video; `start_pts` is the first one's timestamp."""

    index: int
    start: int
    end: int
    start_pts: int

    @property
    def frames(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SegmentPlan:
    segments: list[Segment]
    frames: int
    length_frames: int                                  # the target length asked for
    merged: list[str] = field(default_factory=list)     # cuts rejected, and why

    def as_dict(self) -> dict:
        return {"frames": self.frames, "length_frames": self.length_frames,
                "segments": [[s.start, s.end, s.start_pts] for s in self.segments]}


def length_in_frames(length: str, frame_rate: Fraction | None) -> int:
    """'90' or '90s' → seconds × the input's rate; '500f' → frames."""
    text = length.strip().lower()
    try:
        if text.endswith("f"):
            frames = int(text[:-1])
        else:
            seconds = float(text[:-1] if text.endswith("s") else text)
            if not frame_rate:
                raise UserError("--segment in seconds needs a known frame rate; give frames, e.g. 500f")
            frames = round(seconds * float(frame_rate))
    except (ValueError, OverflowError):  # OverflowError: 1e400, infs
        raise UserError(f"invalid --segment '{length}'; give seconds (90) or frames (500f)") from None
    if frames < 1:
        raise UserError(f"--segment '{length}' is shorter than one frame")
    return frames


def plan_segments(path: str, table: FrameTable, length_frames: int, *, verify: bool = True,
                  workers: int | None = None) -> SegmentPlan:
    """Cut at keyframes `length_frames` or more apart; a cut that does not verify moves to the
    next keyframe.

    The cuts that follow if every one verifies come from the table alone, so they are checked
    side by side (`workers` threads; PyAV decodes without the GIL): a serial part of a job
    spread over many GPUs. A cut that fails sends the walk off that chain, checked one by one.
    """
    chain: list[int] = []
    cut = table.keyframe_at_or_after(length_frames)
    while cut is not None:
        chain.append(cut)
        cut = table.keyframe_at_or_after(cut + length_frames)
    checked: dict[int, str | None] = {}
    if verify and chain:
        threads = max(1, min(workers or VERIFY_THREADS, len(chain)))
        with ThreadPoolExecutor(threads, thread_name_prefix="engine-verify-cut") as pool:
            checked = dict(zip(chain, pool.map(lambda c: verify_cut(path, table, c), chain)))
    cuts: list[int] = []
    merged: list[str] = []
    cut = table.keyframe_at_or_after(length_frames)
    while cut is not None:
        why = (checked[cut] if cut in checked else verify_cut(path, table, cut)) if verify else None
        if why is None:
            cuts.append(cut)
            cut = table.keyframe_at_or_after(cut + length_frames)
        else:  # the segment runs on to the next keyframe that verifies
            merged.append(f"frame {cut}: {why}")
            cut = table.keyframe_at_or_after(cut + 1)
    bounds = [0, *cuts, len(table)]
    segments = [Segment(i, a, b, table.pts[a]) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    return SegmentPlan(segments, len(table), length_frames, merged)


def verify_cut(path: str, table: FrameTable, cut: int) -> str | None:
    """None if a fresh decoder started at keyframe `cut` gives the expected frames; else why not."""
    stop = min(len(table), cut + VERIFY_FRAMES)
    source = RangeSource(path, FrameRange(cut, stop, table.pts, [cut]))
    try:
        frames = source.decode_from(cut)
        first = next(frames, None)
        if first is None or first.pts != table.pts[cut]:
            got = "nothing" if first is None else f"pts {first.pts}"
            return f"a decode started there gives {got} first, not pts {table.pts[cut]} (open GOP?)"
        count = 1 + sum(1 for _ in frames)
        if count != stop - cut:
            return f"a decode started there gives {count} of the first {stop - cut} frames"
    except UserError as exc:
        return str(exc)
    finally:
        source.close()
    return None

