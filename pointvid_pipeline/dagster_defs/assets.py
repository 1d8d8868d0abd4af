"""One asset per pipeline stage, partitioned by shard of clips; `dataset` rolls them up."""


import base64
from contextlib import contextmanager

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    DynamicPartitionsDefinition,
    ExecuteInProcessResult,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from pointvid_pipeline.dagster_defs.resources import stage_backends
from pointvid_pipeline.dataset import build_dataset
from pointvid_pipeline.pipeline import STAGES, StageReport, partition_rows, run_stage
from pointvid_pipeline.rejections import (
    ConfigurationError,
    RejectionReason,
    rejection_class,
)
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.shard_format import CHECKS
from pointvid_pipeline.tools.previews import partition_previews, shard_samples_markdown

clip_shards = DynamicPartitionsDefinition(name="clip_shards")
GROUP = "curation"
RETRY_TAG = "pointvid/retry"  # run tag: comma-separated rejection reasons to process again (see run_stage)

STAGE_DESCRIPTIONS = {
    "clips": "Ingest: decode 16 frames at the configured stride (PyAV), resize + centre-crop to 448x256; or render a synthetic scene (pybullet) with its depth, masks and ground-truth tracks.",
    "object_prompts": "The main moving objects named in each caption (LLM in the paper profile; vocabulary matching on cpu).",
    "reference_masks": "Foreground instance masks on the reference (first) frame: Grounded-SAM2 in the paper profile; renderer masks or motion + GrabCut segmentation on cpu.",
    "query_points": "Grid-80 query pixels on the reference frame: every foreground grid point plus a seeded fraction of background ones.",
    "depth": "Metric z-depth per frame: ZoeDepth in the paper profile; renderer depth on cpu (real clips without a depth backend are rejected).",
    "tracks_3d": "3D tracks (u, v, depth) + visibility of the query points: SpaTracker / CoTracker3 in the paper profile; DIS optical flow with a forward-backward check on cpu.",
    "smoothed_tracks": "Constant-velocity 3D Kalman filter (+ RTS pass) on camera-space xyz, reprojected to (u, v, d) (Algorithm 1, line 2).",
    "point_maps": "Algorithm 1: (T, H, W, 3) uvd map, background 0, untracked foreground pixels interpolated from their 3 nearest tracked points (cKDTree, inverse-distance weights).",
    "pointvid_shards": "One WebDataset tar per partition (mp4, points.npz, mask.png, json per sample) written atomically, with an index; blocking checks on its contents.",
}
MODEL_STAGES = {"object_prompts", "reference_masks", "depth", "tracks_3d"}  # run in the `gpu` pool (see README)
MODEL_POOL = "gpu"


def initialize_model_pool(instance) -> None:
    """Create the `gpu` pool's slots from the instance's default limit now, if it has none yet. Dagster
    creates them on the first claim, and two runs claiming at once on a fresh instance can each create a
    slot (seen in CI on Postgres: two model steps overlapping under a limit of 1)."""
    known = {pool.name for pool in instance.event_log_storage.get_pool_limits()}
    if MODEL_POOL not in known and instance.global_op_concurrency_default_limit is not None:
        instance.event_log_storage.initialize_concurrency_limit_to_default(MODEL_POOL)


@contextmanager
def configuration_errors_fail_the_step():
    """A ConfigurationError ends the step as a Failure showing its one line, never retried: nothing can
    succeed until the configuration changes. The metadata lets `configuration_error` rebuild it."""
    try:
        yield
    except ConfigurationError as error:
        metadata = {"reason": error.reason.value, "class": rejection_class(error.reason).value, "detail": str(error)}
        raise Failure(description=error.one_line(), metadata=metadata, allow_retries=False) from None


def configuration_error(result: ExecuteInProcessResult) -> ConfigurationError | None:
    """The ConfigurationError that failed a step of `result` (see configuration_errors_fail_the_step), if one did."""
    for event in result.get_step_failure_events():
        failure = event.step_failure_data.user_failure_data
        if failure is not None and {"reason", "detail"} <= failure.metadata.keys():
            return ConfigurationError(failure.metadata["detail"].value, RejectionReason(failure.metadata["reason"].value))
    return None


STAGE_KINDS = {
    "clips": {"python", "video"},
    "object_prompts": {"python", "text"},
    "reference_masks": {"python", "numpy"},
    "query_points": {"python", "numpy"},
    "depth": {"python", "numpy"},
    "tracks_3d": {"python", "numpy"},
    "smoothed_tracks": {"python", "numpy"},
    "point_maps": {"python", "numpy"},
    "pointvid_shards": {"python", "webdataset"},
}


def report_metadata(report: StageReport) -> dict:
    metadata = {
        "accepted": report.accepted,
        "rejected_here": MetadataValue.json(report.rejected_here),
        "rejected_total": report.rejected_total,
        "seconds": round(report.seconds, 3),
        "seconds_per_sample": round(report.seconds_per_sample, 4),
        "backends": MetadataValue.json(report.backends),
    }
    metadata.update({name: round(value, 6) for name, value in report.stats.items()})
    if report.row_seconds:
        metadata["row_seconds"] = MetadataValue.json({key: round(seconds, 3) for key, seconds in report.row_seconds.items()})
        metadata["slowest_row_seconds"] = round(max(report.row_seconds.values()), 3)
    if "shard_path" in report.extra:
        metadata["shard_path"] = MetadataValue.path(report.extra["shard_path"])
        metadata["bytes_per_sample"] = round(report.extra["bytes_per_sample"])
    if "published_uri" in report.extra:
        metadata["published_uri"] = MetadataValue.path(report.extra["published_uri"])
    return metadata


def preview_metadata(stage: str, partition: str, settings: PipelineSettings) -> dict:
    """Pictures as markdown with an embedded PNG (Dagster has no image metadata type); the shard's sample table."""
    metadata = {
        f"preview_{title}": MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})")
        for title, png in partition_previews(stage, partition, settings).items()
    }
    if stage == "pointvid_shards":
        metadata["samples"] = MetadataValue.md(shard_samples_markdown(partition, settings))
    return metadata


def _stage_asset(stage: str, upstream: str | None):
    is_shards = stage == "pointvid_shards"
    check_specs = [AssetCheckSpec(name, asset=stage, description=text, blocking=True) for name, text in CHECKS.items()] if is_shards else None

    @asset(
        name=stage,
        description=STAGE_DESCRIPTIONS[stage],
        partitions_def=clip_shards,
        deps=[AssetKey(upstream)] if upstream else None,
        group_name=GROUP,
        kinds=STAGE_KINDS[stage],
        check_specs=check_specs,
        pool=MODEL_POOL if stage in MODEL_STAGES else None,
        required_resource_keys={"pipeline_settings", "object_extractor", "segmenter", "depth_estimator", "point_tracker"},
    )
    def _materialize(context: AssetExecutionContext) -> MaterializeResult:
        settings = context.resources.pipeline_settings.settings()
        retry = [reason for reason in context.run.tags.get(RETRY_TAG, "").split(",") if reason]
        storage_options = context.resources.pipeline_settings.storage_options()
        with configuration_errors_fail_the_step():
            report = run_stage(stage, context.partition_key, settings, stage_backends(context.resources), retry=retry, storage_options=storage_options)
        context.log.info(f"{stage} {context.partition_key}: {report.accepted} accepted, rejected here {report.rejected_here}, {report.seconds:.2f}s")
        check_results = None
        if is_shards:
            check_results = [
                AssetCheckResult(check_name=name, passed=result["passed"], severity=AssetCheckSeverity.ERROR, metadata={"detail": result["detail"]})
                for name, result in report.extra["checks"].items()
            ]
        metadata = {**report_metadata(report), **preview_metadata(stage, context.partition_key, settings)}
        return MaterializeResult(metadata=metadata, check_results=check_results)

    return _materialize


stage_assets = [_stage_asset(stage, STAGES[i - 1] if i else None) for i, stage in enumerate(STAGES)]


NO_LOST_OBJECTS = "no_lost_object_shipped"


@asset(
    name="dataset",
    description="Roll-up of all shards of the configured input: Parquet manifests of samples and rejections, counts per rejection reason, "
    "the point maps' accuracy against ground truth for synthetic samples (evaluation.parquet), dataset card.",
    deps=[AssetKey("pointvid_shards")],
    group_name=GROUP,
    kinds={"python", "parquet"},
    required_resource_keys={"pipeline_settings"},
    check_specs=[AssetCheckSpec(NO_LOST_OBJECTS, asset="dataset", description="No synthetic object whose point map is off by more than 8 px (median) at its last frame in view ships.")],
)
def dataset(context: AssetExecutionContext) -> MaterializeResult:
    settings = context.resources.pipeline_settings.settings()
    partitions = list(partition_rows(settings))
    with configuration_errors_fail_the_step():
        summary = build_dataset(settings, partitions, context.resources.pipeline_settings.storage_options())
    point_map = summary["quality_vs_ground_truth"].get("point_map", {})
    lost = point_map.get("lost_objects_shipped", [])
    pooled = point_map.get("pooled", {}).get("all/1-15", {})
    lost_check = AssetCheckResult(
        check_name=NO_LOST_OBJECTS,
        passed=not lost,
        severity=AssetCheckSeverity.WARN,  # a measurement of what shipped, not a reason to withhold the roll-up
        metadata={"lost_objects_shipped": len(lost), "objects": MetadataValue.json(lost), "synthetic_scenes": point_map.get("scenes", 0)},
    )
    return MaterializeResult(
        check_results=[lost_check],
        metadata={
            **{f"point_map_{name}": float(value) for name, value in pooled.items() if name in ("median_px_error", "within_1px", "tapvid2d_occlusion_accuracy", "tapvid3d_average_jaccard")},
            "accepted": summary["accepted"],
            "rejected": summary["rejected"],
            "input_rows": summary["input_rows"],
            "rows_without_shard": summary["rows_without_shard"],
            "partitions_missing_shards": MetadataValue.json(summary["partitions_without_shard"]),
            "rejections_by_reason": MetadataValue.json(summary["rejections_by_reason"]),
            "quality_vs_ground_truth": MetadataValue.json(summary["quality_vs_ground_truth"]),
            "bytes_per_sample": round(summary["bytes_per_sample"]),
            "dataset_dir": MetadataValue.path(str(settings.dataset_dir)),
            **({"published_uri": MetadataValue.path(summary["published_uri"])} if "published_uri" in summary else {}),
            "card": MetadataValue.md((settings.dataset_dir / "README.md").read_text()),
        }
    )


