"""Stage `depth`: metric z-depth (metres) for every frame of a clip.

The paper uses ZoeDepth (paper profile). On the cpu profile only rendered clips have depth:
the renderer's exact depth. A real clip with no depth backend is rejected (`no_depth_backend`)
rather than given made-up depth.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from pointvid_pipeline.clip import Clip
from pointvid_pipeline.rejections import RejectionReason, SampleRejected


class DepthEstimator(Protocol):
    name: str
    version: str

    def setup(self) -> None: ...

    def estimate(self, clip: Clip) -> np.ndarray:
        """(T, H, W) float32 metric z-depth in metres for all frames of the clip."""
        ...


class RendererDepth:
    """Exact depth carried by a synthetic clip; real clips have none."""

    name = "renderer-depth"
    version = "1"

    def setup(self) -> None:
        pass

    def estimate(self, clip: Clip) -> np.ndarray:
        if clip.truth is None:
            raise SampleRejected(RejectionReason.no_depth_backend, "real video and no depth estimator configured (cpu profile); use the paper profile for ZoeDepth")
        return clip.truth.depth.astype(np.float32)
