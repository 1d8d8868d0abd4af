"""RigidObjectTracker on a plane moved by a known SE(3) and on rendered pybullet scenes with ground truth."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pointvid_pipeline.clip import FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH, project, rigid_fit, transform, unproject
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.stages.object_tracking import RigidObjectTracker, fit_pose_ransac, refine_pose_on_depth
from pointvid_pipeline.stages.query_points import sample_query_points, sample_seed
from pointvid_pipeline.stages.tracking import OpticalFlowTracker
from pointvid_pipeline.synthetic.scenes import load_default_scenes, render_scene, scene_intrinsics

OBJECT_HALF_SIZE = 0.3  # metres, half the side of the moving textured square
BACKGROUND_Z = 3.0  # metres, the static textured wall behind it


def texture(seed: int, size: int = 512) -> np.ndarray:
    """Smooth random grey texture: trackable everywhere, like a textured surface."""
    noise = np.random.default_rng(seed).uniform(0, 255, (size, size)).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), 2.0)
    return cv2.normalize(blurred, None, 0, 255, cv2.NORM_MINMAX)


def motion(t: int) -> np.ndarray:
    """Camera-space pose of the square at frame t relative to frame 0: 1.5 deg/frame about a tilted axis
    through its centre, plus a drift of (1, 0.5, 1) cm/frame."""
    axis = np.array([0.3, 1.0, 0.2]) / np.linalg.norm([0.3, 1.0, 0.2])
    rotation, _ = cv2.Rodrigues(axis * np.deg2rad(1.5) * t)
    centre = np.array([0.0, 0.0, 1.5])
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = centre - rotation @ centre + np.array([0.01, 0.005, 0.01]) * t
    return pose


def render_plane_clip(motion=motion) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast frames and exact z-depth of a tilted textured square, moved by `motion`, in front of a textured wall.

    Returns frames (T,H,W,3) u8, depth (T,H,W) f32 and the frame-0 labels (1 on the square).
    """
    intrinsics = scene_intrinsics()
    rows, cols = np.mgrid[0:FRAME_HEIGHT, 0:FRAME_WIDTH].astype(np.float64)
    rays = unproject(np.stack([cols, rows, np.ones_like(cols)], axis=-1), intrinsics)  # z = 1
    tilt, _ = cv2.Rodrigues(np.array([0.4, -0.3, 0.0]))
    centre0, axes0 = np.array([0.0, 0.0, 1.5]), tilt  # square's centre and (in-plane u, in-plane v, normal) columns
    object_texture, wall_texture = texture(1), texture(2)
    scale = (object_texture.shape[0] - 1) / (2 * OBJECT_HALF_SIZE)
    frames = np.empty((FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH, 3), np.uint8)
    depth = np.empty((FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH), np.float32)
    labels = np.zeros((FRAME_HEIGHT, FRAME_WIDTH), np.int32)
    for t in range(FRAME_COUNT):
        pose = motion(t)
        centre, axes = pose[:3, :3] @ centre0 + pose[:3, 3], pose[:3, :3] @ axes0
        z = (axes[:, 2] @ centre) / (rays @ axes[:, 2])  # ray-plane intersection; rays have z = 1
        offset = rays * z[..., None] - centre
        plane_uv = np.stack([offset @ axes[:, 0], offset @ axes[:, 1]], axis=-1)
        on_square = np.all(np.abs(plane_uv) < OBJECT_HALF_SIZE, axis=-1) & (z > 0)
        square_px = ((plane_uv + OBJECT_HALF_SIZE) * scale).astype(np.float32)
        square = cv2.remap(object_texture, square_px[..., 0], square_px[..., 1], cv2.INTER_LINEAR)
        wall_px = (rays[..., :2] * BACKGROUND_Z * 300 + 256).astype(np.float32)  # static wall, 300 texels/m
        wall = cv2.remap(wall_texture, wall_px[..., 0], wall_px[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        grey = np.where(on_square, square, wall)
        frames[t] = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
        depth[t] = np.where(on_square, z, BACKGROUND_Z)
        if t == 0:
            labels[on_square] = 1
    return frames, depth, labels


def test_rigid_fit_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, (50, 3))
    pose = motion(7)
    assert np.allclose(rigid_fit(points, points @ pose[:3, :3].T + pose[:3, 3]), pose, atol=1e-9)


def test_ransac_draws_enough_triples_when_few_matches_are_good():
    """A quarter of the matches good: 32 triples hold an all-good one ~40 % of the time (the pose came out right in 15 of
    these 20 draws), so it was the draw's; the stopping rule draws ~300 and finds it every time."""
    rng = np.random.default_rng(3)
    src = rng.uniform([-0.1, -0.1, 0.9], [0.1, 0.1, 1.1], (400, 3))
    angle = np.deg2rad(10)
    truth = np.eye(4)
    truth[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    truth[:3, 3] = [0.02, -0.01, 0.03]
    dst = src @ truth[:3, :3].T + truth[:3, 3]
    outliers = rng.random(len(src)) > 0.25
    dst[outliers] += rng.uniform(-0.05, 0.05, (outliers.sum(), 3))

    def found(max_hypotheses: int, seed: int) -> bool:
        pose, inliers = fit_pose_ransac(src, dst, 400.0, 2.0, 32, np.random.default_rng(seed), max_hypotheses)
        return np.abs(pose - truth).max() < 1e-3 and inliers[~outliers].mean() > 0.95

    assert sum(found(0, seed) for seed in range(20)) < 18  # one batch of 32: often no all-good triple
    assert all(found(512, seed) for seed in range(20))


def true_tracks(queries: np.ndarray, depth0: np.ndarray, motion, intrinsics: np.ndarray) -> np.ndarray:
    """(T, N, 3) exact (u, v, z) of the frame-0 surface points under `queries` moved by `motion` (a camera-space pose per frame)."""
    rows, cols = queries[:, 1].astype(int), queries[:, 0].astype(int)
    start = unproject(np.column_stack([queries, depth0[rows, cols]]), intrinsics)
    return np.stack([project(start @ pose[:3, :3].T + pose[:3, 3], intrinsics) for pose in map(motion, range(FRAME_COUNT))])


def test_plane_moved_by_a_known_se3_is_tracked_to_subpixel():
    frames, depth, labels = render_plane_clip()
    intrinsics = scene_intrinsics()
    queries = sample_query_points(labels, 80, 0.1, seed=0).astype(np.float32)
    on_square = labels[queries[:, 1].astype(int), queries[:, 0].astype(int)] == 1
    tracks, visible = RigidObjectTracker().track(frames, depth, queries, labels, intrinsics)

    truth = true_tracks(queries, depth[0], motion, intrinsics)
    error = np.linalg.norm(tracks[:, on_square, :2] - truth[:, on_square, :2], axis=-1)
    assert on_square.sum() > 1000
    assert np.array_equal(tracks[0, :, :2], queries) and visible[0].all()
    assert np.median(error) < 0.1, f"median {np.median(error):.3f} px"
    assert error.max() < 0.5, f"max {error.max():.3f} px"
    rel_depth = np.abs(tracks[:, on_square, 2] - truth[:, on_square, 2]) / truth[:, on_square, 2]
    assert rel_depth.max() < 1e-3
    assert visible[:, on_square].mean() > 0.99  # faces the camera, stays in frame; misses only on its rim


def test_a_second_draw_of_one_object_holds_the_other_bodies_at_the_first_draws_poses():
    frames, depth, labels = render_plane_clip()
    intrinsics = scene_intrinsics()
    queries = sample_query_points(labels, 80, 0.1, seed=0).astype(np.float32)
    on_square = labels[queries[:, 1].astype(int), queries[:, 0].astype(int)] == 1
    first = RigidObjectTracker().draw(frames, depth, queries, labels, intrinsics)
    second = RigidObjectTracker().redrawn().draw(frames, depth, queries, labels, intrinsics, first=first, objects=[1])

    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first.poses, second.poses))  # the background: not fitted again
    assert not any(np.array_equal(a[1], b[1]) for a, b in zip(first.poses[1:], second.poses[1:]))  # the square: fitted again, with other draws
    assert np.array_equal(second.tracks[:, ~on_square], first.tracks[:, ~on_square])
    truth = true_tracks(queries, depth[0], motion, intrinsics)
    error = np.linalg.norm(second.tracks[:, on_square, :2] - truth[:, on_square, :2], axis=-1)
    assert np.median(error) < 0.1 and error.max() < 0.5, f"median {np.median(error):.3f}, max {error.max():.3f} px"  # and as accurately


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="known tracker limitation: a body that changes speed by more than DIS's reach in one frame (throws, bounces) is lost; the quality gate removes it")
def test_a_body_that_bounces_beyond_the_flows_reach_is_followed():
    """From frame 7 the square flies back 10 cm a frame (~26 px): the constant-velocity guess is 29 px off and DIS
    does not find it. What thrown objects do in generated scenes (`pointvid synth`): 8 of 22 thrown views shipped."""

    def bounce(t: int) -> np.ndarray:
        pose = motion(t)
        pose[0, 3] -= 0.11 * max(t - 6, 0)  # with motion()'s 1 cm/frame: -10 cm/frame
        return pose

    frames, depth, labels = render_plane_clip(bounce)
    intrinsics = scene_intrinsics()
    queries = sample_query_points(labels, 80, 0.1, seed=0).astype(np.float32)
    on_square = labels[queries[:, 1].astype(int), queries[:, 0].astype(int)] == 1
    truth = true_tracks(queries, depth[0], bounce, intrinsics)[:, on_square]
    in_view = (truth[..., 0] >= 0) & (truth[..., 0] <= FRAME_WIDTH - 1)
    tracks, _ = RigidObjectTracker().track(frames, depth, queries, labels, intrinsics)
    error = np.linalg.norm(tracks[:, on_square, :2] - truth[..., :2], axis=-1)
    medians = [float(np.median(error[t][in_view[t]])) for t in range(FRAME_COUNT)]
    assert in_view[-1].mean() > 0.25  # a quarter of the square is still in view at the end
    assert max(medians[:7]) < 0.5, medians  # tracked to the bounce
    assert max(medians) < 8, medians


def test_a_well_fitted_body_stays_visible_when_its_shading_changes():
    """From frame 8 the square turns into shade (half as bright): the photometric check alone would call
    it unseen, but its pose fits explain its matches, so its points stay visible."""
    frames, depth, labels = render_plane_clip()
    on_square = depth < BACKGROUND_Z
    frames[8:][on_square[8:]] //= 2
    queries = sample_query_points(labels, 80, 0.1, seed=0).astype(np.float32)
    on_square_queries = labels[queries[:, 1].astype(int), queries[:, 0].astype(int)] == 1

    _, visible = RigidObjectTracker().track(frames, depth, queries, labels, scene_intrinsics())
    _, visible_photometric_only = RigidObjectTracker(trusted_support=1.01).track(frames, depth, queries, labels, scene_intrinsics())

    assert visible[8:, on_square_queries].mean() > 0.99
    assert not visible_photometric_only[8:, on_square_queries].any()  # what the gate used to see: hidden where nothing hides it


def turned_about_centre(pose: np.ndarray, points: np.ndarray, degrees: float, axis: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """`pose` turned by `degrees` about `axis` through where it puts the points' centroid, then shifted (metres)."""
    centre = transform(pose, points.mean(0, keepdims=True))[0]
    turn = np.eye(4)
    turn[:3, :3] = cv2.Rodrigues(np.deg2rad(degrees) * axis / np.linalg.norm(axis))[0]
    turn[:3, 3] = centre - turn[:3, :3] @ centre + shift
    return turn @ pose


def pixel_error(pose: np.ndarray, truth: np.ndarray, points: np.ndarray, intrinsics: np.ndarray) -> float:
    """Median distance in pixels between the points moved by `pose` and by `truth`."""
    return float(np.median(np.linalg.norm(project(transform(pose, points), intrinsics)[:, :2] - project(transform(truth, points), intrinsics)[:, :2], axis=1)))


def test_depth_refinement_brings_a_tumbling_duck_back_onto_its_surface():
    """The plain duck of the pan scene tumbles at impact (frames 5-9), where the flow barely supports its pose:
    from its true pose turned 8 degrees and shifted 5 mm (about 3 px off), ICP onto the rendered depth lands within a
    pixel. (From 12 degrees it can fail: it refines, it does not search.)"""
    spec = next(spec for spec in load_default_scenes() if spec.name == "drop_duck_soccer_ball_ball_pan")
    clip = render_scene(spec)
    duck = clip.truth.instance_masks[0] == 1
    start = unproject(clip.truth.track_uvd[0][duck].astype(np.float64), clip.intrinsics)
    points = start[np.random.default_rng(0).permutation(len(start))[:1500]]
    for t in (6, 8, 12):
        truth = rigid_fit(start, unproject(clip.truth.track_uvd[t][duck].astype(np.float64), clip.intrinsics))
        guess = turned_about_centre(truth, points, 8.0, np.array([0.0, 0.0, 1.0]), np.array([0.005, 0.0, 0.0]))
        refined = refine_pose_on_depth(guess, points, clip.truth.depth[t], clip.intrinsics, tolerance=0.015, iterations=10)

        before, after = (pixel_error(pose, truth, points, clip.intrinsics) for pose in (guess, refined))
        assert before > 2.5
        assert after < 1.0, (t, before, after)


def test_depth_refinement_turns_a_body_about_its_own_centre():
    """The ICP's linearised rotation is applied about the body's centre: about the camera's origin, 2-3 m away, each
    round's turn also moved the body sideways, and from 8 degrees and 5 mm off the pushed soccer ball ended 107 px
    (frame 8) and 5.4 px (frame 12) off instead of 0.2 px."""
    spec = next(spec for spec in load_default_scenes() if spec.name == "push_soccer_ball_cube_static")
    clip = render_scene(spec)
    ball = clip.truth.instance_masks[0] == 1
    start = unproject(clip.truth.track_uvd[0][ball].astype(np.float64), clip.intrinsics)
    points = start[np.random.default_rng(0).permutation(len(start))[:1500]]
    for t in (8, 12):
        seen = clip.truth.track_visible[t][ball]
        truth = rigid_fit(start[seen], unproject(clip.truth.track_uvd[t][ball][seen].astype(np.float64), clip.intrinsics))
        guess = turned_about_centre(truth, points, 8.0, np.array([0.0, 0.0, 1.0]), np.array([0.005, 0.0, 0.0]))
        refined = refine_pose_on_depth(guess, points, clip.truth.depth[t], clip.intrinsics, tolerance=0.015, iterations=10)
        assert pixel_error(refined, truth, points, clip.intrinsics) < 1.0, t


def scene_errors(name: str, seeds: range) -> tuple[list[dict[int, float]], float, float]:
    """Render a default scene; per tracker seed, per object the rigid tracker's median last-frame error (gt-visible
    points), and the median foreground error over frames 1-15 of the rigid tracker (first seed) and of optical flow."""
    spec = next(spec for spec in load_default_scenes() if spec.name == name)
    clip = render_scene(spec)
    settings = PipelineSettings()
    labels = clip.truth.instance_masks[0].astype(np.int32)
    queries = sample_query_points(labels, settings.grid_size, settings.background_fraction, sample_seed(clip.key))
    u, v = queries[:, 0], queries[:, 1]
    query_labels, truth = labels[v, u], clip.truth.track_uvd[:, v, u, :2]
    seen = clip.truth.track_visible[:, v, u] & (query_labels > 0)
    seen[0] = False

    last_frame, new_medians = [], []
    for seed in seeds:
        new_tracks, _ = RigidObjectTracker(seed=seed).track(clip.frames, clip.truth.depth, queries.astype(np.float32), labels, clip.intrinsics)
        new_error = np.linalg.norm(new_tracks[..., :2] - truth, axis=-1)
        last_frame.append({int(k): float(np.median(new_error[-1][seen[-1] & (query_labels == k)])) for k in np.unique(query_labels[seen[-1]])})
        new_medians.append(float(np.median(new_error[seen])))
    old_tracks, _ = OpticalFlowTracker().track(clip.frames, clip.truth.depth, queries.astype(np.float32))
    old_error = np.linalg.norm(old_tracks[..., :2] - truth, axis=-1)
    return last_frame, new_medians[0], float(np.median(old_error[seen]))


@pytest.mark.parametrize("name", ["drop_soccer_ball_duck_block_static", "drop_ball_block_pan", "drop_duck_soccer_ball_ball_pan"])
def test_rendered_scene_objects_stay_on_target(name):
    """Every object within 8 px at the last frame for at least 6 of 8 tracker seeds (RANSAC draws). One draw is not
    the property: the pan scene's duck bounces with few flow matches, and on an AVX-512 machine its error over seeds
    0-7 was 14.5, 4.4, 11.2, 2.7, 1.8, 2.4, 2.4, 3.0 px with 32 RANSAC triples per fit (seed 0 within 8 px on the
    machine the scene was added on), and 2.5-3.0 px in 7 of 8 with RANSAC's stopping rule (14.2 px with seed 7)."""
    last_frame, new_median, old_median = scene_errors(name, range(8))
    on_target = [all(error < 8.0 for error in errors.values()) for errors in last_frame]
    assert sum(on_target) >= 6, last_frame
    assert new_median < 0.5 * old_median, (new_median, old_median)


@pytest.mark.xfail(strict=True, reason="known tracker limitation: the plain duck tumbles over and ends ~60 px off; the quality gate removes it from the shards")
def test_tumbling_duck_stays_on_target():
    (last_frame,), new_median, old_median = scene_errors("drop_duck_cube_static", range(1))
    assert new_median < 0.5 * old_median  # the scene as a whole is tracked far better than before
    assert all(error < 8.0 for error in last_frame.values()), last_frame
