"""Synchronized camera rigs (issue 15 part 3): one simulation rendered by several cameras, checked in world space.

Real pybullet renders, a real `pointvid synth` / `pointvid run` in a child process, real shards read back.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree

from pointvid_pipeline.backends.registry import lazy_backends
from pointvid_pipeline.clip import FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH, project, unproject
from pointvid_pipeline.pipeline import STAGES, input_rows, partition_rows, run_stage
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.shard_format import file_md5, load_points, read_samples
from pointvid_pipeline.synthetic.cameras import MOVEMENTS
from pointvid_pipeline.synthetic.generator import generate_scenes
from pointvid_pipeline.synthetic.scenes import SceneSpec, render_scene, render_views
from training.data import make_view_pair_loader

SEED = 3
RING_VALUES = {"static": 0.0, "truck": 0.3, "dolly": 0.25, "pedestal": 0.2, "tilt": 12.0, "pan": 12.0, "spin": 30.0, "following": 1.0, "zoom": 1.5, "orbit": 30.0}
AGREE_M = 0.01  # a surface point and a rendered depth agree within max(1 cm, 1 %), as the ground truth's visibility does


def _to_world(points_cam: np.ndarray, extrinsic: np.ndarray) -> np.ndarray:
    return (points_cam - extrinsic[:3, 3]) @ extrinsic[:3, :3]


def _to_camera(points_world: np.ndarray, extrinsic: np.ndarray) -> np.ndarray:
    return points_world @ extrinsic[:3, :3].T + extrinsic[:3, 3]


def _centre(extrinsic: np.ndarray) -> np.ndarray:
    return -extrinsic[:3, :3].T @ extrinsic[:3, 3]


def _object_points(truth, label: int, t: int) -> np.ndarray:
    """World points of every pixel of object `label` in frame t, from the rendered depth."""
    rows, columns = np.nonzero(truth.instance_masks[t] == label)
    uvd = np.stack([columns, rows, truth.depth[t][rows, columns]], axis=-1).astype(np.float64)
    return _to_world(unproject(uvd, truth.intrinsics[t]), truth.extrinsics[t])


def _seen_by(points_world: np.ndarray, truth, label: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """For world points of object `label`, projected into a view at frame t: which land on that object's pixels, and there
    (rendered depth - the point's depth): 0 where the view sees the point, negative where it is hidden behind the visible surface."""
    uvd = project(_to_camera(points_world, truth.extrinsics[t]), truth.intrinsics[t])
    column, row = np.rint(uvd[:, 0]).astype(int), np.rint(uvd[:, 1]).astype(int)
    inside = (uvd[:, 2] > 0) & (column >= 0) & (column < FRAME_WIDTH) & (row >= 0) & (row < FRAME_HEIGHT)
    column, row = np.where(inside, column, 0), np.where(inside, row, 0)
    on_object = inside & (truth.instance_masks[t][row, column] == label)
    return on_object, truth.depth[t][row, column] - uvd[:, 2]


def _agreement(first, second, objects: int, offset: int = 0) -> tuple[float, float]:
    """Over frames and objects: the share of `first`'s object points that `second` (at frame t + offset) sees where they
    are, and the share that would float in front of `second`'s rendered surface (impossible in one world)."""
    agree, in_front, total = 0, 0, 0
    for t in range(0, FRAME_COUNT - offset, 3):
        for label in range(1, objects + 1):
            on_object, residual = _seen_by(_object_points(first, label, t), second, label, t + offset)
            tolerance = np.maximum(AGREE_M, 0.01 * np.abs(residual))
            agree += int((on_object & (np.abs(residual) <= tolerance)).sum())
            in_front += int((on_object & (residual > 2 * AGREE_M)).sum())
            total += len(on_object)
    return agree / total, in_front / total


@pytest.fixture(scope="module")
def ring():
    """One collision filmed by ten cameras in a ring, one per movement of the taxonomy (fixed focus, except following)."""
    scene = next(s for s in generate_scenes(10, SEED) if s["motion"] == "collide")
    cameras = [
        {"movement": movement, "value": RING_VALUES[movement], "azimuth_deg": 36.0 * i, "elevation_deg": 48.0, "distance": 1.35, "hfov_deg": 50.0,
         "focus": "follow" if movement == "following" else "fixed", "subject": 0 if movement == "following" else None}
        for i, movement in enumerate(MOVEMENTS)
    ]  # fmt: skip
    spec = SceneSpec.from_dict({**scene, "name": "ring", "camera": cameras})
    return spec, {view.source["camera"]: view for view in render_views(spec)}


def test_a_rig_films_one_simulation(ring):
    """Every view carries the same object poses, and the first view is bit for bit what the first camera alone renders:
    rendering more cameras does not touch the physics."""
    spec, views = ring
    first = next(iter(views.values()))
    assert [view.key for view in views.values()] == [f"ring_cam{k}" for k in range(len(MOVEMENTS))]
    for view in views.values():
        np.testing.assert_array_equal(view.truth.object_poses, first.truth.object_poses)
        assert set(np.unique(view.truth.instance_masks[0])) == set(range(len(spec.objects) + 1)), f"{view.key}: an object is out of frame 0"
        assert view.truth.depth.max() < 5.0  # floor or backdrop behind every pixel
    alone = render_scene(SceneSpec.from_dict({**{k: getattr(spec, k) for k in ("seed", "objects", "motion", "floor", "background", "light")}, "name": "alone", "camera": spec.camera[0]}))
    np.testing.assert_array_equal(alone.frames, first.frames)
    np.testing.assert_array_equal(alone.truth.object_poses, first.truth.object_poses)
    np.testing.assert_array_equal(alone.truth.track_uvd, first.truth.track_uvd)
    moved = np.linalg.norm(first.truth.object_poses[-1, :, :3, 3] - first.truth.object_poses[0, :, :3, 3], axis=-1)
    assert moved.max() > 0.05  # the objects collide: a physics difference between views would show


@pytest.mark.parametrize("movement", list(MOVEMENTS))
def test_every_program_keeps_static_points_fixed_in_world(ring, movement):
    """Floor and backdrop points seen again at frame t, unprojected with that frame's K and extrinsic, are where they were at frame 0."""
    truth = ring[1][movement].truth
    rows, columns = np.nonzero(truth.instance_masks[0] == 0)
    world0 = _to_world(unproject(np.stack([columns, rows, truth.depth[0][rows, columns]], axis=-1).astype(np.float64), truth.intrinsics[0]), truth.extrinsics[0])
    for t in (5, 10, FRAME_COUNT - 1):
        visible = truth.track_visible[t][rows, columns]
        uvd = truth.track_uvd[t][rows, columns][visible].astype(np.float64)
        column, row = np.rint(uvd[:, 0]).astype(int), np.rint(uvd[:, 1]).astype(int)
        seen = np.stack([column, row, truth.depth[t][row, column]], axis=-1)  # the pixel that renders the point
        error = np.linalg.norm(_to_world(unproject(seen, truth.intrinsics[t]), truth.extrinsics[t]) - world0[visible], axis=-1)
        assert visible.mean() > 0.3 and np.median(error) < 3e-3, (movement, t, visible.mean(), np.median(error))
    if movement != "static":
        assert not (np.allclose(truth.extrinsics[0], truth.extrinsics[-1]) and np.allclose(truth.intrinsics[0], truth.intrinsics[-1]))


def test_rendered_programs_zoom_spin_follow_static(ring):
    views = ring[1]
    for movement, view in views.items():  # only the zoom changes K
        if movement != "zoom":
            np.testing.assert_array_equal(view.truth.intrinsics, np.broadcast_to(view.truth.intrinsics[0], (FRAME_COUNT, 3, 3)))
    static = views["static"].truth
    np.testing.assert_array_equal(static.extrinsics, np.broadcast_to(static.extrinsics[0], (FRAME_COUNT, 4, 4)))
    zoom = views["zoom"].truth  # zoom changes intrinsics and not extrinsics
    np.testing.assert_array_equal(zoom.extrinsics, np.broadcast_to(zoom.extrinsics[0], (FRAME_COUNT, 4, 4)))
    np.testing.assert_allclose(zoom.intrinsics[:, 0, 0] / zoom.intrinsics[0, 0, 0], 1.5 ** np.linspace(0, 1, FRAME_COUNT))
    np.testing.assert_array_equal(zoom.intrinsics[:, :2, 2], np.broadcast_to(zoom.intrinsics[0, :2, 2], (FRAME_COUNT, 2)))
    spin = views["spin"].truth  # spin rotates about the optical axis: centre and axis stay, the image axes turn by the value
    for t in range(FRAME_COUNT):
        np.testing.assert_allclose(_centre(spin.extrinsics[t]), _centre(spin.extrinsics[0]), atol=1e-9)
        np.testing.assert_allclose(spin.extrinsics[t][2, :3], spin.extrinsics[0][2, :3], atol=1e-9)
    roll = np.rad2deg(np.arccos(np.clip(spin.extrinsics[-1][0, :3] @ spin.extrinsics[0][0, :3], -1, 1)))
    assert np.isclose(roll, 30.0, atol=1e-4)
    follow = views["following"]  # following keeps the followed object near the image centre
    offsets = []
    for t in range(FRAME_COUNT):
        rows, columns = np.nonzero(follow.truth.instance_masks[t] == 1)
        offsets.append(np.hypot(columns.mean() - follow.intrinsics[0, 2], rows.mean() - follow.intrinsics[1, 2]))
    assert max(offsets) < 20 and np.linalg.norm(_centre(follow.truth.extrinsics[-1]) - _centre(follow.truth.extrinsics[0])) > 0.02  # it moved with its subject


def test_views_of_one_scene_agree_in_world_space(ring):
    """Object points of one view, taken to world with its extrinsic and into another view with that one's: where the other
    view sees that object there, its rendered depth agrees; no point floats in front of what it renders. A view a few
    frames late does not: many points float in front of its surfaces (the check sees the physics)."""
    spec, views = ring
    first = views["static"].truth
    for movement, view in views.items():
        if movement == "static":
            continue
        agree, in_front = _agreement(first, view.truth, len(spec.objects))
        assert agree > 0.3 and in_front < 0.01, (movement, agree, in_front)
    _, late_in_front = _agreement(first, views["orbit"].truth, len(spec.objects), offset=4)
    assert late_in_front > 0.05


def test_synth_cameras_draws_rigs_with_every_class_for_every_camera(tmp_path):
    single, rigs = generate_scenes(23, SEED), generate_scenes(23, SEED, cameras=3)
    for one, rig in zip(single, rigs):  # the same scenes, their first camera unchanged, two more
        assert rig["camera"][0] == one["camera"] and {k: v for k, v in rig.items() if k not in ("name", "camera")} == {k: v for k, v in one.items() if k not in ("name", "camera")}
        assert len({camera["movement"] for camera in rig["camera"]}) == 3
    for k in range(3):
        assert {scene["camera"][k]["movement"] for scene in rigs[:10]} == set(MOVEMENTS)
        assert {scene["camera"][k]["movement"] for scene in rigs[10:20]} == set(MOVEMENTS)
    assert rigs == generate_scenes(23, SEED, cameras=3)
    out = tmp_path / "rigs.json"
    command = [sys.executable, "-m", "pointvid_pipeline.cli", "synth", "--count", "23", "--seed", str(SEED), "--cameras", "3", "--out", str(out)]
    for _ in range(2):  # a second run overwrites the file
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0 and "23 scenes, 69 views" in done.stderr, done.stderr
    assert json.loads(out.read_text()) == rigs
    too_many = subprocess.run([*command[:-2], "--cameras", "11"], capture_output=True, text=True, timeout=120, check=False)
    assert too_many.returncode == 2 and "at most 10 cameras" in too_many.stderr


def test_partitions_never_split_a_scene(tmp_path):
    """Shards take whole scenes (three views each, shard size 8: two scenes a shard); a scene with more views than the
    shard size fills one alone; a view added later joins its scene's shard."""
    scenes = generate_scenes(5, SEED, cameras=3)
    path = tmp_path / "scenes.json"
    path.write_text(json.dumps(scenes))
    settings = PipelineSettings(data_dir=tmp_path / "data", scenes=str(path), shard_size=8)
    shards = partition_rows(settings)
    assert [len(rows) for rows in shards.values()] == [6, 6, 3]
    assert len(input_rows(settings)) == 15
    for rows in shards.values():
        assert all(sum(row.scene == scene for row in rows) in (0, 3) for scene in {row.scene for row in rows})
    grown = [*scenes, generate_scenes(6, SEED + 1, cameras=10)[5]]  # a ten-camera scene: more views than the shard size
    grown[0] = {**grown[0], "camera": [*grown[0]["camera"], "static"]}  # scene 0 gets a fourth camera
    path.write_text(json.dumps(grown))
    after = partition_rows(settings)
    assert [len(rows) for rows in after.values()] == [7, 6, 3, 10]
    assert [row.key for row in after["shard-00000"]][:4] == [f"{scenes[0]['name']}_cam{k}" for k in range(4)]


def _shipped_world(sample: dict, label: int, t: int) -> np.ndarray:
    """World points of object `label` at frame t as shipped (valid and visible), with the view's K and extrinsic of that frame."""
    points, labels, meta = sample["points"], sample["labels"], sample["meta"]
    keep = points["valid"] & points["visible"][t] & (labels == label)
    uvd = points["uvd"][t][keep].astype(np.float64)
    return _to_world(unproject(uvd, np.asarray(meta["frame_intrinsics"][t])), np.asarray(meta["extrinsics"][t]))


def test_pointvid_run_ships_synchronized_views_in_one_shard(tmp_path):
    """`pointvid synth --cameras 2` then `pointvid run --scenes`: both views of a scene in one shard with scene_id, camera_id,
    per-frame extrinsics and intrinsics and the same object poses; the shipped 3D points of one object at one frame agree in
    world space across the views; a rerun elsewhere writes the same bytes; the loader draws the two views as a pair."""
    drawn = tmp_path / "drawn.json"
    done = subprocess.run([sys.executable, "-m", "pointvid_pipeline.cli", "synth", "--count", "10", "--seed", str(SEED), "--cameras", "2", "--out", str(drawn)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    scene = next(s for s in json.loads(drawn.read_text()) if s["motion"] in ("push", "collide", "slide"))  # objects on the floor: the cpu tracker keeps them
    scenes = tmp_path / "scenes.json"
    scenes.write_text(json.dumps([scene]))
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "pointvid_pipeline.cli", "run", "--scenes", str(scenes), "--data-dir", str(tmp_path / "data")], env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    shard = tmp_path / "data" / "shards" / "shard-00000.tar"
    samples = {}
    for key, members in read_samples(shard).items():
        samples[key] = {"meta": json.loads(members["json"]), "points": load_points(members["points.npz"]), "labels": np.asarray(Image.open(io.BytesIO(members["mask.png"])), dtype=np.int32)}
    first, second = (samples[f"{scene['name']}_cam{k}"] for k in range(2))
    for k, sample in enumerate((first, second)):
        meta = sample["meta"]
        assert meta["scene_id"] == scene["name"] and meta["camera_id"] == k and meta["source"]["camera"] == scene["camera"][k]["movement"]
        assert np.asarray(meta["extrinsics"]).shape == (FRAME_COUNT, 4, 4) and np.asarray(meta["frame_intrinsics"]).shape == (FRAME_COUNT, 3, 3)
        assert meta["caption"].startswith(f"<synthetic> <camera-{scene['camera'][k]['movement']}> ")
    assert first["meta"]["object_poses"] == second["meta"]["object_poses"] and np.asarray(first["meta"]["object_poses"]).shape == (FRAME_COUNT, len(scene["objects"]), 4, 4)
    distances = []
    for t in range(0, FRAME_COUNT, 3):
        for label in range(1, len(scene["objects"]) + 1):
            a, b = _shipped_world(first, label, t), _shipped_world(second, label, t)
            if len(a) > 50 and len(b) > 50:
                distances.append(np.median(cKDTree(b).query(a)[0]))  # nearest point of the other view: small on the surface both see
    assert len(distances) >= 5 and np.median(distances) < 0.01, distances

    again = PipelineSettings(data_dir=tmp_path / "again", scenes=str(scenes))  # in-process, another folder: the same bytes
    backends = lazy_backends("cpu")
    for stage in STAGES:
        run_stage(stage, "shard-00000", again, backends)
    assert file_md5(again.shards_dir / "shard-00000.tar") == file_md5(shard)

    pairs = make_view_pair_loader(str(shard), 4, 32, 56, 1, 10.0, seed=0)
    for batch in itertools.islice(pairs, 3):
        keys = {batch["a"]["key"][0], batch["b"]["key"][0]}
        assert keys == set(samples) and batch["a"]["scene_id"] == batch["b"]["scene_id"] == [scene["name"]]
        camera = batch["a"]["camera_id"].item()
        np.testing.assert_allclose(batch["a"]["extrinsics"][0].numpy(), np.asarray(samples[f"{scene['name']}_cam{camera}"]["meta"]["extrinsics"])[[0, 4, 8, 12]], rtol=1e-6, atol=1e-6)
        assert batch["a"]["video"].shape == batch["b"]["video"].shape == (1, 4, 3, 32, 56)
