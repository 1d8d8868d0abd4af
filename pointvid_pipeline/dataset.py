"""Stage `dataset`: roll all shards up into Parquet manifests and a dataset card (published too when `output_uri` is set)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pointvid_pipeline.evaluation.point_map_accuracy import evaluate_dataset, markdown_tables, summarise
from pointvid_pipeline.evaluation.track_errors import stage_track_rows
from pointvid_pipeline.pipeline import partition_rows
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.publish import join_uri, publish_file
from pointvid_pipeline.storage.shard_format import SCHEMA_VERSION
from pointvid_pipeline.storage.stage_store import atomic_path, atomic_write_bytes, atomic_write_json

EVALUATION_FILE = "evaluation.parquet"
DATASET_FILES = ("samples.parquet", "rejections.parquet", EVALUATION_FILE, "summary.json", "README.md")  # published in this order, card last
TRACK_FIGURES = ("raw_median_px_error", "raw_within_1px", "raw_acceleration_px", "smoothed_median_px_error", "smoothed_within_1px", "smoothed_acceleration_px", "truth_acceleration_px")
def _write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


SAMPLE_SCHEMA = pa.schema(
    [("key", pa.string()), ("shard", pa.string()), ("row", pa.int64()), ("caption", pa.string()), ("objects", pa.list_(pa.string())),
     ("synthetic", pa.bool_()), ("bytes", pa.int64()), ("source", pa.string()), ("backends", pa.string()), ("stats", pa.string())]
)
REJECTION_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.string()), ("row", pa.int64()), ("stage", pa.string()), ("reason", pa.string()), ("class", pa.string()), ("detail", pa.string()), ("attempts", pa.int64())])


def ground_truth_quality(settings: PipelineSettings, partitions: list[str], metas: list[dict]) -> tuple[dict, str]:
    """The point-map evaluation of the shipped synthetic samples, the tracks' figures, and which stages were oracles.

    Returns the summary's `quality_vs_ground_truth` and the card's markdown section; the per-row figures go
    to `evaluation.parquet` beside the card.
    """
    shards = [settings.shards_dir / f"{p}.tar" for p in partitions if (settings.shards_dir / f"{p}.json").exists()]
    rows, missing = evaluate_dataset(settings.data_dir, shards)
    if not rows:
        (settings.dataset_dir / EVALUATION_FILE).unlink(missing_ok=True)  # never leave an earlier run's figures
        gone = f" (the ground truth of {len(missing)} synthetic samples was removed from stages/: POINTVID_KEEP_STAGE_FILES=none)" if missing else ""
        return {}, f"No synthetic samples with ground truth: nothing to compare with{gone}.\n"
    write_evaluation_parquet(settings.dataset_dir / EVALUATION_FILE, rows)
    point_map = summarise(rows)
    track_rows = stage_track_rows(settings.data_dir, partitions)
    tracks = {
        scope: {name: float(np.nanmean([r.get(name, np.nan) for r in scoped])) for name in TRACK_FIGURES}
        for scope in ("all", "shipped") if (scoped := [r for r in track_rows if r["scope"] == scope])
    }
    oracles = sorted({f"{stage}: {tag}" for m in metas if m["synthetic"] for stage, tag in m["backends"].items() if tag.startswith("renderer")})
    quality = {"point_map": point_map, "tracks": tracks, "oracles": oracles, "samples_without_truth": missing}
    return quality, quality_markdown(quality, rows)


def quality_markdown(quality: dict, rows: list[dict]) -> str:
    tracks = quality["tracks"]
    lines = [
        "Measured on what ships: each synthetic sample's point map read back from its shard, on its valid pixels,",
        "against the renderer's ground truth (`pointvid evaluate`, `evaluation/point_map_accuracy.py`). TAP-Vid and",
        "TAPVid-3D scores follow tapnet's definitions (δ = 1, 2, 4, 8, 16 px at 256 px; 3D without scale alignment).",
        "",
        "**Oracle stages** (ground truth used as input, so their own error is zero by construction): "
        + (", ".join(f"`{o}`" for o in quality["oracles"]) or "none") + ".",
        "",
        markdown_tables(rows, quality["point_map"]),
    ]
    if tracks:
        lines += [
            "### Foreground query tracks (stage files; frames 1-15, ground-truth visible; mean over samples)",
            "",
            "All: every object's tracks, lost ones included. Shipped: the objects the quality gate kept.",
            "",
            "| tracks | median 2D error (px) | within 1 px | mean abs. acceleration (px/frame²) | acceleration / ground truth's |",
            "|---|---|---|---|---|",
        ]
        for scope, figures in tracks.items():
            truth = figures["truth_acceleration_px"]
            lines += [
                f"| {scope}, tracker (raw) | {figures['raw_median_px_error']:.4f} | {figures['raw_within_1px']:.3f} | {figures['raw_acceleration_px']:.3f} | {figures['raw_acceleration_px'] / truth:.2f} |",
                f"| {scope}, after smoothing | {figures['smoothed_median_px_error']:.4f} | {figures['smoothed_within_1px']:.3f} | {figures['smoothed_acceleration_px']:.3f} | {figures['smoothed_acceleration_px'] / truth:.2f} |",
                f"| {scope}, ground truth | 0 | 1 | {truth:.3f} | 1 |",
            ]
        lines.append("")
    if quality["samples_without_truth"]:
        lines.append(f"Samples whose ground truth is no longer beside the shards (not evaluated): {', '.join(quality['samples_without_truth'])}.")
    return "\n".join(lines) + "\n"


def write_evaluation_parquet(path: Path, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def build_dataset(settings: PipelineSettings, partitions: list[str], storage_options: dict | None = None) -> dict:
    """Collect every partition's shard index; write samples/rejections Parquet, card and summary.

    `input_rows` counts the input's rows (manifest or scenes) in `partitions`, not the shards' contents:
    rows of a partition without a finished shard show as `rows_without_shard`.

    With `settings.output_uri` the files are then published to `<output_uri>/dataset/` and the
    returned summary (not summary.json) names that folder as `published_uri`. `storage_options`
    as in `write_partition_shard`: None reads POINTVID_STORAGE_OPTIONS.
    """
    rows_by_partition = partition_rows(settings)
    samples, rejections, metas, shards, unfinished = [], [], [], [], []
    for partition in partitions:
        index_path = settings.shards_dir / f"{partition}.json"
        if not index_path.exists():
            unfinished.append(partition)
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
        rejections += [{**{k: r.get(k) for k in ("key", "row", "stage", "reason", "class", "detail", "attempts")}, "shard": index["tar"]} for r in index["rejected"]]
    dataset_dir = settings.dataset_dir
    _write_parquet(dataset_dir / "samples.parquet", samples, SAMPLE_SCHEMA)
    _write_parquet(dataset_dir / "rejections.parquet", rejections, REJECTION_SCHEMA)
    quality, quality_section = ground_truth_quality(settings, partitions, metas)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "input": settings.manifest or settings.scenes or "default synthetic scenes",
        "profile": settings.profile,
        "shards": shards,
        "accepted": len(samples),
        "rejected": len(rejections),
        "input_rows": sum(len(rows_by_partition.get(p, [])) for p in partitions),
        "rows_without_shard": sum(len(rows_by_partition.get(p, [])) for p in unfinished),
        "partitions_without_shard": unfinished,
        "rejections_by_reason": dict(sorted(Counter(r["reason"] for r in rejections).items())),
        "backends": sorted({f"{stage}: {tag}" for m in metas for stage, tag in m["backends"].items()}),
        "bytes_per_sample": float(np.mean([s["bytes"] for s in samples])) if samples else 0.0,
        "quality_vs_ground_truth": quality,
        "synthetic_samples": sum(1 for s in samples if s["synthetic"]),
    }
    atomic_write_json(dataset_dir / "summary.json", summary)
    atomic_write_bytes(dataset_dir / "README.md", dataset_card(summary, quality_section).encode())
    if settings.output_uri:
        folder = join_uri(settings.output_uri, "dataset")
        for name in (n for n in DATASET_FILES if (dataset_dir / n).exists()):
            publish_file(dataset_dir / name, join_uri(folder, name), storage_options)
        return {**summary, "published_uri": folder}
    return summary


def _first_names(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def dataset_card(summary: dict, quality_section: str) -> str:
    lines = [
        "# PointVid dataset card",
        "",
        f"Schema version {summary['schema_version']} (see docs/architecture.md). Input: {summary['input']}. Profile: `{summary['profile']}`.",
        "",
        f"- Input rows: {summary['input_rows']}; accepted samples: {summary['accepted']}; rejected: {summary['rejected']}"
        + (f"; in partitions without a finished shard: {summary['rows_without_shard']} ({_first_names(summary['partitions_without_shard'])})." if summary["partitions_without_shard"] else "."),
        f"- Shards: {len(summary['shards'])}; mean bytes per sample: {summary['bytes_per_sample'] / 1e6:.2f} MB.",
        "",
        "## Rejections by reason",
        "",
        *(["| reason | count |", "|---|---|"] if summary["rejections_by_reason"] else ["None."]),
        *[f"| {reason} | {count} |" for reason, count in summary["rejections_by_reason"].items()],
        "",
        "## Quality against ground truth (synthetic samples)",
        "",
        quality_section,
    ]
    lines += ["", "## Backends", "", *[f"- {b}" for b in summary["backends"]], ""]
    lines += ["## Shards", "", "| shard | samples | bytes | md5 |", "|---|---|---|---|"]
    lines += [f"| {s['tar']} | {s['samples']} | {s['bytes']} | {s['md5']} |" for s in summary["shards"]]
    return "\n".join(lines) + "\n"
