"""`diffusion-vsr`: Stream-DiffVSR ×4 video super-resolution, causal and streaming.

`--pipeline diffusion-vsr:model=DIR` with DIR a local copy of the released model in
diffusers layout (see engine/models/diffusion_vsr.py; nothing is downloaded). Frames go
through one at a time in seq order; the previous output is the only state, so memory is
the same for ten frames or ten thousand. A window stage with no overlap: the runner keeps
the order and a single worker, and the state simply carries from one window to the next
(`group` only sets how many frames the runner hands over at once). Under `--resume` it
carries across segments too (`carries_state`): each segment starts from the state the
one before ended with, so a resumed or segmented job gives the single pass's frames.

Options: ``flow=dis|spynet|raft`` (+ ``flow_weights=PATH`` for the last two), ``steps``,
``seed``, ``device``, ``precision``, ``vae_tile``/``unet_tile`` (latent pixels; 0 = whole
frame until an out-of-memory error tiles it), ``controlnet_scale``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine.frame import Frame
from engine.models.diffusion_vsr import MIN_TILE, check_flow, check_model_dir
from engine.registry import register_stage
from engine.stage import StageContext, WindowStage, check_frame_size


@register_stage("diffusion-vsr")
class DiffusionVSR(WindowStage):
    """Upscale ×4 with a diffusion UNet guided by the flow-warped previous output."""

    carries_state = True  # the previous output: no stretch of earlier frames rebuilds it

    def __init__(self, model: str = "", flow: Literal["dis", "spynet", "raft"] = "dis", flow_weights: str = "",
                 steps: int = 4, seed: int = 0, device: str = "auto",
                 precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto", controlnet_scale: float = 1.0,
                 vae_tile: int = 0, unet_tile: int = 0, tile_overlap: int = 16, group: int = 1):
        if not 1 <= steps <= 50:
            raise ValueError(f"steps must be between 1 and 50, got {steps}")
        for name, value in (("vae_tile", vae_tile), ("unet_tile", unet_tile)):
            if value != 0 and value < MIN_TILE:
                raise ValueError(f"{name} must be 0 (auto) or at least {MIN_TILE} latent pixels, got {value}")
        if not 0 <= tile_overlap <= 64:
            raise ValueError(f"tile_overlap must be between 0 and 64, got {tile_overlap}")
        if not controlnet_scale >= 0:  # a negative scale pushes the output away from the guide
            raise ValueError(f"controlnet_scale must be 0 (no guidance) or more, got {controlnet_scale}")
        if not 1 <= group <= 64:
            raise ValueError(f"group must be between 1 and 64, got {group}")
        if device != "auto" and device != "cpu" and not device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
        check_flow(flow, flow_weights)
        check_model_dir(model)  # missing or broken directory: one line, before any thread starts
        super().__init__(window_size=group, overlap=0)
        self.model_dir = model
        self.options = dict(flow=flow, flow_weights=flow_weights, steps=steps, seed=seed, device=device,
                            precision=precision, controlnet_scale=controlnet_scale, vae_tile=vae_tile,
                            unet_tile=unet_tile, tile_overlap=tile_overlap)
        self.model = None
        self.progress = lambda: None

    def output_size(self, width: int, height: int) -> None:
        return None  # the model directory's configuration says, read when it loads

    def weight_files(self) -> list[str]:
        """Every file of the model directory (weights and configs decide the result), and the flow's weights."""
        files = sorted(str(p) for p in Path(self.model_dir).rglob("*") if p.is_file())
        return files + ([self.options["flow_weights"]] if self.options["flow_weights"] else [])

    def open(self, ctx: StageContext) -> None:
        from engine.models.diffusion_vsr import DiffusionSettings, StreamDiffVSR

        self.model = StreamDiffVSR(self.model_dir, DiffusionSettings(**self.options))
        self.progress = ctx.progress  # a group of frames is one call: each frame says it moves
        if ctx.width and ctx.height:
            check_frame_size("diffusion-vsr", ctx.width * self.model.scale, ctx.height * self.model.scale)

    def process_window(self, frames: list[Frame]) -> list[np.ndarray]:
        out = []
        for f in frames:
            done = self.model.prev_index
            if done is not None and f.seq <= done:
                # a segment after dedup opens on the previous segment's last unique frame, the
                # one this state ended with: its result again, the state untouched
                if f.seq != done:
                    raise RuntimeError(f"frame {f.seq} is before frame {done}, where the carried state stands")
                out.append(self.model.previous_image(f.data.dtype))
                continue
            out.append(self.model.step(f.data, f.seq))
            self.count("inferred")
            self.progress()
        return out

    def export_state(self) -> dict[str, np.ndarray]:
        return self.model.export_state()

    def import_state(self, state: dict[str, np.ndarray]) -> None:
        self.model.import_state(state)

    def describe(self) -> dict[str, Any]:
        if self.model is None:
            return {}
        # one frame per model call whatever `group` (frames handed over at once): the label's "batch"
        return {"model": self.model_dir, **self.model.describe(), "batch": 1, "group": self.window_size}

    def close(self) -> None:
        if self.model is not None:
            self.model.close()
