"""Registers one dynamic partition per shard of the configured input (manifest, scenes file or generated scenes)."""


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
    description="Adds a `clip_shards` partition for every shard of the configured input that is not registered yet. With POINTVID_SCENES=generated it also removes the partitions that hold none of the scenes `synthetic_scene_specs` drew last.",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
)
def clip_shard_partitions(context: SensorEvaluationContext, pipeline_settings: PipelineSettingsResource):
    initialize_model_pool(context.instance)  # before the runs this sensor leads to can race to create it
    settings = pipeline_settings.settings()
    if settings.curates_generated_scenes and not settings.generated_scenes_path.exists():
        return SkipReason(f"no generated scenes yet: materialize synthetic_scene_specs (it writes {settings.generated_scenes_path})")
    shards = partition_rows(settings)
    known = context.instance.get_dynamic_partitions(clip_shards.name)
    registered = set(known)
    new = [key for key in shards if key not in registered]
    retired = [key for key in known if key not in shards] if settings.curates_generated_scenes else []  # an earlier draw's shards: not the input any more
    if not new and not retired:
        return SkipReason(f"all {len(shards)} shards already registered")
    requests = [clip_shards.build_add_request(new)] if new else []
    requests += [clip_shards.build_delete_request(retired)] if retired else []
    return SensorResult(dynamic_partitions_requests=requests)
