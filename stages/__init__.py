"""Built-in stages. Importing this package registers them; the engine never lists them."""

from engine.registry import register_preset
from stages import (basicvsrpp, dedup, diffusion_vsr, inpaint, mask_preview, resize,  # noqa: F401
                    temporal_denoise, text_detect, text_mask, upscale)

# Burned-in caption removal, the whole job: `--pipeline caption-remove`.
register_preset("caption-remove", "text-detect:workers=2,text-mask,inpaint")
# What caption-remove would remove, drawn over the video (no inpainting): choose the area first.
register_preset("caption-preview", "text-detect:workers=2,text-mask,mask-preview")
