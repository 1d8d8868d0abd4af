"""Registers one dynamic partition per shard of the configured input (manifest or default scenes)."""


from dagster import (
    DefaultSensorStatus,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from pointvid_pipeline.dagster_defs.assets import clip_shards, initialize_model_pool
from pointvid_pipeline.dagster_defs.resources import PipelineSettingsResource
from pointvid_pipeline.pipeline import partition_rows


@sensor(
    name="clip_shard_partitions",
    description="Adds a `clip_shards` partition for every shard of the configured manifest that is not registered yet.",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
)
def clip_shard_partitions(context: SensorEvaluationContext, pipeline_settings: PipelineSettingsResource):
    initialize_model_pool(context.instance)  # before the runs this sensor leads to can race to create it
    keys = list(partition_rows(pipeline_settings.settings()))
    known = set(context.instance.get_dynamic_partitions(clip_shards.name))
    new = [key for key in keys if key not in known]
    if not new:
        return SkipReason(f"all {len(keys)} shards already registered")
    return SensorResult(dynamic_partitions_requests=[clip_shards.build_add_request(new)])
