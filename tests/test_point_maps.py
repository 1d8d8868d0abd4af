"""Algorithm 1 densification: the vectorised version against the per-pixel loop, and its guarantees."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from pointvid_pipeline.evaluation.paper_reference import densify_point_map_literal
from pointvid_pipeline.stages.point_maps import densify_point_map

FRAMES = 4


def blob_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A few random ellipses: a foreground with holes, thin parts and several components."""
    rows, cols = np.mgrid[:height, :width]
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(4):
        centre_u, centre_v = rng.uniform(0, width), rng.uniform(0, height)
        radius_u, radius_v = rng.uniform(2, width / 3), rng.uniform(2, height / 3)
        mask |= ((cols - centre_u) / radius_u) ** 2 + ((rows - centre_v) / radius_v) ** 2 < 1
    return mask


def random_tracks(rng: np.random.Generator, query_uv: np.ndarray) -> np.ndarray:
    """(T, N, 3) float32 tracks that start at their query pixel and drift."""
    tracks = np.empty((FRAMES, len(query_uv), 3), dtype=np.float32)
    tracks[..., :2] = query_uv + rng.normal(0.0, 3.0, (FRAMES, len(query_uv), 2))
    tracks[..., 2] = rng.uniform(1.0, 5.0, (FRAMES, len(query_uv)))
    return tracks


def random_case(seed: int, height: int = 37, width: int = 53, count: int = 60):
    rng = np.random.default_rng(seed)
    mask = blob_mask(rng, height, width)
    query_uv = np.stack([rng.integers(0, width, count), rng.integers(0, height, count)], axis=1)
    duplicates = np.arange(count // 2, count, 7)
    query_uv[duplicates] = query_uv[duplicates - count // 2]  # several tracks start on one pixel
    return random_tracks(rng, query_uv), query_uv, mask


def lattice_case(spacing: int = 4, height: int = 30, width: int = 40):
    """Tracked pixels on a square lattice: most pixels are equidistant to 2 or 4 tracked pixels."""
    rng = np.random.default_rng(11)
    grid_v, grid_u = np.mgrid[1:height:spacing, 2:width:spacing]
    query_uv = np.stack([grid_u.ravel(), grid_v.ravel()], axis=1)
    return random_tracks(rng, query_uv), query_uv, np.ones((height, width), dtype=bool)


def few_tracks_case(foreground_tracks: int):
    rng = np.random.default_rng(foreground_tracks)
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:15, 4:25] = True
    inside = np.stack([rng.integers(4, 25, foreground_tracks), rng.integers(5, 15, foreground_tracks)], axis=1)
    outside = np.array([[0, 0], [29, 19], [2, 10]])
    query_uv = np.concatenate([outside[:1], inside, outside[1:]])
    return random_tracks(rng, query_uv), query_uv, mask


CASES = {
    **{f"random-{seed}": lambda seed=seed: random_case(seed) for seed in range(6)},
    "dense-duplicates": lambda: random_case(42, count=400),
    "lattice-ties": lattice_case,
    "lattice-ties-wide": lambda: lattice_case(spacing=6),
    "one-foreground-track": lambda: few_tracks_case(1),
    "two-foreground-tracks": lambda: few_tracks_case(2),
}


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("case", CASES)
def test_equals_literal_algorithm_1(case, k):
    tracks, query_uv, mask = CASES[case]()

    dense, tracked = densify_point_map(tracks, query_uv, mask, k=k)
    literal_dense, literal_tracked = densify_point_map_literal(tracks, query_uv, mask, k=k)

    assert dense.dtype == np.float32 and dense.shape == (FRAMES, *mask.shape, 3)
    np.testing.assert_array_equal(tracked, literal_tracked)
    np.testing.assert_allclose(dense, literal_dense, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_background_is_exactly_zero_and_foreground_is_filled(case):
    tracks, query_uv, mask = CASES[case]()

    dense, tracked = densify_point_map(tracks, query_uv, mask)

    assert not dense[:, ~mask].any()
    assert (dense[:, mask, 2] > 0).all()  # every foreground pixel got a depth
    assert not tracked[~mask].any()


def test_tracked_pixels_carry_their_first_track_exactly():
    tracks, query_uv, mask = random_case(3, count=400)

    dense, tracked = densify_point_map(tracks, query_uv, mask)

    seen = set()
    for n, (u, v) in enumerate(query_uv.tolist()):
        if mask[v, u] and (u, v) not in seen:
            seen.add((u, v))
            np.testing.assert_array_equal(dense[:, v, u], tracks[:, n])  # pixel (u, v) is index [v, u]
    assert tracked.sum() == len(seen)


def test_u_is_the_column_and_v_the_row():
    mask = np.zeros((5, 9), dtype=bool)
    mask[1, 7] = mask[3, 2] = True
    tracks = np.arange(FRAMES * 3, dtype=np.float32).reshape(FRAMES, 1, 3) + 1
    query_uv = np.array([[7, 1]])  # u = 7 (column), v = 1 (row)

    dense, tracked = densify_point_map(tracks, query_uv, mask)

    assert tracked[1, 7] and tracked.sum() == 1
    np.testing.assert_array_equal(dense[:, 1, 7], tracks[:, 0])
    np.testing.assert_array_equal(dense[:, 3, 2], tracks[:, 0])  # its only neighbour


def test_tracks_starting_in_the_background_are_discarded():
    tracks, query_uv, mask = random_case(4)
    in_background = ~mask[query_uv[:, 1], query_uv[:, 0]]
    scrambled = tracks.copy()
    scrambled[:, in_background] = 1e6

    np.testing.assert_array_equal(
        densify_point_map(scrambled, query_uv, mask)[0], densify_point_map(tracks, query_uv, mask)[0]
    )


def test_constant_field_is_interpolated_exactly():
    _, query_uv, mask = random_case(5)
    value = np.array([[3.25, -1.5, 2.0]], dtype=np.float32)
    tracks = np.broadcast_to(value, (FRAMES, len(query_uv), 3)).copy()

    dense, _ = densify_point_map(tracks, query_uv, mask)

    np.testing.assert_allclose(dense[:, mask], np.broadcast_to(value, (FRAMES, mask.sum(), 3)), rtol=1e-7)


def test_affine_field_stays_in_the_convex_hull_of_the_three_neighbours():
    """IDW of neighbours does not reproduce a pixel's own position (the paper's rule); it does stay
    inside what its 3 nearest tracked pixels span, and an affine field stays on its own plane."""
    tracks, query_uv, mask = random_case(6, count=120)
    foreground_uv = query_uv[mask[query_uv[:, 1], query_uv[:, 0]]]
    affine = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.02, -0.01, 3.0]])  # (u, v, d) from (u, v, 1)
    tracks[:] = (np.c_[query_uv, np.ones(len(query_uv))] @ affine.T).astype(np.float32)

    dense, tracked = densify_point_map(tracks, query_uv, mask)

    untracked_v, untracked_u = np.nonzero(mask & ~tracked)
    _, neighbours = cKDTree(foreground_uv.astype(np.float64)).query(np.c_[untracked_u, untracked_v], k=3)
    neighbour_values = foreground_uv[neighbours]  # the field's (u, v) channels equal the start pixel
    values = dense[0, untracked_v, untracked_u]
    assert (values[:, :2] >= neighbour_values.min(axis=1) - 1e-4).all()
    assert (values[:, :2] <= neighbour_values.max(axis=1) + 1e-4).all()
    np.testing.assert_allclose(values, np.c_[values[:, :2], np.ones(len(values))] @ affine.T, rtol=1e-5)
    assert np.abs(values[:, :2] - np.c_[untracked_u, untracked_v]).max() > 0.5


def test_rejects_input_it_cannot_interpret():
    tracks, query_uv, mask = few_tracks_case(2)
    with pytest.raises(ValueError, match="foreground"):
        densify_point_map(tracks, query_uv, np.zeros_like(mask))
    with pytest.raises(ValueError, match="outside"):
        densify_point_map(tracks, query_uv + [mask.shape[1], 0], mask)
    with pytest.raises(ValueError, match="integers"):
        densify_point_map(tracks, query_uv.astype(np.float64), mask)
    with pytest.raises(ValueError, match="k must"):
        densify_point_map(tracks, query_uv, mask, k=0)
