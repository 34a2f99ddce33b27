"""Import ncnn models (`.param` + `.bin`) as torch modules that compute the same function.

ncnn's text `.param` lists layers in execution order, each naming its input and output
blobs and its parameters as `key=value` (a key of -23300-k holds the array for key k).
The `.bin` holds each layer's weights back to back, in that order; a weight tensor
starts with a 4-byte tag saying how it is stored (fp32, fp16, or an 8-bit lookup
table), biases and slopes are raw fp32 without a tag.

`NcnnNet` keeps the graph as a list of steps over named blobs and frees every blob after
its last reader, so a deep network (RRDBNet: 351 convolutions) holds only live activations.

Blob layout: ncnn blobs are per-sample `c×h×w`; here they carry the batch in front
(N×C×H×W). A 1-D blob (global pooling, inner product) is kept as N×C×1×1, so torch's
broadcasting gives ncnn's per-channel broadcasting of a 1-D blob against a 3-D one.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MAGIC = 7767517

# Weight storage tags (ncnn's ModelBinFromDataReader::load, type 0)
_TAG_FP16 = 0x01306B47
_TAG_INT8 = 0x000D4B38
_TAG_FP32_EXTRA = 0x0002C056


class NcnnFormatError(ValueError):
    """The files are not a model this importer can read (says which layer and why)."""


@dataclass
class LayerSpec:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, float | int | list[float | int]] = field(default_factory=dict)

    def get(self, key: int, default):
        return self.params.get(key, default)


def _number(text: str) -> float | int:
    return float(text) if re.search(r"[.eE]", text) else int(text)


def parse_param(text: str) -> list[LayerSpec]:
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != [str(MAGIC)]:
        raise NcnnFormatError("not an ncnn text .param file (magic 7767517 missing)")
    cut = "the file is truncated or malformed"
    try:
        layer_count = int(lines[1][0])
    except (IndexError, ValueError):
        raise NcnnFormatError(f"no layer count after the magic number: {cut}") from None
    layers = []
    for number, fields in enumerate(lines[2:2 + layer_count], start=3):
        try:
            layers.append(_layer(fields))
        except (IndexError, ValueError):  # a line cut short ("Convolution conv 1"), a "key=" without value
            raise NcnnFormatError(f"layer line {number} ({' '.join(fields)[:40]!r}) is incomplete: {cut}") from None
    if len(layers) != layer_count:
        raise NcnnFormatError(f"declares {layer_count} layers but lists {len(layers)}: {cut}")
    return layers


def _layer(fields: list[str]) -> LayerSpec:
    """One layer line: type, name, input and output counts, blob names, then key=value params."""
    kind, name, n_in, n_out = fields[0], fields[1], int(fields[2]), int(fields[3])
    blobs = fields[4:4 + n_in + n_out]
    if len(blobs) != n_in + n_out:
        raise ValueError("blobs missing")
    params: dict[int, float | int | list[float | int]] = {}
    for item in fields[4 + n_in + n_out:]:
        key_text, _, value = item.partition("=")
        key = int(key_text)
        if key <= -23300:  # an array: "count,v1,v2,..."
            values = [_number(v) for v in value.split(",")]
            count = int(values[0])
            if len(values) != 1 + count:
                raise ValueError("array cut short")
            params[-key - 23300] = values[1:1 + count]
        else:
            params[key] = _number(value)
    return LayerSpec(kind, name, blobs[:n_in], blobs[n_in:], params)


class _WeightReader:
    """Reads weights from a .bin in layer order, the way ncnn's ModelBin does."""

    def __init__(self, data: bytes):
        self.data = data
        self.offset = 0

    def _take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise NcnnFormatError(".bin is shorter than the .param needs")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def raw_fp32(self, count: int) -> np.ndarray:
        return np.frombuffer(self._take(4 * count), "<f4").copy()

    def tagged(self, count: int) -> np.ndarray:
        head = self._take(4)
        tag = struct.unpack("<I", head)[0]
        if tag == _TAG_FP16:
            values = np.frombuffer(self._take(2 * count), "<f2").astype(np.float32)
            self._take((-2 * count) % 4)  # fp16 data is padded to 4 bytes
            return values
        if tag == _TAG_INT8:
            raise NcnnFormatError("int8-quantised weights are not supported")
        if tag == _TAG_FP32_EXTRA or tag == 0:
            return self.raw_fp32(count)
        # any other non-zero tag: a 256-entry float lookup table and one byte per weight
        table = self.raw_fp32(256)
        indices = np.frombuffer(self._take(count), np.uint8)
        self._take((-count) % 4)
        return table[indices]

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise NcnnFormatError(f".bin has {len(self.data) - self.offset} bytes the .param does not use")


def _activation(spec: LayerSpec) -> Callable[[torch.Tensor], torch.Tensor] | None:
    kind = spec.get(9, 0)
    args = spec.get(10, [])
    if kind == 0:
        return None
    if kind == 1:
        return F.relu
    if kind == 2:
        slope = float(args[0]) if args else 0.0
        return lambda x: F.leaky_relu(x, slope)
    if kind == 3:
        low, high = float(args[0]), float(args[1])
        return lambda x: x.clamp(low, high)
    if kind == 4:
        return torch.sigmoid
    if kind == 5:
        return F.mish
    if kind == 6:
        alpha, beta = (float(args[0]), float(args[1])) if args else (0.2, 0.5)
        return lambda x: x * (x * alpha + beta).clamp(0, 1)
    raise NcnnFormatError(f"layer {spec.name}: activation type {kind} is not supported")


def _pads(spec: LayerSpec) -> tuple[int, int, int, int]:
    """(left, right, top, bottom), with ncnn's defaults (each falls back to the one before)."""
    left = spec.get(4, 0)
    right = spec.get(15, left)
    top = spec.get(14, left)
    bottom = spec.get(16, top)
    if min(left, right, top, bottom) < 0:
        raise NcnnFormatError(f"layer {spec.name}: 'SAME' padding (-233/-234) is not supported")
    return left, right, top, bottom


def _geometry(spec: LayerSpec) -> tuple[int, tuple[int, int], tuple[int, int], tuple[int, int], int]:
    """(num_output, kernel, dilation, stride, weight count) of a (de)convolution; each h falls back to w."""
    kw, dw, sw = spec.get(1, 0), spec.get(2, 1), spec.get(3, 1)
    return (spec.get(0, 0), (spec.get(11, kw), kw), (spec.get(12, dw), dw), (spec.get(13, sw), sw),
            spec.get(6, 0))


class _Conv(nn.Module):
    """ncnn Convolution: asymmetric padding, a fused activation."""

    def __init__(self, spec: LayerSpec, weights: _WeightReader):
        super().__init__()
        out, (kh, kw), dilation, stride, size = _geometry(spec)
        groups = spec.get(7, 1) if spec.type == "ConvolutionDepthWise" else 1
        if spec.get(8, 0):
            raise NcnnFormatError(f"layer {spec.name}: int8 convolution is not supported")
        cin = size // (out * kh * kw) * groups
        left, right, top, bottom = _pads(spec)
        self.pad_value = float(spec.get(18, 0.0))
        # symmetric zero padding goes to cuDNN; an explicit pad is a full copy of the tensor
        inside = left == right and top == bottom and self.pad_value == 0.0
        self.pad = None if inside or (left, right, top, bottom) == (0, 0, 0, 0) else (left, right, top, bottom)
        self.conv = nn.Conv2d(cin, out, (kh, kw), stride, (top, left) if inside else 0, dilation, groups,
                              bias=bool(spec.get(5, 0)))
        self.conv.weight.data = torch.from_numpy(weights.tagged(size)).reshape(self.conv.weight.shape)
        if self.conv.bias is not None:
            self.conv.bias.data = torch.from_numpy(weights.raw_fp32(out))
        self.act = _activation(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad, value=self.pad_value)
        x = self.conv(x)
        return self.act(x) if self.act is not None else x


class _Deconv(nn.Module):
    """ncnn Deconvolution. Weights are stored out×in×kh×kw; torch wants in×out×kh×kw."""

    def __init__(self, spec: LayerSpec, weights: _WeightReader):
        super().__init__()
        out, (kh, kw), dilation, stride, size = _geometry(spec)
        if spec.get(20, 0) or spec.get(21, 0):
            raise NcnnFormatError(f"layer {spec.name}: fixed deconvolution output size is not supported")
        cin = size // (out * kh * kw)
        self.conv = nn.ConvTranspose2d(cin, out, (kh, kw), stride, 0, 0, 1, bool(spec.get(5, 0)), dilation)
        stored = torch.from_numpy(weights.tagged(size)).reshape(out, cin, kh, kw)
        self.conv.weight.data = stored.transpose(0, 1).contiguous()
        if self.conv.bias is not None:
            self.conv.bias.data = torch.from_numpy(weights.raw_fp32(out))
        # ncnn computes the full transposed convolution, then crops pads (and adds output_pad)
        self.crop = _pads(spec)
        self.out_pad = (spec.get(18, 0), spec.get(19, spec.get(18, 0)))
        self.act = _activation(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        left, right, top, bottom = self.crop
        right -= self.out_pad[0]
        bottom -= self.out_pad[1]
        if right < 0 or bottom < 0:
            x = F.pad(x, (0, max(0, -right), 0, max(0, -bottom)))
            right, bottom = max(0, right), max(0, bottom)
        if left or right or top or bottom:
            x = x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]
        return self.act(x) if self.act is not None else x


class _InnerProduct(nn.Module):
    def __init__(self, spec: LayerSpec, weights: _WeightReader):
        super().__init__()
        out = spec.get(0, 0)
        size = spec.get(2, 0)
        if spec.get(8, 0):
            raise NcnnFormatError(f"layer {spec.name}: int8 inner product is not supported")
        self.fc = nn.Linear(size // out, out, bias=bool(spec.get(1, 0)))
        self.fc.weight.data = torch.from_numpy(weights.tagged(size)).reshape(out, size // out)
        if self.fc.bias is not None:
            self.fc.bias.data = torch.from_numpy(weights.raw_fp32(out))
        self.act = _activation(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x.flatten(1))
        y = self.act(y) if self.act is not None else y
        return y[:, :, None, None]  # a 1-D blob: N×C×1×1 (see module docstring)


class _PReLU(nn.Module):
    def __init__(self, spec: LayerSpec, weights: _WeightReader):
        super().__init__()
        count = spec.get(0, 1)
        self.slope = nn.Parameter(torch.from_numpy(weights.raw_fp32(count)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.slope)


def _dim(axis: int) -> int:
    """ncnn axes count within one sample (c, h, w); here the batch comes first."""
    return axis + 1 if axis >= 0 else axis


def _interp(spec: LayerSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    mode = {1: "nearest", 2: "bilinear", 3: "bicubic"}.get(spec.get(0, 0))
    if mode is None:
        raise NcnnFormatError(f"layer {spec.name}: Interp resize_type {spec.get(0, 0)} is not supported")
    if spec.get(5, 0):
        raise NcnnFormatError(f"layer {spec.name}: dynamic Interp target size is not supported")
    hs, ws = float(spec.get(1, 1.0)), float(spec.get(2, 1.0))
    out_h, out_w = spec.get(3, 0), spec.get(4, 0)
    align = bool(spec.get(6, 0)) if mode != "nearest" else None

    def interp(x: torch.Tensor) -> torch.Tensor:
        # ncnn derives the sampling step from the sizes (in/out), as torch does given `size`
        h, w = x.shape[-2:]
        size = (out_h or int(h * hs), out_w or int(w * ws))
        return F.interpolate(x, size=size, mode=mode, align_corners=align)

    return interp


def _binary(spec: LayerSpec) -> Callable[..., torch.Tensor]:
    op = spec.get(0, 0)
    ops: dict[int, Callable[[torch.Tensor, torch.Tensor | float], torch.Tensor]] = {
        0: torch.add, 1: torch.sub, 2: torch.mul, 3: torch.div,
        4: torch.maximum, 5: torch.minimum, 6: torch.pow,
        7: lambda a, b: b - a, 8: lambda a, b: b / a, 9: lambda a, b: b ** a,
    }
    if op not in ops:
        raise NcnnFormatError(f"layer {spec.name}: BinaryOp type {op} is not supported")
    fn = ops[op]
    if spec.get(1, 0):  # with a scalar operand
        scalar = float(spec.get(2, 0.0))
        if op in (4, 5):
            return lambda a: fn(a, torch.full_like(a, scalar))
        return lambda a: fn(a, scalar)
    return fn


def _eltwise(spec: LayerSpec) -> Callable[..., torch.Tensor]:
    op = spec.get(0, 1)
    coeffs = [float(c) for c in spec.get(1, [])]

    def eltwise(*xs: torch.Tensor) -> torch.Tensor:
        if op == 0:
            out = xs[0]
            for x in xs[1:]:
                out = out * x
            return out
        if op == 1:
            weights = coeffs or [1.0] * len(xs)
            out = xs[0] * weights[0] if weights[0] != 1.0 else xs[0]
            for x, c in zip(xs[1:], weights[1:]):
                out = out + (x * c if c != 1.0 else x)
            return out
        if op == 2:
            out = xs[0]
            for x in xs[1:]:
                out = torch.maximum(out, x)
            return out
        raise NcnnFormatError(f"layer {spec.name}: Eltwise type {op} is not supported")

    return eltwise


def _crop(spec: LayerSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    starts, ends, axes = spec.get(9, None), spec.get(10, None), spec.get(11, None)
    if starts is not None:  # the slice form: starts/ends/axes arrays
        axes = axes if axes is not None else list(range(len(starts)))
        ends = ends if ends is not None else [-233] * len(starts)

        def crop_slice(x: torch.Tensor) -> torch.Tensor:
            index = [slice(None)] * x.dim()
            for start, end, axis in zip(starts, ends, axes):
                d = _dim(int(axis))
                size = x.shape[d]
                end = size if end == -233 or end > size else (size + end if end < 0 else end)
                start = size + start if start < 0 else start
                index[d] = slice(int(start), int(end))
            return x[tuple(index)]

        return crop_slice
    # the offset form: w/h/c offsets with an output size, or trailing offsets
    woff, hoff, coff = spec.get(0, 0), spec.get(1, 0), spec.get(2, 0)
    outw, outh, outc = spec.get(3, 0), spec.get(4, 0), spec.get(5, 0)
    woff2, hoff2, coff2 = spec.get(6, 0), spec.get(7, 0), spec.get(8, 0)

    def crop_offsets(x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[-3:]
        w_end = woff + outw if outw > 0 else w - woff2
        h_end = hoff + outh if outh > 0 else h - hoff2
        c_end = coff + outc if outc > 0 else c - coff2
        return x[..., coff:c_end, hoff:h_end, woff:w_end]

    return crop_offsets


def _pooling(spec: LayerSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    kind = spec.get(0, 0)
    if spec.get(4, 0):  # global
        if kind == 0:
            return lambda x: x.amax(dim=(-2, -1), keepdim=True)
        return lambda x: x.mean(dim=(-2, -1), keepdim=True)
    kw = spec.get(1, 0)
    kh = spec.get(11, kw)
    sw = spec.get(2, 1)
    sh = spec.get(12, sw)
    left, right, top, bottom = spec.get(3, 0), spec.get(14, spec.get(3, 0)), \
        spec.get(13, spec.get(3, 0)), spec.get(15, spec.get(13, spec.get(3, 0)))
    if spec.get(5, 0) or spec.get(7, 0):
        raise NcnnFormatError(f"layer {spec.name}: pooling pad_mode/adaptive pooling is not supported")
    include_pad = bool(spec.get(6, 1))

    def pool(x: torch.Tensor) -> torch.Tensor:
        if kind == 0:
            x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
            return F.max_pool2d(x, (kh, kw), (sh, sw))
        if left == right and top == bottom:
            return F.avg_pool2d(x, (kh, kw), (sh, sw), (top, left), count_include_pad=include_pad)
        raise NcnnFormatError(f"layer {spec.name}: asymmetric average pooling is not supported")

    return pool


def _pixel_shuffle(spec: LayerSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    r = spec.get(0, 1)
    if spec.get(1, 0) == 0:  # CRD, torch's order
        return lambda x: F.pixel_shuffle(x, r)

    def dcr(x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x.reshape(n, r, r, c // (r * r), h, w).permute(0, 3, 4, 1, 5, 2)
        return x.reshape(n, c // (r * r), h * r, w * r)

    return dcr


_SIMPLE: dict[str, Callable[[LayerSpec], Callable[..., torch.Tensor]]] = {
    "Interp": _interp,
    "BinaryOp": _binary,
    "Eltwise": _eltwise,
    "Crop": _crop,
    "Pooling": _pooling,
    "PixelShuffle": _pixel_shuffle,
    "Concat": lambda spec: (lambda *xs: torch.cat(xs, dim=_dim(int(spec.get(0, 0))))),
    "ReLU": lambda spec: (lambda x: F.leaky_relu(x, float(spec.get(0, 0.0)))
                          if spec.get(0, 0.0) else F.relu(x)),
    "Sigmoid": lambda spec: torch.sigmoid,
    "TanH": lambda spec: torch.tanh,
    "Clip": lambda spec: (lambda x: x.clamp(float(spec.get(0, -3.4e38)), float(spec.get(1, 3.4e38)))),
    "Noop": lambda spec: (lambda x: x),
    "Dropout": lambda spec: (lambda x: x * float(spec.get(0, 1.0)) if spec.get(0, 1.0) != 1.0 else x),
}


@dataclass
class _Step:
    name: str
    inputs: list[str]
    outputs: list[str]
    fn: Callable[..., torch.Tensor] | None  # None: Split (every output is the input)
    release: list[str] = field(default_factory=list)  # blobs dead after this step


class NcnnNet(nn.Module):
    """An ncnn graph as a torch module: N×C×H×W in, N×C'×H'×W' out (one input, one output)."""

    def __init__(self, layers: list[LayerSpec], weights: bytes):
        super().__init__()
        reader = _WeightReader(weights)
        self.modules_by_layer = nn.ModuleDict()
        self.steps: list[_Step] = []
        inputs: list[str] = []
        for spec in layers:
            if spec.type == "Input":
                inputs += spec.outputs
                continue
            if spec.type == "Split":
                fn = None
            elif spec.type in ("Convolution", "ConvolutionDepthWise"):
                fn = self._add(spec, _Conv(spec, reader))
            elif spec.type == "Deconvolution":
                fn = self._add(spec, _Deconv(spec, reader))
            elif spec.type == "InnerProduct":
                fn = self._add(spec, _InnerProduct(spec, reader))
            elif spec.type == "PReLU":
                fn = self._add(spec, _PReLU(spec, reader))
            elif spec.type in _SIMPLE:
                fn = _SIMPLE[spec.type](spec)
            else:
                raise NcnnFormatError(f"layer {spec.name}: layer type {spec.type} is not supported")
            self.steps.append(_Step(spec.name, spec.inputs, spec.outputs, fn))
        reader.finish()
        produced = set(inputs) | {b for s in self.steps for b in s.outputs}
        consumed = {b for s in self.steps for b in s.inputs}
        if missing := consumed - produced:
            raise NcnnFormatError(f"blobs read but never written: {sorted(missing)}")
        outputs = [b for s in self.steps for b in s.outputs if b not in consumed]
        if len(inputs) != 1 or len(outputs) != 1:
            raise NcnnFormatError(f"need one input and one output blob, found inputs {inputs}, "
                                  f"outputs {outputs}")
        self.input_blob, self.output_blob = inputs[0], outputs[0]
        last_read = {b: i for i, s in enumerate(self.steps) for b in s.inputs}
        for blob, i in last_read.items():
            self.steps[i].release.append(blob)

    def _add(self, spec: LayerSpec, module: nn.Module) -> nn.Module:
        key = re.sub(r"\W", "_", spec.name)
        if key in self.modules_by_layer:
            key = f"{key}_{len(self.modules_by_layer)}"
        self.modules_by_layer[key] = module
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blobs = {self.input_blob: x}
        for step in self.steps:
            args = [blobs[b] for b in step.inputs]
            for blob in step.release:
                del blobs[blob]  # free activations as soon as nothing reads them
            if step.fn is None:
                for blob in step.outputs:
                    blobs[blob] = args[0]
            else:
                blobs[step.outputs[0]] = step.fn(*args)
        return blobs[self.output_blob]


def load_ncnn(param: str | Path, weights: str | Path | None = None) -> NcnnNet:
    """Build an `NcnnNet` from a `.param` file and its `.bin` (beside it by default)."""
    param = Path(param)
    weights = Path(weights) if weights is not None else param.with_suffix(".bin")
    try:
        layers = parse_param(param.read_text())
    except (ValueError, IndexError) as exc:
        raise NcnnFormatError(f"{param.name}: {exc}") from exc
    try:
        return NcnnNet(layers, weights.read_bytes())
    except NcnnFormatError as exc:
        raise NcnnFormatError(f"{param.name}: {exc}") from exc
