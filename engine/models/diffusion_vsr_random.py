"""Random-weight Stream-DiffVSR model directories, written with `save_pretrained`.

No pip package ships Stream-DiffVSR's weights, so tests and benches build a directory in
the released layout and load it back through the real path (`StreamDiffVSR`):

- ``tiny``: a few channels per component; runs in well under a second per frame on a CPU.
- ``full``: the released architecture (the x4-upscaler UNet StableVSR starts from, a
  ControlNet made from it with a ×4 conditioning embedding, TAESD-x4 with its TPM). Speed
  does not depend on weight values, so its timings are honest. The text encoder is the
  exception: it runs once at load, never per frame, so it keeps the real width (the
  UNet's cross-attention size) but one layer, to keep the directory small.

The UNet/ControlNet settings come from the authors' training code (``ControlNetModel.from_unet(unet,
conditioning_embedding_out_channels=(64, 128, 256))``, no class labels) and from
stabilityai/stable-diffusion-x4-upscaler's published UNet config; the scheduler's from
their ``DDIMScheduler.from_pretrained(..., beta_schedule="scaled_linear",
timestep_spacing="trailing", prediction_type="v_prediction")``. Not checked against the
released files, which this machine cannot download.
"""

from __future__ import annotations

import json
import os
from typing import Literal

UNET_FULL = dict(
    sample_size=128, in_channels=7, out_channels=4, layers_per_block=2,
    block_out_channels=(256, 512, 512, 1024),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    only_cross_attention=(True, True, True, False), attention_head_dim=8, cross_attention_dim=1024,
    use_linear_projection=True, norm_num_groups=32)
UNET_TINY = dict(
    sample_size=16, in_channels=7, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=2, cross_attention_dim=16, use_linear_projection=True, norm_num_groups=4)
CONTROL_EMBED = {"full": (64, 128, 256), "tiny": (4, 8, 8)}  # three levels: ×4 down to the latent
VAE = {"full": dict(encoder_block_out_channels=(64, 64, 64), decoder_block_out_channels=(64, 64, 64)),
       "tiny": dict(encoder_block_out_channels=(4, 4, 4), decoder_block_out_channels=(4, 4, 4),
                    num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1))}
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 timestep_spacing="trailing", prediction_type="v_prediction", clip_sample=False,
                 set_alpha_to_one=False)


def write_random_model(path: str, size: Literal["tiny", "full"] = "tiny", seed: int = 0) -> str:
    """Write a complete model directory with random weights at `path`; returns `path`."""
    import torch
    from diffusers import ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.models.temporal_vae import TemporalAutoencoderTiny

    torch.manual_seed(seed)
    unet_cfg = UNET_FULL if size == "full" else UNET_TINY
    unet = UNet2DConditionModel(**unet_cfg)
    unet.save_pretrained(os.path.join(path, "unet"))
    control = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONTROL_EMBED[size])
    if size == "tiny":  # from_unet copies the UNet and zeroes its outputs: give the guidance a real effect
        with torch.no_grad():
            for p in control.parameters():
                if not p.abs().sum():
                    p.normal_(0, 0.1)
    control.save_pretrained(os.path.join(path, "controlnet"))
    vae = TemporalAutoencoderTiny(**VAE[size])
    if size == "tiny":  # default init decodes to a near-constant image: spread it so tests see changes
        with torch.no_grad():
            for m in vae.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv1d)):
                    torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    if m.bias is not None:
                        m.bias.zero_()
            vae.decoder.layers[-1].bias.fill_(0.75)  # centre the output in [-1, 1]
    vae.save_pretrained(os.path.join(path, "vae"))
    DDIMScheduler(**SCHEDULER).save_pretrained(os.path.join(path, "scheduler"))
    width = unet_cfg["cross_attention_dim"]
    max_len = 77 if size == "full" else 8
    text = CLIPTextModel(CLIPTextConfig(vocab_size=4, hidden_size=width, intermediate_size=2 * width,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=max_len,
                                        bos_token_id=2, eos_token_id=3, pad_token_id=0, hidden_act="gelu"))
    text.save_pretrained(os.path.join(path, "text_encoder"))
    _write_tokenizer(os.path.join(path, "tokenizer"), max_len)
    return path


def _write_tokenizer(folder: str, max_len: int) -> None:
    """A four-token CLIP BPE vocabulary in the released (legacy) file layout: the empty prompt
    becomes <|startoftext|> <|endoftext|> then "!" padding, as SD 2's tokenizer makes it."""
    os.makedirs(folder, exist_ok=True)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!",
               "unk_token": "<|endoftext|>"}
    with open(os.path.join(folder, "vocab.json"), "w") as fh:
        json.dump({"!": 0, "a</w>": 1, "<|startoftext|>": 2, "<|endoftext|>": 3}, fh)
    with open(os.path.join(folder, "merges.txt"), "w") as fh:
        fh.write("#version: 0.2\n")
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as fh:
        json.dump(special, fh)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as fh:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": max_len, **special}, fh)
