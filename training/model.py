"""The video-point diffusion model of paper §3.2.

An image-to-video latent UNet (I2VGen-XL style: first-frame latents concatenated on the channel
axis) is widened to denoise RGB latents and point latents together. Latent layout, all (B, C, T, h, w):

    UNet input   [noisy RGB (4), noisy points (4), first-frame cond (4), cond again (4)]  16 channels
    UNet output  [RGB (4), points (4)]                                                    8 channels

The new input/output weights start at zero, so at initialisation the RGB half reproduces the
pretrained RGB model exactly and the point half predicts 0. Points are (u, v, d) channels encoded
by the same frozen VAE as the frames; scaling them to about [-1, 1] is the data loader's job.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from diffusers.models.attention_processor import Attention
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# I2VGen-XL's noise schedule. clip_sample is off because latents are not confined to [-1, 1].
SCHEDULER_CONFIG = {
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "leading",
    "clip_sample": False,
}
TRAINABLE_MODULES = ("unet", "entry_attention")


def expand_unet_channels(rgb_unet: UNet3DConditionModel) -> UNet3DConditionModel:
    """A copy of an RGB I2V UNet (in = [noisy, cond], out = noisy) widened for the point half.

    Input [noisy RGB, noisy points, cond, cond] and output [RGB, points]; the pretrained weights
    go to the RGB slots and every new weight and bias is zero (paper §3.2).
    """
    latent_channels = rgb_unet.config.out_channels
    if rgb_unet.config.in_channels != 2 * latent_channels:
        raise ValueError(
            f"expected an image-to-video UNet with in_channels = 2 x out_channels "
            f"([noisy latents, first-frame latents]); got {rgb_unet.config.in_channels} -> {latent_channels}"
        )
    unet = copy.deepcopy(rgb_unet)
    old_in, old_out = rgb_unet.conv_in, rgb_unet.conv_out
    unet.conv_in = nn.Conv2d(
        4 * latent_channels, old_in.out_channels, old_in.kernel_size, padding=old_in.padding
    ).to(old_in.weight)
    unet.conv_out = nn.Conv2d(
        old_out.in_channels, 2 * latent_channels, old_out.kernel_size, padding=old_out.padding
    ).to(old_out.weight)
    rgb_noisy, cond = slice(0, latent_channels), slice(2 * latent_channels, 3 * latent_channels)
    with torch.no_grad():
        unet.conv_in.weight.zero_()
        unet.conv_in.weight[:, rgb_noisy] = old_in.weight[:, :latent_channels]
        unet.conv_in.weight[:, cond] = old_in.weight[:, latent_channels:]
        unet.conv_in.bias.copy_(old_in.bias)
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.zero_()
        unet.conv_out.weight[:latent_channels] = old_out.weight
        unet.conv_out.bias[:latent_channels] = old_out.bias
    unet.register_to_config(in_channels=4 * latent_channels, out_channels=2 * latent_channels)
    return unet


class EntryCrossAttention(nn.Module):
    """Cross-attention between the RGB and point halves of the noisy latents (paper §3.2).

    Tokens are the h*w spatial positions of one frame (each frame is its own sequence). RGB tokens
    attend to the point tokens of the same frame and point tokens attend to the RGB tokens; both
    directions read the input, and each result is added to its half. The pixel-to-pixel
    correspondence stays in the residual path; the attention adds context from the other
    modality. Output projections start at zero, so at initialisation the layer is the identity.
    """

    def __init__(self, latent_channels: int = 4, heads: int = 1, dim_head: int = 64):
        super().__init__()
        self.latent_channels = latent_channels
        dims = {"query_dim": latent_channels, "cross_attention_dim": latent_channels, "heads": heads, "dim_head": dim_head}
        self.rgb_from_points = Attention(**dims)
        self.points_from_rgb = Attention(**dims)
        for attention in (self.rgb_from_points, self.points_from_rgb):
            nn.init.zeros_(attention.to_out[0].weight)
            nn.init.zeros_(attention.to_out[0].bias)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 2C, T, h, w) [RGB, points] -> same shape."""
        batch, channels, frames, height, width = latents.shape
        tokens = latents.permute(0, 2, 3, 4, 1).reshape(batch * frames, height * width, channels)
        rgb, points = tokens.split(self.latent_channels, dim=-1)
        rgb, points = (
            rgb + self.rgb_from_points(rgb, encoder_hidden_states=points),
            points + self.points_from_rgb(points, encoder_hidden_states=rgb),
        )
        tokens = torch.cat([rgb, points], dim=-1)
        return tokens.reshape(batch, frames, height, width, channels).permute(0, 4, 1, 2, 3)


class VideoPointModel(nn.Module):
    """Frozen VAE and CLIP text encoder around the trainable expanded UNet and entry attention."""

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet3DConditionModel,
        entry_attention: EntryCrossAttention,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: DDIMScheduler,
    ):
        super().__init__()
        self.vae = vae.requires_grad_(False).eval()
        self.unet = unet
        self.entry_attention = entry_attention
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.scheduler = scheduler

    @classmethod
    def from_config(cls, config: dict) -> VideoPointModel:
        """Randomly initialised parts from small configs (tests, the tiny training config).

        Keys: "vae" (AutoencoderKL kwargs), "unet" (kwargs of the RGB UNet3DConditionModel,
        in_channels 8, out_channels 4; it is expanded here), "text_encoder" (CLIPTextConfig kwargs),
        "tokenizer" (a CLIPTokenizer folder, or {"vocab": {token: id}, "merges": ["a b", ...],
        **CLIPTokenizer kwargs}); optional "entry_attention" (EntryCrossAttention kwargs) and
        "scheduler" (DDIMScheduler overrides, e.g. prediction_type).
        """
        rgb_unet = UNet3DConditionModel(**config["unet"])
        tokenizer_config = config["tokenizer"]
        if isinstance(tokenizer_config, dict):
            merges = [tuple(merge.split()) for merge in tokenizer_config["merges"]]
            tokenizer = CLIPTokenizer(**{**tokenizer_config, "merges": merges})
        else:
            tokenizer = CLIPTokenizer.from_pretrained(tokenizer_config)
        return cls(
            vae=AutoencoderKL(**config["vae"]),
            unet=expand_unet_channels(rgb_unet),
            entry_attention=EntryCrossAttention(rgb_unet.config.out_channels, **config.get("entry_attention", {})),
            text_encoder=CLIPTextModel(CLIPTextConfig(**config["text_encoder"])),
            tokenizer=tokenizer,
            scheduler=DDIMScheduler(**{**SCHEDULER_CONFIG, **config.get("scheduler", {})}),
        )

    @classmethod
    def from_pretrained_rgb(
        cls, path: str | Path, prediction_type: str | None = None, **entry_attention
    ) -> VideoPointModel:
        """Load a pretrained RGB image-to-video model from a local diffusers-layout folder and expand it.

        Subfolders unet (UNet3DConditionModel), vae, text_encoder, tokenizer, scheduler. The
        folder's scheduler is kept (the RGB model was trained with it); prediction_type overrides.
        """
        path = Path(path)
        rgb_unet = UNet3DConditionModel.from_pretrained(path / "unet")
        overrides = {} if prediction_type is None else {"prediction_type": prediction_type}
        return cls(
            vae=AutoencoderKL.from_pretrained(path / "vae"),
            unet=expand_unet_channels(rgb_unet),
            entry_attention=EntryCrossAttention(rgb_unet.config.out_channels, **entry_attention),
            text_encoder=CLIPTextModel.from_pretrained(path / "text_encoder"),
            tokenizer=CLIPTokenizer.from_pretrained(path / "tokenizer"),
            scheduler=DDIMScheduler.from_pretrained(path / "scheduler", **overrides),
        )

    def train(self, mode: bool = True) -> VideoPointModel:
        """Frozen parts stay in eval mode."""
        super().train(mode)
        self.vae.eval()
        self.text_encoder.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for name in TRAINABLE_MODULES for p in getattr(self, name).parameters()]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Keys "unet.*" and "entry_attention.*", as in this module's state_dict."""
        return {key: value for key, value in self.state_dict().items() if key.startswith(TRAINABLE_MODULES)}

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a trainable_state_dict(); every trainable key must be present and nothing else."""
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        missing = [key for key in missing if key.startswith(TRAINABLE_MODULES)]
        unexpected += [key for key in state_dict if not key.startswith(TRAINABLE_MODULES)]
        if missing or unexpected:
            raise KeyError(f"trainable state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, T, 3, H, W) in [-1, 1] -> scaled latents (B, 4, T, h, w); frames go through the VAE as images."""
        batch, frames = video.shape[:2]
        posterior = self.vae.encode(video.flatten(0, 1)).latent_dist
        latents = posterior.sample(generator) * self.vae.config.scaling_factor
        return latents.unflatten(0, (batch, frames)).transpose(1, 2)

    def encode_points(self, points: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, T, 3, H, W) normalised (u, v, d) -> latents (B, 4, T, h, w), with the same VAE as the frames."""
        return self.encode_video(points, generator)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, 4, T, h, w) -> (B, T, 3, H, W)."""
        batch, frames = latents.shape[0], latents.shape[2]
        images = self.vae.decode(latents.transpose(1, 2).flatten(0, 1) / self.vae.config.scaling_factor).sample
        return images.unflatten(0, (batch, frames))

    def decode_points(self, latents: torch.Tensor) -> torch.Tensor:
        """Point latents (B, 4, T, h, w) -> normalised (u, v, d) (B, T, 3, H, W)."""
        return self.decode_video(latents)

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Captions -> CLIP last hidden states (B, tokenizer.model_max_length, D)."""
        tokens = self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(self.text_encoder.device)).last_hidden_state

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeddings: torch.Tensor,
        condition_latents: torch.Tensor,
    ) -> torch.Tensor:
        """Noisy [RGB, points] (B, 8, T, h, w), first-frame latents (B, 4, 1, h, w) -> prediction (B, 8, T, h, w).

        The condition is repeated over frames, and once more for the point half (paper §3.2).
        """
        condition = condition_latents.expand(-1, -1, noisy_latents.shape[2], -1, -1)
        sample = torch.cat([self.entry_attention(noisy_latents), condition, condition], dim=1)
        return self.unet(sample, timesteps, encoder_hidden_states=text_embeddings).sample
