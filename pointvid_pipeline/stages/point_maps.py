"""Stage "point_maps": sparse tracks -> dense (T, H, W, 3) point map (paper App. A, Algorithm 1 lines 3-14).

The tracker follows ~one pixel in 18 (grid 80x80 over 448x256); the video model wants a value at every
foreground pixel, like an extra RGB video. Algorithm 1: keep tracks that start in the foreground
mask, copy each onto its own pixel, and give every other foreground pixel the inverse-distance
weighted mean of its 3 nearest tracked pixels (nearest in frame-0 uv). Background stays 0.

Index convention: pixel (u, v) = (column, row) lives at array index [v, u]; `query_uv[:, 0]` is u.
This is the vectorised form of `paper_reference.densify_point_map_literal`: one cKDTree query for all
untracked pixels and one sparse matrix product instead of a per-pixel loop. Both build the same tree
and query it with the same arguments, so neighbour ties are broken identically.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree


def densify_point_map(
    tracks_uvd: np.ndarray, query_uv: np.ndarray, foreground_mask: np.ndarray, k: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1: returns the (T, H, W, 3) float32 point map and the (H, W) bool map of tracked pixels.

    tracks_uvd: (T, N, 3) (smoothed) tracks; query_uv: (N, 2) integer (u, v) pixels the tracker
    queried on frame 0 (P0 — exact, unlike tracks_uvd[0] which RTS smoothing may have moved);
    foreground_mask: (H, W) bool. Tracks starting in the background are discarded; if several tracks
    start on one pixel the first wins; with fewer than k foreground tracks all of them are used.
    Raises ValueError when no track starts in the foreground (nothing to interpolate from).
    """
    tracks_uvd = np.asarray(tracks_uvd)
    query_uv = np.asarray(query_uv)
    foreground_mask = np.asarray(foreground_mask, dtype=bool)
    frame_count, point_count, _ = tracks_uvd.shape
    height, width = foreground_mask.shape
    if query_uv.shape != (point_count, 2) or not np.issubdtype(query_uv.dtype, np.integer):
        raise ValueError(f"query_uv must be ({point_count}, 2) integers, got {query_uv.shape} {query_uv.dtype}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    query_uv = query_uv.astype(np.int64)  # v * width + u below must not overflow a narrow dtype
    u, v = query_uv[:, 0], query_uv[:, 1]
    if ((u < 0) | (u >= width) | (v < 0) | (v >= height)).any():
        raise ValueError(f"query_uv outside the {width}x{height} frame")

    in_foreground = foreground_mask[v, u]  # line 4: P1 = P0 ∩ M
    if not in_foreground.any():
        raise ValueError("no tracked point starts inside the foreground mask")
    p1_uv = query_uv[in_foreground]
    p1_tracks = tracks_uvd[:, in_foreground, :]
    dense = np.zeros((frame_count, height, width, 3), dtype=np.float32)  # line 1

    # Lines 7-8: a pixel is tracked if some P1 starts on it; np.unique returns each pixel's first track.
    tracked_flat, first_track = np.unique(p1_uv[:, 1] * width + p1_uv[:, 0], return_index=True)
    tracked_v, tracked_u = np.divmod(tracked_flat, width)
    dense[:, tracked_v, tracked_u, :] = p1_tracks[:, first_track, :]
    tracked = np.zeros((height, width), dtype=bool)
    tracked[tracked_v, tracked_u] = True

    # Lines 10-11: every untracked foreground pixel from its k nearest tracked pixels, weights 1/distance.
    untracked_v, untracked_u = np.nonzero(foreground_mask & ~tracked)
    if len(untracked_u):
        tree = cKDTree(p1_uv.astype(np.float64))  # line 5
        neighbour_ranks = list(range(1, min(k, len(p1_uv)) + 1))
        pixels = np.stack([untracked_u, untracked_v], axis=1).astype(np.float64)
        distances, ind = tree.query(pixels, k=neighbour_ranks)
        weights = 1.0 / distances  # distances >= 1: an untracked pixel never coincides with a P1 pixel
        weights /= weights.sum(axis=1, keepdims=True)
        # Interpolation as a sparse (pixels x tracks) weight matrix times the (tracks, T*3) track rows;
        # each output row accumulates its k terms in rank order, exactly like the literal loop.
        weight_matrix = sparse.csr_matrix(
            (weights.ravel(), ind.ravel(), np.arange(0, weights.size + 1, weights.shape[1])),
            shape=(len(pixels), len(p1_uv)),
        )
        p1_rows = p1_tracks.transpose(1, 0, 2).reshape(len(p1_uv), frame_count * 3).astype(np.float64)
        interpolated = weight_matrix @ p1_rows
        dense[:, untracked_v, untracked_u, :] = interpolated.reshape(-1, frame_count, 3).transpose(1, 0, 2)
    return dense, tracked
