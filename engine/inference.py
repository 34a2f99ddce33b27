"""The device runner: one way to run any image model on batches of frames, on a GPU or the CPU.

On CUDA, batches move through a ring of pinned host buffers and three streams ordered by
events, so while batch k computes, batch k+1 uploads and batch k-1 downloads::

    host: stage k+1 into pinned ─┐
    upload stream:   H2D k+1 ────┴─▶ event ─┐
    compute stream:  model k ───────────────┴─▶ event ─┐
    download stream: D2H k-1 ──────────────────────────┴─▶ event ─▶ host reads k-1

The host thread never synchronises per frame: `submit` returns whichever batches have
finished, and waits only when every ring slot is in flight. Frames travel as integers and
become floats on the device: a decoded picture's own YUV planes (4:2:0: 1.5 bytes a pixel,
converted to RGB by engine/colour.py on the compute stream), or H×W×3 RGB from the host.
Results leave the same way: as the encoder's planes (converted on the device, downloaded
into pinned blocks, copied once into the `av.VideoFrame` the sink encodes), as host RGB,
or not at all: "device" output leaves them as tensors for the next model stage.

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
import re
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from engine import colour
from engine.errors import UserError

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
    compile_mode: str = "default"     # torch.compile mode: default | reduce-overhead | max-autotune | ...
    cuda_graphs: bool = False         # replay a captured CUDA graph per batch shape (CUDA only)
    batch: int = 0                    # frames per model call; 0: from frame size and free memory
    tile: int = 0                     # tile side in input pixels; 0: only when a frame does not fit
    tile_overlap: int = 32            # input pixels shared by neighbouring tiles, blended (at most tile // 4)
    ring: int = 3                     # batches in flight (pinned buffers) on CUDA
    memory_fraction: float = 0.6      # of free device memory the batch may plan to use

    def __post_init__(self):  # stages check their options; direct callers (benches, tools) get the same
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {self.precision!r}")
        if self.batch < 0 or self.ring < 1:
            raise ValueError(f"batch must be >= 0 (0: auto) and ring >= 1, got {self.batch} and {self.ring}")


# Settings that only a CUDA device has: the report leaves them out of a CPU run, where
# "cudnn_benchmark": true would read as if it had been in effect. `ring` too: the CPU runs
# one batch at a time (one slot).
CUDA_ONLY_SETTINGS = ("cudnn_benchmark", "tf32", "cuda_graphs", "ring")


def resolved_settings(settings, cuda: bool, cuda_only: tuple[str, ...] = CUDA_ONLY_SETTINGS) -> dict[str, Any]:
    """A settings dataclass for the report: as given, less what this device does not have."""
    return {k: v for k, v in asdict(settings).items() if cuda or k not in cuda_only}


def resolve_device(name: str) -> torch.device:
    """The torch device a `device` option names. A GPU this machine lacks is a user error (exit
    2), raised where the stage opens: under --ray that is the worker, whose GPUs may differ
    from the driver's."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"invalid device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no GPU found"
            raise UserError(f"device {name} was asked for, but torch sees no CUDA GPU ({build}); "
                            f"use device=cpu or device=auto")
        if (device.index or 0) >= count:
            raise UserError(f"device {name} was asked for, but torch sees {count} CUDA GPU(s) "
                            f"(cuda:0..cuda:{count - 1})")
    return device


def resolve_precision(precision: Precision, device: torch.device) -> str:
    """auto: fp16 on CUDA, fp32 on the CPU (CPU fp16/bf16 convolutions are slower than fp32)."""
    return precision if precision != "auto" else ("fp16" if device.type == "cuda" else "fp32")


def autocast(device: torch.device, precision: str, cache: bool = True):
    """The autocast context for a resolved precision (none for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16,
                          cache_enabled=cache)


def halved_tile(tile: int, height: int, width: int, smallest: int = MIN_TILE) -> int | None:
    """The next tile side after an out-of-memory error (half the current one, or half the
    frame when untiled, a multiple of 8), or None when it would go under `smallest` (MIN_TILE,
    or more for a model that needs larger input)."""
    current = tile or max(height, width)
    if current // 2 < smallest:
        return None
    return max(smallest, current // 2 // 8 * 8)


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


def tile_overlap(overlap: int, tile: int) -> int:
    """The overlap tiles of side `tile` really blend over: at most a quarter of the tile (an
    automatic tile may be small: keep most of it new). The stages' option checks follow it."""
    return min(overlap, tile // 4) if tile else overlap


def tiled_forward(model: nn.Module, x: torch.Tensor, scale: int, tile: int, overlap: int,
                  batch: int) -> torch.Tensor:
    """Run `model` over overlapping tiles of `x` (N×C×H×W) and blend them into one output.

    Each output pixel is a weighted mean of the tiles covering it; weights fall linearly to
    ~0 towards a tile's inner edges, where its own border handling makes it least right.
    """
    n, c, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    overlap = tile_overlap(overlap, tile)
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
    """One batch's worth of buffers: pinned host inputs/outputs, device inputs, and an event.

    Inputs and outputs are lists of tensors: one RGB array, or one tensor per YUV plane.
    """

    def __init__(self, in_shapes: list[tuple[int, ...]], in_dtype: torch.dtype,
                 out_shapes: list[tuple[int, ...]], out_dtype: torch.dtype, device: torch.device):
        cuda = device.type == "cuda"
        self.host_in = [torch.empty(s, dtype=in_dtype, pin_memory=cuda) for s in in_shapes]
        self.dev_in = [torch.empty(s, dtype=in_dtype, device=device) for s in in_shapes] if cuda else []
        self.host_out = [torch.empty(s, dtype=out_dtype, pin_memory=cuda) for s in out_shapes] if cuda else []
        self.done: torch.cuda.Event | None = None


@dataclass
class _InFlight:
    slot: _Slot
    tag: Any
    count: int
    results: list[torch.Tensor]   # the device outputs (CUDA) or the outputs themselves (CPU)
    output: Any                   # "array", "device" or a PictureFormat


#: What a batch becomes: host RGB arrays, device tensors (for the next model stage), or
#: pictures in the encoder's format (a `colour.PictureFormat`).
Output = Any


class InferenceRunner:
    """Runs `model` (N×3×H×W floats in [0,1] → N×3×sH×sW) over batches of frames.

    A batch is a list of one kind of input, all the same size: host RGB arrays (H×W×3
    uint8/uint16), decoded pictures' planes (`colour.Planes`: converted to RGB on the device),
    or device tensors (3×H×W RGB in [0, 1], another model stage's results, taken as they are).
    """

    def __init__(self, model: nn.Module, scale: int, settings: InferenceSettings = InferenceSettings()):
        self.model, self.scale, self.settings = model, scale, settings
        self.device = resolve_device(settings.device)
        self.cuda = self.device.type == "cuda"
        self.precision = resolve_precision(settings.precision, self.device)
        self.batch = settings.batch
        self.tile = settings.tile
        self.oom_retries = 0
        self.handled: Counter[str] = Counter()  # batches by input kind → output kind, for the report
        self._shape: tuple | None = None
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
        self._forward = torch.compile(self.model, mode=s.compile_mode) if s.compile else self.model
        self._graphs: dict[tuple, tuple[Any, torch.Tensor, torch.Tensor]] = {}

    def describe(self) -> dict[str, Any]:
        """The settings as resolved on this machine, for the report."""
        return {**resolved_settings(self.settings, self.cuda), "device": str(self.device),
                "precision": self.precision, "batch": self.batch, "tile": self.tile, "oom_retries": self.oom_retries,
                "tile_overlap": tile_overlap(self.settings.tile_overlap, self.tile),
                "batches": dict(self.handled),
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
        # a captured graph must not depend on autocast's weight cache, which is freed on exit
        return autocast(self.device, self.precision, cache=not (self.cuda and self.settings.cuda_graphs))

    def _ensure_slots(self, items: list, kind: str, output: Output, deep: bool) -> list[tuple[Any, list]]:
        """Buffers for this batch's kind and shapes; returns the batches that had to finish
        first (new buffers mean nothing of the old ones may still be in flight)."""
        h, w = _size(items[0], kind)
        if kind == "array":
            in_shapes, in_dtype = [items[0].shape], torch.from_numpy(items[0][:1, :1]).dtype
        elif kind == "planes":
            in_shapes, in_dtype = [a.shape for a in items[0].arrays], torch.from_numpy(items[0].arrays[0][:1]).dtype
        else:
            in_shapes, in_dtype = [], torch.uint8  # already on the device
        sh, sw = h * self.scale, w * self.scale
        if output == "array":
            out_shapes, out_dtype = [(sh, sw, 3)], torch.uint16 if deep else torch.uint8
        elif output == "device":
            out_shapes, out_dtype = [], torch.uint8  # stays on the device
        else:
            out_shapes = colour.plane_shapes(output.fmt, sh, sw)
            out_dtype = torch.uint8 if output.fmt.bits <= 8 else torch.uint16
        key = (kind, tuple(in_shapes), in_dtype, output, deep)
        if self._shape == key and self._slots and _capacity(self._slots[0]) >= len(items):
            return []
        finished = self._complete(all_=True)  # buffers are about to be replaced: nothing may be in flight
        if self._planned != (h, w):
            self.plan(h, w)
        batch = max(self.batch, len(items))
        count = self.settings.ring if self.cuda else 1
        self._slots = [_Slot([(batch, *s) for s in in_shapes], in_dtype,
                             [(batch, *s) for s in out_shapes], out_dtype, self.device)
                       for _ in range(count)]
        self._shape = key
        return finished

    # ---- the pipeline ------------------------------------------------------------------------

    def submit(self, items: list, tag: Any = None, output: Output = "array",
               deep: bool | None = None) -> list[tuple[Any, list]]:
        """Queue one batch (one kind, one size) and return the batches that finished, oldest first.

        `output`: "array" (host H×W×3 uint8, uint16 if `deep`), "device" (3×H×W tensors left on
        the device) or a `colour.PictureFormat` (`av.VideoFrame`s in the encoder's format).
        `deep` defaults to the input's depth (uint16 arrays, planes over 8 bits).
        """
        kind = _kind(items[0])
        if deep is None:
            deep = (items[0].dtype == np.uint16 if kind == "array" else
                    items[0].fmt.bits > 8 if kind == "planes" else False)
        finished = self._ensure_slots(items, kind, output, deep)
        self.handled[f"{kind}→{output if isinstance(output, str) else output.fmt.name}"] += 1
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        if slot.done is not None:  # the ring came round: this slot's last batch must be out
            slot.done.synchronize()
        n = len(items)
        for i, item in enumerate(items):  # pinned staging: the one host copy
            if kind == "array":
                slot.host_in[0][i].numpy()[...] = item
            elif kind == "planes":
                for buffer, plane in zip(slot.host_in, item.arrays):
                    buffer[i].numpy()[...] = plane
        upload, compute, download = self._streams or (None, None, None)
        with _on(upload):
            sources = [buffer[:n] for buffer in slot.host_in]
            if self.cuda and sources:
                sources = [buffer[:n] for buffer in slot.dev_in]
                for device_buffer, host in zip(sources, slot.host_in):
                    device_buffer.copy_(host[:n], non_blocking=True)
            uploaded = _event(upload)
        with _on(compute):
            if uploaded is not None:
                compute.wait_event(uploaded)
            x = self._model_input(kind, sources, items)
            results = self._compute(x, self._converter(output, deep))
            computed = _event(compute)
        with _on(download):
            if computed is not None and slot.host_out:
                download.wait_event(computed)
                for host, result in zip(slot.host_out, results):
                    host[:n].copy_(result, non_blocking=True)
                    result.record_stream(download)  # the allocator must not reuse it before the copy
                slot.done = _event(download)
            else:
                slot.done = computed
        self._pending.append(_InFlight(slot, tag, n, results, output))
        return finished + self._complete(all_=False)

    def drain(self) -> list[tuple[Any, list]]:
        """End of stream: wait for every batch in flight."""
        return self._complete(all_=True)

    def _complete(self, all_: bool) -> list[tuple[Any, list]]:
        finished = []
        while self._pending:
            job = self._pending[0]
            ring_full = len(self._pending) >= len(self._slots)
            if job.slot.done is not None and not (all_ or ring_full or job.slot.done.query()):
                break
            if job.slot.done is not None:
                job.slot.done.synchronize()
            finished.append((job.tag, self._outputs(job)))
            self._pending.popleft()
        return finished

    def _outputs(self, job: _InFlight) -> list:
        """A finished batch's results, one per frame, no longer tied to the ring's buffers."""
        if job.output == "device":
            return list(job.results[0][:job.count].unbind(0))
        # on CUDA the results were downloaded into the slot, which a later batch reuses
        planes = job.slot.host_out or job.results
        if job.output == "array":
            return [planes[0][i].numpy().copy() if self.cuda else planes[0][i].numpy()
                    for i in range(job.count)]
        fmt = job.output
        return [colour.planes_to_picture([p[i].numpy() for p in planes], fmt.fmt, fmt.colorspace,
                                         fmt.color_range) for i in range(job.count)]

    def _model_input(self, kind: str, sources: list[torch.Tensor], items: list) -> torch.Tensor:
        """The batch as N×3×H×W float in [0, 1] on the device."""
        if kind == "array":
            top = 255.0 if sources[0].dtype == torch.uint8 else 65535.0
            # N×H×W×3 viewed as N×3×H×W is already channels_last in memory: no copy
            x = sources[0].permute(0, 3, 1, 2).float().div_(top)
            return x if self.settings.channels_last else x.contiguous()
        if kind == "planes":
            x = colour.yuv_to_rgb(sources, items[0].fmt, items[0].spec)
        else:
            for t in items:  # made on another stream: keep its memory until this batch is done
                if self.cuda and t.device == self.device:
                    t.record_stream(torch.cuda.current_stream(self.device))
            x = torch.stack([t.to(self.device, non_blocking=True) for t in items]).float()
        return x.contiguous(memory_format=torch.channels_last) if self.settings.channels_last else x

    def _converter(self, output: Output, deep: bool):
        """How a chunk of model output (N×3×sH×sW float in [0, 1]) becomes what is handed on."""
        if output == "array":
            top, dtype = (65535.0, torch.uint16) if deep else (255.0, torch.uint8)
            return lambda y: [y.mul_(top).round_().to(dtype).permute(0, 2, 3, 1)]
        if output == "device":
            keep = torch.float32 if self.precision == "fp32" else torch.float16  # half the memory
            return lambda y: [y.to(keep).contiguous()]
        return lambda y: colour.rgb_to_yuv(y, output.fmt, output.spec)

    def _compute(self, x: torch.Tensor, convert) -> list[torch.Tensor]:
        """Model over `x` in chunks of `batch`, each chunk converted; halving on OOM."""
        n, _, h, w = x.shape
        outs: list[torch.Tensor] | None = None
        start = 0
        while start < n:
            size = min(self.batch, n - start)
            try:
                parts = convert(self._run(x[start:start + size]))
            except torch.OutOfMemoryError:
                if not self._shrink(h, w):
                    raise
                continue  # the same frames again, smaller: none lost, none repeated
            if outs is None:
                outs = [torch.empty((n, *p.shape[1:]), dtype=p.dtype, device=p.device) for p in parts]
            for out, part in zip(outs, parts):
                out[start:start + size] = part
            start += size
        return outs

    def _shrink(self, height: int, width: int) -> bool:
        """After an out-of-memory error: halve the batch, else the tile. False if nothing is left."""
        if self.cuda:
            torch.cuda.empty_cache()
        self.oom_retries += 1
        if self.batch > 1:
            self.batch //= 2
            return True
        tile = halved_tile(self.tile, height, width)
        if tile is None:
            return False
        self.tile = tile
        return True

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """N×3×H×W float in [0, 1] → N×3×sH×sW float32 in [0, 1]."""
        with torch.no_grad(), self._autocast():
            h, w = x.shape[-2:]
            if self.tile and (h > self.tile or w > self.tile):
                y = tiled_forward(self._forward, x, self.scale, self.tile,
                                  self.settings.tile_overlap, self.batch)
            elif self.cuda and self.settings.cuda_graphs:
                y = self._replay(x).clone()  # the graph's output buffer is reused by the next replay
            else:
                y = self._forward(x)
        return y.float().clamp_(0, 1)

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        """The model as a CUDA graph captured once per input shape: one launch per batch
        instead of one per layer (the host thread stops being the limit at small frames)."""
        key = (tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last))
        if key not in self._graphs:
            static_in = x.clone(memory_format=torch.preserve_format)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: cuDNN picks its algorithms outside the capture
                    self._forward(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    def close(self) -> None:
        self._pending.clear()
        self._slots = []
        if self.cuda:
            torch.cuda.empty_cache()


def _capacity(slot: _Slot) -> float:
    """Frames a slot's host buffers hold (unbounded when it has none: device in and out)."""
    buffers = slot.host_in or slot.host_out
    return buffers[0].shape[0] if buffers else math.inf


def _kind(item: Any) -> str:
    if isinstance(item, np.ndarray):
        return "array"
    if isinstance(item, colour.Planes):
        return "planes"
    if isinstance(item, torch.Tensor):
        return "tensor"
    raise TypeError(f"cannot run a model on {type(item).__name__}")


def _size(item: Any, kind: str) -> tuple[int, int]:
    if kind == "array":
        return item.shape[0], item.shape[1]
    if kind == "planes":
        return item.arrays[0].shape[0], item.arrays[0].shape[1]
    return int(item.shape[1]), int(item.shape[2])


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


def device_list(name: str) -> list[str]:
    """The devices a `device` option names: one ("cpu", "cuda:1", "auto"), a list joined by
    "+" or "," ("cuda:0+cuda:1"; "," only in TOML, where it does not separate stages;
    "cpu+cpu" gives two CPU runners, the tests' fake devices), or "cuda:all" (every GPU torch sees)."""
    if name == "cuda:all":
        count = torch.cuda.device_count()
        if count == 0:
            raise UserError("device cuda:all was asked for, but torch sees no CUDA GPU; "
                            "use device=cpu or device=auto")
        return [f"cuda:{i}" for i in range(count)]
    return [part.strip() for part in re.split(r"[,+]", name)]


class MultiDeviceRunner:
    """One `InferenceRunner` per device; batches go round-robin, results come back in order.

    One host thread drives them all: on CUDA every `submit` only queues work, so the
    devices compute at once. Each runner has its own ring, so a batch handed to device k
    may finish after one handed later to device k+1; finished batches wait here until
    every earlier one is out, so the caller sees submission order. The whole batch goes
    to one device: frames are never split across devices.
    """

    def __init__(self, make_model, scale: int, settings: InferenceSettings, devices: list[str]):
        from dataclasses import replace

        self.runners = [InferenceRunner(make_model(), scale, replace(settings, device=d)) for d in devices]
        self.scale = scale
        self._turn = 0
        self._order: deque[int] = deque()     # ids of batches in flight, in submission order
        self._done: dict[int, tuple[Any, list]] = {}
        self._count = 0

    @property
    def batch(self) -> int:
        return min(r.batch for r in self.runners)

    def open(self) -> None:
        for r in self.runners:
            r.open()

    def plan(self, height: int, width: int) -> None:
        for r in self.runners:
            r.plan(height, width)

    def submit(self, items: list, tag: Any = None, output: Output = "array",
               deep: bool | None = None) -> list[tuple[Any, list]]:
        ident = self._count
        self._count += 1
        self._order.append(ident)
        runner = self.runners[self._turn]
        self._turn = (self._turn + 1) % len(self.runners)
        for inner_tag, outputs in runner.submit(items, tag=(ident, tag), output=output, deep=deep):
            self._done[inner_tag[0]] = (inner_tag[1], outputs)
        return self._release()

    def drain(self) -> list[tuple[Any, list]]:
        for runner in self.runners:
            for inner_tag, outputs in runner.drain():
                self._done[inner_tag[0]] = (inner_tag[1], outputs)
        return self._release()

    def _release(self) -> list[tuple[Any, list]]:
        out = []
        while self._order and self._order[0] in self._done:
            out.append(self._done.pop(self._order.popleft()))
        return out

    def describe(self) -> dict[str, Any]:
        first = self.runners[0].describe()
        return {**first, "device": ",".join(str(r.device) for r in self.runners), "batch": self.batch,
                "per_device": [{"device": str(r.device), "batches": dict(r.handled),
                                "oom_retries": r.oom_retries} for r in self.runners],
                "batches": dict(sum((r.handled for r in self.runners), Counter())),
                "oom_retries": sum(r.oom_retries for r in self.runners)}

    def close(self) -> None:
        for r in self.runners:
            r.close()
