"""The vectorised Kalman filter against the per-point filterpy loop, and what the smoothing is for."""

from __future__ import annotations

import numpy as np
import pytest

from pointvid_pipeline.clip import default_intrinsics, project, unproject
from pointvid_pipeline.evaluation.paper_reference import kalman_smooth_filterpy
from pointvid_pipeline.settings import SMOOTHING_PRESETS, PipelineSettings
from pointvid_pipeline.stages.smoothing import SMOOTHING_CONFIGS, KalmanConfig, kalman_filter_xyz, smooth_tracks

FRAMES = 16
INTRINSICS = default_intrinsics()


def moving_points(rng: np.random.Generator, count: int, acceleration: float = 0.0) -> np.ndarray:
    """(T, N, 3) camera-space tracks of points in view, 1.5-6 m deep, ~2 cm/frame, optional acceleration."""
    pixels = np.stack([rng.uniform(0, 447, count), rng.uniform(0, 255, count), rng.uniform(1.5, 6.0, count)], -1)
    frames = np.arange(FRAMES)[:, None, None]
    velocity = rng.normal(0.0, 0.012, (count, 3))
    accel = rng.normal(0.0, acceleration / np.sqrt(3), (count, 3))
    return unproject(pixels, INTRINSICS) + velocity * frames + 0.5 * accel * frames**2


def with_pixel_noise(rng: np.random.Generator, true_uvd: np.ndarray, sigma_px: float = 0.5) -> np.ndarray:
    """0.5 px noise on u, v and the same angular noise on depth; frame 0 (the query pixel) stays exact."""
    noisy = true_uvd + rng.normal(0.0, sigma_px, true_uvd.shape) * np.stack(
        [np.ones_like(true_uvd[..., 2]), np.ones_like(true_uvd[..., 2]), true_uvd[..., 2] / INTRINSICS[0, 0]], -1
    )
    noisy[0] = true_uvd[0]
    return noisy


def occlusion_patterns(rng: np.random.Generator, count: int) -> np.ndarray:
    """(T, N) visibility: always visible, a mid-track gap, occluded to the end, only frame 0, scattered."""
    visible = np.ones((FRAMES, count), dtype=bool)
    kind = np.arange(count) % 5
    gap_start = rng.integers(1, FRAMES - 1, count)
    gap_length = rng.integers(1, 6, count)
    frames = np.arange(FRAMES)[:, None]
    visible[:, kind == 1] = ~((frames >= gap_start) & (frames < gap_start + gap_length))[:, kind == 1]
    visible[:, kind == 2] = (frames < gap_start)[:, kind == 2]
    visible[1:, kind == 3] = False
    visible[:, kind == 4] = rng.random((FRAMES, count))[:, kind == 4] < 0.6
    visible[0] = True
    return visible


def jitter(tracks: np.ndarray) -> float:
    """Mean |second difference| over frames: acceleration, which tracking noise inflates."""
    return float(np.abs(np.diff(tracks, n=2, axis=0)).mean())


@pytest.mark.parametrize("rts_smoothing", [True, False])
@pytest.mark.parametrize(
    "noise", [(1e-6, 1e-5, 1e-3), (1e-3, 1e-2, 1.0), (1e-4, 1e-6, 1e-5)], ids=["default", "loose", "stiff"]
)
def test_equals_filterpy_reference(rts_smoothing, noise):
    rng = np.random.default_rng(7)
    config = KalmanConfig(*noise, rts_smoothing=rts_smoothing)
    xyz = moving_points(rng, 60, acceleration=0.002) + rng.normal(0.0, 0.01, (FRAMES, 60, 3))
    visible = occlusion_patterns(rng, 60)
    xyz[~visible] = np.nan  # the tracker's value while occluded must not matter

    smoothed = kalman_filter_xyz(xyz, visible, config)

    np.testing.assert_allclose(smoothed, kalman_smooth_filterpy(xyz, visible, config), rtol=0, atol=1e-6)
    assert np.isfinite(smoothed).all()


def test_frame_zero_is_the_measurement_without_rts_and_moves_little_with_it():
    rng = np.random.default_rng(1)
    xyz = moving_points(rng, 200) + rng.normal(0.0, 0.003, (FRAMES, 200, 3))
    visible = np.ones((FRAMES, 200), dtype=bool)

    filtered = kalman_filter_xyz(xyz, visible, KalmanConfig(rts_smoothing=False))
    smoothed = kalman_filter_xyz(xyz, visible, KalmanConfig(rts_smoothing=True))

    np.testing.assert_array_equal(filtered[0], xyz[0])
    assert 0 < np.abs(smoothed[0] - xyz[0]).max() < 0.01  # metres: a few mm at most


def test_smooth_tracks_filters_in_camera_space_and_round_trips():
    rng = np.random.default_rng(2)
    uvd = with_pixel_noise(rng, project(moving_points(rng, 100), INTRINSICS))
    visible = occlusion_patterns(rng, 100)

    smoothed = smooth_tracks(uvd, visible, INTRINSICS)

    np.testing.assert_allclose(project(unproject(uvd, INTRINSICS), INTRINSICS), uvd, atol=1e-9)
    expected = project(kalman_filter_xyz(unproject(uvd, INTRINSICS), visible), INTRINSICS)
    assert smoothed.dtype == np.float32 and smoothed.shape == uvd.shape
    np.testing.assert_allclose(smoothed, expected, rtol=1e-6, atol=1e-4)


SLOW_MOTION = KalmanConfig(process_noise=1e-6)  # the docstring's setting for smooth, slow motion


def test_noiseless_constant_velocity_track_is_preserved():
    rng = np.random.default_rng(3)
    uvd = project(moving_points(rng, 300), INTRINSICS)

    smoothed = smooth_tracks(uvd, np.ones((FRAMES, 300), dtype=bool), INTRINSICS, SLOW_MOTION)

    # The zero-velocity prior costs a small transient that RTS mostly removes.
    assert np.abs(smoothed[..., :2] - uvd[..., :2]).max() < 0.05  # px
    assert np.abs(smoothed[..., 2] - uvd[..., 2]).max() < 1e-3  # m


def test_reduces_acceleration_of_noisy_constant_velocity_tracks():
    rng = np.random.default_rng(4)
    true_uvd = project(moving_points(rng, 300), INTRINSICS)
    noisy = with_pixel_noise(rng, true_uvd)

    smoothed = smooth_tracks(noisy, np.ones((FRAMES, 300), dtype=bool), INTRINSICS, SLOW_MOTION)
    assert jitter(smoothed[..., :2]) < 0.1 * jitter(noisy[..., :2])

    smoothed_default = smooth_tracks(noisy, np.ones((FRAMES, 300), dtype=bool), INTRINSICS)
    assert jitter(smoothed_default[..., :2]) < 0.4 * jitter(noisy[..., :2])


def test_slow_motion_setting_removes_jitter_without_lagging_motion():
    """The slow-motion measurement in KalmanConfig's docstring, at a smaller size."""
    rng = np.random.default_rng(5)
    visible = np.ones((FRAMES, 1000), dtype=bool)
    for acceleration, max_jitter_ratio in ((0.0, 0.06), (0.0015, 0.15)):
        true_uvd = project(moving_points(rng, 1000, acceleration), INTRINSICS)
        noisy = with_pixel_noise(rng, true_uvd)

        smoothed = smooth_tracks(noisy, visible, INTRINSICS, SLOW_MOTION)

        error_ratio = np.sqrt(np.mean((smoothed[..., :2] - true_uvd[..., :2]) ** 2)) / np.sqrt(
            np.mean((noisy[..., :2] - true_uvd[..., :2]) ** 2)
        )
        assert jitter(smoothed[..., :2]) < max_jitter_ratio * jitter(noisy[..., :2])
        assert error_ratio < 0.6  # closer to the truth than the input everywhere, so no lag on acceleration


def test_occluded_frames_continue_the_motion():
    rng = np.random.default_rng(6)
    xyz = moving_points(rng, 50)
    visible = np.ones((FRAMES, 50), dtype=bool)
    visible[10:] = False  # occluded until the end: prediction only
    measured = xyz.copy()
    measured[~visible] = 1e3  # garbage the filter must ignore

    smoothed = kalman_filter_xyz(measured, visible)

    assert np.abs(smoothed - xyz).max() < 1e-3


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        KalmanConfig(measurement_noise=0.0)
    with pytest.raises(ValueError):
        kalman_filter_xyz(np.zeros((FRAMES, 4, 3)), np.ones((FRAMES, 5), dtype=bool))
    uvd = np.ones((FRAMES, 4, 3))
    uvd[0, 1] = np.nan
    with pytest.raises(ValueError):
        smooth_tracks(uvd, np.ones((FRAMES, 4), dtype=bool), INTRINSICS)


def test_weak_occluded_measurements_are_followed_where_predict_only_drifts():
    """With a finite occluded scale an occluded frame still counts (the rigid tracker's positions there
    come from its object's pose); the paper's filter only predicts through it."""
    rng = np.random.default_rng(8)
    xyz = moving_points(rng, 50, acceleration=0.004)  # a fall: constant velocity is the wrong guess
    visible = np.ones((FRAMES, 50), dtype=bool)
    visible[6:] = False
    weak = KalmanConfig(process_noise=3e-3, measurement_noise=1e-7, occluded_measurement_scale=1e3)

    followed = kalman_filter_xyz(xyz, visible, weak)
    predicted = kalman_filter_xyz(xyz, visible, KalmanConfig(process_noise=3e-3, measurement_noise=1e-7))

    assert np.abs(followed - xyz).max() < 1e-3 < np.abs(predicted - xyz).max()


def test_named_smoothing_settings_match_their_configs():
    assert set(SMOOTHING_PRESETS) == set(SMOOTHING_CONFIGS)
    assert SMOOTHING_CONFIGS["paper"] == KalmanConfig()  # the paper-literal filter, benchmarked against filterpy
    with pytest.raises(ValueError, match="POINTVID_SMOOTHING"):
        PipelineSettings(smoothing="median")
