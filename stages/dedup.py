"""`dedup`: mark exact and near-duplicate frames so every later stage skips them.

Lossy video almost never repeats a frame bit for bit, and a global mean difference
cannot tell codec noise (~0.2/255 over the frame) from a mouth moving (also ~0.2/255).
Local differences can. A frame is a near-duplicate of the last unique frame (the
reference) when all hold:

1. the *largest* mean luma difference over any 16×16 window (at `analysis_width`, which
   averages away some codec noise) is under the block threshold (4.0);
2. at full resolution, the largest mean over any thin 2×12 or 12×2 window of the *excess
   difference* is under the line threshold (4.5), **or** the largest |mean| over those
   windows of the *signed* excess difference, sign(b − a)·excess, is under the signed
   threshold (`SIGNED_SHARE` = 2/3 of the line threshold: 3.0). Faint one-pixel-wide
   animation (rain streaks of 6–13/255 over held drawings) is averaged away by test 1 but
   fills a thin window along it.
3. the guards, for what the luma windows cannot see: the frame's mean luma moved less than
   the tone threshold (1.0: a fade of 0.7 levels a frame otherwise passed test 1 until it had
   moved 4, a stair visible on flat areas), and the largest mean |chroma difference| over a
   window of the area of test 1's (chroma at its own resolution, no wider than
   `analysis_width`) is under the colour threshold (6.0: a red square turning an equally
   bright green passed every luma test). Over every pair the luma tests call near on both
   clips and the whole generalisation set, the tone shift reaches 0.10 and the colour
   statistic 3.25 (x265 CRF 28): the guards change no decision there. They run last, on the
   frames both luma tests pass; the reference's chroma planes are kept beside its luma.
   Tools that replay the rule on lumas alone (tools/label_transitions.py) have no colour.

The signed alternative: a streak that appears or disappears has one sign along its length,
so its signed mean is its full mean; codec re-coding of a held picture (residual refinement,
ringing) often alternates in sign within a few pixels and cancels. Only a frame whose every
thin window cancels to under 3.0 is saved by it. It is an alternative to the unsigned test,
not a replacement, and its threshold sits below the line threshold, because small motion
cancels too: the two sides of a line that moves one pixel have opposite signs, and so do the
edges of a closing eyelid at 480 px (1080p clip at 480 px wide, x264, #39 eye blink: unsigned
5.21, signed 3.75; 1080p #288, a thin line shifting one pixel: 6.38 and 4.58). Tried and left
out: the signed statistic alone against 4.5 (lets both through); a per-window joint test
(a window counts when its unsigned mean reaches 4.5 and its signed one 3.0) lets the blink
through (4.12 against 4.5 on the combined min(unsigned, 1.5·signed)); the signed form of test
1 (|mean(b − a)| over 16×16) lets a change through on the 1080p x264 CRF 28 re-encode (#119:
|mean| under 4, thin-window 3.04); a dipole-tolerant form (each column of a 2×12 window signed
separately) gives the blink 3.75 too. Gains are small (table in
tests/data/dedup_labels/RESULTS.md): at full resolution the codec noise that beats the
threshold is sign-consistent (subtitle glyph flicker, residue streaks, re-coded blotches), and
the signed test changes no decision on the 1080p clip or any 1080p re-encode; it saves 8 more
repeats on the 640 px x265 variant and 1 on the 640 px x264 one.

The excess difference discounts what the codec does along edges. Ringing and edge flicker
(the noise that beats a fixed threshold on compressed anime) sit on the drawn lines both
frames share and grow with their contrast, so each pixel's |difference| is reduced by
`RINGING_GAIN` (0.15) × the local contrast the two frames share (the smaller of the two
3×3 max − min ranges): max(0, |a − b| − 0.15·min(range_a, range_b)). A streak or line that
appears or moves has no shared contrast where it is new, so it keeps its full difference.
The full gain holds from twice `analysis_width` (1920 px) up; it falls linearly to none at
`analysis_width` (960 px) and below. In a small picture a 3×3 neighbourhood covers the
feature itself: a soft blink or mouth movement lies inside the range of the eye's or mouth's
own outline. (Found on the generalisation set: with the full gain the 1080p clip downscaled
to 640 and 480 px lost 2–16 such changes, with a gain in proportion to width/1920 still 1–4.)

The thresholds are 4.0 / caution (test 1), 4.5 / caution (test 2; its signed threshold
is 2/3 of that), 1.0 / caution and 6.0 / caution (the guards). `caution` (default 1) is the one
knob: 2 halves all thresholds (fewer skips, safer), 0.5 doubles them; an explicit `threshold` /
`line_threshold` / `tone_threshold` / `colour_threshold` fixes that threshold (the signed one
follows `line_threshold`; 256 turns a test off). Everything is decided from the
reference and the frame alone: no look-ahead, no history (live streams and `--resume` cuts
need nothing carried), memory of one frame. The report gives the codec noise it measured
on edges, `N` (median, 90th percentile, largest over the pairs that reached test 2): the
90th percentile of |a − b| at analysis size over the pixels on strong shared edges (shared
range >= 32, at least 256 of them), where the codec's noise is and a small real change
covers few pixels.

N does not move the thresholds. Tried: line threshold (4.5 + 2·N′) / caution, N′ the same
percentile of the excess difference at full size. On the 1080p clip and its full-size
re-encodes N′ stayed 0 (the discount removes the edge noise), so it changed nothing; on the
640 and 480 px variants, where nothing is discounted, N′ reached 1–3 and the raised threshold
let an eye blink and rain over a still character through (false duplicates). A quantile of
the last 24 scores (an earlier attempt) never rose above its floor on the same set. The
adaptation that holds is the per-pixel discount above: it follows each video's edges.

How far thresholds can go. `tools/label_transitions.py bound` gives each video the
best setting of a threshold grid for it, chosen knowing its labels, and, against the
previous frame, the best thresholds of all. On three videos of the 1080p family (x264 CRF 35,
x265 CRF 28 and 35) neither reaches 60 % of repeats without a false duplicate. Where the goals
are reached, the best settings contradict each other:
- the 320×240 CRF 35 variants: block threshold 10–12 and no thin-window test, which would
  pass the 1080p rain;
- the 1080p clip: line threshold 5.5;
- its x265 CRF 18 and 28 re-encodes: faintest changes at exactly 4.50.
Against the previous frame, thresholds set per 2 s stretch would have room in hindsight
(65–91 % on the 1080p family, 1.0 under each stretch's faintest change). But what they would have to follow is how faint
that stretch's faintest change is (5.5–11.3 on the 1080p clip), and nothing measured online
tracks it: faint changes look like the noise, and a blink can score under the repeats around
it (480 px: 5.2 beside 5.3–11). So the thresholds stay one setting for every video (table and
reasoning in tests/data/dedup_labels/RESULTS.md). Nor does one frame of look-ahead help: the
rule it suggests (also near when the frame after is near the frame before, the codec's flicker
undone) skips 0–3 more repeats and calls real changes near on 8 of the 10 1080p re-encodes
(a rain streak shown for one frame, #299, undoes itself just as codec flicker does), so the
stage decides without it.

Calibration, on the hand labels in tests/data/dedup_labels/ (320×240 clip, 240 frames;
1080p anime clip with animated rain, 456 frames) and checked on a generalisation set made
from them (tools/make_dedup_variants.py: x264/x265 re-encodes, downscales; figures in
tests/data/dedup_labels/RESULTS.md): against the previous frame, the faintest labelled
change has an excess statistic of 5.5 (1080p #432), the largest repeat 10.1 (1080p #414,
subtitle glyph flicker; was 13.4 on the plain difference); 8.1 on 320×240 (#66; no
discount under 960 px).
4.5 keeps a margin of 1/255 under the faintest change on the clip, but none on the set: on
the x265 CRF 18 and 28 re-encodes the faintest changes that pass test 1 (#302, #78) score
exactly 4.50 (caught: the test is `< 4.5`), on the 640 and 480 px ones 4.92; there is still
no clean separation on the 1080p clip, so some of its repeats are kept (a false duplicate is
worse than a missed repeat). The signed statistic of
the changes that pass test 1 is 3.75 and up over the clips and the whole set (the 480 px
eye blink above; 4.12 for #288 on the x264 CRF 18 re-encode, 4.58 on the clip): 3.0 keeps
0.75/255 under it. A 4×4 dot moving one pixel scores about 5 in test 1.

The reference is the last unique frame, not the previous frame, so a slow fade cannot
creep past the threshold a little at a time.

Cost: box filters run only where they can decide, with exactly the decisions of whole-image
filters (`scores`). Test 1 first looks at the windows around the largest difference (most
changes show there); test 2 runs only for frames that pass test 1, and computes the excess
and the thin-window sums only around the 64×64 tiles holding a pixel of the plain difference
>= the line threshold (`line_reaches`: a window of smaller pixels has a smaller mean, and the
excess is never above the plain difference). The signed test runs only for frames the
unsigned one keeps: first over the windows where the unsigned test reached its threshold (a
real change is usually of one sign there), then, if none reaches the signed threshold there,
around every tile holding a pixel >= it (|sum of the signed excess| <= sum of the excess),
stopping at the first window that reaches it. At 1080p the stage takes 0.475 of decode's CPU
time (`tools/dedup_cost.py`, quiet 2-core machine; 0.456 without the signed test, measured
beside it); figures in tests/data/dedup_labels/RESULTS.md.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import xxhash

from engine.frame import Frame
from engine.planes import plane_rows
from engine.registry import register_stage
from engine.stage import MapStage


_PLANAR_8BIT = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21"}


def _plane(picture, index: int, height: int, width: int) -> np.ndarray:
    """A zero-copy view of one 8-bit plane, without its row padding."""
    return plane_rows(picture.planes[index])[:height, :width]


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


_SEMI_PLANAR = {"nv12", "nv21"}  # one plane of interleaved chroma pairs


def chroma(frame: Frame) -> tuple[np.ndarray, np.ndarray] | None:
    """The frame's two chroma planes as uint8 at their own resolution (views of the decoded
    planes when 8-bit planar), or None for a picture without colour (grey)."""
    picture = frame.picture
    if picture is not None and picture.format.name in _PLANAR_8BIT:
        fmt = picture.format
        h, w = fmt.chroma_height(picture.height), fmt.chroma_width(picture.width)
        if fmt.name in _SEMI_PLANAR:
            pairs = _plane(picture, 1, h, 2 * w).reshape(h, w, 2)
            return pairs[..., 0], pairs[..., 1]
        return _plane(picture, 1, h, w), _plane(picture, 2, h, w)
    if picture is not None:
        fmt = picture.format
        if fmt.name.startswith(("gray", "ya", "mono")):
            return None
        if fmt.name.startswith("yuv") and fmt.name.endswith("le") and len(picture.planes) >= 3:
            # 10/12/16-bit planar: the top 8 bits of the planes, no conversion of the picture
            h, w = fmt.chroma_height(picture.height), fmt.chroma_width(picture.width)
            shift = fmt.components[1].bits - 8
            return tuple((plane_rows(pl, "<u2")[:h, :w] >> shift).astype(np.uint8) for pl in picture.planes[1:3])
        yuv = picture.reformat(format="yuv444p")  # RGB, palette, p010...: one conversion
        return _plane(yuv, 1, yuv.height, yuv.width), _plane(yuv, 2, yuv.height, yuv.width)
    data = frame.data
    if data.dtype == np.uint16:
        data = (data >> 8).astype(np.uint8)
    yuv = cv2.cvtColor(data, cv2.COLOR_RGB2YUV)
    return yuv[..., 1], yuv[..., 2]


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
                filters, crop_of=None) -> float:
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
    crop = diff[iy0:iy1, ix0:ix1] if crop_of is None else crop_of(iy0, iy1, ix0, ix1)
    return max(float(out[oy0:oy1, ox0:ox1].max()) for out in filters(crop))


_TILE = 64  # tile size for finding where thin windows can reach line_threshold; a multiple of 8


def _tile_mask(shape: tuple[int, int]) -> np.ndarray:
    """A zeroed scratch buffer for `line_reaches`, padded to whole tiles."""
    return np.zeros((-(-shape[0] // _TILE) * _TILE, -(-shape[1] // _TILE) * _TILE), np.uint8)


def line_reaches(diff: np.ndarray, length: int, threshold: float,
                 mask: np.ndarray | None = None, crop_of=None, sums=None,
                 where: list | None = None) -> bool:
    """Whether `line_difference` of two images with absdiff `diff` is >= `threshold`.

    The same answer, much cheaper: a window whose pixels are all under `threshold` has a mean
    under it, so the box sums are computed only around the 64×64 tiles holding a pixel that
    reaches it (codec noise leaves few: 0–1,700 of 2 M pixels at 1080p), and stop at the first
    window that reaches it. `mask`: scratch from `_tile_mask(diff.shape)`, kept between calls.
    `crop_of(y0, y1, x0, x1)`: the image whose windows are judged, on that region, when it is
    not `diff` itself but never larger than it (dedup's excess difference): `diff` then only
    says where that image cannot reach the threshold. `sums(crop)`: the thin-window sums of
    what `crop_of` returns, when they are not `_line_sums` of it (the signed test), each never
    above the sum of `diff` over the same window. `where`: a list; the region (y0, y1, x0, x1)
    whose windows reached the threshold is appended to it.
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

    if sums is None:
        def sums(crop: np.ndarray) -> list[np.ndarray]:
            return _line_sums(crop, length)

    for ty in np.flatnonzero(tiles.any(axis=1)):
        # runs of adjacent hot tiles in this row of tiles, each one crop
        edges = np.flatnonzero(np.diff(tiles[ty], prepend=False, append=False))
        y0, y1 = ty * _TILE, min(h, (ty + 1) * _TILE)
        for start, stop in zip(edges[::2], edges[1::2]):
            x0, x1 = start * _TILE, min(w, stop * _TILE)
            if _region_max(diff, y0, y1, x0, x1, length, sums, crop_of) / (2 * length) >= threshold:
                if where is not None:
                    where.append((y0, y1, x0, x1))
                return True
    return False


SIGNED_SHARE = 2 / 3  # signed thin-window threshold, as a share of the line threshold
TONE_THRESHOLD = 1.0    # |shift of the frame's mean luma| that is a fade, not codec noise
COLOUR_THRESHOLD = 6.0  # largest mean |chroma difference| over a window: a change of colour
RINGING_GAIN = 0.15  # codec ringing along a shared edge, per unit of its contrast (see above)
EDGE_RANGE = 32       # a pixel is on a strong edge when its 3×3 range (max − min) reaches this
EDGE_PIXELS = 256     # fewer strong-edge pixels than this: too few to estimate noise, N = 0
NOISE_QUANTILE = 90   # percentile of the excess on strong edges: robust to a change on a few
_NOISE_BINS = 512     # histogram of N in steps of 1/16 (bounded memory, for the report)
_KERNEL = np.ones((3, 3), np.uint8)


def local_range(y: np.ndarray, dst: np.ndarray | None = None) -> np.ndarray:
    """Each pixel's 3×3 max − min: the contrast of the edge it sits on (0 in flat areas)."""
    return cv2.morphologyEx(y, cv2.MORPH_GRADIENT, _KERNEL, dst=dst)


def ringing_gain(width: int, analysis_width: int = 960) -> float:
    """RINGING_GAIN from twice the analysis width up, none up to it, linear between
    (module docstring)."""
    return RINGING_GAIN * min(1.0, max(0.0, width / analysis_width - 1))


def _excess(a: np.ndarray, b: np.ndarray, shared: np.ndarray, gain: float,
            dst: np.ndarray | None = None, scratch: np.ndarray | None = None) -> np.ndarray:
    diff = cv2.absdiff(a, b, dst=dst)
    if gain <= 0:
        return diff
    return cv2.subtract(diff, cv2.convertScaleAbs(shared, dst=scratch, alpha=gain), dst=diff)


def _edge_noise(excess: np.ndarray, shared: np.ndarray, scratch: np.ndarray | None = None) -> float:
    edges = cv2.threshold(shared, EDGE_RANGE - 1, 255, cv2.THRESH_BINARY, dst=scratch)[1]
    hist = cv2.calcHist([excess], [0], edges, [256], [0, 256]).ravel()
    n = int(hist.sum())
    if n < EDGE_PIXELS:
        return 0.0
    k = (n - 1) * NOISE_QUANTILE // 100  # the k-th smallest value, from the histogram
    return float(np.searchsorted(np.cumsum(hist), k + 1))


def _signed_excess(a: np.ndarray, b: np.ndarray, shared: np.ndarray, gain: float) -> np.ndarray:
    """sign(b − a) · max(0, |b − a| − gain · shared), int16 (saturating uint8 steps)."""
    up, down = cv2.subtract(b, a), cv2.subtract(a, b)  # one of the two is 0 at each pixel
    if gain > 0:
        discount = cv2.convertScaleAbs(shared, alpha=gain)
        up, down = cv2.subtract(up, discount), cv2.subtract(down, discount)
    return cv2.subtract(up, down, dtype=cv2.CV_16S)


def _signed_sums(signed: np.ndarray, length: int) -> list[np.ndarray]:
    # |sum| of the signed excess over each thin window; float32 sums of integers < 2^24: exact
    return [np.abs(cv2.boxFilter(signed, cv2.CV_32F, size, normalize=False,
                                 borderType=cv2.BORDER_REFLECT))
            for size in ((2, length), (length, 2))]


def signed_line_difference(a: np.ndarray, b: np.ndarray, range_a: np.ndarray,
                           range_b: np.ndarray, length: int, gain: float = RINGING_GAIN) -> float:
    """Largest |mean| over any 2×`length` or `length`×2 window of the signed excess
    difference (module docstring): codec noise whose sign alternates cancels, a streak does not."""
    signed = _signed_excess(a, b, cv2.min(range_a, range_b), gain)
    return max(float(s.max()) for s in _signed_sums(signed, length)) / (2 * length)


def excess_difference(a: np.ndarray, b: np.ndarray, range_a: np.ndarray, range_b: np.ndarray,
                      gain: float = RINGING_GAIN, dst: np.ndarray | None = None) -> np.ndarray:
    """max(0, |a − b| − gain · min(range_a, range_b)), uint8 (module docstring)."""
    return _excess(a, b, cv2.min(range_a, range_b), gain, dst)


def edge_noise(excess: np.ndarray, range_a: np.ndarray, range_b: np.ndarray) -> float:
    """The pair's noise level N: a high percentile of the excess on strong shared edges."""
    return _edge_noise(excess, cv2.min(range_a, range_b))


@register_stage("dedup")
class Dedup(MapStage):
    """Mark exact (xxh3) and near (block-wise, then edge-discounted thin-window luma, with
    tone and colour guards) duplicates; report each pair's edge noise."""

    needs_order = True  # compares each frame with the last unique one before it
    counted = ("unique", "exact_duplicates", "near_duplicates")

    def __init__(self, caution: float = 1.0, threshold: float | None = None, block: int = 16,
                 max_run: int = 12, analysis_width: int = 960, line_threshold: float | None = None,
                 line_length: int = 12, tone_threshold: float | None = None,
                 colour_threshold: float | None = None):
        super().__init__()
        if not 0.1 <= caution <= 10:
            raise ValueError(f"caution must be between 0.1 and 10, got {caution}")
        if threshold is not None and not 0 <= threshold <= 255:  # a mean difference of 8-bit luma
            raise ValueError(f"threshold must be between 0 and 255, got {threshold}")
        if not 2 <= block <= 256:  # beyond a few hundred pixels a window is the whole frame, slowly
            raise ValueError(f"block must be between 2 and 256, got {block}")
        if not 1 <= max_run <= 1000:
            raise ValueError(f"max_run must be between 1 and 1000, got {max_run}")
        if analysis_width < 16:
            raise ValueError(f"analysis_width must be >= 16, got {analysis_width}")
        if line_threshold is not None and not 0 <= line_threshold <= 256:  # 256: that test off
            raise ValueError(f"line_threshold must be between 0 and 256, got {line_threshold}")
        if not 2 <= line_length <= 128:  # the thin-window sums are uint16 (see _line_sums)
            raise ValueError(f"line_length must be between 2 and 128, got {line_length}")
        for name, value in (("tone_threshold", tone_threshold), ("colour_threshold", colour_threshold)):
            if value is not None and not 0 <= value <= 256:  # 256: that guard off
                raise ValueError(f"{name} must be between 0 and 256, got {value}")
        self.caution = caution
        self.threshold = threshold if threshold is not None else 4.0 / caution
        self.tone_threshold = tone_threshold if tone_threshold is not None else TONE_THRESHOLD / caution
        self.colour_threshold = colour_threshold if colour_threshold is not None else COLOUR_THRESHOLD / caution
        self.fixed_line_threshold = line_threshold
        self.block, self.max_run = block, max_run
        self.dup_run = max_run  # tells the runner how far duplicates may overtake
        self.analysis_width = analysis_width
        self.line_length = line_length
        self._ref_seq: int | None = None
        self._ref_hash = 0
        self._ref_luma: np.ndarray | None = None  # analysis size
        self._ref_full: np.ndarray | None = None  # full resolution, for the thin-window test
        self._ref_chroma: list[np.ndarray] | None = None  # analysis size (`colour_analysis`)
        self._run = 0
        self._diff_small: np.ndarray | None = None  # scratch, reused: no per-frame allocations
        self._diff_full: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        self._noise = np.zeros(_NOISE_BINS, np.int64)  # histogram of N over tested pairs

    @property
    def line_threshold(self) -> float:
        """The thin-window threshold (explicit, else 4.5 / caution)."""
        if self.fixed_line_threshold is not None:
            return self.fixed_line_threshold
        return 4.5 / self.caution

    @property
    def signed_line_threshold(self) -> float:
        """The signed thin-window threshold: SIGNED_SHARE × the line threshold."""
        return SIGNED_SHARE * self.line_threshold

    def _narrowed(self, plane: np.ndarray) -> np.ndarray:
        """`plane` no wider than `analysis_width` (area filter: averages away some codec noise)."""
        h, w = plane.shape
        if w <= self.analysis_width:
            return plane
        scale = self.analysis_width / w
        return cv2.resize(plane, (self.analysis_width, max(1, round(h * scale))), interpolation=cv2.INTER_AREA)

    def analysis(self, y: np.ndarray) -> tuple[np.ndarray, int]:
        """Luma at analysis size and the matching block."""
        w = y.shape[1]
        if w > self.analysis_width:
            return self._narrowed(y), max(2, round(self.block * (self.analysis_width / w)))
        return y, self.block

    def colour_analysis(self, planes: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
        """The chroma planes no wider than `analysis_width` (as the luma for test 1)."""
        return [self._narrowed(c) for c in planes]

    @staticmethod
    def colour_window(small: np.ndarray, block: int, plane: np.ndarray) -> tuple[int, int]:
        """The chroma window (width, height) over the picture area of test 1's luma window."""
        return (max(2, round(block * plane.shape[1] / small.shape[1])),
                max(2, round(block * plane.shape[0] / small.shape[0])))

    def colour_difference(self, small: np.ndarray, block: int, planes: list[np.ndarray],
                          reference: list[np.ndarray]) -> float:
        """Largest mean |chroma difference| over a window of either chroma plane (0..255)."""
        return max(float(cv2.boxFilter(cv2.absdiff(a, b), cv2.CV_32F, self.colour_window(small, block, a),
                                       normalize=True, borderType=cv2.BORDER_REFLECT).max())
                   for a, b in zip(planes, reference))

    @staticmethod
    def tone_difference(small: np.ndarray, reference: np.ndarray) -> float:
        """|Shift of the mean luma| between the two frames (analysis size, 0..255)."""
        return abs(cv2.mean(small)[0] - cv2.mean(reference)[0])

    def scores(self, small: np.ndarray, reference: np.ndarray, block: int,
               full: np.ndarray, full_reference: np.ndarray, colour=None,
               colour_reference=None) -> dict[str, float]:
        """The statistics that decide near-duplicates, on whole images: `block` (test 1),
        `tone` and, given both frames' `colour_analysis` planes, `colour` (the guards), `line`
        and `signed` (test 2's excess statistic and its signed alternative) and `noise` (N,
        reported only)."""
        ra, rb, gain = local_range(full_reference), local_range(full), \
            ringing_gain(full.shape[1], self.analysis_width)
        excess = excess_difference(full_reference, full, ra, rb, gain)
        out = {"block": block_difference(small, reference, block),
               "tone": self.tone_difference(small, reference),
               "line": line_difference(excess, np.zeros_like(excess), self.line_length),
               "signed": signed_line_difference(full_reference, full, ra, rb, self.line_length, gain),
               "noise": self.noise(small, reference)}
        if colour is not None and colour_reference is not None:
            out["colour"] = self.colour_difference(small, block, colour, colour_reference)
        return out

    def near_by_scores(self, s: dict[str, float]) -> bool:
        """The rule of the module docstring on `scores`' statistics (a guard whose statistic
        is missing, as in the luma-only tools, passes)."""
        return (s["block"] < self.threshold and s.get("tone", 0.0) < self.tone_threshold
                and s.get("colour", 0.0) < self.colour_threshold
                and (s["line"] < self.line_threshold or s["signed"] < self.signed_line_threshold))

    @staticmethod
    def noise(small: np.ndarray, reference: np.ndarray) -> float:
        """N of the module docstring (analysis-size lumas; report only)."""
        ra, rb = local_range(reference), local_range(small)
        return edge_noise(cv2.absdiff(reference, small), ra, rb)

    def _is_near(self, small: np.ndarray, block: int, full: np.ndarray,
                 colour: list[np.ndarray] | None = None) -> bool:
        """The tests of the module docstring: the same decisions as `scores` against the
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
        # the guards last: only the few frames both luma tests pass pay for them
        return self._luma_near(small, full) and self._guards_pass(small, block, colour)

    def _guards_pass(self, small: np.ndarray, block: int, colour: list[np.ndarray] | None) -> bool:
        """Test 1 lets a fade through a level at a time, and a change of colour alone."""
        if self.tone_difference(small, self._ref_luma) >= self.tone_threshold:
            return False
        return colour is None or self._ref_chroma is None or \
            [c.shape for c in colour] != [c.shape for c in self._ref_chroma] or \
            self.colour_difference(small, block, colour, self._ref_chroma) < self.colour_threshold

    def _luma_near(self, small: np.ndarray, full: np.ndarray) -> bool:
        """Test 2, for a frame that passed test 1."""
        # Only candidates pay for the full-resolution test (most changes fail the first one).
        self._noise[min(_NOISE_BINS - 1, int(self.noise(small, self._ref_luma) * 16))] += 1
        if self._diff_full is None or self._diff_full.shape != full.shape:
            self._diff_full = np.empty_like(full)
            self._mask = _tile_mask(full.shape)
        diff = cv2.absdiff(full, self._ref_full, dst=self._diff_full)
        gain = ringing_gain(full.shape[1], self.analysis_width)
        ref = self._ref_full
        h, w = full.shape

        def shared(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            # the 3×3 ranges need one pixel more on each side (inside the image) to be exact
            ey0, ey1, ex0, ex1 = max(0, y0 - 1), min(h, y1 + 1), max(0, x0 - 1), min(w, x1 + 1)
            both = cv2.min(local_range(ref[ey0:ey1, ex0:ex1]), local_range(full[ey0:ey1, ex0:ex1]))
            return both[y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0]

        def excess(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            return _excess(ref[y0:y1, x0:x1], full[y0:y1, x0:x1], shared(y0, y1, x0, x1), gain)

        # the excess is never above the plain difference: its hot tiles say where to look
        hit: list = []
        if not line_reaches(diff, self.line_length, self.line_threshold, self._mask,
                            excess if gain > 0 else None, where=hit):
            return True

        def signed(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            part = shared(y0, y1, x0, x1) if gain > 0 else None
            return _signed_excess(ref[y0:y1, x0:x1], full[y0:y1, x0:x1], part, gain)

        def signed_sums(crop: np.ndarray) -> list[np.ndarray]:
            return _signed_sums(crop, self.line_length)

        # A real change is usually of one sign where the unsigned test found it: look there
        # first (a subset of the windows below, so the same answer), then everywhere it can be:
        # |sum of the signed excess| <= sum of the excess <= sum of the plain difference.
        if hit and _region_max(diff, *hit[0], self.line_length, signed_sums, signed) \
                / (2 * self.line_length) >= self.signed_line_threshold:
            return False
        return not line_reaches(diff, self.line_length, self.signed_line_threshold, self._mask,
                                signed, signed_sums)

    def noise_summary(self) -> dict[str, float | int]:
        """The estimated noise N over the pairs tested so far (histogram, 1/16 steps)."""
        n = int(self._noise.sum())
        if not n:  # the same keys, so that a script reading them needs no special case
            return {"pairs": 0, "median": None, "p90": None, "max": None}
        cum = np.cumsum(self._noise)
        at = lambda q: float(np.searchsorted(cum, q * n)) / 16  # noqa: E731
        return {"pairs": n, "median": at(0.5), "p90": at(0.9),
                "max": float(np.flatnonzero(self._noise)[-1]) / 16}

    def describe(self) -> dict:
        return {"caution": self.caution, "threshold": round(self.threshold, 4),
                "tone_threshold": round(self.tone_threshold, 4),
                "colour_threshold": round(self.colour_threshold, 4),
                "line_threshold": round(self.line_threshold, 4),
                "signed_line_threshold": round(self.signed_line_threshold, 4),
                "noise": self.noise_summary()}

    @property
    def reference(self) -> int | None:
        """The seq of the last unique frame: what the duplicates since are duplicates of."""
        return self._ref_seq

    def _keep_colour(self, planes: list[np.ndarray] | None) -> None:
        """Copy the new reference's chroma into buffers kept between frames (as its luma)."""
        if planes is None:
            self._ref_chroma = None
            return
        if self._ref_chroma is None or [c.shape for c in self._ref_chroma] != [c.shape for c in planes]:
            self._ref_chroma = [np.empty_like(c) for c in planes]
        for kept, c in zip(self._ref_chroma, planes):
            np.copyto(kept, c)

    def judge(self, seq: int, digest: int, full: np.ndarray,
              colour: tuple[np.ndarray, np.ndarray] | None = None) -> str | None:
        """The decision for one frame, in order: "exact_duplicates" / "near_duplicates" of the
        reference, or None (unique: it becomes the reference). `digest`: `content_hash`;
        `full`: its luma (`luma`); `colour`: its chroma planes (`chroma`; None: no colour
        guard, as in tools/label_transitions.py, which replays this on lumas)."""
        small, block = self.analysis(full)
        planes = self.colour_analysis(colour) if colour is not None else None
        kind = None
        if self._ref_seq is not None and self._run < self.max_run:
            if digest == self._ref_hash:
                kind = "exact_duplicates"
            elif self._is_near(small, block, full, planes):
                kind = "near_duplicates"
        if kind is None:
            self._keep_colour(planes)
            # Copies: `full` (and `small` when not resized) view the decoder's buffer, which
            # later stages may change or free. The buffer is reused: a fresh 2 MB allocation
            # per frame costs more in page faults than the comparison itself.
            if self._ref_full is None or self._ref_full.shape != full.shape:
                self._ref_full = np.empty_like(full)
            np.copyto(self._ref_full, full)
            self._ref_luma = self._ref_full if small is full else small
            self._ref_seq, self._ref_hash, self._run = seq, digest, 0
            return None
        self._run += 1
        return kind

    def process(self, frame: Frame) -> Frame:
        before = self.reference
        kind = self.judge(frame.seq, content_hash(frame), luma(frame), chroma(frame))
        if kind is None:
            self.count("unique")
            # later stages that sample every k-th frame by seq (text-detect) see unique frames only:
            # the unique frame before this one tells them where the last sample could have been
            frame.meta["unique_before"] = before
            return frame
        self.count(kind)
        frame.meta["dup_of"] = self.reference
        frame.meta["dup_kind"] = kind  # a segment's sink counts its own frames by it (resume report)
        frame.drop_pixels()  # it will show its reference's result; free the decoder buffer now
        return frame
