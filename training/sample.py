"""`python -m training.sample --checkpoint OUT/checkpoint --image frame.png --prompt "..." --out DIR`.

Generates a video and its 3D tracks from a first frame and a prompt with DDIM, as I2VGen-XL samples:
the first frame prepared as in training (`data.fit_frames`), classifier-free guidance between the
conditional prediction and the unconditional one (empty caption, zero image embedding; scale 9 by
default, I2VGen-XL's), and the model's zero-SNR schedule with trailing timesteps. SimDrop
(synthetic-video paper): with `--reference-checkpoint` (a model trained on synthetic data) the
prediction becomes p_main + s * (p_main - p_ref), steering away from renderer artifacts.
Writes `video.mp4` and `tracks.png` (generated (u, v) trajectories over the first frame, coloured
by generated depth).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from .config import TrainConfig
from .data import fit_frames
from .fit import build_model, load_checkpoint
from .model import GUIDANCE_SCALE, VideoPointModel


def load_model(checkpoint: Path) -> tuple[VideoPointModel, TrainConfig]:
    """The checkpoint's model, with its EMA weights when the run kept them (what one samples with)."""
    config = TrainConfig(**json.loads((checkpoint / "state.json").read_text())["config"])
    model = build_model(config)
    load_checkpoint(checkpoint, model, optimizer=None)
    if (checkpoint / "ema.safetensors").exists():
        unexpected = model.load_state_dict(load_file(checkpoint / "ema.safetensors"), strict=False).unexpected_keys
        if unexpected:
            raise KeyError(f"{checkpoint / 'ema.safetensors'} holds weights this model does not have: {unexpected[:5]}")
    return model.eval(), config


def image_tensor(path: Path, config: TrainConfig) -> torch.Tensor:
    """The first frame as training sees its frames: (1, 1, 3, H, W) in [-1, 1]."""
    image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32)).permute(2, 0, 1)[None]
    return (fit_frames(image, config.height, config.width) / 127.5 - 1).clamp(-1, 1)[None]


@torch.inference_mode()
def generate(model: VideoPointModel, config: TrainConfig, image: torch.Tensor, prompt: str, steps: int, seed: int,
             guidance_scale: float = GUIDANCE_SCALE, reference: VideoPointModel | None = None,
             simdrop_scale: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(video (T, 3, H, W), normalised points (T, 3, H, W)) in [-1, 1]. guidance_scale 1 turns guidance off."""
    device = next(model.unet.parameters()).device
    image = image.to(device)
    first_latents = model.encode_video(image)  # (1, 4, 1, h, w)
    conditions = model.conditions(image[:, 0], first_latents, [prompt], config.frames, config.fps)
    both = conditions.doubled(conditions.unconditional(model.encode_text([""])))  # [unconditional, conditional]
    scheduler = type(model.scheduler).from_config(model.scheduler.config)
    scheduler.set_timesteps(steps, device=device)
    generator = torch.Generator(device).manual_seed(seed)
    sample = torch.randn((1, 8, config.frames, *first_latents.shape[-2:]), generator=generator, device=device)

    def guided(net: VideoPointModel, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        unconditional, conditional = net(torch.cat([latents] * 2), timestep.expand(2), both).chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    for t in scheduler.timesteps:
        timestep = torch.full((1,), int(t), device=device)
        prediction = guided(model, sample, timestep)
        if reference is not None:
            prediction = prediction + simdrop_scale * (prediction - guided(reference, sample, timestep))
        sample = scheduler.step(prediction, t, sample).prev_sample
    return model.decode_video(sample[:, :4])[0].clamp(-1, 1), model.decode_points(sample[:, 4:])[0].clamp(-1, 1)


def tracks_figure(first_frame: np.ndarray, points: np.ndarray, path: Path, depth_max: float, grid: int = 12) -> None:
    """Generated (u, v) trajectories of a grid of pixels drawn on the first frame, coloured by depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames, _, height, width = points.shape
    rows = np.linspace(0, height - 1, grid).astype(int)
    cols = np.linspace(0, width - 1, grid * 2).astype(int)
    u = (points[:, 0][:, rows][:, :, cols] + 1) / 2 * (width - 1)
    v = (points[:, 1][:, rows][:, :, cols] + 1) / 2 * (height - 1)
    depth = (points[:, 2][:, rows][:, :, cols] + 1) / 2 * depth_max
    figure, axis = plt.subplots(figsize=(width / 50, height / 50))
    axis.imshow(first_frame)
    for i in range(len(rows)):
        for j in range(len(cols)):
            axis.plot(u[:, i, j], v[:, i, j], lw=0.6, color=plt.cm.viridis(float(depth[0, i, j]) / depth_max))
    axis.set_axis_off()
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.sample", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--image", required=True, type=Path, help="the first frame")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--out", required=True, type=Path, help="folder for video.mp4 and tracks.png")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance-scale", type=float, default=GUIDANCE_SCALE, help="classifier-free guidance (1: off)")
    parser.add_argument("--reference-checkpoint", type=Path, help="SimDrop: model trained on synthetic data")
    parser.add_argument("--simdrop-scale", type=float, default=1.0, help="s in p_main + s * (p_main - p_ref)")
    args = parser.parse_args(argv)
    model, config = load_model(args.checkpoint)
    reference = load_model(args.reference_checkpoint)[0] if args.reference_checkpoint else None
    image = image_tensor(args.image, config)
    video, points = generate(model, config, image, args.prompt, args.steps, args.seed, args.guidance_scale, reference, args.simdrop_scale)
    from pointvid_pipeline.storage.shard_format import encode_mp4

    args.out.mkdir(parents=True, exist_ok=True)
    frames = ((video.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    (args.out / "video.mp4").write_bytes(encode_mp4(frames, fps=8))
    tracks_figure(frames[0], points.numpy(), args.out / "tracks.png", config.depth_max)
    print(f"video:  {args.out / 'video.mp4'}\ntracks: {args.out / 'tracks.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
