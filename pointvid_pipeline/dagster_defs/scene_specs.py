"""`synthetic_scene_specs`: `pointvid synth` as a Dagster asset, so the UI's launchpad can draw the scenes to curate.

It writes `<data_dir>/synthetic_scene_specs.json` (the same bytes as `pointvid synth --out` for the same draw);
a deployment started with POINTVID_SCENES=generated curates that file (the sensor shards it, `clips` renders it).
"""

from collections import Counter

from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from pointvid_pipeline.dagster_defs.assets import configuration_errors_fail_the_step
from pointvid_pipeline.dagster_defs.resources import PipelineSettingsResource
from pointvid_pipeline.settings import GENERATED_SCENES
from pointvid_pipeline.storage.shard_format import file_md5
from pointvid_pipeline.storage.stage_store import atomic_write_bytes
from pointvid_pipeline.synthetic.cameras import MAX_RIG_CAMERAS
from pointvid_pipeline.synthetic.generator import generate_scenes, scenes_json


class SceneDrawConfig(Config):
    """The launchpad's settings: those of `pointvid synth`."""

    count: int = Field(default=20, description="how many scenes (every block of 10 holds each camera movement once)")
    seed: int = Field(default=0, description="the same count, seed and cameras give the same file")
    cameras: int = Field(default=1, description=f"cameras per scene, 1 to {MAX_RIG_CAMERAS}: K > 1 makes every scene a synchronized rig, one sample per view")


@asset(
    key=AssetKey("synthetic_scene_specs"),
    description=f"Synthetic scene specs drawn like `pointvid synth --count --seed --cameras` (set them in the launchpad), written to <data_dir>/synthetic_scene_specs.json; curated when the deployment runs with POINTVID_SCENES={GENERATED_SCENES}.",
    group_name="synthetic",
    kinds={"python", "json"},
)
def synthetic_scene_specs(context: AssetExecutionContext, config: SceneDrawConfig, pipeline_settings: PipelineSettingsResource) -> MaterializeResult:
    settings = pipeline_settings.settings()
    path = settings.generated_scenes_path
    with configuration_errors_fail_the_step():  # a bad draw writes nothing
        scenes = generate_scenes(config.count, config.seed, config.cameras)
        atomic_write_bytes(path, scenes_json(scenes).encode())
    if not settings.curates_generated_scenes:
        context.log.warning(f"this deployment curates {settings.manifest or settings.scenes or 'the default scenes'}; start it with POINTVID_SCENES={GENERATED_SCENES} to curate {path}")
    programs = [program for scene in scenes for program in (scene["camera"] if config.cameras > 1 else [scene["camera"]])]
    return MaterializeResult(
        metadata={
            "count": config.count,
            "seed": config.seed,
            "cameras": config.cameras,
            "views": len(programs),
            "views_per_movement": MetadataValue.json(dict(sorted(Counter(program["movement"] for program in programs).items()))),
            "path": MetadataValue.path(str(path)),
            "md5": file_md5(path),
            "curated": settings.curates_generated_scenes,
        }
    )
