"""`upscale`: super-resolution with a real pretrained model, through the device runner.

`--pipeline upscale:model=animevideov3-x2` (see `engine models`), or a user's own
`model=/path/net.pth` / `net.param`. The stage keeps `ring` batches in flight on CUDA
(see engine/inference.py), so it returns each batch a little later than it gets it.
"""

from __future__ import annotations

from typing import Any, Literal

from engine.frame import Frame
from engine.models.catalogue import DEFAULT_MODEL, check_model
from engine.registry import register_stage
from engine.stage import BatchStage, StageContext

MAX_BATCH = 8  # engine.inference.MAX_BATCH, repeated so that checking a pipeline needs no torch


@register_stage("upscale")
class Upscale(BatchStage):
    """Upscale every (unique) frame with a super-resolution model."""

    def __init__(self, model: str = DEFAULT_MODEL, batch: int = 0, tile: int = 0, tile_overlap: int = 32,
                 device: str = "auto", precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto",
                 channels_last: bool = True, compile: bool = False, cudnn_benchmark: bool = True,
                 tf32: bool = True, ring: int = 3):
        if not 0 <= batch <= 256:
            raise ValueError(f"batch must be between 0 (auto) and 256, got {batch}")
        if tile != 0 and tile < 64:
            raise ValueError(f"tile must be 0 (auto) or at least 64 pixels, got {tile}")
        if not 0 <= tile_overlap < (tile // 2 if tile else 256):
            raise ValueError(f"tile_overlap must be between 0 and half the tile, got {tile_overlap}")
        if not 1 <= ring <= 8:
            raise ValueError(f"ring must be between 1 and 8, got {ring}")
        if device != "auto" and device != "cpu" and not device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
        check_model(model)  # unknown name, missing file, weights not installed: before any thread starts
        super().__init__(batch_size=batch or MAX_BATCH)
        self.model_name = model
        self.options = dict(batch=batch, tile=tile, tile_overlap=tile_overlap, device=device,
                            precision=precision, channels_last=channels_last, compile=compile,
                            cudnn_benchmark=cudnn_benchmark, tf32=tf32, ring=ring)
        self.span = self.batch_size * ring  # frames that may be in flight at once
        self.runner = None

    def weight_files(self) -> list[str]:
        info = check_model(self.model_name)
        if info is not None:
            return [str(p) for p in info.files()]
        if self.model_name.endswith(".param"):
            return [self.model_name, self.model_name[:-len(".param")] + ".bin"]
        return [self.model_name]

    def open(self, ctx: StageContext) -> None:
        from engine.inference import InferenceRunner, InferenceSettings
        from engine.models.loader import load_model

        model = load_model(self.model_name)
        self.scale = model.scale
        self.runner = InferenceRunner(model, model.scale, InferenceSettings(**self.options))
        self.runner.open()
        if ctx.width and ctx.height:
            self.runner.plan(ctx.height, ctx.width)
            self.batch_size = min(self.batch_size, self.runner.batch)

    def submit_batch(self, frames: list[Frame]) -> list[list[Frame]]:
        done = self.runner.submit([f.data for f in frames], tag=frames)
        self.batch_size = min(self.batch_size, self.runner.batch)  # lowered after an OOM
        return self._attach(done)

    def drain_batches(self) -> list[list[Frame]]:
        return self._attach(self.runner.drain())

    def _attach(self, done) -> list[list[Frame]]:
        batches = []
        for frames, outputs in done:
            for frame, image in zip(frames, outputs):
                frame.data = image
            self.count("inferred", len(frames))
            batches.append(frames)
        return batches

    def describe(self) -> dict[str, Any]:
        if self.runner is None:
            return {}
        return {"model": self.model_name, "scale": self.scale, **self.runner.describe()}

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
