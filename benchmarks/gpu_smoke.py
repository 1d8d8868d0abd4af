"""GPU smoke run: 20 bf16 training steps of the paper-size model, then 2 clips through the `paper` profile.

On one CUDA GPU, in a few minutes. Training: the widened I2VGen-XL UNet of training_memory.py
(pretrained UNet weights if `ali-vilab/i2vgen-xl` is in the Hugging Face cache, else a random init
from the published config), bf16 autocast over fp32 weights, AdamW, block gradient checkpointing,
MSE v-prediction loss on random latents of the paper shape (448x256 -> 56x32 latents, 16 frames),
batch 1. Pipeline: 2 clips (the first 2 rows of --manifest, or 2 default synthetic scenes rendered
to MP4 and fed as real video) through every stage with the `paper` backends and whatever weights
are cached; a backend that cannot load (see docs/paper_profile.md) skips that stage and the ones
after it, with the reason. Prints GPU-seconds and peak memory (torch.cuda.max_memory_allocated)
per stage.

Without CUDA it prints one line starting "gpu_smoke: skipped: no CUDA device" and exits 0: the
script is a measurement, not a check, and must not fail CPU-only CI.
Run: python benchmarks/gpu_smoke.py [--steps 20] [--clips 2] [--manifest CSV]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

I2VGEN_XL = "ali-vilab/i2vgen-xl"
PAPER_LATENTS = {"frames": 16, "height": 32, "width": 56}  # 448x256 / 8


@dataclass
class StageResult:
    stage: str
    seconds: float | None = None  # wall time with the device synchronised at both ends
    peak_bytes: int | None = None
    note: str = ""

    def line(self) -> str:
        if self.seconds is None:
            return f"  {self.stage:<20} skipped: {self.note}"
        peak = "" if self.peak_bytes is None else f"  peak {self.peak_bytes / 2**30:6.2f} GiB"
        return f"  {self.stage:<20} {self.seconds:8.2f} s{peak}  {self.note}".rstrip()


@contextmanager
def timed(device: torch.device, result: StageResult):
    """Times the block on `device` (synchronised) and records its peak allocated memory on CUDA."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    yield result
    if cuda:
        torch.cuda.synchronize(device)
        result.peak_bytes = torch.cuda.max_memory_allocated(device)
    result.seconds = time.perf_counter() - started


def load_rgb_unet(source: str, config: dict, device: torch.device):
    """(I2VGenXLUNet on `device`, how it was made): the cached pretrained UNet, else a random init from `config`."""
    from diffusers import I2VGenXLUNet

    try:
        unet = I2VGenXLUNet.from_pretrained(source, subfolder="unet", local_files_only=True)
        return unet.to(device), f"weights from {source}"
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:160]
        with device:  # initialised where it will run: seconds on a GPU instead of a minute on the CPU
            return I2VGenXLUNet(**config), f"random init from the published config ({source} not cached: {reason})"


def train_steps(model, inputs: dict, target: torch.Tensor, steps: int, device: torch.device) -> list[float]:
    """`steps` AdamW steps under bf16 autocast on one batch; returns the losses."""
    from training_memory import v_prediction_loss

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    losses = []
    for _ in range(steps):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = v_prediction_loss(model, inputs, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def training_stages(device: torch.device, steps: int, config: dict | None = None, latents: dict = PAPER_LATENTS) -> list[StageResult]:
    """Build, then train `steps` steps; one StageResult each."""
    from training_memory import I2VGEN_XL_UNET_CONFIG, PaperVideoPointUNet, unet_inputs

    from training.model import checkpoint_unet_blocks

    config = config or I2VGEN_XL_UNET_CONFIG
    build = StageResult("build model")
    with timed(device, build):
        rgb_unet, build.note = load_rgb_unet(I2VGEN_XL, config, device)
        model = PaperVideoPointUNet(rgb_unet).to(device).train()
        checkpoint_unet_blocks(model.unet)
    train = StageResult(f"train {steps} steps")
    generator = torch.Generator().manual_seed(0)
    inputs = unet_inputs(1, latents["frames"], latents["height"], latents["width"], device=device, generator=generator, cross_attention_dim=config["cross_attention_dim"])
    target = torch.randn(inputs["noisy"].shape, generator=generator).to(device)
    with timed(device, train):
        losses = train_steps(model, inputs, target, steps, device)
    train.note = f"batch 1, {latents['width'] * 8}x{latents['height'] * 8} x {latents['frames']} frames, {train.seconds / steps:.2f} s/step, loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    return [build, train]


def write_synthetic_manifest(folder: Path, clips: int) -> Path:
    """The first `clips` default synthetic scenes rendered to MP4 (no caption tag), as a real-video manifest."""
    import av

    from pointvid_pipeline.synthetic.scenes import (
        VIDEO_FPS,
        load_default_scenes,
        render_scene,
    )

    rows = []
    for spec in load_default_scenes()[:clips]:
        clip = render_scene(spec)
        path = folder / f"{spec.name}.mp4"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=VIDEO_FPS)
            stream.width, stream.height, stream.pix_fmt = clip.frames.shape[2], clip.frames.shape[1], "yuv420p"
            for image in clip.frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            out.mux(stream.encode())
        rows.append({"video": str(path), "caption": clip.caption})
    return write_manifest(folder / "manifest.csv", rows)


def write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as target:
        writer = csv.DictWriter(target, ["video", "caption"])
        writer.writeheader()
        writer.writerows({"video": row["video"], "caption": row["caption"]} for row in rows)
    return path


def pipeline_stages(device: torch.device, data_dir: Path, manifest: Path, clips: int) -> list[StageResult]:
    """Every stage of the `paper` profile on one shard of `clips` clips; a backend that cannot load skips the rest."""
    from pointvid_pipeline.backends.registry import lazy_backends
    from pointvid_pipeline.pipeline import STAGES, partition_rows, run_stage
    from pointvid_pipeline.rejections import BackendUnavailable
    from pointvid_pipeline.settings import PipelineSettings

    settings = PipelineSettings(data_dir=data_dir, manifest=str(manifest), profile="paper", shard_size=clips)
    backends = lazy_backends(settings.profile)
    partition = next(iter(partition_rows(settings)))
    results, stopped = [], ""
    for stage in STAGES:
        result = StageResult(stage)
        results.append(result)
        if stopped:
            result.note = stopped
            continue
        try:
            with timed(device, result):
                report = run_stage(stage, partition, settings, backends)
        except BackendUnavailable as exc:
            result.seconds, result.peak_bytes = None, None
            result.note = str(exc).splitlines()[0]
            stopped = f"needs the {stage} stage's output"
            continue
        backend = report.backends.get(stage, "")
        result.note = f"{report.accepted} accepted, {report.rejected_total} rejected" + (f", {backend}" if backend else "")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--manifest", help="CSV of (video, caption); its first --clips rows are used (default: 2 rendered synthetic scenes)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu_smoke: skipped: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); run it on a GPU machine")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a missing model fails at once instead of after the hub's retries
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    device = torch.device("cuda")
    started = time.perf_counter()
    print(f"gpu_smoke on {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    try:
        results = training_stages(device, args.steps)
    except torch.cuda.OutOfMemoryError as exc:  # e.g. a 24 GB card: AdamW state alone is 22.7 GB
        results = [StageResult("train", note=f"out of GPU memory: {str(exc).splitlines()[0]}")]
    torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.manifest:
            with open(args.manifest, newline="") as source:
                manifest = write_manifest(folder / "manifest.csv", list(csv.DictReader(source))[: args.clips])
        else:
            manifest = write_synthetic_manifest(folder, args.clips)
        results += pipeline_stages(device, folder / "data", manifest, args.clips)
    print("Stage                    GPU-s    peak memory (torch.cuda.max_memory_allocated)")
    for result in results:
        print(result.line())
    print(f"total wall time {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
