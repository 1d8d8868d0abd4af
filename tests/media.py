"""Small real media files made inside tests (never committed media)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_video(path: Path, frames: np.ndarray, fps: int = 24, rotation_deg: int = 0, pix_fmt: str = "yuv420p", preset: str = "medium") -> Path:
    """Encode RGB frames (T, H, W, 3) uint8 as H.264 with PyAV, in the container the suffix names (.h264: a raw stream, no timestamps).

    yuv420p needs even sides; yuv444p takes any (a 1-pixel-wide video).
    """
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": preset})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if rotation_deg:
            stream.set_display_rotation(rotation_deg)
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def textured_frames(count: int, height: int = 256, width: int = 448, seed: int = 0) -> np.ndarray:
    """A static, smooth-textured scene (nothing moves): motion segmentation must find nothing."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(30, 220, size=(height // 16 + 1, width // 16 + 1, 3)).astype(np.uint8)
    image = np.kron(coarse, np.ones((16, 16, 1), np.uint8))[:height, :width]
    return np.repeat(image[None], count, axis=0)


SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"


def shared_video(name: str) -> Path:
    """A real clip from ../shared/videos (never committed); skips, saying why, when it is absent."""
    import pytest

    path = SHARED_VIDEOS / name
    if not path.is_file():
        pytest.skip(f"shared test video {path} is absent (the tests read real clips from ../shared/videos)")
    return path
