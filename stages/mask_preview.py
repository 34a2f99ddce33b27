"""`mask-preview`: draw what caption removal would remove, to choose the area before a long run.

`engine stream in.mp4 preview.mp4 --pipeline caption-preview` (text-detect, text-mask, this)
writes the video with the removal mask tinted red, the detector's boxes outlined in yellow on
the frames where it ran, and the detection regions outlined in blue. `mode=mask` writes the
mask itself instead (white = removed), e.g. into a PNG sequence for another tool.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from engine.frame import Frame
from engine.registry import register_stage
from engine.stage import MapStage

TINT = np.array([255, 0, 0], np.float32)  # RGB


@register_stage("mask-preview")
class MaskPreview(MapStage):
    """Draw the text mask, boxes and regions over the frame (or write the mask itself)."""

    counted = ("mask_frames",)

    def __init__(self, mode: Literal["overlay", "mask"] = "overlay", opacity: float = 0.5):
        super().__init__()
        if not 0 <= opacity <= 1:
            raise ValueError(f"opacity must be between 0 and 1, got {opacity}")
        self.mode, self.opacity = mode, opacity
        self.requires = ("text_mask",) if mode == "mask" else ("text_boxes",)  # overlay: boxes at least

    def process(self, frame: Frame) -> Frame:
        mask = frame.meta.get("text_mask")
        if mask is not None:
            self.count("mask_frames")
        if self.mode == "mask":
            h, w = frame.shape[:2]
            plane = mask if mask is not None else np.zeros((h, w), np.uint8)
            plane = plane.astype(np.uint16) * 257 if frame.data.dtype == np.uint16 else plane
            frame.data = np.repeat(plane[:, :, None], 3, axis=2)
            return frame
        deep = frame.data.dtype == np.uint16  # drawn at 8 bits, handed on at the input's depth
        image = (frame.data >> 8).astype(np.uint8) if deep else frame.data.copy()
        if mask is not None:
            inside = mask > 0
            image[inside] = np.rint((1 - self.opacity) * image[inside] + self.opacity * TINT).astype(np.uint8)
        thick = max(1, image.shape[1] // 640)
        for x0, y0, x1, y1 in frame.meta.get("text_regions", []):
            cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), (0, 128, 255), thick)
        for box in frame.meta.get("text_boxes", []):
            cv2.polylines(image, [np.round(box).astype(np.int32)], True, (255, 255, 0), thick)
        frame.data = image.astype(np.uint16) * 257 if deep else image
        return frame
