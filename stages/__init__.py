"""Built-in stages. Importing this package registers them; the engine never lists them."""

from engine.registry import register_preset
from stages import dedup, inpaint, mask_preview, resize, temporal_denoise, text_detect, text_mask, upscale  # noqa: F401

# Burned-in caption removal, the whole job: `--pipeline caption-remove`.
register_preset("caption-remove", "text-detect,text-mask,inpaint")
# What caption-remove would remove, drawn over the video (no inpainting): choose the area first.
register_preset("caption-preview", "text-detect,text-mask,mask-preview")
