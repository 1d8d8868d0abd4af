"""Literal, slow implementations of the post-processing, kept as the ground truth for the fast ones.

`smoothing.kalman_filter_xyz` and `point_maps.densify_point_map` are tested for equality against
these functions and benchmarked against them (benchmarks/postprocess.py). They are written to read
like the paper (Appendix A, Algorithm 1) and like a textbook filterpy loop, not to be fast:
do not call them from pipeline stages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from filterpy.common import Q_discrete_white_noise
from filterpy.kalman import KalmanFilter, rts_smoother
from scipy.spatial import cKDTree

if TYPE_CHECKING:
    from pointvid_pipeline.stages.smoothing import KalmanConfig


def constant_velocity_filter(first_xyz: np.ndarray, config: KalmanConfig) -> KalmanFilter:
    """One filterpy filter with state [x, vx, y, vy, z, vz], dt = 1 frame, started at `first_xyz` at rest."""
    kf = KalmanFilter(dim_x=6, dim_z=3)
    kf.F = np.kron(np.eye(3), np.array([[1.0, 1.0], [0.0, 1.0]]))
    kf.H = np.kron(np.eye(3), np.array([[1.0, 0.0]]))
    kf.R = config.measurement_noise * np.eye(3)
    kf.Q = Q_discrete_white_noise(dim=2, dt=1.0, var=config.process_noise, block_size=3)
    kf.x = np.zeros((6, 1))
    kf.x[0::2, 0] = first_xyz
    kf.P = np.diag(np.tile([config.measurement_noise, config.initial_velocity_variance], 3))
    return kf


def kalman_smooth_filterpy(xyz: np.ndarray, visibility: np.ndarray, config: KalmanConfig) -> np.ndarray:
    """Per-point filterpy loop: (T, N, 3) camera-space tracks -> (T, N, 3) filtered (+ RTS) positions.

    Frame 0 is the initial state; frames 1..T-1 predict then update, an occluded frame is predict-only.
    """
    frame_count, point_count, _ = xyz.shape
    smoothed = np.empty((frame_count, point_count, 3))
    for n in range(point_count):
        kf = constant_velocity_filter(xyz[0, n], config)
        means, covariances = [kf.x.copy()], [kf.P.copy()]
        for t in range(1, frame_count):
            kf.predict()
            kf.update(xyz[t, n] if visibility[t, n] else None)
            means.append(kf.x.copy())
            covariances.append(kf.P.copy())
        means, covariances = np.array(means), np.array(covariances)
        if config.rts_smoothing:
            means, _, _, _ = rts_smoother(means, covariances, [kf.F] * frame_count, [kf.Q] * frame_count)
        smoothed[:, n, :] = means[:, 0::2, 0]
    return smoothed


def densify_point_map_literal(
    tracks_uvd: np.ndarray, query_uv: np.ndarray, foreground_mask: np.ndarray, k: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1 as a per-pixel loop; same contract as `point_maps.densify_point_map`.

    Pixel (u, v) is array index [v, u] (rows are v). The "is this pixel tracked" test uses a dict of
    first occurrences, which is what "found P1[j] = (u, v)" means when duplicates exist.
    """
    frame_count = tracks_uvd.shape[0]
    height, width = foreground_mask.shape
    dense = np.zeros((frame_count, height, width, 3), dtype=np.float32)
    tracked = np.zeros((height, width), dtype=bool)

    in_mask = foreground_mask[query_uv[:, 1], query_uv[:, 0]]  # line 4: P1 = P0 ∩ M
    p1_uv = query_uv[in_mask]
    p1_tracks = tracks_uvd[:, in_mask, :].astype(np.float64)
    if len(p1_uv) == 0:
        raise ValueError("no tracked point starts inside the foreground mask")
    tree = cKDTree(p1_uv.astype(np.float64))  # line 5
    neighbour_ranks = list(range(1, min(k, len(p1_uv)) + 1))

    first_track_at_pixel: dict[tuple[int, int], int] = {}
    for j, (u, v) in enumerate(p1_uv.tolist()):
        first_track_at_pixel.setdefault((u, v), j)

    for v in range(height):
        for u in range(width):
            if not foreground_mask[v, u]:  # line 6: foreground pixels only
                continue
            j = first_track_at_pixel.get((u, v))
            if j is not None:  # lines 7-8: tracked pixel
                dense[:, v, u, :] = p1_tracks[:, j, :]
                tracked[v, u] = True
            else:  # lines 10-11: inverse-distance mean of the k nearest tracked pixels
                distances, ind = tree.query([float(u), float(v)], k=neighbour_ranks)
                weights = 1.0 / distances
                weights /= weights.sum()
                interpolated = np.zeros((frame_count, 3))
                for weight, neighbour in zip(weights, ind):  # rank order, nearest first
                    interpolated += weight * p1_tracks[:, neighbour, :]
                dense[:, v, u, :] = interpolated
    return dense, tracked
