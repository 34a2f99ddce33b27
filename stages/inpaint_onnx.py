"""Learned fillers for `inpaint`: a user's own ONNX image inpainter (LaMa, MI-GAN exports).

Nothing is downloaded: `inpaint:filler=/path/model.onnx` names a file on disk. The filler
replaces the spatial fill (step 3 of stages/inpaint.py): it gets what flow propagation could
not fill.

The adapter interface (what `Inpaint` calls), for other fillers to follow::

    filler(image: H×W×3 RGB uint8|uint16, hole: H×W uint8, 255 = fill) -> H×W×3, same dtype

Only the hole's pixels of the result are used; `Inpaint` composites them (feathered, inside
the mask only). A video model (ProPainter, E2FGVI, DiffuEraser class) would take the window
instead — `(images: list[H×W×3], holes: list[H×W]) -> list[H×W×3]` — and plug in at
`Inpaint.process_window`, where the frames, their masks and `radius` frames of context on each
side already are; its weights, like this adapter's, come from the user's disk.

The ONNX model's contract (LaMa's export; MI-GAN's ONNX export has the same two inputs):
- two inputs, image N×3×H×W and mask N×1×H×W (told apart by their channel count);
- float inputs: RGB in [0, 1], mask 1 = fill; uint8 inputs: RGB 0..255, mask 255 = fill;
- one output N×3×H×W RGB, in [0, 1] or, when its largest value exceeds 2, in [0, 255]
  (exports differ).
- fixed H×W (e.g. LaMa's 512×512): a square around the hole, with as much context again, is
  scaled to it and back; dynamic sizes: the hole's bounding box plus context, padded to a
  multiple of 8.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from engine.errors import UserError
from engine.models.tensor_file import onnx_session


def check_filler(path: str) -> Path:
    """One-line errors before any thread starts: missing file, no onnxruntime."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"filler model not found: {p}")
    if p.suffix.lower() != ".onnx":
        raise ValueError(f"filler must be an ONNX file (.onnx), got {p.name}")
    if importlib.util.find_spec("onnxruntime") is None:
        raise ValueError("an ONNX filler needs onnxruntime: pip install 'engine[caption]'")
    return p


class OnnxImageFiller:
    """An ONNX image inpainter behind the filler interface (see the module docstring)."""

    def __init__(self, path: str, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = onnx_session(check_filler(path), "inpainting model", options)
        # the user's file, checked where it loads (each worker's open): a one-line user error
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 2:
            raise UserError(f"inpaint: filler {path} is not an inpainting model: it takes {len(inputs)} "
                            f"input(s), not two (image N×3×H×W, mask N×1×H×W)")
        by_channels = {i.shape[1]: i for i in inputs if len(i.shape) == 4}
        if set(by_channels) != {1, 3} or len(outputs[0].shape) != 4 or outputs[0].shape[1] != 3:
            raise UserError(f"inpaint: filler {path} is not an inpainting model: it takes "
                            f"{[tuple(i.shape) for i in inputs]} and gives {tuple(outputs[0].shape)}, "
                            f"not N×3×H×W and N×1×H×W to N×3×H×W")
        self.image_input, self.mask_input = by_channels[3], by_channels[1]
        self.uint8 = "uint8" in self.image_input.type
        h, w = self.image_input.shape[2:]
        self.fixed = (h, w) if isinstance(h, int) and isinstance(w, int) else None

    def _run(self, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """image h×w×3 uint8, hole h×w bool → h×w×3 float32 in 0..255."""
        if self.uint8:
            x = image.transpose(2, 0, 1)[None]
            m = (hole.astype(np.uint8) * 255)[None, None]
        else:
            x = image.transpose(2, 0, 1)[None].astype(np.float32) / 255
            m = hole.astype(np.float32)[None, None]
        y = self.session.run(None, {self.image_input.name: np.ascontiguousarray(x),
                                    self.mask_input.name: np.ascontiguousarray(m)})[0][0]
        y = y.transpose(1, 2, 0).astype(np.float32)
        return y if y.max() > 2 else y * 255

    def __call__(self, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        deep = image.dtype == np.uint16
        work = (image >> 8).astype(np.uint8) if deep else image
        holes = hole > 0
        ys, xs = np.nonzero(holes)
        if not len(ys):
            return image
        h, w = holes.shape
        by, bx = ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()
        if self.fixed is not None:  # a square with the hole's size again as context, scaled
            side = min(max(h, w), max(by, bx) * 2)  # clipped to the frame: then not square
            cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
            y0, x0 = min(max(0, cy - side // 2), max(0, h - side)), min(max(0, cx - side // 2), max(0, w - side))
            y1, x1 = min(h, y0 + side), min(w, x0 + side)
            crop, crop_hole = work[y0:y1, x0:x1], holes[y0:y1, x0:x1]
            mh, mw = self.fixed
            small = cv2.resize(crop, (mw, mh), interpolation=cv2.INTER_AREA)
            small_hole = cv2.resize(crop_hole.astype(np.uint8), (mw, mh), interpolation=cv2.INTER_NEAREST) > 0
            small_hole |= cv2.resize(crop_hole.astype(np.float32), (mw, mh), interpolation=cv2.INTER_AREA) > 0
            result = cv2.resize(self._run(small, small_hole), (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
        else:  # the bounding box plus as much context, padded to a multiple of 8
            y0, x0 = max(0, ys.min() - by // 2 - 8), max(0, xs.min() - bx // 2 - 8)
            y1, x1 = min(h, ys.max() + 1 + by // 2 + 8), min(w, xs.max() + 1 + bx // 2 + 8)
            crop, crop_hole = work[y0:y1, x0:x1], holes[y0:y1, x0:x1]
            ph, pw = -crop.shape[0] % 8, -crop.shape[1] % 8
            padded = cv2.copyMakeBorder(crop, 0, ph, 0, pw, cv2.BORDER_REFLECT)
            padded_hole = np.pad(crop_hole, ((0, ph), (0, pw)))
            result = self._run(padded, padded_hole)[:crop.shape[0], :crop.shape[1]]
        out = image.copy()
        scale = 257.0 if deep else 1.0
        region = out[y0:y1, x0:x1]
        region[crop_hole] = np.clip(np.rint(result[crop_hole] * scale), 0, 65535 if deep else 255).astype(image.dtype)
        return out
