"""`temporal-denoise`: per-pixel temporal median over 2·radius+1 frames (window stage).

Each frame's median is over the frames within `radius` on both sides. Near the video's first
and last frames the radius shrinks to what exists on both sides (the first and last frames are
kept as they are), so the count stays odd and every output pixel is one of the frames' own
values: a median of two would be their mean, which is not a median of what was seen (and an
even count's mean rounded down darkened the ends). Windows overlap by `radius` frames, so
every other frame sees its full radius whatever the window.
"""

from __future__ import annotations

import numpy as np

from engine.frame import Frame
from engine.registry import register_stage
from engine.stage import WindowStage

MAX_WINDOW = 512  # the window's frames are held at once: 512 1080p frames are 3 GB


@register_stage("temporal-denoise")
class TemporalDenoise(WindowStage):
    """Median of each pixel over the frames around it; removes flicker and grain, keeps edges."""

    def __init__(self, radius: int = 1, window_size: int | None = None):
        if not 1 <= radius <= 30:  # 2·radius+1 frames held: 61 1080p frames are 380 MB already
            raise ValueError(f"radius must be between 1 and 30, got {radius}")
        if window_size is None:  # not given: 8 frames emitted per window
            window_size = 8 + 2 * radius
        if window_size > MAX_WINDOW:
            raise ValueError(f"window_size must be at most {MAX_WINDOW} frames, got {window_size}")
        if window_size <= 2 * radius:  # windows share `radius` frames each side: none would be left
            raise ValueError(f"window_size must be more than 2 × radius = {2 * radius} frames "
                             f"(each frame needs {radius} on either side), got {window_size}")
        # overlap = radius: every emitted frame sees `radius` real neighbours on each side
        super().__init__(window_size=window_size, overlap=radius)
        self.radius = radius

    def process_window(self, frames: list[Frame]) -> list[np.ndarray]:
        stack = np.stack([f.data for f in frames])
        out = []
        for i in range(len(frames)):
            r = min(self.radius, i, len(frames) - 1 - i)  # symmetric: an odd count, a true median
            out.append(np.median(stack[i - r:i + r + 1], axis=0).astype(stack.dtype))
        return out
