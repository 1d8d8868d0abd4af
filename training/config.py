"""Training configuration: one YAML file per setup (`training/configs/*.yaml`), no hidden defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml


@dataclass
class TrainConfig:
    """Every knob of a run. `model` holds `VideoPointModel.from_config` kwargs (tiny, random) unless
    `pretrained` names an I2VGen-XL pipeline (hub id or local `save_pretrained` folder) to widen."""

    name: str
    shards: str  # path, URL or brace pattern of PointVid shards
    out_dir: str
    stage: str = "augment"  # "augment": diffusion loss only; "regularize": + L_recon + L_rigid (Eq. 3)
    seed: int = 0
    steps: int = 100
    batch_size: int = 2  # per process and micro-batch: global batch = batch_size x processes x gradient_accumulation_steps
    frames: int = 16
    height: int = 256
    width: int = 448
    depth_max: float = 10.0  # metres mapped to +1 in the point normalisation
    synthetic_mix: float | None = None  # probability of drawing a synthetic sample (None: as the shards come)
    cameras: list[str] | None = None  # keep only synthetic samples of these camera movements (None: all)
    balance_cameras: bool = False  # draw synthetic samples uniformly over camera movements (needs synthetic_mix)
    num_workers: int = 0
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 1
    checkpoint_every: int = 50
    # accelerate (`torchrun`/`accelerate launch -m training.fit` for several processes)
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (autocast; trainable weights stay fp32, frozen ones in bf16/fp16)
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    gradient_checkpointing: bool = False  # VideoPointModel.enable_gradient_checkpointing(): less memory, ~1/3 more compute
    ema_decay: float | None = None  # EMA of the trainable weights, saved as checkpoint/ema.safetensors; None: off
    model: dict = field(default_factory=dict)
    pretrained: str | None = None  # e.g. "ali-vilab/i2vgen-xl" (Hugging Face cache) or a local pipeline folder
    fps: float = 16.0  # I2VGen-XL's frame-rate micro-condition, the same in training and sampling
    caption_dropout: float = 0.1  # probability of training on "" instead of the caption (classifier-free guidance)
    image_dropout: float = 0.1  # probability of a zero CLIP image embedding (classifier-free guidance)
    # regularize stage (paper §3.3)
    ddim_steps: int = 4  # DDIM steps from z_t to z_0; gradients only through the last one
    lambda_ddim: float = 1.0
    lambda_recon: float = 1.0
    lambda_rigid: float = 1.0
    recon_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # c0, c1, c2 of Eq. 1
    knn_k: int = 8
    points_per_sample: int = 1024  # foreground points the regularizers run on (T x N x 3)

    def __post_init__(self):
        if self.stage not in ("augment", "regularize"):
            raise ValueError(f"stage must be 'augment' or 'regularize', got {self.stage!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or null, got {self.ema_decay}")
        self.recon_weights = tuple(self.recon_weights)

    def to_dict(self) -> dict:
        return asdict(self)


def load_config(path: str | Path, **overrides) -> TrainConfig:
    """Read a YAML config; `overrides` (from the command line) win over the file."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config keys {unknown}")
    return TrainConfig(**data)
