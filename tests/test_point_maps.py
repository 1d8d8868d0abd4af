"""Algorithm 1 densification: the vectorised version against the per-pixel loop, and its guarantees."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from pointvid_pipeline.evaluation.paper_reference import densify_point_map_literal
from pointvid_pipeline.clip import project, unproject
from pointvid_pipeline.stages.point_maps import densify_absolute_tracks, densify_point_map, nearest_tracked_pixels

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

    dense, tracked = densify_absolute_tracks(tracks, query_uv, mask, k=k)
    literal_dense, literal_tracked = densify_point_map_literal(tracks, query_uv, mask, k=k)

    assert dense.dtype == np.float32 and dense.shape == (FRAMES, *mask.shape, 3)
    np.testing.assert_array_equal(tracked, literal_tracked)
    np.testing.assert_allclose(dense, literal_dense, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_product_in_chunks_gives_the_same_bits(case, monkeypatch):
    tracks, query_uv, mask = CASES[case]()
    whole, _ = densify_absolute_tracks(tracks, query_uv, mask)

    monkeypatch.setattr("pointvid_pipeline.stages.point_maps.PRODUCT_ROWS", 7)
    chunked, _ = densify_absolute_tracks(tracks, query_uv, mask)

    assert chunked.tobytes() == whole.tobytes()


@pytest.mark.parametrize("case", CASES)
def test_background_is_exactly_zero_and_foreground_is_filled(case):
    tracks, query_uv, mask = CASES[case]()

    dense, tracked = densify_absolute_tracks(tracks, query_uv, mask)

    assert not dense[:, ~mask].any()
    assert (dense[:, mask, 2] > 0).all()  # every foreground pixel got a depth
    assert not tracked[~mask].any()


def test_tracked_pixels_carry_their_first_track_exactly():
    tracks, query_uv, mask = random_case(3, count=400)

    dense, tracked = densify_absolute_tracks(tracks, query_uv, mask)

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

    dense, tracked = densify_absolute_tracks(tracks, query_uv, mask)

    assert tracked[1, 7] and tracked.sum() == 1
    np.testing.assert_array_equal(dense[:, 1, 7], tracks[:, 0])
    np.testing.assert_array_equal(dense[:, 3, 2], tracks[:, 0])  # its only neighbour


def test_tracks_starting_in_the_background_are_discarded():
    tracks, query_uv, mask = random_case(4)
    in_background = ~mask[query_uv[:, 1], query_uv[:, 0]]
    scrambled = tracks.copy()
    scrambled[:, in_background] = 1e6

    np.testing.assert_array_equal(
        densify_absolute_tracks(scrambled, query_uv, mask)[0], densify_absolute_tracks(tracks, query_uv, mask)[0]
    )


def test_constant_field_is_interpolated_exactly():
    _, query_uv, mask = random_case(5)
    value = np.array([[3.25, -1.5, 2.0]], dtype=np.float32)
    tracks = np.broadcast_to(value, (FRAMES, len(query_uv), 3)).copy()

    dense, _ = densify_absolute_tracks(tracks, query_uv, mask)

    np.testing.assert_allclose(dense[:, mask], np.broadcast_to(value, (FRAMES, mask.sum(), 3)), rtol=1e-7)


def test_affine_field_stays_in_the_convex_hull_of_the_three_neighbours():
    """IDW of neighbours does not reproduce a pixel's own position (the paper's rule); it does stay
    inside what its 3 nearest tracked pixels span, and an affine field stays on its own plane."""
    tracks, query_uv, mask = random_case(6, count=120)
    foreground_uv = query_uv[mask[query_uv[:, 1], query_uv[:, 0]]]
    affine = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.02, -0.01, 3.0]])  # (u, v, d) from (u, v, 1)
    tracks[:] = (np.c_[query_uv, np.ones(len(query_uv))] @ affine.T).astype(np.float32)

    dense, tracked = densify_absolute_tracks(tracks, query_uv, mask)

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
        densify_absolute_tracks(tracks, query_uv, np.zeros_like(mask))
    with pytest.raises(ValueError, match="outside"):
        densify_absolute_tracks(tracks, query_uv + [mask.shape[1], 0], mask)
    with pytest.raises(ValueError, match="integers"):
        densify_absolute_tracks(tracks, query_uv.astype(np.float64), mask)
    with pytest.raises(ValueError, match="k must"):
        densify_absolute_tracks(tracks, query_uv, mask, k=0)


# ---------------------------------------------------------------- displacement densification (the default)


INTRINSICS = np.array([[50.0, 0.0, 30.0], [0.0, 50.0, 20.0], [0.0, 0.0, 1.0]])


def two_object_case(motion=None):
    """Two objects side by side at 2 m and 3 m, each moved rigidly by its own known 3D motion per frame."""
    height, width = 40, 60
    labels = np.zeros((height, width), np.int32)
    labels[5:35, 5:28] = 1
    labels[5:35, 32:55] = 2
    depth0 = np.where(labels == 1, 2.0, np.where(labels == 2, 3.0, 10.0))
    rows, cols = np.mgrid[0:height, 0:width]
    xyz0 = unproject(np.stack([cols, rows, depth0], axis=-1).astype(np.float64), INTRINSICS)  # (H, W, 3)
    motion = motion or {1: translation([0.01, 0.005, 0.02]), 2: rotation_about([0.2, 0.0, 3.0], angle=0.08)}
    xyz = np.stack([xyz0] * FRAMES)
    for label, move in motion.items():
        for t in range(FRAMES):
            xyz[t, labels == label] = move(xyz0[labels == label], t)
    uvd = project(xyz, INTRINSICS)  # (T, H, W, 3): the truth for every pixel
    depth = np.full((FRAMES, height, width), 10.0, np.float32)
    for t in range(FRAMES):  # the depth maps the objects' surfaces draw (nearest pixel), for the depth test
        cols_t, rows_t = np.rint(uvd[t, labels > 0, 0]).astype(int), np.rint(uvd[t, labels > 0, 1]).astype(int)
        inside = (cols_t >= 0) & (cols_t < width) & (rows_t >= 0) & (rows_t < height)
        depth[t, rows_t[inside], cols_t[inside]] = uvd[t, labels > 0, 2][inside]
    depth[0] = depth0
    grid_v, grid_u = np.mgrid[0:height:4, 0:width:4]
    query_uv = np.stack([grid_u.ravel(), grid_v.ravel()], axis=1)
    tracks = uvd[:, query_uv[:, 1], query_uv[:, 0]]
    return tracks, np.ones((FRAMES, len(query_uv)), bool), query_uv, labels, depth, uvd


def translation(step):
    return lambda xyz, t: xyz + t * np.asarray(step)


def rotation_about(centre, angle):
    def move(xyz, t):
        c, s = np.cos(angle * t), np.sin(angle * t)
        turn = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # about the vertical axis
        return (xyz - centre) @ turn.T + centre
    return move


def test_displacement_keeps_each_pixels_own_position_and_moves_it_with_its_object():
    tracks, visible, query_uv, labels, depth, truth = two_object_case()

    point_map = densify_point_map(tracks, visible, query_uv, labels, depth, INTRINSICS)

    foreground = labels > 0
    # Exact for rigid motion, the rotating object included: neighbours never cross objects.
    np.testing.assert_allclose(point_map.uvd[:, foreground], truth[:, foreground], atol=1e-4)
    assert not point_map.uvd[:, ~foreground].any() and (point_map.valid == foreground).all()


def test_paper_method_is_algorithm_1_as_printed():
    tracks, visible, query_uv, labels, depth, _ = two_object_case()

    point_map = densify_point_map(tracks, visible, query_uv, labels, depth, INTRINSICS, method="paper")
    dense, tracked = densify_absolute_tracks(tracks, query_uv, labels > 0)

    np.testing.assert_array_equal(point_map.uvd, dense)
    np.testing.assert_array_equal(point_map.tracked, tracked)


def test_an_object_without_tracks_is_left_out_rather_than_borrowed_from_another():
    tracks, visible, query_uv, labels, depth, _ = two_object_case()
    labels[36:39, 57:60] = 3  # a small object no grid query lands on

    point_map = densify_point_map(tracks, visible, query_uv, labels, depth, INTRINSICS)

    assert not point_map.valid[labels == 3].any() and not point_map.uvd[:, labels == 3].any()
    assert point_map.valid[labels == 1].all()


def test_visibility_follows_neighbours_and_the_depth_test():
    still = {1: translation([0.0, 0.0, 0.0]), 2: translation([0.0, 0.0, 0.0])}
    tracks, visible, query_uv, labels, depth, _ = two_object_case(still)
    depth[5:, :, :15] = 1.0  # from frame 5 something at 1 m covers the left part of object 1
    hidden_track = visible.copy()
    hidden_track[10:, labels[query_uv[:, 1], query_uv[:, 0]] == 2] = False  # the tracker lost object 2 from frame 10

    point_map = densify_point_map(tracks, hidden_track, query_uv, labels, depth, INTRINSICS)

    covered = (labels == 1) & (np.arange(labels.shape[1]) < 15)[None, :]
    assert point_map.visible[:5, labels > 0].all()
    assert not point_map.visible[5:, covered].any() and point_map.visible[5:, (labels == 1) & ~covered].all()
    assert not point_map.visible[10:, labels == 2].any() and point_map.visible[:10, labels == 2].all()


def test_equidistant_neighbours_are_chosen_by_row_major_order():
    tracked_uv = np.array([[0, 0], [2, 0], [0, 2], [2, 2]])  # all four at distance sqrt(2) from (1, 1)
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):  # whatever the order, the first three listed win
        index, distance = nearest_tracked_pixels(tracked_uv[order], np.array([[1, 1]]), k=3)
        assert index[0].tolist() == [0, 1, 2]
        np.testing.assert_allclose(distance, np.sqrt(2))
    circle = np.array([[x, y] for x in range(-5, 6) for y in range(-5, 6) if x * x + y * y == 25])  # 12 ties > k + 8 candidates
    index, distance = nearest_tracked_pixels(circle[::-1], np.array([[0, 0]]), k=3)
    assert len(circle) == 12 and index[0].tolist() == [0, 1, 2] and np.allclose(distance, 5)
