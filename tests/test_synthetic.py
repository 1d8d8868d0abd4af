"""Synthetic scenes: real pybullet rendering, checked against the geometry the renderer must obey."""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import json
import os
import re
import subprocess
import sys

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
from pointvid_pipeline.stages.object_prompts import LexicalObjectExtractor
from pointvid_pipeline.storage.shard_format import read_samples
from pointvid_pipeline.synthetic.cameras import MOVEMENTS, CameraProgram, camera_pose, look_at
from pointvid_pipeline.synthetic.generator import generate_scenes
from pointvid_pipeline.synthetic.scenes import (
    FAR,
    OBJECT_KINDS,
    SceneSpec,
    load_default_scenes,
    render_scene,
    render_view,
    scene_caption,
    scene_intrinsics,
)
from training.data import make_loader

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


# ---------------------------------------------------------------- scene specs of the issue-15 format

MAIN_HASHES = {  # sha256[:16] of the renderer's own arrays, rendered by main's code before the spec format grew (4f34e33, pybullet 3.2.7)
    "drop_duck_cube_static": {"frames": "361dad52e1efc3c7", "intrinsics": "437343368a5c9ff2", "depth": "2b140be784c3c367", "instance_masks": "d9e21e69cf49b090", "track_visible": "bf70980e9b5bdc1c"},
    "drop_ball_teddy_block_orbit": {"frames": "02d5cfd0dd06ef67", "intrinsics": "437343368a5c9ff2", "depth": "cc167e6e891a25cd", "instance_masks": "5a1caad04fffaa30", "track_visible": "261bd433a8d8b07a"},
    "drop_duck_soccer_ball_ball_pan": {"frames": "d7949355f5eae270", "intrinsics": "437343368a5c9ff2", "depth": "8b37192444484557", "instance_masks": "a27b8a920a969eda", "track_visible": "2bea95ab36f46500"},
    "drop_four_toys_dolly": {"frames": "1ecf34c6ab54ba11", "intrinsics": "437343368a5c9ff2", "depth": "e6ade459207deac7", "instance_masks": "4983c4384c0ca750", "track_visible": "1a8f6fb7406935bc"},
}  # fmt: skip
# The camera geometry is float64 computed by numpy, whose last bits depend on the CPU's SIMD and BLAS kernels (the hashes
# above hold on every machine seen; these arrays' hashes did not): (sum, sum of squares) of each, rendered by 4f34e33.
MAIN_GEOMETRY = {
    "drop_duck_cube_static": {"extrinsics": (20.499129054598427, 91.06208019876614), "track_uvd": (654842843.915259, 164807738589.74747)},
    "drop_ball_teddy_block_orbit": {"extrinsics": (16.608290020639394, 90.52819056071961), "track_uvd": (677232816.969441, 174197940834.28345)},
    "drop_duck_soccer_ball_ball_pan": {"extrinsics": (31.46311957762947, 91.27700391241525), "track_uvd": (594344716.0604084, 139874166472.40372)},
    "drop_four_toys_dolly": {"extrinsics": (-2.3351068478852897, 97.32830710114337), "track_uvd": (651755737.884781, 172102339338.82544)},
}
GENERATOR_SEED = 5


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    return hashlib.sha256(str(array.dtype).encode() + str(array.shape).encode() + array.tobytes()).hexdigest()[:16]


def test_default_scenes_render_as_main_did(static_clip, orbit_clip):
    """One scene per camera move of the old format: every array equals what main rendered (tracker tuning relies on it), the
    float64 camera geometry to 1e-9."""
    if importlib.metadata.version("pybullet") != "3.2.7":
        pytest.skip(f"hashes were taken with pybullet 3.2.7, this is {importlib.metadata.version('pybullet')}")
    clips = {STATIC_DROP: static_clip, ORBIT_DROP: orbit_clip}
    for name, expected in MAIN_HASHES.items():
        clip = clips.get(name) or render_scene(_spec(name))
        truth = clip.truth
        arrays = {"frames": clip.frames, "intrinsics": clip.intrinsics, "depth": truth.depth, "instance_masks": truth.instance_masks, "track_visible": truth.track_visible}
        assert {key: _digest(value) for key, value in arrays.items()} == expected, name
        for key, sums in MAIN_GEOMETRY[name].items():
            values = getattr(truth, key).astype(np.float64)
            np.testing.assert_allclose([values.sum(), (values * values).sum()], sums, rtol=1e-9, err_msg=f"{name} {key}")
        np.testing.assert_array_equal(truth.intrinsics, np.broadcast_to(clip.intrinsics, (FRAME_COUNT, 3, 3)))


@pytest.fixture(scope="module")
def generated():
    return generate_scenes(12, GENERATOR_SEED)


def test_generator_is_deterministic_stratified_and_valid(generated, tmp_path):
    assert generated == generate_scenes(12, GENERATOR_SEED)
    assert generated != generate_scenes(12, GENERATOR_SEED + 1)
    for count in (len(MOVEMENTS), len(MOVEMENTS) + 3):
        assert {scene["camera"]["movement"] for scene in generate_scenes(count, 11)} == set(MOVEMENTS)
    assert len({scene["name"] for scene in generated}) == 12
    extractor = LexicalObjectExtractor()
    for scene in generated:
        spec = SceneSpec.from_dict(scene)
        caption = scene_caption(spec)
        assert caption.startswith(f"{SYNTHETIC_CAPTION_TAG} <camera-{scene['camera']['movement']}> ")
        assert len(extractor.extract([caption])[0].names) == len(spec.objects)  # every object named, none twice
    out = tmp_path / "scenes.json"
    done = subprocess.run([sys.executable, "-m", "pointvid_pipeline.cli", "synth", "--count", "12", "--seed", str(GENERATOR_SEED), "--out", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text()) == generated
    assert [spec.name for spec in load_default_scenes(out)] == [scene["name"] for scene in generated]


def _program(movement: str, value: float, focus: str = "fixed") -> CameraProgram:
    return CameraProgram(movement, value, azimuth=0.7, elevation=np.deg2rad(48.0), distance=1.2, focus=focus)


def _centre(extrinsic: np.ndarray) -> np.ndarray:
    return -extrinsic[:3, :3].T @ extrinsic[:3, 3]


@pytest.mark.parametrize("movement", sorted(MOVEMENTS))
def test_camera_programs_move_as_their_names_say(movement):
    anchor = np.array([0.1, -0.2, 0.12])
    travel = np.array([0.3, 0.1, 0.0])
    value = {"static": 0.0, "truck": 0.3, "dolly": 0.25, "pedestal": 0.2, "tilt": 12.0, "pan": 12.0, "spin": 30.0, "following": 1.0, "zoom": 1.5, "orbit": 30.0}[movement]
    program = _program(movement, value)
    (first, k_first), (last, k_last) = (camera_pose(program, s, anchor, anchor, travel * s, FRAME_WIDTH, FRAME_HEIGHT) for s in (0.0, 1.0))
    moved, turn = _centre(last) - _centre(first), last[:3, :3] @ first[:3, :3].T
    if movement != "zoom":
        np.testing.assert_array_equal(k_first, k_last)
    expected_move = {"truck": 0.3 * first[0, :3], "pedestal": [0.0, 0.0, 0.2], "following": travel}
    if movement in expected_move:  # pure translations
        np.testing.assert_allclose(moved, expected_move[movement], atol=1e-9)
        np.testing.assert_allclose(turn, np.eye(3), atol=1e-9)
    elif movement == "dolly":  # along the optical axis, towards the focus
        assert np.allclose(moved / np.linalg.norm(moved), first[2, :3]) and np.isclose(np.linalg.norm(moved), 0.25 * 1.2)
    elif movement == "orbit":  # same distance and height around the focus, turned 30 degrees about the vertical
        assert np.isclose(np.linalg.norm(_centre(last) - anchor), np.linalg.norm(_centre(first) - anchor)) and np.isclose(moved[2], 0.0)
        assert np.isclose(np.rad2deg(np.arccos(np.clip(first[2, :2] @ last[2, :2] / np.linalg.norm(first[2, :2]) / np.linalg.norm(last[2, :2]), -1, 1))), 30.0)
    else:  # rotations about the camera centre (static and zoom: no motion at all)
        np.testing.assert_allclose(moved, 0.0, atol=1e-9)
        angle = np.rad2deg(np.arccos(np.clip((np.trace(turn) - 1) / 2, -1, 1)))
        assert np.isclose(angle, {"pan": 12.0, "tilt": 12.0, "spin": 30.0}.get(movement, 0.0), atol=1e-4)  # arccos near 1 loses digits
        if movement == "spin":  # about the optical axis: it keeps pointing the same way, the picture turns counterclockwise
            np.testing.assert_allclose(last[2, :3], first[2, :3], atol=1e-9)
            assert (last[:3, :3] @ first[0, :3])[1] < 0  # what was image-right is now up-right
        if movement == "zoom":
            np.testing.assert_array_equal(first, last)
            assert np.isclose(k_last[0, 0] / k_first[0, 0], 1.5) and np.array_equal(k_first[:2, 2], k_last[:2, 2])
    assert program.labels[0] == {"static": "static", "truck": "truck-right", "dolly": "dolly-in", "pedestal": "pedestal-up", "tilt": "tilt-up", "pan": "pan-left",
                                 "spin": "roll-clockwise", "following": "tracking", "zoom": "zoom-in", "orbit": "arc-counterclockwise"}[movement]  # fmt: skip


def _generated_spec(generated, movement: str) -> SceneSpec:
    return SceneSpec.from_dict(next(scene for scene in generated if scene["camera"]["movement"] == movement))


def test_zoom_scene_has_per_frame_intrinsics_and_exact_ground_truth(generated):
    """A zoom changes K and not the pose; static floor points stay fixed in world space through every frame's own K."""
    spec = _generated_spec(generated, "zoom")
    clip = render_scene(spec)
    truth = clip.truth
    ratio = spec.camera["value"]
    np.testing.assert_array_equal(truth.extrinsics, np.broadcast_to(truth.extrinsics[0], truth.extrinsics.shape))
    np.testing.assert_allclose(truth.intrinsics[-1, 0, 0] / truth.intrinsics[0, 0, 0], ratio)
    np.testing.assert_array_equal(clip.intrinsics, truth.intrinsics[0])
    assert clip.source["camera_labels"][0] == ("zoom-in" if ratio > 1 else "zoom-out") and clip.source["camera_program"]["movement_type"] == "zoom"
    assert truth.depth.max() < 0.9 * FAR  # floor or backdrop everywhere, never the far plane
    u, v = _pixel_grid()
    floor = truth.instance_masks[0] == 0
    world0 = _to_world(unproject(np.stack([u[floor], v[floor], truth.depth[0][floor]], axis=-1), truth.intrinsics[0]), truth.extrinsics[0])
    for t in (7, FRAME_COUNT - 1):
        visible = truth.track_visible[t][floor]
        uvd = truth.track_uvd[t][floor][visible].astype(np.float64)
        column, row = np.rint(uvd[:, 0]).astype(int), np.rint(uvd[:, 1]).astype(int)
        seen = np.stack([column, row, truth.depth[t][row, column]], axis=-1)
        error = np.linalg.norm(_to_world(unproject(seen, truth.intrinsics[t]), truth.extrinsics[t]) - world0[visible], axis=-1)
        assert np.median(error) < 3e-3 and visible.mean() > 0.3


def test_tags_are_not_objects_for_the_extractor():
    caption = "<synthetic> <camera-truck> A large blue checkered cylinder and a white mug slide across a wooden floor while the camera moves sideways to the left."
    assert LexicalObjectExtractor().extract([caption])[0].names == ["cylinder", "mug"]


def test_pointvid_run_curates_generated_scenes_into_shards(generated, tmp_path):
    """`pointvid run --scenes`: two generated scenes (zoom, following) end in shards with their camera records; an invalid
    entry is ledgered, not fatal; the loader keeps or balances synthetic samples by camera movement."""
    chosen = [next(scene for scene in generated if scene["camera"]["movement"] == movement) for movement in ("zoom", "following")]
    scenes = tmp_path / "scenes.json"
    scenes.write_text(json.dumps([*chosen, {"name": "bad_scene", "seed": 1, "objects": ["duck", "giraffe"], "motion": "drop", "camera": "static"}]))
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "pointvid_pipeline.cli", "run", "--scenes", str(scenes), "--data-dir", str(tmp_path / "data")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    index = json.loads((tmp_path / "data" / "shards" / "shard-00000.json").read_text())
    assert [row["reason"] for row in index["rejected"]] == ["invalid_manifest_row"] and "giraffe" in index["rejected"][0]["detail"]
    shard = tmp_path / "data" / "shards" / "shard-00000.tar"
    metas = {key: json.loads(members["json"]) for key, members in read_samples(shard).items()}
    assert sorted(metas) == sorted(scene["name"] for scene in chosen)
    for scene in chosen:
        meta, camera = metas[scene["name"]], scene["camera"]
        assert meta["caption"].startswith(f"{SYNTHETIC_CAPTION_TAG} <camera-{camera['movement']}> ")
        assert meta["source"]["camera_program"]["movement_type"] == camera["movement"] and meta["source"]["camera_program"]["movement_value"] == camera["value"]
        assert meta["source"]["camera_labels"][0] in ("zoom-in", "zoom-out", "tracking")
        assert np.asarray(meta["frame_intrinsics"]).shape == (FRAME_COUNT, 3, 3) and np.asarray(meta["extrinsics"]).shape == (FRAME_COUNT, 4, 4)
        assert meta["frame_intrinsics"][0] == meta["intrinsics"]
    zoom = metas[chosen[0]["name"]]
    assert np.isclose(zoom["frame_intrinsics"][-1][0][0] / zoom["frame_intrinsics"][0][0][0], chosen[0]["camera"]["value"])
    only_zoom = make_loader(str(shard), 2, 32, 56, 1, 10.0, None, seed=0, cameras=["zoom"])
    assert {batch["key"][0] for batch in itertools.islice(only_zoom, 4)} == {chosen[0]["name"]}
    balanced = make_loader(str(shard), 2, 32, 56, 1, 10.0, 1.0, seed=0, cameras=["zoom", "following", "orbit"], balance_cameras=True)
    with pytest.warns(UserWarning, match="no sample of class 'orbit'"):
        keys = [batch["key"][0] for batch in itertools.islice(balanced, 40)]
    assert 10 <= keys.count(chosen[0]["name"]) <= 30 and len(set(keys)) == 2


def test_following_camera_keeps_its_subject_near_the_image_centre(generated):
    spec = _generated_spec(generated, "following")
    clip = render_scene(spec)
    truth, subject, value = clip.truth, spec.camera["subject"], spec.camera["value"]
    centres = np.stack([_centre(extrinsic) for extrinsic in truth.extrinsics])
    label = subject + 1
    offsets = []
    for t in range(FRAME_COUNT):
        rows, columns = np.nonzero(truth.instance_masks[t] == label)
        assert len(rows) > 100, f"subject out of view at frame {t}"
        offsets.append(np.hypot(columns.mean() - clip.intrinsics[0, 2], rows.mean() - clip.intrinsics[1, 2]))
    camera_travel = centres[-1] - centres[0]
    assert np.linalg.norm(camera_travel[:2]) > 0.05 and abs(camera_travel[2]) < 1e-9  # the subject was pushed; the camera went with it, level
    assert max(offsets) < 20  # pixels: the aim is on the subject's bounding box, its mask's centroid a little off that
    assert clip.source["camera_labels"] == ["tracking"] and 0 < value <= 1
