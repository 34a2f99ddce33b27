"""Deinterlacing at the source (`--deinterlace`): FFmpeg's bwdif on each decoded picture,
one frame out per frame in, before any stage sees it.

At the source because fields are rows of the YUV picture and 4:2:0 chroma is subsampled
per field: once converted to RGB (what stages read) the two fields' chroma are mixed, and
combing is what an upscaler then sharpens. bwdif (w3fdif's filter with yadif's edge
checks) is FFmpeg's best CPU deinterlacer that needs no weights file.

Frame t's result depends on the decoded frames t−1, t and t+1 (bwdif's temporal taps),
and the first and last frame take its edge rules. A segment (`RangeSource`) decodes one
frame either side of its range, so its frames get the pixels a single pass gives them;
`--frames N` deinterlaces the first N frames as if the file ended there (as `--resume`,
whose packet table stops at N, does too).

Timestamps are the input's: the filter's own (it doubles the time base, for field-rate
output) are replaced by those of the frame each result belongs to.
"""

from __future__ import annotations

from collections import deque
from typing import Iterator

import av

from engine.errors import UserError
from engine.frame import Frame

MODES = ("off", "auto", "all")   # auto: the frames flagged interlaced; all: every frame
FILTER = "bwdif"
LOOKAHEAD = 1   # decoded frames each side that a frame's result depends on


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UserError(f"invalid --deinterlace '{mode}'; choose one of: {', '.join(MODES)}")
    return mode


class Deinterlacer:
    """Deinterlaces a stream of decoded `Frame`s in order; `frames()` yields them back, same
    seqs, pts and meta, each holding its deinterlaced picture."""

    def __init__(self, mode: str, counted: range | None = None):
        if check_mode(mode) == "off":
            raise ValueError("a Deinterlacer needs a mode other than 'off'")
        self.mode = mode
        self.counted = counted  # seqs the counts cover (a segment: not its context frames); None: all
        self.frames_in = 0
        self.flagged = 0   # input pictures flagged interlaced (what `auto` deinterlaces)
        self._graph: av.filter.Graph | None = None
        self._shape: tuple | None = None  # (width, height, format) the graph was configured for

    def frames(self, frames: Iterator[Frame]) -> Iterator[Frame]:
        waiting: deque[Frame] = deque()  # pushed, result not out yet (bwdif holds one)
        try:
            for frame in frames:
                picture = frame.picture
                if self.counted is None or frame.seq in self.counted:
                    self.frames_in += 1
                    self.flagged += bool(picture.interlaced_frame)
                shape = (picture.width, picture.height, picture.format.name)
                if self._graph is not None and shape != self._shape:
                    # the input changed size or format: the graph is configured for one, so the
                    # frames before take the end-of-stream edge rule and a new graph starts
                    yield from self._results(None, waiting)
                    self._graph = None
                waiting.append(frame)
                yield from self._results(picture, waiting)
            if self._graph is not None:
                yield from self._results(None, waiting)  # end of stream: the last frame's edge rule
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()  # a decode cut short (--frames, a segment's end) releases its packets
        if waiting:
            raise RuntimeError(f"{FILTER} did not return {len(waiting)} frame(s), from seq {waiting[0].seq}")

    def _results(self, picture: av.VideoFrame | None, waiting: deque[Frame]) -> Iterator[Frame]:
        graph = self._graph or self._open(picture)
        graph.push(picture)
        while True:
            try:
                result = graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return
            source = waiting.popleft()
            result.pts, result.time_base = source.pts, source.time_base
            out = Frame.from_picture(source.seq, source.pts, source.time_base, result,
                                     "rgb48le" if source.deep else "rgb24")
            out.meta.update(source.meta)
            yield out

    def _open(self, picture: av.VideoFrame) -> av.filter.Graph:
        graph = av.filter.Graph()
        buffer = graph.add_buffer(width=picture.width, height=picture.height, format=picture.format,
                                  time_base=picture.time_base)
        deint = "interlaced" if self.mode == "auto" else "all"
        bwdif = graph.add(FILTER, f"mode=send_frame:parity=auto:deint={deint}")
        sink = graph.add("buffersink")
        buffer.link_to(bwdif)
        bwdif.link_to(sink)
        graph.configure()
        self._graph, self._shape = graph, (picture.width, picture.height, picture.format.name)
        return graph

    @property
    def deinterlaced(self) -> int:
        return self.flagged if self.mode == "auto" else self.frames_in

    def describe(self) -> dict:
        """The report's `deinterlace`."""
        return {"mode": self.mode, "filter": FILTER, "frames": self.frames_in,
                "flagged_interlaced": self.flagged, "deinterlaced": self.deinterlaced}

    @staticmethod
    def merge(parts: list[dict], mode: str) -> dict:
        """One `describe()` of several, from the segments of one job (`mode`'s)."""
        frames, flagged = (sum(p.get(k, 0) for p in parts) for k in ("frames", "flagged_interlaced"))
        return {"mode": mode, "filter": FILTER, "frames": frames, "flagged_interlaced": flagged,
                "deinterlaced": flagged if mode == "auto" else frames}

    def note(self) -> str:
        return deinterlace_note(self.describe())


def deinterlace_note(described: dict) -> str:
    """What was done (a `Deinterlacer.describe()`, or the sum of a job's segments'), for the user."""
    if described["mode"] == "auto" and not described["flagged_interlaced"]:
        return ("note: --deinterlace auto: no frame is flagged interlaced, so none was deinterlaced "
                "(--deinterlace all treats every frame as interlaced)")
    return (f"note: deinterlaced {described['deinterlaced']} of {described['frames']} frames "
            f"({FILTER}, one frame per frame)")
