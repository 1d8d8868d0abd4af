"""Post-processing speed: vectorised Kalman filter and Algorithm 1 against their literal references.

One clip-sized input, both implementations timed in the same run:
- Kalman: 6400 tracks (grid 80x80) x 16 frames, ~15% of them occluded for a stretch, RTS on;
  reference = per-point filterpy loop (`paper_reference.kalman_smooth_filterpy`).
- Densification: 448x256 mask with ~32K foreground pixels, 1500 tracks starting in it (plus 4900
  background tracks that Algorithm 1 discards); reference = per-pixel loop
  (`paper_reference.densify_point_map_literal`).
Times are CPU seconds of this process (user + system, so page faults count): other jobs on a shared
machine inflate them less than wall time, though cache contention still slows the long references.
The references run once (seconds long); the fast versions report the best of several runs, as
timeit does. Meant for one core: thread pools are pinned to 1 before numpy loads, and nothing here
starts threads of its own.
Run: python benchmarks/postprocess.py
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import TypeVar  # noqa: E402

import numpy as np  # noqa: E402

from pointvid_pipeline.clip import (  # noqa: E402
    FRAME_COUNT,
    FRAME_HEIGHT,
    FRAME_WIDTH,
    default_intrinsics,
    unproject,
)
from pointvid_pipeline.evaluation.paper_reference import (  # noqa: E402
    densify_point_map_literal,
    kalman_smooth_filterpy,
)
from pointvid_pipeline.stages.point_maps import densify_absolute_tracks  # noqa: E402
from pointvid_pipeline.stages.smoothing import KalmanConfig, kalman_filter_xyz  # noqa: E402

TRACK_COUNT = 6400
FOREGROUND_TRACK_COUNT = 1500
FAST_REPEATS = 20
Result = TypeVar("Result")


def noisy_camera_tracks(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(T, N, 3) camera-space tracks of moving points with 0.5 px noise, and their (T, N) visibility."""
    intrinsics = default_intrinsics()
    grid_u, grid_v = np.meshgrid(np.linspace(0, FRAME_WIDTH - 1, 80), np.linspace(0, FRAME_HEIGHT - 1, 80))
    depth = rng.uniform(1.5, 6.0, TRACK_COUNT)
    start = unproject(np.stack([grid_u.ravel(), grid_v.ravel(), depth], axis=-1), intrinsics)
    velocity = rng.normal(0.0, 0.012, (TRACK_COUNT, 3))
    frames = np.arange(FRAME_COUNT)[:, None, None]
    xyz = start + velocity * frames
    xyz += rng.normal(size=xyz.shape) * (0.5 / intrinsics[0, 0]) * depth[:, None]
    visibility = np.ones((FRAME_COUNT, TRACK_COUNT), dtype=bool)
    occluded = rng.random(TRACK_COUNT) < 0.15
    first = rng.integers(1, FRAME_COUNT, TRACK_COUNT)
    length = rng.integers(1, FRAME_COUNT, TRACK_COUNT)
    span = (frames[:, :, 0] >= first) & (frames[:, :, 0] < first + length)
    visibility[span & occluded] = False
    return xyz, visibility


def blob_mask(rng: np.random.Generator, target_pixels: int = 32_000) -> np.ndarray:
    """A foreground mask shaped like a segmented object: union of ellipses, ~target_pixels large."""
    rows, cols = np.mgrid[:FRAME_HEIGHT, :FRAME_WIDTH]
    mask = np.zeros((FRAME_HEIGHT, FRAME_WIDTH), dtype=bool)
    while mask.sum() < target_pixels:
        centre_u, centre_v = rng.uniform(120, 330), rng.uniform(60, 200)
        radius_u, radius_v = rng.uniform(20, 60), rng.uniform(15, 45)
        mask |= ((cols - centre_u) / radius_u) ** 2 + ((rows - centre_v) / radius_v) ** 2 < 1
    return mask


def densification_input(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tracks_uvd, query_uv, mask): 1500 tracks start in the mask, the rest in the background."""
    mask = blob_mask(rng)
    foreground = np.argwhere(mask)[:, ::-1]  # (u, v)
    background = np.argwhere(~mask)[:, ::-1]
    query_uv = np.concatenate(
        [
            foreground[rng.choice(len(foreground), FOREGROUND_TRACK_COUNT, replace=False)],
            background[rng.choice(len(background), TRACK_COUNT - FOREGROUND_TRACK_COUNT, replace=False)],
        ]
    )
    depth = rng.uniform(1.5, 6.0, TRACK_COUNT)
    drift = rng.normal(0.0, 2.0, (TRACK_COUNT, 2)) * np.arange(FRAME_COUNT)[:, None, None]
    tracks_uvd = np.empty((FRAME_COUNT, TRACK_COUNT, 3), dtype=np.float32)
    tracks_uvd[..., :2] = query_uv + drift
    tracks_uvd[..., 2] = depth
    return tracks_uvd, query_uv, mask


def timed(function: Callable[[], Result]) -> tuple[Result, float]:
    """Result and CPU time of one call."""
    start = time.process_time()
    result = function()
    return result, time.process_time() - start


def best_seconds(function: Callable[[], object], repeats: int = FAST_REPEATS) -> float:
    """Best CPU time of `repeats` calls."""
    return min(timed(function)[1] for _ in range(repeats))


def measure() -> dict:
    """Times both reference/vectorised pairs on one realistic input, and how far their outputs differ."""
    rng = np.random.default_rng(2024)
    config = KalmanConfig()
    xyz, visibility = noisy_camera_tracks(rng)
    kalman_reference, kalman_reference_s = timed(lambda: kalman_smooth_filterpy(xyz, visibility, config))
    kalman_vectorised_s = best_seconds(lambda: kalman_filter_xyz(xyz, visibility, config))
    kalman_error = np.abs(kalman_filter_xyz(xyz, visibility, config) - kalman_reference).max()

    tracks_uvd, query_uv, mask = densification_input(rng)
    (literal, _), densify_reference_s = timed(lambda: densify_point_map_literal(tracks_uvd, query_uv, mask))
    densify_vectorised_s = best_seconds(lambda: densify_absolute_tracks(tracks_uvd, query_uv, mask))
    dense, tracked = densify_absolute_tracks(tracks_uvd, query_uv, mask)

    return {
        "kalman": {
            "points": TRACK_COUNT,
            "frames": FRAME_COUNT,
            "occluded_point_frames": int((~visibility).sum()),
            "rts_smoothing": config.rts_smoothing,
            "max_abs_difference_m": float(kalman_error),
            "filterpy_loop_s": kalman_reference_s,
            "vectorised_s": kalman_vectorised_s,
            "speedup": kalman_reference_s / kalman_vectorised_s,
        },
        "densify": {
            "foreground_pixels": int(mask.sum()),
            "foreground_tracks": int(mask[query_uv[:, 1], query_uv[:, 0]].sum()),
            "tracked_pixels": int(tracked.sum()),
            "max_abs_difference": float(np.abs(dense - literal).max()),
            "per_pixel_loop_s": densify_reference_s,
            "vectorised_s": densify_vectorised_s,
            "speedup": densify_reference_s / densify_vectorised_s,
        },
    }


if __name__ == "__main__":
    for stage, figures in measure().items():
        print(stage)
        for name, value in figures.items():
            print(f"  {name:24s} {value:.4g}" if isinstance(value, float) else f"  {name:24s} {value}")
