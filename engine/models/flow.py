"""Optical flow providers for warping the previous output onto the current frame.

Every provider answers one question: for each pixel of the current frame, where was it in
the previous frame? ``estimate(current, previous)`` takes two 1×3×h×w float32 RGB tensors
in [0, 1] at the *low* (input) resolution and returns a 1×2×h×w float32 flow in pixels
(x, y), such that ``warp(previous, flow) ≈ current``. `upsample_flow` brings it to the
output resolution with its vectors scaled by the same factor. Flow always runs in fp32,
whatever precision the diffusion runs in (RAFT in fp16 was one of the seed's crashes).

- ``dis``: OpenCV's DIS (no weights, CPU). Cheap; coarse on large motion.
- ``spynet``: SPyNet weights from a BasicVSR++ checkpoint (mmagic's layout,
  ``generator.spynet.basic_module.N.basic_module.M.conv.weight``; the ``generator.`` prefix
  and a ``state_dict`` wrapper are optional, so a bare SPyNet checkpoint loads too).
- ``raft``: torchvision's RAFT-large with a user's local checkpoint. Needs torchvision,
  which this project keeps optional (on a CPU machine it comes only with a CUDA torch).

The released Stream-DiffVSR was trained and is run upstream with torchvision's RAFT-large
(``Raft_Large_Weights.DEFAULT``), on the ×4 bicubic-upsampled frames.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import UserError
from engine.models.tensor_file import load_failure

class FlowProvider(Protocol):
    name: str

    def estimate(self, current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor: ...


def load_flow(kind: str, weights: str, device: torch.device) -> FlowProvider:
    if kind == "dis":
        return DisFlow()
    if kind == "spynet":
        return SpyNetFlow(weights, device)
    return RaftFlow(weights, device)


# ---- helpers -----------------------------------------------------------------------------

def upsample_flow(flow: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a flow field to height×width, scaling its x and y vectors by the same factors."""
    h, w = flow.shape[-2:]
    up = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
    return up * torch.tensor([width / w, height / h], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)


def warp(image: torch.Tensor, flow: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Sample `image` (N×C×H×W) at each pixel + flow (N×2×H×W, pixels); coordinates in fp32
    at least (fp64 for an fp64 image, which the tests use to compare functions exactly)."""
    n, _, h, w = image.shape
    ctype = torch.float64 if image.dtype == torch.float64 else torch.float32
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=ctype),
                            torch.arange(w, device=image.device, dtype=ctype), indexing="ij")
    gx = (xs + flow[:, 0].to(ctype)) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[:, 1].to(ctype)) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    out = F.grid_sample(image.to(ctype), grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
    return out.to(image.dtype)


# ---- DIS ---------------------------------------------------------------------------------

class DisFlow:
    """OpenCV's dense inverse search on the luma of both frames (CPU)."""

    name = "dis"

    def __init__(self, preset: int | None = None):
        import cv2
        self._cv2 = cv2
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM if preset is None else preset)

    def _gray(self, image: torch.Tensor) -> np.ndarray:
        rgb = (image[0].permute(1, 2, 0).float().cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
        return self._cv2.cvtColor(rgb, self._cv2.COLOR_RGB2GRAY)

    def estimate(self, current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        # calc(I0, I1) gives f with I0(x) ≈ I1(x + f(x)): current → previous, as warp() wants
        flow = self._dis.calc(self._gray(current), self._gray(previous), None)
        return torch.from_numpy(flow).permute(2, 0, 1)[None].to(current.device, torch.float32)


# ---- SPyNet ------------------------------------------------------------------------------

def spynet_state_dict(raw: dict) -> dict[str, torch.Tensor]:
    """The SPyNet weights out of a BasicVSR++ checkpoint (or a bare SPyNet one)."""
    raw = raw.get("state_dict", raw.get("params", raw))
    for prefix in ("generator.spynet.", "spynet.", ""):
        picked = {k[len(prefix):]: v for k, v in raw.items()
                  if k.startswith(prefix + "basic_module.")}
        if picked:
            return picked
    return {}


class SpyNetFlow:
    name = "spynet"

    def __init__(self, path: str, device: torch.device):
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file
            raise UserError(f"cannot read SPyNet weights {path}: {load_failure(exc)}") from None
        from engine.models.basicvsrpp import SPyNet  # the very module BasicVSR++ runs

        state = spynet_state_dict(raw if isinstance(raw, dict) else {})
        net = SPyNet()
        # the normalisation buffers are constants; a bare SPyNet dict may leave them out
        state = {**{k: v for k, v in net.state_dict().items() if k in ("mean", "std")}, **state}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError:
            raise UserError(f"{path} holds no SPyNet weights in the BasicVSR++ layout "
                            "(expected generator.spynet.basic_module.N.basic_module.M.conv.weight)") from None
        self.net = net.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def estimate(self, current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        return self.net(current.float(), previous.float())


# ---- RAFT --------------------------------------------------------------------------------

class RaftFlow:
    """torchvision's RAFT-large, from a local state dict (torchvision's own key layout)."""

    name = "raft"

    def __init__(self, path: str, device: torch.device):
        try:
            from torchvision.models.optical_flow import raft_large
        except ImportError:
            raise UserError("flow=raft needs torchvision, which is not installed") from None
        net = raft_large(weights=None, progress=False)
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise UserError(f"{path} is not a torchvision RAFT-large state dict: {type(exc).__name__}") from None
        self.net = net.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def estimate(self, current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        h, w = current.shape[-2:]
        h8, w8 = -(-h // 8) * 8, -(-w // 8) * 8  # RAFT wants sides divisible by 8
        a = F.pad(current.float() * 2 - 1, (0, w8 - w, 0, h8 - h), mode="replicate")
        b = F.pad(previous.float() * 2 - 1, (0, w8 - w, 0, h8 - h), mode="replicate")
        return self.net(a, b)[-1][..., :h, :w]
