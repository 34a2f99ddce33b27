"""Build a runnable upscaler from a catalogue name or a user's own model file.

`load_model("animevideov3-x2")` or `load_model("/path/net.pth" | "/path/net.param")` gives an
`Upscaler`: N×3×H×W floats in [0, 1] → N×3×sH×sW, computing what the authors' own program
computes, border handling included.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import UserError
from engine.models.archs import from_checkpoint
from engine.models.catalogue import USER_MODEL_PAD, check_model
from engine.models.ncnn import NcnnFormatError, load_ncnn
from engine.models.tensor_file import load_failure


class Upscaler(nn.Module):
    """A super-resolution net with the border handling its authors' program uses.

    The input is padded by `pre_pad` pixels (the image reflected, as ncnn's programs do) and
    up to a `multiple` at the far sides, the net runs, and the output is cropped back to
    exactly scale × the input. Without the pad, zero-padded convolutions darken the
    frame's outer rows. With `residual`, the net's output is added to the nearest-upsampled
    input (Real-CUGAN x4).
    """

    def __init__(self, net: nn.Module, scale: int, pre_pad: int = 0, pad_mode: str = "reflect",
                 multiple: int = 1, name: str = "", residual: bool = False):
        super().__init__()
        self.net, self.scale, self.pre_pad = net, scale, pre_pad
        self.pad_mode, self.multiple, self.name, self.residual = pad_mode, multiple, name, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p, m, s = self.pre_pad, self.multiple, self.scale
        extra_h, extra_w = (-(h + 2 * p)) % m, (-(w + 2 * p)) % m
        padded = x
        if p or extra_h or extra_w:
            # reflection needs more pixels than it reflects; a tiny frame repeats its edge
            mode = self.pad_mode if min(h, w) > p + max(extra_h, extra_w) else "replicate"
            padded = F.pad(x, (p, p + extra_w, p, p + extra_h), mode=mode)
            if x.is_contiguous(memory_format=torch.channels_last):
                # padding returns NCHW; the convolutions run 2× faster channels_last
                padded = padded.contiguous(memory_format=torch.channels_last)
        y = self.net(padded)
        # whatever border the net keeps is symmetric, apart from the extra rows at the far side
        top = (y.shape[-2] - s * (h + extra_h)) // 2
        left = (y.shape[-1] - s * (w + extra_w)) // 2
        y = y[..., top:top + s * h, left:left + s * w]
        if self.residual:
            y = y + F.interpolate(x, scale_factor=s, mode="nearest")
        return y


def _measure_scale(net: nn.Module, source: str) -> int:
    with torch.no_grad():
        y = net(torch.rand(1, 3, 32, 32))
    scale = y.shape[-1] // 32
    if y.shape[-1] != 32 * scale or y.shape[-2] != 32 * scale or y.shape[1] != 3 or scale < 1:
        raise UserError(f"{source}: maps 3×32×32 to {tuple(y.shape[1:])}, not an RGB upscaler")
    return scale


def load_model(name_or_path: str) -> Upscaler:
    """A named model, or a user's `.param` (with its `.bin` beside it) or `.pth` checkpoint."""
    info = check_model(name_or_path)
    if info is not None:
        param, weights = info.files()
        net = load_ncnn(param, weights)
        return Upscaler(net, info.scale, info.pre_pad, info.pad_mode, info.multiple, info.name,
                        info.residual).eval()
    path = Path(name_or_path)
    if path.suffix == ".param":
        try:
            net = load_ncnn(path)
        except NcnnFormatError as exc:  # its message names the file
            raise UserError(f"cannot load model {exc}") from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - garbage raises KeyError, a cut file OSError, ...
            raise UserError(f"cannot load model {path.name}: {load_failure(exc)}") from exc
        try:
            net = from_checkpoint(state)
        except ValueError as exc:
            raise UserError(f"cannot load model {path.name}: {exc}") from exc
    net.eval()
    # user files get the Real-ESRGAN border handling, the convention of both formats' authors; an
    # RRDBNet at x2/x1 pixel-unshuffles its input, so it is padded (reflected) to a multiple of 2/4
    multiple = getattr(net, "input_multiple", 1)
    return Upscaler(net, _measure_scale(net, path.name), USER_MODEL_PAD, "reflect", multiple, path.name).eval()
