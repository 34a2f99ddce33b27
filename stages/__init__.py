"""Built-in stages. Importing this package registers them; the engine never lists them."""

from stages import basicvsrpp, dedup, diffusion_vsr, resize, temporal_denoise, upscale  # noqa: F401
