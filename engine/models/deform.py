"""Modulated deformable convolution (DCNv2) in plain torch: no compiled extension, no torchvision.

Computes what mmcv's `modulated_deform_conv2d` computes. For output pixel p, kernel tap k and
deformable group g, the input is sampled bilinearly at

    p·stride − padding + k·dilation + offset[g, k]        (offset[g, k] = (dy, dx))

with zeros outside the image (each of the four corners counts only if it lies inside), the sample
is multiplied by mask[g, k], and the weights of tap k are applied. mmcv's layout of the channels:
`offset` is N × (G·K·2) × H' × W' ordered (g, k, dy/dx), `mask` is N × (G·K) × H' × W' ordered (g, k).

How it is computed, and why:
- `grid_sample(align_corners=True, padding_mode="zeros")` is exactly that bilinear rule.
- One tap at a time: the sampled taps of all K positions at once (im2col) would be K× the input,
  about 2 GB for BasicVSR++ at 1024×432; per tap the extra memory is one input-sized tensor,
  and the K per-tap 1×1 convolutions add up to the same arithmetic as the K×K one.
- Sampling coordinates and the sampled values stay fp32 under autocast: at 1024 px wide an fp16
  coordinate is off by up to 0.25 px, which measurably broke BasicVSR++'s alignment (mean error
  0.09 on outputs of mean 0.48); fp16 features with fp32 coordinates were off by 1e-4. The
  1×1 products run in whatever precision autocast picks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Pair = tuple[int, int]


def _pair(v: int | Pair) -> Pair:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def coordinate_dtype(x: torch.Tensor) -> torch.dtype:
    """Sampling coordinates and samples: fp32 under any autocast, fp64 for fp64 inputs (tests)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def modulated_deform_conv2d(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
                            weight: torch.Tensor, bias: torch.Tensor | None,
                            stride: int | Pair = 1, padding: int | Pair = 0, dilation: int | Pair = 1,
                            groups: int = 1, deform_groups: int = 1) -> torch.Tensor:
    """mmcv.ops.modulated_deform_conv2d's function (same arguments, same channel layout)."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    taps = kh * kw
    ho, wo = offset.shape[-2:]
    if c % deform_groups or offset.shape[1] != 2 * deform_groups * taps or mask.shape[1] != deform_groups * taps:
        raise ValueError(f"deformable conv: {c} channels, offset {tuple(offset.shape)} and mask "
                         f"{tuple(mask.shape)} do not fit {deform_groups} groups of {kh}×{kw} taps")
    g = deform_groups
    exact = coordinate_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        # each deformable group samples its own channels with its own offsets
        source = x.to(exact).reshape(n * g, c // g, h, w)
        offset = offset.to(exact).reshape(n, g, taps, 2, ho, wo)
        mask = mask.to(exact).reshape(n, g, taps, ho, wo)
        base_y = (torch.arange(ho, device=x.device, dtype=exact) * sh - ph).view(ho, 1)
        base_x = (torch.arange(wo, device=x.device, dtype=exact) * sw - pw).view(1, wo)
        # align_corners=True: pixel i sits at -1 + 2i/(size-1)
        scale_y, scale_x = 2.0 / max(h - 1, 1), 2.0 / max(w - 1, 1)
    out = None
    for k in range(taps):
        i, j = divmod(k, kw)
        with torch.autocast(x.device.type, enabled=False):
            y = (offset[:, :, k, 0] + (base_y + i * dh)) * scale_y - 1.0      # N × G × H' × W'
            xs = (offset[:, :, k, 1] + (base_x + j * dw)) * scale_x - 1.0
            grid = torch.stack((xs, y), dim=-1).reshape(n * g, ho, wo, 2)
            sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            sampled = (sampled.reshape(n, g, c // g, ho, wo) * mask[:, :, k, None]).reshape(n, c, ho, wo)
        term = F.conv2d(sampled, weight[:, :, i:i + 1, j:j + 1], None, 1, 0, 1, groups)
        out = term if out is None else out + term
    if bias is not None:
        out = out + bias.view(1, c_out, 1, 1).to(out.dtype)
    return out
