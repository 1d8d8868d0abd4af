"""Error figures of tracks against a renderer's ground truth (synthetic clips only)."""

from __future__ import annotations

import numpy as np

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
