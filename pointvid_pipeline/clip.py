"""The in-memory unit every stage passes along: one 16-frame, 448x256 clip and what is known about it.

Conventions used by every stage (and documented in docs/architecture.md):
- frames are uint8 RGB, shape (T, H, W, 3) with T=16, H=256, W=448; frame 0 is the reference frame;
- pixel coordinates are (u, v) = (column, row) with (0, 0) at the centre of the top-left pixel;
- depth is metric z-depth in metres (distance along the camera's optical axis), not ray length;
- cameras are OpenCV pinhole: x right, y down, z forward; `intrinsics` is the 3x3 K matrix of frame 0,
  `frame_intrinsics[t]` the K of frame t (a zoom changes it); `extrinsics[t]` is the 4x4 world-to-camera
  transform of frame t.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

FRAME_COUNT = 16
FRAME_WIDTH = 448
FRAME_HEIGHT = 256
SYNTHETIC_CAPTION_TAG = "<synthetic>"  # special tag marking rendered clips (synthetic-video paper, Table 7)
CAPTION_TAG = re.compile(r"<[a-z0-9_-]+>")  # any special tag: <synthetic>, <camera-orbit>, ...


@dataclass
class SceneTruth:
    """What a renderer knows exactly about a synthetic clip; absent for real video."""

    depth: np.ndarray  # (T, H, W) float32, metres
    instance_masks: np.ndarray  # (T, H, W) int32, 0 = background, 1..K = objects
    object_names: list[str]  # name of instance k is object_names[k - 1]
    extrinsics: np.ndarray  # (T, 4, 4) float64 world -> camera
    track_uvd: np.ndarray  # (T, H, W, 3) float32: where each frame-0 pixel is at frame t (u, v, depth)
    track_visible: np.ndarray  # (T, H, W) bool: that pixel's surface point is visible at frame t
    intrinsics: np.ndarray | None = None  # (T, 3, 3) float64 K of every frame (a zooming camera changes it); None = the clip's K throughout
    object_poses: np.ndarray | None = None  # (T, K, 4, 4) float64 body -> world of object k + 1: the world-frame object tracks every view of a scene shares


@dataclass
class Clip:
    """One clip after ingest: exactly FRAME_COUNT frames at FRAME_HEIGHT x FRAME_WIDTH."""

    key: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    caption: str
    intrinsics: np.ndarray  # (3, 3) float64 K at 448x256 of frame 0; assumed (see ingest) for real video
    source: dict = field(default_factory=dict)  # where it came from: uri, start/end seconds, fps, stride
    truth: SceneTruth | None = None

    @property
    def is_synthetic(self) -> bool:
        return self.truth is not None

    @property
    def frame_intrinsics(self) -> np.ndarray:
        """(T, 3, 3) K of every frame, what every stage that unprojects or projects uses: the renderer's
        (a zooming camera changes it), else `intrinsics` repeated (real video: one lens setting assumed)."""
        if self.truth is not None and self.truth.intrinsics is not None:
            return self.truth.intrinsics
        return per_frame_intrinsics(self.intrinsics, len(self.frames))


def strip_caption_tags(caption: str) -> str:
    """The caption's words without its special tags (what an object extractor should read)."""
    return " ".join(CAPTION_TAG.sub(" ", caption).split())


def default_intrinsics(width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT, hfov_deg: float = 60.0) -> np.ndarray:
    """Pinhole K for a camera of unknown calibration: square pixels, centred principal point.

    Real clips carry no calibration; 60 degrees horizontal field of view is a typical phone/web
    video lens and is recorded in every sample's metadata so it can be corrected later.
    """
    fx = (width / 2.0) / np.tan(np.deg2rad(hfov_deg) / 2.0)
    return np.array([[fx, 0.0, (width - 1) / 2.0], [0.0, fx, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def per_frame_intrinsics(intrinsics: np.ndarray, frame_count: int) -> np.ndarray:
    """(T, 3, 3) K of every frame from one (3, 3) K (repeated, a read-only view) or a (T, 3, 3) one (as it is)."""
    return np.broadcast_to(intrinsics, (frame_count, 3, 3))


def pinhole(intrinsics: np.ndarray, points_ndim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """fx, fy, cx, cy of one (3, 3) K (0-d), or of a (T, 3, 3) per-frame K shaped (T, 1, ..., 1) to
    broadcast over the components of (T, ..., 3) points with `points_ndim` dimensions: frame t uses K_t.

    A per-frame K that repeats one K gives bit-identical results to that K: the same float64 operands
    meet element by element."""
    k = np.asarray(intrinsics)
    if k.ndim == 3:
        k = k.reshape((len(k),) + (1,) * (points_ndim - 2) + (3, 3))
    return k[..., 0, 0], k[..., 1, 1], k[..., 0, 2], k[..., 1, 2]


def unproject(uvd: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """(..., 3) pixel (u, v, z-depth) -> camera-space (x, y, z); K (3, 3), or (T, 3, 3) for (T, ..., 3) points."""
    fx, fy, cx, cy = pinhole(intrinsics, np.ndim(uvd))
    u, v, d = uvd[..., 0], uvd[..., 1], uvd[..., 2]
    return np.stack([(u - cx) * d / fx, (v - cy) * d / fy, d], axis=-1)


def project(xyz: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """(..., 3) camera-space (x, y, z) -> pixel (u, v, z-depth); inverse of `unproject`, K shaped as there."""
    fx, fy, cx, cy = pinhole(intrinsics, np.ndim(xyz))
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    safe_z = np.where(np.abs(z) < 1e-9, 1e-9, z)
    return np.stack([fx * x / safe_z + cx, fy * y / safe_z + cy, z], axis=-1)


def transform(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid transform to (N, 3) points."""
    return points @ pose[:3, :3].T + pose[:3, 3]


def rigid_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + translation taking src to dst (Kabsch), batched over leading axes.

    src, dst (..., N, 3) -> (..., 4, 4). The determinant fix keeps reflections out.
    """
    src_mean, dst_mean = src.mean(-2, keepdims=True), dst.mean(-2, keepdims=True)
    covariance = np.swapaxes(src - src_mean, -1, -2) @ (dst - dst_mean)
    u, _, vt = np.linalg.svd(covariance)
    v, ut = np.swapaxes(vt, -1, -2), np.swapaxes(u, -1, -2)
    flip = np.ones(u.shape[:-1])
    flip[..., 2] = np.sign(np.linalg.det(v @ ut))
    rotation = v @ (flip[..., :, None] * ut)
    pose = np.zeros(u.shape[:-2] + (4, 4))
    pose[..., :3, :3] = rotation
    pose[..., :3, 3] = dst_mean[..., 0, :] - (rotation @ src_mean[..., 0, :, None])[..., 0]
    pose[..., 3, 3] = 1.0
    return pose
