"""One frame size for the whole stream, held at the source.

A video stream holds one size, yet some inputs change size part-way: a broadcast capture
across an SD/HD switch, an image sequence of mixed files. Frames of another size than the
stream's (the first decoded frame's) are scaled to it as they are decoded, in their own
pixel format (Lanczos), before any stage:

- temporal stages (temporal-denoise, BasicVSR++, dedup's comparisons) need one size in a
  window: a size change used to fail the job in the middle;
- a `--resume`/`--ray` segment is given the whole job's size by its driver (its own first
  frame may be of the other size), so every segment's output has the size of the others
  and they join (the join refused them before).

Deinterlacing (engine/deinterlace.py) runs before this, on the frames at their own size:
scaling woven fields would mix them.
"""

from __future__ import annotations

from typing import Iterator

import av

from engine.frame import Frame


class SizeHolder:
    """Passes frames on, each of another size than `size` (default: the first frame's)
    scaled to it. `describe()` says what it did; `merge` adds up several (segments)."""

    def __init__(self, size: tuple[int, int] | None = None, counted: range | None = None):
        self.size = size        # (width, height)
        self.counted = counted  # seqs the counts cover (a segment: not its context frames); None: all
        self.scaled = 0
        self.first_scaled: int | None = None   # seq of the first frame scaled
        self.other_sizes: set[tuple[int, int]] = set()

    def frames(self, frames: Iterator[Frame]) -> Iterator[Frame]:
        try:
            for frame in frames:
                picture = frame.picture
                shape = (picture.width, picture.height)
                if self.size is None:
                    self.size = shape
                if shape != self.size:
                    frame = self._scaled(frame, picture)
                yield frame
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()  # a decode cut short (--frames, a segment's end) releases its packets

    def _scaled(self, frame: Frame, picture) -> Frame:
        width, height = self.size
        if self.counted is None or frame.seq in self.counted:
            self.scaled += 1
            if self.first_scaled is None:
                self.first_scaled = frame.seq
            self.other_sizes.add((picture.width, picture.height))
        try:  # same pixel format, matrix and range: only the size changes (reformat keeps the tags and pts)
            picture = picture.reformat(width=width, height=height, interpolation="LANCZOS")
        except (av.error.FFmpegError, ValueError):  # a format swscale cannot write (pal8 PNG, bayer)
            picture = picture.reformat(width=width, height=height, interpolation="LANCZOS",
                                       format="rgb48le" if frame.deep else "rgb24")
        out = Frame.from_picture(frame.seq, frame.pts, frame.time_base, picture,
                                 "rgb48le" if frame.deep else "rgb24")
        out.meta.update(frame.meta)
        return out

    def describe(self) -> dict:
        """The report's `frame_size`."""
        return {"size": list(self.size) if self.size else None, "scaled": self.scaled,
                "first_scaled": self.first_scaled,
                "other_sizes": [f"{w}x{h}" for w, h in sorted(self.other_sizes)]}

    @staticmethod
    def merge(parts: list[dict]) -> dict:
        """One `describe()` of several, from segments of one job (all of one `size`)."""
        firsts = [p["first_scaled"] for p in parts if p.get("first_scaled") is not None]
        sizes = next((p["size"] for p in parts if p.get("size")), None)
        return {"size": sizes, "scaled": sum(p.get("scaled", 0) for p in parts),
                "first_scaled": min(firsts) if firsts else None,
                "other_sizes": sorted({s for p in parts for s in p.get("other_sizes", [])})}


def size_note(described: dict) -> str | None:
    """What the user hears of a `describe()` (None when every frame had the stream's size)."""
    if not described.get("scaled"):
        return None
    width, height = described["size"]
    return (f"note: {described['scaled']} frame(s) from seq {described['first_scaled']} on had another size "
            f"({', '.join(described['other_sizes'])}) than the first frame's {width}x{height}: each was "
            f"scaled to it as it was decoded (a video stream holds one size)")
