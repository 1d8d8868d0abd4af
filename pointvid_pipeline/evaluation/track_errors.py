"""Error figures of the sparse query tracks against a renderer's ground truth (synthetic clips only).

The point map is judged in `point_map_accuracy` (what ships); this judges the tracker and the smoother
on the foreground query tracks they produce, from the stage files beside the shards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pointvid_pipeline.storage.stage_store import StageStore

PIXEL_THRESHOLDS = (1, 2, 4)


def track_error_stats(pred_uvd: np.ndarray, gt_uvd: np.ndarray, gt_visible: np.ndarray) -> dict[str, float]:
    """Median 2D error (px), median relative depth error and fractions within 1/2/4 px.

    Measured on frames 1..T-1 (frame 0 is the query itself) where the ground-truth point is visible.
    """
    visible = gt_visible[1:]
    if not visible.any():
        return {}
    pred, gt = pred_uvd[1:][visible].astype(np.float64), gt_uvd[1:][visible].astype(np.float64)
    err_px = np.linalg.norm(pred[:, :2] - gt[:, :2], axis=1)
    rel_depth = np.abs(pred[:, 2] - gt[:, 2]) / np.maximum(gt[:, 2], 1e-6)
    stats = {"median_px_error": float(np.median(err_px)), "median_rel_depth_error": float(np.median(rel_depth))}
    for threshold in PIXEL_THRESHOLDS:
        stats[f"within_{threshold}px"] = float(np.mean(err_px <= threshold))
    return stats


def mean_abs_acceleration(uvd: np.ndarray) -> float:
    """Mean |second temporal difference| of (u, v) in px/frame^2: the jitter the Kalman filter removes."""
    accel = uvd[2:, :, :2].astype(np.float64) - 2 * uvd[1:-1, :, :2] + uvd[:-2, :, :2]
    return float(np.mean(np.linalg.norm(accel, axis=-1))) if accel.size else 0.0


def stage_track_rows(data_dir: Path, partitions: list[str]) -> list[dict]:
    """Per synthetic sample and scope: foreground query tracks raw (tracks_3d) and smoothed, against ground
    truth, and the mean |acceleration| of each beside the ground truth's own.

    Scope "all": every foreground track the smoother saw, lost objects included. Scope "shipped": the tracks
    of the objects the quality gate kept, in samples that reached the point map: the ones whose smoothing
    a consumer of the shards gets (a lost object's tracks jump, and no smoother makes them right).
    """
    store = StageStore(data_dir / "stages")
    rows = []
    for partition in partitions:
        index = store.read_index_if_present("smoothed_tracks", partition)
        gated = store.read_index_if_present("point_maps", partition)
        for key, meta in (index.accepted.items() if index else ()):
            if not meta["synthetic"]:
                continue
            clip = store.read_arrays("clips", partition, key)
            if not clip:  # removed after its shard was written (POINTVID_KEEP_STAGE_FILES)
                continue
            u, v = store.read_arrays("query_points", partition, key)["queries"].T
            labels = store.read_arrays("reference_masks", partition, key)["labels"][v, u]
            scopes = {"all": labels > 0}
            if gated and key in gated.accepted:
                removed = [g["object_id"] for g in gated.accepted[key].get("gate", {}).get("removed", [])]
                scopes["shipped"] = (labels > 0) & ~np.isin(labels, removed)
            arrays = {variant: store.read_arrays(stage, partition, key)["tracks"] for variant, stage in (("raw", "tracks_3d"), ("smoothed", "smoothed_tracks"))}
            for scope, points in scopes.items():
                if not points.any():
                    continue
                truth_uvd = clip["truth_track_uvd"][:, v[points], u[points]]
                truth_visible = clip["truth_track_visible"][:, v[points], u[points]]
                row = {"key": key, "scope": scope, "truth_acceleration_px": mean_abs_acceleration(truth_uvd)}
                for variant, tracks in arrays.items():
                    row.update({f"{variant}_{name}": value for name, value in track_error_stats(tracks[:, points], truth_uvd, truth_visible).items()})
                    row[f"{variant}_acceleration_px"] = mean_abs_acceleration(tracks[:, points])
                rows.append(row)
    return rows


def object_last_seen_errors(tracks: np.ndarray, query_labels: np.ndarray, truth_uvd: np.ndarray, truth_visible: np.ndarray) -> dict[int, float]:
    """Object id -> median 2D error of its query tracks at its last frame in view, over its ground-truth-visible
    points there: the figure by which an object counts as lost, judged before any gate.

    The last frame in view is the clip's last frame, or for an object hidden or gone by then the last frame 1..T-1
    in which the ground truth sees any of its points (an object 40 px off while it was seen, then hidden, is lost);
    NaN when it is seen in none. tracks (T, N, 3), truth_uvd (T, N, 3), truth_visible (T, N); query_labels (N,)
    frame-0 object ids.
    """
    return _per_object(last_seen_median_error, tracks, query_labels, truth_uvd, truth_visible)


def object_worst_frame_errors(tracks: np.ndarray, query_labels: np.ndarray, truth_uvd: np.ndarray, truth_visible: np.ndarray) -> dict[int, float]:
    """Object id -> the largest, over frames 1..T-1, of the median 2D error of its query tracks over its ground-truth-visible
    points (NaN when it is seen in none): a stricter test than `object_last_seen_errors`, by which a duck 27 px off at
    frame 6 and 7 px at its last frame in view is not lost. Arguments as there."""
    return _per_object(worst_frame_median_error, tracks, query_labels, truth_uvd, truth_visible)


def _per_object(error_of, tracks: np.ndarray, query_labels: np.ndarray, truth_uvd: np.ndarray, truth_visible: np.ndarray) -> dict[int, float]:
    """Object id -> `error_of` its (T, P) tracks, truth and truth visibility."""
    errors = {}
    for object_id in np.unique(query_labels[query_labels > 0]):
        mine = query_labels == object_id
        errors[int(object_id)] = error_of(tracks[:, mine], truth_uvd[:, mine], truth_visible[:, mine])
    return errors


def worst_frame_median_error(tracks: np.ndarray, truth_uvd: np.ndarray, truth_visible: np.ndarray) -> float:
    """The largest, over frames 1..T-1 in which the ground truth sees any of these (T, P) points, of the median 2D error
    over the points it sees; NaN when it sees none after frame 0."""
    errors = np.where(truth_visible, np.linalg.norm(tracks[..., :2] - truth_uvd[..., :2], axis=-1), np.nan)[1:]
    seen = truth_visible[1:].any(axis=1)
    return float(np.nanmedian(errors[seen], axis=1).max()) if seen.any() else float("nan")


def last_seen_median_error(tracks: np.ndarray, truth_uvd: np.ndarray, truth_visible: np.ndarray) -> float:
    """Median 2D error over the visible points of the last frame 1..T-1 in which the ground truth sees any of these
    (T, P) points; NaN when it sees none after frame 0 (the query frame, whose error is 0 by construction)."""
    seen_frames = np.flatnonzero(truth_visible[1:].any(axis=1)) + 1
    if not len(seen_frames):
        return float("nan")
    t = seen_frames[-1]
    seen = truth_visible[t]
    return float(np.median(np.linalg.norm(tracks[t, seen, :2] - truth_uvd[t, seen, :2], axis=-1)))
