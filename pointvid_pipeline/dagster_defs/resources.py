"""Resources: run settings and one lazily loaded backend per stage protocol, configured by env vars."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import PrivateAttr

from ..backends import BACKENDS, backend_name, create_backend
from ..pipeline import StageBackends
from ..settings import PipelineSettings


class PipelineSettingsResource(ConfigurableResource):
    """Data directory, input manifest, sharding and sampling knobs (defaults from POINTVID_* env vars)."""

    data_dir: str
    manifest: str = ""
    shard_size: int = 0
    profile: str = "cpu"
    frame_stride: int = 1
    grid_size: int = 80
    background_fraction: float = 0.1
    kalman_rts: bool = True
    batch_size: int = 8

    @classmethod
    def from_settings(cls, settings: PipelineSettings) -> "PipelineSettingsResource":
        return cls(
            data_dir=str(settings.data_dir), manifest=settings.manifest or "", shard_size=settings.shard_size or 0,
            profile=settings.profile, frame_stride=settings.frame_stride, grid_size=settings.grid_size,
            background_fraction=settings.background_fraction, kalman_rts=settings.kalman_rts, batch_size=settings.batch_size,
        )

    def settings(self) -> PipelineSettings:
        return PipelineSettings(
            data_dir=Path(self.data_dir), manifest=self.manifest or None, shard_size=self.shard_size or None,
            profile=self.profile, frame_stride=self.frame_stride, grid_size=self.grid_size,
            background_fraction=self.background_fraction, kalman_rts=self.kalman_rts, batch_size=self.batch_size,
        )


class BackendResource(ConfigurableResource):
    """One stage backend (e.g. kind `point_tracker`, backend `optical-flow`), loaded once per process on first use."""

    kind: str
    backend: str
    _instance: object = PrivateAttr(default=None)

    def get(self):
        if self._instance is None:
            self._instance = create_backend(self.kind, self.backend)
        return self._instance


BACKEND_KINDS = tuple(BACKENDS)


def build_resources(settings: PipelineSettings) -> dict[str, ConfigurableResource]:
    resources: dict[str, ConfigurableResource] = {"pipeline_settings": PipelineSettingsResource.from_settings(settings)}
    for kind in BACKEND_KINDS:
        resources[kind] = BackendResource(kind=kind, backend=backend_name(kind, settings.profile))
    return resources


def stage_backends(resources) -> StageBackends:
    return StageBackends(**{kind: getattr(resources, kind).get for kind in BACKEND_KINDS})
