"""Shared fixtures. Real videos are read from ../shared/videos beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest
from media import SHARED_VIDEOS


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    if not (SHARED_VIDEOS / "manifest.csv").exists():
        pytest.skip(f"the shared sample videos are not at {SHARED_VIDEOS} (they are never committed to the repo)")
    return SHARED_VIDEOS
