"""`resize`: scale frames (map stage): a decoded YUV picture with swscale in its own format,
anything else as host RGB with OpenCV."""

from __future__ import annotations

from typing import Any, Literal

import cv2
from av.video.reformatter import Interpolation, VideoReformatter

from engine.frame import Frame
from engine.registry import register_stage
from engine.stage import MAX_SIDE, MapStage, check_frame_size

_INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR,
                  "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}

# The swscale filter of each option's family, and where it is close to OpenCV's. Measured on
# tests/media/anime-320x240.mp4 (luma PSNR against the RGB path's: tests/test_resize.py):
# - area: swscale's AREA is the same pixel-area average when shrinking (44.6 dB at least), but
#   it enlarges bilinearly, where OpenCV's INTER_AREA enlarges by box overlap (pixel repetition
#   at 2x): 27-32 dB, so an enlarging area resize keeps the RGB path.
# - linear, cubic, lanczos: close when enlarging (BILINEAR 43.8, BICUBIC 40.2, LANCZOS 39.1 dB
#   at least; swscale's lanczos has 3 lobes, OpenCV's 4). When shrinking, swscale widens the
#   kernel by the factor (anti-aliased) and OpenCV keeps it fixed (aliased): 20-36 dB, another
#   picture, so a shrinking linear/cubic/lanczos resize keeps the RGB path. (FAST_BILINEAR, 2
#   taps like OpenCV's, is not centred the same way: 17-30 dB.)
# An axis left at its size is the identity in both. Accurate rounding costs no measurable time.
_SWSCALE = {"area": (Interpolation.AREA, "shrink"), "linear": (Interpolation.BILINEAR, "enlarge"),
            "cubic": (Interpolation.BICUBIC, "enlarge"), "lanczos": (Interpolation.LANCZOS, "enlarge")}


def _subsampling(fmt: Any) -> tuple[int, int] | None:
    """(x, y) chroma subsampling of a planar YUV format with one plane per component (8 to 16
    bits, limited or full range, yuvj too), or None: grey, RGB, palette, alpha, semi-planar
    (nv12, p010) and packed formats take the RGB path."""
    components = fmt.components
    if (not fmt.is_planar or fmt.is_rgb or len(components) != 3
            or [c.plane for c in components] != [0, 1, 2] or any(c.is_alpha for c in components)):
        return None
    return 4 // fmt.chroma_width(4), 4 // fmt.chroma_height(4)


@register_stage("resize")
class Resize(MapStage):
    """Scale to width×height; give one side (or scale=) to keep the aspect ratio."""

    def __init__(self, width: int = 0, height: int = 0, scale: float = 0.0,
                 interpolation: Literal["area", "linear", "cubic", "lanczos"] = "area"):
        super().__init__()
        if width < 0 or height < 0 or scale < 0:
            raise ValueError("width, height and scale must not be negative")
        if not (width or height or scale):
            raise ValueError("give width, height or scale")
        if scale and (width or height):  # one of them would be ignored without a word
            raise ValueError("give scale or width/height, not both")
        if max(width, height) > MAX_SIDE:
            raise ValueError(f"width and height must be at most {MAX_SIDE}, got {width}x{height}")
        self.width, self.height, self.scale = width, height, scale
        self.interpolation = _INTERPOLATION[interpolation]
        self._swscale, self._direction = _SWSCALE[interpolation]
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}  # input size -> output size
        self._reformatter: VideoReformatter | None = None  # one per worker: its context is reused

    def _target(self, w: int, h: int) -> tuple[int, int]:
        size = self._size(w, h)
        check_frame_size("resize", *size)  # after a model whose scale was unknown before the run
        return size

    def _size(self, w: int, h: int) -> tuple[int, int]:
        if self.scale:
            return max(1, round(w * self.scale)), max(1, round(h * self.scale))
        if self.width and self.height:
            return self.width, self.height
        if self.width:
            return self.width, max(1, round(h * self.width / w))
        return max(1, round(w * self.height / h)), self.height

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        return self._target(width, height)

    def process(self, frame: Frame) -> Frame:
        # from the frame itself: the context's size is the source's, and a stage before this
        # one (an upscale, another resize) may have changed it
        h, w = frame.shape[:2]
        size = self._sizes.get((w, h))
        if size is None:
            size = self._sizes[(w, h)] = self._target(w, h)
        if size == (w, h):
            return frame
        picture = frame.picture
        if picture is not None and self._scales_in_yuv(picture, size):
            frame.set_picture(self._scaled(picture, size))
        else:
            frame.data = cv2.resize(frame.data, size, interpolation=self.interpolation)
        return frame

    def _scales_in_yuv(self, picture: Any, size: tuple[int, int]) -> bool:
        """Whether swscale scales this picture to `size` as OpenCV would scale its RGB (see
        _SWSCALE), in the picture's own format: no YUV -> RGB -> YUV round trip (at 1080p the
        conversion to RGB alone took 10 ms a frame, and the sink converted back)."""
        sub = _subsampling(picture.format)
        if sub is None:
            return False
        (w, h), (sx, sy) = (picture.width, picture.height), sub
        # swscale steps through chroma by the ratio of the rounded-up chroma sizes, not the
        # luma's: a 4:2:0 picture of odd size (in or out) has its chroma drift up to a sample
        # off at the far edge (161x121: chroma 38 dB against 43.5 at 160x120). The RGB path
        # scales at full resolution and the sink crops the odd row/column before subsampling.
        if any(n % s for n, s in ((w, sx), (size[0], sx), (h, sy), (size[1], sy))):
            return False
        if self._direction == "shrink":
            return size[0] <= w and size[1] <= h
        return size[0] >= w and size[1] >= h

    def _scaled(self, picture: Any, size: tuple[int, int]) -> Any:
        """`picture` at `size` in its own format, matrix, range and colour tags."""
        if self._reformatter is None:
            self._reformatter = VideoReformatter()
        # one thread: the pipeline's workers and the sink's converters share the CPUs already
        out = self._reformatter.reformat(picture, width=size[0], height=size[1],
                                         interpolation=self._swscale | Interpolation.ACCURATE_RND,
                                         threads=1)
        # PyAV re-tags the copy by swscale's matrix names (BT.470BG comes back as SMPTE 170M):
        # the picture's own tags, exactly (primaries and transfer are kept as they were)
        out.colorspace, out.color_range = picture.colorspace, picture.color_range
        return out
