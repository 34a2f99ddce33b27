"""FFmpeg's colour tags as the engine reads them, and how swscale is asked to convert:
torch-free (the sink and a `--pipeline none` job never load torch; engine/colour.py, which
converts pixels on the model stages' device, does)."""

from __future__ import annotations

import av
from av.video.reformatter import Interpolation

from engine.planes import plane_rows

# swscale's YUV -> RGB (a stage's `frame.data`, PNG frames) by default rounds down and takes
# the nearest chroma: on the 1080p clip 1.0 level dark on average and up to 16 off at colour
# edges, and a 4:2:0 picture through RGB and back came out 1.1 levels darker (3 % of luma exact).
# Accurate rounding with full chroma interpolation is within 1 level of the exact conversion
# (engine/colour.py) everywhere and the round trip's luma is exact, for 10 ms more a 1080p frame
# (1.0 -> 10.5 ms). The way back only needs accurate rounding (no slower than the default).
TO_RGB = Interpolation.BILINEAR | Interpolation.FULL_CHR_H_INT | Interpolation.ACCURATE_RND
FROM_RGB = Interpolation.BILINEAR | Interpolation.ACCURATE_RND


def rgb_array(picture, pixel_format: str):
    """A picture as host RGB in `pixel_format` (rgb24, or rgb48le for deep input), in its own range.

    swscale (FFmpeg 8, as PyAV 18 ships it) writes packed 16-bit RGB (rgb48le, rgba64le, ...)
    from 4:2:0 wrongly under FULL_CHR_H_INT: yuv420p10le green (20, 200, 40) came out (0, 4, 96),
    14.7 dB on real footage. Its planar gbrp16le is right (within 1.5 levels of rgb24, and the
    same array shape: PyAV stacks the planes in RGB order), so deep pictures go through it."""
    if pixel_format == "rgb48le":
        return picture.to_ndarray(format="gbrp16le", interpolation=TO_RGB, src_color_range=picture.color_range)
    return picture.to_ndarray(format=pixel_format, interpolation=TO_RGB, src_color_range=picture.color_range)

UNSPECIFIED = 2                 # AVCOL_SPC / AVCOL_PRI / AVCOL_TRC _UNSPECIFIED
RGB_MATRIX, BT709_MATRIX = 0, 1  # AVColorSpace
LIMITED_RANGE, FULL_RANGE = 1, 2  # AVColorRange: 0 unspecified, 1 MPEG (limited), 2 JPEG (full)


def limited_grey_as_yuv(picture):
    """A grey picture tagged limited range as YUV 4:4:4 of its depth with neutral chroma, the
    same samples; any other picture as it is. swscale takes every grey picture as full range
    whatever its tag, so limited grey came out squeezed (16 -> 30, 235 -> 218)."""
    fmt = picture.format
    if not fmt.name.startswith("gray") or int(picture.color_range) != LIMITED_RANGE:
        return picture
    bits = fmt.components[0].bits
    out = av.VideoFrame(picture.width, picture.height,
                        "yuv444p" if bits <= 8 else f"yuv444p{bits}le")
    dtype = "<u1" if bits <= 8 else "<u2"
    for i, plane in enumerate(out.planes):
        view = plane_rows(plane, dtype)[:plane.height, :plane.width]
        if i == 0:
            src = picture.planes[0]
            view[...] = plane_rows(src, dtype)[:src.height, :src.width]
        else:
            view[...] = 1 << (bits - 1)  # no colour
    out.color_range, out.colorspace = LIMITED_RANGE, picture.colorspace
    return out


def is_full_range(color_range: int, pix_fmt: str = "") -> bool:
    """Full ("JPEG") range: tagged so, or a `yuvj` format, which is full whatever the tag says."""
    return int(color_range) == FULL_RANGE or pix_fmt.startswith("yuvj")
