"""Decoding one frame range of a video: what a segment's run reads.

The packet scan (engine/segments.py) knows every frame's pts and which packets are
keyframes, so frames [first, stop) can be decoded without decoding what comes before:
seek to a keyframe at or before `first`, feed a fresh decoder from that keyframe's own
packet, drop the frames before `first`. Seq stays each frame's place in the whole video.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import av

from engine.deinterlace import LOOKAHEAD, Deinterlacer
from engine.errors import UserError
from engine.frame import Frame
from engine.source import VideoSource, _reason, frame_label, open_input
from engine.video_stream import main_video


@dataclass(frozen=True)
class FrameRange:
    """Frames [first, stop) of a video whose frames are known from its packets.

    `pts` holds every frame's pts in presentation order (index = seq) and `keyframes` the
    seqs whose packet is a keyframe, ascending.
    """

    first: int
    stop: int
    pts: Sequence[int]
    keyframes: Sequence[int]


class RangeSource(VideoSource):
    """A `VideoSource` that yields only `frame_range`, numbered first, first+1, ... (the
    runner's reorder buffers and validator start at `first_seq`)."""

    def __init__(self, path: str, frame_range: FrameRange, deinterlace: str = "off",
                 frame_size: tuple[int, int] | None = None, counted: range | None = None):
        super().__init__(path, deinterlace=deinterlace, frame_size=frame_size)
        # the frames what the source did is counted for: a segment's own, not its context
        self.counted = counted if counted is not None else range(frame_range.first, frame_range.stop)
        self.size_holder.counted = self.counted
        self.frame_range = frame_range
        self.first_seq = frame_range.first
        self.frames_total = frame_range.stop - frame_range.first

    def frames(self) -> Iterator[Frame]:
        span = self.frame_range
        if self.deinterlace == "off":
            frames = self._range(span)
        else:
            # each frame's result depends on its neighbours: decode one more either side, so the
            # range's first and last frames get the pixels a single pass gives them
            wide = FrameRange(max(0, span.first - LOOKAHEAD), min(len(span.pts), span.stop + LOOKAHEAD),
                              span.pts, span.keyframes)
            self.deinterlacer = Deinterlacer(self.deinterlace, counted=self.counted)
            frames = _within(self.deinterlacer.frames(self._range(wide)), span)
        yield from self.size_holder.frames(frames)
        self._say_what_was_done()

    def _range(self, span: FrameRange) -> Iterator[Frame]:
        """Frames [span.first, span.stop) as decoded. Every frame's pts must be the one the
        packet scan expects at its seq. A decode whose first frame is not `first` (an open-GOP
        keyframe whose recovering pictures come out late, or not at all) is retried from the
        keyframe before; past the first frame, a mismatch is an error, never a silent shift."""
        starts = [k for k in span.keyframes if k <= span.first][::-1] or [0]
        for attempt, key in enumerate(starts):
            frames = self.decode_from(key, span)
            first = next(frames, None)
            if first is not None and first.pts == span.pts[span.first]:
                yield first
                yield from frames
                return
            frames.close()
            if attempt + 1 < len(starts):
                self._container.close()
                self._container = open_input(self.path)
        raise UserError(f"cannot decode {self.path} from frame {span.first}: no keyframe before it "
                        f"starts a clean decode")

    def decode_from(self, key: int, span: FrameRange | None = None) -> Iterator[Frame]:
        """`span`'s frames (default: the range's) from a fresh decoder fed from the packet of
        frame `key` on. If the first frame at or after `first`'s pts is not `first`, it alone
        comes out (pixel-less), to be rejected."""
        span = span or self.frame_range
        stream = main_video(self._container)
        stream.thread_type = "AUTO"
        tb = self.info.time_base
        if key > 0:
            self._container.seek(span.pts[key], stream=stream, backward=True, any_frame=False)
        seq = span.first
        first_pts = span.pts[span.first]
        started = key == 0
        try:
            for packet in self._container.demux(stream):
                # the seek lands on the index's keyframe at or before `key`: feed the decoder
                # from `key`'s own packet, so it starts exactly where the plan verified it
                started = started or packet.pts == span.pts[key]
                if not started:
                    continue
                for picture in packet.decode():
                    if picture.pts is None or picture.pts < first_pts:
                        continue  # before the range (or a leading picture of an open GOP)
                    if picture.pts != span.pts[seq]:
                        if seq == span.first:
                            yield Frame(seq=seq, pts=picture.pts, time_base=tb)  # caller retries
                            return
                        raise UserError(f"input decodes differently from its packets: {self.path} "
                                        f"frame {seq} has pts {picture.pts}, expected {span.pts[seq]}")
                    picture.pict_type = av.video.frame.PictureType.NONE  # let the encoder pick GOPs
                    self._observe(picture)
                    frame = Frame.from_picture(seq, picture.pts, tb, picture, self.pixel_format)
                    if picture.rotation:
                        frame.meta["rotation"] = picture.rotation
                    yield frame
                    seq += 1
                    if seq >= span.stop:
                        return
        except av.error.FFmpegError as exc:
            raise UserError(f"input is corrupt at {frame_label(self.path, seq)}: {self.path} ({_reason(exc)})") from None
        raise UserError(f"input is truncated: {self.path} gave frames up to {seq - 1}, "
                        f"expected up to {span.stop - 1}")


def _within(frames: Iterator[Frame], span: FrameRange) -> Iterator[Frame]:
    """The frames of `span` from a decode that starts and ends outside it (context frames)."""
    try:
        for frame in frames:
            if frame.seq >= span.stop:
                break
            if frame.seq >= span.first:
                yield frame
    finally:
        frames.close()
