"""`pointvid stats`: what was rejected and why, and how well the accepted samples are tracked.

Sources, all under the data directory the `dataset` asset wrote into:
- rejection reasons: `dataset/rejections.parquet` (one ledger row per rejected input row);
- visible fractions: each accepted sample's `stats.tracks_3d` in `dataset/samples.parquet` (the
  same per-stage stats as the shard index's `sample_meta`): `visible_fraction` = share of
  (track, frame) pairs the tracker marked visible, all query points; `foreground_tracks_visible`
  = share of foreground tracks visible in at least half the frames;
- track lengths: the shards carry no visibility, so the number of frames each query point is
  visible (of 16, frame 0 included; not necessarily consecutive) is counted from the tracker's
  `stages/tracks_3d/<partition>/<key>/visibility.npy` beside `dataset/`. Samples whose stage
  files are gone are counted and named, not guessed.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

VISIBLE_FIELDS = (("visible fraction (track-frames)", "visible_fraction"), ("foreground tracks visible >= half", "foreground_tracks_visible"))


@dataclass
class DatasetStats:
    input_rows: int
    accepted: int
    rows_without_shard: int  # input rows of partitions with no finished shard: neither accepted nor rejected yet
    rejections: list[tuple[str, int]]  # (reason, count), most frequent first
    visible: dict[str, np.ndarray]  # label -> one value per accepted sample
    track_lengths: np.ndarray  # one value per track of every accepted sample with stage files
    track_length_samples: int
    missing_stage_files: list[str] = field(default_factory=list)  # sample keys without tracks_3d/visibility.npy


def collect(dataset_dir: Path) -> DatasetStats:
    """Read the dataset folder (and the tracker's stage files beside it) into the figures shown."""
    dataset_dir = Path(dataset_dir)
    missing = [name for name in ("samples.parquet", "rejections.parquet", "summary.json") if not (dataset_dir / name).exists()]
    if missing:
        raise FileNotFoundError(f"{dataset_dir} is not a dataset folder (missing {', '.join(missing)}); materialize the `dataset` asset or run `pointvid run` first")
    samples = pq.read_table(dataset_dir / "samples.parquet").to_pylist()
    rejections = pq.read_table(dataset_dir / "rejections.parquet").to_pylist()
    summary = json.loads((dataset_dir / "summary.json").read_text())
    counts: dict[str, int] = {}
    for row in rejections:
        counts[row["reason"]] = counts.get(row["reason"], 0) + 1
    stages_dir = dataset_dir.parent / "stages" / "tracks_3d"
    visible = {label: [] for label, _ in VISIBLE_FIELDS}
    lengths, with_files, without = [], 0, []
    for sample in tqdm(samples, desc="accepted samples", unit="sample"):
        tracking = json.loads(sample["stats"]).get("tracks_3d", {})
        for label, name in VISIBLE_FIELDS:
            if name in tracking:
                visible[label].append(tracking[name])
        path = stages_dir / Path(sample["shard"]).stem / sample["key"] / "visibility.npy"
        if path.exists():
            lengths.append(np.load(path).sum(axis=0))
            with_files += 1
        else:
            without.append(sample["key"])
    return DatasetStats(
        input_rows=summary.get("input_rows", len(samples) + len(rejections)),
        accepted=len(samples),
        rows_without_shard=summary.get("rows_without_shard", 0),
        rejections=sorted(counts.items(), key=lambda item: (-item[1], item[0])),
        visible={label: np.asarray(values, float) for label, values in visible.items()},
        track_lengths=np.concatenate(lengths).astype(int) if lengths else np.zeros(0, int),
        track_length_samples=with_files,
        missing_stage_files=without,
    )


def _distribution_line(label: str, values: np.ndarray, count_label: str, fmt: str) -> str:
    if not values.size:
        return f"{label:<36} {'-':>8} {'-':>8} {'-':>8}  (no {count_label})"
    low, mid, high = np.min(values), np.median(values), np.max(values)
    return f"{label:<36} {low:>8{fmt}} {mid:>8{fmt}} {high:>8{fmt}}  ({values.size} {count_label})"


def format_report(stats: DatasetStats) -> str:
    def share(count: int) -> str:
        return f"{100 * count / stats.input_rows:5.1f}%" if stats.input_rows else "    -"

    width = max([len("accepted"), *(len(reason) for reason, _ in stats.rejections)])
    rejected = sum(count for _, count in stats.rejections)
    unfinished = f", {stats.rows_without_shard} in partitions without a finished shard" if stats.rows_without_shard else ""
    lines = [f"{stats.input_rows} input rows: {stats.accepted} accepted, {rejected} rejected{unfinished}", "",
             f"{'reason':<{width}}  {'count':>6}  share", f"{'accepted':<{width}}  {stats.accepted:>6}  {share(stats.accepted)}"]
    lines += [f"{reason:<{width}}  {count:>6}  {share(count)}" for reason, count in stats.rejections]
    if not stats.rejections:
        lines.append("(no rejections)")
    lines += ["", f"{'accepted samples':<36} {'min':>8} {'median':>8} {'max':>8}"]
    lines += [_distribution_line(label, values, "samples", ".3f") for label, values in stats.visible.items()]
    lines.append(_distribution_line("track length (visible frames of 16)", stats.track_lengths, f"tracks of {stats.track_length_samples} samples", ".0f"))
    if stats.missing_stage_files:
        shown = ", ".join(stats.missing_stage_files[:5]) + (", ..." if len(stats.missing_stage_files) > 5 else "")
        lines.append(f"track length: {len(stats.missing_stage_files)} samples have no stages/tracks_3d files beside the dataset ({shown})")
    return "\n".join(lines)


def stats_figure(stats: DatasetStats) -> bytes:
    """PNG: input rows by outcome; per-sample visible fractions; per-track visible frames."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(13, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    bars, fractions, lengths = fig.subplots(1, 3, width_ratios=(1.2, 1, 1))

    names = ["accepted", *(reason for reason, _ in stats.rejections)]
    counts = [stats.accepted, *(count for _, count in stats.rejections)]
    positions = np.arange(len(names))[::-1]
    bars.barh(positions, counts, height=0.6, color=["#4c9f70", *["#d1603d"] * len(stats.rejections)])
    bars.set_yticks(positions, names, fontsize=8)
    for y, count in zip(positions, counts):
        bars.annotate(f" {count} ({100 * count / max(stats.input_rows, 1):.0f}%)", (count, y), va="center", fontsize=8)
    bars.set_xlim(0, max(counts) * 1.35 or 1)
    bars.set_xlabel("input rows")
    bars.xaxis.set_major_locator(MaxNLocator(integer=True))
    bars.set_title(f"{stats.input_rows} input rows by outcome" + ("" if stats.rejections else " (no rejections)"), fontsize=10)

    for (label, values), colour in zip(stats.visible.items(), ("#3b6fb6", "#e3a21a")):
        if values.size:
            fractions.hist(values, bins=np.linspace(0, 1, 21), histtype="stepfilled", alpha=0.55, color=colour, edgecolor=colour, label=f"{label}, median {np.median(values):.2f}")
            fractions.axvline(np.median(values), color=colour, linestyle="--", linewidth=1)
    fractions.set_xlim(0, 1)
    fractions.set_xlabel("fraction")
    fractions.set_ylabel("samples")
    fractions.yaxis.set_major_locator(MaxNLocator(integer=True))
    fractions.set_title(f"visibility per accepted sample ({stats.accepted})", fontsize=10)
    fractions.legend(fontsize=7, loc="upper left")

    frame_count = int(max(16, stats.track_lengths.max(initial=0)))
    lengths.hist(stats.track_lengths, bins=np.arange(0.5, frame_count + 1.5), color="#6a4c93")
    lengths.set_xlim(0.5, frame_count + 0.5)
    lengths.set_xticks([1, *range(4, frame_count + 1, 4)])
    if stats.track_lengths.size:
        median = np.median(stats.track_lengths)
        lengths.axvline(median, color="black", linestyle="--", linewidth=1)
        lengths.annotate(f"median {median:g} ", (median, 0.95), xycoords=("data", "axes fraction"), ha="right", va="top", fontsize=8)
    lengths.set_xlabel(f"frames visible (of {frame_count})")
    lengths.set_ylabel("tracks")
    note = f"{stats.track_lengths.size} tracks, {stats.track_length_samples} samples"
    if stats.missing_stage_files:
        note += f"; {len(stats.missing_stage_files)} without stage files"
    lengths.set_title(f"track length ({note})", fontsize=10)

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
