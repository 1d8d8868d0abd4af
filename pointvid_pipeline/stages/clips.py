"""Stage "clips": decode a span of a real video into the pipeline's fixed 16 x 256 x 448 RGB clip.

Every way a video can be bad ends as a `SampleRejected` with a typed reason, so one broken file
becomes one ledger row instead of a crashed run.
"""

from __future__ import annotations

import math
import os
import socket
import stat
from collections.abc import Iterable
from functools import cache
from typing import BinaryIO

import av
import cv2
import fsspec
import numpy as np

from pointvid_pipeline.clip import FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH
from pointvid_pipeline.rejections import ConfigurationError, RejectionReason, SampleRejected

BLACK_MEAN_LUMA = 8.0  # below this (0..255) the reference frame is black
FLAT_STD_LUMA = 2.0  # below this the reference frame is one flat colour: no signal either
TIMESTAMP_TOLERANCE_S = 1e-4  # absorbs float rounding of "4.004" vs a frame at pts 120120/30000
TRUNCATION_SLACK_S = 0.5  # a stream ending this much before its promised duration was cut short


def decode_clip(
    uri: str,
    start: float | None = None,
    end: float | None = None,
    stride: int = 1,
    frame_count: int = FRAME_COUNT,
    width: int = FRAME_WIDTH,
    height: int = FRAME_HEIGHT,
) -> tuple[np.ndarray, dict]:
    """Decode `frame_count` frames, every `stride`-th one from `start` (inclusive) up to `end` (exclusive).

    `uri` is a local path or any fsspec URL. Times are seconds from the start of the video stream.
    Frames are resized to cover width x height and centre-cropped. Returns (frames (T, H, W, 3) uint8
    RGB, info) where info records fps, source size, stride, frame timestamps, codec and av version.
    Raises SampleRejected(unreadable_video | network_error | truncated_video | too_few_frames | black_first_frame |
    invalid_manifest_row for a start or end that is not a finite time), ConfigurationError for a URL fsspec cannot open.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    for name, value in (("start", start), ("end", end)):
        if value is not None and not math.isfinite(value):
            raise SampleRejected(RejectionReason.invalid_manifest_row, f"{name} {value} is not a finite time in seconds")
    start_s = max(0.0, start or 0.0)
    with open_video_source(uri) as file:
        if not file.read(1):
            raise SampleRejected(RejectionReason.unreadable_video, f"{uri}: zero-byte file")
        file.seek(0)
        frames, info = _decode_span(file, start_s, end, stride, frame_count, width, height)
    _check_reference_frame(frames[0], uri)
    info.update(uri=uri, start_s=start_s, end_s=end)
    return frames, info


def open_video_source(uri: str) -> BinaryIO:
    """A binary file object for `uri`: a URL ("scheme://...") through fsspec, anything else as a local path.

    Local paths are opened directly, never parsed by fsspec, where "a::b.mp4" would be a URL chain. They
    must be regular files: a named pipe (or a device) would block the run forever waiting for a writer.
    Raises SampleRejected(unreadable_video) for a missing or non-regular file or a URL the server says is
    not there, SampleRejected(network_error) when the network or the server failed, and ConfigurationError
    for a protocol fsspec does not know or whose driver is not installed.
    """
    if "://" in uri:
        check_video_protocols([uri])
        try:
            return fsspec.open(uri, "rb").open()
        except Exception as error:  # fsspec drivers raise their own types; the cause chain tells network from file
            raise _read_failure(uri, error) from error
    try:
        mode = os.stat(uri).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "not a regular file"
            raise SampleRejected(RejectionReason.unreadable_video, f"{uri}: {kind}; only regular files are read (a pipe or device can block forever)")
        return open(uri, "rb")  # the caller closes it
    except (OSError, ValueError) as error:  # missing path, no permission
        raise SampleRejected(RejectionReason.unreadable_video, f"{uri}: {type(error).__name__}: {error}") from error


def check_video_protocols(uris: Iterable[str]) -> None:
    """Raise ConfigurationError unless fsspec can open every protocol among `uris` (local paths need nothing).

    Run on the whole input before any row is processed: a missing driver fails every row of its protocol.
    """
    examples: dict[str, str] = {}
    for uri in uris:
        if "://" in uri:
            examples.setdefault(uri.split("://", 1)[0], uri)
    for protocol, uri in examples.items():
        problem = _storage_driver_problem(protocol)
        if problem:
            raise ConfigurationError(f"video {uri}: {problem}", RejectionReason.missing_storage_driver)


@cache
def _storage_driver_problem(protocol: str) -> str:
    """What keeps fsspec from opening `protocol` and how to fix it; "" when nothing does."""
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as error:
        package = getattr(error.__cause__, "name", None) or fsspec.registry.known_implementations[protocol]["class"].split(".")[0]
        return f"the fsspec driver for {protocol}:// is not installed ({error}); fix: pip install {package}"
    except ValueError:
        return f"fsspec knows no protocol {protocol!r}; fix the URL, or install the package that registers it (fsspec.available_protocols() lists the known ones)"
    return ""


def _read_failure(uri: str, error: BaseException) -> SampleRejected:
    """network_error (transient) when `error` or anything that caused it is a network or server failure, else unreadable_video."""
    network_errors = _network_error_types()
    cause: BaseException | None = error
    while cause is not None:
        status = getattr(cause, "status", None)  # aiohttp.ClientResponseError: the server answered with an error
        if isinstance(cause, network_errors) or (isinstance(status, int) and (status >= 500 or status == 429)):
            return SampleRejected(RejectionReason.network_error, f"{uri}: {type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    return SampleRejected(RejectionReason.unreadable_video, f"{uri}: {type(error).__name__}: {error}")


def _network_error_types() -> tuple[type[BaseException], ...]:
    try:
        from aiohttp import ClientConnectionError  # fsspec's http driver: refused, reset, disconnected, timed out
    except ImportError:
        return ConnectionError, TimeoutError, socket.gaierror
    return ConnectionError, TimeoutError, socket.gaierror, ClientConnectionError


def _decode_span(file, start_s, end_s, stride, frame_count, width, height) -> tuple[np.ndarray, dict]:
    try:
        container = av.open(file, mode="r")
    except (av.error.FFmpegError, OSError) as error:  # not a container ffmpeg can demux, or a remote read failed
        raise _read_failure("av.open failed", error) from error
    with container:
        if not container.streams.video:
            raise SampleRejected(RejectionReason.unreadable_video, "container has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        time_base = stream.time_base
        origin_pts = stream.start_time or 0
        promised_s = _promised_duration(container, stream)

        kept: list[np.ndarray] = []
        times: list[float] = []
        rotation = 0
        eligible = 0  # frames in [start, end) seen so far; every stride-th one is kept
        last_seen_s = None
        stopped_at_end = False
        try:
            if start_s > 0:  # lands on the keyframe at or before start; we decode forward from there
                container.seek(origin_pts + int(start_s / time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float((frame.pts - origin_pts) * time_base)
                last_seen_s = t
                if t < start_s - TIMESTAMP_TOLERANCE_S:
                    continue
                if end_s is not None and t >= end_s - TIMESTAMP_TOLERANCE_S:
                    stopped_at_end = True
                    break
                if eligible % stride == 0:
                    rotation = frame.rotation
                    kept.append(_fit(_upright(frame.to_ndarray(format="rgb24"), rotation), width, height))
                    times.append(t)
                    if len(kept) == frame_count:
                        break
                eligible += 1
        except av.error.FFmpegError as error:
            if last_seen_s is None:  # not one frame decodes: missing decoder, garbage stream
                raise SampleRejected(RejectionReason.unreadable_video, f"no frame decodes: {error}") from error
            raise SampleRejected(
                RejectionReason.truncated_video,
                f"decoder failed after {len(kept)}/{frame_count} kept frames "
                f"(last frame at {last_seen_s} s of a promised {promised_s} s): {error}",
            ) from error

        if len(kept) < frame_count:
            wanted = f"{len(kept)}/{frame_count} frames at stride {stride} from {start_s:.3f} s to {end_s} s"
            reached_s = last_seen_s if last_seen_s is not None else 0.0
            if not stopped_at_end and promised_s is not None and reached_s < promised_s - TRUNCATION_SLACK_S:
                raise SampleRejected(
                    RejectionReason.truncated_video,
                    f"{wanted}: stream ended at {last_seen_s} s but the container promises {promised_s:.3f} s",
                )
            raise SampleRejected(RejectionReason.too_few_frames, f"only {wanted} (video lasts {promised_s} s)")

        height_src, width_src = (stream.height, stream.width) if rotation % 180 == 0 else (stream.width, stream.height)
        info = {
            "fps": float(stream.average_rate or stream.guessed_rate or 0.0),
            "source_width": width_src,
            "source_height": height_src,
            "rotation_deg": rotation,
            "stride": stride,
            "first_frame_s": times[0],
            "last_frame_s": times[-1],
            "frame_times_s": times,
            "duration_s": promised_s,
            "codec": stream.codec_context.name,
            "av_version": av.__version__,
        }
    return np.stack(kept), info


def _promised_duration(container, stream) -> float | None:
    """How long the container says the video stream lasts; None when it does not say."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _upright(image: np.ndarray, rotation_deg: int) -> np.ndarray:
    """Apply the container's display rotation (phone videos), counter-clockwise as PyAV reports it."""
    quarter_turns = round(rotation_deg / 90) % 4
    return np.ascontiguousarray(np.rot90(image, quarter_turns)) if quarter_turns else image


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize preserving aspect so the image covers width x height, then centre-crop."""
    src_h, src_w = image.shape[:2]
    scale = max(width / src_w, height / src_h)
    new_w, new_h = max(width, round(src_w * scale)), max(height, round(src_h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return resized[top : top + height, left : left + width]


def _check_reference_frame(frame: np.ndarray, uri: str) -> None:
    """Frame 0 anchors masks, depth and tracks; a black or flat one makes all of them meaningless."""
    luma = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    mean, std = float(luma.mean()), float(luma.std())
    if mean < BLACK_MEAN_LUMA or std < FLAT_STD_LUMA:
        raise SampleRejected(
            RejectionReason.black_first_frame,
            f"{uri}: reference frame luma mean {mean:.2f} (min {BLACK_MEAN_LUMA}), std {std:.2f} (min {FLAT_STD_LUMA})",
        )
