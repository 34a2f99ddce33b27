#!/usr/bin/env python3
"""Make a small synthetic clip whose pixels encode their frame index (engine.testing.index_frame).

    python tools/make_clip.py out.mp4 --frames 48 --size 64x48 --fps 24000/1001

Tests call `make_clip` directly; the CLI is for benchmarks and by-hand checks.
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.testing import index_frame  # noqa: E402


# a P3-D65 grading display of 0.0001-1000 cd/m², MaxCLL 1000, MaxFALL 400 (x265's notation)
HDR10_PARAMS = "master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1):max-cll=1000,400"


def make_clip(path: str | Path, frames: int = 48, width: int = 64, height: int = 48,
              fps: Fraction | str = Fraction(24000, 1001), codec: str = "libx264",
              pix_fmt: str = "yuv420p", crf: int = 10, pts_ms: list[int] | None = None,
              bt709: bool = False, hdr10: bool = False, rotation: int = 0,
              image: Callable[[int], np.ndarray] | None = None,
              options: dict[str, str] | None = None) -> Path:
    """Write `frames` index frames to `path` with `codec`. Returns the path.

    pts_ms: explicit timestamps in milliseconds (variable frame rate); bt709: tag and
    convert as BT.709 limited range; hdr10: tag as BT.2020 PQ and give x265 the mastering
    display and light levels of HDR10_PARAMS (libx265 only); rotation: display-matrix rotation in degrees;
    image: seq -> RGB frame, to draw something other than index frames; options: extra
    encoder options (GOP length, B-frames, open GOP: {"g": "8", "bf": "2"}).
    """
    draw = image or (lambda seq: index_frame(seq, height, width))
    fps = Fraction(fps)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        cc = stream.codec_context
        if codec == "libx264":
            cc.options = {"crf": str(crf), "preset": "ultrafast"}
        elif codec == "libx265":
            cc.options = {"crf": str(crf), "preset": "ultrafast", "x265-params": "log-level=error"}
        if options:
            cc.options = {**cc.options, **options}
        if hdr10:
            cc.options = {**cc.options, "x265-params": f"log-level=error:{HDR10_PARAMS}"}
            cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 9, 9, 16, 1
        if pts_ms is not None:
            stream.time_base = cc.time_base = Fraction(1, 1000)
        if bt709:
            cc.colorspace = cc.color_primaries = cc.color_trc = 1  # BT.709
            cc.color_range = 1  # limited (MPEG)
        if rotation:
            stream.set_display_rotation(rotation)
        for seq in range(frames):
            picture = av.VideoFrame.from_ndarray(draw(seq), format="rgb24")
            if bt709 or hdr10:
                picture = picture.reformat(format=pix_fmt, dst_colorspace=9 if hdr10 else 1, dst_color_range=1)
            if pts_ms is not None:
                picture.pts, picture.time_base = pts_ms[seq], Fraction(1, 1000)
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
    return Path(path)


def add_side_streams(video: str | Path, path: str | Path, audio: list[tuple[str, float, float]],
                     srt: str | None = None, font: bytes | None = None) -> Path:
    """Remux `video` into `path` with extra streams: one AAC track per (language, start_s,
    duration_s) in `audio` (a 440 Hz tone starting at start_s), and a subtitle track from
    SRT text. Packets are copied, so the video is bit-identical to `video`'s."""
    import numpy as np

    path = Path(path)
    srt_path = path.with_suffix(".srt")
    with av.open(str(video)) as src, av.open(str(path), "w") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        tracks = []
        for lang, start, duration in audio:
            stream = dst.add_stream("aac", rate=48000, layout="stereo")
            stream.metadata["language"] = lang
            tracks.append((stream, start, duration))
        sub_in = None
        if srt is not None:
            srt_path.write_text(srt)
            sub_in = av.open(str(srt_path))
            sout = dst.add_stream_from_template(sub_in.streams[0])
        if font is not None:
            dst.add_attachment(name="font.ttf", mimetype="font/ttf", data=font)
        for packet in src.demux(vin):
            if packet.dts is None:
                continue
            packet.stream = vout
            dst.mux(packet)
        for stream, start, duration in tracks:
            n = int(duration * 48000)
            t = np.arange(n) / 48000
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for offset in range(0, n, 1024):
                chunk = np.ascontiguousarray(np.stack([tone[offset:offset + 1024]] * 2))
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate = 48000
                frame.pts = int(round(start * 48000)) + offset
                frame.time_base = Fraction(1, 48000)
                dst.mux(stream.encode(frame))
            dst.mux(stream.encode(None))
        if sub_in is not None:
            for packet in sub_in.demux():
                if packet.dts is None:
                    continue
                packet.stream = sout
                dst.mux(packet)
            sub_in.close()
            srt_path.unlink()
    return path


def rewrite_video_pts(src: str | Path, dst: str | Path,
                      pts: Callable[[int, int], int | None]) -> Path:
    """Remux `src` into `dst` (any container FFmpeg lets hold it) with video packet n's pts
    (and dts) set to pts(n, original); other streams are copied as they are. Makes inputs
    with broken timestamps: all zero, repeated, or missing (the muxer fills a missing one).
    Needs a stream without B-frames (make_clip's x264 ultrafast has none)."""
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        outs = {s.index: o.add_stream_from_template(s) for s in i.streams}
        n = 0
        for packet in i.demux():
            if packet.dts is None:
                continue
            if packet.stream.type == "video":
                packet.pts = packet.dts = pts(n, packet.pts)
                n += 1
            packet.stream = outs[packet.stream.index]
            o.mux(packet)
    return Path(dst)


def concat_bytes(parts: list[str | Path], dst: str | Path) -> Path:
    """Byte-for-byte concatenation (`cat a.ts b.ts > c.ts`): each part's timestamps start
    again, so the result jumps backwards at every join, in every stream."""
    Path(dst).write_bytes(b"".join(Path(p).read_bytes() for p in parts))
    return Path(dst)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--size", default="64x48", help="WIDTHxHEIGHT")
    p.add_argument("--fps", default="24000/1001")
    p.add_argument("--codec", default="libx264")
    p.add_argument("--pix-fmt", default="yuv420p")
    args = p.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    make_clip(args.output, args.frames, width, height, args.fps, args.codec, args.pix_fmt)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
