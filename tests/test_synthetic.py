"""Synthetic scenes: real pybullet rendering, checked against the geometry the renderer must obey."""

from __future__ import annotations

import json
import re

import numpy as np
import pybullet as p
import pybullet_data
import pytest

from pointvid_pipeline.clip import (
    FRAME_COUNT,
    FRAME_HEIGHT,
    FRAME_WIDTH,
    SYNTHETIC_CAPTION_TAG,
    unproject,
)
from pointvid_pipeline.synthetic.cameras import look_at
from pointvid_pipeline.synthetic.scenes import (
    OBJECT_KINDS,
    SceneSpec,
    load_default_scenes,
    render_scene,
    render_view,
    scene_caption,
    scene_intrinsics,
)

STATIC_DROP = "drop_duck_cube_static"
ORBIT_DROP = "drop_ball_teddy_block_orbit"


def _spec(name: str) -> SceneSpec:
    return next(spec for spec in load_default_scenes() if spec.name == name)


@pytest.fixture(scope="module")
def static_clip():
    return render_scene(_spec(STATIC_DROP))


@pytest.fixture(scope="module")
def orbit_clip():
    return render_scene(_spec(ORBIT_DROP))


@pytest.fixture(params=["static", "orbit"])
def clip(request, static_clip, orbit_clip):
    return static_clip if request.param == "static" else orbit_clip


def _pixel_grid() -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:FRAME_HEIGHT, 0:FRAME_WIDTH]
    return u, v


def _to_world(points_cam: np.ndarray, extrinsic: np.ndarray) -> np.ndarray:
    rotation, translation = extrinsic[:3, :3], extrinsic[:3, 3]
    return (points_cam - translation) @ rotation


def test_default_scenes_load_with_valid_unique_names():
    specs = load_default_scenes()
    assert len(specs) >= 12
    names = [spec.name for spec in specs]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z0-9_]+", name) for name in names)
    assert all(2 <= len(spec.objects) <= 4 and set(spec.objects) <= set(OBJECT_KINDS) for spec in specs)
    assert {spec.motion for spec in specs} == {"drop", "push"}
    assert {"static", "orbit", "dolly", "pan"} <= {spec.camera for spec in specs}


def test_explicit_scene_path_and_bad_names_rejected(tmp_path):
    good = {"name": "my_scene_1", "seed": 5, "objects": ["duck", "block"], "motion": "push", "camera": "pan"}
    path = tmp_path / "scenes.json"
    path.write_text(json.dumps([good]))
    assert load_default_scenes(path) == [SceneSpec.from_dict(good)]
    with pytest.raises(ValueError):
        SceneSpec.from_dict({**good, "name": "my.scene"})
    with pytest.raises(ValueError):
        SceneSpec.from_dict({**good, "objects": ["duck", "giraffe"]})


def test_captions_start_with_tag_and_name_every_object():
    for spec in load_default_scenes():
        caption = scene_caption(spec)
        assert caption.startswith(SYNTHETIC_CAPTION_TAG + " ")
        for kind in spec.objects:
            assert f"{OBJECT_KINDS[kind].adjective} {kind}" in caption
        assert caption == scene_caption(spec)


def test_clip_shapes_dtypes_and_source(static_clip):
    clip, truth, t, h, w = static_clip, static_clip.truth, FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH
    assert clip.key == STATIC_DROP and clip.is_synthetic
    assert clip.frames.shape == (t, h, w, 3) and clip.frames.dtype == np.uint8
    assert clip.intrinsics.shape == (3, 3)
    assert clip.intrinsics[0, 0] == clip.intrinsics[1, 1]
    assert (clip.intrinsics[0, 2], clip.intrinsics[1, 2]) == ((w - 1) / 2, (h - 1) / 2)
    assert truth.depth.shape == (t, h, w) and truth.depth.dtype == np.float32
    assert truth.instance_masks.shape == (t, h, w) and truth.instance_masks.dtype == np.int32
    assert truth.extrinsics.shape == (t, 4, 4)
    assert truth.track_uvd.shape == (t, h, w, 3) and truth.track_uvd.dtype == np.float32
    assert truth.track_visible.shape == (t, h, w) and truth.track_visible.dtype == bool
    assert truth.object_names == _spec(STATIC_DROP).objects
    assert clip.source["kind"] == "synthetic" and clip.source["scene"] == STATIC_DROP
    assert {"seed", "renderer", "pybullet_version", "fps"} <= set(clip.source)


def test_rendering_is_deterministic(static_clip):
    again = render_scene(_spec(STATIC_DROP))
    np.testing.assert_array_equal(again.frames, static_clip.frames)
    np.testing.assert_array_equal(again.truth.depth, static_clip.truth.depth)
    np.testing.assert_array_equal(again.truth.instance_masks, static_clip.truth.instance_masks)
    np.testing.assert_array_equal(again.truth.track_uvd, static_clip.truth.track_uvd)
    np.testing.assert_array_equal(again.truth.track_visible, static_clip.truth.track_visible)


def test_frame0_tracks_are_the_pixel_grid(clip):
    u, v = _pixel_grid()
    truth = clip.truth
    np.testing.assert_array_equal(truth.track_uvd[0], np.stack([u, v, truth.depth[0]], axis=-1).astype(np.float32))
    assert truth.track_visible[0].all()


def test_foreground_is_reasonable_and_every_object_is_seen(clip):
    labels = clip.truth.instance_masks[0]
    assert 0.02 <= (labels > 0).mean() <= 0.40
    assert set(np.unique(labels)) == set(range(len(clip.truth.object_names) + 1))
    assert np.all(clip.truth.depth[0] < 5.0)  # the floor fills the frame: no pixel hits the far plane


def test_dropped_objects_move_and_static_floor_stays(static_clip):
    truth = static_clip.truth
    labels = truth.instance_masks[0]
    displacement = np.linalg.norm(truth.track_uvd[-1, ..., :2] - truth.track_uvd[0, ..., :2], axis=-1)
    assert max(np.median(displacement[labels == k]) for k in range(1, labels.max() + 1)) > 5.0
    floor = labels == 0
    floor_tracks = truth.track_uvd[:, floor]
    np.testing.assert_allclose(floor_tracks, np.broadcast_to(floor_tracks[0], floor_tracks.shape), atol=1e-3)
    np.testing.assert_array_equal(truth.extrinsics, np.broadcast_to(truth.extrinsics[0], truth.extrinsics.shape))


def test_visible_tracks_agree_with_rendered_depth_and_labels(clip):
    truth = clip.truth
    labels0 = truth.instance_masks[0]
    for t in range(1, FRAME_COUNT):
        visible = truth.track_visible[t]
        uvd = truth.track_uvd[t][visible]
        column, row = np.rint(uvd[:, 0]).astype(int), np.rint(uvd[:, 1]).astype(int)
        rendered = truth.depth[t][row, column]
        tolerance = np.maximum(0.01, 0.01 * uvd[:, 2]) + 1e-5  # GT is stored as float32
        assert np.all(np.abs(rendered - uvd[:, 2]) <= tolerance)
        assert np.array_equal(truth.instance_masks[t][row, column], labels0[visible])
    assert truth.track_visible[-1].mean() > 0.5


def test_rendered_depth_is_planar_z_on_the_floor_plane(clip):
    """The pixel convention, depth linearisation and extrinsics together put every floor pixel at z=0."""
    u, v = _pixel_grid()
    truth = clip.truth
    for t in range(FRAME_COUNT):
        floor = truth.instance_masks[t] == 0
        points_cam = unproject(np.stack([u[floor], v[floor], truth.depth[t][floor]], axis=-1), clip.intrinsics)
        assert np.abs(_to_world(points_cam, truth.extrinsics[t])[:, 2]).max() < 5e-4


def test_floor_points_are_fixed_in_world_for_a_moving_camera(orbit_clip):
    truth, intrinsics = orbit_clip.truth, orbit_clip.intrinsics
    assert not np.allclose(truth.extrinsics[0], truth.extrinsics[-1])
    u, v = _pixel_grid()
    floor = truth.instance_masks[0] == 0
    pixels0 = np.stack([u[floor], v[floor], truth.depth[0][floor]], axis=-1)
    world0 = _to_world(unproject(pixels0, intrinsics), truth.extrinsics[0])
    for t in (5, 10, FRAME_COUNT - 1):
        visible = truth.track_visible[t][floor]
        uvd = truth.track_uvd[t][floor][visible].astype(np.float64)
        column, row = np.rint(uvd[:, 0]).astype(int), np.rint(uvd[:, 1]).astype(int)
        seen = np.stack([column, row, truth.depth[t][row, column]], axis=-1)  # the pixel that renders the point
        world_t = _to_world(unproject(seen, intrinsics), truth.extrinsics[t])
        error = np.linalg.norm(world_t - world0[visible], axis=-1)
        assert np.median(error) < 3e-3 and error.max() < 2e-2


def test_extrinsics_are_opencv_cameras_looking_down(orbit_clip):
    for extrinsic in orbit_clip.truth.extrinsics:
        rotation = extrinsic[:3, :3]
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
        assert np.isclose(np.linalg.det(rotation), 1.0)
        assert rotation[2, 2] < 0  # optical axis (camera z) points down at the floor
        assert rotation[1, 2] < 0  # image down (camera y) points down in the world
        assert -rotation.T @ extrinsic[:3, 3] @ [0, 0, 1] > 0.3  # camera centre well above the floor


@pytest.mark.parametrize("roll_deg", [-25.0, 25.0])
def test_tinyrenderer_images_exactly_the_pinhole_k(roll_deg):
    """A rolled camera makes floor depth vary along both image axes, so a half-pixel error in either
    cx or cy would lift unprojected floor pixels off z=0 by about a millimetre."""
    client = p.connect(p.DIRECT)
    try:
        p.loadURDF(f"{pybullet_data.getDataPath()}/plane.urdf", physicsClientId=client)
        roll = np.deg2rad(roll_deg)
        rolled = np.eye(4)
        rolled[:2, :2] = [[np.cos(roll), -np.sin(roll)], [np.sin(roll), np.cos(roll)]]
        extrinsic = rolled @ look_at(np.array([0.3, -1.0, 0.7]), np.zeros(3))
        intrinsics = scene_intrinsics()
        _, depth, segmentation = render_view(extrinsic, intrinsics, FRAME_WIDTH, FRAME_HEIGHT, client)
    finally:
        p.disconnect(client)
    u, v = _pixel_grid()
    floor = segmentation >= 0

    def floor_height_error(k: np.ndarray) -> float:
        points_cam = unproject(np.stack([u[floor], v[floor], depth[floor]], axis=-1), k)
        return float(np.abs(_to_world(points_cam, extrinsic)[:, 2]).max())

    assert floor.mean() > 0.9
    assert floor_height_error(intrinsics) < 2e-4
    for shift in ([0.5, 0.0], [0.0, 0.5]):
        shifted = intrinsics.copy()
        shifted[:2, 2] += shift
        assert floor_height_error(shifted) > 5e-4
