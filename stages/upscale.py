"""`upscale`: super-resolution with a real pretrained model, through the device runner.

`--pipeline upscale:model=animevideov3-x2` (see `engine models`), or a user's own
`model=/path/net.pth` / `net.param`. `device=cuda:all` (or a list, `cuda:0+cuda:1`) runs
one runner per GPU, batches spread round-robin and handed on in order. The stage keeps `ring` batches in flight on CUDA
(see engine/inference.py), so it returns each batch a little later than it gets it.

Pixels in and out (`convert=device`, the default): a decoded picture's YUV planes go to
the device and become RGB there; a previous model stage's device tensors are taken as they
are; results stay on the device for a following model stage, or leave it in the encoder's
pixel format (engine/colour.py), as the runner's `handoff` says. `convert=host` keeps the
older path (host RGB in and out, swscale on the host), for comparison.
"""

from __future__ import annotations

import re

from typing import Any, Literal

from engine.frame import Frame
from engine.models.catalogue import DEFAULT_MODEL, check_model
from engine.registry import register_stage
from engine.stage import BatchStage, StageContext, check_frame_size

MAX_BATCH = 8  # engine.inference.MAX_BATCH, repeated so that checking a pipeline needs no torch
MAX_GPUS = 8   # cuda:all sizes the reorder window for this many (counting GPUs needs torch)
MAX_TILE_OVERLAP = 255  # with automatic tiles (a quarter of each tile applies at most)


@register_stage("upscale")
class Upscale(BatchStage):
    """Upscale every (unique) frame with a super-resolution model."""

    takes_device = True
    #: `batches`: model batches of every worker. A counter, since the report adds up counters over
    #: workers but takes settings from one (engine/metrics.py `aggregate`)
    counted = ("inferred", "batches")

    def __init__(self, model: str = DEFAULT_MODEL, batch: int = 0, tile: int = 0, tile_overlap: int | None = None,
                 device: str = "auto", precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto",
                 channels_last: bool = True, compile: bool = False, cudnn_benchmark: bool = True,
                 tf32: bool = True, ring: int = 3, convert: Literal["device", "host"] = "device",
                 compile_mode: Literal["default", "reduce-overhead", "max-autotune",
                                       "max-autotune-no-cudagraphs"] = "default",
                 cuda_graphs: bool = False):
        if not 0 <= batch <= 256:
            raise ValueError(f"batch must be between 0 (auto) and 256, got {batch}")
        if tile != 0 and tile < 64:
            raise ValueError(f"tile must be 0 (auto) or at least 64 pixels, got {tile}")
        # the blend uses at most a quarter of a tile (engine.inference.tiled_forward); not given:
        # 32, or that quarter when less, so the smallest tile works without one
        most = tile // 4 if tile else MAX_TILE_OVERLAP
        if tile_overlap is not None and not 0 <= tile_overlap <= most:
            raise ValueError(f"tile_overlap must be between 0 and {most}"
                             f"{f' (a quarter of tile={tile})' if tile else ''}, got {tile_overlap}")
        if not 1 <= ring <= 8:
            raise ValueError(f"ring must be between 1 and 8, got {ring}")
        devices = re.split(r"[,+]", device)  # "+" on the command line, where "," separates stages
        if device != "auto" and not all(d.strip() == "cpu" or d.strip().startswith("cuda") for d in devices):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N, cuda:all or a list (cuda:0+cuda:1), "
                             f"got {device!r}")
        if compile_mode not in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
            raise ValueError(f"compile_mode must be default, reduce-overhead, max-autotune or "
                             f"max-autotune-no-cudagraphs, got {compile_mode!r}")
        if convert not in ("device", "host"):
            raise ValueError(f"convert must be device or host, got {convert!r}")
        check_model(model)  # unknown name, missing file, weights not installed: before any thread starts
        super().__init__(batch_size=batch or MAX_BATCH)
        self.model_name = model
        self.options = dict(batch=batch, tile=tile, device=device,
                            precision=precision, channels_last=channels_last, compile=compile,
                            cudnn_benchmark=cudnn_benchmark, tf32=tf32, ring=ring,
                            compile_mode=compile_mode, cuda_graphs=cuda_graphs)
        if tile_overlap is not None:
            self.options["tile_overlap"] = tile_overlap
        # frames that may be in flight at once: a ring per device (cuda:all: at most MAX_GPUS)
        self.devices = MAX_GPUS if device == "cuda:all" else len(devices)
        self.span = self.batch_size * ring * self.devices
        self.convert = convert
        self.runner = None
        self.handoff, self.picture_format = "array", None
        self.workers = 1

    def weight_files(self) -> list[str]:
        info = check_model(self.model_name)
        if info is not None:
            return [str(p) for p in info.files()]
        if self.model_name.endswith(".param"):
            return [self.model_name, self.model_name[:-len(".param")] + ".bin"]
        return [self.model_name]

    def output_size(self, width: int, height: int) -> tuple[int, int] | None:
        info = check_model(self.model_name)  # a catalogue model's scale; a user's file says when loaded
        return (width * info.scale, height * info.scale) if info is not None else None

    def open(self, ctx: StageContext) -> None:
        from engine.inference import InferenceRunner, InferenceSettings, MultiDeviceRunner, device_list
        from engine.models.loader import load_model

        model = load_model(self.model_name)
        self.scale = model.scale
        self.workers = ctx.workers
        if ctx.width and ctx.height:  # a user's checkpoint: its scale is known only now
            check_frame_size("upscale", ctx.width * model.scale, ctx.height * model.scale)
        settings = InferenceSettings(**self.options)
        devices = device_list(settings.device)
        if len(devices) > 1:  # one runner (and model copy) per device, batches round-robin
            self.runner = MultiDeviceRunner(lambda: load_model(self.model_name), model.scale, settings, devices)
        else:
            self.runner = InferenceRunner(model, model.scale, settings)
        self.runner.open()
        if self.convert == "device":
            from engine.colour import PictureFormat

            self.handoff = ctx.handoff
            if self.handoff == "picture":
                self.picture_format = PictureFormat.of(*ctx.picture_format)
                if self.picture_format is None:  # a format engine/colour.py lacks: the sink converts
                    self.handoff = "array"
        self._planes_in = self.convert == "device"
        if ctx.width and ctx.height:
            self.runner.plan(ctx.height, ctx.width)
            self.batch_size = min(self.batch_size, self.runner.batch)

    def submit_batch(self, frames: list[Frame]) -> list[list[Frame]]:
        output = self.picture_format if self.handoff == "picture" else self.handoff
        done = self.runner.submit(self._inputs(frames), tag=frames, output=output, deep=frames[0].deep)
        self.batch_size = min(self.batch_size, self.runner.batch)  # lowered after an OOM
        return self._attach(done)

    def _inputs(self, frames: list[Frame]) -> list:
        """Device tensors as they are, else decoded planes, else host RGB: one kind per batch."""
        if self._planes_in:
            from engine.colour import Planes

            if all(f.tensor is not None for f in frames):
                return [f.tensor for f in frames]
            if all(f.picture is not None for f in frames):
                planes = [Planes.of(f.picture) for f in frames]
                if all(p is not None and p.key == planes[0].key for p in planes):
                    return planes
        return [f.data for f in frames]

    def drain_batches(self) -> list[list[Frame]]:
        return self._attach(self.runner.drain())

    def _attach(self, done) -> list[list[Frame]]:
        batches = []
        for frames, outputs in done:
            for frame, result in zip(frames, outputs):
                if self.handoff == "device":
                    frame.set_tensor(result)
                elif self.handoff == "picture":
                    frame.set_picture(result)
                else:
                    frame.data = result
            self.count("inferred", len(frames))
            self.count("batches")
            batches.append(frames)
        return batches

    def describe(self) -> dict[str, Any]:
        if self.runner is None:
            return {}
        info = {"model": self.model_name, "scale": self.scale, "convert": self.convert,
                "handoff": self.handoff, **self.runner.describe()}
        if self.workers > 1:  # this worker's share only, where the report shows one worker's settings:
            del info["batches"]  # the counter `batches` has every worker's
        return info

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
