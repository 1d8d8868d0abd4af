"""decode_clip on the shared real videos and on broken / degenerate files made from them."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest
from local_servers import file_server, silent_server
from media import shared_video, textured_frames, write_video

from pointvid_pipeline.clip import FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH
from pointvid_pipeline.rejections import TRANSIENT_REASONS, ConfigurationError, RejectionReason, SampleRejected
from pointvid_pipeline.settings import PipelineSettings, RowBudget
from pointvid_pipeline.stages.clips import REFERENCE_SEARCH_FRAMES, decode_clip

VIDEO_NAMES = ["01_dog.mp4", "02_cups.mp4", "03_blocks.mp4", "04_coffee.mp4", "05_juggle.mp4", "bedroom.mp4"]


def rejection(uri, **kwargs) -> SampleRejected:
    with pytest.raises(SampleRejected) as caught:
        decode_clip(str(uri), **kwargs)
    return caught.value


def top_level_boxes(path: Path) -> list[str]:
    """MP4 top-level box types in file order (enough to tell where 'moov' sits relative to 'mdat')."""
    data, offset, boxes = path.read_bytes(), 0, []
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        boxes.append(kind.decode("latin-1"))
        if size < 8:
            break
        offset += size
    return boxes


def remux(src: Path, dst: Path, faststart: bool) -> Path:
    """Copy the video stream packets into a new mp4, with the moov atom at the front or at the end."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(src)) as source, av.open(str(dst), "w", format="mp4", options=options) as out:
        in_stream = source.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        for packet in source.demux(in_stream):
            if packet.dts is None:  # the demuxer's end-of-stream flush packet
                continue
            packet.stream = out_stream
            out.mux(packet)
    return dst


def noise_frames(count: int, height: int = 180, width: int = 320) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(40, 220, size=(count, height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", VIDEO_NAMES)
def test_decodes_every_shared_video_deterministically(name):
    path = shared_video(name)
    frames, info = decode_clip(str(path))
    assert frames.shape == (FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH, 3)
    assert frames.dtype == np.uint8
    assert info["codec"] == "h264" and info["av_version"] == av.__version__
    assert (info["source_width"], info["source_height"]) in {(1280, 720), (960, 540)}
    assert info["first_frame_s"] == 0.0 and len(info["frame_times_s"]) == FRAME_COUNT
    assert info["last_frame_s"] == pytest.approx((FRAME_COUNT - 1) / info["fps"], abs=1e-3)
    again, _ = decode_clip(str(path))
    assert np.array_equal(frames, again)
    assert frames[0].std() > 10  # a real picture, not a constant


def test_start_end_stride_are_honoured():
    path = shared_video("01_dog.mp4")
    frames, info = decode_clip(str(path), start=1.0, end=3.0, stride=3)
    times = np.array(info["frame_times_s"])
    assert times[0] >= 1.0 and times[-1] < 3.0
    assert np.allclose(np.diff(times), 3 / info["fps"], atol=1e-3)
    assert info["stride"] == 3 and info["start_s"] == 1.0 and info["end_s"] == 3.0
    # Frame 0 after a seek is the same picture as that frame reached by decoding from the start.
    from_zero, zero_info = decode_clip(str(path), stride=3)
    index = zero_info["frame_times_s"].index(pytest.approx(times[3], abs=1e-4))
    assert np.array_equal(frames[3], from_zero[index])


def test_panda_style_start_lands_on_the_exact_frame():
    path = shared_video("01_dog.mp4")
    _, info = decode_clip(str(path), start=4.004, end=9.509)
    assert info["first_frame_s"] == pytest.approx(4.004, abs=1e-4)  # frame 120 at 30000/1001 fps
    _, before = decode_clip(str(path), start=0.0, end=4.004, stride=7)
    assert before["last_frame_s"] < 4.004  # end is exclusive: the boundary frame belongs to the next span


def test_span_too_short_for_the_stride_is_too_few_frames():
    path = shared_video("bedroom.mp4")
    error = rejection(path, start=1.0, end=1.4)
    assert error.reason is RejectionReason.too_few_frames
    assert "12/16" in error.detail  # 30 fps x 0.4 s
    assert rejection(path, start=5.0, stride=4).reason is RejectionReason.too_few_frames
    assert rejection(path, start=100.0).reason is RejectionReason.too_few_frames


def test_truncated_moov_first_file_is_truncated_video(tmp_path):
    # 02_cups.mp4 is already "faststart": moov precedes mdat, so a cut file still opens and lists all
    # 300 frames, but the packets stop where the bytes do (~3 s of 10 s).
    source = shared_video("02_cups.mp4")
    assert top_level_boxes(source).index("moov") < top_level_boxes(source).index("mdat")
    cut = tmp_path / "cut.mp4"
    data = source.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.3)])
    frames, _ = decode_clip(str(cut))  # the first half second is intact and decodes
    assert frames.shape[0] == FRAME_COUNT
    past_cut = rejection(cut, start=5.0)
    assert past_cut.reason is RejectionReason.truncated_video
    assert "promises 10.010 s" in past_cut.detail
    assert rejection(cut, stride=10).reason is RejectionReason.truncated_video


@pytest.mark.parametrize("faststart, expected", [(True, "truncated_video"), (False, "unreadable_video")])
def test_truncated_remux_depends_on_where_moov_sits(tmp_path, faststart, expected):
    remuxed = remux(shared_video("02_cups.mp4"), tmp_path / "remuxed.mp4", faststart)
    boxes = top_level_boxes(remuxed)
    assert (boxes.index("moov") < boxes.index("mdat")) == faststart
    cut = tmp_path / "cut.mp4"
    data = remuxed.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.3)])
    # moov at the end is cut away: nothing says what the stream is, so av.open fails.
    assert rejection(cut, start=5.0).reason.value == expected


def test_bedroom_has_moov_at_the_end_so_its_cut_copy_is_unreadable(tmp_path):
    source = shared_video("bedroom.mp4")
    assert top_level_boxes(source).index("moov") > top_level_boxes(source).index("mdat")
    cut = tmp_path / "cut.mp4"
    data = source.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.3)])
    assert rejection(cut).reason is RejectionReason.unreadable_video


def test_corrupt_packets_mid_stream_are_truncated_video(tmp_path):
    # Zeroing everything after the first 5% keeps the container intact but the decoder raises
    # InvalidDataError after 8 frames.
    data = bytearray(shared_video("02_cups.mp4").read_bytes())
    keep = int(len(data) * 0.05)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(bytes(data[:keep]) + bytes(len(data) - keep))
    error = rejection(corrupt)
    assert error.reason is RejectionReason.truncated_video
    assert "decoder failed after 8/16" in error.detail


def test_stream_where_no_frame_decodes_is_unreadable(tmp_path):
    # Zeroing everything after the moov atom (~13 kB): the container opens, no packet decodes.
    data = shared_video("02_cups.mp4").read_bytes()
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(data[:13000] + bytes(len(data) - 13000))
    error = rejection(garbage)
    assert error.reason is RejectionReason.unreadable_video
    assert "no frame decodes" in error.detail


def test_unreadable_inputs(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert rejection(empty).reason is RejectionReason.unreadable_video
    assert "zero-byte" in rejection(empty).detail

    text = tmp_path / "notes.mp4"
    text.write_text("this is a caption file, not a video\n" * 50)
    assert rejection(text).reason is RejectionReason.unreadable_video

    assert rejection(tmp_path / "missing.mp4").reason is RejectionReason.unreadable_video
    assert rejection(tmp_path).reason is RejectionReason.unreadable_video  # a directory
    with pytest.raises(ConfigurationError, match="fsspec knows no protocol 'nosuchprotocol'") as unknown:
        decode_clip("nosuchprotocol://clip.mp4")  # not the row's fault: the run stops (tests/test_rejection_classes.py)
    assert unknown.value.reason is RejectionReason.missing_storage_driver


def test_a_named_pipe_is_refused_at_once_not_read(tmp_path):
    """Nothing ever writes to this pipe: opening it for reading would block the run forever."""
    pipe = tmp_path / "camera.mp4"
    os.mkfifo(pipe)

    def blocked(*_):
        raise TimeoutError("decode_clip blocked on the named pipe")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(10)  # a regression must fail this test, not hang the suite
    try:
        started = time.monotonic()
        rejected = rejection(pipe)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert rejected.reason is RejectionReason.unreadable_video and "named pipe" in rejected.detail
    assert time.monotonic() - started < 5


def test_local_names_with_colons_are_paths_not_fsspec_url_chains(tmp_path):
    source = shared_video("bedroom.mp4")
    odd = tmp_path / "take::2.mp4"
    odd.write_bytes(source.read_bytes())
    frames, info = decode_clip(str(odd))
    assert np.array_equal(frames, decode_clip(str(source))[0]) and info["uri"] == str(odd)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), dtype=np.float32)
        for index in range(20):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    error = rejection(path)
    assert error.reason is RejectionReason.unreadable_video
    assert "no video stream" in error.detail


def test_eight_frame_video_is_too_few_frames(tmp_path):
    path = write_video(tmp_path / "short.mp4", noise_frames(8))
    error = rejection(path)
    assert error.reason is RejectionReason.too_few_frames
    assert "8/16" in error.detail


def test_black_video_is_black_first_frame(tmp_path):
    path = write_video(tmp_path / "black.mp4", np.zeros((20, 180, 320, 3), dtype=np.uint8))
    error = rejection(path)
    assert error.reason is RejectionReason.black_first_frame
    assert "mean" in error.detail


def test_small_video_is_upscaled_and_rotation_is_applied(tmp_path):
    frames = noise_frames(20, height=90, width=160)
    frames[:, :45, :, :] = (250, 20, 20)  # top half red in the stored (landscape) picture
    path = write_video(tmp_path / "phone.mp4", frames, rotation_deg=90)
    decoded, info = decode_clip(str(path))
    assert decoded.shape == (FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH, 3)
    assert info["rotation_deg"] == 90
    assert (info["source_width"], info["source_height"]) == (90, 160)  # displayed portrait
    # Rotated 90 degrees counter-clockwise for display, the red top half becomes the left half.
    red = (decoded[0, :, :, 0] > 200) & (decoded[0, :, :, 1] < 60)
    assert red[:, : FRAME_WIDTH // 2 - 10].mean() > 0.95 and red[:, FRAME_WIDTH // 2 + 10 :].mean() < 0.05


def test_fsspec_urls_decode(tmp_path):
    path = shared_video("bedroom.mp4")
    local, _ = decode_clip(str(path))
    via_file_url, _ = decode_clip(path.as_uri())
    assert np.array_equal(local, via_file_url)
    memory_uri = f"memory://test_clips/{tmp_path.name}/bedroom.mp4"
    with fsspec.open(memory_uri, "wb") as f:
        f.write(path.read_bytes())
    try:
        via_memory, info = decode_clip(memory_uri)
    finally:
        fsspec.filesystem("memory").rm(memory_uri)
    assert np.array_equal(local, via_memory)
    assert info["uri"] == memory_uri


# ---- reference frame: fades, and streams without timestamps


@pytest.mark.parametrize("black, stride, skipped", [(1, 1, 1), (3, 1, 3), (3, 2, 2), (REFERENCE_SEARCH_FRAMES - 1, 1, REFERENCE_SEARCH_FRAMES - 1)])
def test_a_fade_in_is_skipped_and_the_clip_starts_at_the_first_usable_frame(tmp_path, black, stride, skipped):
    frames = noise_frames(48)
    frames[:black] = 0
    path = write_video(tmp_path / "fade.mp4", frames)
    decoded, info = decode_clip(str(path), stride=stride)
    assert info["skipped_leading_frames"] == skipped
    assert info["first_frame_s"] == pytest.approx(skipped * stride / 24, abs=1e-4)
    assert decoded.shape == (FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH, 3) and decoded[0].mean() > 60
    # The same 16 frames as a clip asked to start at that frame.
    from_there, there = decode_clip(str(path), start=info["first_frame_s"], stride=stride)
    assert np.array_equal(decoded, from_there) and there["skipped_leading_frames"] == 0


def test_only_when_no_leading_frame_is_usable_the_clip_is_black_first_frame(tmp_path):
    frames = noise_frames(48)
    frames[:REFERENCE_SEARCH_FRAMES] = 0
    error = rejection(write_video(tmp_path / "long_fade.mp4", frames))
    assert error.reason is RejectionReason.black_first_frame
    assert f"none of the first {REFERENCE_SEARCH_FRAMES} frames" in error.detail and "mean" in error.detail


def test_fade_that_leaves_too_few_frames_says_so(tmp_path):
    frames = noise_frames(20)
    frames[:6] = 0
    error = rejection(write_video(tmp_path / "short_fade.mp4", frames))
    assert error.reason is RejectionReason.too_few_frames
    assert "14/16" in error.detail and "after 6 leading frames" in error.detail


def test_a_raw_h264_stream_without_timestamps_is_decoded_by_frame_order(tmp_path):
    frames = noise_frames(40)
    raw = write_video(tmp_path / "clip.h264", frames)
    with av.open(str(raw)) as container:  # the premise: not one frame carries a timestamp
        assert container.format.name == "h264"
        assert all(frame.pts is None for frame in container.decode(video=0))
    in_mp4, _ = decode_clip(str(write_video(tmp_path / "clip.mp4", frames)))

    decoded, info = decode_clip(str(raw))
    assert info["frame_timing"] == "frame order" and info["fps"] > 0
    assert info["frame_times_s"] == pytest.approx([index / info["fps"] for index in range(FRAME_COUNT)])
    assert np.array_equal(decoded, in_mp4)
    # A start time cannot be sought in such a stream: it is reached by counting frames from the first.
    later, later_info = decode_clip(str(raw), start=8 / info["fps"], stride=2)
    assert later_info["first_frame_s"] == pytest.approx(8 / info["fps"])
    assert np.array_equal(later, decode_clip(str(tmp_path / "clip.mp4"), start=8 / 24, stride=2)[0])


# ---- budgets: frame shape and memory


@pytest.mark.parametrize("width, height", [(1, 1080), (1, 256), (1080, 1)])
def test_absurd_aspect_ratios_are_refused_before_decoding(tmp_path, width, height):
    path = write_video(tmp_path / f"thin_{width}x{height}.mp4", noise_frames(20, height=height, width=width), pix_fmt="yuv444p")
    started = time.monotonic()
    error = rejection(path)
    assert error.reason is RejectionReason.unsupported_frame_shape
    assert f"{width}x{height}" in error.detail and "POINTVID_MAX_ASPECT_RATIO" in error.detail
    assert error.reason.value not in TRANSIENT_REASONS  # it can never succeed: never retried
    assert time.monotonic() - started < 5


def test_the_widest_accepted_aspect_ratio_still_decodes(tmp_path):
    path = write_video(tmp_path / "banner.mp4", noise_frames(20, height=128, width=512))  # exactly 4:1
    frames, info = decode_clip(str(path))
    assert frames.shape == (FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH, 3) and (info["source_width"], info["source_height"]) == (512, 128)


def test_frames_larger_than_the_pixel_budget_are_refused_also_when_the_size_changes_mid_stream(tmp_path):
    small = write_video(tmp_path / "small.h264", noise_frames(10, height=180, width=320))
    large = write_video(tmp_path / "large.h264", noise_frames(20, height=360, width=640))
    joined = tmp_path / "joined.h264"  # raw H.264 streams concatenate: 10 frames at 320x180, then 640x360
    joined.write_bytes(small.read_bytes() + large.read_bytes())
    budget = RowBudget(max_source_pixels=320 * 180)
    assert decode_clip(str(large), budget=RowBudget(max_source_pixels=640 * 360))[0].shape[0] == FRAME_COUNT
    assert rejection(large, budget=budget).reason is RejectionReason.unsupported_frame_shape
    error = rejection(joined, budget=budget)
    assert error.reason is RejectionReason.unsupported_frame_shape
    assert "640x360" in error.detail and "POINTVID_MAX_SOURCE_PIXELS" in error.detail


PEAK_MEMORY = """
import json, re, sys
from pathlib import Path
from pointvid_pipeline.rejections import SampleRejected
from pointvid_pipeline.stages.clips import decode_clip
def peak_kb():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1])
baseline = peak_kb()
try:
    decode_clip(sys.argv[1])
    outcome = "accepted"
except SampleRejected as rejection:
    outcome = rejection.reason.value
print(json.dumps({"outcome": outcome, "baseline_kb": baseline, "peak_kb": peak_kb()}))
"""
UHD_ROW_MEMORY_MB = 300  # docs/running_at_scale.md: about 130 MB measured for 3840x2160 (470 MB at the 8K limit)
REJECTED_ROW_MEMORY_MB = 50


def peak_memory_of_decoding(path: Path) -> dict:
    """decode_clip in a fresh interpreter: its peak RSS above what importing the stage already took.

    The peak is the process's VmHWM (reset by exec): getrusage's ru_maxrss would carry over the
    forking test process's own peak, hundreds of MB that hide the child's.
    """
    child = subprocess.run([sys.executable, "-c", PEAK_MEMORY, str(path)], check=False, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    return {"outcome": result["outcome"], "extra_mb": (result["peak_kb"] - result["baseline_kb"]) / 1024}


@pytest.mark.parametrize("width, height", [(1, 1080), (1, 256)])
def test_a_one_pixel_wide_video_costs_no_memory(tmp_path, width, height):
    """It used to be upscaled to cover 448x256 before cropping: 2.4 GB for 1x256, 10 GB for 1x1080."""
    path = write_video(tmp_path / f"thin_{width}x{height}.mp4", noise_frames(20, height=height, width=width), pix_fmt="yuv444p")
    measured = peak_memory_of_decoding(path)
    print(f"{width}x{height}: {measured}")
    assert measured["outcome"] == "unsupported_frame_shape" and measured["extra_mb"] < REJECTED_ROW_MEMORY_MB


def test_a_4k_video_is_decoded_within_the_documented_memory_bound(tmp_path):
    image = textured_frames(1, height=2160, width=3840)[0]
    path = write_video(tmp_path / "uhd.mp4", np.broadcast_to(image, (FRAME_COUNT, *image.shape)), preset="ultrafast")
    measured = peak_memory_of_decoding(path)
    print(f"3840x2160: {measured}")
    assert measured["outcome"] == "accepted" and measured["extra_mb"] < UHD_ROW_MEMORY_MB


def test_budgets_are_read_from_the_environment_and_reach_dagster_runs():
    from pointvid_pipeline.dagster_defs.resources import PipelineSettingsResource

    settings = PipelineSettings.from_env({"POINTVID_READ_TIMEOUT_S": "7.5", "POINTVID_MAX_SOURCE_PIXELS": "1000000", "POINTVID_MAX_ASPECT_RATIO": "2.5"})
    assert settings.budget == RowBudget(read_timeout_s=7.5, max_source_pixels=1_000_000, max_aspect_ratio=2.5)
    assert PipelineSettingsResource.from_settings(settings).settings().budget == settings.budget
    assert PipelineSettings.from_env({}).budget == RowBudget()
    with pytest.raises(ValueError, match="POINTVID_MAX_ASPECT_RATIO"):
        PipelineSettings.from_env({"POINTVID_MAX_ASPECT_RATIO": "0.5"})
    with pytest.raises(ValueError, match="POINTVID_READ_TIMEOUT_S"):
        RowBudget(read_timeout_s=0)


# ---- budgets: wall clock for videos behind a URL


READ_BUDGET_S = 2.0
SLACK_S = 3.0  # thread start-up and a loaded machine


def test_video_over_http_decodes_like_the_local_file():
    path = shared_video("bedroom.mp4")
    with file_server(path) as url:
        frames, info = decode_clip(url, budget=RowBudget(read_timeout_s=60))
    assert np.array_equal(frames, decode_clip(str(path))[0]) and info["uri"] == url


def test_a_server_that_accepts_and_never_answers_costs_the_row_its_budget_only():
    with silent_server() as url:
        started = time.monotonic()
        error = rejection(url, budget=RowBudget(read_timeout_s=READ_BUDGET_S))
        elapsed = time.monotonic() - started
    assert error.reason is RejectionReason.read_timeout and error.reason.value in TRANSIENT_REASONS
    assert "POINTVID_READ_TIMEOUT_S" in error.detail
    assert READ_BUDGET_S - 0.1 < elapsed < READ_BUDGET_S + SLACK_S


def test_a_server_that_trickles_bytes_cannot_stretch_the_budget_read_by_read():
    """Every single read answers within a second, but the whole video would take about a minute."""
    path = shared_video("bedroom.mp4")
    with file_server(path, seconds_per_chunk=0.2) as url:
        started = time.monotonic()
        error = rejection(url, budget=RowBudget(read_timeout_s=READ_BUDGET_S))
        elapsed = time.monotonic() - started
    assert error.reason is RejectionReason.read_timeout
    assert READ_BUDGET_S - 0.1 < elapsed < READ_BUDGET_S + SLACK_S
