"""The `Definitions` object loaded by `dagster dev -w workspace.yaml` and `-m pointvid_pipeline.definitions`."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job

from pointvid_pipeline.dagster_defs.assets import dataset, stage_assets
from pointvid_pipeline.dagster_defs.kubernetes import curate_shard_execution, executor_kind
from pointvid_pipeline.dagster_defs.resources import build_resources
from pointvid_pipeline.dagster_defs.scene_specs import synthetic_scene_specs
from pointvid_pipeline.dagster_defs.sensors import clip_shard_partitions
from pointvid_pipeline.settings import PipelineSettings

dataset_job = define_asset_job("build_dataset", selection=AssetSelection.assets(dataset), description="Roll all shards up into the dataset manifests and card.")


def build_definitions(settings: PipelineSettings | None = None) -> Definitions:
    settings = settings or PipelineSettings.from_env()
    executor, tags = curate_shard_execution(settings, executor_kind())
    curate_shard_job = define_asset_job(
        "curate_shard",
        selection=AssetSelection.assets(*stage_assets),
        description="All stages for one shard of clips: in one process so loaded models are reused across stages, "
        "or one Kubernetes pod per stage with POINTVID_EXECUTOR=k8s.",
        executor_def=executor,
        tags=tags or None,
    )
    return Definitions(
        assets=[synthetic_scene_specs, *stage_assets, dataset],
        jobs=[curate_shard_job, dataset_job],
        sensors=[clip_shard_partitions],
        resources=build_resources(settings),
    )
