"""Which implementation serves each stage protocol, per profile.

A profile names one backend per kind; `POINTVID_<KIND>_BACKEND` overrides a single kind (e.g.
`POINTVID_POINT_TRACKER_BACKEND=optical-flow`). Backends are imported and `setup()` only when a
stage first asks for them, so a run that never tracks never loads a tracker. Synthetic clips always
use the renderer's own masks and depth (see pipeline.py); these backends serve real video.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from pointvid_pipeline.rejections import BackendUnavailable
from pointvid_pipeline.stages.depth import DepthEstimator
from pointvid_pipeline.stages.object_prompts import ObjectExtractor
from pointvid_pipeline.stages.reference_masks import ReferenceSegmenter
from pointvid_pipeline.stages.tracking import PointTracker


@dataclass
class StageBackends:
    """Zero-argument getters, so a stage only loads the models it actually uses."""

    object_extractor: Callable[[], ObjectExtractor]
    segmenter: Callable[[], ReferenceSegmenter]
    depth_estimator: Callable[[], DepthEstimator]
    point_tracker: Callable[[], PointTracker]


BACKENDS: dict[str, dict[str, str]] = {
    "object_extractor": {
        "lexical": "pointvid_pipeline.stages.object_prompts:LexicalObjectExtractor",
        "llm-http": "pointvid_pipeline.backends.llm:ChatEndpointObjectExtractor",
        "llm-transformers": "pointvid_pipeline.backends.llm:TransformersObjectExtractor",
    },
    "segmenter": {
        "motion-grabcut": "pointvid_pipeline.stages.reference_masks:MotionSegmenter",
        "grounded-sam2": "pointvid_pipeline.backends.grounded_sam2:GroundedSam2Segmenter",
    },
    "depth_estimator": {
        "renderer": "pointvid_pipeline.stages.depth:RendererDepth",
        "zoedepth": "pointvid_pipeline.backends.zoedepth:ZoeDepthEstimator",
    },
    "point_tracker": {
        "rigid-objects": "pointvid_pipeline.stages.object_tracking:RigidObjectTracker",
        "optical-flow": "pointvid_pipeline.stages.tracking:OpticalFlowTracker",
        "spatracker": "pointvid_pipeline.backends.trackers:SpaTrackerTracker",
        "cotracker3": "pointvid_pipeline.backends.trackers:CoTracker3Tracker",
    },
}
PROFILE_BACKENDS: dict[str, dict[str, str]] = {
    "cpu": {"object_extractor": "lexical", "segmenter": "motion-grabcut", "depth_estimator": "renderer", "point_tracker": "rigid-objects"},
    "paper": {"object_extractor": "llm-transformers", "segmenter": "grounded-sam2", "depth_estimator": "zoedepth", "point_tracker": "spatracker"},
}


def backend_name(kind: str, profile: str, environ=None) -> str:
    env = os.environ if environ is None else environ
    override = env.get(f"POINTVID_{kind.upper()}_BACKEND")
    if override:
        return override
    if profile not in PROFILE_BACKENDS:
        raise ValueError(f"profile {profile!r} has no backends in this version (available: {sorted(PROFILE_BACKENDS)}); the paper profile's GPU models are not implemented yet")
    return PROFILE_BACKENDS[profile][kind]


def create_backend(kind: str, name: str, **secrets: str):
    """Import, construct and set up one backend (loads its model, if any).

    `secrets` (e.g. `api_key`, resolved by Dagster from an EnvVar) go to the backend's `from_env`,
    which otherwise reads them from the environment itself.
    """
    try:
        target = BACKENDS[kind][name]
    except KeyError:
        raise ValueError(f"unknown {kind} backend {name!r}; known: {sorted(BACKENDS.get(kind, {}))}") from None
    module, attribute = target.split(":")
    try:
        backend_class = getattr(importlib.import_module(module), attribute)
        backend = backend_class.from_env(**secrets) if hasattr(backend_class, "from_env") else backend_class()
        backend.setup()
    except BackendUnavailable:
        raise
    except Exception as exc:
        raise BackendUnavailable(f"{kind} backend {name!r} could not be loaded: {type(exc).__name__}: {exc}") from exc
    return backend


def lazy_backends(profile: str) -> StageBackends:
    """StageBackends for plain-Python use (tests, benchmarks): each backend built on first use."""
    cache: dict[str, object] = {}

    def getter(kind: str):
        def get():
            if kind not in cache:
                cache[kind] = create_backend(kind, backend_name(kind, profile))
            return cache[kind]

        return get

    return StageBackends(**{kind: getter(kind) for kind in BACKENDS})
