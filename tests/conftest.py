"""Shared fixtures. Real videos are read from ../shared/videos beside the repository."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from media import SHARED_VIDEOS

from pointvid_pipeline.backends.registry import lazy_backends
from pointvid_pipeline.clip import SYNTHETIC_CAPTION_TAG
from pointvid_pipeline.pipeline import STAGES, run_stage
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.shard_format import read_samples, sample_members, write_tar


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    if not (SHARED_VIDEOS / "manifest.csv").exists():
        pytest.skip(f"the shared sample videos are not at {SHARED_VIDEOS} (they are never committed to the repo)")
    return SHARED_VIDEOS


def write_real_shard(synthetic_shard: Path, real_shard: Path) -> None:
    """Copy the first sample under a new key with the caption tag removed, as a real clip would be."""
    key, members = next(iter(read_samples(synthetic_shard).items()))
    meta = json.loads(members["json"])
    meta["key"] = f"real_{key}"
    meta["caption"] = meta["caption"].removeprefix(SYNTHETIC_CAPTION_TAG).strip()
    meta["synthetic"] = False
    write_tar(real_shard, sample_members(meta["key"], members["mp4"], members["points.npz"], members["mask.png"], meta))


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    """Real shards from the curation pipeline: 3 synthetic scenes in shard-00000, one tag-less copy in shard-00001."""
    settings = PipelineSettings(data_dir=tmp_path_factory.mktemp("pointvid"), shard_size=3)
    backends = lazy_backends(settings.profile)
    for stage in STAGES:
        run_stage(stage, "shard-00000", settings, backends)
    write_real_shard(settings.shards_dir / "shard-00000.tar", settings.shards_dir / "shard-00001.tar")
    return settings.shards_dir


UI_SCREENSHOTS = pytest.StashKey[Path]()


@pytest.fixture(scope="session")
def ui_screenshots(request, tmp_path_factory) -> Path:
    """Where the browser test saves its screenshots; the pytest report names the folder at the end."""
    path = tmp_path_factory.mktemp("ui_screenshots")
    request.config.stash[UI_SCREENSHOTS] = path
    return path


def pytest_terminal_summary(terminalreporter, config):
    path = config.stash.get(UI_SCREENSHOTS, None)
    if path is not None and any(path.iterdir()):
        terminalreporter.write_line(f"Dagster UI screenshots: {path} ({', '.join(sorted(p.name for p in path.iterdir()))})")


@pytest.fixture(autouse=True)
def _restore_environment():
    """`pointvid_pipeline.cli.main` called in-process writes its arguments to os.environ (POINTVID_MANIFEST, ...);
    without this a later test's subprocess would inherit them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
