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

Cost: box filters run only where they can decide, with exactly the decisions of whole-image
filters (`scores`). Test 1 first looks at the windows around the largest difference (most
changes show there); test 2 sums only around 64×64 tiles holding a pixel >= line_threshold
(`line_reaches`: a window of smaller pixels has a smaller mean). At 1080p (456 frames of
anime-1080p.mp4, 2 cores, `python -m bench decode dedup`): 0.30–0.34 s busy beside decode's
0.74 s in the same run, 0.21 s alone on decoded frames (whole-image thin-window sums: 1.0 s
and 0.8 s), mostly hashing, the 2:1 resize and the reference copy.
"""

from __future__ import annotations

import math

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


def _block_means(diff: np.ndarray, block: int) -> np.ndarray:
    return cv2.boxFilter(diff, cv2.CV_32F, (block, block), normalize=True,
                         borderType=cv2.BORDER_REFLECT)


def _line_sums(diff: np.ndarray, length: int) -> list[np.ndarray]:
    # uint16 sums: 255 × 2 × length fits up to length 128
    return [cv2.boxFilter(diff, cv2.CV_16U, size, normalize=False, borderType=cv2.BORDER_REFLECT)
            for size in ((2, length), (length, 2))]


def block_difference(a: np.ndarray, b: np.ndarray, block: int) -> float:
    """Largest mean absolute difference over any `block`×`block` window (0..255).

    Sliding windows, not a fixed grid: a small change that straddles a grid line would
    otherwise be split between tiles and look half as large.
    """
    return float(_block_means(cv2.absdiff(a, b), block).max())


def line_difference(a: np.ndarray, b: np.ndarray, length: int) -> float:
    """Largest mean absolute difference over any 2×`length` or `length`×2 window (0..255).

    Thin windows in both orientations: a faint streak one or two pixels wide is averaged away
    by square windows and by downscaling, but fills a thin window along it.
    """
    return max(int(s.max()) for s in _line_sums(cv2.absdiff(a, b), length)) / (2 * length)


def _region_max(diff: np.ndarray, y0: int, y1: int, x0: int, x1: int, reach: int,
                filters) -> float:
    """Largest output of the sliding-window `filters` at anchors within `reach` px of rows
    y0:y1, cols x0:x1 — the very values the filters give on the whole image.

    Windows reach at most `reach` px from their anchor. The filters run on the region widened
    by 2×`reach` (clipped to the image): the anchors read never see that crop's own borders,
    only the image's, where the reflected pixels are the same.
    """
    h, w = diff.shape
    iy0, iy1 = max(0, y0 - 2 * reach), min(h, y1 + 2 * reach)
    ix0, ix1 = max(0, x0 - 2 * reach), min(w, x1 + 2 * reach)
    oy0, oy1 = max(0, y0 - reach) - iy0, min(h, y1 + reach) - iy0
    ox0, ox1 = max(0, x0 - reach) - ix0, min(w, x1 + reach) - ix0
    crop = diff[iy0:iy1, ix0:ix1]
    return max(float(out[oy0:oy1, ox0:ox1].max()) for out in filters(crop))


_TILE = 64  # tile size for finding where thin windows can reach line_threshold; a multiple of 8


def _tile_mask(shape: tuple[int, int]) -> np.ndarray:
    """A zeroed scratch buffer for `line_reaches`, padded to whole tiles."""
    return np.zeros((-(-shape[0] // _TILE) * _TILE, -(-shape[1] // _TILE) * _TILE), np.uint8)


def line_reaches(diff: np.ndarray, length: int, threshold: float,
                 mask: np.ndarray | None = None) -> bool:
    """Whether `line_difference` of two images with absdiff `diff` is >= `threshold`.

    The same answer, much cheaper: a window whose pixels are all under `threshold` has a mean
    under it, so the box sums are computed only around the 64×64 tiles holding a pixel that
    reaches it (codec noise leaves few: 0–1,700 of 2 M pixels at 1080p), and stop at the first
    window that reaches it. `mask`: scratch from `_tile_mask(diff.shape)`, kept between calls.
    """
    if threshold <= 0:
        return True
    h, w = diff.shape
    if mask is None:
        mask = _tile_mask(diff.shape)
    view = mask[:h, :w]  # the padding stays zero
    hot = cv2.threshold(diff, math.ceil(threshold) - 1, 255, cv2.THRESH_BINARY, dst=view)[1]
    if hot is not view:
        view[...] = hot
    rows = mask.shape[0] // _TILE
    # Any hot pixel per tile: OR-like max over 8-pixel words, down each tile's rows, then across.
    words = mask.view(np.uint64).reshape(rows, _TILE, -1).max(axis=1)
    tiles = words.reshape(rows, -1, _TILE // 8).max(axis=2) != 0

    def sums(crop: np.ndarray) -> list[np.ndarray]:
        return _line_sums(crop, length)

    for ty in np.flatnonzero(tiles.any(axis=1)):
        # runs of adjacent hot tiles in this row of tiles, each one crop
        edges = np.flatnonzero(np.diff(tiles[ty], prepend=False, append=False))
        y0, y1 = ty * _TILE, min(h, (ty + 1) * _TILE)
        for start, stop in zip(edges[::2], edges[1::2]):
            best = _region_max(diff, y0, y1, start * _TILE, min(w, stop * _TILE), length, sums)
            if best / (2 * length) >= threshold:
                return True
    return False


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
        if not 2 <= line_length <= 128:  # the thin-window sums are uint16 (see _line_sums)
            raise ValueError(f"line_length must be between 2 and 128, got {line_length}")
        self.threshold, self.block, self.max_run = threshold, block, max_run
        self.dup_run = max_run  # tells the runner how far duplicates may overtake
        self.analysis_width = analysis_width
        self.line_threshold, self.line_length = line_threshold, line_length
        self._ref_seq: int | None = None
        self._ref_hash = 0
        self._ref_luma: np.ndarray | None = None  # analysis size
        self._ref_full: np.ndarray | None = None  # full resolution, for the thin-window test
        self._run = 0
        self._diff_small: np.ndarray | None = None  # scratch, reused: no per-frame allocations
        self._diff_full: np.ndarray | None = None
        self._mask: np.ndarray | None = None

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
        """Both tests of the module docstring: the same decisions as `scores` against the
        thresholds, at a fraction of the cost."""
        if small.shape != self._ref_luma.shape or full.shape != self._ref_full.shape:
            return False
        if self._diff_small is None or self._diff_small.shape != small.shape:
            self._diff_small = np.empty_like(small)
        diff = cv2.absdiff(small, self._ref_luma, dst=self._diff_small)
        # Most frames are changes: the windows around the largest difference usually show it
        # already, and the whole-frame box filter is needed only when they do not.
        # (OpenCV's float means of one window can differ in the last bit with its position in
        # the image, unless block² is a power of two: only a clear excess skips the full test.)
        _, _, _, (x, y) = cv2.minMaxLoc(diff)
        if _region_max(diff, y, y + 1, x, x + 1, block, lambda crop: [_block_means(crop, block)]) \
                * (1 - 2 ** -20) >= self.threshold:
            return False
        if float(_block_means(diff, block).max()) >= self.threshold:
            return False
        # Only candidates pay for the full-resolution test (most changes fail the first one).
        if self._diff_full is None or self._diff_full.shape != full.shape:
            self._diff_full = np.empty_like(full)
            self._mask = _tile_mask(full.shape)
        diff = cv2.absdiff(full, self._ref_full, dst=self._diff_full)
        return not line_reaches(diff, self.line_length, self.line_threshold, self._mask)

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
