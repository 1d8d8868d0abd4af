"""Stage "reference_masks": instance labels of the caption's objects on the reference frame (frame 0).

The stage picks a backend per clip: synthetic clips carry exact renderer masks; real clips need a
segmenter. `MotionSegmenter` is the CPU fallback for real video: it finds what moves independently
of the camera. A model backend (open-vocabulary detector + promptable segmenter) plugs in through
the same `ReferenceSegmenter` protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from pointvid_pipeline.clip import Clip
from pointvid_pipeline.rejections import RejectionReason, SampleRejected


class ReferenceSegmenter(Protocol):
    name: str  # e.g. "renderer-masks", "motion-grabcut"
    version: str

    def setup(self) -> None:
        """Load models once per process (a no-op for CPU backends)."""

    def segment(self, clips: list[Clip], objects: list[list[str]]) -> list[np.ndarray]:
        """One (H, W) int32 instance-label map on frame 0 per clip (0 = background, 1..K), in order.

        Batched so a model backend encodes several reference frames in one pass.
        """


def check_reference_mask(labels: np.ndarray) -> np.ndarray:
    """Reject the sample when no foreground is left: nothing to track, nothing to learn from."""
    if not np.any(labels > 0):
        raise SampleRejected(RejectionReason.empty_mask, f"no foreground pixel in the {labels.shape} reference mask")
    return labels


class RendererMasks:
    """Exact instance masks that the renderer wrote for synthetic clips."""

    name = "renderer-masks"
    version = "1"

    def setup(self) -> None:
        pass

    def segment(self, clips: list[Clip], objects: list[list[str]]) -> list[np.ndarray]:
        return [self._segment_one(clip) for clip in clips]

    @staticmethod
    def _segment_one(clip: Clip) -> np.ndarray:
        if clip.truth is None:
            raise ValueError(f"clip {clip.key!r} is real video: renderer masks exist only for synthetic clips")
        return clip.truth.instance_masks[0].astype(np.int32)


@dataclass
class MotionSegmenter:
    """Segments what moves independently of the camera on frame 0, for real clips on the CPU.

    Dense DIS flow from frame 0 to a few later frames; the camera's motion is a homography fitted
    with RANSAC to textured, forward-backward-consistent flow and subtracted; the mean residual flow
    is thresholded (Otsu, with a floor in pixels), cleaned morphologically and refined with GrabCut;
    connected components become instances 1..K, largest first.

    `objects` (the caption's nouns) is ignored: the backend has no notion of names, so its instances
    are "things that move", not "the objects the caption names". What it cannot do:
    - static objects the caption names (a cup standing on the table) are missed;
    - objects moving with the camera (a held phone, a car filmed from a car) look static and are missed;
    - shadows and reflections of moving things move too and are included;
    - textureless regions (white walls, tables) get interpolated flow, so masks may bleed into them;
    - touching moving objects (hand holding a kettle) merge into one instance;
    - several depth layers under a panning camera leave parallax residual on near static surfaces.
    """

    name = "motion-grabcut"
    version = f"1-opencv{cv2.__version__}"

    flow_preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
    target_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # later frames compared with frame 0
    min_residual_px: float = 1.5  # residual motion below this is flow noise, whatever Otsu says
    grabcut_iterations: int = 3
    min_instance_fraction: float = 0.002  # components smaller than this share of the frame are dropped
    max_instances: int = 8

    def setup(self) -> None:
        pass

    def segment(self, clips: list[Clip], objects: list[list[str]]) -> list[np.ndarray]:
        return [self._segment_one(clip) for clip in clips]

    def _segment_one(self, clip: Clip) -> np.ndarray:
        frames = clip.frames
        last = len(frames) - 1
        targets = sorted({max(1, round(fraction * last)) for fraction in self.target_fractions})
        residual = residual_motion(frames, targets, self.flow_preset)
        moving = threshold_motion(residual, self.min_residual_px)
        foreground = refine_with_grabcut(frames[0], moving, self.grabcut_iterations)
        min_area = int(self.min_instance_fraction * foreground.size)
        return label_instances(foreground, min_area, self.max_instances)


def residual_motion(frames: np.ndarray, targets: list[int], flow_preset: int) -> np.ndarray:
    """(H, W) float32: mean flow of frame 0 towards `targets` after removing the camera's motion.

    Pixels whose flow fails the forward-backward check for a target (occluded, ambiguous) do not
    vote for that target; pixels that never pass get 0.
    """
    gray = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames]
    height, width = gray[0].shape
    dis = cv2.DISOpticalFlow_create(flow_preset)
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([grid_x, grid_y], axis=-1)
    texture = cv2.cornerMinEigenVal(gray[0], 5)
    sample_y, sample_x = (axis.ravel() for axis in np.mgrid[4:height:8, 4:width:8])
    textured = texture[sample_y, sample_x] > np.median(texture[sample_y, sample_x])

    total = np.zeros((height, width), np.float32)
    votes = np.zeros((height, width), np.float32)
    for target in targets:
        forward = dis.calc(gray[0], gray[target], None)
        backward = dis.calc(gray[target], gray[0], None)
        returned = cv2.remap(backward, grid_x + forward[..., 0], grid_y + forward[..., 1], cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        round_trip = np.linalg.norm(forward + returned, axis=-1)
        consistent = round_trip < np.maximum(1.0, 0.1 * np.linalg.norm(forward, axis=-1))
        usable = textured & consistent[sample_y, sample_x]
        camera = camera_flow(pixels, sample_x[usable], sample_y[usable], forward)
        total += np.where(consistent, np.linalg.norm(forward - camera, axis=-1), 0.0)
        votes += consistent
    return np.where(votes > 0, total / np.maximum(votes, 1.0), 0.0).astype(np.float32)


def camera_flow(pixels: np.ndarray, xs: np.ndarray, ys: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """The flow a homography fitted (RANSAC) to the sampled flow would cause: the dominant motion.

    With too few reliable samples the median flow (a pure translation) stands in.
    """
    source = np.stack([xs, ys], axis=1).astype(np.float32)
    sampled = flow[ys, xs]
    homography = None
    if len(source) >= 8:
        homography, _ = cv2.findHomography(source, source + sampled, cv2.RANSAC, 1.0)
    if homography is None:
        translation = np.median(sampled, axis=0) if len(sampled) else np.zeros(2, np.float32)
        return np.broadcast_to(translation.astype(np.float32), flow.shape)
    moved = cv2.perspectiveTransform(pixels.reshape(-1, 1, 2), homography).reshape(pixels.shape)
    return moved - pixels


def threshold_motion(residual: np.ndarray, min_residual_px: float) -> np.ndarray:
    """uint8 {0, 1}: residual above an Otsu threshold (never below `min_residual_px`), cleaned."""
    scale = max(float(np.percentile(residual, 99.5)), 1e-6)  # keeps a few wild vectors from flattening Otsu
    scaled = np.clip(residual / scale * 255.0, 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(min_residual_px, otsu / 255.0 * scale)
    moving = (residual > threshold).astype(np.uint8)
    moving = cv2.morphologyEx(moving, cv2.MORPH_OPEN, _disk(5))  # specks of flow noise
    return cv2.morphologyEx(moving, cv2.MORPH_CLOSE, _disk(9))  # pinholes in textureless parts of objects


def refine_with_grabcut(image: np.ndarray, moving: np.ndarray, iterations: int) -> np.ndarray:
    """bool (H, W): GrabCut snaps the blurry motion mask to colour edges.

    Seeds: the eroded motion mask is sure foreground, the rest of it probable foreground, a band
    around it probable background, everything farther sure background.
    """
    if not moving.any() or moving.mean() > 0.9:  # nothing to refine, or no background to learn from
        return moving.astype(bool)
    sure = cv2.erode(moving, _disk(11)).astype(bool)
    near = cv2.dilate(moving, _disk(25)).astype(bool)
    seeds = np.full(moving.shape, cv2.GC_BGD, np.uint8)
    seeds[near] = cv2.GC_PR_BGD
    seeds[moving.astype(bool)] = cv2.GC_PR_FGD
    seeds[sure] = cv2.GC_FGD
    # GrabCut only on the box around the band (plus a margin of sure background to learn colours from):
    # far-away background adds cost, not information.
    rows, cols = np.nonzero(near)
    margin = 16
    top, bottom = max(rows.min() - margin, 0), min(rows.max() + margin + 1, moving.shape[0])
    left, right = max(cols.min() - margin, 0), min(cols.max() + margin + 1, moving.shape[1])
    box_seeds = np.ascontiguousarray(seeds[top:bottom, left:right])
    box_image = cv2.cvtColor(np.ascontiguousarray(image[top:bottom, left:right]), cv2.COLOR_RGB2BGR)
    background_model, foreground_model = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.grabCut(box_image, box_seeds, None, background_model, foreground_model, iterations, cv2.GC_INIT_WITH_MASK)
    foreground = np.zeros(moving.shape, bool)
    foreground[top:bottom, left:right] = (box_seeds == cv2.GC_FGD) | (box_seeds == cv2.GC_PR_FGD)
    return foreground


def label_instances(foreground: np.ndarray, min_area: int, max_instances: int) -> np.ndarray:
    """(H, W) int32: connected components of at least `min_area` pixels, 1 = largest, at most `max_instances`."""
    count, components, stats, _ = cv2.connectedComponentsWithStats(foreground.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    kept = [index + 1 for index in np.argsort(-areas, kind="stable") if areas[index] >= min_area][:max_instances]
    relabel = np.zeros(count, np.int32)
    relabel[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    return relabel[components]


def _disk(diameter: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter))
