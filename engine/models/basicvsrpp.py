"""BasicVSR++ (Chan et al., CVPR 2022) in plain torch, for mmagic's released checkpoints.

The function is mmagic's `BasicVSRPlusPlusNet` (mmagic 1.2.0, `models/editors/basicvsr_plusplus_net`),
and module and parameter names follow it, so its state dicts load with `strict=True`:

- SPyNet computes optical flow between neighbouring low-resolution frames, both directions;
- four propagation branches (backward, forward, backward, forward) each align the previous
  step's features with second-order flow-guided deformable convolution and refine them with
  residual blocks;
- reconstruction from the five feature maps, two ×2 pixel shuffles, plus the bilinearly ×4
  upsampled input (or the input itself for the same-size NTIRE decompression models).

Differences in how, never in what: the deformable convolution is `engine.models.deform` (no
mmcv), sampling coordinates stay fp32 under autocast, flows and features are computed in
chunks of frames, outputs are produced one frame at a time (`frames`) instead of one stacked
high-resolution tensor, and features may be kept in pinned host memory (`offload`).

Checkpoints (`load_checkpoint`): a state dict, or mmagic's `{"state_dict": {"generator.…": …}}`;
`mid_channels`, `num_blocks` and whether the input is low-resolution are read off the tensors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import UserError
from engine.models.deform import coordinate_dtype, modulated_deform_conv2d
from engine.models.tensor_file import load_failure

BRANCHES = ("backward_1", "forward_1", "backward_2", "forward_2")
MIN_SIDE = 64  # SPyNet's coarsest level is 1/32 of the frame; mmagic refuses smaller inputs


def flow_warp(x: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Warp `x` (N×C×H×W) by `flow` (N×H×W×2, pixels, x then y), bilinear, as mmagic's `flow_warp`.

    The sampling grid is fp32 whatever the features' precision (see engine/models/deform.py)."""
    _, _, h, w = x.shape
    exact = coordinate_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        gy, gx = torch.meshgrid(torch.arange(h, device=x.device, dtype=exact),
                                torch.arange(w, device=x.device, dtype=exact), indexing="ij")
        flow = flow.to(exact)
        grid_x = 2.0 * (gx + flow[..., 0]) / max(w - 1, 1) - 1.0
        grid_y = 2.0 * (gy + flow[..., 1]) / max(h - 1, 1) - 1.0
        source = x.to(exact)
        grid = torch.stack((grid_x, grid_y), dim=3)
        out = F.grid_sample(source, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
    return out.to(x.dtype)


class ResidualBlockNoBN(nn.Module):
    def __init__(self, mid_channels: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class ResidualBlocksWithInputConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int = 64, num_blocks: int = 30):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Sequential(*[ResidualBlockNoBN(out_channels) for _ in range(num_blocks)]))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.main(feat)


class PixelShufflePack(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, scale: int, kernel: int):
        super().__init__()
        self.scale = scale
        self.upsample_conv = nn.Conv2d(in_channels, out_channels * scale * scale, kernel, 1, (kernel - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.upsample_conv(x), self.scale)


class _ConvModule(nn.Module):
    """mmcv's ConvModule without a norm: `conv`, then ReLU unless it is the last layer."""

    def __init__(self, cin: int, cout: int, relu: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 7, 1, 3)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class SPyNetBasicModule(nn.Module):
    def __init__(self):
        super().__init__()
        widths = (8, 32, 64, 32, 16, 2)
        self.basic_module = nn.Sequential(*[_ConvModule(a, b, relu=i < 4)
                                            for i, (a, b) in enumerate(zip(widths, widths[1:]))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.basic_module(x)


class SPyNet(nn.Module):
    """Optical flow from `ref` to `supp` (N×3×H×W in [0, 1]) → N×2×H×W, in pixels."""

    def __init__(self):
        super().__init__()
        self.basic_module = nn.ModuleList([SPyNetBasicModule() for _ in range(6)])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def compute_flow(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        n, _, h, w = ref.shape
        refs = [(ref - self.mean) / self.std]
        supps = [(supp - self.mean) / self.std]
        for _ in range(5):
            refs.append(F.avg_pool2d(refs[-1], kernel_size=2, stride=2, count_include_pad=False))
            supps.append(F.avg_pool2d(supps[-1], kernel_size=2, stride=2, count_include_pad=False))
        refs, supps = refs[::-1], supps[::-1]
        flow = refs[0].new_zeros(n, 2, h // 32, w // 32)
        for level in range(len(refs)):
            if level == 0:
                flow_up = flow
            else:
                flow_up = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
            warped = flow_warp(supps[level], flow_up.permute(0, 2, 3, 1), padding_mode="border")
            flow = flow_up + self.basic_module[level](torch.cat([refs[level], warped, flow_up], 1))
        return flow

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        h, w = ref.shape[2:4]
        h_up, w_up = -(-h // 32) * 32, -(-w // 32) * 32  # up to a multiple of 32
        ref = F.interpolate(ref, size=(h_up, w_up), mode="bilinear", align_corners=False)
        supp = F.interpolate(supp, size=(h_up, w_up), mode="bilinear", align_corners=False)
        flow = F.interpolate(self.compute_flow(ref, supp), size=(h, w), mode="bilinear", align_corners=False)
        scale = torch.tensor([w / w_up, h / h_up], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
        return flow * scale


class SecondOrderDeformableAlignment(nn.Module):
    """Deformable convolution whose offsets are residues over the first- and second-order flows."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1,
                 deform_groups: int = 16, max_residue_magnitude: float = 10):
        super().__init__()
        self.out_channels, self.padding, self.deform_groups = out_channels, padding, deform_groups
        self.max_residue_magnitude = max_residue_magnitude
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.conv_offset = nn.Sequential(
            nn.Conv2d(3 * out_channels + 4, out_channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(out_channels, 27 * deform_groups, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor, extra_feat: torch.Tensor, flow_1: torch.Tensor,
                flow_2: torch.Tensor) -> torch.Tensor:
        out = self.conv_offset(torch.cat([extra_feat, flow_1, flow_2], dim=1))
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        exact = coordinate_dtype(x)
        with torch.autocast(x.device.type, enabled=False):  # offsets are coordinates: fp32
            offset = self.max_residue_magnitude * torch.tanh(torch.cat((o1, o2), dim=1).to(exact))
            offset_1, offset_2 = torch.chunk(offset, 2, dim=1)
            offset_1 = offset_1 + flow_1.to(exact).flip(1).repeat(1, offset_1.size(1) // 2, 1, 1)
            offset_2 = offset_2 + flow_2.to(exact).flip(1).repeat(1, offset_2.size(1) // 2, 1, 1)
            offset = torch.cat([offset_1, offset_2], dim=1)
            mask = torch.sigmoid(mask.to(exact))
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, 1, self.padding, 1, 1,
                                       self.deform_groups)


class _Features:
    """Where propagated features live: on the device, or (offload) in pinned host memory.

    Copies both ways are queued on the current stream, so they are ordered with the compute
    that made and uses them, and the host never waits for them."""

    def __init__(self, offload: bool):
        self.offload = offload

    def put(self, t: torch.Tensor) -> torch.Tensor:
        if not self.offload or t.device.type == "cpu":
            return t
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return host.copy_(t, non_blocking=True)

    def get(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        return t.to(device, non_blocking=True)


class BasicVSRPlusPlus(nn.Module):
    """mmagic's BasicVSRPlusPlusNet: N×T×3×H×W in [0, 1] → N×T×3×4H×4W (or H×W if not low-res input)."""

    def __init__(self, mid_channels: int = 64, num_blocks: int = 7, max_residue_magnitude: float = 10,
                 is_low_res_input: bool = True, chunk: int = 8):
        super().__init__()
        self.mid_channels, self.num_blocks = mid_channels, num_blocks
        self.is_low_res_input = is_low_res_input
        self.scale = 4 if is_low_res_input else 1
        # the smallest frame side it takes: the same-size models shrink frames by 4 before SPyNet
        self.min_input_side = MIN_SIDE * (1 if is_low_res_input else 4)
        self.chunk = chunk  # frames per call of SPyNet and the feature extractor: bounds their memory
        self.progress: Callable[[], None] | None = None  # called after each step (the stall watchdog)
        self.spynet = SPyNet()
        if is_low_res_input:
            self.feat_extract = ResidualBlocksWithInputConv(3, mid_channels, 5)
        else:
            self.feat_extract = nn.Sequential(
                nn.Conv2d(3, mid_channels, 3, 2, 1), nn.LeakyReLU(negative_slope=0.1, inplace=True),
                nn.Conv2d(mid_channels, mid_channels, 3, 2, 1), nn.LeakyReLU(negative_slope=0.1, inplace=True),
                ResidualBlocksWithInputConv(mid_channels, mid_channels, 5))
        self.deform_align = nn.ModuleDict()
        self.backbone = nn.ModuleDict()
        for i, name in enumerate(BRANCHES):
            self.deform_align[name] = SecondOrderDeformableAlignment(
                2 * mid_channels, mid_channels, 3, padding=1, deform_groups=16,
                max_residue_magnitude=max_residue_magnitude)
            self.backbone[name] = ResidualBlocksWithInputConv((2 + i) * mid_channels, mid_channels, num_blocks)
        self.reconstruction = ResidualBlocksWithInputConv(5 * mid_channels, mid_channels, 5)
        self.upsample1 = PixelShufflePack(mid_channels, mid_channels, 2, 3)
        self.upsample2 = PixelShufflePack(mid_channels, 64, 2, 3)
        self.conv_hr = nn.Conv2d(64, 64, 3, 1, 1)
        self.conv_last = nn.Conv2d(64, 3, 3, 1, 1)

    @property
    def features_per_pixel(self) -> float:
        """Feature values kept per input pixel of each frame (spatial + four branches)."""
        return 5 * self.mid_channels / (1 if self.is_low_res_input else 16)

    # ---- the network ---------------------------------------------------------------------

    def forward(self, lqs: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(self.frames(lqs)), dim=1)

    def frames(self, lqs: torch.Tensor, offload: bool = False) -> Iterator[torch.Tensor]:
        """The output frames one by one (N×3×sH×sW), so no stacked output is ever held."""
        n, t, c, h, w = lqs.shape
        if t < 2:
            raise ValueError("BasicVSR++ needs at least 2 frames")
        store = _Features(offload)
        device = lqs.device
        if self.is_low_res_input:
            lqs_small = lqs
        else:
            if h % 4 or w % 4:
                raise ValueError(f"the same-size models need sides divisible by 4, got {w}×{h}")
            lqs_small = F.interpolate(lqs.reshape(-1, c, h, w), scale_factor=0.25,
                                      mode="bicubic").view(n, t, c, h // 4, w // 4)
        if min(lqs_small.shape[-2:]) < MIN_SIDE:
            raise ValueError(f"BasicVSR++ needs low-resolution frames of at least {MIN_SIDE}×{MIN_SIDE}, "
                             f"got {lqs_small.shape[-1]}×{lqs_small.shape[-2]}")
        spatial = [store.put(f) for f in self._per_frame(self.feat_extract, lqs)]
        flows_backward, flows_forward = self._flows(lqs_small)
        feats: dict[str, list[torch.Tensor]] = {"spatial": spatial}
        for name in BRANCHES:
            flows = flows_backward if name.startswith("backward") else flows_forward
            feats[name] = self._propagate(feats, flows, name, store, device)
        for i in range(t):
            hr = torch.cat([store.get(feats[k][i], device) for k in feats], dim=1)
            for k in feats:
                feats[k][i] = None  # this frame's features are no longer needed
            hr = self.reconstruction(hr)
            hr = F.leaky_relu(self.upsample1(hr), 0.1)
            hr = F.leaky_relu(self.upsample2(hr), 0.1)
            hr = F.leaky_relu(self.conv_hr(hr), 0.1)
            hr = self.conv_last(hr)
            if self.is_low_res_input:
                hr = hr + F.interpolate(lqs[:, i], scale_factor=4, mode="bilinear", align_corners=False)
            else:
                hr = hr + lqs[:, i]
            yield hr

    def _per_frame(self, module: nn.Module, lqs: torch.Tensor) -> list[torch.Tensor]:
        n, t = lqs.shape[:2]
        out: list[torch.Tensor] = []
        for s in range(0, t, self.chunk):
            part = lqs[:, s:s + self.chunk]
            k = part.shape[1]
            feat = module(part.reshape(n * k, *part.shape[2:]))
            feat = feat.view(n, k, *feat.shape[1:])
            out += [feat[:, i] for i in range(k)]
            self._step_done()
        return out

    def _flows(self, lqs: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """flows_backward[i]: frame i → i+1; flows_forward[i]: frame i+1 → i (mmagic's naming)."""
        n, t, c, h, w = lqs.shape
        backward, forward = [], []
        for s in range(0, t - 1, self.chunk):
            e = min(s + self.chunk, t - 1)
            a = lqs[:, s:e].reshape(-1, c, h, w)
            b = lqs[:, s + 1:e + 1].reshape(-1, c, h, w)
            fb = self.spynet(a, b).view(n, e - s, 2, h, w)
            ff = self.spynet(b, a).view(n, e - s, 2, h, w)
            backward += [fb[:, i] for i in range(e - s)]
            forward += [ff[:, i] for i in range(e - s)]
            self._step_done()
        return backward, forward

    def _propagate(self, feats: dict[str, list[torch.Tensor]], flows: list[torch.Tensor], name: str,
                   store: _Features, device: torch.device) -> list[torch.Tensor]:
        t = len(feats["spatial"])
        order = range(t - 1, -1, -1) if name.startswith("backward") else range(t)
        step = 1 if name.startswith("backward") else -1  # where the previous step's frame is
        others = [k for k in feats if k != "spatial"]
        out: dict[int, torch.Tensor] = {}
        feat_prop = prev_prop = None
        for i, idx in enumerate(order):
            current = store.get(feats["spatial"][idx], device)
            if i == 0:
                feat_prop = current.new_zeros(current.shape[0], self.mid_channels, *current.shape[2:])
            else:
                # flow from this frame to the previous step's frame (first order) and the one before
                flow_n1 = flows[idx if step == 1 else idx - 1].to(device)
                cond_n1 = flow_warp(feat_prop, flow_n1.permute(0, 2, 3, 1))
                if i > 1:
                    feat_n2 = prev_prop
                    flow_n2 = flows[idx + 1 if step == 1 else idx - 2].to(device)
                    flow_n2 = flow_n1 + flow_warp(flow_n2, flow_n1.permute(0, 2, 3, 1))
                    cond_n2 = flow_warp(feat_n2, flow_n2.permute(0, 2, 3, 1))
                else:
                    feat_n2 = torch.zeros_like(feat_prop)
                    flow_n2 = torch.zeros_like(flow_n1)
                    cond_n2 = torch.zeros_like(cond_n1)
                cond = torch.cat([cond_n1, current, cond_n2], dim=1)
                prev_prop = feat_prop
                feat_prop = self.deform_align[name](torch.cat([feat_prop, feat_n2], dim=1), cond,
                                                    flow_n1, flow_n2)
            feat = torch.cat([current] + [store.get(feats[k][idx], device) for k in others]
                             + [feat_prop], dim=1)
            feat_prop = feat_prop + self.backbone[name](feat)
            out[idx] = store.put(feat_prop)
            self._step_done()
        return [out[i] for i in range(t)]

    def _step_done(self) -> None:
        if self.progress is not None:
            self.progress()


# ---- checkpoints -------------------------------------------------------------------------------

def _tensors(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The generator's state dict from a checkpoint object (mmagic layout or a bare state dict)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"{source}: not a BasicVSR++ checkpoint (no state dict of tensors)")
    wrapper = next((k for k in ("params_ema", "params") if isinstance(obj.get(k), dict)), None)
    if wrapper is not None:  # BasicSR's layout: Real-ESRGAN and other image models
        raise UserError(f"{source}: not a BasicVSR++ checkpoint (its '{wrapper}' wrapper is BasicSR's "
                        "layout, as Real-ESRGAN's image models use; for those use upscale:model=FILE)")
    if any(k.startswith("generator.") for k in obj):  # mmagic's model: generator + other parts
        obj = {k[len("generator."):]: v for k, v in obj.items() if k.startswith("generator.")}
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
    bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise UserError(f"{source}: not a BasicVSR++ checkpoint (key '{bad}' is not a tensor)")
    return obj


def from_state_dict(state: dict[str, torch.Tensor], source: str = "checkpoint") -> BasicVSRPlusPlus:
    """Build the network that `state` describes and load it strictly.

    A missing, unexpected or mis-shaped tensor is a one-line `UserError` naming the first such key."""
    if "feat_extract.main.0.weight" in state:
        low_res, first = True, state["feat_extract.main.0.weight"]
    elif "feat_extract.0.weight" in state:
        low_res, first = False, state["feat_extract.0.weight"]
    else:
        raise UserError(f"{source}: missing key 'feat_extract.main.0.weight' (not a BasicVSR++ generator)")
    mid = int(first.shape[0])
    blocks = {int(m.group(1)) for k in state
              if (m := re.fullmatch(r"backbone\.backward_1\.main\.2\.(\d+)\.conv1\.weight", k))}
    if not blocks:
        raise UserError(f"{source}: missing key 'backbone.backward_1.main.2.0.conv1.weight'")
    net = BasicVSRPlusPlus(mid_channels=mid, num_blocks=max(blocks) + 1, is_low_res_input=low_res)
    expected = net.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise UserError(f"{source}: missing key '{key}' (mid_channels={mid}, num_blocks={net.num_blocks})")
        if tuple(state[key].shape) != tuple(value.shape):
            raise UserError(f"{source}: key '{key}' has shape {tuple(state[key].shape)}, "
                            f"expected {tuple(value.shape)} (mid_channels={mid}, num_blocks={net.num_blocks})")
    extra = next((k for k in state if k not in expected), None)
    if extra is not None:
        raise UserError(f"{source}: unexpected key '{extra}' (mid_channels={mid}, num_blocks={net.num_blocks})")
    bad = next((k for k, v in state.items() if not torch.isfinite(v).all()), None)
    if bad is not None:
        raise UserError(f"{source}: key '{bad}' holds NaN or infinite values")
    net.load_state_dict(state, strict=True)
    return net.eval()


def load_checkpoint(path: str | Path) -> BasicVSRPlusPlus:
    """A BasicVSR++ network from mmagic's `.pth` (or a bare state dict), checked key by key."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise UserError(f"BasicVSR++ checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - garbage raises KeyError, a cut file OSError, ...
        raise UserError(f"cannot load BasicVSR++ checkpoint {name}: {load_failure(exc)}") from exc
    return from_state_dict(_tensors(obj, name), name)
