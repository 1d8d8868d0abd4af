"""Device and dtype choice shared by the model backends (paper profile). Imports torch lazily."""

from __future__ import annotations

import os


def resolve_device(name: str | None = None) -> str:
    """`POINTVID_DEVICE` (cpu, cuda, cuda:1, ...); default: cuda when available, else cpu."""
    import torch

    name = name or os.environ.get("POINTVID_DEVICE", "")
    if not name:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        from pointvid_pipeline.rejections import BackendUnavailable

        raise BackendUnavailable(f"POINTVID_DEVICE={name} but torch sees no CUDA device (torch {torch.__version__})")
    return name


def resolve_dtype(device: str, name: str | None = None):
    """`POINTVID_DTYPE` (float32, float16, bfloat16); default: bfloat16 on CUDA if supported, else float32."""
    import torch

    name = name or os.environ.get("POINTVID_DTYPE", "")
    if name:
        return getattr(torch, name)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
