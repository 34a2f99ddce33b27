"""`text-detect`: text boxes in chosen regions of every `every`-th frame (after `dedup`, also
the first unique frame of each run of `every`: `TextDetect.samples`).

The detector is PP-OCR's DB text detector as shipped inside the `rapidocr` wheel
(`PP-OCRv6_det_small.onnx`, Apache-2.0), run with ONNX Runtime; `model=` takes a user's own
PP-OCR detection model exported to ONNX (same input and output), e.g. one PaddleOCR left on disk.
Input: BGR, `(x/255 − 0.5)/0.5`, NCHW, sides a multiple of 32; the band is scaled down so its
longer side is at most `max_side` (never up: `limit_type=max`). Post-processing (threshold,
contours, unclip) is rapidocr's own `DBPostProcess`.

Why regions and filtering (measured while the issue was written): on whole 1280×720 frames the
detector marked a face as text and missed the subtitle; on the bottom band of the shared 1080p
clip about a fifth of the sampled frames also gave one box spanning the whole band (measured
again here: those boxes are the band's full height, 322 of 324 px, and 530–970 px wide). So it
runs on `area` (default: the bottom 30 %, where subtitles sit), and drops boxes that are too
small, taller than `max_height` of the region, or that fill most of it (`max_fill` 0.8: a large
caption in a small frame legitimately fills half the band). `verify=true` also reads each box
with the bundled recogniser and keeps it only when it reads as text with confidence >= `verify_score`.

Output: detection frames get `meta["text_boxes"]` (n×4×2 float32, frame pixels, possibly
empty); every frame gets `meta["text_regions"]` (the regions in pixels, for previews). Frames
in between carry no boxes: `text-mask` gives them the union of their neighbours' masks.

Cost (2 shared cores, ONNX Runtime 1.32, one thread per worker; `caption-remove` runs two
workers): about 41 ms per call for the 1280×216 band of a 720p frame at the default
`max_side` 640 (640×96), 103 ms at 960. Over 114 sampled frames of each of the 720p and the
1080p real clip, 640 found text in exactly the frames 960 did, covering 97–98 % of its box
pixels (the masks then grow around the strokes); see README "Caption removal".
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.errors import UserError
from engine.frame import Frame
from engine.models.tensor_file import onnx_session
from engine.registry import register_stage
from engine.stage import MapStage, StageContext

DEFAULT_AREA = "0/0.7/1/1"  # x0/y0/x1/y1: the bottom 30 % of the frame


@dataclass(frozen=True)
class Area:
    """A rectangle, in fractions of the frame (all values <= 1) or in pixels."""

    x0: float
    y0: float
    x1: float
    y1: float
    pixels: bool

    def __str__(self) -> str:
        return "/".join(f"{v:g}" for v in (self.x0, self.y0, self.x1, self.y1))

    def resolve(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in pixels, clipped to the frame; empty areas are an error."""
        sx, sy = (1, 1) if self.pixels else (width, height)
        x0, x1 = (min(width, max(0, round(v * sx))) for v in (self.x0, self.x1))
        y0, y1 = (min(height, max(0, round(v * sy))) for v in (self.y0, self.y1))
        if x1 - x0 < 8 or y1 - y0 < 8:
            raise ValueError(f"area {self} ({'pixels' if self.pixels else 'fractions'}) is less than "
                             f"8×8 pixels in a {width}x{height} frame")
        return x0, y0, x1, y1


def parse_areas(text: str) -> list[Area]:
    """`x0/y0/x1/y1`, several joined by `+`. Fractions of the frame when every value is <= 1,
    pixels otherwise ("," and ":" already separate stages and options on the command line)."""
    areas = []
    for part in text.split("+"):
        values = part.strip().split("/")
        try:
            x0, y0, x1, y1 = (float(v) for v in values)
        except ValueError:
            raise ValueError(f"area must be x0/y0/x1/y1 (fractions or pixels), several joined by '+'; "
                             f"got {part!r}") from None
        if min(x0, y0, x1, y1) < 0 or x1 <= x0 or y1 <= y0:
            raise ValueError(f"area {part!r}: need 0 <= x0 < x1 and 0 <= y0 < y1")
        pixels = max(x0, y0, x1, y1) > 1
        fractions = [v for v in values if not float(v).is_integer()]
        if pixels and fractions:  # 0/0.7/1920/1080 meant "from 70 % down", not row 0
            raise ValueError(f"area {part!r} mixes fractions ({fractions[0]}) with pixels: give all four "
                             f"values as fractions of the frame (<= 1) or all as whole pixels")
        if not pixels and (x1 - x0 < 0.01 or y1 - y0 < 0.01):
            raise ValueError(f"area {part!r} is too small")
        areas.append(Area(x0, y0, x1, y1, pixels))
    return areas


def bundled_model(kind: str = "det") -> Path | None:
    """The PP-OCR model file inside the installed rapidocr wheel, without importing rapidocr."""
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        return None
    name = {"det": "PP-OCRv6_det_small.onnx", "rec": "PP-OCRv6_rec_small.onnx"}[kind]
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    return path if path.is_file() else None


class TextDetector:
    """PP-OCR DB detection on a BGR image: boxes (n×4×2, image pixels) and their scores."""

    def __init__(self, model: Path, max_side: int = 960, thresh: float = 0.3, box_thresh: float = 0.5,
                 unclip_ratio: float = 1.6, threads: int = 1, providers: list[str] | None = None):
        import onnxruntime as ort
        from rapidocr.ch_ppocr_det.utils import DBPostProcess

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = onnx_session(model, "text detection model", options, providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        # a DB detector: an image N×3×H×W of any size in, a text-probability map N×1×H×W out
        # (PP-OCR's recogniser takes 48-row strips and gives N×T×classes; its classifier N×2)
        shape_in, shape_out = tuple(inputs[0].shape), tuple(outputs[0].shape)
        if (len(inputs) != 1 or len(shape_in) != 4 or shape_in[1] != 3 or any(isinstance(d, int) for d in shape_in[2:])
                or len(shape_out) != 4 or shape_out[1] != 1):
            raise UserError(f"text-detect: {model} is not a PP-OCR detection model: it takes {shape_in} and "
                            f"gives {shape_out}, not N×3×H×W (any size) to N×1×H×W")
        self.input_name = inputs[0].name
        self.max_side = max_side
        self.post = DBPostProcess(thresh=thresh, box_thresh=box_thresh, unclip_ratio=unclip_ratio,
                                  use_dilation=True, score_mode="fast")

    def prepare(self, bgr: np.ndarray) -> np.ndarray:
        """Scale down to `max_side` (sides a multiple of 32), normalise to [-1, 1], NCHW."""
        h, w = bgr.shape[:2]
        ratio = min(1.0, self.max_side / max(h, w))
        rh, rw = (max(32, int(round(v * ratio / 32)) * 32) for v in (h, w))
        x = cv2.resize(bgr, (rw, rh), interpolation=cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR)
        x = x.astype(np.float32) * (2 / 255) - 1  # (x/255 − 0.5)/0.5
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def probability(self, bgr: np.ndarray) -> np.ndarray:
        """The network's text probability map (1×1×h×w at the prepared size)."""
        return self.session.run(None, {self.input_name: self.prepare(bgr)})[0]

    def __call__(self, bgr: np.ndarray) -> tuple[np.ndarray, list[float]]:
        boxes, scores = self.post(self.probability(bgr), bgr.shape[:2])
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4, 2)
        return boxes, list(scores)


class TextReader:
    """The bundled PP-OCR recogniser (through rapidocr): the text and confidence of crops."""

    def __init__(self):
        from rapidocr import RapidOCR

        self.ocr = RapidOCR(params={"Global.use_det": False, "Global.use_cls": False,
                                    "Global.log_level": "error"})

    def __call__(self, crop: np.ndarray) -> tuple[str, float]:
        result = self.ocr(crop, use_det=False, use_cls=False, use_rec=True)
        texts, scores = getattr(result, "txts", None), getattr(result, "scores", None)
        if not texts:
            return "", 0.0
        return str(texts[0]), float(scores[0])


def box_filter(boxes: np.ndarray, region: tuple[int, int, int, int], min_height: int,
               max_height: float, min_aspect: float, max_fill: float) -> np.ndarray:
    """Which boxes (n×4×2, region pixels) look like a line of text in this region.

    Rejects boxes shorter than `min_height` px, taller than `max_height` × the region's height,
    narrower than `min_aspect` × their height (text lines are wide; one CJK glyph is square),
    and boxes covering more than `max_fill` of the region (the whole-band false box).
    """
    x0, y0, x1, y1 = region
    area = (x1 - x0) * (y1 - y0)
    keep = np.zeros(len(boxes), bool)
    for i, box in enumerate(boxes):
        w, h = np.ptp(box[:, 0]), np.ptp(box[:, 1])
        keep[i] = (h >= min_height and h <= max_height * (y1 - y0) and w >= min_aspect * h
                   and w * h <= max_fill * area)
    return keep


@register_stage("text-detect")
class TextDetect(MapStage):
    """Find text boxes (PP-OCR detector) in regions of every `every`-th frame."""

    provides = ("text_boxes", "text_regions")
    counted = ("checked_frames", "text_frames", "boxes", "rejected_boxes")

    def __init__(self, area: str = DEFAULT_AREA, every: int = 2, model: str = "", max_side: int = 640,
                 thresh: float = 0.3, box_thresh: float = 0.5, unclip_ratio: float = 1.6,
                 min_height: int = 6, max_height: float = 0.8, min_aspect: float = 0.5,
                 max_fill: float = 0.8, verify: bool = False, verify_score: float = 0.5,
                 threads: int = 1):
        super().__init__()
        self.areas = parse_areas(area)
        if not 1 <= every <= 100:
            raise ValueError(f"every must be between 1 and 100, got {every}")
        if not 64 <= max_side <= 4096:
            raise ValueError(f"max_side must be between 64 and 4096, got {max_side}")
        for key, value in (("thresh", thresh), ("box_thresh", box_thresh), ("max_height", max_height),
                           ("max_fill", max_fill), ("verify_score", verify_score)):
            if not 0 < value <= 1:
                raise ValueError(f"{key} must be in (0, 1], got {value}")
        if unclip_ratio <= 0 or min_aspect < 0 or min_height < 1:
            raise ValueError("unclip_ratio must be > 0, min_aspect >= 0 and min_height >= 1")
        if not 1 <= threads <= 64:
            raise ValueError(f"threads must be between 1 and 64, got {threads}")
        if model:
            self.model = Path(model).expanduser()
            if not self.model.is_file():
                raise ValueError(f"detection model not found: {self.model}")
        else:
            found = bundled_model("det")
            if found is None:
                raise ValueError("text-detect needs the rapidocr package (it ships the PP-OCR models): "
                                 "pip install 'engine[caption]'")
            self.model = found
        if importlib.util.find_spec("onnxruntime") is None:
            raise ValueError("text-detect needs onnxruntime: pip install 'engine[caption]'")
        self.every, self.verify, self.verify_score = every, verify, verify_score
        self.filters = dict(min_height=min_height, max_height=max_height, min_aspect=min_aspect,
                            max_fill=max_fill)
        self.detector_options = dict(max_side=max_side, thresh=thresh, box_thresh=box_thresh,
                                     unclip_ratio=unclip_ratio, threads=threads)
        self.detector: TextDetector | None = None
        self.reader: TextReader | None = None
        self._regions: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
        if not any(a.pixels for a in self.areas):
            self.regions(1000, 1000)  # fractions overlap, or not, at every size: say so before the run

    def weight_files(self) -> list[str]:
        return [str(self.model)]  # the detector decides the masks (resume key)

    @classmethod
    def run_note(cls, counters: dict[str, float]) -> str | None:
        checked, rejected = counters.get("checked_frames", 0), counters.get("rejected_boxes", 0)
        if not checked or counters.get("text_frames", 0):
            return None
        why = (f"; {rejected:g} box(es) were found but rejected by the size filters (min_height, max_height, "
               f"min_aspect, max_fill)" if rejected else "; check area= (where text is looked for)")
        # no count: under --resume the frames checked include the segments' context frames
        return f"note: text-detect found no text in any frame it checked, so nothing was changed{why}"

    def open(self, ctx: StageContext) -> None:
        self.detector = TextDetector(self.model, **self.detector_options)
        if self.verify:
            self.reader = TextReader()

    def regions(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        key = (width, height)
        if key not in self._regions:
            try:
                regions = [a.resolve(width, height) for a in self.areas]
            except ValueError as exc:  # the user's area against the frames it meets: exit 2, not a stage failure
                raise UserError(f"text-detect: {exc}") from None
            for i, (ax0, ay0, ax1, ay1) in enumerate(regions):
                for j, (bx0, by0, bx1, by1) in enumerate(regions[:i]):
                    if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                        # text in the shared band would be detected, counted and filled twice
                        where = f" in a {width}x{height} frame" if any(a.pixels for a in self.areas) else ""
                        raise UserError(f"text-detect: areas {self.areas[j]} and {self.areas[i]} overlap{where}: "
                                        f"give areas that do not, or one that covers both")
            self._regions[key] = regions
        return self._regions[key]

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """Boxes (n×4×2 float32, frame pixels) of the text lines in this frame's regions."""
        h, w = rgb.shape[:2]
        found = []
        for region in self.regions(w, h):
            x0, y0, x1, y1 = region
            band = rgb[y0:y1, x0:x1]
            if band.dtype == np.uint16:
                band = (band >> 8).astype(np.uint8)
            bgr = cv2.cvtColor(band, cv2.COLOR_RGB2BGR)
            boxes, _ = self.detector(bgr)
            keep = box_filter(boxes, (0, 0, x1 - x0, y1 - y0), **self.filters)
            self.count("rejected_boxes", int((~keep).sum()))
            for box in boxes[keep]:
                if self.reader is not None and not self._reads_as_text(bgr, box):
                    self.count("rejected_boxes")
                    continue
                found.append(box + np.array([x0, y0], np.float32))
        return np.array(found, np.float32).reshape(-1, 4, 2)

    def samples(self, seq: int, unique_before: int | None = None) -> bool:
        """Whether frame `seq` is detected on: every `every`-th seq, and after dedup (whose
        duplicates never reach this stage, `unique_before` the unique frame before it) also the
        first unique frame of each run of `every` seqs. Else anime held for an odd count of
        frames shifts every later unique frame off the multiples of 2, and none is read."""
        if seq % self.every == 0:
            return True
        return unique_before is not None and unique_before // self.every < seq // self.every

    def _reads_as_text(self, bgr: np.ndarray, box: np.ndarray) -> bool:
        bx0, by0 = np.floor(box.min(axis=0)).astype(int).clip(0)
        bx1, by1 = np.ceil(box.max(axis=0)).astype(int)
        text, score = self.reader(bgr[by0:by1, bx0:bx1])
        return bool(text.strip()) and score >= self.verify_score

    def process(self, frame: Frame) -> Frame:
        h, w = frame.shape[:2]
        frame.meta["text_regions"] = self.regions(w, h)
        frame.meta["text_every"] = self.every  # text-mask checks its context covers the gaps
        if not self.samples(frame.seq, frame.meta.get("unique_before")):
            return frame
        boxes = self.detect(frame.data)
        frame.meta["text_boxes"] = boxes
        self.count("checked_frames")
        if len(boxes):
            self.count("text_frames")
            self.count("boxes", len(boxes))
        return frame

    def describe(self) -> dict[str, Any]:
        return {"model": self.model.name, "every": self.every, "verify": self.verify,
                "area": "+".join(f"{a.x0:g}/{a.y0:g}/{a.x1:g}/{a.y1:g}" for a in self.areas)}
