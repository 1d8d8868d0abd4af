"""Reference-frame segmentation backends: renderer masks and the CPU motion segmenter."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from media import shared_video

from pointvid_pipeline.clip import (
    FRAME_COUNT,
    FRAME_HEIGHT,
    FRAME_WIDTH,
    Clip,
    SceneTruth,
    default_intrinsics,
)
from pointvid_pipeline.rejections import RejectionReason, SampleRejected
from pointvid_pipeline.stages.clips import decode_clip
from pointvid_pipeline.stages.reference_masks import (
    MotionSegmenter,
    RendererMasks,
    check_reference_mask,
)


def make_clip(frames: np.ndarray, truth: SceneTruth | None = None) -> Clip:
    return Clip(key="test", frames=frames, caption="a thing", intrinsics=default_intrinsics(), truth=truth)


def smooth_texture(height: int, width: int, seed: int) -> np.ndarray:
    """Multi-scale noise: texture at every scale, like a natural image, so optical flow has something to lock on."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float32)
    for cell in (2, 6, 16):
        noise = rng.normal(size=(height // cell + 2, width // cell + 2, 3)).astype(np.float32)
        image += cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    image = (image - image.mean()) / image.std() * 40 + 128
    return np.clip(image, 0, 255).astype(np.uint8)


def panning_clip_with_moving_square() -> tuple[np.ndarray, np.ndarray]:
    """A background panned by (0.6, 0.3) px/frame and a 72 px square moving (2.0, 1.2) px/frame over it."""
    background = smooth_texture(FRAME_HEIGHT + 80, FRAME_WIDTH + 80, seed=1)
    square = smooth_texture(72, 72, seed=2)
    size = (FRAME_WIDTH, FRAME_HEIGHT)
    frames, square_on_frame0 = [], None
    for t in range(FRAME_COUNT):
        pan = np.float32([[1, 0, 20 + 0.6 * t], [0, 1, 20 + 0.3 * t]])
        frame = cv2.warpAffine(background, pan, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        place = np.float32([[1, 0, 180 + 2.0 * t], [0, 1, 90 + 1.2 * t]])
        patch = cv2.warpAffine(square, place, size, flags=cv2.INTER_LINEAR)
        cover = cv2.warpAffine(np.ones((72, 72), np.float32), place, size, flags=cv2.INTER_LINEAR)[..., None]
        frames.append((frame * (1 - cover) + patch * cover).astype(np.uint8))
        if t == 0:
            square_on_frame0 = cover[..., 0] > 0.5
    return np.stack(frames), square_on_frame0


def test_renderer_masks_return_frame0_instances():
    instance_masks = np.zeros((FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH), np.int32)
    instance_masks[:, 10:50, 20:80] = 1
    instance_masks[0, 100:140, 200:260] = 2
    truth = SceneTruth(
        depth=np.ones((FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH), np.float32),
        instance_masks=instance_masks,
        object_names=["cube", "ball"],
        extrinsics=np.tile(np.eye(4), (FRAME_COUNT, 1, 1)),
        track_uvd=np.zeros((FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH, 3), np.float32),
        track_visible=np.ones((FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH), bool),
    )
    frames = np.zeros((FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH, 3), np.uint8)
    segmenter = RendererMasks()
    segmenter.setup()
    labels = segmenter.segment([make_clip(frames, truth)], [["cube", "ball"]])[0]
    assert labels.dtype == np.int32 and labels.shape == (FRAME_HEIGHT, FRAME_WIDTH)
    assert np.array_equal(labels, instance_masks[0])


def test_renderer_masks_refuse_real_clips():
    frames = np.zeros((FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH, 3), np.uint8)
    with pytest.raises(ValueError, match="synthetic"):
        RendererMasks().segment([make_clip(frames)], [["dog"]])


def test_motion_segmenter_finds_the_independently_moving_square():
    frames, square = panning_clip_with_moving_square()
    segmenter = MotionSegmenter()
    segmenter.setup()
    labels = segmenter.segment([make_clip(frames)], [[]])[0]
    assert labels.dtype == np.int32 and labels.shape == (FRAME_HEIGHT, FRAME_WIDTH)
    found = labels > 0
    iou = (found & square).sum() / (found | square).sum()
    assert iou >= 0.6, f"IoU with the true square {iou:.3f}"
    assert labels.max() == 1  # one object, and the panned background is not mistaken for one


def test_motion_segmenter_sees_nothing_in_a_static_clip():
    still = np.repeat(smooth_texture(FRAME_HEIGHT, FRAME_WIDTH, seed=3)[None], FRAME_COUNT, axis=0)
    labels = MotionSegmenter().segment([make_clip(still)], [["table"]])[0]
    assert not labels.any()
    with pytest.raises(SampleRejected) as caught:
        check_reference_mask(labels)
    assert caught.value.reason is RejectionReason.empty_mask


@pytest.mark.parametrize("name", ["05_juggle.mp4", "bedroom.mp4"])
def test_motion_segmenter_on_real_clip(name):
    frames, _ = decode_clip(str(shared_video(name)))
    labels = MotionSegmenter().segment([make_clip(frames)], [["man", "ball"]])[0]
    assert labels.dtype == np.int32 and labels.shape == (FRAME_HEIGHT, FRAME_WIDTH)
    instance_ids = np.unique(labels[labels > 0])
    assert np.array_equal(instance_ids, np.arange(1, len(instance_ids) + 1))  # 1..K without gaps
    assert 1 <= len(instance_ids) <= MotionSegmenter.max_instances
    assert 0.005 < (labels > 0).mean() < 0.5  # the jumping / juggling person, not the whole frame
    assert check_reference_mask(labels) is labels


def test_check_reference_mask():
    labels = np.zeros((FRAME_HEIGHT, FRAME_WIDTH), np.int32)
    with pytest.raises(SampleRejected) as caught:
        check_reference_mask(labels)
    assert caught.value.reason is RejectionReason.empty_mask
    labels[5, 5] = 3
    assert check_reference_mask(labels) is labels
