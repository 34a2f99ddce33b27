"""Probing a media file: what `engine probe` prints and what the sink re-checks after closing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import av

from engine.source import open_input, read_info
from engine.timestamps import PacketTimestampCheck


@dataclass(frozen=True)
class StreamInfo:
    index: int
    type: str
    codec: str
    detail: str


@dataclass(frozen=True)
class ProbeResult:
    path: str
    format: str
    duration_s: float | None
    video_frames: int          # counted from packets, not trusted from the header
    width: int
    height: int
    pix_fmt: str
    frame_rate: str | None
    streams: list[StreamInfo] = field(default_factory=list)
    timestamps_problem: str | None = None  # broken video timestamps (engine/timestamps.py), if any
    hdr: dict | None = None    # HDR10 static metadata of the first frame (engine/hdr.py)

    def as_dict(self) -> dict:
        return asdict(self)


def count_video_packets(container: av.container.InputContainer) -> int:
    """Exact frame count of the first video stream: one packet per frame, no decoding."""
    stream = container.streams.video[0]
    return sum(1 for p in container.demux(stream) if p.size > 0)


def probe(path: str) -> ProbeResult:
    container = open_input(path)
    try:
        info = read_info(container)
        streams = []
        for s in container.streams:
            cc = s.codec_context
            if s.type == "video":
                detail = f"{cc.width}x{cc.height} {cc.format.name if cc.format else '?'}"
            elif s.type == "audio":
                detail = f"{cc.sample_rate} Hz {cc.layout.name if cc.layout else ''}".strip()
            else:
                detail = s.metadata.get("language", "")
            streams.append(StreamInfo(s.index, s.type, cc.name if cc else "?", detail))
        check = PacketTimestampCheck()
        frames = 0
        for packet in container.demux(container.streams.video[0]):
            if packet.size > 0:
                frames += 1
                check.feed(packet.pts)
        duration = container.duration / av.time_base if container.duration else info.duration_s
        return ProbeResult(
            path=path, format=container.format.name, duration_s=duration, video_frames=frames,
            width=info.width, height=info.height, pix_fmt=info.pix_fmt,
            frame_rate=str(info.frame_rate) if info.frame_rate else None, streams=streams,
            timestamps_problem=check.problem, hdr=info.hdr.describe() if info.hdr else None)
    finally:
        container.close()
