"""Colour conversion in torch: decoded YUV planes → RGB model input, model output → encoder planes.

One function for every device: the same torch code runs on the CPU and on CUDA, so a GPU
receives the decoder's own planes (1.5 bytes a pixel for 4:2:0 instead of 3 for RGB) and
hands back the encoder's, and the host thread does no per-pixel work at all.

The conversion is the exact one, as FFmpeg's swscale computes it in its accurate mode
(`BILINEAR | ACCURATE_RND | FULL_CHR_H_INT` for YUV → RGB, `AREA | ACCURATE_RND` for
RGB → YUV); tests/test_colour.py checks agreement within one level for every matrix, range
and bit depth. Measured on a real 4:2:0 clip, that accurate reference and swscale's default
fast path (nearest chroma, truncating fixed point: what `Frame.data` uses, because it is
13× cheaper on the CPU) differ by at most 3 levels, mean 0.06.

- YUV → RGB: chroma is upsampled bilinearly from where it sits. H.264/HEVC decoders give
  "left" (co-sited with the even luma column, halfway between two luma rows), and swscale
  honours that; PyAV does not expose a frame's chroma location, so the engine assumes
  left, the H.26x default (`ColourSpec.chroma_left`; False: centred, as swscale takes an
  unspecified location);
  then the stream's matrix (BT.601, BT.709, BT.2020 non-constant luminance) and range
  (limited: Y 16-235, C 16-240 scaled by 2^(bits-8); full: 0..2^bits-1).
- RGB → YUV: the matrix, then chroma is the mean of each 2×2 (4:2:0) or 1×2 (4:2:2) block
  (centred, as swscale writes it for the encoder: the old host path does the same).

An unspecified matrix is BT.601, as swscale assumes; streams with any other matrix
(RGB, YCgCo, BT.2020 constant luminance, ICtCp...) are not handled here: `spec_for`
returns None and callers keep the host RGB path.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.colour_tags import is_full_range
from engine.planes import plane_rows

# FFmpeg AVColorSpace → (Kr, Kb). Unspecified (2) is BT.601, as swscale assumes.
MATRICES = {1: ("bt709", 0.2126, 0.0722), 2: ("bt601", 0.299, 0.114), 4: ("fcc", 0.30, 0.11),
            5: ("bt601", 0.299, 0.114), 6: ("bt601", 0.299, 0.114), 7: ("smpte240m", 0.212, 0.087),
            9: ("bt2020", 0.2627, 0.0593)}

#: Device → host RGB conversions (`tensor_to_array`), counted so tests can prove frames
#: stayed on the device between model stages.
TRANSFERS: Counter[str] = Counter()
_transfers_lock = threading.Lock()


@dataclass(frozen=True)
class PlaneFormat:
    """How a pixel format lays out its planes."""

    name: str
    bits: int          # significant bits per sample
    sub_x: int         # chroma subsampling, as a divisor: 2 for 4:2:0 and 4:2:2
    sub_y: int         # 2 for 4:2:0
    semi_planar: bool  # nv12/p010: one plane of interleaved U,V
    shift: int = 0     # p010 keeps its 10 bits in the high bits of 16

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.bits <= 8 else np.uint16)


FORMATS = {f.name: f for f in (
    PlaneFormat("yuv420p", 8, 2, 2, False), PlaneFormat("yuvj420p", 8, 2, 2, False),
    PlaneFormat("yuv422p", 8, 2, 1, False), PlaneFormat("yuvj422p", 8, 2, 1, False),
    PlaneFormat("yuv444p", 8, 1, 1, False), PlaneFormat("yuvj444p", 8, 1, 1, False),
    PlaneFormat("yuv420p10le", 10, 2, 2, False), PlaneFormat("yuv422p10le", 10, 2, 1, False),
    PlaneFormat("yuv444p10le", 10, 1, 1, False),
    PlaneFormat("nv12", 8, 2, 2, True), PlaneFormat("p010le", 10, 2, 2, True, shift=6),
)}


@dataclass(frozen=True)
class ColourSpec:
    """A stream's YUV encoding: matrix coefficients and range."""

    matrix: str
    kr: float
    kb: float
    full_range: bool
    chroma_left: bool = True  # chroma co-sited with even luma columns (H.26x), else centred

    @classmethod
    def of(cls, colorspace: int, color_range: int, pix_fmt: str = "",
           chroma_left: bool = True) -> ColourSpec | None:
        """From FFmpeg's enums; None when the matrix is not a plain Y'CbCr one handled here."""
        if int(colorspace) not in MATRICES:
            return None
        name, kr, kb = MATRICES[int(colorspace)]
        return cls(name, kr, kb, is_full_range(color_range, pix_fmt), chroma_left)


@dataclass(frozen=True)
class PictureFormat:
    """What a model stage should hand the sink: planes in the encoder's format and encoding."""

    fmt: PlaneFormat
    spec: ColourSpec
    colorspace: int    # FFmpeg enums to tag the picture with, as the stream is tagged
    color_range: int

    @classmethod
    def of(cls, pix_fmt: str, colorspace: int, color_range: int) -> PictureFormat | None:
        fmt, spec = FORMATS.get(pix_fmt), ColourSpec.of(colorspace, color_range, pix_fmt)
        return cls(fmt, spec, int(colorspace), int(color_range)) if fmt and spec else None


@dataclass(frozen=True)
class Planes:
    """One decoded picture's planes (views into the decoder's buffers) and their encoding."""

    arrays: list[np.ndarray]
    fmt: PlaneFormat
    spec: ColourSpec

    @classmethod
    def of(cls, picture: Any) -> Planes | None:
        found = spec_for(picture)
        if found is None:
            return None
        return cls(picture_planes(picture, found[0]), *found)

    @property
    def key(self) -> tuple:
        """Batches of planes must agree on this: shapes, format, encoding."""
        return (tuple(a.shape for a in self.arrays), self.fmt, self.spec)


def spec_for(picture: Any) -> tuple[PlaneFormat, ColourSpec] | None:
    """The format and encoding of a decoded `av.VideoFrame`, or None if this module cannot convert it."""
    fmt = FORMATS.get(picture.format.name)
    spec = ColourSpec.of(picture.colorspace, picture.color_range, picture.format.name)
    return (fmt, spec) if fmt is not None and spec is not None else None


def plane_shapes(fmt: PlaneFormat, height: int, width: int) -> list[tuple[int, ...]]:
    """The shape of each plane of an H×W picture, as `picture_planes` returns them."""
    ch, cw = -(-height // fmt.sub_y), -(-width // fmt.sub_x)
    if fmt.semi_planar:
        return [(height, width), (ch, cw, 2)]
    return [(height, width), (ch, cw), (ch, cw)]


def picture_planes(picture: Any, fmt: PlaneFormat) -> list[np.ndarray]:
    """Views of a decoded picture's planes, without copying (line padding cut off by striding)."""
    views = []
    for plane, shape in zip(picture.planes, plane_shapes(fmt, picture.height, picture.width)):
        rows = plane_rows(plane, fmt.dtype)
        views.append(rows[:shape[0], :int(np.prod(shape[1:]))].reshape(shape))
    return views


def _coefficients(spec: ColourSpec, bits: int) -> tuple[float, float, float, float]:
    """Luma offset and scale, chroma centre and scale for this range and bit depth."""
    top = (1 << bits) - 1
    if spec.full_range:
        return 0.0, float(top), float(1 << (bits - 1)), float(top)
    step = 1 << (bits - 8)
    return 16.0 * step, 219.0 * step, 128.0 * step, 224.0 * step


def _upsample(c: torch.Tensor, sub_y: int, sub_x: int, height: int, width: int,
              left: bool) -> torch.Tensor:
    """N×h×w chroma → N×H×W: rows centred between luma rows; columns co-sited with even
    columns (`left`) or centred between two."""
    if sub_y == 2:  # out[2i] = ¾c[i] + ¼c[i-1], out[2i+1] = ¾c[i] + ¼c[i+1]
        p = F.pad(c[:, None], (0, 0, 1, 1), mode="replicate")[:, 0]
        c = torch.stack((0.75 * c + 0.25 * p[:, :-2], 0.75 * c + 0.25 * p[:, 2:]), dim=2).flatten(1, 2)
    if sub_x == 2:
        p = F.pad(c[:, None], (1, 1, 0, 0), mode="replicate")[:, 0]
        if left:  # out[2j] = c[j], out[2j+1] = ½c[j] + ½c[j+1]
            c = torch.stack((c, 0.5 * (c + p[..., 2:])), dim=3).flatten(2, 3)
        else:
            c = torch.stack((0.75 * c + 0.25 * p[..., :-2], 0.75 * c + 0.25 * p[..., 2:]), dim=3).flatten(2, 3)
    return c[:, :height, :width]


def yuv_to_rgb(planes: list[torch.Tensor], fmt: PlaneFormat, spec: ColourSpec) -> torch.Tensor:
    """Decoded planes (each N×… as `picture_planes` shapes them, any integer dtype) → N×3×H×W
    float32 RGB in [0, 1], on the planes' device."""
    y = planes[0].float()
    if fmt.semi_planar:
        u, v = planes[1][..., 0].float(), planes[1][..., 1].float()
    else:
        u, v = planes[1].float(), planes[2].float()
    if fmt.shift:
        scale = 1.0 / (1 << fmt.shift)
        y, u, v = y * scale, u * scale, v * scale  # exact: the low bits are zero
    n, height, width = y.shape
    y_off, y_scale, c_mid, c_scale = _coefficients(spec, fmt.bits)
    y = (y - y_off) / y_scale
    u = _upsample((u - c_mid) / c_scale, fmt.sub_y, fmt.sub_x, height, width, spec.chroma_left)
    v = _upsample((v - c_mid) / c_scale, fmt.sub_y, fmt.sub_x, height, width, spec.chroma_left)
    kr, kb = spec.kr, spec.kb
    kg = 1.0 - kr - kb
    r = y + 2 * (1 - kr) * v
    b = y + 2 * (1 - kb) * u
    g = y - (2 * kr * (1 - kr) / kg) * v - (2 * kb * (1 - kb) / kg) * u
    return torch.stack((r, g, b), dim=1).clamp_(0, 1)


def rgb_to_yuv(rgb: torch.Tensor, fmt: PlaneFormat, spec: ColourSpec) -> list[torch.Tensor]:
    """N×3×H×W RGB in [0, 1] (any float dtype, any layout) → the format's planes as integer
    tensors (uint8 or uint16), on the same device. H and W must suit the subsampling."""
    rgb = rgb.float()
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    kr, kb = spec.kr, spec.kb
    y = kr * r + (1 - kr - kb) * g + kb * b
    u = (b - y) / (2 * (1 - kb))
    v = (r - y) / (2 * (1 - kr))
    if fmt.sub_x > 1 or fmt.sub_y > 1:  # the mean of each block: swscale's area filter
        u = F.avg_pool2d(u[:, None], (fmt.sub_y, fmt.sub_x), ceil_mode=True)[:, 0]
        v = F.avg_pool2d(v[:, None], (fmt.sub_y, fmt.sub_x), ceil_mode=True)[:, 0]
    y_off, y_scale, c_mid, c_scale = _coefficients(spec, fmt.bits)
    top = float((1 << fmt.bits) - 1)
    dtype = torch.uint8 if fmt.bits <= 8 else torch.uint16

    def quantise(x: torch.Tensor, offset: float, scale: float) -> torch.Tensor:
        x = (x * scale + offset).round_().clamp_(0, top)
        if fmt.shift:
            x = x * (1 << fmt.shift)
        return x.to(dtype)

    yq = quantise(y, y_off, y_scale)
    uq, vq = quantise(u, c_mid, c_scale), quantise(v, c_mid, c_scale)
    if fmt.semi_planar:
        return [yq, torch.stack((uq, vq), dim=-1)]
    return [yq, uq, vq]


def planes_to_picture(planes: list[np.ndarray], fmt: PlaneFormat, colorspace: int | None = None,
                      color_range: int | None = None) -> Any:
    """Wrap host planes (one frame, as `rgb_to_yuv` shapes them) into an `av.VideoFrame`
    tagged with `colorspace`/`color_range`.

    The planes are copied once into the frame's own buffers (FFmpeg owns those): that is the
    only host copy between the device runner's pinned download and the encoder.
    """
    import av

    height, width = planes[0].shape[:2]
    picture = av.VideoFrame(width, height, fmt.name)
    for plane, data in zip(picture.planes, planes):
        rows = plane_rows(plane, fmt.dtype)
        flat = data.reshape(data.shape[0], -1)
        rows[:flat.shape[0], :flat.shape[1]] = flat
    if colorspace is not None:
        picture.colorspace = colorspace
    if color_range is not None:
        picture.color_range = color_range
    return picture


def tensor_to_array(tensor: torch.Tensor, deep: bool) -> np.ndarray:
    """A device image (3×H×W RGB in [0, 1]) → host H×W×3 uint8 (uint16 if `deep`), as the
    device runner rounds its results. The one place a device frame comes back as RGB."""
    with _transfers_lock:
        TRANSFERS["device_to_host"] += 1
    top = 65535.0 if deep else 255.0
    out = tensor.float().clamp(0, 1).mul(top).round_().to(torch.uint16 if deep else torch.uint8)
    return out.permute(1, 2, 0).contiguous().cpu().numpy()
