"""Zooming cameras (issue 15, per-frame intrinsics): two rendered zoom scenes through every stage, checked in metres.

A zoom changes K and not the pose, so a pixel track of a still point moves while its camera-space point does not.
Every stage that lifts pixels to metres or projects metres to pixels must use frame t's K for frame t; with frame 0's
K everywhere (one K per clip) the tracker mistakes the zoom for motion and the shipped points drift by centimetres.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from pointvid_pipeline.backends.registry import lazy_backends
from pointvid_pipeline.clip import unproject
from pointvid_pipeline.evaluation.point_map_accuracy import evaluate_dataset
from pointvid_pipeline.pipeline import STAGES, run_stage
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.stages.object_tracking import RigidObjectTracker
from pointvid_pipeline.stages.point_maps import densify_point_map
from pointvid_pipeline.stages.smoothing import SMOOTHING_CONFIGS, smooth_tracks
from pointvid_pipeline.storage.shard_format import load_points, read_samples, sample_intrinsics
from pointvid_pipeline.storage.stage_store import StageStore
from pointvid_pipeline.tools.inspect_shard import camera_points, inspect_sample
from training.data import make_loader
from training.losses import gather_points, normalised_uvd_to_xyz, sample_foreground_points

ZOOM_SCENES = [  # a fixed focus, so the pose stays the same in every frame: only K changes
    {"name": "zoom_in_drop", "seed": 11, "objects": ["cube", {"kind": "box", "colour": "red", "texture": "checkered"}], "motion": "drop", "camera": {"movement": "zoom", "value": 1.6}},
    {"name": "zoom_out_drop", "seed": 3, "objects": ["cube", {"kind": "sphere", "colour": "yellow", "texture": "tiled"}], "motion": "drop", "camera": {"movement": "zoom", "value": 0.65}},
]
PARTITION = "shard-00000"
METRIC_TOLERANCE_M = 0.003  # measured: 0.4-0.9 mm median per frame with per-frame K
FRAME_0_K_ERROR_M = 0.02  # measured: 51-83 mm median at the last frame with frame 0's K everywhere


@pytest.fixture(scope="module")
def zoom_run(tmp_path_factory) -> PipelineSettings:
    root = tmp_path_factory.mktemp("zoom")
    (root / "scenes.json").write_text(json.dumps(ZOOM_SCENES))
    settings = PipelineSettings(data_dir=root / "data", scenes=str(root / "scenes.json"), shard_size=len(ZOOM_SCENES))
    backends = lazy_backends(settings.profile)
    for stage in STAGES:
        run_stage(stage, PARTITION, settings, backends)
    return settings


@pytest.fixture(scope="module")
def shipped(zoom_run) -> dict[str, dict[str, bytes]]:
    samples = read_samples(zoom_run.shards_dir / f"{PARTITION}.tar")
    assert sorted(samples) == sorted(scene["name"] for scene in ZOOM_SCENES)
    return samples


def truth_metres(zoom_run: PipelineSettings, key: str, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The renderer's (T, M, 3) uvd and camera-space xyz (its uvd through its own K of each frame) of the (H, W) `pixels`,
    and where they are visible."""
    clip = StageStore(zoom_run.stages_dir).read_arrays("clips", PARTITION, key)
    uvd = np.asarray(clip["truth_track_uvd"], np.float64)[:, pixels]
    return uvd, unproject(uvd, np.asarray(clip["frame_intrinsics"])), np.asarray(clip["truth_track_visible"])[:, pixels]


def median_errors(uvd: np.ndarray, intrinsics: np.ndarray, truth_uvd: np.ndarray, truth_xyz: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame 1-15: median metric error (m) of `uvd` lifted with `intrinsics`, and median 2D error (px), over visible pixels."""
    metres = np.linalg.norm(unproject(uvd.astype(np.float64), intrinsics) - truth_xyz, axis=-1)
    pixels = np.linalg.norm(uvd[..., :2] - truth_uvd[..., :2], axis=-1)
    return np.array([np.median(metres[t][visible[t]]) for t in range(1, len(uvd))]), np.array([np.median(pixels[t][visible[t]]) for t in range(1, len(uvd))])


def test_samples_carry_the_zoom_in_their_per_frame_intrinsics(shipped):
    for scene in ZOOM_SCENES:
        meta = json.loads(shipped[scene["name"]]["json"])
        intrinsics = sample_intrinsics(meta)
        assert meta["schema_version"] == "1.2" and intrinsics.shape == (16, 3, 3)
        np.testing.assert_array_equal(intrinsics[0], meta["intrinsics"])
        np.testing.assert_allclose(intrinsics[-1, 0, 0] / intrinsics[0, 0, 0], scene["camera"]["value"])
        np.testing.assert_array_equal(intrinsics[:, :2, 2], np.broadcast_to(intrinsics[0, :2, 2], (16, 2)))  # the principal point stays


def test_samples_without_per_frame_intrinsics_are_read_with_frame_0s_for_every_frame(shipped):
    """Schema 1.0 (no frame size) and 1.1 real video (frame_intrinsics null) were curated with one K per clip."""
    meta = json.loads(shipped[ZOOM_SCENES[0]["name"]]["json"])
    for old in ({"schema_version": "1.0", "intrinsics": meta["intrinsics"]}, {**meta, "schema_version": "1.1", "frame_intrinsics": None}):
        np.testing.assert_array_equal(sample_intrinsics(old), np.broadcast_to(meta["intrinsics"], (16, 3, 3)))
    with pytest.raises(ValueError, match="'2.0' is not one of"):
        sample_intrinsics({**meta, "schema_version": "2.0"})


def test_shipped_point_map_unprojected_with_per_frame_intrinsics_is_the_truth_in_metres(zoom_run, shipped):
    """The shipped (float16) point map through each frame's K lands within 3 mm of the renderer's points; the same
    stages run with frame 0's K for every frame (the tracker, smoothing and densification of one K per clip) ship
    points centimetres off in space and pixels off in the image by the last frame."""
    store = StageStore(zoom_run.stages_dir)
    tracker = RigidObjectTracker()
    for scene in ZOOM_SCENES:
        key = scene["name"]
        meta, points = json.loads(shipped[key]["json"]), load_points(shipped[key]["points.npz"])
        valid, intrinsics = points["valid"], sample_intrinsics(meta)
        truth_uvd, truth_xyz, visible = truth_metres(zoom_run, key, valid)
        metres, pixels = median_errors(points["uvd"][:, valid], intrinsics, truth_uvd, truth_xyz, visible)
        assert metres.max() < METRIC_TOLERANCE_M and pixels.max() < 1.0, (key, metres, pixels)

        frame_0 = np.broadcast_to(intrinsics[0], intrinsics.shape)
        clip, depth = store.read_arrays("clips", PARTITION, key), np.asarray(store.read_arrays("depth", PARTITION, key)["depth"])
        queries, labels = store.read_arrays("query_points", PARTITION, key)["queries"], store.read_arrays("reference_masks", PARTITION, key)["labels"]
        tracks, track_visible = tracker.track(clip["frames"], depth, queries.astype(np.float32), labels, frame_0)
        smoothed = smooth_tracks(tracks, track_visible, frame_0, SMOOTHING_CONFIGS[zoom_run.effective_smoothing])
        old = densify_point_map(smoothed, track_visible, queries, labels, depth, frame_0, zoom_run.densification)
        old_metres, old_pixels = median_errors(old.uvd[:, valid], frame_0, truth_uvd, truth_xyz, visible)
        assert old_metres[-1] > FRAME_0_K_ERROR_M and old_pixels[-1] > 3.0, (key, old_metres, old_pixels)
        # Reading the right pixels with frame 0's K (what a reader of one K per clip does) is as far off in metres.
        assert median_errors(points["uvd"][:, valid], frame_0, truth_uvd, truth_xyz, visible)[0][-1] > FRAME_0_K_ERROR_M


def test_tapvid3d_figures_of_zoom_scenes_match_their_2d_figures(zoom_run):
    """`pointvid evaluate` lifts prediction and truth with each sample's per-frame K and back-projects the pixel
    thresholds with it (tests/test_tapvid_metrics.py has the hand-computed case), so a zoom point map within a pixel
    everywhere scores in 3D as in 2D. (Lifting both with frame 0's K would mostly cancel in the lateral error and
    misjudge depth errors by the zoom factor: this end-to-end figure alone cannot tell the two apart.)"""
    rows, missing = evaluate_dataset(zoom_run.data_dir)
    assert not missing
    scenes = [r for r in rows if r["object"] == "all" and r["subset"] == "all" and r["frames"] == "1-15"]
    assert sorted(r["key"] for r in scenes) == sorted(scene["name"] for scene in ZOOM_SCENES)
    for row in scenes:
        assert row["tapvid3d_average_pts_within_thresh"] > 0.9 and abs(row["tapvid3d_average_pts_within_thresh"] - row["tapvid2d_average_pts_within_thresh"]) < 0.05, row


def test_inspect_draws_a_zoom_sample_with_per_frame_intrinsics(zoom_run, shipped, tmp_path):
    key = ZOOM_SCENES[0]["name"]
    meta, points = json.loads(shipped[key]["json"]), load_points(shipped[key]["points.npz"])
    labels = np.zeros(points["valid"].shape, np.int32)
    last = len(points["uvd"]) - 1
    xyz, _ = camera_points(points, labels, sample_intrinsics(meta), last)  # the contact sheet's last 3D panel
    _, truth_xyz, visible = truth_metres(zoom_run, key, points["valid"])
    assert np.median(np.linalg.norm(xyz - truth_xyz[last], axis=-1)[visible[last]]) < METRIC_TOLERANCE_M
    written = inspect_sample(shipped[key], tmp_path)
    assert (tmp_path / "contact_sheet.png").stat().st_size > 30_000 and written["preview"].endswith("preview.gif")


def test_training_batch_lifts_zoom_points_to_the_truth_in_metres(zoom_run, shipped):
    """The loader's per-frame K and normalised points, through the loss's unprojection, give the renderer's points
    (full frames and size: the gathered pixels are the shard's own)."""
    shard = str(zoom_run.shards_dir / f"{PARTITION}.tar")
    loader = make_loader(shard, 16, 256, 448, 1, 4.0, None, seed=0)
    for batch in itertools.islice(loader, 2):
        key = batch["key"][0]
        meta = json.loads(shipped[key]["json"])
        assert batch["intrinsics"].shape == (1, 16, 3, 3)
        np.testing.assert_array_equal(batch["intrinsics"][0].numpy(), sample_intrinsics(meta).astype(np.float32))
        indices, mask = sample_foreground_points(batch["foreground"], 2000, torch.Generator().manual_seed(0))
        xyz = normalised_uvd_to_xyz(gather_points(batch["points"], indices), batch["intrinsics"], 4.0)[0].double().numpy()
        pixels = np.zeros(256 * 448, bool)
        pixels[indices[0][mask[0]].numpy()] = True
        _, truth_xyz, visible = truth_metres(zoom_run, key, pixels.reshape(256, 448))
        order = np.argsort(indices[0][mask[0]].numpy())  # truth_metres reads pixels in row-major order
        error = np.linalg.norm(xyz[:, mask[0].numpy()][:, order] - truth_xyz, axis=-1)
        assert np.median(error[1:][visible[1:]]) < METRIC_TOLERANCE_M, key
