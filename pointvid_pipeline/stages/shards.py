"""The `pointvid_shards` stage for one partition: pack accepted samples, write atomically, verify, publish."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.publish import join_uri, publish_file
from pointvid_pipeline.storage.shard_format import CHECKS, SCHEMA_VERSION, encode_mp4, file_md5, npz_bytes, pack_points, png_bytes, sample_members, verify_shard, write_tar
from pointvid_pipeline.storage.stage_store import StageStore, atomic_path, atomic_write_json

SAMPLE_JSON_FIELDS = ("caption", "objects", "synthetic", "scene_id", "camera_id", "intrinsics", "source", "backends", "stats", "kalman", "query_sampling", "densification", "gate", "row")
DEPTH_CONVENTION = {"quantity": "camera-space z (along the optical axis)", "units": "metres", "camera": "OpenCV pinhole: x right, y down, z forward"}


def shard_paths(settings: PipelineSettings, partition: str):
    return settings.shards_dir / f"{partition}.tar", settings.shards_dir / f"{partition}.json"


@dataclass
class ShardResult:
    """What writing one partition's shard did; the runner turns it into a StageReport."""

    accepted_meta: dict[str, dict]  # key -> the point_maps stage's metadata of each packed sample
    rejected: list[dict]  # the ledger inherited from upstream
    seconds: float
    extra: dict


def write_partition_shard(partition: str, settings: PipelineSettings, storage_options: dict | None = None) -> ShardResult:
    """`storage_options`: fsspec options for `settings.output_uri` (Dagster passes its resolved EnvVar);
    None reads them from POINTVID_STORAGE_OPTIONS, for plain-Python use."""
    store = StageStore(settings.stages_dir)
    upstream = store.read_index("point_maps", partition)
    started = time.perf_counter()
    members, samples = [], []
    for key, meta in upstream.accepted.items():
        clip = store.read_arrays("clips", partition, key)
        points = pack_points(store.read_arrays("point_maps", partition, key))
        labels = store.read_arrays("reference_masks", partition, key)["labels"]
        frames = clip["frames"]
        sample_meta = {
            "schema_version": SCHEMA_VERSION,
            "key": key,
            **{f: meta[f] for f in SAMPLE_JSON_FIELDS if f in meta},
            "frame_size": {"width": frames.shape[2], "height": frames.shape[1], "frames": frames.shape[0]},
            "depth": DEPTH_CONVENTION,
            "extrinsics": clip["truth_extrinsics"].tolist() if "truth_extrinsics" in clip else None,
            "frame_intrinsics": clip["frame_intrinsics"].tolist(),
            "object_poses": clip["truth_object_poses"].tolist() if "truth_object_poses" in clip else None,
        }
        sample = sample_members(key, encode_mp4(frames, meta["source"].get("fps") or 16), npz_bytes(points), png_bytes(labels), sample_meta)
        members += sample
        samples.append({"key": key, "bytes": sum(len(data) for _, data in sample), "synthetic": meta["synthetic"]})
    tar_path, index_path = shard_paths(settings, partition)
    index_path.unlink(missing_ok=True)  # killed between tar and index: "no index" (not finished), never a stale one
    with atomic_path(tar_path) as tmp:
        write_tar(tmp, members)
        md5, size = file_md5(tmp), tmp.stat().st_size
    index = {
        "schema_version": SCHEMA_VERSION,
        "partition": partition,
        "tar": tar_path.name,
        "md5": md5,
        "bytes": size,
        "samples": samples,
        "rejected": upstream.rejected,
        "input_rows": len(samples) + len(upstream.rejected),
        "sample_meta": {key: meta for key, meta in upstream.accepted.items()},
    }
    atomic_write_json(index_path, index)
    checks = verify_shard(tar_path, index, list(upstream.accepted))
    published = {}
    if settings.output_uri and all(passed for passed, _ in checks.values()):  # a shard failing its checks stays local
        published["published_uri"] = publish_shard(tar_path, index_path, settings.output_uri, storage_options)
    seconds = time.perf_counter() - started
    checks = {name: {"passed": passed, "detail": detail, "description": CHECKS[name]} for name, (passed, detail) in checks.items()}
    extra = {"checks": checks, "shard_path": str(tar_path), "shard_bytes": size, "bytes_per_sample": size / max(len(samples), 1), **published}
    return ShardResult(accepted_meta=upstream.accepted, rejected=upstream.rejected, seconds=seconds, extra=extra)


def publish_shard(tar_path, index_path, output_uri: str, storage_options: dict | None) -> str:
    """Tar first, index last: as locally, a shard whose index is there is complete. Returns the tar's URI."""
    folder = join_uri(output_uri, "shards")
    tar_uri = publish_file(tar_path, join_uri(folder, tar_path.name), storage_options)
    publish_file(index_path, join_uri(folder, index_path.name), storage_options)
    return tar_uri
