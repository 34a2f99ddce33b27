"""Sequence validation at the sink: what reaches the encoder is exactly what left the decoder."""

from __future__ import annotations

from engine.errors import ValidationError
from engine.frame import Frame


class SequenceValidator:
    """Checks, frame by frame, just before encoding:

    - seq is contiguous from `first_seq` (0, or where a segment starts),
    - pts is strictly increasing (the muxer would otherwise reorder or drop silently),
    - and, at the end, frames out == frames in.
    """

    def __init__(self, first_seq: int = 0) -> None:
        self.first_seq = first_seq
        self.count = 0
        self.last_pts: int | None = None

    def check(self, frame: Frame) -> None:
        if frame.seq != self.first_seq + self.count:
            raise ValidationError(f"frame order broken: expected seq {self.first_seq + self.count}, "
                                  f"got {frame.seq}")
        if self.last_pts is not None and frame.pts <= self.last_pts:
            raise ValidationError(
                f"timestamps not increasing at seq {frame.seq}: pts {frame.pts} after {self.last_pts}")
        self.last_pts = frame.pts
        self.count += 1

    def finish(self, frames_in: int) -> None:
        if self.count != frames_in:
            raise ValidationError(f"frame count mismatch: {frames_in} decoded, {self.count} written")
