"""The device runner: one way to run any image model on batches of frames, on a GPU or the CPU.

On CUDA, batches move through a ring of pinned host buffers and three streams ordered by
events, so while batch k computes, batch k+1 uploads and batch k-1 downloads::

    host: stage k+1 into pinned ─┐
    upload stream:   H2D k+1 ────┴─▶ event ─┐
    compute stream:  model k ───────────────┴─▶ event ─┐
    download stream: D2H k-1 ──────────────────────────┴─▶ event ─▶ host reads k-1

The host thread never synchronises per frame: `submit` returns whichever batches have
finished, and waits only when every ring slot is in flight. Frames travel as uint8 (or
uint16) H×W×3 and become floats on the device, so PCIe carries a quarter of the bytes.

On the CPU the same steps run in order on the calling thread; the ring, streams and
events become no-ops. Tests cover that path; the CUDA one is covered where a GPU exists.

Batch size comes from the frame size and free device memory (a measured probe); a CUDA
out-of-memory error halves the batch (then tiles the frame) and retries, so no frame is
lost or repeated. Frames too large for memory are tiled with overlapping tiles blended by
linear ramps, so there are no seams.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

Precision = Literal["auto", "fp32", "fp16", "bf16"]

MAX_BATCH = 8            # more frames per call gains nothing once the device is full
# Pixels per model call that keep the device busy. On an H200, animevideov3 ran within 5 %
# from batch 1 to 8 at 720p and 1080p; bigger batches only make the output burstier.
TARGET_PIXELS = 4_000_000
MIN_TILE = 64            # below this, tiles are mostly overlap


@dataclass(frozen=True)
class InferenceSettings:
    device: str = "auto"              # auto (cuda when available) | cpu | cuda | cuda:N
    precision: Precision = "auto"     # auto: fp16 on CUDA, fp32 on the CPU
    channels_last: bool = True
    cudnn_benchmark: bool = True
    tf32: bool = True
    compile: bool = False             # torch.compile the model (first batches are slow)
    batch: int = 0                    # frames per model call; 0: from frame size and free memory
    tile: int = 0                     # tile side in input pixels; 0: only when a frame does not fit
    tile_overlap: int = 32            # input pixels shared by neighbouring tiles, blended
    ring: int = 3                     # batches in flight (pinned buffers) on CUDA
    memory_fraction: float = 0.6      # of free device memory the batch may plan to use


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for, but torch sees no CUDA GPU")
    return device


def resolve_precision(precision: Precision, device: torch.device) -> str:
    """auto: fp16 on CUDA, fp32 on the CPU (CPU fp16/bf16 convolutions are slower than fp32)."""
    return precision if precision != "auto" else ("fp16" if device.type == "cuda" else "fp32")


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision (none for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def set_backends(cudnn_benchmark: bool, tf32: bool) -> None:
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of side `tile` covering [0, length), neighbours sharing >= `overlap`."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def _ramp(length: int, start: int, end: int, total: int, fade: int) -> torch.Tensor:
    """Blend weights along one axis of a tile covering [start, end) of [0, total).

    At an edge shared with a neighbour the weight is 0 over the outer quarter of the
    overlap (where the tile's own border padding shows), then rises linearly; at the
    frame's edge it stays 1. Neighbours overlap by `fade`, so weights never sum to 0.
    """
    w = torch.ones(length)
    if fade > 0:
        dead = fade // 4
        ramp = torch.zeros(fade)
        ramp[dead:] = (torch.arange(fade - dead, dtype=torch.float32) + 0.5) / (fade - dead)
        if start > 0:
            w[:fade] = ramp
        if end < total:
            w[length - fade:] = torch.minimum(w[length - fade:], ramp.flip(0))
    return w


def tiled_forward(model: nn.Module, x: torch.Tensor, scale: int, tile: int, overlap: int,
                  batch: int) -> torch.Tensor:
    """Run `model` over overlapping tiles of `x` (N×C×H×W) and blend them into one output.

    Each output pixel is a weighted mean of the tiles covering it; weights fall linearly to
    ~0 towards a tile's inner edges, where its own border handling makes it least right.
    """
    n, c, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    overlap = min(overlap, tile // 4)  # an automatic tile may be small: keep most of it new
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    out = weight = None
    boxes = [(y, x0) for y in ys for x0 in xs]
    for first in range(0, len(boxes), max(1, batch // n)):
        chunk = boxes[first:first + max(1, batch // n)]
        tiles = torch.cat([x[:, :, y:y + th, x0:x0 + tw] for y, x0 in chunk])
        result = model(tiles)
        if out is None:
            out = torch.zeros(n, result.shape[1], h * scale, w * scale, device=x.device, dtype=torch.float32)
            weight = torch.zeros(1, 1, h * scale, w * scale, device=x.device, dtype=torch.float32)
        for i, (y, x0) in enumerate(chunk):
            fade_y = min(overlap, th) * scale if len(ys) > 1 else 0
            fade_x = min(overlap, tw) * scale if len(xs) > 1 else 0
            wy = _ramp(th * scale, y, y + th, h, fade_y).to(x.device)
            wx = _ramp(tw * scale, x0, x0 + tw, w, fade_x).to(x.device)
            mask = wy[:, None] * wx[None, :]
            region = (slice(None), slice(None), slice(y * scale, (y + th) * scale),
                      slice(x0 * scale, (x0 + tw) * scale))
            out[region] += result[i * n:(i + 1) * n].float() * mask
            weight[region] += mask
    return out / weight


class _Slot:
    """One batch's worth of buffers: pinned host input/output, device input, and its events."""

    def __init__(self, shape: tuple[int, ...], out_shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device):
        cuda = device.type == "cuda"
        self.host_in = torch.empty(shape, dtype=dtype, pin_memory=cuda)
        self.host_out = torch.empty(out_shape, dtype=dtype, pin_memory=cuda) if cuda else None
        self.dev_in = torch.empty(shape, dtype=dtype, device=device) if cuda else None
        self.done: torch.cuda.Event | None = None


@dataclass
class _InFlight:
    slot: _Slot
    tag: Any
    count: int
    result: torch.Tensor   # the device output (CUDA) or the output itself (CPU)


class InferenceRunner:
    """Runs `model` (N×3×H×W floats in [0,1] → N×3×sH×sW) over batches of H×W×3 frames."""

    def __init__(self, model: nn.Module, scale: int, settings: InferenceSettings = InferenceSettings()):
        self.model, self.scale, self.settings = model, scale, settings
        self.device = resolve_device(settings.device)
        self.cuda = self.device.type == "cuda"
        self.precision = resolve_precision(settings.precision, self.device)
        self.batch = settings.batch
        self.tile = settings.tile
        self.oom_retries = 0
        self._shape: tuple[int, ...] | None = None
        self._planned: tuple[int, int] | None = None
        self._slots: list[_Slot] = []
        self._next = 0
        self._pending: deque[_InFlight] = deque()
        self._streams: tuple[Any, Any, Any] | None = None

    # ---- set-up ---------------------------------------------------------------------------

    def open(self) -> None:
        s = self.settings
        if self.cuda:
            set_backends(s.cudnn_benchmark, s.tf32)
            self._streams = (torch.cuda.Stream(self.device), torch.cuda.Stream(self.device),
                             torch.cuda.Stream(self.device))
        self.model = self.model.to(self.device).eval()
        if s.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._forward = torch.compile(self.model) if s.compile else self.model

    def describe(self) -> dict[str, Any]:
        """The settings as resolved on this machine, for the report."""
        return {**asdict(self.settings), "device": str(self.device), "precision": self.precision,
                "batch": self.batch, "tile": self.tile, "oom_retries": self.oom_retries,
                "device_name": torch.cuda.get_device_name(self.device) if self.cuda else "cpu",
                "torch": torch.__version__}

    def plan(self, height: int, width: int) -> None:
        """Choose batch and tile for this frame size, unless the settings fix them."""
        self._planned = (height, width)
        if self.batch and self.tile:
            return
        try:
            per_frame = self._bytes_per_frame(height, width)
        except torch.OutOfMemoryError:  # not even the probe fits: smallest tiles, one at a time
            per_frame = math.inf
        if self.cuda:
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = free * self.settings.memory_fraction
        else:
            budget = _available_host_memory() * self.settings.memory_fraction
        if not self.tile and per_frame > budget:
            side = int(math.sqrt(budget / per_frame * height * width)) if per_frame < math.inf else 0
            self.tile = max(MIN_TILE, side // 8 * 8)
        if not self.batch:
            if not self.cuda:
                self.batch = 1  # on the CPU one frame already fills every core
            else:
                pixels = min(self.tile, height) * min(self.tile, width) if self.tile else height * width
                fits = int(budget // max(1.0, per_frame * pixels / (height * width)))
                wanted = max(1, round(TARGET_PIXELS / pixels))
                self.batch = max(1, min(MAX_BATCH, fits, wanted))

    def _bytes_per_frame(self, height: int, width: int) -> float:
        """Device memory one frame needs, scaled from a measured 128×128 probe."""
        side = 128
        probe = torch.rand(1, 3, side, side, device=self.device)
        if self.settings.channels_last:
            probe = probe.contiguous(memory_format=torch.channels_last)
        if self.cuda:
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            with torch.no_grad(), self._autocast():
                self.model(probe)
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - base
        else:
            peak = _largest_activation(self.model, probe, self._autocast) * 3  # a few live at once
        # frames travel as uint8 in and out too, but activations dominate by far
        return peak * (height * width) / (side * side) * 1.25

    def _autocast(self):
        return autocast(self.device, self.precision)

    def _ensure_slots(self, frames: list[np.ndarray]) -> None:
        shape = (len(frames),) + frames[0].shape
        key = shape[1:] + (frames[0].dtype,)
        if self._shape == key and len(self._slots) and self._slots[0].host_in.shape[0] >= len(frames):
            return
        self._complete(all_=True)  # buffers are about to be replaced: nothing may be in flight
        h, w = frames[0].shape[:2]
        if self._planned != (h, w):
            self.plan(h, w)
        dtype = torch.from_numpy(frames[0][:1, :1]).dtype
        batch = max(self.batch, len(frames))
        in_shape = (batch, h, w, frames[0].shape[2])
        out_shape = (batch, h * self.scale, w * self.scale, frames[0].shape[2])
        count = self.settings.ring if self.cuda else 1
        self._slots = [_Slot(in_shape, out_shape, dtype, self.device) for _ in range(count)]
        self._shape = key

    # ---- the pipeline ------------------------------------------------------------------------

    def submit(self, frames: list[np.ndarray], tag: Any = None) -> list[tuple[Any, list[np.ndarray]]]:
        """Queue one batch (same size and dtype) and return the batches that finished, oldest first."""
        self._ensure_slots(frames)
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        if slot.done is not None:  # the ring came round: this slot's last batch must be out
            slot.done.synchronize()
        n = len(frames)
        for i, frame in enumerate(frames):
            slot.host_in[i].numpy()[...] = frame  # pinned staging: the one host copy
        upload, compute, download = self._streams or (None, None, None)
        with _on(upload):
            source = slot.host_in[:n]
            if self.cuda:
                source = slot.dev_in[:n]
                source.copy_(slot.host_in[:n], non_blocking=True)
            uploaded = _event(upload)
        with _on(compute):
            if uploaded is not None:
                compute.wait_event(uploaded)
            result = self._compute(source)
            computed = _event(compute)
        with _on(download):
            if computed is not None:
                download.wait_event(computed)
                slot.host_out[:n].copy_(result, non_blocking=True)
                result.record_stream(download)  # the allocator must not reuse it before the copy
            slot.done = _event(download)
        self._pending.append(_InFlight(slot, tag, n, result))
        return self._complete(all_=False)

    def drain(self) -> list[tuple[Any, list[np.ndarray]]]:
        """End of stream: wait for every batch in flight."""
        return self._complete(all_=True)

    def _complete(self, all_: bool) -> list[tuple[Any, list[np.ndarray]]]:
        finished = []
        while self._pending:
            job = self._pending[0]
            ring_full = len(self._pending) >= len(self._slots)
            if job.slot.done is not None and not (all_ or ring_full or job.slot.done.query()):
                break
            if job.slot.done is not None:
                job.slot.done.synchronize()
                # the slot is reused by a later batch: hand out copies
                outputs = [job.slot.host_out[i].numpy().copy() for i in range(job.count)]
            else:
                outputs = [job.result[i].numpy() for i in range(job.count)]
            self._pending.popleft()
            finished.append((job.tag, outputs))
        return finished

    def _compute(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8/uint16 N×H×W×3 → same dtype N×sH×sW×3, in chunks of `batch`, halving on OOM."""
        top = 255.0 if frames.dtype == torch.uint8 else 65535.0
        n, h, w, _ = frames.shape
        out = torch.empty((n, h * self.scale, w * self.scale, 3), dtype=frames.dtype, device=frames.device)
        start = 0
        while start < n:
            size = min(self.batch, n - start)
            try:
                out[start:start + size] = self._run(frames[start:start + size], top)
            except torch.OutOfMemoryError:
                if not self._shrink(h, w):
                    raise
                continue  # the same frames again, smaller: none lost, none repeated
            start += size
        return out

    def _shrink(self, height: int, width: int) -> bool:
        """After an out-of-memory error: halve the batch, else the tile. False if nothing is left."""
        if self.cuda:
            torch.cuda.empty_cache()
        self.oom_retries += 1
        if self.batch > 1:
            self.batch //= 2
            return True
        current = self.tile or max(height, width)
        if current // 2 < MIN_TILE:
            return False
        self.tile = max(MIN_TILE, current // 2 // 8 * 8)
        return True

    def _run(self, frames: torch.Tensor, top: float) -> torch.Tensor:
        # N×H×W×3 viewed as N×3×H×W is already channels_last in memory: no copy
        x = frames.permute(0, 3, 1, 2).float().div_(top)
        if not self.settings.channels_last:
            x = x.contiguous()
        with torch.no_grad(), self._autocast():
            h, w = x.shape[-2:]
            if self.tile and (h > self.tile or w > self.tile):
                y = tiled_forward(self._forward, x, self.scale, self.tile,
                                  self.settings.tile_overlap, self.batch)
            else:
                y = self._forward(x)
        y = y.float().clamp_(0, 1).mul_(top).round_()
        return y.to(frames.dtype).permute(0, 2, 3, 1)

    def close(self) -> None:
        self._pending.clear()
        self._slots = []
        if self.cuda:
            torch.cuda.empty_cache()


def _on(stream):
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def _event(stream) -> torch.cuda.Event | None:
    if stream is None:
        return None
    event = torch.cuda.Event()
    event.record(stream)
    return event


def _largest_activation(model: nn.Module, probe: torch.Tensor, autocast) -> int:
    """Bytes of the largest tensor any leaf module reads or writes on `probe` (CPU planning)."""
    largest = probe.numel() * probe.element_size()

    def hook(_module, inputs, output):
        nonlocal largest
        for t in (*inputs, output):
            if isinstance(t, torch.Tensor):
                largest = max(largest, t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad(), autocast():
            model(probe)
    finally:
        for h in handles:
            h.remove()
    return largest


def _available_host_memory() -> float:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return 8 * 2**30
