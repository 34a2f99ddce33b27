"""`basicvsrpp`: BasicVSR++ video super-resolution over overlapping windows (window stage).

`--pipeline basicvsrpp:checkpoint=reds4` (a released file in the models directory) or
`checkpoint=/path/file.pth` (see engine/models/basicvsrpp_zoo.py and README). The runner hands
the stage `window` consecutive unique frames at a time; consecutive windows share `overlap`
frames of context on each side and each frame leaves from the window where it sits furthest
from the edge, so memory is bounded by the window whatever the video's length.

What the overlap buys, measured by tests/test_basicvsrpp.py (random c8n1 network, 8 moving
frames, mean absolute difference per frame from one whole-sequence run, in grey levels): windows
of 4 without overlap gave 0.04 0.08 0.12 0.40 | 0.58 0.39 0.08 0.04, the join frames worst, as
propagation restarts from zero there; windows of 6 sharing 2 frames gave 0.01 0.02 0.04 0.09 0.09
0.04 0.08 0.04. The cost: each window computes 2·overlap frames that another window emits,
window / (window − 2·overlap) − 1 extra work: 20 % at the default 96/8.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from engine.errors import UserError
from engine.frame import Frame
from engine.models.basicvsrpp_zoo import DEFAULT_CHECKPOINT, resolve_checkpoint
from engine.registry import register_stage
from engine.stage import StageContext, WindowStage, check_frame_size

MAX_WINDOW = 512   # longer windows only hold more memory: propagation reaches ~tens of frames
MIN_SIDE = 64      # engine.models.basicvsrpp.MIN_SIDE, repeated so that checking needs no torch


@register_stage("basicvsrpp")
class BasicVSRPP(WindowStage):
    """×4 temporal super-resolution (or same-size restoration) with a BasicVSR++ checkpoint."""

    recurrent = True  # features propagate through the whole window, both ways

    def __init__(self, checkpoint: str = DEFAULT_CHECKPOINT, models_dir: str = "", window: int = 96,
                 overlap: int = 8, device: str = "auto",
                 precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto", channels_last: bool = True,
                 cudnn_benchmark: bool = True, tf32: bool = True, tile: int = 0, tile_overlap: int = 16,
                 offload: Literal["auto", "on", "off"] = "auto"):
        if not 2 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be between 2 and {MAX_WINDOW} frames, got {window}")
        if not 0 <= overlap or 2 * overlap >= window:
            raise ValueError(f"overlap must be >= 0 and less than half the window ({window}), got {overlap}")
        if tile != 0 and tile < MIN_SIDE:
            raise ValueError(f"tile must be 0 (auto) or at least {MIN_SIDE} pixels, got {tile}")
        most = tile // 4 if tile else 255  # the blend uses at most a quarter of a tile (inference.tile_overlap)
        if not 0 <= tile_overlap <= most:
            raise ValueError(f"tile_overlap must be between 0 and {most}"
                             f"{f' (a quarter of tile={tile})' if tile else ''}, got {tile_overlap}")
        if device != "auto" and device != "cpu" and not device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
        self.path = resolve_checkpoint(checkpoint, models_dir)  # before any thread starts
        super().__init__(window_size=window, overlap=overlap)
        self.checkpoint = checkpoint
        self.options = dict(device=device, precision=precision, channels_last=channels_last,
                            cudnn_benchmark=cudnn_benchmark, tf32=tf32, window=window, overlap=overlap,
                            tile=tile, tile_overlap=tile_overlap, offload=offload)
        self.runner = None

    def output_size(self, width: int, height: int) -> None:
        return None  # ×4 or ×1: the checkpoint says (is_low_res_input), read when it loads

    def weight_files(self) -> list[str]:
        return [str(self.path)]

    def open(self, ctx: StageContext) -> None:
        from engine.models.basicvsrpp import load_checkpoint
        from engine.window_inference import WindowRunner, WindowSettings

        net = load_checkpoint(self.path)
        self.net_info = {"mid_channels": net.mid_channels, "num_blocks": net.num_blocks, "scale": net.scale}
        if ctx.width and ctx.height:
            check_frame_size("basicvsrpp", ctx.width * net.scale, ctx.height * net.scale)
        if ctx.width and ctx.height:
            need = net.min_input_side
            if min(ctx.width, ctx.height) < need:
                raise UserError(f"basicvsrpp: frames must be at least {need}×{need} for {self.path.name}, "
                                f"got {ctx.width}×{ctx.height}")
            if not net.is_low_res_input and (ctx.width % 4 or ctx.height % 4):
                raise UserError(f"basicvsrpp: {self.path.name} needs sides divisible by 4, "
                                f"got {ctx.width}×{ctx.height}")
        self.runner = WindowRunner(net, net.scale, WindowSettings(**self.options))
        self.runner.progress = ctx.progress  # one window is one long call: its steps say it moves
        self.runner.open()
        if ctx.width and ctx.height:
            self.runner.plan(self.window_size, ctx.height, ctx.width, net.features_per_pixel)

    def process_window(self, frames: list[Frame]) -> list[np.ndarray]:
        outputs = self.runner.run([f.data for f in frames])
        self.count("window_frames", len(frames))  # frames computed, context included: overlap's cost
        return outputs

    def describe(self) -> dict[str, Any]:
        if self.runner is None:
            return {}
        return {"checkpoint": self.checkpoint, "file": self.path.name, **self.net_info,
                "stage_window": self.window_size, "overlap": self.overlap, **self.runner.describe()}

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
