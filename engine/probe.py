"""Probing a media file: what `engine probe` prints and what the sink re-checks after closing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Callable

import av

from engine.source import open_input, read_info
from engine.timestamps import PacketTimestampCheck
from engine.video_stream import main_video


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
    sample_aspect_ratio: str | None = None   # "4/3": anamorphic pixels (None: square)
    display_size: tuple[int, int] | None = None  # how players show it, when the pixels are not square
    colour: dict = field(default_factory=dict)   # FFmpeg's names for matrix, primaries, transfer, range
    scan: str | None = None    # "progressive", "interlaced, top field first", ...; None: not said
    #: what the first decoded frames' own flags say (what --deinterlace auto follows), e.g.
    #: "interlaced, bottom field first (12 of 12 frames sampled)"; libx264 writes top first in
    #: its header whatever its frames are
    frame_scan: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# FFmpeg's names (av_color_*_name) for the values met in practice; others print as numbers
MATRICES = {0: "rgb", 1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 9: "bt2020nc",
            10: "bt2020c"}
PRIMARIES = {1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 9: "bt2020",
             11: "smpte431", 12: "smpte432"}
TRANSFERS = {1: "bt709", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m", 8: "linear",
             13: "iec61966-2-1", 14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084", 18: "arib-std-b67"}
RANGES = {1: "tv", 2: "pc"}
# AVFieldOrder, as the stream's parameters say it (0: unknown). TB/BT: fields stored in one
# order, shown in the other
SCANS = {1: "progressive", 2: "interlaced, top field first", 3: "interlaced, bottom field first",
         4: "interlaced, top field coded first, bottom shown first",
         5: "interlaced, bottom field coded first, top shown first"}


def colour_names(info) -> dict[str, str]:
    """The colour tags a stream has (unspecified ones left out)."""
    named = {}
    for key, value, names, unset in (("matrix", info.colorspace, MATRICES, (2,)),  # 0 is RGB
                                     ("primaries", info.color_primaries, PRIMARIES, (0, 2)),
                                     ("transfer", info.color_trc, TRANSFERS, (0, 2)),
                                     ("range", info.color_range, RANGES, (0,))):
        if value not in unset:
            named[key] = names.get(value, str(value))
    return named


SAMPLED_FRAMES = 12


def sampled_scan(path: str, frames: int = SAMPLED_FRAMES) -> str | None:
    """The field order the first `frames` decoded frames carry in their flags. PyAV reads
    `interlaced_frame` but not top-field-first: FFmpeg's showinfo filter prints both (i:P,
    i:T, i:B), so the frames go through it with its log captured. None: nothing decoded."""
    container = open_input(path)
    pictures = []
    try:
        for picture in container.decode(main_video(container)):
            pictures.append(picture)
            if len(pictures) >= frames:
                break
    except av.error.FFmpegError:
        pass  # a corrupt file: what decoded is the sample
    finally:
        container.close()
    if not pictures:
        return None
    if not any(p.interlaced_frame for p in pictures):
        return f"progressive ({len(pictures)} of {len(pictures)} frames sampled)"
    first = pictures[0]
    graph = av.filter.Graph()
    buffer = graph.add_buffer(width=first.width, height=first.height, format=first.format,
                              time_base=first.time_base or Fraction(1, 25))
    show = graph.add("showinfo")
    sink = graph.add("buffersink")
    buffer.link_to(show)
    show.link_to(sink)
    graph.configure()
    level = av.logging.get_level()
    av.logging.set_level(av.logging.INFO)
    try:
        with av.logging.Capture(True) as logs:
            for picture in pictures:
                if (picture.width, picture.height, picture.format.name) != (first.width, first.height,
                                                                             first.format.name):
                    break  # a graph holds one size: the frames before the change are the sample
                graph.push(picture)
                graph.pull()
    finally:
        av.logging.set_level(level)
    orders = [line[2].split(" i:", 1)[1][:1] for line in logs if " i:" in line[2]]
    top, bottom = orders.count("T"), orders.count("B")
    if not top + bottom:
        return f"progressive ({len(orders)} of {len(orders)} frames sampled)"
    order = "top field first" if top >= bottom else "bottom field first"
    return f"interlaced, {order} ({max(top, bottom)} of {len(orders)} frames sampled)"


def count_video_packets(container: av.container.InputContainer,
                        progress: Callable[[], None] | None = None) -> int:
    """Exact frame count of the first video stream: one packet per frame, no decoding.
    `progress` is called every 256 packets (a long file's re-read is not a stalled one)."""
    stream = main_video(container)
    count = 0
    for packet in container.demux(stream):
        count += packet.size > 0
        if progress is not None and count % 256 == 0:
            progress()
    return count


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
        for packet in container.demux(main_video(container)):
            if packet.size > 0:
                frames += 1
                check.feed(packet.pts)
        duration = container.duration / av.time_base if container.duration else info.duration_s
        sar = info.sample_aspect_ratio
        return ProbeResult(
            path=path, format=container.format.name, duration_s=duration, video_frames=frames,
            width=info.width, height=info.height, pix_fmt=info.pix_fmt,
            frame_rate=str(info.frame_rate) if info.frame_rate else None, streams=streams,
            timestamps_problem=check.problem, hdr=info.hdr.describe() if info.hdr else None,
            sample_aspect_ratio=str(sar) if sar else None,
            display_size=(round(info.width * sar), info.height) if sar else None,
            colour=colour_names(info), scan=SCANS.get(int(main_video(container).codec_context.field_order)),
            frame_scan=sampled_scan(path))
    finally:
        container.close()
