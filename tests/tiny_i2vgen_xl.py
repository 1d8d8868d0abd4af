"""A tiny random I2VGen-XL pipeline for CPU tests, built from configs and written with diffusers' own
`I2VGenXLPipeline.save_pretrained` (docs/training.md shows the same recipe for users)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet
from tiny_text_encoder import tiny_clip_text_config, tiny_clip_tokenizer
from transformers import CLIPImageProcessorPil, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

UNET = {
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D"),
    "cross_attention_dim": 8,
    "attention_head_dim": 4,
    "norm_num_groups": 2,
}
VAE = {
    "block_out_channels": (8, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "latent_channels": 4,
    "norm_num_groups": 2,
}
IMAGE_ENCODER = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 16, "projection_dim": 8}
# I2VGen-XL's scheduler as its pipeline ships it (the model folder's scheduler_config.json).
I2VGEN_XL_SCHEDULER = {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "leading", "clip_sample": False}


def save_tiny_i2vgen_xl(folder: Path) -> I2VGenXLPipeline:
    """A random tiny I2VGen-XL pipeline written with `save_pretrained` (how docs/training.md says to make one)."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as vocabulary:
        tokenizer = tiny_clip_tokenizer(Path(vocabulary))
    pipeline = I2VGenXLPipeline(
        vae=AutoencoderKL(**VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**tiny_clip_text_config())),
        tokenizer=tokenizer,
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**IMAGE_ENCODER)),
        feature_extractor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        unet=I2VGenXLUNet(**UNET),
        scheduler=DDIMScheduler(**I2VGEN_XL_SCHEDULER),
    )
    pipeline.save_pretrained(folder)
    return pipeline
