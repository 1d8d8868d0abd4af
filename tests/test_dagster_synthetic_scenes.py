"""`synthetic_scene_specs` (issue 15): scenes drawn from the launchpad's config and curated through real Dagster runs
on an on-disk instance: the sensor shards exactly those scenes, `curate_shard` renders and ships them, a new draw
retires the old draw's partitions, a bad draw fails as a configuration error."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AddDynamicPartitionsRequest, DagsterInstance, RunConfig, SensorResult, SkipReason, build_sensor_context, materialize

from pointvid_pipeline.dagster_defs.assets import clip_shards
from pointvid_pipeline.dagster_defs.definitions import build_definitions
from pointvid_pipeline.dagster_defs.resources import PipelineSettingsResource
from pointvid_pipeline.dagster_defs.scene_specs import SceneDrawConfig, synthetic_scene_specs
from pointvid_pipeline.dagster_defs.sensors import clip_shard_partitions
from pointvid_pipeline.pipeline import partition_rows
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.shard_format import file_md5, read_samples
from pointvid_pipeline.storage.stage_store import StageStore
from pointvid_pipeline.synthetic.generator import generate_scenes, scenes_json

REPO = Path(__file__).resolve().parents[1]
SEED = 4  # its first scene is a push: both views keep their objects on the floor, so the cpu tracker ships them


@pytest.fixture
def deployment(tmp_path):
    """A deployment started with POINTVID_SCENES=generated, two views a shard (one rig of two cameras), and its instance."""
    settings = PipelineSettings.from_env({"POINTVID_DATA_DIR": str(tmp_path / "data"), "POINTVID_SCENES": "generated", "POINTVID_SHARD_SIZE": "2"})
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        yield settings, instance


def draw(settings: PipelineSettings, instance: DagsterInstance, **config):
    resources = {"pipeline_settings": PipelineSettingsResource.from_settings(settings)}
    run_config = RunConfig(ops={"synthetic_scene_specs": SceneDrawConfig(**config)})
    return materialize([synthetic_scene_specs], instance=instance, resources=resources, run_config=run_config, raise_on_error=False)


def tick(settings: PipelineSettings, instance: DagsterInstance):
    """One sensor evaluation, its partition requests applied to the instance as the daemon would."""
    resources = {"pipeline_settings": PipelineSettingsResource.from_settings(settings)}
    result = clip_shard_partitions(build_sensor_context(instance=instance, resources=resources))
    if isinstance(result, SensorResult):
        for request in result.dynamic_partitions_requests:
            if isinstance(request, AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(clip_shards.name, list(request.partition_keys))
            else:
                for key in request.partition_keys:
                    instance.delete_dynamic_partition(clip_shards.name, key)
    return result


def views(scenes: list[dict]) -> list[str]:
    return [f"{scene['name']}_cam{k}" for scene in scenes for k in range(len(scene["camera"]))] if isinstance(scenes[0]["camera"], list) else [scene["name"] for scene in scenes]


def test_drawn_scenes_are_sharded_and_curated_and_a_new_draw_retires_the_old_partitions(deployment):
    settings, instance = deployment
    waiting = tick(settings, instance)
    assert isinstance(waiting, SkipReason) and "materialize synthetic_scene_specs" in waiting.skip_message

    result = draw(settings, instance, count=3, seed=SEED, cameras=2)
    assert result.success
    scenes = generate_scenes(3, SEED, cameras=2)
    path = settings.generated_scenes_path
    assert path.read_bytes() == scenes_json(scenes).encode()  # what `pointvid synth --out` writes for the same draw
    metadata = result.asset_materializations_for_node("synthetic_scene_specs")[0].metadata
    assert (metadata["count"].value, metadata["seed"].value, metadata["cameras"].value, metadata["views"].value) == (3, SEED, 2, 6)
    assert metadata["views_per_movement"].value == {"following": 1, "pan": 1, "pedestal": 1, "tilt": 1, "truck": 1, "static": 1}
    assert metadata["path"].value == str(path) and metadata["curated"].value is True
    first_md5 = file_md5(path)
    assert draw(settings, instance, count=3, seed=SEED, cameras=2).success and file_md5(path) == first_md5  # a rerun: the same bytes

    tick(settings, instance)
    registered = instance.get_dynamic_partitions(clip_shards.name)
    shards = partition_rows(settings)
    assert registered == list(shards) == ["shard-00000", "shard-00001", "shard-00002"]  # one rig (two views) a shard
    assert [row.key for rows in shards.values() for row in rows] == views(scenes)
    assert isinstance(tick(settings, instance), SkipReason)

    partition, scene = "shard-00000", scenes[0]
    assert build_definitions(settings).resolve_job_def("curate_shard").execute_in_process(partition_key=partition, instance=instance).success
    rendered = StageStore(settings.stages_dir).read_index("clips", partition).accepted
    assert list(rendered) == [f"{scene['name']}_cam0", f"{scene['name']}_cam1"]
    shipped = read_samples(settings.shards_dir / f"{partition}.tar")
    assert list(shipped) == list(rendered)
    for k, members in enumerate(shipped.values()):
        meta = json.loads(members["json"])
        program = scene["camera"][k]
        source, shipped_program = meta["source"], meta["source"]["camera_program"]
        assert meta["scene_id"] == scene["name"] and meta["camera_id"] == k
        assert (source["seed"], source["motion"], source["floor"], source["background"]) == (scene["seed"], scene["motion"], scene["floor"], scene["background"])
        assert (shipped_program["movement_type"], shipped_program["movement_value"], shipped_program["hfov_deg"]) == (program["movement"], program["value"], program["hfov_deg"])

    assert draw(settings, instance, count=2, seed=SEED, cameras=1).success  # another draw: new keys, new shards
    redrawn = generate_scenes(2, SEED)
    assert not set(views(redrawn)) & set(views(scenes))
    tick(settings, instance)
    assert instance.get_dynamic_partitions(clip_shards.name) == list(partition_rows(settings)) == ["shard-00003"]
    assert build_definitions(settings).resolve_job_def("build_dataset").execute_in_process(instance=instance).success
    summary = json.loads((settings.dataset_dir / "summary.json").read_text())
    assert (summary["input_rows"], summary["accepted"], summary["partitions_without_shard"]) == (2, 0, ["shard-00003"])  # the old draw's shipped shard is not rolled up


@pytest.mark.parametrize(("count", "seed", "cameras", "setting"), [(0, 1, 1, "count"), (3, 1, 11, "cameras"), (3, 1, 0, "cameras"), (3, -1, 1, "seed")])
def test_a_bad_draw_fails_as_a_configuration_error_and_writes_nothing(deployment, count, seed, cameras, setting):
    settings, instance = deployment
    result = draw(settings, instance, count=count, seed=seed, cameras=cameras)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    data = failure.step_failure_data.user_failure_data
    assert data.description.startswith(f"configuration error (invalid_setting): {setting} must be") and "\n" not in data.description
    assert data.metadata["class"].value == "configuration"
    assert not settings.generated_scenes_path.exists()


def test_definitions_load_and_the_cli_names_the_missing_draw(tmp_path):
    """POINTVID_SCENES=generated before any draw: `dagster definitions validate` loads, `pointvid partitions` exits 2 with one line."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "POINTVID_DATA_DIR": str(tmp_path / "data"), "POINTVID_SCENES": "generated"}
    done = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([sys.executable, "-m", "pointvid_pipeline.cli", "partitions"], env=env, capture_output=True, text=True, timeout=120, check=False)
    error = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and error.startswith("pointvid: error: configuration error (invalid_setting): POINTVID_SCENES=generated: no scene specs at"), done.stderr
    assert error.endswith("materialize the Dagster asset synthetic_scene_specs first")
