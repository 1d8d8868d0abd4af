"""Stage "clips": decode a span of a real video into the pipeline's fixed 16 x 256 x 448 RGB clip.

Every way a video can be bad ends as a `SampleRejected` with a typed reason, so one broken file
becomes one ledger row instead of a crashed run.
"""

from __future__ import annotations

import math
import os
import socket
import stat
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from functools import cache
from typing import BinaryIO, Self
from urllib.parse import urlsplit

import av
import cv2
import fsspec
import numpy as np

from pointvid_pipeline.clip import FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH
from pointvid_pipeline.rejections import ConfigurationError, RejectionReason, SampleRejected
from pointvid_pipeline.settings import RowBudget

BLACK_MEAN_LUMA = 8.0  # below this (0..255) a frame is black: it cannot be the reference frame
FLAT_STD_LUMA = 2.0  # below this a frame is one flat colour: no signal either
REFERENCE_SEARCH_FRAMES = 16  # leading unusable frames (a fade-in) skipped before a clip is rejected black_first_frame
DECODER_THREADS = 4  # frames in flight in the decoder, whatever the machine's core count: memory stays bounded
DEFAULT_BUDGET = RowBudget()
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
    budget: RowBudget = DEFAULT_BUDGET,
) -> tuple[np.ndarray, dict]:
    """Decode `frame_count` frames, every `stride`-th one from `start` (inclusive) up to `end` (exclusive).

    `uri` is a local path or any fsspec URL. Times are seconds from the start of the video stream
    (frame index / fps for a stream whose frames carry no timestamps). Frames are scaled to cover
    width x height and centre-cropped. The clip starts at its first usable reference frame: up to
    REFERENCE_SEARCH_FRAMES leading black or flat frames (a fade-in) are skipped and counted.
    Returns (frames (T, H, W, 3) uint8 RGB, info) where info records fps, source size, stride, frame
    timestamps, skipped leading frames, codec and av version. Raises SampleRejected(unreadable_video |
    network_error | read_timeout | truncated_video | too_few_frames | black_first_frame | unsupported_frame_shape |
    invalid_manifest_row for a start or end that is not a finite time), ConfigurationError for a URL fsspec cannot open.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    for name, value in (("start", start), ("end", end)):
        if value is not None and not math.isfinite(value):
            raise SampleRejected(RejectionReason.invalid_manifest_row, f"{name} {value} is not a finite time in seconds")
    start_s = max(0.0, start or 0.0)
    with open_video_source(uri, budget.read_timeout_s) as file:
        if not file.read(1):
            raise SampleRejected(RejectionReason.unreadable_video, f"{uri}: zero-byte file")
        file.seek(0)
        frames, info = _decode_span(file, start_s, end, stride, frame_count, width, height, budget)
    info.update(uri=uri, start_s=start_s, end_s=end)
    return frames, info


def open_video_source(uri: str, read_timeout_s: float) -> BinaryIO:
    """A binary file object for `uri`: a URL ("scheme://...") through fsspec, anything else as a local path.

    A URL is opened and read within `read_timeout_s` of wall clock in all (see DeadlineFile). Local
    paths are opened directly, never parsed by fsspec, where "a::b.mp4" would be a URL chain. They
    must be regular files: a named pipe (or a device) would block the run forever waiting for a writer.
    Raises SampleRejected(unreadable_video) for a missing or non-regular file or a URL the server says is
    not there, SampleRejected(network_error) when the network or the server failed, SampleRejected(read_timeout)
    when the budget runs out, and ConfigurationError for a protocol fsspec does not know or whose driver is
    not installed.
    """
    if "://" in uri:
        check_video_protocols([uri])
        try:
            return DeadlineFile(uri, read_timeout_s)
        except SampleRejected:
            raise
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


class DeadlineFile:
    """A file opened through fsspec whose open, reads and seeks all end before one wall-clock deadline.

    Each call runs in a daemon thread and is abandoned at the deadline: a server that accepts the
    connection and never answers then costs the row its budget, not the shard ten minutes. HTTP
    requests also time out (after twice the budget, so the deadline always decides first), so an
    abandoned thread ends as well.
    """

    def __init__(self, uri: str, timeout_s: float):
        self._uri, self._timeout_s = uri, timeout_s
        self._deadline = time.monotonic() + timeout_s
        self._file = self._call(_open_url, uri, timeout_s)

    def read(self, size: int = -1) -> bytes:
        return self._call(self._file.read, size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._call(self._file.seek, offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def _call(self, function, *args):
        result: Future = Future()

        def run():
            try:
                result.set_result(function(*args))
            except Exception as error:  # noqa: BLE001  (handed to the waiting thread, which raises it)
                result.set_exception(error)

        threading.Thread(target=run, daemon=True).start()
        try:
            return result.result(timeout=max(0.0, self._deadline - time.monotonic()))
        except TimeoutError:
            raise SampleRejected(RejectionReason.read_timeout, f"{self._uri}: not read within the {self._timeout_s:g} s budget (POINTVID_READ_TIMEOUT_S)") from None


def _open_url(uri: str, timeout_s: float):
    options = {}
    if urlsplit(uri).scheme in ("http", "https"):
        import aiohttp  # fsspec's HTTP filesystem needs it anyway

        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=2 * timeout_s)}
    return fsspec.open(uri, "rb", **options).open()


def _decode_span(file, start_s, end_s, stride, frame_count, width, height, budget: RowBudget) -> tuple[np.ndarray, dict]:
    try:
        container = av.open(file, mode="r")
    except (av.error.FFmpegError, OSError) as error:  # not a container ffmpeg can demux, or a remote read failed
        raise _read_failure("av.open failed", error) from error
    with container:
        if not container.streams.video:
            raise SampleRejected(RejectionReason.unreadable_video, "container has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = DECODER_THREADS
        if stream.width and stream.height:  # (0 when the container does not say: then the first frame is checked)
            _check_frame_shape(stream.width, stream.height, budget)
        time_base = stream.time_base
        origin_pts = stream.start_time or 0
        promised_s = _promised_duration(container, stream)
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)

        kept: list[np.ndarray] = []
        times: list[float] = []
        skipped = 0  # leading frames of the span not usable as the reference (a fade-in)
        rotation = 0
        eligible = 0  # frames in [start, end) seen so far; every stride-th one is kept
        last_seen_s = None
        stopped_at_end = False
        by_frame_order = False
        try:
            # Lands on the keyframe at or before start; we decode forward from there. A stream without a start
            # time has no timestamps to seek by (a raw .h264 file: trying reads it to the end): decoded from its first frame.
            if start_s > 0 and stream.start_time is not None:
                container.seek(origin_pts + int(start_s / time_base), stream=stream, backward=True)
            for index, frame in enumerate(container.decode(stream)):
                if frame.pts is None and not fps:
                    raise SampleRejected(RejectionReason.unreadable_video, "frames carry no timestamps and the stream states no frame rate")
                by_frame_order = frame.pts is None
                t = index / fps if by_frame_order else float((frame.pts - origin_pts) * time_base)
                last_seen_s = t
                if t < start_s - TIMESTAMP_TOLERANCE_S:
                    continue
                if end_s is not None and t >= end_s - TIMESTAMP_TOLERANCE_S:
                    stopped_at_end = True
                    break
                if eligible % stride == 0:
                    _check_frame_shape(frame.width, frame.height, budget)  # the size may change mid-stream
                    image = _fit(frame, width, height)
                    problem = None if kept else _reference_problem(image)
                    if problem is None:
                        rotation = frame.rotation
                        kept.append(image)
                        times.append(t)
                        if len(kept) == frame_count:
                            break
                    else:
                        skipped += 1
                        if skipped == REFERENCE_SEARCH_FRAMES:
                            raise SampleRejected(RejectionReason.black_first_frame, f"none of the first {skipped} frames at stride {stride} can be the reference; the last: {problem}")
                eligible += 1
        except av.error.FFmpegError as error:
            if last_seen_s is None:  # not one frame decodes: missing decoder, garbage stream
                raise SampleRejected(RejectionReason.unreadable_video, f"no frame decodes: {error}") from error
            raise SampleRejected(
                RejectionReason.truncated_video,
                f"decoder failed after {len(kept)}/{frame_count} kept frames (last frame at {last_seen_s} s of a promised {promised_s} s): {error}",
            ) from error

        if len(kept) < frame_count:
            wanted = f"{len(kept)}/{frame_count} frames at stride {stride} from {start_s:.3f} s to {end_s} s"
            if skipped:
                wanted += f" after {skipped} leading frames unusable as the reference"
            reached_s = last_seen_s if last_seen_s is not None else 0.0
            if not stopped_at_end and promised_s is not None and reached_s < promised_s - TRUNCATION_SLACK_S:
                raise SampleRejected(
                    RejectionReason.truncated_video,
                    f"{wanted}: stream ended at {last_seen_s} s but the container promises {promised_s:.3f} s",
                )
            raise SampleRejected(RejectionReason.too_few_frames, f"only {wanted} (video lasts {promised_s} s)")

        height_src, width_src = (stream.height, stream.width) if rotation % 180 == 0 else (stream.width, stream.height)
        info = {
            "fps": fps,
            "source_width": width_src,
            "source_height": height_src,
            "rotation_deg": rotation,
            "stride": stride,
            "skipped_leading_frames": skipped,
            "frame_timing": "frame order" if by_frame_order else "timestamps",
            "first_frame_s": times[0],
            "last_frame_s": times[-1],
            "frame_times_s": times,
            "duration_s": promised_s,
            "codec": stream.codec_context.name,
            "av_version": av.__version__,
        }
    return np.stack(kept), info


def _check_frame_shape(width: int, height: int, budget: RowBudget) -> None:
    """Refuse frames whose decoding or fitting would need memory out of proportion to the output."""
    if width * height > budget.max_source_pixels:
        raise SampleRejected(RejectionReason.unsupported_frame_shape, f"{width}x{height} frames: more than {budget.max_source_pixels} pixels (POINTVID_MAX_SOURCE_PIXELS)")
    if max(width, height) > budget.max_aspect_ratio * min(width, height):
        raise SampleRejected(RejectionReason.unsupported_frame_shape, f"{width}x{height} frames: aspect ratio above {budget.max_aspect_ratio:g}:1 (POINTVID_MAX_ASPECT_RATIO)")


def _promised_duration(container, stream) -> float | None:
    """How long the container says the video stream lasts; None when it does not say."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _fit(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """The upright frame scaled (aspect kept) to cover width x height, centre-cropped.

    Scaling happens in the RGB conversion itself, so the largest array ever made is the covering
    picture: at most (448/256) x max_aspect_ratio times the output frame (7x for a 1:4 portrait
    at the default limit). The display rotation
    (phone videos) is applied counter-clockwise, as PyAV reports it.
    """
    quarter_turns = round(frame.rotation / 90) % 4
    upright_w, upright_h = (frame.width, frame.height) if quarter_turns % 2 == 0 else (frame.height, frame.width)
    scale = max(width / upright_w, height / upright_h)
    cover_w, cover_h = max(width, round(upright_w * scale)), max(height, round(upright_h * scale))
    stored_w, stored_h = (cover_w, cover_h) if quarter_turns % 2 == 0 else (cover_h, cover_w)
    image = np.rot90(frame.to_ndarray(width=stored_w, height=stored_h, format="rgb24", interpolation="AREA"), quarter_turns)
    top, left = (cover_h - height) // 2, (cover_w - width) // 2
    return np.ascontiguousarray(image[top : top + height, left : left + width])


def _reference_problem(frame: np.ndarray) -> str | None:
    """Why this frame cannot anchor masks, depth and tracks (black or one flat colour), or None if it can."""
    luma = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    mean, std = float(luma.mean()), float(luma.std())
    if mean < BLACK_MEAN_LUMA or std < FLAT_STD_LUMA:
        return f"luma mean {mean:.2f} (min {BLACK_MEAN_LUMA}), std {std:.2f} (min {FLAT_STD_LUMA})"
    return None
