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

import av

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.testing import index_frame  # noqa: E402


def make_clip(path: str | Path, frames: int = 48, width: int = 64, height: int = 48,
              fps: Fraction | str = Fraction(24000, 1001), codec: str = "libx264",
              pix_fmt: str = "yuv420p", crf: int = 10) -> Path:
    """Write `frames` index frames to `path` with `codec`. Returns the path."""
    fps = Fraction(fps)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec in ("libx264", "libx265"):
            stream.codec_context.options = {"crf": str(crf), "preset": "ultrafast"}
        for seq in range(frames):
            picture = av.VideoFrame.from_ndarray(index_frame(seq, height, width), format="rgb24")
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
    return Path(path)


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
