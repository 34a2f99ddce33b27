"""`dedup`: mark exact and near-duplicate frames so every later stage skips them.

Lossy video almost never repeats a frame bit for bit, and a global mean difference
cannot tell codec noise (~0.2/255 over the frame) from a mouth moving (also ~0.2/255).
Local differences can: on 16×16 blocks, repeats stay under a few /255 while real changes
reach tens. So a frame is a near-duplicate when the *largest* mean luma difference over
any 16×16 window is under `threshold`; one small moving region is enough to make it a change.

Default threshold 4.0: on the shared 320×240 clip, codec-noise repeats peak at 2.8 and the
smallest real change is 16.8; a 4×4 dot moving one pixel scores about 5.

The reference is the last unique frame, not the previous frame, so a slow fade cannot
creep past the threshold a little at a time.
"""

from __future__ import annotations

import cv2
import numpy as np
import xxhash

from engine.frame import Frame
from engine.registry import register_stage
from engine.stage import MapStage


_PLANAR_8BIT = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21"}


def _plane(picture, index: int, height: int, width: int) -> np.ndarray:
    """A zero-copy view of one 8-bit plane, without its row padding."""
    plane = picture.planes[index]
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:height, :width]


def luma(frame: Frame) -> np.ndarray:
    """The frame's luma plane as uint8: a view of the decoded Y plane when untouched."""
    picture = frame.picture
    if picture is not None and picture.format.name in _PLANAR_8BIT:
        return _plane(picture, 0, picture.height, picture.width)
    if picture is not None:
        return picture.to_ndarray(format="gray")
    data = frame.data
    if data.dtype == np.uint16:
        data = (data >> 8).astype(np.uint8)
    return cv2.cvtColor(data, cv2.COLOR_RGB2GRAY)


def content_hash(frame: Frame) -> int:
    """xxh3 of the frame's full pixel content (all planes), for exact repeats.

    Decoded planes are hashed in place, row padding included: equal hashes still mean
    equal pixels, and the rare repeat whose padding differs is caught as a near-duplicate.
    """
    picture = frame.picture
    h = xxhash.xxh3_64()
    if picture is not None:
        for plane in picture.planes:
            h.update(memoryview(plane))
    else:
        h.update(np.ascontiguousarray(frame.data))
    return h.intdigest()


def block_difference(a: np.ndarray, b: np.ndarray, block: int) -> float:
    """Largest mean absolute difference over any `block`×`block` window (0..255).

    Sliding windows, not a fixed grid: a small change that straddles a grid line would
    otherwise be split between tiles and look half as large.
    """
    diff = cv2.absdiff(a, b)
    means = cv2.boxFilter(diff, cv2.CV_32F, (block, block), normalize=True,
                          borderType=cv2.BORDER_REFLECT)
    return float(means.max())


@register_stage("dedup")
class Dedup(MapStage):
    """Mark exact (xxh3) and near (block-wise luma) duplicates; later stages skip them."""

    needs_order = True  # compares each frame with the last unique one before it

    def __init__(self, threshold: float = 4.0, block: int = 16, max_run: int = 12,
                 analysis_width: int = 960):
        super().__init__()
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        if block < 2:
            raise ValueError(f"block must be >= 2, got {block}")
        if not 1 <= max_run <= 1000:
            raise ValueError(f"max_run must be between 1 and 1000, got {max_run}")
        if analysis_width < 16:
            raise ValueError(f"analysis_width must be >= 16, got {analysis_width}")
        self.threshold, self.block, self.max_run = threshold, block, max_run
        self.dup_run = max_run  # tells the runner how far duplicates may overtake
        self.analysis_width = analysis_width
        self._ref_seq: int | None = None
        self._ref_hash = 0
        self._ref_luma: np.ndarray | None = None
        self._run = 0

    def analysis(self, y: np.ndarray) -> tuple[np.ndarray, int]:
        """Luma at analysis size (averaging away some codec noise) and the matching block."""
        h, w = y.shape
        if w > self.analysis_width:
            scale = self.analysis_width / w
            y = cv2.resize(y, (self.analysis_width, max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
            return y, max(2, round(self.block * scale))
        return y, self.block

    def scores(self, small: np.ndarray, reference: np.ndarray, block: int) -> dict[str, float]:
        """The statistics that decide near-duplicates, for two analysis-size lumas."""
        return {"block": block_difference(small, reference, block)}

    def process(self, frame: Frame) -> Frame:
        digest = content_hash(frame)
        small, block = self.analysis(luma(frame))
        kind = None
        if self._ref_seq is not None and self._run < self.max_run:
            if digest == self._ref_hash:
                kind = "exact_duplicates"
            elif small.shape == self._ref_luma.shape and \
                    self.scores(small, self._ref_luma, block)["block"] < self.threshold:
                kind = "near_duplicates"
        if kind is None:
            self._ref_seq, self._ref_hash, self._ref_luma, self._run = frame.seq, digest, small, 0
            self.count("unique")
            return frame
        self._run += 1
        self.count(kind)
        frame.meta["dup_of"] = self._ref_seq
        frame.drop_pixels()  # it will show its reference's result; free the decoder buffer now
        return frame
