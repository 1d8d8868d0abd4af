"""Stage "point_maps": sparse tracks -> dense (T, H, W, 3) point map with per-frame visibility (paper App. A).

The tracker follows ~one pixel in 18 (grid 80x80 over 448x256); the video model wants a value at every
foreground pixel, like an extra RGB video. Two ways to fill the untracked pixels from their 3 nearest
tracked pixels (nearest in frame-0 uv, weights 1/distance):

- "displacement" (default): a pixel keeps its own frame-0 (u, v) and depth and moves by the weighted
  mean of its neighbours' *displacements* from their frame-0 (u, v, d); neighbours come from the same
  object only (a cup's edge does not move with the table), and ties between equidistant neighbours
  are broken by the tracked pixel's row-major order, so the result does not depend on the KD-tree.
  With ground-truth tracks on the default scenes this is 0.34 px from the truth where Algorithm 1 as
  printed is 0.80 px.
- "paper": Algorithm 1 lines 3-14 as printed: every untracked pixel takes the weighted mean of its
  neighbours' *absolute* trajectories (so its own frame-0 position is lost), neighbours from any object.
  `densify_absolute_tracks` is the vectorised form of `paper_reference.densify_point_map_literal`: one
  cKDTree query for all untracked pixels and sparse matrix products instead of a per-pixel loop. Both
  build the same tree and query it with the same arguments, so neighbour ties are broken identically;
  the query is ~2/3 of its time (benchmarks/postprocess.py input), and another tree or query argument
  would break ties differently.

Visibility: a tracked pixel is seen when its tracker says so, an interpolated one when its neighbours'
weighted visibility is at least one half; both must also pass the depth test (inside the frame and not
behind the surface the depth map shows at its pixel).

Index convention: pixel (u, v) = (column, row) lives at array index [v, u]; `query_uv[:, 0]` is u.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

from pointvid_pipeline.clip import per_frame_intrinsics, project, rigid_fit, unproject
from pointvid_pipeline.settings import DENSIFICATION_METHODS

PRODUCT_ROWS = 4096  # pixels per sparse product in densify_absolute_tracks


def densify_absolute_tracks(
    tracks_uvd: np.ndarray, query_uv: np.ndarray, foreground_mask: np.ndarray, k: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1 as printed: the (T, H, W, 3) float32 point map and the (H, W) bool map of tracked pixels.

    tracks_uvd: (T, N, 3) (smoothed) tracks; query_uv: (N, 2) integer (u, v) pixels the tracker
    queried on frame 0 (P0 — exact, unlike tracks_uvd[0] which RTS smoothing may have moved);
    foreground_mask: (H, W) bool. Tracks starting in the background are discarded; if several tracks
    start on one pixel the first wins; with fewer than k foreground tracks all of them are used.
    Raises ValueError when no track starts in the foreground (nothing to interpolate from).
    The point map is a (T, H, W, 3) view of a pixel-major (H, W, T, 3) array: np.ascontiguousarray gives
    frame-major memory if a consumer needs it (the pipeline copies the valid pixels out anyway).
    """
    tracks_uvd = np.asarray(tracks_uvd)
    query_uv = np.asarray(query_uv)
    foreground_mask = np.asarray(foreground_mask, dtype=bool)
    frame_count, point_count, _ = tracks_uvd.shape
    height, width = foreground_mask.shape
    _check_queries(query_uv, point_count, width, height, k)
    query_uv = query_uv.astype(np.int64)  # v * width + u below must not overflow a narrow dtype
    u, v = query_uv[:, 0], query_uv[:, 1]

    in_foreground = foreground_mask[v, u]  # line 4: P1 = P0 ∩ M
    if not in_foreground.any():
        raise ValueError("no tracked point starts inside the foreground mask")
    p1_uv = query_uv[in_foreground]
    p1_rows = tracks_uvd.transpose(1, 0, 2)[in_foreground].reshape(len(p1_uv), frame_count * 3)  # row j: P1[j]'s T x 3 values
    # Line 1, pixel-major: row v * W + u holds pixel (u, v)'s T x 3 values, so each pixel is one contiguous write
    # (into (T, H, W, 3) it is T scattered 12-byte writes; the whole function took ~1.2x longer that way).
    pixel_rows = np.zeros((height * width, frame_count * 3), dtype=np.float32)

    # Lines 7-8: a pixel is tracked if some P1 starts on it; np.unique returns each pixel's first track.
    tracked_flat, first_track = np.unique(p1_uv[:, 1] * width + p1_uv[:, 0], return_index=True)
    pixel_rows[tracked_flat] = p1_rows[first_track]
    tracked = np.zeros((height, width), dtype=bool)
    tracked.reshape(-1)[tracked_flat] = True

    # Lines 10-11: every untracked foreground pixel from its k nearest tracked pixels, weights 1/distance.
    untracked_flat = np.flatnonzero(foreground_mask & ~tracked)
    if len(untracked_flat):
        tree = cKDTree(p1_uv.astype(np.float64))  # line 5
        neighbour_ranks = list(range(1, min(k, len(p1_uv)) + 1))
        pixels = np.empty((len(untracked_flat), 2))  # float64 (u, v), as the literal loop asks the tree
        pixels[:, 1], pixels[:, 0] = np.divmod(untracked_flat, width)
        distances, ind = tree.query(pixels, k=neighbour_ranks)
        weights = 1.0 / distances  # distances >= 1: an untracked pixel never coincides with a P1 pixel
        weights /= weights.sum(axis=1, keepdims=True)
        # Interpolation as a sparse (pixels x tracks) weight matrix times the (tracks, T*3) track rows;
        # each output row accumulates its k terms in rank order, exactly like the literal loop. A few
        # thousand pixels at a time, so each float64 product (1.5 MB) is copied out while still in cache.
        p1_rows = p1_rows.astype(np.float64)
        ind = ind.astype(np.int32)  # scipy's index dtype here: no check and copy per chunk
        for start in range(0, len(untracked_flat), PRODUCT_ROWS):
            chunk = slice(start, start + PRODUCT_ROWS)
            weight_matrix = sparse.csr_matrix(
                (weights[chunk].ravel(), ind[chunk].ravel(), np.arange(0, ind[chunk].size + 1, ind.shape[1], dtype=np.int32)),
                shape=(len(ind[chunk]), len(p1_uv)),
            )
            pixel_rows[untracked_flat[chunk]] = weight_matrix @ p1_rows
    dense = pixel_rows.reshape(height, width, frame_count, 3).transpose(2, 0, 1, 3)
    return dense, tracked


DEPTH_TOLERANCE = 0.03  # a point more than 3 % behind the depth map's surface is occluded


@dataclass
class PointMap:
    """uvd (T, H, W, 3) float32, 0 off `valid`; visible (T, H, W) bool; valid, tracked (H, W) bool."""

    uvd: np.ndarray
    visible: np.ndarray
    valid: np.ndarray
    tracked: np.ndarray


def densify_point_map(
    tracks_uvd: np.ndarray,
    track_visible: np.ndarray,
    query_uv: np.ndarray,
    labels: np.ndarray,
    depth: np.ndarray,
    intrinsics: np.ndarray,
    method: str = "displacement",
    k: int = 3,
    depth_tolerance: float = DEPTH_TOLERANCE,
) -> PointMap:
    """Dense point map of the labelled pixels of frame 0 from (T, N, 3) tracks of the (N, 2) query pixels.

    labels (H, W) int: 0 background, k > 0 object k; depth (T, H, W) metres, the depth the tracks were
    read from; intrinsics (T, 3, 3) K of every frame (or one (3, 3) K): frame t's tracks are lifted to 3D and
    the pixels' points projected back with frame t's K. With "displacement", an object no tracked pixel
    starts on is left out of `valid`. Raises ValueError when no track starts on an object.
    """
    if method not in DENSIFICATION_METHODS:
        raise ValueError(f"unknown densification {method!r}; expected one of {DENSIFICATION_METHODS}")
    labels = np.asarray(labels)
    foreground = labels > 0
    if method == "paper":
        uvd, tracked = densify_absolute_tracks(tracks_uvd, query_uv, foreground, k)
        # Foreground pixels only (a third of the frame or less); the background is never visible.
        track_seen = _pixel_track_visibility(track_visible, query_uv, foreground)[:, foreground]
        visible = np.zeros(uvd.shape[:3], bool)
        visible[:, foreground] = np.where(tracked[foreground], track_seen, True) & depth_test(uvd[:, foreground], depth, depth_tolerance)
        return PointMap(uvd, visible, foreground, tracked)
    intrinsics = per_frame_intrinsics(intrinsics, len(tracks_uvd))
    return _densify_displacements(np.asarray(tracks_uvd, np.float64), np.asarray(track_visible, bool), np.asarray(query_uv), labels, depth, intrinsics, k, depth_tolerance)


def _pixel_track_visibility(track_visible: np.ndarray, query_uv: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """(T, H, W) visibility of each tracked pixel's first track (as `densify_absolute_tracks` picks it)."""
    height, width = foreground.shape
    u, v = np.asarray(query_uv, np.int64).T
    on_object = foreground[v, u]
    flat, first = np.unique(v[on_object] * width + u[on_object], return_index=True)
    rows, cols = np.divmod(flat, width)
    out = np.zeros((len(track_visible), height, width), bool)
    out[:, rows, cols] = np.asarray(track_visible, bool)[:, np.flatnonzero(on_object)[first]]
    return out


def _densify_displacements(tracks_uvd, track_visible, query_uv, labels, depth, intrinsics, k, depth_tolerance) -> PointMap:
    """Each pixel = weighted mean of its neighbours' 3D positions + its own frame-0 offset from their
    weighted frame-0 position, turned with its object's best-fit rotation of that frame.

    That is the neighbours' displacement with the pixel's own start kept: exact when the object moves
    rigidly (a tumbling object's pixels do not all move alike, so plain displacement averaging is not),
    and plain 3D displacement interpolation when the fitted rotation is the identity.
    """
    frame_count = tracks_uvd.shape[0]
    height, width = labels.shape
    _check_queries(query_uv, tracks_uvd.shape[1], width, height, k)
    u, v = query_uv.astype(np.int64).T
    on_object = labels[v, u] > 0
    if not on_object.any():
        raise ValueError("no tracked point starts inside the foreground mask")
    flat, first = np.unique(v[on_object] * width + u[on_object], return_index=True)
    track_ids = np.flatnonzero(on_object)[first]  # one track per tracked pixel (its first), row-major order
    tracked_v, tracked_u = np.divmod(flat, width)
    tracked_uv = np.stack([tracked_u, tracked_v], axis=1)
    tracked_label = labels[tracked_v, tracked_u]
    track_xyz = unproject(tracks_uvd[:, track_ids], intrinsics)  # (T, P, 3) camera space
    visible_tracks = track_visible[:, track_ids]

    point_map = PointMap(
        uvd=np.zeros((frame_count, height, width, 3), np.float32),
        visible=np.zeros((frame_count, height, width), bool),
        valid=np.zeros((height, width), bool),
        tracked=np.zeros((height, width), bool),
    )
    point_map.tracked[tracked_v, tracked_u] = True
    for label in np.unique(labels[labels > 0]):
        members = np.flatnonzero(tracked_label == label)
        if not len(members):
            continue  # no query landed on this object: nothing to move its pixels with
        pixel_v, pixel_u = np.nonzero(labels == label)
        nearest, distance = nearest_tracked_pixels(tracked_uv[members], np.stack([pixel_u, pixel_v], axis=1), k)
        neighbours = members[nearest]
        weights = 1.0 / np.maximum(distance, 1e-12)
        weights[distance[:, 0] == 0] = np.eye(1, distance.shape[1])[0]  # a tracked pixel follows its own track
        weights /= weights.sum(axis=1, keepdims=True)
        rotations = rigid_fit(np.broadcast_to(track_xyz[:1, members], track_xyz[:, members].shape), track_xyz[:, members])[:, :3, :3] if len(members) >= 3 else np.eye(3)[None]
        start = unproject(np.stack([pixel_u, pixel_v, depth[0, pixel_v, pixel_u]], axis=1).astype(np.float64), intrinsics[0])
        # Weighted sums over the k neighbours one neighbour at a time: (T, M, 3) arrays, never a (T, M, k, 3) gather
        # (np.take: ~5x faster than track_xyz[:, index] here).
        centre = np.zeros((frame_count, len(pixel_v), 3))
        support = np.zeros((frame_count, len(pixel_v)))
        for j in range(neighbours.shape[1]):
            centre += weights[:, j, None] * np.take(track_xyz, neighbours[:, j], axis=1)
            support += weights[:, j] * visible_tracks[:, neighbours[:, j]]
        offset = start - centre[0]  # (M, 3) from the neighbours' centre at frame 0
        xyz = centre + offset @ rotations.transpose(0, 2, 1)
        points = project(xyz, intrinsics)
        seen = support >= 0.5
        point_map.uvd[:, pixel_v, pixel_u] = points
        point_map.visible[:, pixel_v, pixel_u] = seen & depth_test(points, depth, depth_tolerance)
        point_map.valid[pixel_v, pixel_u] = True
    return point_map


def _check_queries(query_uv: np.ndarray, point_count: int, width: int, height: int, k: int) -> None:
    if query_uv.shape != (point_count, 2) or not np.issubdtype(query_uv.dtype, np.integer):
        raise ValueError(f"query_uv must be ({point_count}, 2) integers, got {query_uv.shape} {query_uv.dtype}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    u, v = query_uv[:, 0], query_uv[:, 1]
    if ((u < 0) | (u >= width) | (v < 0) | (v >= height)).any():
        raise ValueError(f"query_uv outside the {width}x{height} frame")


def nearest_tracked_pixels(tracked_uv: np.ndarray, pixels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, k) indices into `tracked_uv` of each pixel's k nearest tracked pixels, and their distances.

    Integer pixel distances tie often (on the default scenes the 3rd and 4th neighbours are equally
    far for 29 % of pixels) and a KD-tree breaks ties arbitrarily, so candidates are re-sorted on
    (exact squared distance, index); a tie running past the candidates asks the tree for more.
    """
    k = min(k, len(tracked_uv))
    tree = cKDTree(tracked_uv)
    index = np.empty((len(pixels), k), np.int64)
    squared = np.empty((len(pixels), k), np.int64)
    rows, extra = np.arange(len(pixels)), 2
    while len(rows):
        candidates = min(k + extra, len(tracked_uv))
        _, found = tree.query(pixels[rows], k=candidates)
        found = found.reshape(len(rows), candidates)
        found_squared = np.square(tracked_uv[found] - pixels[rows, None, :]).sum(axis=-1)
        order = np.lexsort((found, found_squared), axis=-1)
        found, found_squared = np.take_along_axis(found, order, -1), np.take_along_axis(found_squared, order, -1)
        unsure = (candidates < len(tracked_uv)) & (found_squared[:, k - 1] == found_squared[:, -1])
        index[rows[~unsure]], squared[rows[~unsure]] = found[~unsure, :k], found_squared[~unsure, :k]
        rows, extra = rows[unsure], extra * 4
    return index, np.sqrt(squared)


def surface_depth(points: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(T, ...) depth the (T, H, W) depth map shows at each (T, ..., u v d) point's nearest pixel, clamped
    into the frame (the depth test of the point maps and the quality gate's signals)."""
    frame_count, height, width = depth.shape
    rows = np.clip(np.rint(points[..., 1]), 0, height - 1).astype(np.intp)
    cols = np.clip(np.rint(points[..., 0]), 0, width - 1).astype(np.intp)
    frames = np.arange(frame_count).reshape((frame_count,) + (1,) * (points.ndim - 2))
    return depth[frames, rows, cols]


def depth_test(points: np.ndarray, depth: np.ndarray, tolerance: float = DEPTH_TOLERANCE) -> np.ndarray:
    """(T, ...) bool: inside the frame and not behind the surface the depth map shows at the nearest pixel."""
    _, height, width = depth.shape
    u, v, d = points[..., 0], points[..., 1], points[..., 2]
    inside = (u > -0.5) & (u < width - 0.5) & (v > -0.5) & (v < height - 0.5)
    return inside & (d <= surface_depth(points, depth) * (1 + tolerance))