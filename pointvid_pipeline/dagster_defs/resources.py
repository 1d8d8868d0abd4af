"""Resources: run settings and one lazily loaded backend per stage protocol, configured by env vars.

Secrets (POINTVID_STORAGE_OPTIONS, POINTVID_LLM_API_KEY) are resource fields set to Dagster
`EnvVar`s, never to values: the run config, the job snapshot and the UI then hold only the
variable's name, and the value is read in the run's own process. `repr=False` keeps the resolved
value out of the resource's repr.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import ConfigurableResource, EnvVar
from pydantic import Field, PrivateAttr

from pointvid_pipeline.backends.llm import API_KEY_ENV
from pointvid_pipeline.backends.registry import BACKENDS, StageBackends, backend_name, create_backend
from pointvid_pipeline.settings import MANIFEST_FALLBACK_ENCODING, PipelineSettings, RowBudget
from pointvid_pipeline.storage.publish import STORAGE_OPTIONS_ENV, parse_storage_options


def optional_env_var(name: str) -> str:
    """EnvVar(name) when the variable is set where the definitions load, else "" (none).

    Dagster fails a run whose EnvVar is unset, and these secrets are optional (a local endpoint
    needs no key, s3fs finds its own credentials).
    """
    return EnvVar(name) if name in os.environ else ""


class PipelineSettingsResource(ConfigurableResource):
    """Data directory, input manifest, sharding and sampling knobs (defaults from POINTVID_* env vars)."""

    data_dir: str
    manifest: str = ""
    manifest_encoding: str = MANIFEST_FALLBACK_ENCODING
    scenes: str = ""
    shard_size: int = 0
    profile: str = "cpu"
    frame_stride: int = 1
    grid_size: int = 80
    background_fraction: float = 0.1
    kalman_rts: bool = True
    gate_redraw: bool = True
    smoothing: str = ""
    densification: str = "displacement"
    batch_size: int = 8
    output_uri: str = ""
    retry_attempts: int = 3
    retry_backoff_s: float = 0.5
    keep_stage_files: str = "accepted-only"
    read_timeout_s: float = RowBudget.read_timeout_s
    max_source_pixels: int = RowBudget.max_source_pixels
    max_aspect_ratio: float = RowBudget.max_aspect_ratio
    storage_options_json: str = Field(default="", repr=False, description=f"JSON object of fsspec options for output_uri: only ever EnvVar({STORAGE_OPTIONS_ENV!r})")

    @classmethod
    def from_settings(cls, settings: PipelineSettings) -> "PipelineSettingsResource":
        return cls(
            data_dir=str(settings.data_dir), manifest=settings.manifest or "", manifest_encoding=settings.manifest_encoding, scenes=settings.scenes or "", shard_size=settings.shard_size or 0,
            profile=settings.profile, frame_stride=settings.frame_stride, grid_size=settings.grid_size,
            background_fraction=settings.background_fraction, kalman_rts=settings.kalman_rts, gate_redraw=settings.gate_redraw, smoothing=settings.smoothing, densification=settings.densification,
            batch_size=settings.batch_size, output_uri=settings.output_uri or "", storage_options_json=optional_env_var(STORAGE_OPTIONS_ENV),
            retry_attempts=settings.retry_attempts, retry_backoff_s=settings.retry_backoff_s, keep_stage_files=settings.keep_stage_files,
            read_timeout_s=settings.budget.read_timeout_s, max_source_pixels=settings.budget.max_source_pixels, max_aspect_ratio=settings.budget.max_aspect_ratio,
        )

    def settings(self) -> PipelineSettings:
        return PipelineSettings(
            data_dir=Path(self.data_dir), manifest=self.manifest or None, manifest_encoding=self.manifest_encoding, scenes=self.scenes or None, shard_size=self.shard_size or None,
            profile=self.profile, frame_stride=self.frame_stride, grid_size=self.grid_size,
            background_fraction=self.background_fraction, kalman_rts=self.kalman_rts, gate_redraw=self.gate_redraw, smoothing=self.smoothing, densification=self.densification,
            batch_size=self.batch_size, output_uri=self.output_uri or None,
            retry_attempts=self.retry_attempts, retry_backoff_s=self.retry_backoff_s, keep_stage_files=self.keep_stage_files,
            budget=RowBudget(read_timeout_s=self.read_timeout_s, max_source_pixels=self.max_source_pixels, max_aspect_ratio=self.max_aspect_ratio),
        )

    def storage_options(self) -> dict:
        """fsspec options for `output_uri`, kept apart from `settings()` so they never become settings."""
        return parse_storage_options(self.storage_options_json)


class BackendResource(ConfigurableResource):
    """One stage backend (e.g. kind `point_tracker`, backend `optical-flow`), loaded once per process on first use."""

    kind: str
    backend: str
    api_key: str = Field(default="", repr=False, description=f"Only for the `llm-http` object extractor: only ever EnvVar({API_KEY_ENV!r})")
    _instance: object = PrivateAttr(default=None)

    def get(self):
        if self._instance is None:
            secrets = {"api_key": self.api_key} if self.api_key else {}
            self._instance = create_backend(self.kind, self.backend, **secrets)
        return self._instance


BACKEND_KINDS = tuple(BACKENDS)


def build_resources(settings: PipelineSettings) -> dict[str, ConfigurableResource]:
    resources: dict[str, ConfigurableResource] = {"pipeline_settings": PipelineSettingsResource.from_settings(settings)}
    for kind in BACKEND_KINDS:
        backend = backend_name(kind, settings.profile)
        api_key = optional_env_var(API_KEY_ENV) if (kind, backend) == ("object_extractor", "llm-http") else ""
        resources[kind] = BackendResource(kind=kind, backend=backend, api_key=api_key)
    return resources


def stage_backends(resources) -> StageBackends:
    return StageBackends(**{kind: getattr(resources, kind).get for kind in BACKEND_KINDS})
