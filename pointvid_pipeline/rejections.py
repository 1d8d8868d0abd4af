"""Typed reasons a sample leaves the pipeline. Every input row ends accepted or as one ledger row."""

from __future__ import annotations

from enum import Enum


class RejectionReason(str, Enum):
    unreadable_video = "unreadable_video"  # missing, zero-byte, not a video, or no decodable stream
    truncated_video = "truncated_video"  # the container promises more than can be decoded
    too_few_frames = "too_few_frames"  # fewer than 16 frames between start and end at the stride
    black_first_frame = "black_first_frame"  # no frame among the first few of the span carries signal (stages/clips.py)
    unsupported_frame_shape = "unsupported_frame_shape"  # permanent: frame too large or too narrow to fit in bounded memory (RowBudget)
    read_timeout = "read_timeout"  # transient: opening or reading a video URL overran the row's wall-clock budget
    missing_caption = "missing_caption"  # caption absent or blank
    no_object_in_caption = "no_object_in_caption"  # the extractor names no object
    empty_mask = "empty_mask"  # segmentation finds no foreground on the reference frame
    no_depth_backend = "no_depth_backend"  # real video with no depth estimator configured
    no_visible_track = "no_visible_track"  # no foreground track stays visible
    track_failure = "track_failure"  # the quality gate judged every object's tracks lost (stages/quality_gate.py)
    invalid_manifest_row = "invalid_manifest_row"  # a row the manifest reader cannot interpret
    duplicate_row = "duplicate_row"  # the same (video, start, end) appears again in the manifest
    backend_error = "backend_error"  # a model backend raised on this sample (timeout, OOM, endpoint down)


# Reasons that say nothing about the clip itself: `pointvid run --retry-transient` processes these rows again.
TRANSIENT_REASONS = frozenset({RejectionReason.backend_error.value, RejectionReason.read_timeout.value})


class BackendUnavailable(RuntimeError):
    """A configured backend cannot load (missing weights, checkout or endpoint, no CUDA).

    Not a property of one sample: the stage fails, and the message names the model id or path
    and how to obtain it. Never answered by silently switching to another backend.
    """


class SampleRejected(Exception):
    """Raised by stage logic for one sample; the stage runner turns it into a ledger row."""

    def __init__(self, reason: RejectionReason, detail: str = ""):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
