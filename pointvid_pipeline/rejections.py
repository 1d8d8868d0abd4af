"""Typed reasons a sample leaves the pipeline, each with its class. Every input row ends accepted or as one ledger row.

`REASONS` is the one table of reason -> (class, meaning); docs/rejections.md shows it (a test keeps the two equal).
"""

from __future__ import annotations

from enum import Enum


class RejectionReason(str, Enum):
    unreadable_video = "unreadable_video"
    truncated_video = "truncated_video"
    too_few_frames = "too_few_frames"
    black_first_frame = "black_first_frame"
    unsupported_frame_shape = "unsupported_frame_shape"
    read_timeout = "read_timeout"
    missing_caption = "missing_caption"
    no_object_in_caption = "no_object_in_caption"
    empty_mask = "empty_mask"
    no_depth_backend = "no_depth_backend"
    no_visible_track = "no_visible_track"
    track_failure = "track_failure"
    invalid_manifest_row = "invalid_manifest_row"
    duplicate_row = "duplicate_row"
    backend_error = "backend_error"
    network_error = "network_error"
    missing_storage_driver = "missing_storage_driver"
    invalid_setting = "invalid_setting"
    backend_unavailable = "backend_unavailable"
    disk_full = "disk_full"


class RejectionClass(str, Enum):
    permanent = "permanent"  # about the row itself: the same input fails the same way; never retried
    transient = "transient"  # about the moment (network, server, memory): retried with backoff in the run, then by --retry-transient
    configuration = "configuration"  # about the run's settings or environment: stops the run (before any row when it can be known then); the message names the fix


_P, _T, _C = RejectionClass.permanent, RejectionClass.transient, RejectionClass.configuration
REASONS: dict[RejectionReason, tuple[RejectionClass, str]] = {
    RejectionReason.unreadable_video: (_P, "missing local file, HTTP 404, zero-byte file, not a video, or no decodable stream"),
    RejectionReason.truncated_video: (_P, "the container promises more than can be decoded"),
    RejectionReason.too_few_frames: (_P, "fewer than 16 frames between start and end at the stride"),
    RejectionReason.black_first_frame: (_P, "no frame among the first 16 of the span carries signal (a fade-in is skipped: stages/clips.py)"),
    RejectionReason.unsupported_frame_shape: (_P, "decoded frame larger than POINTVID_MAX_SOURCE_PIXELS or narrower than POINTVID_MAX_ASPECT_RATIO: it cannot be fitted to 448 x 256 in bounded memory"),
    RejectionReason.missing_caption: (_P, "caption absent or blank"),
    RejectionReason.no_object_in_caption: (_P, "the extractor names no object"),
    RejectionReason.empty_mask: (_P, "segmentation finds no foreground on the reference frame"),
    RejectionReason.no_depth_backend: (_P, "real video on a profile without a depth estimator (`cpu`): rerun with `--profile paper`"),
    RejectionReason.no_visible_track: (_P, "no foreground track stays visible"),
    RejectionReason.track_failure: (_P, "the quality gate judged every object's tracks lost (stages/quality_gate.py)"),
    RejectionReason.invalid_manifest_row: (_P, "a row the manifest reader cannot interpret, or a start/end that is not a finite time"),
    RejectionReason.duplicate_row: (_P, "the same (video, start, end) appears again in the manifest"),
    RejectionReason.backend_error: (_T, "a model backend raised on this sample (timeout, out of memory, endpoint down)"),
    RejectionReason.read_timeout: (_T, "opening or reading a video URL overran the row's wall-clock budget (POINTVID_READ_TIMEOUT_S)"),
    RejectionReason.network_error: (_T, "a remote video could not be reached: connection refused or reset, DNS failure, timeout, HTTP 5xx or 429"),
    RejectionReason.missing_storage_driver: (_C, "a video URL's protocol is unknown to fsspec or its driver is not installed (`pip install s3fs`)"),
    RejectionReason.invalid_setting: (_C, "a setting out of range or not a number (e.g. POINTVID_FRAME_STRIDE=0)"),
    RejectionReason.backend_unavailable: (_C, "a configured backend cannot load: missing weights, checkout or endpoint, no CUDA"),
    RejectionReason.disk_full: (_C, "no space left (ENOSPC) or disk quota exceeded (EDQUOT) where the run writes: free space there, or point --data-dir / POINTVID_DATA_DIR at a disk with room, and run again"),
}

# `pointvid run --retry-transient` processes rows ledgered with these reasons again.
TRANSIENT_REASONS = frozenset(reason.value for reason, (kind, _) in REASONS.items() if kind is RejectionClass.transient)


def rejection_class(reason: RejectionReason) -> RejectionClass:
    return REASONS[reason][0]


def reasons_markdown() -> str:
    """The table of reasons as docs/rejections.md shows it."""
    rows = [f"| `{reason.value}` | {kind.value} | {meaning} |" for reason, (kind, meaning) in REASONS.items()]
    return "\n".join(["| reason | class | meaning |", "|---|---|---|", *rows]) + "\n"


class ConfigurationError(ValueError):
    """The run's settings or environment are wrong: no row can succeed until they change.

    Raised before any row is processed (settings, video URL protocols), or when met: by a backend that
    cannot load, by a write that finds the disk full; never a ledger row. The message names the setting
    or package and the fix.
    """

    reason = RejectionReason.invalid_setting

    def __init__(self, message: str, reason: RejectionReason | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    def one_line(self) -> str:
        """What `pointvid` prints and a failed Dagster step shows."""
        return f"configuration error ({self.reason.value}): " + " ".join(str(self).splitlines())


class BackendUnavailable(ConfigurationError, RuntimeError):
    """A configured backend cannot load (missing weights, checkout or endpoint, no CUDA).

    Not a property of one sample: the stage fails, and the message names the model id or path
    and how to obtain it. Never answered by silently switching to another backend.
    """

    reason = RejectionReason.backend_unavailable


class SampleRejected(Exception):
    """Raised by stage logic for one sample; the stage runner turns it into a ledger row.

    `attempts`: how many times the stage tried the sample (more than 1 only for transient reasons).
    """

    def __init__(self, reason: RejectionReason, detail: str = "", attempts: int = 1):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
        self.attempts = attempts
