"""Stage `dataset`: roll all shards up into Parquet manifests and a dataset card (published too when `output_uri` is set)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.publish import join_uri, publish_file
from pointvid_pipeline.storage.shard_format import SCHEMA_VERSION
from pointvid_pipeline.storage.stage_store import atomic_path, atomic_write_bytes, atomic_write_json

DATASET_FILES = ("samples.parquet", "rejections.parquet", "summary.json", "README.md")  # published in this order, card last
QUALITY_FIELDS = (
    ("median 2D error (px)", "median_px_error"),
    ("median relative depth error", "median_rel_depth_error"),
    ("within 1 px", "within_1px"),
    ("within 2 px", "within_2px"),
    ("within 4 px", "within_4px"),
)


def _write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


SAMPLE_SCHEMA = pa.schema(
    [("key", pa.string()), ("shard", pa.string()), ("row", pa.int64()), ("caption", pa.string()), ("objects", pa.list_(pa.string())),
     ("synthetic", pa.bool_()), ("bytes", pa.int64()), ("source", pa.string()), ("backends", pa.string()), ("stats", pa.string())]
)
REJECTION_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.string()), ("row", pa.int64()), ("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string())])


def _quality(metas: list[dict]) -> dict[str, dict[str, float]]:
    """Mean over synthetic samples of each per-sample ground-truth figure, raw and smoothed."""
    table: dict[str, dict[str, float]] = {}
    for variant, stage in (("raw", "smoothed_tracks"), ("smoothed", "smoothed_tracks"), ("dense", "point_maps")):
        for _, name in QUALITY_FIELDS:
            values = [m["stats"][stage][f"{variant}_{name}"] for m in metas if f"{variant}_{name}" in m.get("stats", {}).get(stage, {})]
            if values:
                table.setdefault(variant, {})[name] = float(np.mean(values))
    for name in ("jitter_raw_px", "jitter_smoothed_px", "jitter_truth_px"):
        values = [m["stats"]["smoothed_tracks"][name] for m in metas if name in m.get("stats", {}).get("smoothed_tracks", {})]
        if values:
            table.setdefault("acceleration", {})[name] = float(np.mean(values))
    return table


def build_dataset(settings: PipelineSettings, partitions: list[str], storage_options: dict | None = None) -> dict:
    """Collect every partition's shard index; write samples/rejections Parquet, card and summary.

    With `settings.output_uri` the files are then published to `<output_uri>/dataset/` and the
    returned summary (not summary.json) names that folder as `published_uri`. `storage_options`
    as in `write_partition_shard`: None reads POINTVID_STORAGE_OPTIONS.
    """
    samples, rejections, metas, shards = [], [], [], []
    for partition in partitions:
        index_path = settings.shards_dir / f"{partition}.json"
        if not index_path.exists():
            continue
        index = json.loads(index_path.read_text())
        shards.append({"partition": partition, "tar": index["tar"], "bytes": index["bytes"], "md5": index["md5"], "samples": len(index["samples"])})
        for entry in index["samples"]:
            meta = index["sample_meta"][entry["key"]]
            metas.append(meta)
            samples.append({
                "key": entry["key"], "shard": index["tar"], "row": meta["row"], "caption": meta["caption"], "objects": meta["objects"],
                "synthetic": meta["synthetic"], "bytes": entry["bytes"], "source": json.dumps(meta["source"], sort_keys=True),
                "backends": json.dumps(meta["backends"], sort_keys=True), "stats": json.dumps(meta["stats"], sort_keys=True),
            })
        rejections += [{**{k: r[k] for k in ("key", "row", "stage", "reason", "detail")}, "shard": index["tar"]} for r in index["rejected"]]
    dataset_dir = settings.dataset_dir
    _write_parquet(dataset_dir / "samples.parquet", samples, SAMPLE_SCHEMA)
    _write_parquet(dataset_dir / "rejections.parquet", rejections, REJECTION_SCHEMA)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "input": settings.manifest or "default synthetic scenes",
        "profile": settings.profile,
        "shards": shards,
        "accepted": len(samples),
        "rejected": len(rejections),
        "input_rows": len(samples) + len(rejections),
        "rejections_by_reason": dict(sorted(Counter(r["reason"] for r in rejections).items())),
        "backends": sorted({f"{stage}: {tag}" for m in metas for stage, tag in m["backends"].items()}),
        "bytes_per_sample": float(np.mean([s["bytes"] for s in samples])) if samples else 0.0,
        "quality_vs_ground_truth": _quality(metas),
        "synthetic_samples": sum(1 for s in samples if s["synthetic"]),
    }
    atomic_write_json(dataset_dir / "summary.json", summary)
    atomic_write_bytes(dataset_dir / "README.md", dataset_card(summary).encode())
    if settings.output_uri:
        folder = join_uri(settings.output_uri, "dataset")
        for name in DATASET_FILES:
            publish_file(dataset_dir / name, join_uri(folder, name), storage_options)
        return {**summary, "published_uri": folder}
    return summary


def dataset_card(summary: dict) -> str:
    lines = [
        "# PointVid dataset card",
        "",
        f"Schema version {summary['schema_version']} (see docs/architecture.md). Input: {summary['input']}. Profile: `{summary['profile']}`.",
        "",
        f"- Input rows: {summary['input_rows']}; accepted samples: {summary['accepted']}; rejected: {summary['rejected']}.",
        f"- Shards: {len(summary['shards'])}; mean bytes per sample: {summary['bytes_per_sample'] / 1e6:.2f} MB.",
        "",
        "## Rejections by reason",
        "",
        *(["| reason | count |", "|---|---|"] if summary["rejections_by_reason"] else ["None."]),
        *[f"| {reason} | {count} |" for reason, count in summary["rejections_by_reason"].items()],
        "",
        "## Quality against ground truth (synthetic samples)",
        "",
    ]
    quality = summary["quality_vs_ground_truth"]
    if quality.get("raw"):
        lines += [
            f"Mean over {summary['synthetic_samples']} synthetic samples of each sample's figure; measured on frames 1-15 where the",
            "ground-truth point is visible. `tracked` = the query points, before / after the Kalman filter;",
            "`dense` = every foreground pixel of the Algorithm-1 point map (interpolated pixels included).",
            "",
            "| figure | tracked, raw | tracked, smoothed | dense point map |",
            "|---|---|---|---|",
        ]
        for label, name in QUALITY_FIELDS:
            cells = [quality.get(v, {}).get(name) for v in ("raw", "smoothed", "dense")]
            lines.append(f"| {label} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
        accel = quality.get("acceleration", {})
        lines += [
            "",
            f"Mean |acceleration| of tracked (u, v) in px/frame²: raw {accel.get('jitter_raw_px', float('nan')):.4f}, "
            f"smoothed {accel.get('jitter_smoothed_px', float('nan')):.4f}, ground truth {accel.get('jitter_truth_px', float('nan')):.4f}.",
        ]
    else:
        lines.append("No synthetic samples: no ground truth to compare with.")
    lines += ["", "## Backends", "", *[f"- {b}" for b in summary["backends"]], ""]
    lines += ["## Shards", "", "| shard | samples | bytes | md5 |", "|---|---|---|---|"]
    lines += [f"| {s['tar']} | {s['samples']} | {s['bytes']} | {s['md5']} |" for s in summary["shards"]]
    return "\n".join(lines) + "\n"
