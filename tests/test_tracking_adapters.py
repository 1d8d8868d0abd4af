"""SpaTracker / CoTracker3 adapters run end to end against fake upstream checkouts.

The fakes in tests/fake_trackers/ honour the documented upstream call contract, validate their
inputs as upstream expects them and move each query by a velocity read from the checkpoint written
here, so these tests check the adapters' tensor layouts, coordinate order, depth lifting, output
contract and configuration errors. Only the fakes stand in for upstream; the adapter code is real.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from pointvid_pipeline.backends.registry import create_backend
from pointvid_pipeline.backends.trackers import (
    CoTracker3Tracker,
    SpaTrackerTracker,
    checkout_commit,
    weights_only_command,
)
from pointvid_pipeline.clip import FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH
from pointvid_pipeline.rejections import BackendUnavailable

FAKE_CHECKOUTS = Path(__file__).parent / "fake_trackers"
SPATRACKER_CHECKOUT = FAKE_CHECKOUTS / "spatracker"
COTRACKER_CHECKOUT = FAKE_CHECKOUTS / "co-tracker"
VELOCITY = np.array([1.0, 0.5], np.float32)  # px per frame in (u, v), stored in the test checkpoints
UPPER = np.array([FRAME_WIDTH - 1, FRAME_HEIGHT - 1], np.float32)
ALL_ENV = ["POINTVID_SPATRACKER_DIR", "POINTVID_SPATRACKER_CHECKPOINT", "POINTVID_SPATRACKER_ALLOW_CPU_FOR_TESTS",
           "POINTVID_COTRACKER_DIR", "POINTVID_COTRACKER_CHECKPOINT", "POINTVID_DEVICE", "POINTVID_DTYPE"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No tracker variables from the caller's shell; sys.path restored after each test."""
    for name in ALL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))


def save_checkpoint(path: Path, wrapped: bool = False) -> Path:
    state = {"velocity": torch.from_numpy(VELOCITY)}
    torch.save({"model": state} if wrapped else state, path)
    return path


SPATRACKER_IMPORTS = ("torchvision", "timm", "cupy")  # what the fake imports because upstream does


def spatracker_env(monkeypatch, tmp_path: Path) -> None:
    """The fake checkout and checkpoint, CPU allowed; empty modules stand in for SpaTracker's import-time
    dependencies, which this machine lacks (no torchvision imports beside this torch)."""
    for name in SPATRACKER_IMPORTS:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setenv("POINTVID_SPATRACKER_DIR", str(SPATRACKER_CHECKOUT))
    monkeypatch.setenv("POINTVID_SPATRACKER_CHECKPOINT", str(save_checkpoint(tmp_path / "spaT_final.pth")))
    monkeypatch.setenv("POINTVID_SPATRACKER_ALLOW_CPU_FOR_TESTS", "1")


def cotracker_env(monkeypatch, tmp_path: Path, wrapped: bool = False) -> None:
    monkeypatch.setenv("POINTVID_COTRACKER_DIR", str(COTRACKER_CHECKOUT))
    monkeypatch.setenv("POINTVID_COTRACKER_CHECKPOINT", str(save_checkpoint(tmp_path / "scaled_offline.pth", wrapped)))


def clip_inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random frames and metric depth, and queries chosen to expose swapped axes and frame exits."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 8.0, (FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH)).astype(np.float32)
    queries = np.array([
        [10.3, 20.7],  # moves freely
        [300.6, 100.2],  # u > H - 1: a swapped (x, y) order would put y out of the frame
        [440.0, 30.0],  # leaves through the right edge after frame 7
        [200.5, 250.0],  # leaves through the bottom edge after frame 11
        [0.0, 0.0],  # the top-left pixel centre
        [447.0, 255.0],  # the bottom-right pixel centre, leaves at once
    ], np.float32)
    return frames, depth, queries


def expected_output(depth: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the contract says for the fakes' known motion and occlusion pattern."""
    frame = np.arange(FRAME_COUNT, dtype=np.float32)[:, None, None]
    true_uv = queries[None] + frame * VELOCITY
    inside = np.all((true_uv >= 0) & (true_uv <= UPPER), axis=2)
    occluded = (np.arange(len(queries)) % 3 == 2)[None] & (frame[:, :, 0] >= FRAME_COUNT // 2)
    uv = np.clip(true_uv, 0, UPPER)
    rows, cols = np.rint(uv[..., 1]).astype(int), np.rint(uv[..., 0]).astype(int)
    z = depth[np.arange(FRAME_COUNT)[:, None], rows, cols]
    visible = inside & ~occluded
    visible[0] = True
    return np.concatenate([uv, z[..., None]], axis=2), visible


def assert_contract(tracks: np.ndarray, visible: np.ndarray, depth: np.ndarray, queries: np.ndarray) -> None:
    assert tracks.shape == (FRAME_COUNT, len(queries), 3) and tracks.dtype == np.float32
    assert visible.shape == (FRAME_COUNT, len(queries)) and visible.dtype == bool
    np.testing.assert_array_equal(tracks[0, :, :2], queries)
    assert visible[0].all()
    assert np.all((tracks[..., :2] >= 0) & (tracks[..., :2] <= UPPER))
    expected_tracks, expected_visible = expected_output(depth, queries)
    np.testing.assert_allclose(tracks, expected_tracks, atol=1e-5)
    np.testing.assert_array_equal(visible, expected_visible)


def test_spatracker_follows_the_contract_on_cpu_when_allowed_for_tests(monkeypatch, tmp_path):
    spatracker_env(monkeypatch, tmp_path)
    tracker = create_backend("point_tracker", "spatracker")
    frames, depth, queries = clip_inputs()
    tracks, visible = tracker.track(frames, depth, queries)

    assert_contract(tracks, visible, depth, queries)
    assert not visible[8:, 2].any() and not visible[1:, 5].any()  # out of frame though the tracker said visible
    assert visible[:8, 2].all()
    (call,) = tracker.predictor.calls
    assert call["video_shape"] == (1, FRAME_COUNT, 3, FRAME_HEIGHT, FRAME_WIDTH)  # fed at 448x256, not upsampled
    assert call["interp_shape"] == (384, 512) and call["wind_length"] == tracker.window_length == 12
    assert call["query_count"] == len(queries) and call["inference_mode"]
    assert tracker.name == "spatracker"
    assert tracker.version == "henry123-boy/SpaTracker@unknown-commit/spaT_final.pth"


def test_cotracker_lifts_its_2d_tracks_with_our_depth(monkeypatch, tmp_path):
    cotracker_env(monkeypatch, tmp_path)
    tracker = create_backend("point_tracker", "cotracker3")
    frames, depth, queries = clip_inputs()
    tracks, visible = tracker.track(frames, depth, queries)

    assert_contract(tracks, visible, depth, queries)
    shifted_depth = depth + 1.0  # same motion, other depth: z must follow the depth we pass in
    tracks_shifted, _ = tracker.track(frames, shifted_depth, queries)
    np.testing.assert_allclose(tracks_shifted[..., 2], tracks[..., 2] + 1.0, atol=1e-5)
    np.testing.assert_array_equal(tracks_shifted[..., :2], tracks[..., :2])
    assert [call["query_count"] for call in tracker.predictor.calls] == [len(queries), len(queries)]
    assert all(call["video_shape"] == (1, FRAME_COUNT, 3, FRAME_HEIGHT, FRAME_WIDTH) for call in tracker.predictor.calls)
    assert all(call["inference_mode"] for call in tracker.predictor.calls)
    assert tracker.name == "cotracker3"
    assert tracker.version == "facebookresearch/co-tracker@unknown-commit/scaled_offline.pth"


def test_cotracker_accepts_checkpoints_wrapped_in_model_key(monkeypatch, tmp_path):
    cotracker_env(monkeypatch, tmp_path, wrapped=True)
    tracker = CoTracker3Tracker.from_env()
    tracker.setup()
    frames, depth, queries = clip_inputs(seed=1)
    assert_contract(*tracker.track(frames, depth, queries), depth, queries)


def test_one_upstream_call_per_clip_with_all_queries(monkeypatch, tmp_path):
    cotracker_env(monkeypatch, tmp_path)
    tracker = CoTracker3Tracker.from_env()
    tracker.setup()
    frames, depth, _ = clip_inputs()
    many = np.random.default_rng(2).uniform(0, UPPER, (6400, 2)).astype(np.float32)
    tracks, visible = tracker.track(frames, depth, many)
    assert tracks.shape == (FRAME_COUNT, 6400, 3) and visible.shape == (FRAME_COUNT, 6400)
    assert [call["query_count"] for call in tracker.predictor.calls] == [6400]


@pytest.mark.parametrize("tracker_class, env", [(SpaTrackerTracker, spatracker_env), (CoTracker3Tracker, cotracker_env)])
def test_no_queries_gives_empty_tracks_without_calling_upstream(monkeypatch, tmp_path, tracker_class, env):
    env(monkeypatch, tmp_path)
    tracker = tracker_class.from_env()
    tracker.setup()
    frames, depth, _ = clip_inputs()
    tracks, visible = tracker.track(frames, depth, np.zeros((0, 2), np.float32))
    assert tracks.shape == (FRAME_COUNT, 0, 3) and tracks.dtype == np.float32
    assert visible.shape == (FRAME_COUNT, 0) and visible.dtype == bool
    assert tracker.predictor.calls == []


def test_spatracker_without_cuda_is_unavailable(monkeypatch, tmp_path):
    spatracker_env(monkeypatch, tmp_path)
    monkeypatch.delenv("POINTVID_SPATRACKER_ALLOW_CPU_FOR_TESTS")
    with pytest.raises(BackendUnavailable, match="needs a CUDA device"):
        create_backend("point_tracker", "spatracker")
    monkeypatch.setenv("POINTVID_DEVICE", "cuda")
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        SpaTrackerTracker.from_env().setup()


@pytest.mark.parametrize("backend, unset, path_env, expected", [
    ("spatracker", "POINTVID_SPATRACKER_DIR", None, ["POINTVID_SPATRACKER_DIR is not set", "https://github.com/henry123-boy/SpaTracker"]),
    ("spatracker", "POINTVID_SPATRACKER_CHECKPOINT", None, ["POINTVID_SPATRACKER_CHECKPOINT is not set", "spaT_final.pth", "drive.google.com"]),
    ("spatracker", None, "POINTVID_SPATRACKER_DIR", ["POINTVID_SPATRACKER_DIR=", "does not exist", "git clone https://github.com/henry123-boy/SpaTracker"]),
    ("spatracker", None, "POINTVID_SPATRACKER_CHECKPOINT", ["POINTVID_SPATRACKER_CHECKPOINT=", "does not exist", "spaT_final.pth"]),
    ("cotracker3", "POINTVID_COTRACKER_DIR", None, ["POINTVID_COTRACKER_DIR is not set", "git clone https://github.com/facebookresearch/co-tracker"]),
    ("cotracker3", "POINTVID_COTRACKER_CHECKPOINT", None, ["POINTVID_COTRACKER_CHECKPOINT is not set", "cotracker3/resolve/main/scaled_offline.pth"]),
    ("cotracker3", None, "POINTVID_COTRACKER_DIR", ["POINTVID_COTRACKER_DIR=", "does not exist", "https://github.com/facebookresearch/co-tracker"]),
    ("cotracker3", None, "POINTVID_COTRACKER_CHECKPOINT", ["POINTVID_COTRACKER_CHECKPOINT=", "does not exist", "scaled_offline.pth"]),
])
def test_missing_paths_name_the_variable(monkeypatch, tmp_path, backend, unset, path_env, expected):
    (spatracker_env if backend == "spatracker" else cotracker_env)(monkeypatch, tmp_path)
    if unset:
        monkeypatch.delenv(unset)
    missing = tmp_path / "nowhere"
    if path_env:
        monkeypatch.setenv(path_env, str(missing))
        expected = [*expected, str(missing)]
    with pytest.raises(BackendUnavailable) as error:
        create_backend("point_tracker", backend)
    for text in expected:
        assert text in str(error.value)


def test_cotracker_folder_without_hubconf_is_unavailable(monkeypatch, tmp_path):
    cotracker_env(monkeypatch, tmp_path)
    monkeypatch.setenv("POINTVID_COTRACKER_DIR", str(tmp_path))
    with pytest.raises(BackendUnavailable, match="no hubconf.py"):
        create_backend("point_tracker", "cotracker3")


def forget_imported_checkout(monkeypatch) -> None:
    """Drop the fake's `models` package imported by earlier tests, so the next setup imports it again."""
    for module in [name for name in sys.modules if name == "models" or name.startswith("models.")]:
        monkeypatch.delitem(sys.modules, module)


def test_spatracker_folder_that_is_not_a_checkout_is_unavailable(monkeypatch, tmp_path):
    spatracker_env(monkeypatch, tmp_path)
    empty_checkout = tmp_path / "not-spatracker"
    empty_checkout.mkdir()
    monkeypatch.setenv("POINTVID_SPATRACKER_DIR", str(empty_checkout))
    forget_imported_checkout(monkeypatch)
    with pytest.raises(BackendUnavailable, match="cannot import models.spatracker.predictor"):
        create_backend("point_tracker", "spatracker")


def test_spatracker_imported_from_another_folder_is_unavailable(monkeypatch, tmp_path):
    """A same-named `models` package already imported must not be taken for the configured checkout."""
    spatracker_env(monkeypatch, tmp_path)
    SpaTrackerTracker.from_env().setup()  # imports the fake from tests/fake_trackers/spatracker
    other_checkout = tmp_path / "other-spatracker"
    other_checkout.mkdir()
    monkeypatch.setenv("POINTVID_SPATRACKER_DIR", str(other_checkout))
    with pytest.raises(BackendUnavailable, match="was imported from .*fake_trackers/spatracker"):
        create_backend("point_tracker", "spatracker")


@pytest.mark.parametrize("tracker_class, env, variable", [
    (SpaTrackerTracker, spatracker_env, "POINTVID_SPATRACKER_CHECKPOINT"),
    (CoTracker3Tracker, cotracker_env, "POINTVID_COTRACKER_CHECKPOINT"),
])
def test_checkpoint_that_does_not_fit_the_model_is_unavailable(monkeypatch, tmp_path, tracker_class, env, variable):
    env(monkeypatch, tmp_path)
    wrong = tmp_path / "scaled_online.pth"
    torch.save({"some_other_layer.weight": torch.zeros(3)}, wrong)
    monkeypatch.setenv(variable, str(wrong))
    with pytest.raises(BackendUnavailable, match=f"{variable}={wrong} does not load"):
        tracker_class.from_env().setup()


def test_checkout_commit_reads_git_metadata_by_hand(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert checkout_commit(tmp_path) == "unknown-commit"

    (tmp_path / ".git" / "refs" / "heads").mkdir(parents=True)
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert checkout_commit(tmp_path) == "unknown-commit"
    (tmp_path / ".git" / "packed-refs").write_text(f"# pack-refs with: peeled\n{commit} refs/heads/main\n")
    assert checkout_commit(tmp_path) == commit
    (tmp_path / ".git" / "refs" / "heads" / "main").write_text(commit[::-1] + "\n")
    assert checkout_commit(tmp_path) == commit[::-1]
    (tmp_path / ".git" / "HEAD").write_text(commit + "\n")  # detached
    assert checkout_commit(tmp_path) == commit

    submodule = tmp_path / "submodule"
    submodule.mkdir()
    (submodule / ".git").write_text("gitdir: ../.git\n")
    assert checkout_commit(submodule) == commit


@pytest.mark.parametrize("bad_call, message", [
    (lambda video, depth, queries: (video / 255, depth, queries), "0-1"),
    (lambda video, depth, queries: (video, depth, queries[..., [1, 2, 0]]), "t = 0"),
    (lambda video, depth, queries: (video, depth, queries[..., [0, 2, 1]]), "y must be a row"),
    (lambda video, depth, queries: (video, depth[:, 0], queries), "(T, 1, H, W)"),
    (lambda video, depth, queries: (video[0], depth, queries), "(1, T, 3, H, W)"),
    (lambda video, depth, queries: (video.double(), depth, queries), "float32"),
])
def test_fake_spatracker_rejects_what_upstream_would_not_take(monkeypatch, tmp_path, bad_call, message):
    """The fake has teeth: a wrong layout, order or range fails instead of passing silently."""
    spatracker_env(monkeypatch, tmp_path)
    tracker = SpaTrackerTracker.from_env()
    tracker.setup()
    frames, depth, queries = clip_inputs()
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float()
    depth_tensor = torch.from_numpy(depth)[:, None]
    query_tensor = torch.from_numpy(np.concatenate([np.zeros((len(queries), 1), np.float32), queries], axis=1))[None]
    video, depth_tensor, query_tensor = bad_call(video, depth_tensor, query_tensor)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tracker.predictor(video, video_depth=depth_tensor, queries=query_tensor, grid_size=0)


@pytest.mark.parametrize("module, install", [("torchvision", "torchvision"), ("timm", "timm"), ("cupy", "cupy-cuda12x")])
def test_spatracker_missing_dependency_names_what_to_install(monkeypatch, tmp_path, module, install):
    spatracker_env(monkeypatch, tmp_path)
    forget_imported_checkout(monkeypatch)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ModuleNotFoundError, as when absent
    with pytest.raises(BackendUnavailable) as error:
        create_backend("point_tracker", "spatracker")
    message = str(error.value)
    assert f"SpaTracker's code imports {module!r}, which is missing" in message
    assert f"install {install}, or all it needs: pip install torch==2.14.1 torchvision==0.29.1 timm" in message


def test_spatracker_with_torchvision_built_for_another_torch_is_unavailable(monkeypatch, tmp_path):
    """Such a torchvision fails at import with RuntimeError (its C++ operators do not register), not ImportError."""
    spatracker_env(monkeypatch, tmp_path)
    forget_imported_checkout(monkeypatch)
    site = tmp_path / "site-packages"
    (site / "torchvision").mkdir(parents=True)
    (site / "torchvision" / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.delitem(sys.modules, "torchvision")
    sys.path.insert(0, str(site))
    with pytest.raises(BackendUnavailable) as error:
        create_backend("point_tracker", "spatracker")
    message = str(error.value)
    assert "RuntimeError (operator torchvision::nms does not exist)" in message
    assert f"torch {torch.__version__}, torchvision not installed as a distribution" in message
    assert "pip install torch==2.14.1 torchvision==0.29.1" in message


def test_spatracker_checkpoint_that_weights_only_load_refuses_gets_a_working_fix(monkeypatch, tmp_path):
    """Training checkpoints pickle more than tensors (here the run's arguments); torch >= 2.6 refuses them
    by default. The command the error gives must produce a file that then loads."""
    spatracker_env(monkeypatch, tmp_path)
    checkpoint = tmp_path / "spaT_final.pth"
    torch.save({"model": {"velocity": torch.from_numpy(VELOCITY)}, "args": argparse.Namespace(lr=5e-4)}, checkpoint)
    with pytest.raises(BackendUnavailable) as error:
        create_backend("point_tracker", "spatracker")
    message = str(error.value)
    command = weights_only_command(checkpoint)
    assert "weights_only=True" in message and f"`{shlex.join(command)}`" in message

    subprocess.run([sys.executable, *command[1:]], check=True, timeout=120)
    monkeypatch.setenv("POINTVID_SPATRACKER_CHECKPOINT", command[-1])
    tracker = create_backend("point_tracker", "spatracker")
    frames, depth, queries = clip_inputs()
    assert_contract(*tracker.track(frames, depth, queries), depth, queries)


def test_spatracker_on_a_cuda_index_other_than_0_is_unavailable(monkeypatch, tmp_path):
    """Upstream puts tensors on "cuda" (cuda:0) itself: cuda:1 would split the model across GPUs."""
    spatracker_env(monkeypatch, tmp_path)
    monkeypatch.delenv("POINTVID_SPATRACKER_ALLOW_CPU_FOR_TESTS")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a machine with two GPUs
    monkeypatch.setenv("POINTVID_DEVICE", "cuda:1")
    with pytest.raises(BackendUnavailable, match="CUDA_VISIBLE_DEVICES=1 and POINTVID_DEVICE=cuda"):
        create_backend("point_tracker", "spatracker")


def test_spatracker_where_cuda_cannot_hold_a_tensor_is_unavailable(monkeypatch, tmp_path):
    """torch reporting a GPU it cannot use must fail before upstream's hard-coded .cuda() calls do."""
    spatracker_env(monkeypatch, tmp_path)
    monkeypatch.delenv("POINTVID_SPATRACKER_ALLOW_CPU_FOR_TESTS")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # this CPU-only torch then refuses the tensor
    with pytest.raises(BackendUnavailable) as error:
        create_backend("point_tracker", "spatracker")
    message = str(error.value)
    assert "cannot put a tensor on 'cuda'" in message and "Torch not compiled with CUDA enabled" in message
    assert "cotracker3" in message
