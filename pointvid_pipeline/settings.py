"""Run settings, read once from environment variables so the CLI, `dagster dev` and CI agree."""

from __future__ import annotations

import codecs
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pointvid_pipeline.rejections import ConfigurationError

PROFILES = ("cpu", "paper")
DENSIFICATION_METHODS = ("displacement", "paper")  # see stages/point_maps.py
SMOOTHING_PRESETS = ("rigid-tracks", "paper")  # see stages/smoothing.py
PROFILE_SMOOTHING = {"cpu": "rigid-tracks", "paper": "paper"}
MANIFEST_FALLBACK_ENCODING = "cp1252"  # what Windows spreadsheets save "CSV" in; lines that are not UTF-8 are read in it
STAGE_FILE_POLICIES = ("keep", "accepted-only", "none")  # see pipeline.retained_keys
GENERATED_SCENES = "generated"  # POINTVID_SCENES value: the specs the Dagster asset `synthetic_scene_specs` last drew
GENERATED_SCENES_FILE = "synthetic_scene_specs.json"  # where that asset writes them, under the data directory


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
                raise ConfigurationError(f"{variable} must be positive, got {value!r}")
        if not self.max_aspect_ratio >= 1:
            raise ConfigurationError(f"POINTVID_MAX_ASPECT_RATIO must be at least 1 (longest side / shortest side), got {self.max_aspect_ratio!r}")


@dataclass(frozen=True)
class PipelineSettings:
    """Everything a run needs besides the backends.

    data_dir: the one directory all outputs go to (stage files, shards, dataset card, Dagster home).
    manifest: CSV / TSV / JSONL / JSON / Parquet / Panda-70M table of (video, caption); None = synthetic scenes.
    manifest_encoding: how a text manifest's lines that are not UTF-8 are read (unless a UTF-16/32 byte-order mark decides).
    scenes: JSON list of synthetic scene specs (assets/scenes/default_scenes.json's format) curated when
        there is no manifest; None = the embedded default scenes; GENERATED_SCENES = `generated_scenes_path`.
    shard_size: clips per partition (8 for the default scenes, 64 for real manifests unless set).
    output_uri: fsspec URL that finished shards and dataset files are also published to; None = local only.
    retry_attempts, retry_backoff_s: a transient failure is tried `retry_attempts` times in all, waiting
        retry_backoff_s, then twice that, ... between tries, before it becomes a ledger row.
    keep_stage_files: which samples' stage files stay once their shard is written (STAGE_FILE_POLICIES).
    budget: per-row limits on real videos (time to read a URL, frame size, aspect ratio).

    An invalid value raises ConfigurationError here, before any row is processed.

    No field holds a credential: these values become Dagster run config. Storage credentials come
    from the fsspec backend's own env vars or POINTVID_STORAGE_OPTIONS (see storage/publish.py).
    """

    data_dir: Path = Path("pointvid_data")
    manifest: str | None = None
    manifest_encoding: str = MANIFEST_FALLBACK_ENCODING
    scenes: str | None = None
    shard_size: int | None = None
    profile: str = "cpu"
    frame_stride: int = 1
    grid_size: int = 80
    background_fraction: float = 0.1
    kalman_rts: bool = True
    gate_redraw: bool = True  # track the objects the quality gate doubts again with other draws (stages/quality_gate.py, pipeline._redraw_disagreement)
    smoothing: str = ""  # stages/smoothing.SMOOTHING_PRESETS; "" = the profile's (cpu: rigid-tracks, paper: paper)
    densification: str = "displacement"  # stages/point_maps.DENSIFICATION_METHODS; "paper" is Algorithm 1 as printed
    batch_size: int = 8  # clips per model call where a stage batches across clips
    output_uri: str | None = None
    retry_attempts: int = 3
    retry_backoff_s: float = 0.5
    keep_stage_files: str = "accepted-only"
    budget: RowBudget = RowBudget()

    def __post_init__(self):
        if self.scenes == GENERATED_SCENES:
            object.__setattr__(self, "scenes", str(self.generated_scenes_path))
        for variable, value, allowed in (
            ("POINTVID_SMOOTHING", self.smoothing or SMOOTHING_PRESETS[0], SMOOTHING_PRESETS),
            ("POINTVID_DENSIFICATION", self.densification, DENSIFICATION_METHODS),
            ("POINTVID_PROFILE", self.profile, PROFILES),
            ("POINTVID_KEEP_STAGE_FILES", self.keep_stage_files, STAGE_FILE_POLICIES),
        ):
            if value not in allowed:
                raise ConfigurationError(f"{variable} must be one of {allowed}, got {value!r}")
        for variable, value, lowest, meaning in (
            ("POINTVID_FRAME_STRIDE", self.frame_stride, 1, "1 = every decoded frame"),
            ("POINTVID_GRID_SIZE", self.grid_size, 1, "the paper uses 80"),
            ("POINTVID_BATCH_SIZE", self.batch_size, 1, "clips per model call"),
            ("POINTVID_SHARD_SIZE", self.shard_size or 1, 1, "clips per partition; unset = the default"),
            ("POINTVID_RETRY_ATTEMPTS", self.retry_attempts, 1, "1 = no retry within the run"),
        ):
            if value != int(value) or value < lowest:
                raise ConfigurationError(f"{variable} must be a whole number of at least {lowest} ({meaning}), got {value!r}")
        for variable, value, highest in (("POINTVID_BACKGROUND_FRACTION", self.background_fraction, 1.0), ("POINTVID_RETRY_BACKOFF_S", self.retry_backoff_s, 60.0)):
            if not 0 <= value <= highest:
                raise ConfigurationError(f"{variable} must be between 0 and {highest}, got {value!r}")
        try:
            codecs.lookup(self.manifest_encoding)
        except LookupError:
            raise ConfigurationError(f"POINTVID_MANIFEST_ENCODING: unknown encoding {self.manifest_encoding!r} (e.g. cp1252, latin-1, utf-8)") from None
        for variable, uri in (("POINTVID_MANIFEST", self.manifest), ("POINTVID_OUTPUT_URI", self.output_uri)):
            if uri and "://" in uri and urlsplit(uri).password is not None:  # the message must not echo the URI
                raise ConfigurationError(f"{variable} carries a password; pass credentials through the storage backend's env vars or POINTVID_STORAGE_OPTIONS")

    @property
    def effective_shard_size(self) -> int:
        if self.shard_size:
            return self.shard_size
        return 8 if self.manifest is None else 64

    @property
    def effective_smoothing(self) -> str:
        return self.smoothing or PROFILE_SMOOTHING[self.profile]

    @property
    def generated_scenes_path(self) -> Path:
        """The file the `synthetic_scene_specs` asset writes (curated with POINTVID_SCENES=generated)."""
        return self.data_dir / GENERATED_SCENES_FILE

    @property
    def curates_generated_scenes(self) -> bool:
        return self.manifest is None and self.scenes == str(self.generated_scenes_path)

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

        def number(variable: str, default: str, kind=int):
            text = env.get(variable) or default
            try:
                return kind(text)
            except ValueError:
                raise ConfigurationError(f"{variable}={text!r} is not {'a whole number' if kind is int else 'a number'}; unset it for the default ({default})") from None

        return cls(
            data_dir=Path(env.get("POINTVID_DATA_DIR", "pointvid_data")).resolve(),
            manifest=env.get("POINTVID_MANIFEST") or None,
            manifest_encoding=env.get("POINTVID_MANIFEST_ENCODING") or MANIFEST_FALLBACK_ENCODING,
            scenes=env.get("POINTVID_SCENES") or None,
            shard_size=number("POINTVID_SHARD_SIZE", "0") or None,
            profile=env.get("POINTVID_PROFILE", "cpu"),
            frame_stride=number("POINTVID_FRAME_STRIDE", "1"),
            grid_size=number("POINTVID_GRID_SIZE", "80"),
            background_fraction=number("POINTVID_BACKGROUND_FRACTION", "0.1", float),
            kalman_rts=env.get("POINTVID_KALMAN_RTS", "1") not in ("0", "false", "no"),
            gate_redraw=env.get("POINTVID_GATE_REDRAW", "1") not in ("0", "false", "no"),
            smoothing=env.get("POINTVID_SMOOTHING", ""),
            densification=env.get("POINTVID_DENSIFICATION", "displacement"),
            batch_size=number("POINTVID_BATCH_SIZE", "8"),
            output_uri=env.get("POINTVID_OUTPUT_URI") or None,
            retry_attempts=number("POINTVID_RETRY_ATTEMPTS", "3"),
            retry_backoff_s=number("POINTVID_RETRY_BACKOFF_S", "0.5", float),
            keep_stage_files=env.get("POINTVID_KEEP_STAGE_FILES", "accepted-only"),
            budget=RowBudget(
                read_timeout_s=number("POINTVID_READ_TIMEOUT_S", str(RowBudget.read_timeout_s), float),
                max_source_pixels=number("POINTVID_MAX_SOURCE_PIXELS", str(RowBudget.max_source_pixels)),
                max_aspect_ratio=number("POINTVID_MAX_ASPECT_RATIO", str(RowBudget.max_aspect_ratio), float),
            ),
        )
