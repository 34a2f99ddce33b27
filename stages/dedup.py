"""`dedup`: mark exact and near-duplicate frames so every later stage skips them.

Lossy video almost never repeats a frame bit for bit, and a global mean difference
cannot tell codec noise (~0.2/255 over the frame) from a mouth moving (also ~0.2/255).
Local differences can. A frame is a near-duplicate of the last unique frame when both hold:

1. the *largest* mean luma difference over any 16×16 window (at `analysis_width`, which
   averages away some codec noise) is under `threshold` (4.0);
2. at full resolution, the largest mean difference over any thin 2×12 or 12×2 window is
   under `line_threshold` (4.5). Faint one-pixel-wide animation (rain streaks of 6–13/255
   over held drawings) is averaged away by test 1 but fills a thin window along it.

Calibration: the hand labels in tests/data/dedup_labels/ (320×240 clip, 240 frames; 1080p
anime clip with animated rain, 456 frames). Test 2 against the previous frame: the faintest
labelled change scores 5.5 (1080p #432; 320×240: 16.3), so 4.5 leaves a margin of 1/255.
There is no clean separation: codec flicker along drawn edges and subtitle glyphs reaches
13.4 (1080p #414) in transitions labelled repeat, so those repeats are kept (a false
duplicate is worse than a missed repeat). Test 1 alone let 28 rain-only changes through.
A 4×4 dot moving one pixel scores about 5 in test 1.

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


def line_difference(a: np.ndarray, b: np.ndarray, length: int) -> float:
    """Largest mean absolute difference over any 2×`length` or `length`×2 window (0..255).

    Thin windows in both orientations: a faint streak one or two pixels wide is averaged away
    by square windows and by downscaling, but fills a thin window along it.
    """
    diff = cv2.absdiff(a, b)
    sums = [cv2.boxFilter(diff, cv2.CV_16U, size, normalize=False, borderType=cv2.BORDER_REFLECT)
            for size in ((2, length), (length, 2))]  # uint16 sums: 255 × 2 × length fits
    return max(int(s.max()) for s in sums) / (2 * length)


@register_stage("dedup")
class Dedup(MapStage):
    """Mark exact (xxh3) and near (block-wise, then thin-window luma) duplicates."""

    needs_order = True  # compares each frame with the last unique one before it

    def __init__(self, threshold: float = 4.0, block: int = 16, max_run: int = 12,
                 analysis_width: int = 960, line_threshold: float = 4.5, line_length: int = 12):
        super().__init__()
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        if block < 2:
            raise ValueError(f"block must be >= 2, got {block}")
        if not 1 <= max_run <= 1000:
            raise ValueError(f"max_run must be between 1 and 1000, got {max_run}")
        if analysis_width < 16:
            raise ValueError(f"analysis_width must be >= 16, got {analysis_width}")
        if line_threshold < 0:
            raise ValueError(f"line_threshold must be >= 0, got {line_threshold}")
        if not 2 <= line_length <= 256:
            raise ValueError(f"line_length must be between 2 and 256, got {line_length}")
        self.threshold, self.block, self.max_run = threshold, block, max_run
        self.dup_run = max_run  # tells the runner how far duplicates may overtake
        self.analysis_width = analysis_width
        self.line_threshold, self.line_length = line_threshold, line_length
        self._ref_seq: int | None = None
        self._ref_hash = 0
        self._ref_luma: np.ndarray | None = None  # analysis size
        self._ref_full: np.ndarray | None = None  # full resolution, for the thin-window test
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

    def scores(self, small: np.ndarray, reference: np.ndarray, block: int,
               full: np.ndarray, full_reference: np.ndarray) -> dict[str, float]:
        """The statistics that decide near-duplicates: analysis-size and full-size lumas."""
        return {"block": block_difference(small, reference, block),
                "line": line_difference(full, full_reference, self.line_length)}

    def _is_near(self, small: np.ndarray, block: int, full: np.ndarray) -> bool:
        if small.shape != self._ref_luma.shape or full.shape != self._ref_full.shape:
            return False
        if block_difference(small, self._ref_luma, block) >= self.threshold:
            return False
        # Only candidates pay for the full-resolution test (most changes fail the first one).
        return line_difference(full, self._ref_full, self.line_length) < self.line_threshold

    def process(self, frame: Frame) -> Frame:
        digest = content_hash(frame)
        full = luma(frame)
        small, block = self.analysis(full)
        kind = None
        if self._ref_seq is not None and self._run < self.max_run:
            if digest == self._ref_hash:
                kind = "exact_duplicates"
            elif self._is_near(small, block, full):
                kind = "near_duplicates"
        if kind is None:
            # Copies: `full` (and `small` when not resized) view the decoder's buffer, which
            # later stages may change or free. The buffer is reused: a fresh 2 MB allocation
            # per frame costs more in page faults than the comparison itself.
            if self._ref_full is None or self._ref_full.shape != full.shape:
                self._ref_full = np.empty_like(full)
            np.copyto(self._ref_full, full)
            self._ref_luma = self._ref_full if small is full else small
            self._ref_seq, self._ref_hash, self._run = frame.seq, digest, 0
            self.count("unique")
            return frame
        self._run += 1
        self.count(kind)
        frame.meta["dup_of"] = self._ref_seq
        frame.drop_pixels()  # it will show its reference's result; free the decoder buffer now
        return frame
