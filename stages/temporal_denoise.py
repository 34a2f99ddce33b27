"""`temporal-denoise`: per-pixel temporal median over 2·radius+1 frames (window stage)."""

from __future__ import annotations

import numpy as np

from engine.frame import Frame
from engine.registry import register_stage
from engine.stage import WindowStage


@register_stage("temporal-denoise")
class TemporalDenoise(WindowStage):
    """Median of each pixel over the frames around it; removes flicker and grain, keeps edges."""

    def __init__(self, radius: int = 1, window_size: int = 0):
        if not 1 <= radius <= 30:  # 2·radius+1 frames held: 61 1080p frames are 380 MB already
            raise ValueError(f"radius must be between 1 and 30, got {radius}")
        if window_size > 512:  # the window's frames are held at once: 512 1080p frames are 3 GB
            raise ValueError(f"window_size must be at most 512 frames, got {window_size}")
        # overlap = radius: every emitted frame sees `radius` real neighbours on each side
        super().__init__(window_size=window_size or 8 + 2 * radius, overlap=radius)
        self.radius = radius

    def process_window(self, frames: list[Frame]) -> list[np.ndarray]:
        stack = np.stack([f.data for f in frames])
        out = []
        for i in range(len(frames)):
            lo, hi = max(0, i - self.radius), min(len(frames), i + self.radius + 1)
            out.append(np.median(stack[lo:hi], axis=0).astype(stack.dtype))
        return out
