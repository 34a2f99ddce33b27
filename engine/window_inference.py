"""The device runner for temporal models: a window of frames in, one output per frame.

`WindowRunner.run(frames)` takes the window the engine's runner built (H×W×3 uint8/uint16
frames, in order) and returns one output image per frame. On the device:

- frames go up as integers and become floats there; outputs come back as integers, one frame
  at a time as the model produces them (`frames()` of the network), so neither a stacked float
  output nor the whole window's high-resolution floats ever exist;
- autocast (fp16 on CUDA by default, fp32 on the CPU), channels_last weights, cudnn benchmark
  and TF32, as engine/inference.py sets them for image models;
- features may live in pinned host memory (`offload`): mmagic's `cpu_cache`, but with copies
  queued on the compute stream instead of a synchronising `.cuda()`/`.cpu()` per frame.

Out of memory, the window is run again, never partly emitted: first as sub-windows of half the
length that share `overlap` frames of context (the engine's own window rule, so every frame
keeps its context), down to 2·overlap+1 frames; then as spatial tiles of the whole
(sub-)window, blended by `engine.inference.tiled_forward`. No frame is lost or repeated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch

from engine.errors import UserError
from engine.inference import (CUDA_ONLY_SETTINGS, MIN_TILE, Precision, autocast, halved_tile, resolve_device,
                              resolve_precision, resolved_settings, set_backends, tile_overlap, tiled_forward)


@dataclass(frozen=True)
class WindowSettings:
    device: str = "auto"
    precision: Precision = "auto"
    channels_last: bool = True
    cudnn_benchmark: bool = True
    tf32: bool = True
    window: int = 96               # the longest sequence given to the model in one call
    overlap: int = 8               # context frames shared by neighbouring sub-windows (OOM backoff)
    tile: int = 0                  # tile side in input pixels; 0: whole frames until memory runs out
    tile_overlap: int = 16
    offload: Literal["auto", "on", "off"] = "auto"
    memory_fraction: float = 0.6   # of free device memory the features may take before offloading


class WindowRunner:
    """Runs a sequence model (`frames(lqs, offload)` yielding N×3×sH×sW per frame) over windows."""

    def __init__(self, net: torch.nn.Module, scale: int, settings: WindowSettings = WindowSettings()):
        self.net, self.scale, self.settings = net, scale, settings
        self.device = resolve_device(settings.device)
        self.cuda = self.device.type == "cuda"
        self.precision = resolve_precision(settings.precision, self.device)
        self.window = settings.window
        self.tile = settings.tile
        # the same-size models shrink each tile by 4 before the flow network, which needs MIN_SIDE
        self.smallest_tile = max(MIN_TILE, getattr(net, "min_input_side", MIN_TILE))
        if self.tile and self.tile < self.smallest_tile:
            raise UserError(f"tile {self.tile} is too small for this model: tiles must be at least "
                            f"{self.smallest_tile} pixels")
        self.offload = settings.offload == "on"
        self.oom_retries = 0
        # the stage's StageContext.progress: called as the model works through a window (a
        # model with a `progress` attribute, BasicVSR++, is given it for its steps too)
        self.progress: Callable[[], None] = lambda: None

    def open(self) -> None:
        s = self.settings
        if hasattr(self.net, "progress"):
            self.net.progress = lambda: self.progress()
        if self.cuda:
            set_backends(s.cudnn_benchmark, s.tf32)
        self.net = self.net.to(self.device).eval()
        if s.channels_last:  # channels_last weights make the convolutions' outputs channels_last
            self.net = self.net.to(memory_format=torch.channels_last)
        for p in self.net.parameters():
            p.requires_grad_(False)

    def describe(self) -> dict[str, Any]:
        # offload (and the memory share that decides it) moves features to host memory: on the
        # CPU they are there already, so a CPU report leaves them out rather than say "on"
        cuda_only = (*CUDA_ONLY_SETTINGS, "offload", "memory_fraction")
        return {**resolved_settings(self.settings, self.cuda, cuda_only), "device": str(self.device),
                "precision": self.precision, "window": self.window, "tile": self.tile,
                **({"offload": self.offload} if self.cuda else {}),
                "tile_overlap": tile_overlap(self.settings.tile_overlap, self.tile),
                "oom_retries": self.oom_retries,
                "device_name": torch.cuda.get_device_name(self.device) if self.cuda else "cpu",
                "torch": torch.__version__}

    def plan(self, frames: int, height: int, width: int, features_per_pixel: float) -> None:
        """Offload features to pinned host memory (auto) when a window's would not fit the device.

        `features_per_pixel`: feature values the model keeps per input pixel of every frame."""
        if self.settings.offload != "auto" or not self.cuda:
            return
        free, _ = torch.cuda.mem_get_info(self.device)
        need = features_per_pixel * height * width * frames * (2 if self.precision != "fp32" else 4)
        self.offload = need > free * self.settings.memory_fraction

    # ---- the work ----------------------------------------------------------------------------

    def run(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """One output per input frame, in order. The inputs are not modified."""
        single = len(frames) == 1
        if single:  # the model needs two frames: a still pair is the only honest sequence
            frames = frames * 2
        host = torch.from_numpy(np.stack(frames))
        if self.cuda:
            host = host.pin_memory()
        x = host.to(self.device, non_blocking=True)
        while True:
            try:
                out = self._windows(x)
                break
            except torch.OutOfMemoryError:
                if not self._shrink(x.shape[0], x.shape[1], x.shape[2]):
                    raise
        result = out.cpu().numpy() if self.cuda else out.numpy()
        return [result[0]] if single else list(result)

    def _shrink(self, frames: int, height: int, width: int) -> bool:
        """After an out-of-memory error on `frames` frames: shorter sub-windows, then tiles.
        False if nothing is left."""
        if self.cuda:
            torch.cuda.empty_cache()
        self.oom_retries += 1
        shortest = max(2, 2 * self.settings.overlap + 1)  # the model needs two frames
        # halve what actually ran: a short (last) window under the set length would else
        # run again unchanged, once per halving that does not reach it
        ran = min(self.window, frames)
        if ran > shortest:
            self.window = max(shortest, ran // 2)
            return True
        tile = halved_tile(self.tile, height, width, self.smallest_tile)
        if tile is None:
            return False
        self.tile = tile
        return True

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        """Sub-windows of `self.window` frames sharing `overlap` frames: [s, s+K) gives
        [s+O, s+K-O), the first from s, the last to its end (the engine's window rule)."""
        t = x.shape[0]
        size, overlap = self.window, self.settings.overlap
        if t <= size:
            return self._sequence(x)
        out = torch.empty((t, x.shape[1] * self.scale, x.shape[2] * self.scale, x.shape[3]),
                          dtype=x.dtype, device=x.device)
        start, done = 0, 0
        while done < t:
            end = min(start + size, t)
            if end < t and t - end + 2 * overlap < 2:  # never leave a 1-frame tail (overlap 0)
                end = t
            part = self._sequence(x[start:end])
            keep_to = end if end == t else end - overlap
            out[done:keep_to] = part[done - start:keep_to - start]
            done = keep_to
            start = max(done - overlap, 0)
        return out

    def _sequence(self, x: torch.Tensor) -> torch.Tensor:
        """T×H×W×3 integers → T×sH×sW×3 integers: the model over one sequence."""
        top = 255.0 if x.dtype == torch.uint8 else 65535.0
        t, h, w, _ = x.shape
        lq = x.permute(0, 3, 1, 2).float().div_(top)
        out = torch.empty((t, h * self.scale, w * self.scale, 3), dtype=x.dtype, device=x.device)
        with torch.no_grad(), autocast(self.device, self.precision):
            if self.tile and (h > self.tile or w > self.tile):
                def sequence(tiles: torch.Tensor) -> torch.Tensor:  # a tile of every frame
                    return torch.cat([y.float() for y in self.net.frames(tiles[None], self.offload)])
                y = tiled_forward(sequence, lq, self.scale, self.tile, self.settings.tile_overlap, batch=t)
                out.copy_(_to_int(y, top, x.dtype))
            else:
                for i, y in enumerate(self.net.frames(lq[None], self.offload)):
                    out[i] = _to_int(y, top, x.dtype)[0]
                    self.progress()
        return out

    def close(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()


def _to_int(y: torch.Tensor, top: float, dtype: torch.dtype) -> torch.Tensor:
    return y.float().clamp_(0, 1).mul_(top).round_().to(dtype).permute(0, 2, 3, 1)

