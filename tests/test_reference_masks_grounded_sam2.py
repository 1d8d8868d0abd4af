"""Grounded-SAM2 segmenter: pure helpers, and the real backend on tiny random Grounding DINO + SAM2 checkpoints.

Random weights give meaningless boxes and masks: the end-to-end tests check contracts (shapes,
dtypes, label layout, how many boxes reach SAM2 and in which coordinates), not content.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_grounded_sam2 import save_tiny_grounded_sam2
from transformers.models.grounding_dino.modeling_grounding_dino import GroundingDinoObjectDetectionOutput

from pointvid_pipeline.backends import create_backend
from pointvid_pipeline.clip import FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH, Clip, default_intrinsics
from pointvid_pipeline.reference_masks import check_reference_mask
from pointvid_pipeline.reference_masks_grounded_sam2 import (
    DEFAULT_GROUNDING_DINO_MODEL,
    DEFAULT_SAM2_MODEL,
    GroundedSam2Segmenter,
    build_prompt,
    detections_from_outputs,
    load_grounding_dino_processor,
    masks_to_frame,
    merge_instance_masks,
    sam2_boxes,
    sam2_pixel_values,
    select_best_masks,
)
from pointvid_pipeline.rejections import BackendUnavailable, RejectionReason, SampleRejected

OBJECTS = ["Dog", "woman"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    return save_tiny_grounded_sam2(tmp_path_factory.mktemp("grounded_sam2"))


@pytest.fixture
def model_env(monkeypatch, tiny_models):
    dino, sam2 = tiny_models
    monkeypatch.setenv("POINTVID_GROUNDING_DINO_MODEL", str(dino))
    monkeypatch.setenv("POINTVID_SAM2_MODEL", str(sam2))
    monkeypatch.setenv("POINTVID_DEVICE", "cpu")
    monkeypatch.delenv("POINTVID_DTYPE", raising=False)
    return monkeypatch


def make_clip() -> Clip:
    frames = np.random.default_rng(0).integers(0, 256, (FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8)
    return Clip(key="grounded", frames=frames, caption="a dog and a woman", intrinsics=default_intrinsics())


def record_calls(module: torch.nn.Module) -> list[dict]:
    """Keyword inputs of every forward call of `module` (a forward hook: the model itself runs)."""
    calls: list[dict] = []
    module.register_forward_hook(lambda _module, _args, kwargs, _output: calls.append(kwargs), with_kwargs=True)
    return calls


# Pure helpers


def test_prompt_is_lower_case_dot_terminated_phrases():
    assert build_prompt(["Dog", "woman"]) == "dog. woman."
    assert build_prompt([" Red  Cup ", "dog", "DOG", "St. Bernard"]) == "red cup. dog. st bernard."
    assert build_prompt([]) == ""


def test_normalised_boxes_map_to_frame_pixels(tiny_models):
    """Known (cx, cy, w, h) boxes through the real post-processing: thresholded, sorted, mapped, clipped."""
    processor = load_grounding_dino_processor(str(tiny_models[0]))
    input_ids = processor.tokenizer([build_prompt(OBJECTS)], return_tensors="pt")["input_ids"]
    dog, woman = 1, 3  # token positions in [CLS] dog . woman . [SEP]
    logits = torch.full((1, 4, 256), -10.0)
    logits[0, 0, woman] = 2.0
    logits[0, 1, dog] = 4.0
    logits[0, 3, dog] = 3.0  # confident, but a zero-width box
    pred_boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.1, 0.75, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 0.0, 0.2]]])
    outputs = GroundingDinoObjectDetectionOutput(logits=logits, pred_boxes=pred_boxes)
    detections = detections_from_outputs(processor, outputs, input_ids, 0.35, 0.25, FRAME_HEIGHT, FRAME_WIDTH)
    # dog: x from -0.15 (clipped to 0) to 0.35 of 448, y from 0.5 to 1.0 of 256; woman: the central half
    np.testing.assert_allclose(detections.boxes, [[0.0, 128.0, 156.8, 256.0], [112.0, 64.0, 336.0, 192.0]], atol=1e-4)
    np.testing.assert_allclose(detections.scores, 1 / (1 + np.exp(-np.array([4.0, 2.0]))), rtol=1e-5)
    assert detections.phrases == ["dog", "woman"]


def test_sam2_boxes_scale_with_the_image():
    boxes = np.array([[0, 0, 448, 256], [112, 64, 336, 192]], np.float32)
    np.testing.assert_allclose(sam2_boxes(boxes, 256, 448, 1024), [[0, 0, 1024, 1024], [256, 256, 768, 768]])


def test_sam2_pixel_values_are_square_and_imagenet_normalised():
    mean_colour = np.round(np.array([0.485, 0.456, 0.406]) * 255).astype(np.uint8)
    image = np.broadcast_to(mean_colour, (FRAME_HEIGHT, FRAME_WIDTH, 3)).copy()
    pixels = sam2_pixel_values(image, 64)
    assert pixels.shape == (1, 3, 64, 64) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, 0.0, atol=0.01)


def test_best_mask_per_box_follows_predicted_iou():
    logits = np.stack([np.full((3, 4, 4), value, np.float32) for value in (0.0, 10.0)])  # (2 boxes, 3 masks)
    logits[:, 1] += 1.0
    logits[:, 2] += 2.0
    iou = np.array([[0.1, 0.9, 0.3], [0.8, 0.1, 0.2]], np.float32)
    best = select_best_masks(logits, iou)
    assert best.shape == (2, 4, 4)
    np.testing.assert_array_equal(best[:, 0, 0], [1.0, 10.0])


def test_low_resolution_logits_upsample_to_the_frame_and_threshold_at_zero():
    logits = np.full((1, 256, 256), -5.0, np.float32)
    logits[0, :, :128] = 5.0  # left half of SAM2's square = left half of the stretched frame
    masks = masks_to_frame(logits, FRAME_HEIGHT, FRAME_WIDTH)
    assert masks.shape == (1, FRAME_HEIGHT, FRAME_WIDTH) and masks.dtype == bool
    assert masks[0, :, :223].all() and not masks[0, :, 225:].any()
    assert masks_to_frame(np.zeros((0, 256, 256), np.float32), FRAME_HEIGHT, FRAME_WIDTH).shape == (0, FRAME_HEIGHT, FRAME_WIDTH)


def test_merge_gives_overlaps_to_the_higher_score_and_drops_slivers():
    masks = np.zeros((4, 20, 30), bool)
    masks[0, 0:10, 0:10] = True  # score 0.5, almost all inside mask 1: a near-duplicate
    masks[1, 0:12, 0:12] = True  # score 0.9: best, wins every overlap
    masks[2, 5:20, 10:30] = True  # score 0.7: overlaps mask 1 on rows 5-11, columns 10-11
    masks[3, 15:16, 0:2] = True  # score 0.8: a 2-pixel speck
    labels = merge_instance_masks(masks, np.array([0.5, 0.9, 0.7, 0.8]), min_area=5, max_instances=16)
    assert labels.dtype == np.int32
    assert set(np.unique(labels)) == {0, 1, 2}
    np.testing.assert_array_equal(labels == 1, masks[1])
    np.testing.assert_array_equal(labels == 2, masks[2] & ~masks[1])
    assert labels[15, 0] == 0  # the speck is gone
    capped = merge_instance_masks(masks, np.array([0.5, 0.9, 0.7, 0.8]), min_area=1, max_instances=2)
    assert set(np.unique(capped)) == {0, 1, 2}
    np.testing.assert_array_equal(capped == 2, masks[3])  # second best score: the speck, now above min_area


# The real backend on tiny checkpoints


def test_all_boxes_go_to_sam2_in_one_call_and_become_contiguous_labels(model_env):
    """Thresholds 0 so random weights still detect: the SAM2 path runs with every kept box at once."""
    model_env.setenv("POINTVID_BOX_THRESHOLD", "0.0")
    model_env.setenv("POINTVID_TEXT_THRESHOLD", "0.0")
    model_env.setenv("POINTVID_MAX_INSTANCES", "4")
    segmenter = create_backend("segmenter", "grounded-sam2")
    assert isinstance(segmenter, GroundedSam2Segmenter) and segmenter.max_instances == 4
    clip = make_clip()
    detections = segmenter.detect(clip.frames[0], OBJECTS)
    assert len(detections.scores) == 10  # the tiny model's 10 queries, none degenerate
    assert np.all(np.diff(detections.scores) <= 0)
    assert np.all((detections.boxes >= 0) & (detections.boxes <= [FRAME_WIDTH, FRAME_HEIGHT, FRAME_WIDTH, FRAME_HEIGHT]))

    detector_calls = record_calls(segmenter._detector)
    sam2_calls = record_calls(segmenter._segmenter)
    labels = segmenter.segment(clip, OBJECTS)

    assert labels.shape == (FRAME_HEIGHT, FRAME_WIDTH) and labels.dtype == np.int32
    instance_count = int(labels.max())
    assert 1 <= instance_count <= 4
    assert set(np.unique(labels)) == set(range(instance_count + 1))
    assert len(detector_calls) == 1 and detector_calls[0]["pixel_values"].shape[0] == 1
    assert len(sam2_calls) == 1
    assert sam2_calls[0]["pixel_values"].shape == (1, 3, 1024, 1024)
    expected_boxes = sam2_boxes(detections.boxes[:4], FRAME_HEIGHT, FRAME_WIDTH, 1024)
    np.testing.assert_allclose(sam2_calls[0]["input_boxes"].numpy(), expected_boxes[None], rtol=1e-5)


def test_no_detection_gives_an_empty_map_without_running_sam2(model_env):
    model_env.setenv("POINTVID_BOX_THRESHOLD", "1.0")  # sigmoid scores never exceed 1
    segmenter = create_backend("segmenter", "grounded-sam2")
    sam2_calls = record_calls(segmenter._segmenter)
    labels = segmenter.segment(make_clip(), OBJECTS)
    assert labels.shape == (FRAME_HEIGHT, FRAME_WIDTH) and labels.dtype == np.int32 and not labels.any()
    assert sam2_calls == []
    with pytest.raises(SampleRejected) as rejected:
        check_reference_mask(labels)
    assert rejected.value.reason is RejectionReason.empty_mask


def test_env_defaults_and_version_names_both_checkpoints(model_env, tiny_models):
    for name in ("POINTVID_BOX_THRESHOLD", "POINTVID_TEXT_THRESHOLD", "POINTVID_MAX_INSTANCES"):
        model_env.delenv(name, raising=False)
    segmenter = GroundedSam2Segmenter.from_env()
    assert (segmenter.box_threshold, segmenter.text_threshold, segmenter.max_instances) == (0.35, 0.25, 16)
    segmenter.setup()
    assert segmenter.name == "grounded-sam2"
    assert f"gdino={tiny_models[0]}@config-" in segmenter.version and f"sam2={tiny_models[1]}@config-" in segmenter.version
    assert not segmenter._detector.training and not segmenter._segmenter.training
    model_env.delenv("POINTVID_GROUNDING_DINO_MODEL")
    model_env.delenv("POINTVID_SAM2_MODEL")
    defaults = GroundedSam2Segmenter.from_env()
    assert (defaults.grounding_dino_model, defaults.sam2_model) == (DEFAULT_GROUNDING_DINO_MODEL, DEFAULT_SAM2_MODEL)


@pytest.mark.parametrize("env_var", ["POINTVID_GROUNDING_DINO_MODEL", "POINTVID_SAM2_MODEL"])
def test_missing_model_folder_names_the_path_and_the_env_var(model_env, tmp_path, env_var):
    missing = tmp_path / "not-downloaded"
    model_env.setenv(env_var, str(missing))
    with pytest.raises(BackendUnavailable) as unavailable:
        create_backend("segmenter", "grounded-sam2")
    message = str(unavailable.value)
    assert str(missing) in message and env_var in message and "huggingface-cli download" in message


def test_folder_without_weights_is_unavailable(model_env, tmp_path):
    model_env.setenv("POINTVID_SAM2_MODEL", str(tmp_path))
    with pytest.raises(BackendUnavailable, match="POINTVID_SAM2_MODEL"):
        create_backend("segmenter", "grounded-sam2")


def test_half_precision_dtype_reaches_both_models(model_env):
    """POINTVID_DTYPE (bfloat16 is the CUDA default) is honoured; scores and masks come back as float32 numpy."""
    model_env.setenv("POINTVID_DTYPE", "bfloat16")
    model_env.setenv("POINTVID_BOX_THRESHOLD", "0.0")
    model_env.setenv("POINTVID_MAX_INSTANCES", "2")
    segmenter = create_backend("segmenter", "grounded-sam2")
    assert next(segmenter._detector.parameters()).dtype == torch.bfloat16
    assert next(segmenter._segmenter.parameters()).dtype == torch.bfloat16
    sam2_calls = record_calls(segmenter._segmenter)
    labels = segmenter.segment(make_clip(), OBJECTS)
    assert sam2_calls[0]["pixel_values"].dtype == torch.bfloat16 and sam2_calls[0]["input_boxes"].shape == (1, 2, 4)
    assert labels.dtype == np.int32 and 0 <= labels.max() <= 2
