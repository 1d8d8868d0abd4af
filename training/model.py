"""The video-point diffusion model of paper §3.2, built on I2VGen-XL.

I2VGen-XL (diffusers `I2VGenXLUNet`) denoises RGB video latents conditioned on the caption (CLIP
text), the first frame (its VAE latents with a per-frame position mask, and its CLIP image
embedding) and the frame rate. Here its UNet is widened to denoise point latents beside the RGB
latents, keeping all of that conditioning. Latent layout, all (B, C, T, h, w):

    noisy input   [RGB (4), points (4)]      first-frame condition  I2VGen-XL's image latents (4)
    conv_in sees  [RGB (4), condition (4)] -> the pretrained conv   (unchanged)
                + [points (4), condition again (4)] -> a new conv   (zero-initialised, paper §3.2)
    output        [RGB (4) from the pretrained conv_out, points (4) from a new zero-initialised conv]

A zero-initialised cross-attention between the RGB and point halves sits at the entry. At
initialisation the RGB half is therefore I2VGen-XL itself, bit for bit, and the point half predicts
0. Points are (u, v, d) channels encoded by the same frozen VAE as the frames; scaling them to
about [-1, 1] is the data loader's job.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, replace

import torch
import torch.utils.checkpoint
from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLUNet
from diffusers.models.attention_processor import Attention
from torch import nn
from transformers import CLIPImageProcessorPil, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection

from .data import fit_frames

# I2VGen-XL's noise schedule, with "trailing" timestep spacing: with zero-SNR rescaling, "leading"
# spacing never samples the last (pure-noise) timestep and sampling starts at t = 960 (Lin et al.,
# "Common Diffusion Noise Schedules and Sample Steps are Flawed"). clip_sample is off because latents
# are not confined to [-1, 1].
SCHEDULER_CONFIG = {
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "clip_sample": False,
}
SCHEDULER_OVERRIDES = {"timestep_spacing": "trailing"}  # applied to a pretrained pipeline's scheduler too
GUIDANCE_SCALE = 9.0  # I2VGen-XL's default classifier-free guidance scale
TRAINABLE_MODULES = ("unet", "entry_attention")


class PointConvIn(nn.Module):
    """I2VGen-XL's conv_in plus a zero-initialised conv for the point half.

    The UNet's forward builds conv_in's input itself ([noisy RGB, processed image latents], per frame),
    so the point latents reach this layer through `carrying`, set by `VideoPointModel.forward`.
    The pretrained conv's output is kept as is and the point term added to it: with zero point
    weights the sum equals I2VGen-XL's conv_in exactly.
    """

    def __init__(self, rgb: nn.Conv2d, latent_channels: int):
        super().__init__()
        self.rgb = rgb
        self.points = nn.Conv2d(2 * latent_channels, rgb.out_channels, rgb.kernel_size, padding=rgb.padding, bias=False).to(rgb.weight)
        nn.init.zeros_(self.points.weight)
        self.latent_channels = latent_channels
        self._point_latents: torch.Tensor | None = None

    @contextlib.contextmanager
    def carrying(self, point_latents: torch.Tensor):
        """Point latents (B, C, T, h, w) for the forward passes inside the block."""
        batch, channels, frames, height, width = point_latents.shape
        self._point_latents = point_latents.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
        try:
            yield
        finally:
            self._point_latents = None

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        """(B*T, 2C, h, w) [noisy RGB, image condition] -> (B*T, out, h, w)."""
        out = self.rgb(sample)
        if self._point_latents is None:
            return out  # an RGB-only call: I2VGen-XL as it was
        condition = sample[:, self.latent_channels :]
        return out + self.points(torch.cat([self._point_latents.to(sample.dtype), condition], dim=1))


class PointConvOut(nn.Module):
    """I2VGen-XL's conv_out for the RGB half beside a zero-initialised conv for the point half."""

    def __init__(self, rgb: nn.Conv2d, latent_channels: int):
        super().__init__()
        self.rgb = rgb
        self.points = nn.Conv2d(rgb.in_channels, latent_channels, rgb.kernel_size, padding=rgb.padding).to(rgb.weight)
        nn.init.zeros_(self.points.weight)
        nn.init.zeros_(self.points.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.rgb(features), self.points(features)], dim=1)


def widen_for_points(unet: I2VGenXLUNet) -> I2VGenXLUNet:
    """Widen an I2VGen-XL UNet, in place, so its entry and exit also carry the point latents (paper §3.2).

    Every pretrained weight is kept where it was; every new weight is zero. In place, because a
    second copy of the paper-size UNet (1.4 B parameters) would not be free on a GPU.
    """
    if not isinstance(unet, I2VGenXLUNet):
        raise TypeError(f"expected diffusers' I2VGenXLUNet (the unet/ of an I2VGenXLPipeline), got {type(unet).__name__}")
    latent_channels = unet.config.out_channels
    unet.conv_in = PointConvIn(unet.conv_in, latent_channels)
    unet.conv_out = PointConvOut(unet.conv_out, latent_channels)
    return unet


def checkpoint_unet_blocks(unet: I2VGenXLUNet) -> list[nn.Module]:
    """Recompute each down, mid and up block's activations in the backward pass instead of keeping them;
    returns those blocks.

    diffusers' I2VGenXLUNet refuses `enable_gradient_checkpointing` (its 3D blocks ignore the flag), so
    each block's forward is wrapped in `torch.utils.checkpoint` (not under no_grad, where there is
    nothing to keep); module names, and so checkpoints, are unchanged.
    """
    blocks = [block for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks] if block is not None]
    for block in blocks:
        if "forward" not in vars(block):
            block.forward = functools.partial(_checkpointed, block.forward)
    return blocks


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


@dataclass
class Conditions:
    """What the UNet is conditioned on besides the noisy latents (I2VGen-XL's conditioning)."""

    text: torch.Tensor  # (B, L, D) CLIP text last hidden states
    image_latents: torch.Tensor  # (B, 4, T, h, w) first-frame latents, then the per-frame position mask
    image_embeddings: torch.Tensor  # (B, 1, D) CLIP image embedding of the first frame
    fps: torch.Tensor  # (B,) frame rate micro-condition

    def unconditional(self, empty_text: torch.Tensor) -> Conditions:
        """The classifier-free-guidance branch: empty caption, zero image embedding (as I2VGen-XL's
        pipeline and its caption/image dropout in training); image latents and fps are kept."""
        return replace(self, text=empty_text.expand_as(self.text), image_embeddings=torch.zeros_like(self.image_embeddings))

    def doubled(self, other: Conditions) -> Conditions:
        """[other, self] along the batch, for one UNet call on both guidance branches."""
        return Conditions(*(torch.cat([a, b]) for a, b in ((other.text, self.text), (other.image_latents, self.image_latents),
                                                          (other.image_embeddings, self.image_embeddings), (other.fps, self.fps))))


def image_latents_with_position_mask(first_latents: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, 4, 1, h, w) first-frame latents -> (B, 4, T, h, w): frame t > 0 is the constant t / (T - 1)
    (I2VGen-XL's `prepare_image_latents`)."""
    scales = torch.arange(1, frames, device=first_latents.device, dtype=first_latents.dtype) / max(frames - 1, 1)
    mask = torch.ones_like(first_latents).expand(-1, -1, frames - 1, -1, -1) * scales.view(1, 1, -1, 1, 1)
    return torch.cat([first_latents, mask], dim=2)


def clip_image_input(first_frame: torch.Tensor, processor: CLIPImageProcessorPil) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> CLIP pixel values: centre square crop and bilinear resize to the encoder's
    input size (`data.fit_frames`, as I2VGen-XL's pipeline prepares its image), then CLIP mean/std.
    Training and sampling both call this."""
    size = processor.crop_size
    resized = fit_frames(first_frame.float(), size["height"], size["width"])
    mean = torch.tensor(processor.image_mean, device=first_frame.device).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std, device=first_frame.device).view(1, 3, 1, 1)
    return ((resized + 1) / 2 - mean) / std


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
    """Frozen VAE and CLIP text and image encoders around the trainable widened UNet and entry attention."""

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: I2VGenXLUNet,
        entry_attention: EntryCrossAttention,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        image_encoder: CLIPVisionModelWithProjection,
        image_processor: CLIPImageProcessorPil,
        scheduler: DDIMScheduler,
    ):
        super().__init__()
        if not isinstance(unet.conv_in, PointConvIn):
            raise TypeError("unet must be widened for points: widen_for_points(I2VGenXLUNet)")
        self.vae = vae.requires_grad_(False).eval()
        self.unet = unet
        self.entry_attention = entry_attention
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.image_encoder = image_encoder.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.scheduler = scheduler

    @classmethod
    def from_config(cls, config: dict) -> VideoPointModel:
        """Randomly initialised parts from small configs (tests, the tiny training config).

        Keys: "vae" (AutoencoderKL kwargs), "unet" (I2VGenXLUNet kwargs; it is widened here),
        "text_encoder" (CLIPTextConfig kwargs), "image_encoder" (CLIPVisionConfig kwargs; its
        projection_dim is the UNet's cross_attention_dim), "tokenizer" (a CLIPTokenizer folder, or
        {"vocab": {token: id}, "merges": ["a b", ...], **CLIPTokenizer kwargs}); optional
        "entry_attention" (EntryCrossAttention kwargs) and "scheduler" (DDIMScheduler overrides).
        """
        rgb_unet = I2VGenXLUNet(**config["unet"])
        tokenizer_config = config["tokenizer"]
        if isinstance(tokenizer_config, dict):
            merges = [tuple(merge.split()) for merge in tokenizer_config["merges"]]
            tokenizer = CLIPTokenizer(**{**tokenizer_config, "merges": merges})
        else:
            tokenizer = CLIPTokenizer.from_pretrained(tokenizer_config)
        vision = CLIPVisionConfig(**config["image_encoder"])
        side = vision.image_size
        return cls(
            vae=AutoencoderKL(**config["vae"]),
            unet=widen_for_points(rgb_unet),
            entry_attention=EntryCrossAttention(rgb_unet.config.out_channels, **config.get("entry_attention", {})),
            text_encoder=CLIPTextModel(CLIPTextConfig(**config["text_encoder"])),
            tokenizer=tokenizer,
            image_encoder=CLIPVisionModelWithProjection(vision),
            image_processor=CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
            scheduler=DDIMScheduler(**{**SCHEDULER_CONFIG, **config.get("scheduler", {})}),
        )

    @classmethod
    def from_pretrained(cls, source: str, **entry_attention) -> VideoPointModel:
        """Load an I2VGen-XL pipeline (a hub id such as "ali-vilab/i2vgen-xl", or a local folder written by
        `I2VGenXLPipeline.save_pretrained`: model_index.json, unet/, vae/, text_encoder/, tokenizer/,
        image_encoder/, feature_extractor/, scheduler/) and widen its UNet for points.

        Components are read with `subfolder=`, the same path for a hub id (from the Hugging Face cache)
        and a folder. The pipeline's scheduler is kept, with "trailing" timestep spacing.
        """
        rgb_unet = I2VGenXLUNet.from_pretrained(source, subfolder="unet")
        return cls(
            vae=AutoencoderKL.from_pretrained(source, subfolder="vae"),
            unet=widen_for_points(rgb_unet),
            entry_attention=EntryCrossAttention(rgb_unet.config.out_channels, **entry_attention),
            text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder"),
            tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer"),
            image_encoder=CLIPVisionModelWithProjection.from_pretrained(source, subfolder="image_encoder"),
            image_processor=CLIPImageProcessorPil.from_pretrained(source, subfolder="feature_extractor"),
            scheduler=DDIMScheduler.from_pretrained(source, subfolder="scheduler", **SCHEDULER_OVERRIDES),
        )

    def train(self, mode: bool = True) -> VideoPointModel:
        """Frozen parts stay in eval mode."""
        super().train(mode)
        self.vae.eval()
        self.text_encoder.eval()
        self.image_encoder.eval()
        return self

    def enable_gradient_checkpointing(self) -> None:
        checkpoint_unet_blocks(self.unet)

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
        posterior = self.vae.encode(video.flatten(0, 1).to(self.vae.dtype)).latent_dist
        latents = posterior.sample(generator) * self.vae.config.scaling_factor
        return latents.unflatten(0, (batch, frames)).transpose(1, 2)

    def encode_points(self, points: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, T, 3, H, W) normalised (u, v, d) -> latents (B, 4, T, h, w), with the same VAE as the frames."""
        return self.encode_video(points, generator)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, 4, T, h, w) -> (B, T, 3, H, W)."""
        batch, frames = latents.shape[0], latents.shape[2]
        images = self.vae.decode((latents.transpose(1, 2).flatten(0, 1) / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
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

    def encode_image(self, first_frame: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) first frames in [-1, 1] -> CLIP image embeddings (B, 1, D)."""
        pixels = clip_image_input(first_frame, self.image_processor).to(self.image_encoder.device, self.image_encoder.dtype)
        return self.image_encoder(pixels).image_embeds.unsqueeze(1)

    def conditions(
        self,
        first_frame: torch.Tensor,
        first_latents: torch.Tensor,
        captions: list[str],
        frames: int,
        fps: float,
        drop_caption: torch.Tensor | None = None,
        drop_image: torch.Tensor | None = None,
    ) -> Conditions:
        """I2VGen-XL's conditioning of a batch. first_frame (B, 3, H, W) in [-1, 1]; first_latents (B, 4, 1, h, w).

        drop_caption / drop_image (B,) bool: classifier-free-guidance dropout in training, the caption
        replaced by "" and the image embedding by zeros (what sampling's unconditional branch sees).
        """
        if drop_caption is not None:
            captions = ["" if drop else caption for caption, drop in zip(captions, drop_caption.tolist())]
        image_embeddings = self.encode_image(first_frame)
        if drop_image is not None:
            image_embeddings = torch.where(drop_image.to(image_embeddings.device).view(-1, 1, 1), torch.zeros_like(image_embeddings), image_embeddings)
        batch = first_frame.shape[0]
        return Conditions(
            text=self.encode_text(captions),
            image_latents=image_latents_with_position_mask(first_latents, frames),
            image_embeddings=image_embeddings,
            fps=torch.full((batch,), float(fps), device=first_latents.device),
        )

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, conditions: Conditions) -> torch.Tensor:
        """Noisy [RGB, points] (B, 8, T, h, w) -> prediction (B, 8, T, h, w), conditioned as I2VGen-XL is."""
        return denoise(self.unet, self.entry_attention, noisy_latents, timesteps, conditions)


def denoise(unet: I2VGenXLUNet, entry_attention: EntryCrossAttention, noisy_latents: torch.Tensor, timesteps: torch.Tensor, conditions: Conditions) -> torch.Tensor:
    """The trainable part's forward (also used bare by benchmarks/training_memory.py at paper size): entry
    attention, then the widened UNet with the point half handed to its conv_in."""
    dtype = unet.dtype
    rgb, points = entry_attention(noisy_latents).split(entry_attention.latent_channels, dim=1)
    with unet.conv_in.carrying(points):
        return unet(
            rgb.to(dtype),
            timesteps,
            fps=conditions.fps,
            image_latents=conditions.image_latents.to(dtype),
            image_embeddings=conditions.image_embeddings.to(dtype),
            encoder_hidden_states=conditions.text.to(dtype),
        ).sample
