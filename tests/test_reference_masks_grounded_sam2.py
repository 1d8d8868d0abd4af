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
from transformers.models.grounding_dino.modeling_grounding_dino import (
    GroundingDinoObjectDetectionOutput,
)

from pointvid_pipeline.backends.grounded_sam2 import (
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
from pointvid_pipeline.backends.registry import create_backend
from pointvid_pipeline.clip import (
    FRAME_COUNT,
    FRAME_HEIGHT,
    FRAME_WIDTH,
    Clip,
    default_intrinsics,
)
from pointvid_pipeline.rejections import (
    BackendUnavailable,
    RejectionReason,
    SampleRejected,
)
from pointvid_pipeline.stages.reference_masks import check_reference_mask

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


def make_clip(seed: int = 0) -> Clip:
    frames = np.random.default_rng(seed).integers(0, 256, (FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8)
    return Clip(key=f"grounded-{seed}", frames=frames, caption="a dog and a woman", intrinsics=default_intrinsics())


def record_calls(module: torch.nn.Module) -> list[dict]:
    """Inputs of every forward call of `module`: the keywords, positional ones under "args" (a hook: the model runs)."""
    calls: list[dict] = []
    module.register_forward_hook(lambda _module, args, kwargs, _output: calls.append({**kwargs, "args": args}),
                                 with_kwargs=True)
    return calls


# Pure helpers


def test_prompt_is_lower_case_dot_terminated_phrases():
    assert build_prompt(["Dog", "woman"]) == "dog. woman."
    assert build_prompt([" Red  Cup ", "dog", "DOG", "St. Bernard"]) == "red cup. dog. st bernard."
    assert build_prompt([]) == ""


def test_normalised_boxes_map_to_frame_pixels_with_each_images_own_prompt(tiny_models):
    """Known (cx, cy, w, h) boxes through the real post-processing of a padded 2-image batch:
    thresholded, sorted, mapped, clipped, and phrases read from each image's own token row."""
    processor = load_grounding_dino_processor(str(tiny_models[0]))
    prompts = [build_prompt(OBJECTS), build_prompt(["man"])]
    input_ids = processor.tokenizer(prompts, padding="longest", return_tensors="pt")["input_ids"]
    assert input_ids.shape == (2, 6) and input_ids[1, -1] == processor.tokenizer.pad_token_id
    dog, woman, man = 1, 3, 1  # token positions in [CLS] dog . woman . [SEP] and [CLS] man . [SEP] [PAD] [PAD]
    logits = torch.full((2, 4, 256), -10.0)
    logits[0, 0, woman] = 2.0
    logits[0, 1, dog] = 4.0
    logits[0, 3, dog] = 3.0  # confident, but a zero-width box
    logits[1, 2, man] = 1.0  # the same token position as "dog" in image 0: must read "man"
    pred_boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.1, 0.75, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 0.0, 0.2]]])
    pred_boxes = pred_boxes.repeat(2, 1, 1)
    outputs = GroundingDinoObjectDetectionOutput(logits=logits, pred_boxes=pred_boxes)
    first, second = detections_from_outputs(processor, outputs, input_ids, 0.35, 0.25, [(FRAME_HEIGHT, FRAME_WIDTH)] * 2)
    # dog: x from -0.15 (clipped to 0) to 0.35 of 448, y from 0.5 to 1.0 of 256; woman: the central half
    np.testing.assert_allclose(first.boxes, [[0.0, 128.0, 156.8, 256.0], [112.0, 64.0, 336.0, 192.0]], atol=1e-4)
    np.testing.assert_allclose(first.scores, 1 / (1 + np.exp(-np.array([4.0, 2.0]))), rtol=1e-5)
    assert first.phrases == ["dog", "woman"]
    np.testing.assert_allclose(second.boxes, [[0.0, 0.0, FRAME_WIDTH, FRAME_HEIGHT]], atol=1e-4)
    assert second.phrases == ["man"] and second.scores.dtype == np.float32


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


@pytest.fixture
def detecting_segmenter(model_env) -> GroundedSam2Segmenter:
    """Thresholds 0 so random weights still detect (every query of the tiny model becomes a box)."""
    model_env.setenv("POINTVID_BOX_THRESHOLD", "0.0")
    model_env.setenv("POINTVID_TEXT_THRESHOLD", "0.0")
    model_env.setenv("POINTVID_MAX_INSTANCES", "4")
    return create_backend("segmenter", "grounded-sam2")


def test_all_boxes_go_to_sam2_in_one_call_and_become_contiguous_labels(detecting_segmenter):
    """One clip: the SAM2 decoder runs once with every kept box, on the image encoded once."""
    segmenter = detecting_segmenter
    assert isinstance(segmenter, GroundedSam2Segmenter) and segmenter.max_instances == 4
    clip = make_clip()
    [detections] = segmenter.detect([clip.frames[0]], [OBJECTS])
    assert len(detections.scores) == 10  # the tiny model's 10 queries, none degenerate
    assert np.all(np.diff(detections.scores) <= 0)
    assert np.all((detections.boxes >= 0) & (detections.boxes <= [FRAME_WIDTH, FRAME_HEIGHT, FRAME_WIDTH, FRAME_HEIGHT]))

    detector_calls = record_calls(segmenter._detector)
    encoder_calls = record_calls(segmenter._segmenter.vision_encoder)
    sam2_calls = record_calls(segmenter._segmenter)
    [labels] = segmenter.segment([clip], [OBJECTS])

    assert labels.shape == (FRAME_HEIGHT, FRAME_WIDTH) and labels.dtype == np.int32
    instance_count = int(labels.max())
    assert 1 <= instance_count <= 4
    assert set(np.unique(labels)) == set(range(instance_count + 1))
    assert len(detector_calls) == 1 and detector_calls[0]["pixel_values"].shape[0] == 1
    assert len(encoder_calls) == 1 and encoder_calls[0]["args"][0].shape == (1, 3, 1024, 1024)
    assert len(sam2_calls) == 1 and "pixel_values" not in sam2_calls[0]  # the decoder reuses the encoded image
    assert [level.shape[0] for level in sam2_calls[0]["image_embeddings"]] == [1, 1, 1]
    expected_boxes = sam2_boxes(detections.boxes[:4], FRAME_HEIGHT, FRAME_WIDTH, 1024)
    np.testing.assert_allclose(sam2_calls[0]["input_boxes"].numpy(), expected_boxes[None], rtol=1e-5)


def test_no_detection_gives_an_empty_map_without_running_sam2(model_env):
    model_env.setenv("POINTVID_BOX_THRESHOLD", "1.0")  # sigmoid scores never exceed 1
    segmenter = create_backend("segmenter", "grounded-sam2")
    encoder_calls = record_calls(segmenter._segmenter.vision_encoder)
    sam2_calls = record_calls(segmenter._segmenter)
    [labels] = segmenter.segment([make_clip()], [OBJECTS])
    assert labels.shape == (FRAME_HEIGHT, FRAME_WIDTH) and labels.dtype == np.int32 and not labels.any()
    assert sam2_calls == [] and encoder_calls == []
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
    encoder_calls = record_calls(segmenter._segmenter.vision_encoder)
    sam2_calls = record_calls(segmenter._segmenter)
    [labels] = segmenter.segment([make_clip()], [OBJECTS])
    assert encoder_calls[0]["args"][0].dtype == torch.bfloat16 and sam2_calls[0]["input_boxes"].shape == (1, 2, 4)
    assert labels.dtype == np.int32 and 0 <= labels.max() <= 2


# Batches of clips

BATCH_OBJECTS = [["dog", "woman"], [], ["Red cup", "man", "cat", "table"]]  # prompts of 3, 0 and 6 words


def test_a_batch_runs_the_detector_and_the_sam2_encoder_once(detecting_segmenter):
    """3 clips, one without object names: one detector pass and one SAM2 encoder pass over the other 2 frames,
    then SAM2's decoder once per frame with that frame's boxes."""
    segmenter = detecting_segmenter
    clips = [make_clip(seed) for seed in range(3)]
    detector_calls = record_calls(segmenter._detector)
    encoder_calls = record_calls(segmenter._segmenter.vision_encoder)
    decoder_calls = record_calls(segmenter._segmenter)
    labels = segmenter.segment(clips, BATCH_OBJECTS)

    assert len(labels) == 3
    assert all(label_map.shape == (FRAME_HEIGHT, FRAME_WIDTH) and label_map.dtype == np.int32 for label_map in labels)
    assert not labels[1].any() and labels[0].max() >= 1 and labels[2].max() >= 1
    assert len(detector_calls) == 1
    assert detector_calls[0]["pixel_values"].shape[0] == 2 and detector_calls[0]["input_ids"].shape[0] == 2
    assert detector_calls[0]["attention_mask"][0].sum() < detector_calls[0]["attention_mask"][1].sum()  # padded prompt
    assert len(encoder_calls) == 1 and encoder_calls[0]["args"][0].shape == (2, 3, 1024, 1024)
    assert [call["input_boxes"].shape for call in decoder_calls] == [(1, 4, 4), (1, 4, 4)]
    assert all(level.shape[0] == 1 for call in decoder_calls for level in call["image_embeddings"])


def test_a_batch_gives_what_each_clip_gives_alone(detecting_segmenter):
    """Batching changes no result beyond float rounding.

    SAM2 (encoder batched, decoder per image) is exact here. Grounding DINO is not bit-exact across batch
    compositions: CPU kernels pick other blockings for other batch sizes, and its text-image fusion
    layer subtracts the maximum attention logit of the whole batch before the softmax (shift-invariant,
    but rounded differently) — logits move by ~1e-6. So detections are compared with a tolerance and
    label maps by agreement (identical on this machine).
    """
    segmenter = detecting_segmenter
    clips = [make_clip(seed) for seed in range(3)]
    images = [clip.frames[0] for clip in clips]
    batched = segmenter.detect(images, BATCH_OBJECTS)
    alone = [segmenter.detect([image], [names])[0] for image, names in zip(images, BATCH_OBJECTS)]
    for together, single in zip(batched, alone):
        assert together.phrases == single.phrases
        np.testing.assert_allclose(together.scores, single.scores, atol=1e-5)
        np.testing.assert_allclose(together.boxes, single.boxes, atol=1e-3)

    boxes = [found.boxes[:4] for found in alone]
    batched_masks = segmenter.masks_for_boxes(images, boxes)
    for image, image_boxes, masks in zip(images, boxes, batched_masks):
        np.testing.assert_array_equal(masks, segmenter.masks_for_boxes([image], [image_boxes])[0])

    batched_labels = segmenter.segment(clips, BATCH_OBJECTS)
    for clip, names, label_map in zip(clips, BATCH_OBJECTS, batched_labels):
        [single_map] = segmenter.segment([clip], [names])
        assert np.mean(label_map == single_map) >= 0.999


def test_degenerate_batches(detecting_segmenter):
    segmenter = detecting_segmenter
    detector_calls = record_calls(segmenter._detector)
    assert segmenter.segment([], []) == []
    labels = segmenter.segment([make_clip(0), make_clip(1)], [[], [" . "]])  # no usable name: nothing to run
    assert len(labels) == 2 and not any(label_map.any() for label_map in labels) and detector_calls == []
    with pytest.raises(ValueError, match="2 clips but 1 object lists"):
        segmenter.segment([make_clip(0), make_clip(1)], [OBJECTS])
