"""ZoeDepth metric depth (paper profile, stage `depth`) through transformers' ZoeDepthForDepthEstimation.

Pre- and post-processing are written here by hand because transformers' `ZoeDepthImageProcessor`
and `post_process_depth_estimation` need torchvision, which does not import beside this torch.
They reproduce the processor step for step, batched on the model's device:

1. rescale uint8 to [0, 1] (`rescale_factor`);
2. REFLECT-pad each side by `int(sqrt(H / 2) * 3)` rows and `int(sqrt(W / 2) * 3)` columns
   (ZoeDepth pads to suppress boundary artefacts);
3. bilinear resize (align_corners=True) of the padded image to the processor's `size`, keeping the
   aspect ratio and rounding each side to a multiple of `ensure_multiple_of` (448x256 becomes
   512x320 with the default 384x512 / 32);
4. normalise with the processor's `image_mean` / `image_std`.

The predicted depth is resized bicubically (align_corners=False, no antialias, as transformers'
`post_process_depth_estimation` does) to the padded source size, the padding is cropped off exactly,
and values are clamped to the model's smallest configured `min_depth` (bicubic overshoot can dip
below it; depth must stay > 0). Against the align_corners=True input resize this leaves output pixel
(u, v) within ~0.07 px of source pixel (u, v) at 448x256. The settings come from the model folder's
`preprocessor_config.json` when it has one, else ZoeDepth's defaults (384x512, multiple of 32,
mean = std = 0.5, reflect padding on).

The model always runs in float32, whatever `POINTVID_DTYPE` says: bfloat16's 8 significant bits
would snap metric depth to 3 cm steps at 4-8 m and 25 cm at 32-64 m before the upsampling, and
float16 can overflow inside the network.

All frames of a clip go through the model in ONE forward pass: the NYU/KITTI metric head is voted
once per batch, so a clip's frames share one head (and one metric scale). Clips are never batched
together, so one clip's content never chooses another clip's head.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pointvid_pipeline.clip import Clip
from pointvid_pipeline.rejections import BackendUnavailable

MODEL_ENV = "POINTVID_ZOEDEPTH_MODEL"
DEFAULT_MODEL = "Intel/zoedepth-nyu-kitti"
PADDING_FACTOR = 3  # ZoeDepth pads int(sqrt(side / 2) * 3) pixels on each side
RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}  # PIL resample codes the ZoeDepth processor accepts


@dataclass(frozen=True)
class ZoePreprocessing:
    """The ZoeDepth image processor settings that shape the model input (ZoeDepth defaults)."""

    height: int = 384
    width: int = 512
    keep_aspect_ratio: bool = True
    ensure_multiple_of: int = 32
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    do_pad: bool = True
    resample: str = "bilinear"

    @classmethod
    def from_file(cls, path: Path | None) -> ZoePreprocessing:
        """Read a saved `preprocessor_config.json`; keys it lacks keep the defaults."""
        if path is None:
            return cls()
        saved = json.loads(Path(path).read_text())
        defaults = cls()
        size = saved.get("size") or {}
        resample = saved.get("resample", 2)
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"{path}: resample={resample} is not one the ZoeDepth processor supports ({sorted(RESAMPLE_MODES)})")
        return cls(
            height=int(size.get("height", defaults.height)),
            width=int(size.get("width", defaults.width)),
            keep_aspect_ratio=bool(saved.get("keep_aspect_ratio", defaults.keep_aspect_ratio)),
            ensure_multiple_of=int(saved.get("ensure_multiple_of", defaults.ensure_multiple_of)),
            rescale_factor=float(saved.get("rescale_factor", defaults.rescale_factor)),
            image_mean=tuple(float(m) for m in saved.get("image_mean", defaults.image_mean)),
            image_std=tuple(float(s) for s in saved.get("image_std", defaults.image_std)),
            do_pad=bool(saved.get("do_pad", defaults.do_pad)),
            resample=RESAMPLE_MODES[resample],
        )


def zoe_padding(height: int, width: int) -> tuple[int, int]:
    """(rows, columns) of reflect padding ZoeDepth adds on each side of an image of this size."""
    return int(math.sqrt(height / 2) * PADDING_FACTOR), int(math.sqrt(width / 2) * PADDING_FACTOR)


def model_input_size(height: int, width: int, settings: ZoePreprocessing) -> tuple[int, int]:
    """Size the processor resizes a (padded) height x width image to, as in its `resize`.

    Keeps the aspect ratio by applying the scale closer to 1 to both sides, then rounds each side to
    a multiple of `ensure_multiple_of` (numpy's round-half-to-even, as the processor does).
    """
    scale_height, scale_width = settings.height / height, settings.width / width
    if settings.keep_aspect_ratio:
        if abs(1 - scale_width) < abs(1 - scale_height):
            scale_height = scale_width
        else:
            scale_width = scale_height
    multiple = settings.ensure_multiple_of

    def constrain(value: float) -> int:
        rounded = int(np.round(value / multiple) * multiple)
        return rounded if rounded > 0 else math.ceil(value / multiple) * multiple

    return constrain(scale_height * height), constrain(scale_width * width)


def pad_reflect(images, padding: tuple[int, int]):
    """(B, C, H, W) tensor -> (B, C, H + 2 * rows, W + 2 * columns), mirrored without repeating the edge."""
    import torch.nn.functional as F

    rows, columns = padding
    return F.pad(images, (columns, columns, rows, rows), mode="reflect")


def remove_padding(depth, source_size: tuple[int, int], padding: tuple[int, int]):
    """(B, h, w) depth predicted for a padded, resized image -> (B, H, W) on the source pixel grid.

    Bicubic resize to the padded source size (H + 2 * rows, W + 2 * columns), then crop the padding,
    as `post_process_depth_estimation` does: source pixel (u, v) is padded pixel (u + columns, v + rows).
    """
    import torch.nn.functional as F

    rows, columns = padding
    height, width = source_size
    padded = F.interpolate(depth[:, None], size=(height + 2 * rows, width + 2 * columns), mode="bicubic", align_corners=False)
    return padded[:, 0, rows:rows + height, columns:columns + width]


def pad_and_resize(images, settings: ZoePreprocessing):
    """(B, C, H, W) float tensor -> reflect-padded and resized to the model input; also the padding used."""
    import torch.nn.functional as F

    padding = zoe_padding(images.shape[2], images.shape[3]) if settings.do_pad else (0, 0)
    images = pad_reflect(images, padding)
    size = model_input_size(images.shape[2], images.shape[3], settings)
    return F.interpolate(images, size=size, mode=settings.resample, align_corners=True), padding


def preprocess(frames: np.ndarray, settings: ZoePreprocessing, device: str, dtype):
    """(T, H, W, 3) uint8 RGB -> (T, 3, h, w) model input, plus the padding applied to (H, W)."""
    import torch

    images = torch.from_numpy(np.array(frames)).to(device).permute(0, 3, 1, 2).float() * settings.rescale_factor
    images, padding = pad_and_resize(images, settings)
    mean = torch.tensor(settings.image_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(settings.image_std, device=device).view(1, 3, 1, 1)
    return ((images - mean) / std).to(dtype), padding


def is_local_reference(model: str) -> bool:
    """True when the setting names a folder rather than a hub id (`owner/name`)."""
    return os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1 or Path(model).expanduser().exists()


class ZoeDepthEstimator:
    """Metric z-depth in metres for every frame of a clip, one forward pass per clip."""

    name = "zoedepth"

    def __init__(self, model: str = DEFAULT_MODEL):
        self.model_reference = model
        self.version = ""
        self.model = None
        self.settings = ZoePreprocessing()
        self.device = "cpu"
        self.dtype = None
        self.min_depth = 1e-3

    @classmethod
    def from_env(cls) -> ZoeDepthEstimator:
        return cls(os.environ.get(MODEL_ENV) or DEFAULT_MODEL)

    def setup(self) -> None:
        import torch
        from transformers import ZoeDepthForDepthEstimation

        from pointvid_pipeline.backends.torch_runtime import resolve_device

        source = self._model_source()
        self.device = resolve_device()
        self.dtype = torch.float32  # not resolve_dtype: see the module docstring
        try:
            model = ZoeDepthForDepthEstimation.from_pretrained(source, dtype=self.dtype)
        except OSError as exc:
            raise BackendUnavailable(self._missing_weights_message(f"could not be loaded ({exc})")) from exc
        self.model = model.to(self.device).eval()
        self.settings = ZoePreprocessing.from_file(self._model_file(source, "preprocessor_config.json"))
        self.min_depth = min(float(bins["min_depth"]) for bins in model.config.bin_configurations)
        self.version = self._version(source)

    def estimate(self, clip: Clip) -> np.ndarray:
        import torch

        if self.model is None:
            raise RuntimeError("ZoeDepthEstimator.setup() must run before estimate()")
        frames = clip.frames
        with torch.inference_mode():
            pixel_values, padding = preprocess(frames, self.settings, self.device, self.dtype)
            predicted = self.model(pixel_values=pixel_values).predicted_depth.float()
            depth = remove_padding(predicted, frames.shape[1:3], padding).clamp_(min=self.min_depth)
        return depth.cpu().numpy().astype(np.float32, copy=False)

    def _model_source(self) -> str:
        """The folder or hub id to load; a folder that does not exist is reported, never guessed around."""
        if not is_local_reference(self.model_reference):
            return self.model_reference
        folder = Path(self.model_reference).expanduser()
        if not (folder / "config.json").is_file():
            problem = "does not exist" if not folder.exists() else "has no config.json"
            raise BackendUnavailable(self._missing_weights_message(f"folder {folder} {problem}"))
        return str(folder)

    def _model_file(self, source: str, filename: str) -> Path | None:
        """A file of the loaded model (local folder or hub cache), or None when the model has none."""
        if os.path.isdir(source):
            path = Path(source) / filename
            return path if path.is_file() else None
        from transformers.utils import cached_file

        resolved = cached_file(source, filename, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)
        return Path(resolved) if resolved else None

    def _version(self, source: str) -> str:
        """Model id/path, a short hash of its config.json and its weight files, and the input size."""
        config_path = self._model_file(source, "config.json")
        parts = [f"zoedepth {self.model_reference}"]
        if config_path is not None:
            parts.append("config-" + hashlib.sha256(config_path.read_bytes()).hexdigest()[:12])
            weights = sorted(p.name for p in config_path.parent.iterdir() if p.suffix in (".safetensors", ".bin"))
            if weights:
                parts.append("+".join(weights))
        parts.append(f"input-pad-then-{self.settings.height}x{self.settings.width}/{self.settings.ensure_multiple_of}")
        return " ".join(parts)

    def _missing_weights_message(self, problem: str) -> str:
        return (
            f"ZoeDepth model {self.model_reference!r}: {problem}. Set {MODEL_ENV} to a hub id available in the "
            f"Hugging Face cache or to a local folder with config.json, the weights and preprocessor_config.json; "
            f"to obtain them run `huggingface-cli download {DEFAULT_MODEL} --local-dir <folder>` on a machine "
            f"with internet, copy the folder here and point {MODEL_ENV} at it."
        )
