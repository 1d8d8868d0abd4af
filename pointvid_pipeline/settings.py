"""Run settings, read once from environment variables so the CLI, `dagster dev` and CI agree."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

PROFILES = ("cpu", "paper")
DENSIFICATION_METHODS = ("displacement", "paper")  # see stages/point_maps.py
SMOOTHING_PRESETS = ("rigid-tracks", "paper")  # see stages/smoothing.py
PROFILE_SMOOTHING = {"cpu": "rigid-tracks", "paper": "paper"}


@dataclass(frozen=True)
class RowBudget:
    """What one real video may cost (enforced by stages/clips.py): a row over budget is ledgered, never run to the end.

    read_timeout_s: wall clock for opening and reading a video given as a URL (a silent server must not stall the shard).
    max_source_pixels: largest decoded frame, width x height (default DCI 8K); the decoder holds a few such frames.
    max_aspect_ratio: longest over shortest side; anything narrower cannot be fitted to 448 x 256 in bounded memory.
    """

    read_timeout_s: float = 120.0
    max_source_pixels: int = 8192 * 4320
    max_aspect_ratio: float = 4.0

    def __post_init__(self):
        for variable, value in (("POINTVID_READ_TIMEOUT_S", self.read_timeout_s), ("POINTVID_MAX_SOURCE_PIXELS", self.max_source_pixels)):
            if not value > 0:
                raise ValueError(f"{variable} must be positive, got {value!r}")
        if not self.max_aspect_ratio >= 1:
            raise ValueError(f"POINTVID_MAX_ASPECT_RATIO must be at least 1 (longest side / shortest side), got {self.max_aspect_ratio!r}")


@dataclass(frozen=True)
class PipelineSettings:
    """Everything a run needs besides the backends.

    data_dir: the one directory all outputs go to (stage files, shards, dataset card, Dagster home).
    manifest: CSV / JSONL / Parquet / Panda-70M table of (video, caption); None = synthetic scenes.
    scenes: JSON list of synthetic scene specs (assets/scenes/default_scenes.json's format) curated when
        there is no manifest; None = the embedded default scenes.
    shard_size: clips per partition (8 for the default scenes, 64 for real manifests unless set).
    output_uri: fsspec URL that finished shards and dataset files are also published to; None = local only.
    budget: per-row limits on real videos (time to read a URL, frame size, aspect ratio).

    No field holds a credential: these values become Dagster run config. Storage credentials come
    from the fsspec backend's own env vars or POINTVID_STORAGE_OPTIONS (see storage/publish.py).
    """

    data_dir: Path = Path("pointvid_data")
    manifest: str | None = None
    scenes: str | None = None
    shard_size: int | None = None
    profile: str = "cpu"
    frame_stride: int = 1
    grid_size: int = 80
    background_fraction: float = 0.1
    kalman_rts: bool = True
    smoothing: str = ""  # stages/smoothing.SMOOTHING_PRESETS; "" = the profile's (cpu: rigid-tracks, paper: paper)
    densification: str = "displacement"  # stages/point_maps.DENSIFICATION_METHODS; "paper" is Algorithm 1 as printed
    batch_size: int = 8  # clips per model call where a stage batches across clips
    output_uri: str | None = None
    budget: RowBudget = RowBudget()

    def __post_init__(self):
        if self.smoothing and self.smoothing not in SMOOTHING_PRESETS:
            raise ValueError(f"POINTVID_SMOOTHING must be one of {SMOOTHING_PRESETS}, got {self.smoothing!r}")
        if self.densification not in DENSIFICATION_METHODS:
            raise ValueError(f"POINTVID_DENSIFICATION must be one of {DENSIFICATION_METHODS}, got {self.densification!r}")
        if self.profile not in PROFILES:
            raise ValueError(f"POINTVID_PROFILE must be one of {PROFILES}, got {self.profile!r}")
        for variable, uri in (("POINTVID_MANIFEST", self.manifest), ("POINTVID_OUTPUT_URI", self.output_uri)):
            if uri and "://" in uri and urlsplit(uri).password is not None:  # the message must not echo the URI
                raise ValueError(f"{variable} carries a password; pass credentials through the storage backend's env vars or POINTVID_STORAGE_OPTIONS")

    @property
    def effective_shard_size(self) -> int:
        if self.shard_size:
            return self.shard_size
        return 8 if self.manifest is None else 64

    @property
    def effective_smoothing(self) -> str:
        return self.smoothing or PROFILE_SMOOTHING[self.profile]

    @property
    def stages_dir(self) -> Path:
        return self.data_dir / "stages"

    @property
    def shards_dir(self) -> Path:
        return self.data_dir / "shards"

    @property
    def dataset_dir(self) -> Path:
        return self.data_dir / "dataset"

    @classmethod
    def from_env(cls, environ=None) -> "PipelineSettings":
        env = os.environ if environ is None else environ
        shard_size = env.get("POINTVID_SHARD_SIZE")
        return cls(
            data_dir=Path(env.get("POINTVID_DATA_DIR", "pointvid_data")).resolve(),
            manifest=env.get("POINTVID_MANIFEST") or None,
            scenes=env.get("POINTVID_SCENES") or None,
            shard_size=int(shard_size) if shard_size else None,
            profile=env.get("POINTVID_PROFILE", "cpu"),
            frame_stride=int(env.get("POINTVID_FRAME_STRIDE", "1")),
            grid_size=int(env.get("POINTVID_GRID_SIZE", "80")),
            background_fraction=float(env.get("POINTVID_BACKGROUND_FRACTION", "0.1")),
            kalman_rts=env.get("POINTVID_KALMAN_RTS", "1") not in ("0", "false", "no"),
            smoothing=env.get("POINTVID_SMOOTHING", ""),
            densification=env.get("POINTVID_DENSIFICATION", "displacement"),
            batch_size=int(env.get("POINTVID_BATCH_SIZE", "8")),
            output_uri=env.get("POINTVID_OUTPUT_URI") or None,
            budget=RowBudget(
                read_timeout_s=float(env.get("POINTVID_READ_TIMEOUT_S", RowBudget.read_timeout_s)),
                max_source_pixels=int(env.get("POINTVID_MAX_SOURCE_PIXELS", RowBudget.max_source_pixels)),
                max_aspect_ratio=float(env.get("POINTVID_MAX_ASPECT_RATIO", RowBudget.max_aspect_ratio)),
            ),
        )
