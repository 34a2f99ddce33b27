"""Bench inputs: the shared real clips, or synthetic clips made on the fly and cached."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# made inputs and random-weight models (up to ~3 GB): outside the checkout, as the tests' cache
CACHE = Path(os.environ.get("ENGINE_BENCH_CACHE", Path.home() / ".cache" / "engine-bench"))
MEDIA = ROOT / "tests" / "media"


def synthetic(width: int, height: int, frames: int, fps: str = "24000/1001") -> Path:
    """An H.264 clip of index frames (see tools/make_clip.py), cached by its parameters."""
    sys.path.insert(0, str(ROOT / "tools"))
    from make_clip import make_clip

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"synthetic-{width}x{height}-{frames}.mp4"
    if not path.exists():
        partial = path.with_suffix(".partial.mp4")
        make_clip(partial, frames, width, height, fps=fps, crf=18)
        partial.replace(path)
    return path


def real_720p(loops: int = 1) -> Path:
    """The shared 1080p anime clip scaled to 1280×720 (real content, real encoder load),
    played `loops` times back to back with continuous timestamps. 456 frames per loop."""
    import av

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"anime-720p-x{loops}.mp4"
    if path.exists():
        return path
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), "w") as dst:
        out = None
        n = 0
        for _ in range(loops):  # decode again per loop: never hold the clip in memory
            with av.open(str(MEDIA / "anime-1080p.mp4")) as src:
                rate = src.streams.video[0].average_rate
                if out is None:
                    out = dst.add_stream("libx264", rate=rate)
                    out.width, out.height, out.pix_fmt = 1280, 720, "yuv420p"
                    out.codec_context.options = {"crf": "18", "preset": "fast"}
                for frame in src.decode(video=0):
                    picture = frame.reformat(width=1280, height=720, format="yuv420p")
                    picture.pts, picture.time_base = n, 1 / rate
                    dst.mux(out.encode(picture))
                    n += 1
        dst.mux(out.encode(None))
    partial.replace(path)
    return path


NAMED_SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "480p": (854, 480), "4k": (3840, 2160)}
SYNTHETIC = re.compile(r"(?:(?P<w>\d+)x(?P<h>\d+)|(?P<name>\w+)):(?P<frames>-?\d+)")
REAL_720P = re.compile(r"anime-720p(?:-x(?P<loops>\d+))?")


def resolve(spec: str) -> Path:
    """A path or a tests/media clip name → as is (an existing file always wins); 'anime-720p'
    or 'anime-720p-x10' → the real clip at 720p (looped); '720p:300' / '1280x720:300' →
    synthetic. Anything else is a one-line error."""
    path = Path(spec)
    if path.is_file():
        return path.resolve()  # the timed child runs in the repository root
    if (MEDIA / spec).is_file():
        return MEDIA / spec
    if real := REAL_720P.fullmatch(spec):
        loops = int(real["loops"] or 1)
        if loops < 1:
            raise SystemExit(f"bench: {spec}: the clip needs at least one loop (anime-720p-x1)")
        return real_720p(loops)
    if synthetic_spec := SYNTHETIC.fullmatch(spec):
        name, frames = synthetic_spec["name"], int(synthetic_spec["frames"])
        if name is not None and name.lower() not in NAMED_SIZES:
            raise SystemExit(f"bench: {spec}: unknown size {name!r}; use WIDTHxHEIGHT or one of "
                             f"{', '.join(NAMED_SIZES)}")
        w, h = NAMED_SIZES[name.lower()] if name else (int(synthetic_spec["w"]), int(synthetic_spec["h"]))
        if not (16 <= w <= 8192 and 16 <= h <= 8192) or w % 2 or h % 2:
            raise SystemExit(f"bench: {spec}: a synthetic clip needs an even width and height from 16 to 8192")
        if frames < 1:
            raise SystemExit(f"bench: {spec}: a synthetic clip needs at least one frame")
        return synthetic(w, h, frames)
    raise SystemExit(f"bench: input not found: {spec} (a file, a tests/media clip name, anime-720p[-xN], "
                     f"or WIDTHxHEIGHT:FRAMES)")
