"""Parameters, activation memory, batch per 80 GB GPU and steps/s of the paper's training setup.

The paper fine-tunes I2VGen-XL at 448x256, 16 frames, batch 4 (§4), with the UNet widened for point
latents (§3.2). Nothing here needs weights or a GPU: the model is built from its published config on
the `meta` device for exact parameter and FLOP counts, and activation memory is measured on the CPU
at small latent sizes (bytes of the tensors autograd saves for backward, under bf16 autocast) and
extrapolated linearly to the paper's 56x32 latents x 16 frames. See docs/training.md.
Run: python benchmarks/training_memory.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers import AutoencoderKL, I2VGenXLUNet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from training.model import Conditions, EntryCrossAttention, checkpoint_unet_blocks, denoise, widen_for_points

# ali-vilab/i2vgen-xl unet/config.json could not be fetched here (no hub access). Reconstructed, and
# equal to diffusers 0.42.1's I2VGenXLUNet defaults: ali-vilab/VGen configs/i2vgen_xl_train.yaml
# (UNetSD_I2VGen: in_dim 4, concat_dim 4, out_dim 4, dim 320, dim_mult [1, 2, 4, 4], head_dim 64,
# num_res_blocks 2, context_dim 1024, temporal_attention) maps onto exactly these fields.
I2VGEN_XL_UNET_CONFIG = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "cross_attention_dim": 1024,
    "attention_head_dim": 64,
    "num_attention_heads": None,
}
# The frozen parts, reconstructed the same way (the hub's vae/, text_encoder/, image_encoder/ configs
# were not reachable): the Stable Diffusion KL-f8 VAE, OpenCLIP ViT-H/14 text tower as converted for
# SD 2.x (23 layers: the penultimate layer is the output) and OpenCLIP ViT-H/14 vision tower.
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
}
TEXT_ENCODER_CONFIG = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16, "projection_dim": 1024, "hidden_act": "gelu"}
IMAGE_ENCODER_CONFIG = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "projection_dim": 1024, "hidden_act": "gelu"}

LATENT_CHANNELS = 4
TEXT_TOKENS = 77
PAPER = {"frames": 16, "height": 256, "width": 448, "batch": 4}  # §4; VAE factor 8 -> 32x56 latents
GPU_BYTES = 80 * 2**30
USABLE_FRACTION = 0.9  # CUDA context, cuBLAS/cuDNN workspaces, allocator fragmentation
PEAK_BF16_FLOPS = {"A100": 312e12, "H100 SXM": 989e12}  # dense bf16 tensor-core peaks
MFU = 0.40
# (latent height, width, frames, batch) measured on the CPU; varied independently so the fit can
# separate what scales with latent pixels, with frames, with samples, and what does not.
MEASURE_SIZES = ((8, 16, 4, 1), (8, 16, 8, 1), (16, 16, 4, 1), (16, 32, 4, 1), (8, 16, 4, 2))


class PaperVideoPointUNet(nn.Module):
    """VideoPointModel's trainable part at the paper's size, without the frozen encoders: the entry
    cross-attention and I2VGen-XL's UNet widened for points (`training.model`, the same code that trains)."""

    def __init__(self, rgb_unet: I2VGenXLUNet):
        super().__init__()
        self.entry_attention = EntryCrossAttention(LATENT_CHANNELS)
        self.unet = widen_for_points(rgb_unet)

    @classmethod
    def from_config(cls, config: dict = I2VGEN_XL_UNET_CONFIG) -> PaperVideoPointUNet:
        return cls(I2VGenXLUNet(**config))

    def forward(self, noisy, timestep, fps, image_latents, image_embeddings, text):
        """noisy (B, 8, T, h, w) [RGB, points]; image_latents (B, 4, T, h, w) -> prediction (B, 8, T, h, w)."""
        return denoise(self.unet, self.entry_attention, noisy, timestep, Conditions(text, image_latents, image_embeddings, fps))


def build_on_cpu(seed: int = 0) -> PaperVideoPointUNet:
    """The paper-size model in fp32 on the CPU, built on meta and filled with N(0, 0.02): a faster stand-in
    for the module init (values do not change which tensors autograd saves)."""
    with torch.device("meta"):
        model = PaperVideoPointUNet.from_config()
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.02, generator=generator)
    return model.train()


def unet_inputs(batch: int, frames: int, height: int, width: int, device="cpu", generator=None, cross_attention_dim: int = 1024) -> dict:
    """Random inputs of the training shapes: latents (B, C, T, h, w), CLIP text (B, 77, D), CLIP image embedding (B, D)."""
    def randn(*shape):
        return torch.randn(*shape, generator=generator, device="cpu").to(device)

    return {
        "noisy": randn(batch, 2 * LATENT_CHANNELS, frames, height, width),
        "timestep": torch.randint(0, 1000, (batch,), generator=generator).to(device),
        "fps": torch.full((batch,), 8, device=device),
        "image_latents": randn(batch, LATENT_CHANNELS, frames, height, width),
        "image_embeddings": randn(batch, cross_attention_dim),
        "text": randn(batch, TEXT_TOKENS, cross_attention_dim),
    }


def v_prediction_loss(model: PaperVideoPointUNet, inputs: dict, target: torch.Tensor) -> torch.Tensor:
    prediction = model(**inputs)
    return F.mse_loss(prediction.float(), target.float())


def parameter_counts() -> dict[str, int]:
    """Exact counts from the configs, built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = PaperVideoPointUNet.from_config()
        rgb_unet = I2VGenXLUNet(**I2VGEN_XL_UNET_CONFIG)
        frozen = {
            "vae": AutoencoderKL(**VAE_CONFIG),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG)),
            "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**IMAGE_ENCODER_CONFIG)),
        }

    def count(module):
        return sum(p.numel() for p in module.parameters())

    counts = {"i2vgen_xl_unet": count(rgb_unet), "widened_unet": count(model.unet), "entry_attention": count(model.entry_attention)}
    counts["trainable"] = counts["widened_unet"] + counts["entry_attention"]
    counts.update({name: count(module) for name, module in frozen.items()})
    counts["frozen"] = sum(counts[name] for name in frozen)
    return counts


def training_flops(batch: int, frames: int, height: int, width: int, checkpointing: bool) -> dict[str, int]:
    """FLOPs of one forward and one forward+backward at the given latent size, counted on the meta device."""
    with torch.device("meta"):
        model = PaperVideoPointUNet.from_config()
    if checkpointing:
        checkpoint_unet_blocks(model.unet)
    inputs = unet_inputs(batch, frames, height, width, device="meta")
    target = torch.empty_like(inputs["noisy"])
    with torch.no_grad(), FlopCounterMode(display=False) as forward_counter:
        model(**inputs)
    with FlopCounterMode(display=False) as step_counter:
        v_prediction_loss(model, inputs, target).backward()
    return {"forward": forward_counter.get_total_flops(), "step": step_counter.get_total_flops()}


@dataclass
class SavedBytes:
    """Bytes alive for backward after one forward: what autograd saved (unique storages), weights excluded."""

    activations: int
    weight_copies: int  # autocast's bf16 casts of the fp32 weights
    largest_block: int  # the largest single block's own saved bytes (what checkpointing recomputes at once)


def derived_from_one_parameter(tensor: torch.Tensor, depth: int = 4) -> bool:
    """True for autocast's bf16 cast of a weight and views of it (a chain of one-input ops from a parameter)."""
    function = tensor.grad_fn
    for _ in range(depth):
        if function is None:
            return False
        if type(function).__name__ == "AccumulateGrad":
            return True
        inputs = [f for f, _ in function.next_functions if f is not None]
        if len(inputs) != 1:
            return False
        function = inputs[0]
    return False


def measure_saved_bytes(model: PaperVideoPointUNet, inputs: dict, checkpointing_blocks: list[nn.Module] | None) -> SavedBytes:
    """One bf16-autocast forward on the CPU with saved-tensor hooks counting unique storages.

    With checkpointed blocks the hooks only see what lives outside them; each block's inputs
    (kept for the recompute) are counted by a forward pre-hook.
    """
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}
    weight_copies: dict[int, int] = {}
    per_block: dict[int, dict[int, int]] = {}
    current: list[int] = []

    def add(tensor):
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer in parameters:
            return
        if derived_from_one_parameter(tensor):
            weight_copies[pointer] = storage.nbytes()
            return
        seen[pointer] = storage.nbytes()
        if current:
            per_block.setdefault(current[-1], {})[pointer] = storage.nbytes()

    def pack(tensor):
        add(tensor)
        return tensor

    def enter(module, args, kwargs):
        if checkpointing_blocks is not None:
            for value in [*args, *kwargs.values()]:
                for tensor in value if isinstance(value, tuple) else (value,):
                    if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                        add(tensor)
        current.append(id(module))

    def leave(module, args, output):
        current.pop()

    blocks = checkpointing_blocks or [*model.unet.down_blocks, model.unet.mid_block, *model.unet.up_blocks]
    handles = [b.register_forward_pre_hook(enter, with_kwargs=True) for b in blocks]
    handles += [b.register_forward_hook(leave) for b in blocks]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = model(**inputs)
        add(output)
    finally:
        for handle in handles:
            handle.remove()
    largest = max((sum(v.values()) for v in per_block.values()), default=0)
    return SavedBytes(sum(seen.values()), sum(weight_copies.values()), largest)


def features(height: int, width: int, frames: int, batch: int) -> list[float]:
    """Regressors of activation bytes: constant, per sample, per frame, per latent pixel."""
    return [1.0, batch, batch * frames, batch * frames * height * width]


def fit_linear(sizes, values) -> tuple[np.ndarray, float]:
    """Least-squares coefficients and the largest relative residual over the measured sizes."""
    design = np.array([features(*size) for size in sizes])
    target = np.array(values, dtype=float)
    coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
    residual = np.abs(design @ coefficients - target) / target
    return coefficients, float(residual.max())


def measure_size(size: tuple[int, int, int, int]) -> dict[str, SavedBytes]:
    """Saved bytes at one (latent h, w, frames, batch), without and then with block checkpointing."""
    height, width, frames, batch = size
    model = build_on_cpu()
    inputs = unet_inputs(batch, frames, height, width, generator=torch.Generator().manual_seed(0))
    plain = measure_saved_bytes(model, inputs, None)
    checkpointed = measure_saved_bytes(model, inputs, checkpoint_unet_blocks(model.unet))
    return {"plain": plain, "checkpointed": checkpointed}


def measure_activations(sizes=MEASURE_SIZES, threads: int = 2) -> dict:
    """measure_size at each size, each in its own process; returns the rows per mode.

    One worker peaks at ~12-14 GB RSS (fp32 weights, bf16 casts, activations); one process running
    every size was OOM-killed at 23.7 GB on a 23 GB machine (with tests running beside it).
    """
    rows = {"plain": [], "checkpointed": []}
    for size in sizes:
        command = [sys.executable, __file__, "--measure", ",".join(map(str, size)), "--threads", str(threads)]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        for mode, values in rows.items():
            values.append(SavedBytes(**result[mode]))
        print(f"  measured {size}", file=sys.stderr, flush=True)
    return {"sizes": list(sizes), **rows}


def extrapolate(measured: dict, height: int, width: int, frames: int, batch: int) -> dict:
    """Bytes at the target size from linear fits (activations, and the largest block for the recompute)."""
    sizes = measured["sizes"]
    out = {}
    x = np.array(features(height, width, frames, batch))
    for mode in ("plain", "checkpointed"):
        coefficients, residual = fit_linear(sizes, [row.activations for row in measured[mode]])
        out[f"{mode}_bytes"] = float(x @ coefficients)
        out[f"{mode}_per_sample_bytes"] = float(np.array(features(height, width, frames, 1))[1:] @ coefficients[1:])
        out[f"{mode}_constant_bytes"] = float(coefficients[0])
        out[f"{mode}_fit_residual"] = residual
    coefficients, residual = fit_linear(sizes, [row.largest_block for row in measured["plain"]])
    out["recompute_bytes"] = float(x @ coefficients)
    out["recompute_per_sample_bytes"] = float(np.array(features(height, width, frames, 1))[1:] @ coefficients[1:])
    out["recompute_fit_residual"] = residual
    out["checkpointed_peak_bytes"] = out["checkpointed_bytes"] + out["recompute_bytes"]
    out["weight_copy_bytes"] = measured["plain"][0].weight_copies
    return out


def memory_budget(counts: dict[str, int]) -> dict[str, float]:
    """Bytes that do not depend on the batch: AdamW training state, bf16 weight casts, frozen encoders."""
    trainable, frozen = counts["trainable"], counts["frozen"]
    return {
        "fp32 weights (master)": 4 * trainable,
        "fp32 gradients": 4 * trainable,
        "AdamW exp_avg + exp_avg_sq (fp32)": 8 * trainable,
        "bf16 weight casts (autocast, fwd/bwd)": 2 * trainable,
        "frozen VAE + CLIP text + CLIP image (bf16)": 2 * frozen,
    }


def batch_that_fits(fixed_bytes: float, constant_bytes: float, per_sample_bytes: float) -> int:
    return max(0, math.floor((USABLE_FRACTION * GPU_BYTES - fixed_bytes - constant_bytes) / per_sample_bytes))


def gib(value: float) -> str:
    return f"{value / 2**30:7.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for the activation measurement")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # worker: "h,w,frames,batch" -> one JSON line
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.measure:
        size = tuple(int(v) for v in args.measure.split(","))
        print(json.dumps({mode: dataclasses.asdict(row) for mode, row in measure_size(size).items()}))
        return
    frames, batch = PAPER["frames"], PAPER["batch"]
    height, width = PAPER["height"] // 8, PAPER["width"] // 8

    counts = parameter_counts()
    print("Parameters (exact, meta device, configs in this script):")
    for name, value in counts.items():
        print(f"  {name:<18} {value:>14,}")

    measured = measure_activations(threads=args.threads)
    print("\nSaved-for-backward bytes measured on the CPU (bf16 autocast, batch x frames x latent h x w):")
    for size, plain, checkpointed in zip(measured["sizes"], measured["plain"], measured["checkpointed"]):
        h, w, t, b = size
        print(f"  {b} x {t:2d} x {h:2d} x {w:2d}: no checkpointing {plain.activations / 2**20:9.1f} MiB (largest block {plain.largest_block / 2**20:7.1f} MiB), block checkpointing {checkpointed.activations / 2**20:8.1f} MiB")
    print(f"  autocast bf16 weight casts held during the forward: {gib(measured['plain'][0].weight_copies)}")

    extra = extrapolate(measured, height, width, frames, 1)
    budget = memory_budget(counts)
    fixed = sum(budget.values())
    print(f"\nActivations per sample at {PAPER['width']}x{PAPER['height']} ({width}x{height} latents) x {frames} frames, bf16, linear fit in (sample, frame, latent pixel):")
    print(f"  no checkpointing      {gib(extra['plain_per_sample_bytes'])}  (+ {gib(extra['plain_constant_bytes'])} per step; fit residual {extra['plain_fit_residual']:.1%})")
    print(f"  block checkpointing   {gib(extra['checkpointed_per_sample_bytes'])} kept + {gib(extra['recompute_per_sample_bytes'])} for the largest block's recompute  (fit residuals {extra['checkpointed_fit_residual']:.1%}, {extra['recompute_fit_residual']:.1%})")

    print("\nFixed memory per GPU (AdamW, mixed precision):")
    for name, value in budget.items():
        print(f"  {name:<44} {gib(value)}")
    print(f"  {'total':<44} {gib(fixed)}")
    usable = USABLE_FRACTION * GPU_BYTES
    plain_batch = batch_that_fits(fixed, extra["plain_constant_bytes"], extra["plain_per_sample_bytes"])
    checkpoint_batch = batch_that_fits(fixed, extra["checkpointed_constant_bytes"], extra["checkpointed_per_sample_bytes"] + extra["recompute_per_sample_bytes"])
    print(f"\nBatch per 80 GB GPU ({USABLE_FRACTION:.0%} usable = {gib(usable)}):")
    print(f"  no checkpointing      {plain_batch}   (batch {batch}: {gib(fixed + extra['plain_constant_bytes'] + batch * extra['plain_per_sample_bytes'])})")
    print(f"  block checkpointing   {checkpoint_batch}   (batch {batch}: {gib(fixed + extra['checkpointed_constant_bytes'] + batch * (extra['checkpointed_per_sample_bytes'] + extra['recompute_per_sample_bytes']))})")

    print(f"\nFLOPs (FlopCounterMode on the meta device, batch {batch}, {width}x{height} latents x {frames} frames):")
    for checkpointing in (False, True):
        flops = training_flops(batch, frames, height, width, checkpointing)
        label = "block checkpointing" if checkpointing else "no checkpointing"
        rates = ", ".join(f"{gpu} {MFU * peak / flops['step']:.2f} steps/s" for gpu, peak in PEAK_BF16_FLOPS.items())
        print(f"  {label:<20} forward {flops['forward'] / 1e12:7.1f} TFLOP, training step {flops['step'] / 1e12:7.1f} TFLOP -> at {MFU:.0%} MFU: {rates}")


if __name__ == "__main__":
    main()
