"""Clips keep their shard across manifest edits; new clips fill new shards; the sensor adds only those."""

import csv
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from dagster import DagsterInstance, SkipReason, build_sensor_context

from pointvid_pipeline.dagster_defs.assets import clip_shards
from pointvid_pipeline.dagster_defs.resources import PipelineSettingsResource
from pointvid_pipeline.dagster_defs.sensors import clip_shard_partitions
from pointvid_pipeline.pipeline import partition_rows
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.manifest import read_manifest
from pointvid_pipeline.storage.shard_assignment import LEDGER_NAME, assign_shards, read_assignment


def write_manifest(path: Path, videos: list[str]) -> str:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "caption"])
        writer.writerows([video, f"a {video} rolls"] for video in videos)
    return str(path)


def keys_by_shard(partitions) -> dict[str, list[str]]:
    return {shard: [row.key for row in rows] for shard, rows in partitions.items()}


def test_first_assignment_is_consecutive_and_covers_every_row(shared_videos, tmp_path):
    rows = read_manifest(str(shared_videos / "manifest.csv"))
    shards = assign_shards(rows, 4, tmp_path / LEDGER_NAME)
    assert list(shards) == ["shard-00000", "shard-00001"]
    assert [r for part in shards.values() for r in part] == rows


def test_manifest_edit_never_moves_an_assigned_clip(tmp_path):
    settings = PipelineSettings(data_dir=tmp_path / "data", manifest=write_manifest(tmp_path / "m.csv", [f"v{i}.mp4" for i in range(10)]), shard_size=4)
    before = keys_by_shard(partition_rows(settings))
    assert [len(keys) for keys in before.values()] == [4, 4, 2]
    # Rows inserted at the top, one row removed, one caption edited, a duplicate of an old row appended.
    edited = ["new0.mp4", "new1.mp4", *[f"v{i}.mp4" for i in range(10) if i != 5], "new2.mp4", "v1.mp4"]
    write_manifest(tmp_path / "m.csv", edited)
    lines = (tmp_path / "m.csv").read_text().replace("a v3.mp4 rolls", "a v3.mp4 bounces")
    (tmp_path / "m.csv").write_text(lines)
    after = partition_rows(settings)
    edited_rows = read_manifest(str(tmp_path / "m.csv"))
    present = {row.key for row in edited_rows}
    assert sorted(after) == ["shard-00000", "shard-00001", "shard-00002", "shard-00003"]
    for shard, keys in before.items():
        assert list(dict.fromkeys(keys_by_shard(after)[shard])) == [k for k in keys if k in present]
    assert len(after["shard-00001"]) == 3  # v5 left the manifest; nothing moved in to fill the gap
    assert [row.video.rsplit("/", 1)[-1] for row in after["shard-00003"]] == ["new0.mp4", "new1.mp4", "new2.mp4"]
    v1 = [row for row in after["shard-00000"] if row.video.endswith("v1.mp4")]
    assert len(v1) == 2  # the repeated row sits beside the original, where `clips` ledgers it as a duplicate
    assert next(r for r in after["shard-00000"] if r.video.endswith("v3.mp4")).caption == "a v3.mp4 bounces"
    assert sum(len(rows) for rows in after.values()) == len(edited_rows)


def test_a_shard_whose_clips_all_left_is_not_a_partition(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", ["a.mp4", "b.mp4", "c.mp4"])
    settings = PipelineSettings(data_dir=tmp_path / "data", manifest=manifest, shard_size=2)
    assert list(partition_rows(settings)) == ["shard-00000", "shard-00001"]
    write_manifest(tmp_path / "m.csv", ["a.mp4", "b.mp4", "d.mp4"])
    assert list(partition_rows(settings)) == ["shard-00000", "shard-00002"]
    assert list(read_assignment(settings.data_dir / LEDGER_NAME)) == ["shard-00000", "shard-00001", "shard-00002"]


def _assign(args):
    manifest, data_dir = args
    return keys_by_shard(partition_rows(PipelineSettings(data_dir=Path(data_dir), manifest=manifest, shard_size=8)))


def test_concurrent_writers_agree_on_one_assignment(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [f"v{i}.mp4" for i in range(200)])
    with ProcessPoolExecutor(2) as pool:
        first, second = pool.map(_assign, [(manifest, str(tmp_path / "data"))] * 2)
    assert first == second and len(first) == 25
    ledger = json.loads((tmp_path / "data" / LEDGER_NAME).read_text())["shards"]
    assert ledger == first


def test_sensor_registers_only_the_shards_a_manifest_append_adds(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [f"v{i}.mp4" for i in range(6)])
    settings = PipelineSettings(data_dir=tmp_path / "data", manifest=manifest, shard_size=4)
    resources = {"pipeline_settings": PipelineSettingsResource.from_settings(settings)}
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        (request,) = clip_shard_partitions(build_sensor_context(instance=instance, resources=resources)).dynamic_partitions_requests
        assert list(request.partition_keys) == ["shard-00000", "shard-00001"]
        instance.add_dynamic_partitions(clip_shards.name, list(request.partition_keys))
        assert isinstance(clip_shard_partitions(build_sensor_context(instance=instance, resources=resources)), SkipReason)
        write_manifest(tmp_path / "m.csv", [f"v{i}.mp4" for i in range(11)])
        (request,) = clip_shard_partitions(build_sensor_context(instance=instance, resources=resources)).dynamic_partitions_requests
        assert list(request.partition_keys) == ["shard-00002", "shard-00003"]
