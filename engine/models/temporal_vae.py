"""Stream-DiffVSR's temporal tiny autoencoder (TAESD-x4 with a Temporal Processor Module).

Written here against the released checkpoint's layout, so that its ``vae/`` folder
(``config.json`` + ``diffusion_pytorch_model.safetensors``) loads as is through
diffusers' ``from_pretrained``. Parameter names, as in the authors' module:

- ``encoder.layers.N``: a 3×3 conv (``.weight``/``.bias``; the stride-2 ones have no bias)
  or a block; the last layer is the conv to ``latent_channels``.
- ``decoder.layers.N``: conv + ReLU, then per level ``num_decoder_blocks[i]`` blocks, an
  upsample (no parameters) and a 3×3 conv (bias only on the last one).
- a block (``...layers.N.``): ``conv.0``/``conv.2``/``conv.4`` (3×3 convs, ReLU between),
  ``skip`` (1×1 conv without bias, only where channels change), ``alpha`` (a scalar) and
  ``temporal_processor.0``/``.2`` (two Conv1d, kernel 3).

The temporal path, as the authors compute it: the previous output, warped to the current
frame, runs through the encoder's layers *without* the encoder's [-1,1]→[0,1] shift; each
block's output is kept, and the decoder's blocks see them in reverse order (finest last).
A block average-pools its own features and the warped ones by 4×4, runs the Conv1d over
their concatenated flattened sequences, mixes the two halves with ``alpha`` and adds 0.1 ×
the bilinearly upsampled result before its residual ReLU.

The decoder upsamples ×2 per level, so with three levels (the released TAESD-x4) the
latent has the low-resolution frame's size and the output is ×4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from engine.inference import _ramp, tile_starts

POOL = 4  # the temporal processor's pooling window, fixed by the released weights


def _act(name: str) -> nn.Module:
    if name != "relu":  # the only activation the released weights were trained with
        raise ValueError(f"unsupported act_fn {name!r} (Stream-DiffVSR's VAE uses relu)")
    return nn.ReLU()


class TemporalBlock(nn.Module):
    """Residual conv block whose output is nudged towards the warped previous frame's features."""

    def __init__(self, in_channels: int, out_channels: int, act_fn: str):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), _act(act_fn),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), _act(act_fn),
            nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (nn.Conv2d(in_channels, out_channels, 1, bias=False)
                     if in_channels != out_channels else nn.Identity())
        self.fuse = nn.ReLU()
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.temporal_processor = nn.Sequential(
            nn.Conv1d(out_channels, out_channels, 3, padding=1), _act(act_fn),
            nn.Conv1d(out_channels, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        features = self.conv(x)
        if previous is not None:
            b, c, h, w = features.shape
            now = F.avg_pool2d(features, POOL, POOL)
            before = F.avg_pool2d(previous.to(features.dtype), POOL, POOL)
            ph, pw = now.shape[-2:]
            mixed = self.temporal_processor(torch.cat([now.flatten(2), before.flatten(2)], dim=2))
            fused = (self.alpha * mixed[:, :, :ph * pw] + (1 - self.alpha) * mixed[:, :, -ph * pw:])
            fused = F.interpolate(fused.view(b, c, ph, pw), size=(h, w), mode="bilinear",
                                  align_corners=False)
            features = features + 0.1 * fused
        return self.fuse(features + self.skip(x))


#: Latent pixels of context around each tile when the guide's features are computed per tile:
#: 16 latent px is 64 px of the ×4 output, past most of the encoder's 3×3 receptive field.
GUIDE_MARGIN = 16


class TemporalAutoencoderTiny(ModelMixin, ConfigMixin):
    """The encoder gives the temporal features; the decoder turns a latent into the ×4 image."""

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 encoder_block_out_channels: tuple[int, ...] = (64, 64, 64),
                 decoder_block_out_channels: tuple[int, ...] = (64, 64, 64),
                 act_fn: str = "relu", upsample_fn: str = "nearest", latent_channels: int = 4,
                 upsampling_scaling_factor: int = 2, num_encoder_blocks: tuple[int, ...] = (1, 3, 3),
                 num_decoder_blocks: tuple[int, ...] = (3, 3, 1), latent_magnitude: int = 3,
                 latent_shift: float = 0.5, force_upcast: bool = False, scaling_factor: float = 1.0,
                 shift_factor: float = 0.0, block_out_channels: tuple[int, ...] | None = None):
        super().__init__()
        if len(encoder_block_out_channels) != len(num_encoder_blocks):
            raise ValueError("encoder_block_out_channels and num_encoder_blocks differ in length")
        if len(decoder_block_out_channels) != len(num_decoder_blocks):
            raise ValueError("decoder_block_out_channels and num_decoder_blocks differ in length")
        self.encoder = nn.Module()
        layers: list[nn.Module] = []
        for i, (count, channels) in enumerate(zip(num_encoder_blocks, encoder_block_out_channels)):
            layers.append(nn.Conv2d(in_channels, channels, 3, padding=1) if i == 0 else
                          nn.Conv2d(channels, channels, 3, padding=1, stride=2, bias=False))
            layers += [TemporalBlock(channels, channels, act_fn) for _ in range(count)]
        layers.append(nn.Conv2d(encoder_block_out_channels[-1], latent_channels, 3, padding=1))
        self.encoder.layers = nn.Sequential(*layers)

        self.decoder = nn.Module()
        layers = [nn.Conv2d(latent_channels, decoder_block_out_channels[0], 3, padding=1), _act(act_fn)]
        for i, (count, channels) in enumerate(zip(num_decoder_blocks, decoder_block_out_channels)):
            last = i == len(num_decoder_blocks) - 1
            layers += [TemporalBlock(channels, channels, act_fn) for _ in range(count)]
            if not last:
                layers.append(nn.Upsample(scale_factor=upsampling_scaling_factor, mode=upsample_fn))
            layers.append(nn.Conv2d(channels, out_channels if last else channels, 3, padding=1, bias=last))
        self.decoder.layers = nn.Sequential(*layers)

    @property
    def scale(self) -> int:
        """Output pixels per latent pixel."""
        return self.config.upsampling_scaling_factor ** (len(self.config.num_decoder_blocks) - 1)

    def temporal_features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Each encoder block's output on `image` (in [-1, 1], not shifted: as upstream), in
        the order the decoder's blocks consume them."""
        features, x = [], image
        for layer in self.encoder.layers[:-1]:  # the final conv feeds no block
            x = layer(x)
            if isinstance(layer, TemporalBlock):
                features.append(x)
        return features[::-1]

    def decode(self, latents: torch.Tensor, temporal: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Latents → image in about [-1, 1] (not clamped), guided by `temporal` features."""
        x = torch.tanh(latents / self.config.scaling_factor / 3) * 3
        blocks = iter(temporal) if temporal is not None else None
        for layer in self.decoder.layers:
            if isinstance(layer, TemporalBlock):
                x = layer(x, next(blocks) if blocks is not None else None)
            else:
                x = layer(x)
        return x.mul(2).sub(1)

    def tiled_decode(self, latents: torch.Tensor, temporal: list[torch.Tensor] | None,
                     tile: int, overlap: int = 8, guide: torch.Tensor | None = None,
                     guide_margin: int = GUIDE_MARGIN) -> torch.Tensor:
        """`decode` over overlapping latent tiles (side `tile`), blended by linear ramps.

        Convolutions see the same neighbourhood except near tile edges, which the ramps
        fade out; the temporal processor pools per tile, so tiles change its function a
        little (the authors' own tiling drops the temporal path altogether).

        `guide` instead of `temporal`: the warped previous output itself, its features
        computed per tile from its crop plus `guide_margin` latent pixels of context each
        side, so the encoder never holds full-resolution maps of the whole frame (at 1080p
        → ×4 each level's maps are gigabytes: what an out-of-memory backoff must shrink).
        """
        n, _, h, w = latents.shape
        s = self.scale
        th, tw = min(tile, h), min(tile, w)
        overlap = min(overlap, tile // 4)
        ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
        out = torch.zeros(n, self.config.out_channels, h * s, w * s, device=latents.device,
                          dtype=torch.float32)
        weight = torch.zeros(1, 1, h * s, w * s, device=latents.device, dtype=torch.float32)
        for y in ys:
            for x0 in xs:
                part = None
                if guide is not None:
                    part = self._guide_features(guide, y, th, x0, tw, h, w, guide_margin)
                elif temporal is not None:
                    part = []
                    for f in temporal:  # each level's features, cropped to this tile's footprint
                        k = f.shape[-1] // w
                        part.append(f[..., y * k:(y + th) * k, x0 * k:(x0 + tw) * k])
                result = self.decode(latents[..., y:y + th, x0:x0 + tw], part)
                wy = _ramp(th * s, y, y + th, h, overlap * s if len(ys) > 1 else 0).to(latents.device)
                wx = _ramp(tw * s, x0, x0 + tw, w, overlap * s if len(xs) > 1 else 0).to(latents.device)
                mask = wy[:, None] * wx[None, :]
                region = (slice(None), slice(None), slice(y * s, (y + th) * s), slice(x0 * s, (x0 + tw) * s))
                out[region] += result.float() * mask
                weight[region] += mask
        return (out / weight).to(latents.dtype)

    def _guide_features(self, guide: torch.Tensor, y: int, th: int, x0: int, tw: int, h: int, w: int,
                        margin: int) -> list[torch.Tensor]:
        """`temporal_features` for the latent tile [y, y+th) × [x0, x0+tw), from the guide's
        crop with `margin` latent pixels more each side (fewer at the frame's edges)."""
        s = self.scale
        y0, y1, x1, x2 = max(0, y - margin), min(h, y + th + margin), max(0, x0 - margin), min(w, x0 + tw + margin)
        features = self.temporal_features(guide[..., y0 * s:y1 * s, x1 * s:x2 * s])
        part = []
        for f in features:  # each level's features, the margin cut away again
            k = f.shape[-1] // (x2 - x1)
            part.append(f[..., (y - y0) * k:(y - y0 + th) * k, (x0 - x1) * k:(x0 - x1 + tw) * k])
        return part
