"""Stage `query_points`: which reference-frame pixels get tracked (paper App. A, grid size 80).

SpaTracker is run with `grid_size=80` and the foreground mask: every grid point on the objects
is tracked, and a fraction of the background grid points is kept as well (the paper samples
"with a main focus on" the foreground; background tracks help the tracker and are discarded by
Algorithm 1). Points sit on integer pixels so Algorithm 1 can match them to pixels exactly.
"""

from __future__ import annotations

import hashlib

import numpy as np


def grid_points(width: int, height: int, grid_size: int) -> np.ndarray:
    """(grid_size**2, 2) int32 (u, v): cell centres of a grid_size x grid_size grid, rounded."""
    us = np.round((np.arange(grid_size) + 0.5) * width / grid_size - 0.5).astype(np.int32)
    vs = np.round((np.arange(grid_size) + 0.5) * height / grid_size - 0.5).astype(np.int32)
    uu, vv = np.meshgrid(us, vs)
    return np.stack([uu.ravel(), vv.ravel()], axis=1)


def sample_seed(key: str) -> int:
    """A per-sample seed from its key, so reruns pick the same points on any machine."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "little")


def sample_query_points(labels: np.ndarray, grid_size: int, background_fraction: float, seed: int) -> np.ndarray:
    """All foreground grid points plus a seeded random `background_fraction` of the others.

    labels: (H, W) int instance map of the reference frame (0 = background).
    Returns (N, 2) int32 (u, v), foreground points first, each group in raster order.
    """
    height, width = labels.shape
    grid = grid_points(width, height, grid_size)
    on_foreground = labels[grid[:, 1], grid[:, 0]] > 0
    background = grid[~on_foreground]
    keep = np.random.default_rng(seed).random(len(background)) < background_fraction
    return np.concatenate([grid[on_foreground], background[keep]]).astype(np.int32)
