"""`python -m training.fit --config training/configs/tiny.yaml [--shards ...] [--stage ...] [--pretrained ...] [--set KEY=VALUE] [--resume]`.

One loop for both stages of the paper: `augment` trains the video-point model with the diffusion
loss on concatenated RGB + point latents (§3.2); `regularize` adds L_recon and L_rigid on points
decoded from a DDIM-denoised z_0 with gradients only through the last step (§3.3, Eq. 1-3).
Several processes: `torchrun --nproc_per_node N -m training.fit ...` or `accelerate launch -m training.fit ...`
(accelerate, as in diffusers' training scripts; DDP over the trainable part, gloo on the CPU).
Exact resume: the data stream is deterministic (seed, samples consumed), all randomness of step s
comes from (seed, s, place in the global batch), and the optimizer state (and EMA) is saved with the weights.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .config import TrainConfig, load_config
from .data import make_loader
from .losses import gather_points, knn_pairs, normalised_uvd_to_xyz, reconstruction_loss, rigidity_loss, sample_foreground_points, total_loss
from .model import VideoPointModel

METRIC_FIELDS = ("step", "loss", "l_ddim", "l_recon", "l_rigid", "seconds")


def build_model(config: TrainConfig) -> VideoPointModel:
    if config.pretrained:
        return VideoPointModel.from_pretrained(config.pretrained)
    return VideoPointModel.from_config(config.model)


def step_generator(config: TrainConfig, step: int, index: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """Noise and timesteps of micro-batch `index` of step `step` depend on nothing else, so a resumed run
    repeats them. `index` = micro-batch x processes + rank, the micro-batch's place in the global batch
    (the same for 1 process accumulating N micro-batches and N processes). The global RNG is reseeded
    too: some layers draw from it in training mode (even at dropout 0)."""
    seed = (config.seed * 1_000_003 + step) * 65_536 + index
    torch.manual_seed(seed)
    return torch.Generator(device).manual_seed(seed)


def encode_batch(model: VideoPointModel, batch: dict, config: TrainConfig, generator: torch.Generator):
    """Concatenated [RGB, point] latents (B, 8, T, h, w) and I2VGen-XL's conditions, with the caption and
    the image embedding each dropped with their configured probability (classifier-free guidance).
    The VAE posterior and the dropout are drawn from the step's generator (not the global RNG) so resume is exact."""
    with torch.no_grad():
        latents = torch.cat([model.encode_video(batch["video"], generator), model.encode_points(batch["points"], generator)], dim=1)
        batch_size = latents.shape[0]
        drop_caption = torch.rand(batch_size, generator=generator, device=generator.device) < config.caption_dropout
        drop_image = torch.rand(batch_size, generator=generator, device=generator.device) < config.image_dropout
        conditions = model.conditions(batch["video"][:, 0], latents[:, :4, :1], batch["caption"], latents.shape[2], config.fps, drop_caption, drop_image)
    return latents, conditions


def diffusion_target(scheduler, latents, noise, timesteps):
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def augment_loss(model: VideoPointModel, batch: dict, config: TrainConfig, generator: torch.Generator):
    """§3.2: the usual diffusion loss, on the concatenated video-point latents."""
    latents, conditions = encode_batch(model, batch, config, generator)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    timesteps = torch.randint(0, model.scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=latents.device)
    prediction = model(model.scheduler.add_noise(latents, noise, timesteps), timesteps, conditions)
    l_ddim = torch.nn.functional.mse_loss(prediction, diffusion_target(model.scheduler, latents, noise, timesteps))
    return total_loss(l_ddim, torch.zeros(()), torch.zeros(()), (config.lambda_ddim, 0.0, 0.0))


def regularize_loss(model: VideoPointModel, batch: dict, config: TrainConfig, generator: torch.Generator):
    """§3.3, Eq. 3: diffusion loss at a DDIM timestep t, then DDIM from z_t to z_0 (earlier steps
    without gradients, the last with them), decode the point half, and add L_recon and L_rigid."""
    latents, conditions = encode_batch(model, batch, config, generator)
    scheduler = type(model.scheduler).from_config(model.scheduler.config)
    scheduler.set_timesteps(config.ddim_steps)
    start = int(torch.randint(0, len(scheduler.timesteps), (1,), generator=generator, device=generator.device))
    timesteps = torch.full((latents.shape[0],), int(scheduler.timesteps[start]), device=latents.device)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    sample = scheduler.add_noise(latents, noise, timesteps)
    prediction = model(sample, timesteps, conditions)
    l_ddim = torch.nn.functional.mse_loss(prediction, diffusion_target(scheduler, latents, noise, timesteps))
    chain = [int(t) for t in scheduler.timesteps[start:]]
    for index, t in enumerate(chain):
        last = index == len(chain) - 1
        if index > 0:
            with torch.set_grad_enabled(last):
                prediction = model(sample, torch.full_like(timesteps, t), conditions)
        output = scheduler.step(prediction, t, sample)
        sample = output.pred_original_sample if last else output.prev_sample.detach()
    predicted_points = model.decode_points(sample[:, 4:])

    indices, mask = sample_foreground_points(batch["foreground"], config.points_per_sample, generator)
    predicted = normalised_uvd_to_xyz(gather_points(predicted_points, indices), batch["intrinsics"], config.depth_max)
    truth = normalised_uvd_to_xyz(gather_points(batch["points"], indices), batch["intrinsics"], config.depth_max)
    pairs = knn_pairs(truth[:, 0], config.knn_k, mask)
    visible = gather_points(batch["visible"], indices)[..., 0] > 0  # (B, T, N)
    l_recon = reconstruction_loss(predicted, truth, config.recon_weights, mask, visible)
    l_rigid = rigidity_loss(predicted, pairs, mask, visible)
    return total_loss(l_ddim, l_recon, l_rigid, (config.lambda_ddim, config.lambda_recon, config.lambda_rigid))


STAGE_LOSSES = {"augment": augment_loss, "regularize": regularize_loss}


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(out_dir: Path, model: VideoPointModel, optimizer: torch.optim.Optimizer, state: dict, ema: dict | None = None) -> None:
    """Weights, optimizer state (and EMA weights) as safetensors plus the loop state. The new folder
    replaces the old one by renames, so a kill at any moment leaves a complete checkpoint."""
    final, tmp, old = out_dir / "checkpoint", out_dir / ".checkpoint.tmp", out_dir / ".checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.trainable_state_dict().items()}, tmp / "trainable.safetensors")
    if ema is not None:
        save_file({k: v.contiguous() for k, v in ema.items()}, tmp / "ema.safetensors")
    optimizer_state = optimizer.state_dict()
    tensors = {f"{index}.{name}": value for index, slots in optimizer_state["state"].items() for name, value in slots.items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / "optimizer.safetensors", metadata={"param_groups": json.dumps(optimizer_state["param_groups"])})
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(out_dir: Path) -> Path | None:
    """<out_dir>/checkpoint, or the previous one if a kill came between the two renames of save_checkpoint."""
    return next((path for path in (out_dir / "checkpoint", out_dir / ".checkpoint.old") if (path / "state.json").exists()), None)


def load_checkpoint(path: Path, model: VideoPointModel, optimizer: torch.optim.Optimizer | None, ema: dict | None = None) -> dict:
    model.load_trainable_state_dict(load_file(path / "trainable.safetensors"))
    if ema is not None:
        with torch.no_grad():
            for name, value in load_file(path / "ema.safetensors").items():
                ema[name].copy_(value)
    if optimizer is not None:
        from safetensors import safe_open

        with safe_open(path / "optimizer.safetensors", "pt") as f:
            groups = json.loads(f.metadata()["param_groups"])
            state: dict = {}
            for name in f.keys():
                index, slot = name.split(".", 1)
                state.setdefault(int(index), {})[slot] = f.get_tensor(name)
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    return json.loads((path / "state.json").read_text())


# ---------------------------------------------------------------- loop


def batches(config: TrainConfig, consumed: int, rank: int = 0, processes: int = 1):
    """This process's micro-batches of the endless deterministic stream, resumed after `consumed` samples
    of the whole stream; yields (batch, samples consumed by all processes together)."""
    loader = make_loader(config.shards, config.frames, config.height, config.width, config.batch_size, config.depth_max,
                         config.synthetic_mix, seed=config.seed, num_workers=config.num_workers, skip=consumed, rank=rank, processes=processes,
                         cameras=config.cameras, balance_cameras=config.balance_cameras)
    for batch in loader:
        consumed += len(batch["key"]) * processes
        yield batch, consumed


class Replica:
    """The model as the loss functions see it: calls go through the accelerate-prepared wrapper (DDP:
    gradients averaged over processes; autocast), every attribute (encode_video, scheduler, ...) is the model's."""

    def __init__(self, prepared: torch.nn.Module, model: VideoPointModel):
        self.prepared, self.model = prepared, model

    def __call__(self, *args, **kwargs):
        return self.prepared(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.model, name)


def write_loss_curve(metrics_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(metrics_path.open()))
    figure, axis = plt.subplots(figsize=(6, 3.5))
    steps = [int(r["step"]) for r in rows]
    for colour, name in enumerate(("loss", "l_ddim", "l_recon", "l_rigid")):
        values = [float(r[name]) for r in rows]
        if not any(values):
            continue
        average, smoothed = values[0], []
        for value in values:  # diffusion losses jump with the random timestep: show a running mean too
            average = 0.9 * average + 0.1 * value
            smoothed.append(average)
        axis.plot(steps, values, color=f"C{colour}", alpha=0.25, lw=0.8)
        axis.plot(steps, smoothed, color=f"C{colour}", label=f"{name} (running mean)")
    axis.set_xlabel("step"), axis.set_yscale("log"), axis.legend(), axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)


def fit(config: TrainConfig, resume: bool = False) -> Path:
    """Train on 1..N processes (`torchrun` / `accelerate launch` start N; each builds the same model from the
    seed). Global batch = batch_size x processes x gradient_accumulation_steps; only the main process writes."""
    from accelerate import Accelerator
    from torch.nn.parallel import DistributedDataParallel

    accelerator = Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps,
                              cpu=not torch.cuda.is_available())
    device, rank, processes, main = accelerator.device, accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    accumulation = config.gradient_accumulation_steps
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = build_model(config)
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    # Frozen parts (no trainable parameter) in the weight dtype, on the device, and out of DDP's broadcasts.
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision, torch.float32)
    frozen = [name for name, child in model.named_children() if not any(p.requires_grad for p in child.parameters())]
    for name in frozen:
        getattr(model, name).to(device)
        if weight_dtype != torch.float32:
            getattr(model, name).to(weight_dtype)
    ignored = [key for key, _ in (*model.named_parameters(), *model.named_buffers()) if key.split(".")[0] in frozen]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)  # else each forward broadcasts their buffers
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    replica = Replica(prepared, model)
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    ema = {name: p.detach().clone() for name, p in named.items()} if config.ema_decay is not None else None

    step, consumed, rows = 0, 0, []
    metrics_path = out_dir / "metrics.csv"
    checkpoint = find_checkpoint(out_dir) if resume else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, ema)
        step, consumed = state["step"], state["consumed"]
        rows = [r for r in csv.DictReader(metrics_path.open()) if int(r["step"]) <= step] if metrics_path.exists() else []
    if main:
        with metrics_path.open("w", newline="") as f:  # drop rows logged after the checkpoint
            writer = csv.DictWriter(f, METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    accelerator.print(f"{config.name}:{config.stage} device={device} precision={config.mixed_precision} processes={processes} "
                      f"global_batch={config.batch_size * processes * accumulation} (batch_size {config.batch_size} x {processes} processes "
                      f"x {accumulation} accumulation) step={step} consumed={consumed}", flush=True)
    model.train()
    stream = batches(config, consumed, rank, processes)
    progress = tqdm(total=config.steps, initial=step, desc=f"{config.name}:{config.stage}", unit="step", disable=not main)
    while step < config.steps:
        started = time.perf_counter()
        logged = torch.zeros(4, device=device)  # loss, l_ddim, l_recon, l_rigid: mean over micro-batches, then processes
        for micro in range(accumulation):
            batch, consumed = next(stream)
            batch = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
            generator = step_generator(config, step, micro * processes + rank, device)
            with accelerator.no_sync(prepared) if micro < accumulation - 1 else nullcontext(), accelerator.autocast():
                loss, terms = STAGE_LOSSES[config.stage](replica, batch, config, generator)
                accelerator.backward(loss)  # divided by gradient_accumulation_steps; DDP averages over processes
            logged += torch.tensor([float(loss.detach()), terms["ddim"], terms["recon"], terms["rigid"]], device=device) / accumulation
        accelerator.clip_grad_norm_(model.trainable_parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            with torch.no_grad():
                for name, p in named.items():
                    ema[name].lerp_(p.detach(), 1 - config.ema_decay)
        step += 1
        logged = accelerator.reduce(logged, "mean").tolist()
        row = {"step": step, **dict(zip(("loss", "l_ddim", "l_recon", "l_rigid"), logged)), "seconds": time.perf_counter() - started}
        if main and step % config.log_every == 0:
            with metrics_path.open("a", newline="") as f:
                csv.DictWriter(f, METRIC_FIELDS).writerow(row)
        progress.set_postfix(loss=f"{row['loss']:.4f}")
        progress.update(1)
        if main and (step % config.checkpoint_every == 0 or step == config.steps):
            save_checkpoint(out_dir, model, optimizer, {"step": step, "consumed": consumed, "processes": processes, "config": config.to_dict()}, ema)
    progress.close()
    if main:
        write_loss_curve(metrics_path, out_dir / "loss_curve.png")
    accelerator.wait_for_everyone()
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.fit", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML file, e.g. training/configs/tiny.yaml")
    parser.add_argument("--shards", help="override the config's shards (path, URL or brace pattern)")
    parser.add_argument("--stage", choices=("augment", "regularize"), help="override the config's stage")
    parser.add_argument("--steps", type=int, help="override the number of steps")
    parser.add_argument("--out-dir", help="override where checkpoints, metrics.csv and loss_curve.png go")
    parser.add_argument("--pretrained", help="I2VGen-XL pipeline to widen: hub id (from the Hugging Face cache) or local folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key with a YAML value, e.g. --set mixed_precision=bf16")
    parser.add_argument("--resume", action="store_true", help="continue exactly from <out_dir>/checkpoint")
    args = parser.parse_args(argv)
    config = load_config(args.config, shards=args.shards, stage=args.stage, steps=args.steps, out_dir=args.out_dir, pretrained=args.pretrained)
    config = dataclasses.replace(config, **{key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)})
    out_dir = fit(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {out_dir / 'checkpoint'}\nmetrics:    {out_dir / 'metrics.csv'}\nloss curve: {out_dir / 'loss_curve.png'}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
