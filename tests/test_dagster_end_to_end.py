"""The default synthetic input through real Dagster runs on an on-disk instance."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance, SkipReason, build_sensor_context

from pointvid_pipeline.backends.registry import lazy_backends
from pointvid_pipeline.dagster_defs.assets import clip_shards
from pointvid_pipeline.dagster_defs.definitions import build_definitions
from pointvid_pipeline.dagster_defs.sensors import clip_shard_partitions
from pointvid_pipeline.pipeline import STAGES, partition_rows, run_stage
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.shard_format import CHECKS, MEMBER_SUFFIXES, file_md5, load_points, read_samples

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    home = tmp_path_factory.mktemp("dagster_home")
    settings = PipelineSettings(data_dir=tmp_path_factory.mktemp("data"))
    defs = build_definitions(settings)
    partition = list(partition_rows(settings))[-1]
    with DagsterInstance.local_temp(str(home)) as instance:
        instance.add_dynamic_partitions(clip_shards.name, [partition])
        result = defs.resolve_job_def("curate_shard").execute_in_process(partition_key=partition, instance=instance)
        dataset_result = defs.resolve_job_def("build_dataset").execute_in_process(instance=instance)
        yield settings, partition, instance, result, dataset_result


def test_every_stage_materializes_the_partition(run):
    settings, partition, instance, result, _ = run
    assert result.success
    for stage in STAGES:
        event = instance.get_latest_materialization_event(AssetKey(stage))
        assert event is not None and event.asset_materialization.partition == partition
        metadata = event.asset_materialization.metadata
        assert metadata["accepted"].value == len(partition_rows(settings)[partition])


def test_blocking_shard_checks_all_pass(run):
    _, _, _, result, _ = run
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == set(CHECKS)
    assert all(e.passed for e in evaluations.values()), {k: e.metadata for k, e in evaluations.items() if not e.passed}


def test_shard_holds_complete_samples_with_provenance(run):
    settings, partition, _, _, _ = run
    samples = read_samples(settings.shards_dir / f"{partition}.tar")
    assert list(samples) == [row.key for row in partition_rows(settings)[partition]]
    for members in samples.values():
        assert set(members) == set(MEMBER_SUFFIXES)
        meta = json.loads(members["json"])
        assert meta["schema_version"] == "1.2" and meta["synthetic"] and meta["caption"].startswith("<synthetic>")
        assert set(meta["backends"]) == set(STAGES) - {"pointvid_shards"}
        points = load_points(members["points.npz"])
        assert points["uvd"].shape == (16, 256, 448, 3) and points["uvd"].dtype.name == "float16"
        assert points["valid"].any() and (points["uvd"][:, ~points["valid"]] == 0).all()


def test_dataset_card_reports_ground_truth_errors(run):
    settings, partition, _, _, dataset_result = run
    assert dataset_result.success
    summary = json.loads((settings.dataset_dir / "summary.json").read_text())
    partitions = partition_rows(settings)
    rows, others = len(partitions[partition]), [p for p in partitions if p != partition]
    assert summary["accepted"] == rows and summary["input_rows"] == sum(map(len, partitions.values()))  # every scene, curated or not
    assert summary["partitions_without_shard"] == others and summary["rows_without_shard"] == summary["input_rows"] - rows
    quality = summary["quality_vs_ground_truth"]
    assert set(quality["tracks"]) == {"all", "shipped"}
    for figures in quality["tracks"].values():
        assert 0 < figures["raw_median_px_error"] < 10 and 0 <= figures["smoothed_within_1px"] <= 1
    pooled = quality["point_map"]["pooled"]["all/1-15"]
    assert 0 < pooled["median_px_error"] < 10 and 0 < pooled["tapvid3d_average_jaccard"] <= 1
    assert quality["oracles"] == ["depth: renderer-depth@1", "reference_masks: renderer-masks@1"]
    card = (settings.dataset_dir / "README.md").read_text()
    assert "median 2D error (px)" in card and "3D-AJ" in card and "Oracle stages" in card
    (lost_check,) = dataset_result.get_asset_check_evaluations()
    lost = quality["point_map"]["lost_objects_shipped"]
    assert lost_check.check_name == "no_lost_object_shipped" and lost_check.passed == (not lost)
    assert lost_check.metadata["lost_objects_shipped"].value == len(lost)


def test_sensor_registers_only_new_shards(tmp_path):
    settings = PipelineSettings(data_dir=tmp_path / "data")
    resources = build_definitions(settings).resources
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        context = build_sensor_context(instance=instance, resources={"pipeline_settings": resources["pipeline_settings"]})
        result = clip_shard_partitions(context)
        (request,) = result.dynamic_partitions_requests
        assert list(request.partition_keys) == list(partition_rows(settings))
        instance.add_dynamic_partitions(clip_shards.name, list(request.partition_keys))
        assert isinstance(clip_shard_partitions(build_sensor_context(instance=instance, resources={"pipeline_settings": resources["pipeline_settings"]})), SkipReason)


def test_workspace_definitions_load_with_the_dagster_cli(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "POINTVID_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rerun_in_another_folder_writes_byte_identical_shards(run, tmp_path):
    settings, partition, _, _, _ = run
    again = PipelineSettings(data_dir=tmp_path)
    backends = lazy_backends("cpu")
    for stage in STAGES:
        run_stage(stage, partition, again, backends)
    assert file_md5(again.shards_dir / f"{partition}.tar") == file_md5(settings.shards_dir / f"{partition}.tar")


def test_rematerializing_the_partition_in_place_is_idempotent(run):
    """A second Dagster run of the same partition rewrites the same bytes: tar, shard index, stage indexes."""
    settings, partition, instance, _, _ = run
    outputs = [settings.shards_dir / f"{partition}.tar", settings.shards_dir / f"{partition}.json"]
    outputs += sorted(settings.stages_dir.glob(f"*/{partition}/_index.json"))
    before = {path: file_md5(path) for path in outputs}
    result = build_definitions(settings).resolve_job_def("curate_shard").execute_in_process(partition_key=partition, instance=instance)
    assert result.success
    assert {path: file_md5(path) for path in outputs} == before


def test_shards_are_schema_1_2_with_visibility_cameras_and_depth_convention(run):
    settings, partition, _, _, _ = run
    samples = read_samples(settings.shards_dir / f"{partition}.tar")
    for key, members in samples.items():
        meta = json.loads(members["json"])
        assert meta["schema_version"] == "1.2" and meta["frame_size"] == {"width": 448, "height": 256, "frames": 16}
        assert meta["depth"]["units"] == "metres" and "z" in meta["depth"]["quantity"]
        assert np.asarray(meta["extrinsics"]).shape == (16, 4, 4)  # synthetic: the renderer's world-to-camera poses
        assert np.asarray(meta["frame_intrinsics"]).shape == (16, 3, 3) and meta["frame_intrinsics"][0] == meta["intrinsics"]
        points = load_points(members["points.npz"])
        assert points["visible"].shape == (16, 256, 448) and not points["visible"][:, ~points["valid"]].any()
        assert points["visible"][0, points["valid"]].all() and not points["visible"][1:, points["valid"]].all()


def test_pointvid_evaluate_prints_tables_per_object_scene_and_motion(run):
    settings, partition, _, _, _ = run
    out = subprocess.run([sys.executable, "-m", "pointvid_pipeline.cli", "evaluate", str(settings.dataset_dir), "--out", str(settings.data_dir / "eval")], capture_output=True, text=True, check=True)
    assert "### Per camera motion" in out.stdout and "### Per scene and object" in out.stdout
    keys = list(partition_rows(settings)[partition])
    rows = pq.read_table(settings.data_dir / "eval" / "evaluation.parquet").to_pylist()
    assert {r["key"] for r in rows} == {row.key for row in keys}
    assert {(r["subset"], r["frames"]) for r in rows} == {(s, f) for s in ("all", "tracked", "interpolated") for f in ("1-15", "query")}
    query = [r for r in rows if r["frames"] == "query" and r["shipped_pixels"]]
    assert all(r["median_px_error"] < 0.01 for r in query)  # frame 0 is the pixel itself (float16 rounding aside)
