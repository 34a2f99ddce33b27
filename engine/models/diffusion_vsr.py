"""Stream-DiffVSR, causal and streaming: one frame in, one ×4 frame out, constant memory.

Per frame (the authors' inference, reorganised so nothing grows with the video):

1. Flow from the current low-resolution frame to the previous one, at low resolution in
   fp32, upsampled ×4 with its vectors scaled (`engine.models.flow`).
2. The previous *output* (kept as state, unclamped, in [-1, 1]) warped by that flow.
3. The temporal VAE's encoder turns the warped output into per-block features (TPM guidance).
4. DDIM over the scheduler's timesteps: UNet(latent ‖ LR frame) with the ControlNet (ARTG)
   fed the warped output; the empty-prompt text embedding as cross-attention input,
   computed once at load. The first frame has no previous output: no ControlNet, no TPM
   (as upstream).
5. The VAE decodes the final latent with the TPM features; that decode is the next state.

State is two tensors (the previous LR frame and the previous output), replaced each frame.
Noise comes from a generator seeded with (seed, frame index), so a frame's result does not
depend on how the frames were grouped or which device drew the noise.

Model directory (the released ``Jamichsu/Stream-DiffVSR`` layout, see `COMPONENTS`)::

    MODEL/unet/          config.json + diffusion_pytorch_model.safetensors (or .bin)
    MODEL/controlnet/    config.json + diffusion_pytorch_model.safetensors (or .bin)
    MODEL/vae/           config.json + diffusion_pytorch_model.safetensors (or .bin)
    MODEL/scheduler/     scheduler_config.json
    MODEL/text_encoder/  config.json + model.safetensors (or pytorch_model.bin)
    MODEL/tokenizer/     vocab.json + merges.txt (or tokenizer.json)

`check_model_dir` is torch-free so that the stage can refuse a broken directory before any
thread starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from engine.errors import UserError
from engine.models.tensor_file import file_problem

WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
#: component → (files that must all exist, one-of alternatives that must exist)
COMPONENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "unet": (("config.json",), WEIGHTS),
    "controlnet": (("config.json",), WEIGHTS),
    "vae": (("config.json",), WEIGHTS),
    "scheduler": (("scheduler_config.json",), ()),
    "text_encoder": (("config.json",), ("model.safetensors", "pytorch_model.bin")),
    "tokenizer": ((), ("tokenizer.json", "vocab.json")),
}
FLOWS = ("dis", "spynet", "raft")
MIN_TILE = 16  # latent (= input) pixels; smaller tiles are mostly overlap


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UserError(f"diffusion-vsr model: cannot read {what} ({path}): {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise UserError(f"diffusion-vsr model: {what} ({path}) is not a JSON object")
    return data


def check_model_dir(path: str) -> None:
    """One-line UserError naming the first thing missing or inconsistent in a model directory."""
    if not path:
        raise UserError("diffusion-vsr needs model=DIR (a local Stream-DiffVSR directory in diffusers layout)")
    if os.path.isfile(path):
        raise UserError(f"diffusion-vsr model {path} is a file; model= takes a model directory "
                        "(diffusers layout: unet/, vae/, controlnet/, ...)")
    if not os.path.isdir(path):
        raise UserError(f"diffusion-vsr model directory not found: {path}")
    for name, (required, one_of) in COMPONENTS.items():
        folder = os.path.join(path, name)
        if not os.path.isdir(folder):
            raise UserError(f"diffusion-vsr model {path}: missing {name}/ folder")
        for file in required:
            if not os.path.isfile(os.path.join(folder, file)):
                raise UserError(f"diffusion-vsr model {path}: missing {name}/{file}")
        if one_of and not any(os.path.isfile(os.path.join(folder, f)) for f in one_of):
            raise UserError(f"diffusion-vsr model {path}: missing {name}/{' or '.join(one_of)}")
    if os.path.isfile(os.path.join(path, "tokenizer", "vocab.json")) and \
            not os.path.isfile(os.path.join(path, "tokenizer", "merges.txt")):
        raise UserError(f"diffusion-vsr model {path}: missing tokenizer/merges.txt")
    unet = _read_json(os.path.join(path, "unet", "config.json"), "unet/config.json")
    vae = _read_json(os.path.join(path, "vae", "config.json"), "vae/config.json")
    control = _read_json(os.path.join(path, "controlnet", "config.json"), "controlnet/config.json")
    _read_json(os.path.join(path, "scheduler", "scheduler_config.json"), "scheduler/scheduler_config.json")
    latent = vae.get("latent_channels", 4)
    if unet.get("in_channels") != latent + 3:
        raise UserError(f"diffusion-vsr model {path}: unet in_channels is {unet.get('in_channels')}, "
                        f"expected {latent + 3} (latent + low-resolution frame)")
    if control.get("in_channels") != unet.get("in_channels"):
        raise UserError(f"diffusion-vsr model {path}: controlnet in_channels {control.get('in_channels')} "
                        f"differs from the unet's {unet.get('in_channels')}")
    if unet.get("num_class_embeds") or unet.get("class_embed_type"):
        raise UserError(f"diffusion-vsr model {path}: the unet expects class labels "
                        "(an x4-upscaler noise level); Stream-DiffVSR's unet takes none")
    for package in ("diffusers", "transformers"):
        if importlib.util.find_spec(package) is None:
            raise UserError(f"diffusion-vsr needs {package}: pip install 'engine[diffusion]'")


def check_flow(kind: str, weights: str) -> None:
    """Torch-free checks for the stage constructor: a known provider and its weight file."""
    if kind not in FLOWS:
        raise ValueError(f"invalid flow {kind!r}; choose one of: {', '.join(FLOWS)}")
    if kind == "dis":
        if weights:
            raise ValueError("flow=dis takes no flow_weights")
        return
    if not weights:
        raise UserError(f"flow={kind} needs flow_weights=PATH (a local checkpoint; nothing is downloaded)")
    if os.path.isdir(weights):
        raise UserError(f"flow weights {weights} is a directory; flow_weights= takes a checkpoint file")
    if not os.path.isfile(weights):
        raise UserError(f"flow weights not found: {weights}")
    if kind == "raft":
        if importlib.util.find_spec("torchvision") is None:
            raise UserError("flow=raft needs torchvision, which is not installed "
                            "(use flow=spynet or flow=dis, or install torchvision)")
    problem = file_problem(weights)
    if problem is not None:  # a cut or foreign file: found here rather than once the run has started
        raise UserError(f"cannot read {kind} flow weights {weights}: {problem}")


def _check_loading_info(path: str, name: str, info: dict) -> None:
    """diffusers and transformers only warn (and `_quiet_libraries` silences them) when weights
    are missing from a file or named otherwise, and leave those layers randomly initialised:
    a download under other names would run as noise. Refuse it, naming the first bad key."""
    for field, what in (("missing_keys", "has no tensor"), ("unexpected_keys", "has an unknown tensor"),
                        ("mismatched_keys", "has a tensor of the wrong shape")):
        keys = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(field) or ())
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise UserError(f"diffusion-vsr model {path}: {name}/ {what} {keys[0]}{more}")


@dataclass(frozen=True)
class DiffusionSettings:
    device: str = "auto"                                   # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: fp16 on CUDA, fp32 on CPU
    steps: int = 4                                         # DDIM steps (the release is distilled for 4)
    seed: int = 0
    flow: str = "dis"                                      # dis | spynet | raft
    flow_weights: str = ""
    controlnet_scale: float = 1.0
    vae_tile: int = 0                                      # latent pixels; 0: whole frame, tiles after an OOM
    unet_tile: int = 0                                     # latent pixels; 0: whole frame, tiles after an OOM
    tile_overlap: int = 16                                 # latent pixels shared by neighbouring tiles


class StreamDiffVSR:
    """Loads a model directory and upscales frames one at a time, carrying the temporal state."""

    def __init__(self, path: str, settings: DiffusionSettings = DiffusionSettings()):
        import torch
        from diffusers import ControlNetModel, DDIMScheduler, UNet2DConditionModel
        from diffusers.models.attention_processor import AttnProcessor2_0

        from engine.inference import resolve_device
        from engine.models.flow import load_flow
        from engine.models.temporal_vae import TemporalAutoencoderTiny

        check_model_dir(path)
        self.path, self.settings = path, settings
        self.device = resolve_device(settings.device)
        self.cuda = self.device.type == "cuda"
        self.precision = settings.precision if settings.precision != "auto" else ("fp16" if self.cuda else "fp32")
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        kwargs = dict(torch_dtype=self.dtype, local_files_only=True, low_cpu_mem_usage=False)
        _quiet_libraries()

        def load(cls, name):
            try:
                model, info = cls.from_pretrained(os.path.join(path, name), output_loading_info=True, **kwargs)
            except Exception as exc:  # a truncated file, mismatched shapes, a foreign config
                detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                raise UserError(f"diffusion-vsr model {path}: cannot load {name}/: "
                                f"{type(exc).__name__}: {detail}") from None
            _check_loading_info(path, name, info)
            return model

        self.unet = load(UNet2DConditionModel, "unet").to(self.device).eval().requires_grad_(False)
        self.controlnet = load(ControlNetModel, "controlnet").to(self.device).eval().requires_grad_(False)
        self.vae = load(TemporalAutoencoderTiny, "vae").to(self.device).eval().requires_grad_(False)
        try:
            self.scheduler = DDIMScheduler.from_pretrained(os.path.join(path, "scheduler"), local_files_only=True)
        except Exception as exc:
            raise UserError(f"diffusion-vsr model {path}: cannot load scheduler/: {type(exc).__name__}") from None
        # attention through torch's scaled_dot_product_attention: no full score matrices
        self.unet.set_attn_processor(AttnProcessor2_0())
        self.controlnet.set_attn_processor(AttnProcessor2_0())
        self.scheduler.set_timesteps(settings.steps, device=self.device)
        self.prompt_embeds = self._empty_prompt(torch).to(self.device, self.dtype)
        self.flow = load_flow(settings.flow, settings.flow_weights, self.device)
        self.scale = self.vae.scale
        self.vae_tile, self.unet_tile = settings.vae_tile, settings.unet_tile
        self.oom_retries = 0
        # seconds by part: flow (+ warp), guide (VAE encoder features of the warped output;
        # with VAE tiles, per tile inside decode), denoise (UNet + ControlNet × steps), decode
        self.times = {"flow": 0.0, "guide": 0.0, "denoise": 0.0, "decode": 0.0}
        self.frames = 0
        self.reset()

    def _empty_prompt(self, torch):
        """The text encoder's output for "" (what upstream conditions on); the encoder is then freed."""
        from transformers import CLIPTextModel, CLIPTokenizer
        try:
            tokenizer = CLIPTokenizer.from_pretrained(os.path.join(self.path, "tokenizer"), local_files_only=True)
            encoder, info = CLIPTextModel.from_pretrained(os.path.join(self.path, "text_encoder"),
                                                          local_files_only=True, output_loading_info=True)
        except Exception as exc:
            raise UserError(f"diffusion-vsr model {self.path}: cannot load text_encoder/ or tokenizer/: "
                            f"{type(exc).__name__}") from None
        _check_loading_info(self.path, "text_encoder", info)
        ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return encoder(ids)[0]

    # ---- state ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the previous frame: the next one starts a new shot without guidance."""
        self.prev_lr = None    # 1×3×h×w fp32 in [0, 1]
        self.prev_out = None   # 1×3×H×W model dtype, about [-1, 1], unclamped (as upstream carries it)
        self.prev_index = None  # the frame index prev_out belongs to

    def export_state(self) -> dict:
        """The state as host fp32 arrays; empty before the first frame. fp16 and bf16 widen to
        fp32 and narrow back exactly, so a resumed segment continues bit for bit."""
        import numpy as np

        if self.prev_out is None or self.prev_lr is None:
            return {}
        return {"prev_lr": self.prev_lr.float().cpu().numpy(), "prev_out": self.prev_out.float().cpu().numpy(),
                "prev_index": np.array(self.prev_index, dtype=np.int64)}

    def import_state(self, state: dict) -> None:
        import torch

        if not state:
            self.reset()
            return
        self.prev_lr = torch.from_numpy(state["prev_lr"]).to(self.device, torch.float32)
        self.prev_out = torch.from_numpy(state["prev_out"]).to(self.device, self.dtype)
        self.prev_index = int(state["prev_index"])

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.prev_lr, self.prev_out) if t is not None)

    # ---- one frame -----------------------------------------------------------------------

    def step(self, frame, index: int):
        """H×W×3 uint8/uint16 numpy frame → (scale·H)×(scale·W)×3, same dtype."""
        import numpy as np
        import torch

        top = 255.0 if frame.dtype == np.uint8 else 65535.0
        lr = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device).permute(2, 0, 1)[None].float() / top
        while True:
            try:
                with torch.no_grad():
                    out = self._step(lr, index)
                break
            except torch.OutOfMemoryError:
                if not self._shrink(*lr.shape[-2:]):
                    raise
        self.prev_lr, self.prev_out, self.prev_index = lr, out, index
        self.frames += 1
        return self._image(out, frame.dtype)

    def previous_image(self, dtype):
        """The last frame's result again (a frame met a second time as a segment's context)."""
        return self._image(self.prev_out, dtype)

    @staticmethod
    def _image(out, dtype):
        import numpy as np
        import torch

        top = 255.0 if dtype == np.uint8 else 65535.0
        image = ((out.float() / 2 + 0.5).clamp_(0, 1) * top).round_()
        return image[0].permute(1, 2, 0).to(torch.uint8 if top == 255.0 else torch.int32).cpu().numpy().astype(dtype)

    def _shrink(self, h: int, w: int) -> bool:
        """After an out-of-memory error: tile the UNet, then the VAE, then halve both. False if at the floor."""
        import torch
        if self.cuda:
            torch.cuda.empty_cache()
        self.oom_retries += 1
        side = max(h, w)
        if not self.unet_tile:
            self.unet_tile = max(MIN_TILE, side // 2 // 8 * 8)
        elif not self.vae_tile:
            self.vae_tile = max(MIN_TILE, side // 2 // 8 * 8)
        elif self.unet_tile > MIN_TILE or self.vae_tile > MIN_TILE:
            self.unet_tile = max(MIN_TILE, self.unet_tile // 2 // 8 * 8)
            self.vae_tile = max(MIN_TILE, self.vae_tile // 2 // 8 * 8)
        else:
            return False
        return True

    def _timed(self, part: str):
        import torch
        stamp = self

        @contextlib.contextmanager
        def timer():
            start = time.perf_counter()
            yield
            if stamp.cuda:
                torch.cuda.synchronize(stamp.device)  # honest per-part times; one sync per part
            stamp.times[part] += time.perf_counter() - start
        return timer()

    def _step(self, lr, index: int):
        import torch
        from engine.models.flow import upsample_flow, warp

        h, w = lr.shape[-2:]
        H, W = h * self.scale, w * self.scale
        warped = temporal = None
        if self.prev_out is not None and self.prev_lr is not None and self.prev_lr.shape == lr.shape:
            with self._timed("flow"):
                flow = upsample_flow(self.flow.estimate(lr, self.prev_lr), H, W)  # fp32 throughout
                warped = warp(self.prev_out.float(), flow, padding_mode="zeros").to(self.dtype)
            if not (self.vae_tile and max(h, w) > self.vae_tile):  # else per tile, in the decode
                with self._timed("guide"):
                    temporal = self.vae.temporal_features(warped)
        image = (lr * 2 - 1).to(self.dtype)
        noise = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + index)
        latents = torch.randn((1, self.vae.config.latent_channels, h, w), generator=noise)
        latents = (latents * self.scheduler.init_noise_sigma).to(self.device, self.dtype)
        with self._timed("denoise"):
            for t in self.scheduler.timesteps:
                model_in = torch.cat([self.scheduler.scale_model_input(latents, t), image], dim=1)
                if self.unet_tile and max(h, w) > self.unet_tile:
                    eps = self._tiled_eps(model_in, warped, t)
                else:
                    eps = self._eps(model_in, warped, t)
                latents = self.scheduler.step(eps, t, latents).prev_sample
        with self._timed("decode"):
            if self.vae_tile and max(h, w) > self.vae_tile:
                out = self.vae.tiled_decode(latents, None, self.vae_tile, self.settings.tile_overlap, guide=warped)
            else:
                out = self.vae.decode(latents, temporal)
        return out

    def _eps(self, model_in, warped, t):
        down = mid = None
        if warped is not None:
            down, mid = self.controlnet(model_in, t, encoder_hidden_states=self.prompt_embeds,
                                        controlnet_cond=warped, conditioning_scale=self.settings.controlnet_scale,
                                        return_dict=False)
        return self.unet(model_in, t, encoder_hidden_states=self.prompt_embeds,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid,
                         return_dict=False)[0]

    def _tiled_eps(self, model_in, warped, t):
        """The noise prediction over overlapping latent tiles, blended by linear ramps."""
        import torch
        from engine.inference import _ramp, tile_starts

        _, _, h, w = model_in.shape
        tile, s = self.unet_tile, self.scale
        th, tw = min(tile, h), min(tile, w)
        overlap = min(self.settings.tile_overlap, tile // 4)
        ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
        out = weight = None
        for y in ys:
            for x0 in xs:
                cond = None if warped is None else warped[..., y * s:(y + th) * s, x0 * s:(x0 + tw) * s]
                eps = self._eps(model_in[..., y:y + th, x0:x0 + tw], cond, t).float()
                if out is None:
                    out = torch.zeros(1, eps.shape[1], h, w, device=eps.device)
                    weight = torch.zeros(1, 1, h, w, device=eps.device)
                wy = _ramp(th, y, y + th, h, overlap if len(ys) > 1 else 0).to(eps.device)
                wx = _ramp(tw, x0, x0 + tw, w, overlap if len(xs) > 1 else 0).to(eps.device)
                mask = wy[:, None] * wx[None, :]
                out[..., y:y + th, x0:x0 + tw] += eps * mask
                weight[..., y:y + th, x0:x0 + tw] += mask
        return (out / weight).to(model_in.dtype)

    # ---- report --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        import torch
        per = {f"s_per_frame_{k}": round(v / self.frames, 4) for k, v in self.times.items()} if self.frames else {}
        return {**asdict(self.settings), "device": str(self.device), "precision": self.precision,
                "scale": self.scale, "timesteps": [int(t) for t in self.scheduler.timesteps],
                "attention": "sdpa (AttnProcessor2_0)", "flow_resolution": "input (low), upsampled ×scale",
                "flow_precision": "fp32", "vae_tile": self.vae_tile, "unet_tile": self.unet_tile,
                "vae_slicing": "inherent (one frame per decode)", "oom_retries": self.oom_retries,
                "state_bytes": self.state_bytes(), "torch": torch.__version__,
                "device_name": torch.cuda.get_device_name(self.device) if self.cuda else "cpu", **per}

    def close(self) -> None:
        import torch
        self.reset()
        if self.cuda:
            torch.cuda.empty_cache()


def _quiet_libraries() -> None:
    """diffusers/transformers print progress bars and hints on stderr; the engine has its own display."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
