"""OpticalFlowTracker on clips made by warping a real frame with known per-frame transforms."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from media import shared_video

from pointvid_pipeline.clip import FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH
from pointvid_pipeline.stages.clips import decode_clip
from pointvid_pipeline.stages.tracking import OpticalFlowTracker

IMAGE_BOUNDS = np.array([FRAME_WIDTH - 1, FRAME_HEIGHT - 1])


def scene_image(name: str) -> np.ndarray:
    """A real frame larger than the clip, so warped frames show real content at every border."""
    frames, _ = decode_clip(str(shared_video(name)), frame_count=1, width=800, height=450)
    return frames[0]


def warped_clip(image: np.ndarray, shift_per_frame: tuple[float, float], angle_per_frame: float = 0.0,
                zoom_per_frame: float = 0.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frames t = image seen through a window moved, rotated and zoomed about its centre.

    Returns the frames and, per frame, the 2x3 affine mapping clip pixels to image pixels.
    """
    centre = np.array([FRAME_WIDTH / 2, FRAME_HEIGHT / 2])
    window_origin = np.array([(image.shape[1] - FRAME_WIDTH) / 2, (image.shape[0] - FRAME_HEIGHT) / 2])
    frames, to_image = [], []
    for t in range(FRAME_COUNT):
        angle, zoom = angle_per_frame * t, 1 + zoom_per_frame * t
        linear = zoom * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        offset = window_origin + np.array(shift_per_frame) * t + centre - linear @ centre
        affine = np.hstack([linear, offset[:, None]])
        frames.append(cv2.warpAffine(image, affine, (FRAME_WIDTH, FRAME_HEIGHT),
                                     flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT))
        to_image.append(affine)
    return np.stack(frames), to_image


def true_positions(to_image: list[np.ndarray], queries: np.ndarray) -> np.ndarray:
    """(T, N, 2): where each frame-0 query shows up in every frame."""
    on_image = queries @ to_image[0][:, :2].T + to_image[0][:, 2]
    return np.stack([(on_image - affine[:, 2]) @ np.linalg.inv(affine[:, :2]).T for affine in to_image])


def grid_queries(step_u: float = 5.6, step_v: float = 3.2) -> np.ndarray:
    v, u = np.mgrid[0:FRAME_HEIGHT:step_v, 0:FRAME_WIDTH:step_u]
    return np.stack([u.ravel(), v.ravel()], axis=1).astype(np.float32)  # 80 x 80 = 6400 points


def random_depth(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 8.0, (FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH)).astype(np.float32)


@pytest.mark.parametrize(
    "scene, motion",
    [
        ("05_juggle.mp4", dict(shift_per_frame=(1.3, 0.7))),
        ("01_dog.mp4", dict(shift_per_frame=(1.1, -0.6), angle_per_frame=0.004, zoom_per_frame=0.003)),
        ("bedroom.mp4", dict(shift_per_frame=(3.7, 1.9), angle_per_frame=0.003, zoom_per_frame=-0.002)),
    ],
)
def test_subpixel_accuracy_after_fifteen_frames(scene, motion):
    frames, to_image = warped_clip(scene_image(scene), **motion)
    queries = grid_queries()
    truth = true_positions(to_image, queries.astype(np.float64))
    tracks, visible = OpticalFlowTracker().track(frames, random_depth(), queries)

    away_from_borders = np.all((truth > 20) & (truth < IMAGE_BOUNDS - 20), axis=(0, 2))
    error = np.linalg.norm(tracks[-1, :, :2] - truth[-1], axis=1)[away_from_borders]
    assert away_from_borders.sum() > 2000
    assert np.median(error) < 0.5, f"median error {np.median(error):.3f} px after {FRAME_COUNT - 1} frames"
    assert np.percentile(error, 90) < 1.5
    assert visible[:, away_from_borders].mean() > 0.98


def test_points_leaving_the_image_become_invisible():
    frames, to_image = warped_clip(scene_image("05_juggle.mp4"), shift_per_frame=(4.0, -2.0))
    queries = grid_queries()
    truth = true_positions(to_image, queries.astype(np.float64))
    tracks, visible = OpticalFlowTracker().track(frames, random_depth(), queries)

    clearly_outside = np.any((truth < -3) | (truth > IMAGE_BOUNDS + 3), axis=2)
    assert clearly_outside[-1].sum() > 1000  # 60 px to the left and 30 px down over the clip
    assert not visible[clearly_outside].any()
    assert np.all((tracks[..., :2] >= 0) & (tracks[..., :2] <= IMAGE_BOUNDS))  # reported clamped
    clearly_inside = np.all((truth > 3) & (truth < IMAGE_BOUNDS - 3), axis=2)
    assert visible[clearly_inside].mean() > 0.98


def test_depth_is_read_at_the_nearest_pixel_of_the_tracked_position():
    frames, _ = warped_clip(scene_image("bedroom.mp4"), shift_per_frame=(1.5, 0.5))
    depth = random_depth(seed=1)  # every pixel different: a blend or an off-by-one would show
    queries = grid_queries(step_u=11.3, step_v=7.7)
    tracks, _ = OpticalFlowTracker().track(frames, depth, queries)
    rows = np.rint(tracks[..., 1]).astype(int)
    cols = np.rint(tracks[..., 0]).astype(int)
    expected = depth[np.arange(FRAME_COUNT)[:, None], rows, cols]
    assert np.array_equal(tracks[..., 2], expected)


def test_output_contract():
    frames, _ = warped_clip(scene_image("05_juggle.mp4"), shift_per_frame=(0.8, 0.4))
    queries = (np.random.default_rng(2).uniform(0, 1, (500, 2)) * IMAGE_BOUNDS).astype(np.float32)
    tracker = OpticalFlowTracker()
    tracker.setup()
    tracks, visible = tracker.track(frames, random_depth(), queries)
    assert tracks.shape == (FRAME_COUNT, 500, 3) and tracks.dtype == np.float32
    assert visible.shape == (FRAME_COUNT, 500) and visible.dtype == bool
    assert np.array_equal(tracks[0, :, :2], queries)
    assert visible[0].all()
    assert tracker.name == "dis-flow-chain" and tracker.version


def test_unknown_preset_is_refused_at_setup():
    with pytest.raises(ValueError, match="preset"):
        OpticalFlowTracker(preset="finest").setup()
