"""The Real-ESRGAN architectures in plain torch, for the authors' `.pth` checkpoints.

Module and parameter names follow the official code (xinntao/Real-ESRGAN, BasicSR), so
their state dicts load with `strict=True`. `from_state_dict` reads the hyper-parameters
off the tensors' shapes, so a user's own fine-tune loads without being described.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn


class SRVGGNetCompact(nn.Module):
    """A plain VGG-style body at low resolution, pixel shuffle, plus the nearest-upsampled input
    (realesr-animevideov3, realesr-general-x4v3)."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_conv: int = 16, upscale: int = 4, act_type: str = "prelu"):
        super().__init__()
        self.upscale = upscale
        self.body = nn.ModuleList([nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), self._act(act_type, num_feat)])
        for _ in range(num_conv):
            self.body.extend([nn.Conv2d(num_feat, num_feat, 3, 1, 1), self._act(act_type, num_feat)])
        self.body.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))

    @staticmethod
    def _act(kind: str, channels: int) -> nn.Module:
        if kind == "prelu":
            return nn.PReLU(num_parameters=channels)
        if kind == "relu":
            return nn.ReLU(inplace=True)
        if kind == "leakyrelu":
            return nn.LeakyReLU(negative_slope=0.1, inplace=True)
        raise ValueError(f"unknown activation {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = F.pixel_shuffle(out, self.upscale)
        return out + F.interpolate(x, scale_factor=self.upscale, mode="nearest")

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> SRVGGNetCompact:
        convs = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"body\.(\d+)\.weight", k))
                       and state[k].dim() == 4)
        first, last = state[f"body.{convs[0]}.weight"], state[f"body.{convs[-1]}.weight"]
        num_feat, num_in = first.shape[:2]
        prelu = state.get("body.1.weight")
        if prelu is None or prelu.dim() != 1:
            raise ValueError("SRVGGNetCompact checkpoint without PReLU slopes: activation unknown")
        num_out = 3 if last.shape[0] % 3 == 0 else 1
        upscale = round((last.shape[0] // num_out) ** 0.5)
        net = cls(num_in, num_out, num_feat, len(convs) - 2, upscale, "prelu")
        net.load_state_dict(state, strict=True)
        return net


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.leaky_relu(self.conv1(x), 0.2)
        x2 = F.leaky_relu(self.conv2(torch.cat((x, x1), 1)), 0.2)
        x3 = F.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), 0.2)
        x4 = F.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), 0.2)
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN's generator (RealESRGAN_x4plus: 23 blocks; x4plus_anime_6B: 6). For x2 and x1
    the input is pixel-unshuffled first, so the body always works at 1/4 of the output size."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32):
        super().__init__()
        self.scale = scale
        # the unshuffle needs sides divisible by this: Real-ESRGAN's inference pads to it ("mod_scale")
        self.input_multiple = 4 // scale
        num_in_ch *= {4: 1, 2: 4, 1: 16}[scale]
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale != 4:
            x = F.pixel_unshuffle(x, 4 // self.scale)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> RRDBNet:
        first = state["conv_first.weight"]
        num_feat, num_in = first.shape[:2]
        scale = {3: 4, 12: 2, 48: 1}.get(num_in)
        if scale is None:
            raise ValueError(f"RRDBNet checkpoint with {num_in} input channels: scale unknown")
        blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.", k)))
        grow = state["body.0.rdb1.conv1.weight"].shape[0]
        net = cls(3, state["conv_last.weight"].shape[0], scale, num_feat, blocks, grow)
        net.load_state_dict(state, strict=True)
        return net


def from_checkpoint(state: object) -> nn.Module:
    """Build the right architecture for a Real-ESRGAN-style checkpoint (params_ema preferred).

    Anything else is a ValueError saying so in one line."""
    if not isinstance(state, dict):
        raise ValueError(f"not a checkpoint of a known architecture (it holds a {type(state).__name__}, "
                         "not a state dict)")
    for key in ("params_ema", "params"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
            break
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:
        arch = RRDBNet
    elif "body.0.weight" in state:
        arch = SRVGGNetCompact
    else:
        raise ValueError("not a checkpoint of a known architecture (expected SRVGGNetCompact or RRDBNet keys)")
    try:
        return arch.from_state_dict(state)
    except (KeyError, RuntimeError, IndexError) as exc:  # a key missing, or a tensor of the wrong shape
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        if lines[0].startswith("Error(s) in loading") and len(lines) > 1:  # load_state_dict's heading
            lines = lines[1:]
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else lines[0].split(". ")[0]
        raise ValueError(f"not a complete {arch.__name__} checkpoint ({detail.rstrip(':.')})") from exc
