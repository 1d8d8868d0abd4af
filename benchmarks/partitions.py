"""Partitions of a 70K-clip manifest: first registration, a sensor tick on the unchanged manifest, and
a tick after an append, each as a ratio to reading the manifest (the floor any tick pays).

The manifest is generated (plain layout: video, caption; the paper's ~70K clips), the Dagster
instance is a fresh on-disk SQLite one, and the sensor is the real `clip_shard_partitions`.
Run: python benchmarks/partitions.py [--rows 70000] [--shard-size 64]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from dagster import DagsterInstance, SkipReason, build_sensor_context

from pointvid_pipeline.dagster_defs.assets import clip_shards
from pointvid_pipeline.dagster_defs.resources import PipelineSettingsResource
from pointvid_pipeline.dagster_defs.sensors import clip_shard_partitions
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.manifest import read_manifest


def write_manifest(path: Path, first: int, count: int, mode: str = "w") -> None:
    with path.open(mode, newline="") as f:
        writer = csv.writer(f)
        if mode == "w":
            writer.writerow(["video", "caption", "start", "end"])
        writer.writerows([f"videos/v{i // 8:06d}.mp4", f"a red ball rolls past a box, clip {i}", (i % 8) * 4.0, (i % 8) * 4.0 + 3.5] for i in range(first, first + count))


def timed(function):
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def tick(instance, resources):
    """One sensor evaluation, applying its partition requests as the daemon would."""
    result = clip_shard_partitions(build_sensor_context(instance=instance, resources=resources))
    if isinstance(result, SkipReason):
        return 0
    (request,) = result.dynamic_partitions_requests
    instance.add_dynamic_partitions(clip_shards.name, list(request.partition_keys))
    return len(request.partition_keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=70_000)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--append", type=int, default=1_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = root / "manifest.csv"
        write_manifest(manifest, 0, args.rows)
        settings = PipelineSettings(data_dir=root / "data", manifest=str(manifest), shard_size=args.shard_size)
        resources = {"pipeline_settings": PipelineSettingsResource.from_settings(settings)}
        (root / "home").mkdir()
        with DagsterInstance.local_temp(str(root / "home")) as instance:
            read_seconds, rows = min(timed(lambda: read_manifest(str(manifest))) for _ in range(2))  # best of 2: warm
            first_seconds, first = timed(lambda: tick(instance, resources))
            unchanged_seconds, none = timed(lambda: tick(instance, resources))
            write_manifest(manifest, args.rows, args.append, mode="a")
            append_seconds, appended = timed(lambda: tick(instance, resources))
            registered = len(instance.get_dynamic_partitions(clip_shards.name))
    assert none == 0 and registered == first + appended
    print(f"manifest: {len(rows)} rows, {args.shard_size} clips per shard; reading it (reference): {read_seconds:.2f} s")
    print(f"first tick, {first} shards assigned and registered: {first_seconds:.2f} s ({first_seconds / read_seconds:.2f}x the read)")
    print(f"tick on the unchanged manifest, nothing registered:  {unchanged_seconds:.2f} s ({unchanged_seconds / read_seconds:.2f}x the read)")
    print(f"tick after appending {args.append} rows, {appended} new shards: {append_seconds:.2f} s ({append_seconds / read_seconds:.2f}x the read)")


if __name__ == "__main__":
    main()
