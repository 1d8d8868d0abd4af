"""ZoeDepthEstimator end to end on a tiny random ZoeDepth saved to disk, plus its hand-written pre/post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_zoedepth import save_tiny_zoedepth
from transformers.models.zoedepth.image_processing_pil_zoedepth import (
    ZoeDepthImageProcessorPil,
)

from pointvid_pipeline.backends.registry import create_backend
from pointvid_pipeline.backends.zoedepth import (
    MODEL_ENV,
    ZoeDepthEstimator,
    ZoePreprocessing,
    is_local_reference,
    model_input_size,
    pad_and_resize,
    pad_reflect,
    preprocess,
    remove_padding,
    zoe_padding,
)
from pointvid_pipeline.clip import (
    FRAME_COUNT,
    FRAME_HEIGHT,
    FRAME_WIDTH,
    Clip,
    default_intrinsics,
)
from pointvid_pipeline.rejections import BackendUnavailable


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_zoedepth(tmp_path_factory.mktemp("tiny_zoedepth"))


def random_frames(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8)


def test_registry_backend_estimates_metric_depth_in_one_batch_per_clip(tiny_model_dir, monkeypatch):
    monkeypatch.setenv(MODEL_ENV, str(tiny_model_dir))
    monkeypatch.setenv("POINTVID_DEVICE", "cpu")
    estimator = create_backend("depth_estimator", "zoedepth")  # from_env -> setup, as the pipeline does
    assert isinstance(estimator, ZoeDepthEstimator)
    assert str(tiny_model_dir) in estimator.version and "model.safetensors" in estimator.version
    assert estimator.settings == ZoePreprocessing.from_file(tiny_model_dir / "preprocessor_config.json")
    assert (estimator.settings.height, estimator.settings.width) == (64, 96)  # read from the saved file

    batch_sizes = []
    handle = estimator.model.register_forward_hook(
        lambda module, args, kwargs, output: batch_sizes.append(kwargs["pixel_values"].shape[0]), with_kwargs=True)
    clip = Clip(key="c0", frames=random_frames(FRAME_COUNT), caption="a ball", intrinsics=default_intrinsics())
    try:
        depth = estimator.estimate(clip)
    finally:
        handle.remove()

    assert batch_sizes == [FRAME_COUNT]  # one forward pass: all 16 frames share the NYU/KITTI head vote
    assert depth.shape == (FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH) and depth.dtype == np.float32
    assert np.isfinite(depth).all() and (depth > 0).all()


def test_folder_without_preprocessor_config_uses_zoedepth_defaults(tiny_model_dir, tmp_path, monkeypatch):
    folder = tmp_path / "model_only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((tiny_model_dir / name).read_bytes())
    monkeypatch.setenv(MODEL_ENV, str(folder))
    monkeypatch.setenv("POINTVID_DEVICE", "cpu")
    estimator = ZoeDepthEstimator.from_env()
    estimator.setup()
    assert estimator.settings == ZoePreprocessing()
    assert str(folder) in estimator.version


def test_hub_ids_and_folders_are_told_apart(tmp_path):
    assert not is_local_reference("Intel/zoedepth-nyu-kitti")
    assert is_local_reference(str(tmp_path / "absent")) and is_local_reference("./models/zoedepth")


def test_missing_local_folder_names_path_and_env_var(tmp_path, monkeypatch):
    missing = tmp_path / "no_such_zoedepth"
    monkeypatch.setenv(MODEL_ENV, str(missing))
    with pytest.raises(BackendUnavailable) as raised:
        create_backend("depth_estimator", "zoedepth")
    message = str(raised.value)
    assert str(missing) in message and MODEL_ENV in message and "huggingface-cli download" in message


def test_preprocess_matches_transformers_zoedepth_processor(tiny_model_dir):
    """The torchvision-free PIL ZoeDepth processor is the reference for the hand-written batched path."""
    frames = random_frames(2, seed=1)
    for reference, settings in (
        (ZoeDepthImageProcessorPil.from_pretrained(tiny_model_dir), ZoePreprocessing.from_file(tiny_model_dir / "preprocessor_config.json")),
        (ZoeDepthImageProcessorPil(ensure_multiple_of=32), ZoePreprocessing()),  # ZoeDepth defaults, multiple of 32
    ):
        expected = reference(images=list(frames), return_tensors="pt")["pixel_values"]
        actual, padding = preprocess(frames, settings, "cpu", torch.float32)
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
        assert padding == (33, 44)


def test_default_settings_give_512x320_input_for_clip_frames():
    rows, columns = zoe_padding(FRAME_HEIGHT, FRAME_WIDTH)
    assert (rows, columns) == (33, 44)
    assert model_input_size(FRAME_HEIGHT + 2 * rows, FRAME_WIDTH + 2 * columns, ZoePreprocessing()) == (320, 512)


def test_padding_then_unpadding_round_trips_exactly():
    known = torch.from_numpy(np.random.default_rng(2).normal(size=(3, 1, FRAME_HEIGHT, FRAME_WIDTH)).astype(np.float32))
    padding = zoe_padding(FRAME_HEIGHT, FRAME_WIDTH)
    padded = pad_reflect(known, padding)
    assert padded.shape[-2:] == (FRAME_HEIGHT + 2 * padding[0], FRAME_WIDTH + 2 * padding[1])
    assert torch.equal(remove_padding(padded[:, 0], (FRAME_HEIGHT, FRAME_WIDTH), padding), known[:, 0])
    # reflect = mirrored about the edge pixel, which is not repeated
    assert torch.equal(padded[0, 0, padding[0] - 1, padding[1]:-padding[1]], known[0, 0, 1])


def test_unpadded_prediction_lies_on_the_source_pixel_grid():
    """Images of u (column) and v (row) sent through pad + model-size resize and back come out as u and v.

    Up to ~0.07 px comes from the reference resampling itself (bicubic a=-0.75 is not exact on ramps;
    bilinear align_corners=True in, bicubic align_corners=False out), up to ~0.2 px at the outermost
    rows and columns where the reflected ramp folds. A crop off by one pixel or swapped row/column
    padding would be off by >= 1 px.
    """
    v, u = np.mgrid[0:FRAME_HEIGHT, 0:FRAME_WIDTH].astype(np.float32)
    coordinates = torch.from_numpy(np.stack([u, v]))[None]
    model_sized, padding = pad_and_resize(coordinates, ZoePreprocessing())
    assert model_sized.shape[-2:] == (320, 512)
    recovered = remove_padding(model_sized[0], (FRAME_HEIGHT, FRAME_WIDTH), padding).numpy()
    assert recovered.shape == (2, FRAME_HEIGHT, FRAME_WIDTH)
    np.testing.assert_allclose(recovered, np.stack([u, v]), atol=0.25)
    interior = (slice(None), slice(3, -3), slice(3, -3))
    np.testing.assert_allclose(recovered[interior], np.stack([u, v])[interior], atol=0.1)


def on_bfloat16_grid(values: torch.Tensor) -> torch.Tensor:
    """True where a float32 value is exactly representable in bfloat16 (8 significant bits)."""
    return values.to(torch.bfloat16).float() == values


def test_depth_stays_float32_when_the_runtime_asks_for_bfloat16(tiny_model_dir, monkeypatch):
    """bf16 would snap metric depth to 3 cm steps at 4-8 m and 25 cm at 32-64 m before upsampling."""
    monkeypatch.setenv(MODEL_ENV, str(tiny_model_dir))
    monkeypatch.setenv("POINTVID_DEVICE", "cpu")
    clip = Clip(key="c0", frames=random_frames(4, seed=3), caption="a ball", intrinsics=default_intrinsics())
    depth_by_runtime, predicted_by_runtime = {}, {}
    for runtime_dtype in ("float32", "bfloat16"):
        monkeypatch.setenv("POINTVID_DTYPE", runtime_dtype)
        estimator = create_backend("depth_estimator", "zoedepth")
        assert {p.dtype for p in estimator.model.parameters()} == {torch.float32}
        handle = estimator.model.register_forward_hook(
            lambda module, args, output, key=runtime_dtype: predicted_by_runtime.__setitem__(key, output.predicted_depth))
        try:
            depth_by_runtime[runtime_dtype] = estimator.estimate(clip)
        finally:
            handle.remove()

    predicted = predicted_by_runtime["bfloat16"]
    assert predicted.dtype == torch.float32
    assert on_bfloat16_grid(predicted).float().mean() < 0.01  # a float32 value lands on the bf16 grid ~1 in 65536
    np.testing.assert_array_equal(depth_by_runtime["bfloat16"], depth_by_runtime["float32"])
