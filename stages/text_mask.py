"""`text-mask`: per-frame removal masks from `text-detect`'s boxes, steady over time.

Rule, for each frame (a window stage: every frame sees `overlap` frames on both sides):

1. A detection frame's mask is the strokes inside its boxes (`shape=glyphs`, see `glyph_mask`;
   a boxed caption is taken whole), grown by `grow` (0.15) × the line's height for soft shadows
   and outlines, with the pockets that mask encloses (at most the line's height squared)
   filled, or the boxes themselves (`shape=boxes`); then dilated by `dilate` px. Strokes rather than boxes: inpainting a whole box
   replaces background that was never covered, and a source frame's box hides background
   that propagation could have used.
2. A frame without detection (`every` > 1) takes the union of the masks of the nearest
   detection frames before and after it — the seed pipeline's rule for its odd frames.
3. Hysteresis over time, per pixel: gaps of up to `hold` frames inside a run are closed (a
   subtitle the detector missed for a moment stays masked), then runs shorter than
   `min_duration` frames are dropped (a one-off false box does not blink a blurred patch).
4. None of this crosses a scene cut (mean absolute luma difference of 32×18 thumbnails above
   `cut_threshold`, or `meta["scene_cut"]` set upstream): each shot is taken on its own.

Output: `meta["text_mask"]` (H×W uint8, 255 = remove) on frames with anything to remove,
and `meta["text_mask_margin"]`, the `dilate` px of its edge that are a safety margin only
(beyond the strokes and their `grow`): what the frame's own text cannot have touched, which
`inpaint` may take as background when the frame is a source for another. The pixels pass
through unchanged. A frame without text has neither.
"""

from __future__ import annotations

from typing import Any, Literal

import cv2
import numpy as np

from engine.errors import UserError
from engine.frame import Frame
from engine.registry import register_stage
from engine.stage import WindowStage
from stages.dedup import luma
from stages.inpaint import CUT_THRESHOLD, THUMB, bounds, disc, thumbnail


def _grow(mask: np.ndarray, px: int) -> np.ndarray:
    if not px:
        return mask
    return cv2.dilate(mask, disc(px))


def box_mask(boxes: np.ndarray, height: int, width: int, dilate: int) -> np.ndarray:
    """Boxes (n×4×2) filled into an H×W uint8 mask (255 inside), dilated by `dilate` px."""
    mask = np.zeros((height, width), np.uint8)
    if len(boxes):
        cv2.fillPoly(mask, [np.round(b).astype(np.int32) for b in boxes], 255)
    return _grow(mask, dilate)


def fill_holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    """Set (in place) the unmasked pockets of an H×W uint8 mask that the mask encloses (not
    touching the array's edge) and that hold at most `max_area` pixels; returns the mask.

    Why: the top-hats miss the inside of a dense glyph (its strokes blur into a plateau wider
    than the structuring element, measured on a grey CJK glyph of the 1080p clip), and a pocket
    left in the mask is the worst of both: its text stays, and the spatial fill takes its
    pixels as the border to fill from, smearing them over the whole glyph."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((mask == 0).astype(np.uint8), connectivity=4)
    h, w = mask.shape
    x, y, bw, bh, area = stats.T
    pocket = (area <= max_area) & (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h)
    pocket[0] = False  # label 0: the mask itself
    mask[pocket[labels]] = 255
    return mask


def glyph_mask(gray: np.ndarray, boxes: np.ndarray, dilate: int, box_contrast: float = 25.0,
               grow: float = 0.0) -> np.ndarray:
    """The strokes inside each box (n×4×2) of an H×W uint8 luma image, dilated by `dilate` px
    plus `grow` × the box's height (soft shadows and outlines scale with the text).

    Subtitle strokes and their outlines are thin and stand out from what is around them: the
    white and black top-hats (structuring element about a third of the line height) find
    them, and Otsu's threshold over the box separates them from the background's texture.
    A box whose non-stroke pixels differ from a ring just outside it by more than
    `box_contrast` (a boxed caption, a banner) is taken whole. Pockets the grown strokes
    enclose, up to the box's height squared (a glyph's inside, not a frame around a scene),
    are filled (`fill_holes`).
    """
    h, w = gray.shape
    mask = np.zeros((h, w), np.uint8)
    for box in boxes:
        x0, y0 = np.floor(box.min(axis=0)).astype(int)
        x1, y1 = np.ceil(box.max(axis=0)).astype(int)
        pad = max(4, (y1 - y0) // 4)
        x0, y0, x1, y1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)
        inside = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(inside, [np.round(box - [x0, y0]).astype(np.int32)], 255)
        region = gray[y0:y1, x0:x1]
        k = max(3, int(np.ptp(box[:, 1])) // 3) | 1
        element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        response = np.maximum(cv2.morphologyEx(region, cv2.MORPH_TOPHAT, element),
                              cv2.morphologyEx(region, cv2.MORPH_BLACKHAT, element))
        values = response[inside > 0]
        if values.size == 0:
            continue
        threshold = max(20.0, cv2.threshold(values.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)[0])
        strokes = (response > threshold) & (inside > 0)
        ring = (_grow(inside, 4) > 0) & (inside == 0)
        rest = (inside > 0) & ~_grow(strokes.astype(np.uint8), 2).astype(bool)
        if ring.any() and rest.any() and abs(float(np.median(region[rest])) - float(np.median(region[ring]))) > box_contrast:
            strokes = inside > 0  # a boxed caption: the box goes too
        extra = int(round(grow * np.ptp(box[:, 1])))
        grown = _grow(np.pad(strokes.astype(np.uint8) * 255, extra), extra)  # room to grow past the crop
        fill_holes(grown, int(np.ptp(box[:, 1])) ** 2)
        gy0, gx0 = y0 - extra, x0 - extra
        cy0, cx0 = max(0, gy0), max(0, gx0)
        cy1, cx1 = min(h, y1 + extra), min(w, x1 + extra)
        mask[cy0:cy1, cx0:cx1] |= grown[cy0 - gy0:cy1 - gy0, cx0 - gx0:cx1 - gx0]
    return _grow(mask, dilate)


def _sweep(a: np.ndarray, before: int, after: int, everywhere: bool) -> np.ndarray:
    """Per pixel over frames [t-before, t+after] of a T×… bool stack: all of them when
    `everywhere` (erosion), else any (dilation); the end frames repeat beyond the ends.

    One OpenCV erosion/dilation of the stack seen as a T × pixels image, with a
    (before+after+1)×1 kernel anchored `before` rows down (SIMD; a NumPy running sum over
    the same stack cost 4× more)."""
    flat = np.ascontiguousarray(a.reshape(len(a), -1), dtype=np.uint8)
    kernel = np.ones((before + after + 1, 1), np.uint8)
    op = cv2.erode if everywhere else cv2.dilate
    out = np.empty_like(flat)
    step = 1 << 15  # columns per call: OpenCV images are limited to 2^31 bytes and short rows are cache-friendly
    for c in range(0, flat.shape[1], step):
        out[:, c:c + step] = op(flat[:, c:c + step], kernel, anchor=(0, before), borderType=cv2.BORDER_REPLICATE)
    return out.reshape(a.shape).astype(bool)


def run_filter(stack: np.ndarray, hold: int, min_duration: int) -> np.ndarray:
    """Temporal closing (gaps of up to `hold` frames filled), then opening (runs shorter than
    `min_duration` frames dropped) of a T×… bool stack along axis 0 (one shot).

    The shot is first extended by repeating its first and last frames, far enough that neither
    operation sees past the extension: a run touching the shot's edge is kept whole, and a
    run near the edge is not stretched to it."""
    pad = hold + min_duration
    out = np.concatenate([np.repeat(stack[:1], pad, axis=0), stack, np.repeat(stack[-1:], pad, axis=0)])
    if hold > 0:
        before, after = hold // 2, hold - hold // 2
        out = _sweep(_sweep(out, before, after, False), after, before, True)
    if min_duration > 1:
        before, after = (min_duration - 1) // 2, min_duration - 1 - (min_duration - 1) // 2
        out = _sweep(_sweep(out, before, after, True), after, before, False)
    return out[pad:pad + len(stack)]


GROW = 0.15  # glyph masks widen by this × the text line's height


@register_stage("text-mask")
class TextMask(WindowStage):
    """Masks from text boxes: dilated, gaps between detections filled, steady over time, cut at scene changes."""

    requires = ("text_boxes",)
    provides = ("text_mask",)

    def __init__(self, shape: Literal["glyphs", "boxes"] = "glyphs", dilate: int = 4, grow: float = GROW,
                 hold: int = 6,
                 min_duration: int = 4, every: int = 2, cut_threshold: float = CUT_THRESHOLD, window_size: int = 0):
        if not 0 <= grow <= 2:
            raise ValueError(f"grow must be between 0 and 2 (× the text line's height), got {grow}")
        if shape == "boxes" and grow != GROW:  # grow widens glyph masks; boxes are the boxes
            raise ValueError("grow applies to shape=glyphs only")
        if not 0 <= dilate <= 200:
            raise ValueError(f"dilate must be between 0 and 200 px, got {dilate}")
        if not 0 <= hold <= 120 or not 1 <= min_duration <= 120:
            raise ValueError(f"hold must be 0..120 and min_duration 1..120 frames, got {hold}, {min_duration}")
        if not 1 <= every <= 100:
            raise ValueError(f"every must be between 1 and 100, got {every}")
        if not 0 < cut_threshold <= 255:
            raise ValueError(f"cut_threshold must be in (0, 255], got {cut_threshold}")
        # context each side: neighbour union (every) + closing (hold) + opening (min_duration)
        overlap = every + hold + min_duration
        super().__init__(window_size=window_size or 2 * overlap + 8, overlap=overlap)
        self.shape, self.dilate, self.grow, self.hold, self.min_duration = shape, dilate, grow, hold, min_duration
        self.cut_threshold, self.every = cut_threshold, every
        self._masks: dict[int, np.ndarray | None] = {}  # detection masks by seq, this window's
        self._thumbs: dict[int, np.ndarray] = {}
        self._emitted = -1  # highest seq a window has emitted so far

    def _detection_mask(self, frame: Frame) -> np.ndarray | None:
        if frame.seq not in self._masks:
            boxes = frame.meta["text_boxes"]
            h, w = frame.shape[:2]
            if not len(boxes):
                self._masks[frame.seq] = None
            elif self.shape == "boxes":
                self._masks[frame.seq] = box_mask(boxes, h, w, self.dilate)
            else:
                self._masks[frame.seq] = glyph_mask(luma(frame), boxes, self.dilate, grow=self.grow)
        return self._masks[frame.seq]

    def _thumb(self, frame: Frame) -> np.ndarray:
        if frame.seq not in self._thumbs:
            # from the RGB, as inpaint takes its own (it reads every frame's RGB anyway): a
            # decoded picture's Y plane is 16..235 in limited-range video, and a frame text-detect
            # read is full-range RGB, so mixing the two put 20 levels between neighbours (the
            # cut threshold is 30). One function, so both stages see the same cuts.
            self._thumbs[frame.seq] = thumbnail(frame.data)
        return self._thumbs[frame.seq]

    def cuts(self, frames: list[Frame]) -> list[int]:
        """Indexes i where a new shot starts at frames[i] (i >= 1)."""
        out = []
        for i in range(1, len(frames)):
            if frames[i].meta.get("scene_cut") or float(
                    np.abs(self._thumb(frames[i]) - self._thumb(frames[i - 1])).mean()) > self.cut_threshold:
                out.append(i)
        return out

    def process_window(self, frames: list[Frame]) -> list[np.ndarray]:
        sampled = max((f.meta.get("text_every", 1) for f in frames), default=1)
        if sampled > self.every:  # a frame's nearest detections could lie outside its context
            raise UserError(f"text-mask:every={self.every} is less than text-detect's every={sampled}: "
                            f"give text-mask at least the same every (it sizes the window's context)")
        seqs = {f.seq for f in frames}
        for cache in (self._masks, self._thumbs):  # forget frames that left the window
            for seq in [s for s in cache if s not in seqs]:
                del cache[seq]
        cuts = self.cuts(frames)
        # Masks are written only on the frames this window emits (engine/stage.py: not emitted
        # before, and not the trailing context unless this is the last, shorter window); there
        # each has `overlap` frames of context. The rest keep theirs until their own window.
        last = len(frames) if len(frames) < self.window_size else len(frames) - self.overlap
        owned = [f.seq > self._emitted and i < last for i, f in enumerate(frames)]
        self._emitted = max(self._emitted, frames[last - 1].seq)
        results: list[np.ndarray | None] = [None] * len(frames)
        bounds = [0, *cuts, len(frames)]
        for start, stop in zip(bounds[:-1], bounds[1:]):
            self._shot(frames[start:stop], results, start, owned[start:stop])
        for frame, mask, mine in zip(frames, results, owned):
            if not mine:
                continue
            if mask is None:
                frame.meta.pop("text_mask", None)
                frame.meta.pop("text_mask_margin", None)
            else:
                frame.meta["text_mask"] = mask
                frame.meta["text_mask_margin"] = self.dilate
        return [f.data for f in frames]

    def _shot(self, frames: list[Frame], results: list, offset: int, owned: list[bool]) -> None:
        detected = [i for i, f in enumerate(frames) if "text_boxes" in f.meta]
        masks = {i: self._detection_mask(frames[i]) for i in detected}
        if not any(m is not None for m in masks.values()):
            return
        h, w = frames[detected[0]].shape[:2]
        raw: list[np.ndarray | None] = []
        for i in range(len(frames)):
            if i in masks:
                raw.append(masks[i])
                continue
            before = max((d for d in detected if d < i), default=None)
            after = min((d for d in detected if d > i), default=None)
            parts = [masks[d] for d in (before, after) if d is not None and masks[d] is not None]
            raw.append(np.maximum.reduce(parts) if len(parts) > 1 else parts[0] if parts else None)
        # the temporal filter runs on the rows and columns any mask touches
        y0, y1, x0, x1 = bounds(raw)
        stack = np.stack([m[y0:y1, x0:x1] > 0 if m is not None else np.zeros((y1 - y0, x1 - x0), bool)
                          for m in raw])
        steady = run_filter(stack, self.hold, self.min_duration)
        for i, crop in enumerate(steady):
            if owned[i] and crop.any():
                mask = np.zeros((h, w), np.uint8)
                mask[y0:y1, x0:x1][crop] = 255
                results[offset + i] = mask

    def describe(self) -> dict[str, Any]:
        return {"shape": self.shape, "dilate": self.dilate,
                **({"grow": self.grow} if self.shape == "glyphs" else {}), "hold": self.hold,
                "min_duration": self.min_duration, "window": self.window_size}
