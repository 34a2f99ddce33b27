"""`resize`: scale frames with OpenCV (map stage)."""

from __future__ import annotations

from typing import Literal

import cv2

from engine.frame import Frame
from engine.registry import register_stage
from engine.stage import MAX_SIDE, MapStage, check_frame_size

_INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR,
                  "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}


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
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}  # input size -> output size

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
        if size != (w, h):
            frame.data = cv2.resize(frame.data, size, interpolation=self.interpolation)
        return frame
