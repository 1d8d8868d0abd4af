"""How close the shipped point maps are to the renderer's ground truth: per object, scene, camera motion.

What is measured is what a consumer gets: the point map read back from the shard (float16), on its
valid pixels only, split into pixels that carry their own track ("tracked") and interpolated ones; on
frames 1-15, with the query frame 0 reported apart. Per group of pixels:
- median 2D error (px), share within 1 px, median relative depth error, on ground-truth-visible
  point-frames;
- TAP-Vid 2D and TAPVid-3D scores (`tapvid_metrics`, tapnet's definitions; 3D without scale
  alignment: our depth is metric) using the shipped visibility;
- per object, its median 2D error at its last frame in view (the clip's last, or the last in which the ground
  truth sees it): an object above LOST_OBJECT_PX is "lost".
Scenes are single videos; a camera motion's and the pooled figures are plain means over scenes
(tapnet averages per video the same way).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from pointvid_pipeline.clip import unproject
from pointvid_pipeline.evaluation.tapvid_metrics import tapvid3d_metrics, tapvid_2d_metrics
from pointvid_pipeline.evaluation.track_errors import last_seen_median_error
from pointvid_pipeline.storage.shard_format import load_points, read_samples, sample_intrinsics

LOST_OBJECT_PX = 8.0  # median 2D error at its last frame in view above which an object counts as lost
FRAME_SETS = {"1-15": slice(1, None), "query": slice(0, 1)}
SUBSETS = ("all", "tracked", "interpolated")
HEADLINE = (
    ("median 2D error (px)", "median_px_error"),
    ("within 1 px", "within_1px"),
    ("median rel. depth error", "median_rel_depth_error"),
    ("TAP-Vid APD", "tapvid2d_average_pts_within_thresh"),
    ("TAP-Vid AJ", "tapvid2d_average_jaccard"),
    ("TAP-Vid OA", "tapvid2d_occlusion_accuracy"),
    ("3D APD", "tapvid3d_average_pts_within_thresh"),
    ("3D-AJ", "tapvid3d_average_jaccard"),
    ("3D OA", "tapvid3d_occlusion_accuracy"),
)


def pixel_figures(pred_uvd, pred_visible, gt_uvd, gt_visible, intrinsics, frames: slice) -> dict[str, float]:
    """Figures of (T, M, 3) predicted vs true (u, v, d) of M pixels on `frames`; intrinsics (T, 3, 3) K of every frame."""
    evaluate = np.zeros(gt_visible.shape, bool)
    evaluate[frames] = True
    seen = gt_visible & evaluate
    error = np.linalg.norm(pred_uvd[..., :2] - gt_uvd[..., :2], axis=-1)
    figures: dict[str, float] = {"point_frames": int(evaluate.sum()), "visible_point_frames": int(seen.sum())}
    if seen.any():
        relative_depth = np.abs(pred_uvd[..., 2] - gt_uvd[..., 2])[seen] / np.maximum(gt_uvd[..., 2][seen], 1e-6)
        figures.update(median_px_error=float(np.median(error[seen])), within_1px=float(np.mean(error[seen] < 1.0)), median_rel_depth_error=float(np.median(relative_depth)))
    for name, value in tapvid_2d_metrics(pred_uvd[..., :2], pred_visible, gt_uvd[..., :2], gt_visible, evaluate=evaluate).items():
        figures[f"tapvid2d_{name}"] = value
    pred_xyz, gt_xyz = unproject(pred_uvd, intrinsics), unproject(gt_uvd, intrinsics)
    for name, value in tapvid3d_metrics(pred_xyz, pred_visible, gt_xyz, gt_visible, intrinsics, evaluate=evaluate).items():
        if name != "scale":
            figures[f"tapvid3d_{name}"] = value
    return figures


def sample_rows(key: str, camera: str, points: dict, labels: np.ndarray, object_names: list[str], intrinsics: np.ndarray, truth_uvd: np.ndarray, truth_visible: np.ndarray) -> list[dict]:
    """One row per (object or "all", pixel subset, frame set) of one sample."""
    uvd = points["uvd"].astype(np.float64)
    visible, valid, tracked = points["visible"], points["valid"], points["tracked"]
    truth_uvd = np.asarray(truth_uvd, np.float64)
    groups = [(object_id, name, labels == object_id) for object_id, name in enumerate(object_names, 1)]
    rows = []
    for object_id, name, region in groups + [(0, "all", labels > 0)]:
        shipped = region & valid
        base = {"key": key, "camera": camera, "object_id": object_id, "object": name, "pixels": int(region.sum()), "removed_pixels": int((region & ~valid).sum())}
        for subset in SUBSETS:
            pixels = shipped & {"all": True, "tracked": tracked, "interpolated": ~tracked}[subset]
            for frame_set, frames in FRAME_SETS.items():
                row = {**base, "subset": subset, "frames": frame_set, "shipped_pixels": int(pixels.sum())}
                if pixels.any():
                    row.update(pixel_figures(uvd[:, pixels], visible[:, pixels], truth_uvd[:, pixels], truth_visible[:, pixels], intrinsics, frames))
                    if subset == "all" and frame_set == "1-15":
                        row["last_frame_median_px"] = last_seen_median_error(uvd[:, pixels], truth_uvd[:, pixels], truth_visible[:, pixels])
                rows.append(row)
    return rows


def shard_samples_with_truth(data_dir: Path, shards: list[Path]) -> Iterator[tuple[str, dict, dict, np.ndarray, dict] | tuple[str, None, None, None, None]]:
    """(key, sample JSON, points, labels, truth arrays) of every synthetic sample in the `shards` of `data_dir`.

    The truth comes from the clips stage's files beside the shards; a sample whose truth is gone is
    yielded with None so the caller can say so rather than skip it silently.
    """
    for tar in shards:
        for key, members in read_samples(tar).items():
            meta = json.loads(members["json"])
            if not meta.get("synthetic"):
                continue
            truth_dir = data_dir / "stages" / "clips" / tar.stem / key
            try:
                truth = {name: np.load(truth_dir / f"truth_{name}.npy", mmap_mode="r") for name in ("track_uvd", "track_visible")}
            except FileNotFoundError:
                yield key, None, None, None, None
                continue
            labels = np.asarray(Image.open(io.BytesIO(members["mask.png"])), dtype=np.int32)
            yield key, meta, load_points(members["points.npz"]), labels, truth


def camera_of(meta: dict) -> str:
    source = meta.get("source", {})
    return source.get("camera") or meta["key"].rsplit("_", 1)[-1]


def evaluate_dataset(data_dir: Path, shards: list[Path] | None = None, progress: bool = False) -> tuple[list[dict], list[str]]:
    """Rows for every synthetic sample in `shards` (default: all of `data_dir/shards`), and the keys without ground truth."""
    from tqdm import tqdm

    shards = sorted((data_dir / "shards").glob("*.tar")) if shards is None else shards
    rows, missing = [], []
    for key, meta, points, labels, truth in tqdm(shard_samples_with_truth(data_dir, shards), desc="evaluate", unit="sample", disable=not progress):
        if meta is None:
            missing.append(key)
            continue
        rows += sample_rows(key, camera_of(meta), points, labels, list(meta["objects"]), sample_intrinsics(meta), truth["track_uvd"], truth["track_visible"])
    return rows, missing


def summarise(rows: list[dict]) -> dict:
    """Scene, camera-motion and pooled figures (means over scenes) and the lost objects."""
    scenes = {(r["key"], r["subset"], r["frames"]): r for r in rows if r["object"] == "all"}
    keys = sorted({r["key"] for r in rows})
    cameras = sorted({r["camera"] for r in rows})
    camera_of_key = {r["key"]: r["camera"] for r in rows}

    def mean_over(selected_keys, subset, frames):
        picked = [scenes[(k, subset, frames)] for k in selected_keys if (k, subset, frames) in scenes]
        return {name: float(np.nanmean([p.get(name, np.nan) for p in picked])) if picked else float("nan") for _, name in HEADLINE}

    objects = [r for r in rows if r["object"] != "all" and r["subset"] == "all" and r["frames"] == "1-15"]
    lost = [{"key": r["key"], "object": r["object"], "last_frame_median_px": r["last_frame_median_px"]} for r in objects if r.get("last_frame_median_px", 0) > LOST_OBJECT_PX]
    return {
        "scenes": len(keys),
        "objects": len(objects),
        "removed_objects": sum(1 for r in objects if r["shipped_pixels"] == 0),
        "lost_objects_shipped": lost,
        "pooled": {f"{subset}/{frames}": mean_over(keys, subset, frames) for subset in SUBSETS for frames in FRAME_SETS},
        "by_camera": {camera: mean_over([k for k in keys if camera_of_key[k] == camera], "all", "1-15") for camera in cameras},
    }


def _cell(value) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def markdown_tables(rows: list[dict], summary: dict) -> str:
    """The tables `pointvid evaluate` prints and the dataset card shows."""
    header = "| " + " | ".join(label for label, _ in HEADLINE) + " |"
    rule = "|" + "---|" * (len(HEADLINE) + 1)
    lines = [
        f"{summary['scenes']} synthetic scenes, {summary['objects']} objects; {summary['removed_objects']} objects removed by the gate; "
        f"objects shipped whose median error at their last frame in view exceeds {LOST_OBJECT_PX:g} px: **{len(summary['lost_objects_shipped'])}**.",
        "",
        "### Pooled (mean over scenes)",
        "",
        "| pixels / frames " + header,
        rule,
    ]
    lines += [f"| {name} | " + " | ".join(_cell(figures[n]) for _, n in HEADLINE) + " |" for name, figures in summary["pooled"].items()]
    lines += ["", "### Per camera motion (all shipped pixels, frames 1-15)", "", "| camera " + header, rule]
    lines += [f"| {camera} | " + " | ".join(_cell(figures[n]) for _, n in HEADLINE) + " |" for camera, figures in summary["by_camera"].items()]
    lines += ["", "### Per scene and object (all shipped pixels, frames 1-15)", "", "| scene | object | shipped px | removed px | last-frame error (px) " + header, "|---|---|---|---" + rule]
    for r in rows:
        if r["subset"] == "all" and r["frames"] == "1-15":
            lines.append(f"| {r['key']} | {r['object']} | {r['shipped_pixels']} | {r['removed_pixels']} | {_cell(r.get('last_frame_median_px'))} | " + " | ".join(_cell(r.get(n)) for _, n in HEADLINE) + " |")
    return "\n".join(lines) + "\n"
