"""Is the input all there? A truncated file found before the job starts, not after.

MP4 declares its frame count, so a truncated MP4 shows as fewer frames than declared (the
source checks that at the end). Matroska, WebM and others declare no count, and a copy cut
short (an interrupted download or transfer) keeps the header's duration but loses data, so
decoding just stops early. The check here compares the duration the file declares with
where its data really ends: it seeks to just before the declared end and reads the packets
of every stream from there (with Cues this is one seek; a file without an index is read to
its end, which only an unfinalised or damaged file lacks). Video that ends before its audio
is not truncation: the data end is taken over all streams.

A file need not start at 0 (video after its audio, every stream at 5 s). MP4's duration, as
FFmpeg reads it, runs from the start. Matroska's segment Duration and FFmpeg's per-track
DURATION tags are where the data ends (timestamps count from the segment's 0); mkvmerge's
DURATION statistics tag is a span from the track's first timestamp. A duration shorter than
the start can only be a span.
"""

from __future__ import annotations

import av

from engine.source import VideoInfo
from engine.image_input import open_media
from engine.video_stream import main_video


def _tag_seconds(value: str) -> float | None:
    """Matroska's per-track DURATION tag, "HH:MM:SS.nnnnnnnnn"."""
    try:
        h, m, s = value.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    except (ValueError, AttributeError):
        return None


def _span(declared: float, start: float, is_end: bool) -> float:
    """A declared duration as seconds from `start`: an end time less the start, unless it
    cannot be one (it ends before the start)."""
    return declared - start if is_end and declared >= start else declared


def declared_video_seconds(stream: av.video.stream.VideoStream) -> float | None:
    """How long the video track says it is, from its first frame, if it says (Matroska
    DURATION tag, or the stream's own)."""
    tagged = _tag_seconds(stream.metadata.get("DURATION", ""))
    if tagged:
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        by_mkvmerge = any(k.startswith("_STATISTICS") for k in stream.metadata)  # its tags are spans
        return _span(tagged, start, not by_mkvmerge)
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


def tolerance_s(info: VideoInfo) -> float:
    """Two frames (the declared end may include the last frame's display time) plus muxing slack."""
    frame = 1 / float(info.frame_rate) if info.frame_rate else 0.1
    return 2 * frame + 0.05


def find_truncation(path: str, info: VideoInfo) -> str | None:
    """Why the file ends before its declared duration, or None when its data reaches the end."""
    with open_media(path) as container:
        if not container.duration:
            return None  # nothing declared (raw streams, live captures): nothing to hold it to
        if container.format.name.endswith("_pipe") or container.format.name == "image2":
            return None  # a still image: its "duration" is one frame's, and a decode reads it whole
        start = (container.start_time or 0) / av.time_base
        declared = container.duration / av.time_base
        declared_end = start + _span(declared, start, "matroska" in container.format.name)
        # a little before the end: the seek lands on a keyframe at or before the target
        target = max(0.0, declared_end - max(10 * tolerance_s(info), 2.0))
        try:
            container.seek(int(target * av.time_base), backward=True)
        except av.error.FFmpegError:
            return None  # not seekable (a pipe-like stream): the source's own end check remains
        data_end: float | None = None
        try:
            for packet in container.demux():
                if packet.pts is None or packet.size == 0:
                    continue
                end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                data_end = end if data_end is None else max(data_end, end)
        except av.error.FFmpegError:
            pass  # a read error at the end of the data is itself a sign of truncation
    if data_end is None:
        return (f"its data ends before the last {declared_end - target:.1f} s "
                f"of the {declared_end - start:.3f} s it declares")
    if declared_end - data_end > tolerance_s(info):
        return (f"it declares {declared_end - start:.3f} s but its data ends at {data_end - start:.3f} s")
    return None


def readable_frames(path: str, limit: int | None = None) -> int:
    """How many video frames decode before the data ends or breaks (counting stops at `limit`).
    A whole decode: only for an input already found truncated, whose index (a front MP4 moov)
    lists frames it lacks."""
    count = 0
    with open_media(path) as container:
        stream = main_video(container)
        stream.thread_type = "AUTO"
        try:
            for packet in container.demux(stream):
                count += len(packet.decode())
                if limit is not None and count >= limit:
                    return limit
        except av.error.FFmpegError:
            pass  # where the data breaks; what decoded before it is what can be read
    return count
