import numpy as np

from pointvid_pipeline.stages.query_points import grid_points, sample_query_points, sample_seed


def test_grid_80_covers_the_frame_on_integer_pixels():
    grid = grid_points(448, 256, 80)
    assert grid.shape == (6400, 2) and grid.dtype == np.int32
    assert grid[:, 0].min() >= 0 and grid[:, 0].max() <= 447 and grid[:, 1].max() <= 255
    assert len(np.unique(grid, axis=0)) == 6400


def test_every_foreground_grid_point_and_a_fraction_of_background():
    labels = np.zeros((256, 448), np.int32)
    labels[50:150, 100:300] = 1
    queries = sample_query_points(labels, 80, 0.1, seed=7)
    grid = grid_points(448, 256, 80)
    fg_grid = grid[labels[grid[:, 1], grid[:, 0]] > 0]
    on_fg = labels[queries[:, 1], queries[:, 0]] > 0
    assert on_fg.sum() == len(fg_grid)
    assert set(map(tuple, queries[on_fg])) == set(map(tuple, fg_grid))
    n_bg = 6400 - len(fg_grid)
    assert abs((~on_fg).sum() - 0.1 * n_bg) < 4 * np.sqrt(0.1 * 0.9 * n_bg)
    assert on_fg[: on_fg.sum()].all()  # foreground first


def test_same_key_same_points():
    labels = np.zeros((256, 448), np.int32)
    labels[:100] = 2
    a = sample_query_points(labels, 80, 0.3, sample_seed("scene_a"))
    b = sample_query_points(labels, 80, 0.3, sample_seed("scene_a"))
    c = sample_query_points(labels, 80, 0.3, sample_seed("scene_b"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
