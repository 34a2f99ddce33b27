"""`inpaint`: fill each frame's `meta["text_mask"]` from other frames, then spatially.

A window stage: every frame sees `radius` (12) frames on each side. A window without any mask
is passed through at once (no flow, no copies). For a frame with a mask:

1. **Flow.** OpenCV DIS optical flow between consecutive frames, on the rows and columns the
   window's masks touch (plus a margin), scaled as a frame at most `flow_height` (360) px high
   would be and at most `flow_width` px wide (a 720p crop's flow runs at half size, vectors
   scaled back). Flow under a mask is the text's, not the background's, so there it is
   replaced by a smooth fill from around the mask (normalised box filters), and the frames are
   smoothed there before DIS runs. Flows are cached between windows.
2. **Propagation.** Flows are chained outwards, up to `radius` frames each way; every frame up
   to `dense` (4) away is a source, beyond that every second one (the chain goes on through
   all). A source pixel is taken only where all hold:
   - it is inside the frame and outside the source's own mask, less that mask's safety margin
     (`meta["text_mask_margin"]`, text-mask's `dilate`: the edge beyond the strokes and their
     grown soft edge, where the source shows background; without one, the mask grown by
     `SOURCE_GUARD` px). The margin is there so the frame being filled loses no text edge; for
     a source it would only hide background: trusting it took the moving bench from 23.16 to
     23.87 dB (README "Quality against ground truth"). The margin is taken off with the element
     that grew it (`disc`), and a sample is taken only if its bilinear warp reads no guarded
     pixel: a stroke next to it would blend in;
   - forward-backward consistency: every step of the chain passes |F + B∘F| < `consistency`
     px + 5 % of the motion (Sundaram et al.'s occlusion test);
   - photometric check: outside the mask, the warped source must match the target; the
     mean error on a ring around the mask, spread over the mask by a normalised box filter,
     must stay under `photometric` (0..255). `colour_match=true` first removes the local mean
     colour offset measured on that ring (exposure changes; off: it measured neutral here).
   Accepted sources are averaged, weighted by 1 / their distance in frames. A direction stops
   as soon as its chain is inconsistent everywhere under the mask. Full-resolution work
   (warps, checks) runs on the frame's own hole and ring only, not the window's crop.
3. **Memory.** What the window could not give is taken from the previous frame's fill
   (before feathering) warped along the flow t→t-1 — only where that pixel is genuine
   background (decoded outside its mask, or itself propagated or remembered inside it: a
   validity map kept with it), the flow is consistent and the ring around the mask matches
   (the photometric check). One frame's fill, its validity and crop box are all it keeps
   (flat memory), yet background seen any number of frames before (a caption fades in over a
   background already in view) keeps coming forward, one frame at a time. `carry=linear`
   warps bilinearly; `carry=nearest` takes the nearest pixel and keeps each pixel's sub-pixel
   residual, so nothing blurs over many frames (sharper with exact flow; on the hand-held clip
   linear averages flow noise and wins). It starts empty at a segment's start and after a
   frame without mask (the window has that frame itself), and no flow, source or memory
   crosses a scene cut (`meta["scene_cut"]` set upstream, or a mean absolute luma difference
   of 32×18 thumbnails above 30: text-mask's default test, here on the RGB frames' luma, so
   the two stages can disagree on a borderline cut). `memory=false`: the window only. In
   `--resume` / `--ray` segments the memory starts empty at each segment's first context
   frame, so inside a caption that spans a segment boundary the fill differs from a single
   pass (tested: a segment's first frame fills as the window alone would).
4. **Spatial fill.** What is still unknown is filled by `cv2.inpaint` (`method` ns or telea)
   at the flow's resolution (its cost grows with hole pixels × radius²; the fill is smooth)
   from everything around it, the propagated pixels included, then blended (`recurrent`, 0.6)
   with the previous output frame warped along the flow, where the flow is consistent: a
   spatial fill on its own changes from frame to frame (flicker).
5. **Composite.** Only inside the mask, feathered over `feather` px inward from its edge.
   Every pixel outside the mask is the decoded pixel, bit for bit.

`propagate=false` leaves step 4 alone: the Telea / NS baselines of the benchmark.

A learned image inpainter can replace step 4 (`filler=/path/model.onnx`, see
`stages/inpaint_onnx.py`): it then fills what propagation left.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import cv2
import numpy as np

from engine.frame import Frame
from engine.registry import register_stage
from engine.stage import StageContext, WindowStage

MARGIN = 24  # px around the masks' bounding box: context for flow, the ring and spatial fill
RING = 6     # px: width of the ring outside a mask where the photometric check is measured
SOURCE_GUARD = 2  # px: a source pixel this close to the source's own mask is not trusted


def _gray(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype == np.uint16:
        rgb = (rgb >> 8).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))


def smooth_fill(values: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Replace `values` (H×W or H×W×C float32) inside `hole` (uint8, nonzero = unknown) by a
    smooth fill from around it: normalised box filters, the smallest that reaches known values.
    (cv2.inpaint on flow costs ten times more and gave no better propagation.)"""
    if not hole.any():
        return values
    known = (hole == 0).astype(np.float32)
    weighted = values * (known[..., None] if values.ndim == 3 else known)
    out = values.copy()
    todo = hole > 0
    for size in (9, 33, 129, 513):
        den = cv2.boxFilter(known, -1, (size, size), normalize=False, borderType=cv2.BORDER_CONSTANT)
        num = cv2.boxFilter(weighted, -1, (size, size), normalize=False, borderType=cv2.BORDER_CONSTANT)
        take = todo & (den > 0.5)
        out[take] = (num[take] / (den[take][:, None] if values.ndim == 3 else den[take]))
        todo &= ~take
        if not todo.any():
            break
    out[todo] = 0
    return out


def feather_alpha(mask: np.ndarray, feather: int) -> np.ndarray:
    """1 deep inside the mask, ramping down over `feather` px towards its edge, 0 outside."""
    inside = (mask > 0).astype(np.uint8)
    if feather <= 0:
        return inside.astype(np.float32)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    return np.minimum(dist / feather, 1.0).astype(np.float32)


def spatial_fill(image: np.ndarray, hole: np.ndarray, method: str, radius: int = 5) -> np.ndarray:
    """cv2.inpaint, also for uint16 images (one channel at a time: OpenCV takes 16-bit only so)."""
    flag = cv2.INPAINT_NS if method == "ns" else cv2.INPAINT_TELEA
    if image.dtype == np.uint8:
        return cv2.inpaint(image, hole, radius, flag)
    return np.dstack([cv2.inpaint(np.ascontiguousarray(image[..., c]), hole, radius, flag)
                      for c in range(image.shape[2])])


def composite(original: np.ndarray, filled: np.ndarray, mask: np.ndarray, feather: int) -> np.ndarray:
    """`filled` inside the mask (feathered at its edge), `original` exactly everywhere else."""
    out = original.copy()
    inside = mask > 0
    alpha = feather_alpha(mask, feather)[inside][:, None]
    blend = alpha * filled[inside].astype(np.float32) + (1 - alpha) * original[inside].astype(np.float32)
    out[inside] = np.clip(np.rint(blend), 0, np.iinfo(original.dtype).max).astype(original.dtype)
    return out


def bounds(masks: list[np.ndarray | None]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the nonzero pixels of all `masks` (None = empty), as plain ints;
    cv2.boundingRect per mask (a full-frame union and np.nonzero cost ten times more)."""
    rects = [cv2.boundingRect(m) for m in masks if m is not None]
    rects = [(y, y + h, x, x + w) for x, y, w, h in rects if w and h]
    if not rects:
        raise ValueError("no mask has any pixel set")
    return (min(r[0] for r in rects), max(r[1] for r in rects), min(r[2] for r in rects), max(r[3] for r in rects))


def disc(px: int) -> np.ndarray:
    """The (2·px+1)² elliptical structuring element: text-mask grows masks with it, and inpaint
    takes a margin off with the same one (an erosion by another shape would take more)."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))


THUMB = (32, 18)  # the scene-cut test's thumbnail size (text-mask's too)
CUT_THRESHOLD = 30.0  # mean absolute luma difference of THUMB thumbnails: text-mask's default


def thumbnail(image: np.ndarray) -> np.ndarray:
    """The whole frame's THUMB luma thumbnail (0..255 float32), for the scene-cut test."""
    return _gray(cv2.resize(image, THUMB, interpolation=cv2.INTER_AREA)).astype(np.float32)


def _sub_crop(hole: np.ndarray, crop: "_Crop"):
    """The part of the crop around `hole` (its bounding box + the ring), as slices, its
    full-resolution pixel grid and where those pixels sit in the flow-resolution crop."""
    bx, by, bw, bh = cv2.boundingRect(hole.astype(np.uint8))
    sy0, sy1 = max(0, by - RING - 1), min(crop.h, by + bh + RING + 1)
    sx0, sx1 = max(0, bx - RING - 1), min(crop.w, bx + bw + RING + 1)
    fx, fy = np.meshgrid(np.arange(sx0, sx1, dtype=np.float32), np.arange(sy0, sy1, dtype=np.float32))
    # cv2.resize's pixel centres
    ux, uy = (fx + 0.5) * (crop.fw / crop.w) - 0.5, (fy + 0.5) * (crop.fh / crop.h) - 0.5
    return (slice(sy0, sy1), slice(sx0, sx1)), fx, fy, ux, uy


def ring_and_reach(hole: np.ndarray) -> tuple[np.ndarray, int]:
    """The RING px outside `hole` (bool) where the photometric check is measured, and the box
    size that reaches that ring from anywhere inside the hole."""
    ring = (cv2.dilate(hole.astype(np.uint8), np.ones((2 * RING + 1,) * 2, np.uint8)) > 0) & ~hole
    depth = float(cv2.distanceTransform(hole.astype(np.uint8), cv2.DIST_L2, 3).max())
    return ring, 2 * int(depth + RING) + 1


class _Crop:
    """The part of a window's frames that any mask touches, with the flow-resolution view of it:
    at most `flow_width` px wide, and scaled as a frame at most `flow_height` px high would be."""

    def __init__(self, masks: list[np.ndarray | None], height: int, width: int, flow_width: int,
                 flow_height: int = 8192):
        y0, y1, x0, x1 = bounds(masks)
        # plain ints: a NumPy scalar here would turn the flow float64 (NEP 50) and cv2.remap refuses it
        self.y0, self.y1 = max(0, y0 - MARGIN), min(height, y1 + MARGIN)
        self.x0, self.x1 = max(0, x0 - MARGIN), min(width, x1 + MARGIN)
        self.h, self.w = self.y1 - self.y0, self.x1 - self.x0
        self.scale = min(1.0, flow_width / self.w, flow_height / height)
        self.fh, self.fw = max(8, round(self.h * self.scale)), max(8, round(self.w * self.scale))
        self.key = (self.y0, self.y1, self.x0, self.x1, self.fw, self.fh)

    def cut(self, image: np.ndarray) -> np.ndarray:
        return image[self.y0:self.y1, self.x0:self.x1]

    def small(self, image: np.ndarray, interpolation=cv2.INTER_AREA) -> np.ndarray:
        if self.scale == 1.0:
            return image
        return cv2.resize(image, (self.fw, self.fh), interpolation=interpolation)

    def full_mask(self, mask: np.ndarray) -> np.ndarray:
        if self.scale == 1.0:
            return mask
        return cv2.resize(mask, (self.w, self.h), interpolation=cv2.INTER_NEAREST)

    def sub_flow(self, flow: np.ndarray, ok: np.ndarray, sub: tuple, ux: np.ndarray,
                 uy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A flow-resolution flow and its consistency on the full-resolution sub-crop `sub`
        (`_sub_crop`'s slices and sample points), vectors scaled: upsampled for it only."""
        if self.scale == 1.0:
            return flow[sub], ok[sub]
        return (cv2.remap(flow, ux, uy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) / self.scale,
                cv2.remap(ok, ux, uy, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE))

    def full_flow(self, flow: np.ndarray) -> np.ndarray:
        if self.scale == 1.0:
            return flow
        return cv2.resize(flow, (self.w, self.h), interpolation=cv2.INTER_LINEAR) / self.scale


@register_stage("inpaint")
class Inpaint(WindowStage):
    """Fill text masks from neighbouring frames along DIS optical flow, the rest spatially."""

    requires = ("text_mask",)
    counted = ("text_frames", "filled_pixels", "propagated_pixels", "remembered_pixels")

    def __init__(self, radius: int = 12, method: Literal["ns", "telea"] = "ns", propagate: bool = True,
                 feather: int = 3, consistency: float = 1.5, photometric: float = 4.0,
                 flow_width: int = 960, flow_preset: Literal["ultrafast", "fast", "medium"] = "fast",
                 flow_height: int = 360, recurrent: float = 0.6, colour_match: bool = False, dense: int = 4,
                 memory: bool = True, carry: Literal["linear", "nearest"] = "linear", filler: str = "",
                 window_size: int = 0):
        if not 1 <= radius <= 30:
            raise ValueError(f"radius must be between 1 and 30 frames, got {radius}")
        if not 0 <= feather <= 50:
            raise ValueError(f"feather must be between 0 and 50 px, got {feather}")
        if consistency <= 0 or not 0 < photometric <= 255:
            raise ValueError("consistency must be > 0 px and photometric in (0, 255]")
        if not 0 <= recurrent < 1:
            raise ValueError(f"recurrent must be in [0, 1), got {recurrent}")
        if not 64 <= flow_width <= 8192:
            raise ValueError(f"flow_width must be between 64 and 8192, got {flow_width}")
        if not 64 <= flow_height <= 8192:
            raise ValueError(f"flow_height must be between 64 and 8192, got {flow_height}")
        # (flow_width/flow_height also size the spatial fill's crop: they count without propagation)
        given = dict(radius=radius, consistency=consistency, photometric=photometric, flow_preset=flow_preset,
                     recurrent=recurrent, colour_match=colour_match, dense=dense, memory=memory, carry=carry)
        defaults = {k: v.default for k, v in inspect.signature(Inpaint.__init__).parameters.items()}
        unused = [k for k, v in given.items() if v != defaults[k]]
        if not propagate and unused:  # each was accepted and ignored without a word
            raise ValueError(f"{', '.join(unused)} {'applies' if len(unused) == 1 else 'apply'} only with "
                             f"propagate=true")
        if filler and method != defaults["method"]:
            raise ValueError("method is the spatial fill's; with filler= the model fills what propagation leaves")
        overlap = radius if propagate else 0
        super().__init__(window_size=window_size or max(2 * overlap + 8, 2 * overlap + 1), overlap=overlap)
        self.radius, self.method, self.propagate = radius, method, propagate
        self.feather, self.consistency, self.photometric = feather, consistency, photometric
        self.flow_width, self.flow_height = flow_width, flow_height
        self.flow_preset, self.recurrent, self.colour_match = flow_preset, recurrent, colour_match
        if not 1 <= dense <= 30:
            raise ValueError(f"dense must be between 1 and 30 frames, got {dense}")
        self.dense, self.memory, self.carry = dense, memory, carry
        # (seq, output, memory) of the last filled frame; memory (None when off): its crop box,
        # and on it the fill before feathering, where that is genuine background (uint8: decoded,
        # propagated or remembered; 0 = filled spatially) and remembered pixels' residuals (px)
        self._previous: tuple[int, np.ndarray, tuple | None] | None = None
        self.filler_path = filler
        if filler:
            from stages.inpaint_onnx import check_filler
            check_filler(filler)
        self.filler = None
        self._dis = None
        self._emitted = -1  # highest seq a window has emitted (filled) so far
        self._flows: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # (seq_a, seq_b, crop) → (flow, consistent)
        self._guards: dict[tuple, np.ndarray] = {}  # (seq, crop) → grown source mask
        self._thumbs: dict[int, np.ndarray] = {}  # seq → thumbnail (scene cuts)

    def weight_files(self) -> list[str]:
        return [self.filler_path] if self.filler_path else []

    def open(self, ctx: StageContext) -> None:
        preset = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                  "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}[self.flow_preset]
        self._dis = cv2.DISOpticalFlow_create(preset)
        if self.filler_path:
            from stages.inpaint_onnx import OnnxImageFiller
            self.filler = OnnxImageFiller(self.filler_path)

    # ---- the window -----------------------------------------------------------------------

    def process_window(self, frames: list[Frame]) -> list[np.ndarray]:
        images = [f.data for f in frames]
        masks = [f.meta.get("text_mask") for f in frames]
        live = {f.seq for f in frames}
        self._flows = {k: v for k, v in self._flows.items() if k[0] in live and k[1] in live}
        self._guards = {k: v for k, v in self._guards.items() if k[0] in live}
        self._thumbs = {k: v for k, v in self._thumbs.items() if k in live}
        # Fill only the frames this window emits (engine/stage.py): those not emitted by an
        # earlier window, and not the trailing context, which the next window emits — unless
        # this is the last window, which the runner always gives fewer than window_size frames.
        last = len(frames) if len(frames) < self.window_size else len(frames) - self.overlap
        emitted, self._emitted = self._emitted, max(self._emitted, frames[last - 1].seq)
        if all(m is None for m in masks):
            return images
        h, w = images[0].shape[:2]
        crop = _Crop(masks, h, w, self.flow_width, self.flow_height) if self.propagate else None
        out = []
        for i, (image, mask) in enumerate(zip(images, masks)):
            owned = frames[i].seq > emitted and i < last
            if mask is None or not mask.any() or not owned:
                out.append(image)
                continue
            out.append(self._fill(i, frames, images, masks, crop))
        return out

    def _fill(self, t: int, frames: list[Frame], images: list[np.ndarray],
              masks: list[np.ndarray | None], crop: _Crop | None) -> np.ndarray:
        image, mask = images[t], masks[t]
        if crop is None:  # spatial only: on the mask's own bounding box plus a margin
            crop = _Crop([mask], *image.shape[:2], self.flow_width, self.flow_height)
        target = crop.cut(image)
        hole = crop.cut(mask) > 0
        filled = target.copy()
        todo = hole.copy()
        if self._previous is not None and (t == 0 or self._previous[0] != frames[t - 1].seq
                                           or self._cut(frames, images, t - 1, t)):
            # a segment's start, a frame after one without a mask (the window has that one as a
            # source), or a scene cut: nothing of the previous output may reach this frame
            self._previous = None
        if self.propagate:
            self._propagate(t, frames, images, masks, crop, target, hole, filled, todo)
        propagated = int(hole.sum() - todo.sum())
        offsets = np.zeros((crop.h, crop.w, 2), np.float32)  # sub-pixel residuals of remembered pixels
        if self.propagate and self.memory and todo.any():
            self._recall(t, frames, images, masks, crop, target, filled, todo, offsets)
        remembered = int(hole.sum() - todo.sum()) - propagated
        # what the next frame may remember: the fill before feathering (at the mask's edge the
        # composite mixes in the decoded pixel, text halo included), genuine where it is real
        memory = None
        if self.propagate and self.memory:
            memory = ((crop.y0, crop.y1, crop.x0, crop.x1), filled.copy(), (~todo).astype(np.uint8), offsets)
        if todo.any():
            todo8 = todo.astype(np.uint8) * 255
            if self.filler is not None:
                filled = self.filler(filled, todo8)
            else:
                filled = self._spatial(filled, todo8, crop)
            if self.propagate and self.recurrent:
                self._follow_previous(t, frames, images, masks, crop, filled, todo)
        self.count("text_frames")
        self.count("filled_pixels", int(hole.sum()))
        self.count("propagated_pixels", propagated)
        self.count("remembered_pixels", remembered)
        result = image.copy()
        result[crop.y0:crop.y1, crop.x0:crop.x1] = composite(target, filled, crop.cut(mask), self.feather)
        self._previous = (frames[t].seq, result, memory)
        return result

    def _spatial(self, filled: np.ndarray, todo8: np.ndarray, crop: _Crop) -> np.ndarray:
        """`spatial_fill` at the flow's resolution (its cost grows with the hole's pixels × the
        radius²; the fill is smooth, so a 720p crop filled at half size loses nothing visible):
        a small pixel is unknown if any pixel under it is, and only `todo8`'s pixels change."""
        if crop.scale == 1.0:
            return spatial_fill(filled, todo8, self.method)
        hole = (crop.small(todo8) > 0).astype(np.uint8) * 255
        small = spatial_fill(crop.small(filled), hole, self.method, max(2, int(5 * crop.scale + 0.5)))
        big = cv2.resize(small, (crop.w, crop.h), interpolation=cv2.INTER_LINEAR)
        out = filled.copy()
        out[todo8 > 0] = big[todo8 > 0]
        return out

    def _recall(self, t: int, frames: list[Frame], images: list[np.ndarray], masks: list, crop: _Crop,
                target: np.ndarray, filled: np.ndarray, todo: np.ndarray, offsets: np.ndarray) -> None:
        """Fill what the window could not from the memory of frames[t - 1] (kept by `_fill`),
        warped along the flow t→t-1: where its pixel is genuine background, the flow is
        consistent and the ring around the mask matches. Through this, background seen any
        number of frames before reaches the frame, one frame at a time.

        `carry=linear` warps bilinearly (it blurs a little more every frame, and averages flow
        noise); `carry=nearest` takes the nearest pixel and keeps each pixel's sub-pixel residual
        (where its colour truly sits, `offsets`, px) for the next step, so nothing blurs."""
        memory = self._previous  # frames[t - 1]'s (checked in _fill), or None
        if memory is None or memory[2] is None:
            return
        colour, known, residual = self._memory_view(memory[2], crop, images[t - 1])
        hole_crop = crop.cut(masks[t]) > 0
        sub, fx, fy, ux, uy = _sub_crop(hole_crop, crop)
        flow, ok_full = crop.sub_flow(*self._pair(frames, images, masks, crop, t, t - 1), sub, ux, uy)
        qx, qy = fx + flow[..., 0], fy + flow[..., 1]  # where each pixel sits in frames[t - 1]
        valid = (qx >= 0) & (qx <= crop.w - 1) & (qy >= 0) & (qy <= crop.h - 1) & (ok_full > 0)
        # the bilinear warp: the values (carry=linear), and the ring check (the decoded frame there)
        warped = cv2.remap(colour, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if self.carry == "nearest":
            # the carried pixel n whose colour truly sits nearest q: n + residual(n) ≈ q
            rx, ry = (np.clip(np.rint(q), 0, n - 1).astype(np.intp) for q, n in ((qx, crop.w), (qy, crop.h)))
            nx = np.clip(np.rint(qx - residual[ry, rx, 0]), 0, crop.w - 1).astype(np.intp)
            ny = np.clip(np.rint(qy - residual[ry, rx, 1]), 0, crop.h - 1).astype(np.intp)
            ex, ey = nx + residual[ny, nx, 0] - qx, ny + residual[ny, nx, 1] - qy
            valid &= (known[ny, nx] > 0) & (np.abs(ex) <= 1) & (np.abs(ey) <= 1)
            carried = colour[ny, nx]
        else:  # genuine only where all four pixels the bilinear sample reads are
            valid &= cv2.remap(known.astype(np.float32), qx, qy, cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0.999
            carried = warped
        ring, box = ring_and_reach(hole_crop[sub])
        matches, offset = self._photometric(warped, target[sub], ring & valid, box)
        take = valid & matches & todo[sub]
        if offset is not None:
            carried = np.clip(np.rint(carried + offset), 0, np.iinfo(filled.dtype).max).astype(filled.dtype)
        filled[sub][take] = carried[take]
        if self.carry == "nearest":
            offsets[sub][take] = np.stack([ex, ey], axis=-1)[take]
        todo[sub] &= ~take

    @staticmethod
    def _memory_view(memory: tuple, crop: _Crop, previous: np.ndarray) -> tuple[np.ndarray, ...]:
        """The memory on this window's crop: (colour, genuine, residual); beyond the remembered
        box, frames[t - 1] as decoded (genuine, no residual)."""
        (y0, y1, x0, x1), image, known, residual = memory
        colour = crop.cut(previous).copy()
        genuine = np.ones((crop.h, crop.w), np.uint8)
        carried = np.zeros((crop.h, crop.w, 2), np.float32)
        oy0, oy1, ox0, ox1 = max(y0, crop.y0), min(y1, crop.y1), max(x0, crop.x0), min(x1, crop.x1)
        if oy0 < oy1 and ox0 < ox1:
            dst = (slice(oy0 - crop.y0, oy1 - crop.y0), slice(ox0 - crop.x0, ox1 - crop.x0))
            src = (slice(oy0 - y0, oy1 - y0), slice(ox0 - x0, ox1 - x0))
            colour[dst], genuine[dst], carried[dst] = image[src], known[src], residual[src]
        return colour, genuine, carried

    def _follow_previous(self, t: int, frames: list[Frame], images: list[np.ndarray], masks: list,
                         crop: _Crop, filled: np.ndarray, todo: np.ndarray) -> None:
        """Blend what no frame could give with the previous output warped along the flow, so a
        spatial fill does not flicker from frame to frame (an average along motion paths)."""
        previous = self._previous  # the output of frames[t - 1] (checked in _fill), or None
        if previous is None:
            return
        flow_small, ok = self._pair(frames, images, masks, crop, t, t - 1)
        flow = crop.full_flow(flow_small)
        fx, fy = _grid(crop.h, crop.w)
        mx, my = fx + flow[..., 0], fy + flow[..., 1]
        warped = cv2.remap(crop.cut(previous[1]), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        take = todo & (crop.full_mask(ok) > 0) & (mx >= 0) & (mx <= crop.w - 1) & (my >= 0) & (my <= crop.h - 1)
        blend = self.recurrent * warped[take].astype(np.float32) + (1 - self.recurrent) * filled[take]
        filled[take] = np.rint(blend).astype(filled.dtype)

    # ---- propagation ----------------------------------------------------------------------

    def _pair(self, frames: list[Frame], images: list[np.ndarray], masks: list, crop: _Crop,
              a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Flow a→b at flow resolution, completed under both masks, and where it passes the
        forward-backward check (uint8, 1 = consistent)."""
        key = (frames[a].seq, frames[b].seq, crop.key)
        if key not in self._flows:
            hole = np.zeros((crop.fh, crop.fw), np.uint8)
            for i in (a, b):
                if masks[i] is not None:
                    hole |= crop.small(crop.cut(masks[i]), cv2.INTER_NEAREST)
            # Static text pulls the flow of everything around it towards zero, through DIS's
            # coarse scales too: the flow is computed on frames with the text smoothed away.
            ga, gb = (np.rint(smooth_fill(crop.small(_gray(crop.cut(images[i]))).astype(np.float32), hole)
                              ).astype(np.uint8) for i in (a, b))
            # DIS patches are 8 px at the finest scale: the smoothed area influences flow that far out
            hole = cv2.dilate(hole, np.ones((9, 9), np.uint8))
            fwd = smooth_fill(self._dis.calc(ga, gb, None), hole)
            bwd = smooth_fill(self._dis.calc(gb, ga, None), hole)
            gx, gy = _grid(crop.fh, crop.fw)
            back = cv2.remap(bwd, gx + fwd[..., 0], gy + fwd[..., 1], cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
            # Sundaram et al.'s occlusion test, in full-resolution px: |F + B∘F| small
            # against the motion itself (fast motion is less exact), and absolutely.
            error = np.linalg.norm(fwd + back, axis=2) / crop.scale
            speed = np.linalg.norm(fwd, axis=2) / crop.scale
            ok = (error < self.consistency + 0.05 * speed).astype(np.uint8)
            if self._cut(frames, images, a, b):
                ok[:] = 0  # no flow across a scene cut: neither a source nor the memory crosses it
            self._flows[key] = (fwd, ok)
        return self._flows[key]

    def _propagate(self, t: int, frames: list[Frame], images: list[np.ndarray], masks: list,
                   crop: _Crop, target: np.ndarray, hole: np.ndarray, filled: np.ndarray,
                   todo: np.ndarray) -> None:
        gx, gy = _grid(crop.fh, crop.fw)
        # Full-resolution work happens on this frame's own hole and the ring around it (the
        # window's crop is the union over all its frames, and has the flow's margin)
        sub, fx, fy, ux, uy = _sub_crop(hole, crop)
        target, hole_full, hole = target[sub], hole, hole[sub]
        ring, box = ring_and_reach(hole)
        chains = {}  # direction → (chained flow t→s, where every step is consistent), flow resolution
        hole_small = crop.small(hole_full.astype(np.uint8), cv2.INTER_NEAREST) > 0
        total = np.zeros(target.shape, np.float32)  # weighted sum of the accepted source pixels
        weight = np.zeros(hole.shape, np.float32)
        for k in range(1, self.radius + 1):
            got = []
            for d in (-1, 1):
                s = t + d * k
                if not 0 <= s < len(frames) or chains.get(d, ()) is None:
                    continue
                step, step_ok = self._pair(frames, images, masks, crop, s - d, s)
                if d not in chains:
                    chain, ok = step, step_ok
                else:  # t→s = t→(s-d) followed by (s-d)→s; consistent only if every step is
                    chain, ok = chains[d]
                    mx, my = gx + chain[..., 0], gy + chain[..., 1]
                    chain = chain + cv2.remap(step, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                    ok = ok & cv2.remap(step_ok, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
                if not ok[hole_small].any():  # the chain only loses consistency further out
                    chains[d] = None
                    continue
                chains[d] = (chain, ok)
                if k > self.dense and (k - self.dense) % 2:
                    continue  # beyond `dense` frames every second source is enough (the chain goes on)
                flow, ok_full = crop.sub_flow(chain, ok, sub, ux, uy)
                mx, my = fx + flow[..., 0], fy + flow[..., 1]
                warped = cv2.remap(crop.cut(images[s]), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                valid = (mx >= 0) & (mx <= crop.w - 1) & (my >= 0) & (my <= crop.h - 1) & (ok_full > 0)
                if masks[s] is not None:
                    # bilinear: the sample must read none of the source's text (a nearest-pixel
                    # check lets a stroke pixel beside it blend in)
                    valid &= cv2.remap(self._guard(frames[s], masks[s], crop), mx, my, cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=255) == 0
                matches, offset = self._photometric(warped, target, ring & valid, box)
                valid &= matches
                got.append((warped if offset is None else warped + offset, valid & hole))
            if not got:
                if all(chains.get(d, ()) is None for d in (-1, 1)):
                    break
                continue
            for warped, valid in got:  # nearer frames weigh more
                w = valid.astype(np.float32) * (1 / k)
                total += warped * w[..., None]
                weight += w
        take = weight > 0
        top = np.iinfo(filled.dtype).max
        filled[sub][take] = np.clip(np.rint(total[take] / weight[take][:, None]), 0, top).astype(filled.dtype)
        todo[sub] &= ~take

    def _cut(self, frames: list[Frame], images: list[np.ndarray], a: int, b: int) -> bool:
        """Whether neighbouring frames a and b lie on two sides of a scene cut: the later one is
        marked `meta["scene_cut"]` upstream, or their thumbnails differ by over CUT_THRESHOLD."""
        if frames[max(a, b)].meta.get("scene_cut"):
            return True
        for i in (a, b):
            if frames[i].seq not in self._thumbs:
                self._thumbs[frames[i].seq] = thumbnail(images[i])
        return float(np.abs(self._thumbs[frames[a].seq] - self._thumbs[frames[b].seq]).mean()) > CUT_THRESHOLD

    def _guard(self, frame: Frame, mask: np.ndarray, crop: _Crop) -> np.ndarray:
        """Where a source's own text may be (cached): its mask less the safety margin text-mask
        says it grew it by (eroded with the element that grew it: erode(dilate(X)) ⊇ X, so
        nothing it held before is let through), or, for a mask without one (a user's own, or
        `dilate=0`), the mask grown by SOURCE_GUARD px."""
        key = (frame.seq, crop.key)
        if key not in self._guards:
            margin = int(frame.meta.get("text_mask_margin", 0))
            if margin > 0:
                self._guards[key] = cv2.erode(crop.cut(mask), disc(margin))
            else:
                self._guards[key] = cv2.dilate(crop.cut(mask), np.ones((2 * SOURCE_GUARD + 1,) * 2, np.uint8))
        return self._guards[key]

    def _photometric(self, warped: np.ndarray, target: np.ndarray, ring: np.ndarray,
                     box: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Where `warped` matches `target` on the ring around the mask: the local mean error there
        is under `photometric`. With `colour_match`, also the local mean colour offset target −
        warped on the ring (per channel, spread over the mask like the error): a source taken a
        few frames away differs by exposure and shading, which would show as a seam at the mask's
        edge (a membrane correction; cheap kin of Poisson blending). The error is then measured
        after that offset."""
        scale = 257.0 if target.dtype == np.uint16 else 1.0
        ring32 = ring.astype(np.float32)
        den = cv2.boxFilter(ring32, -1, (box, box), normalize=False, borderType=cv2.BORDER_CONSTANT)
        if self.colour_match:
            diff = target.astype(np.float32) - warped.astype(np.float32)
            offset = cv2.boxFilter(diff * ring32[..., None], -1, (box, box), normalize=False,
                                   borderType=cv2.BORDER_CONSTANT) / np.maximum(den, 1e-6)[..., None]
            error = cv2.transform(np.abs(diff - offset), np.full((1, 3), 1 / (3 * scale), np.float32))
        else:
            offset = None
            error = cv2.transform(cv2.absdiff(warped, target).astype(np.float32),
                                  np.full((1, 3), 1 / (3 * scale), np.float32))
        num = cv2.boxFilter(error * ring32, -1, (box, box), normalize=False, borderType=cv2.BORDER_CONSTANT)
        return (den > 0.5) & (num < self.photometric * np.maximum(den, 1e-6)), offset

    def describe(self) -> dict[str, Any]:
        return {"radius": self.radius if self.propagate else 0, "method": self.method,
                "filler": self.filler_path or "spatial", "flow": self.flow_preset if self.propagate else "off",
                "window": self.window_size, "memory": self.carry if self.propagate and self.memory else "off"}
