"""Retrying transient rejections processes only those rows again and leaves every other sample as it was;
the retention policy leaves exactly the documented stage files."""

import json
import os
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest
from dagster import DagsterInstance

from pointvid_pipeline.backends.registry import StageBackends, lazy_backends
from pointvid_pipeline.dagster_defs.assets import RETRY_TAG
from pointvid_pipeline.dataset import build_dataset
from pointvid_pipeline.pipeline import STAGES, partition_rows, run_stage
from pointvid_pipeline.rejections import TRANSIENT_REASONS
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.shard_format import read_samples

PARTITION = "shard-00000"


class TrackerThatFailsOnce:
    """The real tracker, except that it times out on one clip and loses every point of another.

    Stands in for a model server timing out (transient) and a tracker that lost the object (not
    transient); identifies clips by their first frame, the only per-clip input a tracker sees.
    """

    def __init__(self, tracker, timeout_frame: np.ndarray, lost_frame: np.ndarray):
        self.tracker, self.name, self.version = tracker, tracker.name, tracker.version
        self.timeout_frame, self.lost_frame = timeout_frame, lost_frame

    def setup(self):
        self.tracker.setup()

    def track(self, frames, depth, queries, **inputs):
        if np.array_equal(frames[0], self.timeout_frame):
            raise TimeoutError("tracker server did not answer within 600 s")
        tracks, visibility = self.tracker.track(frames, depth, queries, **inputs)
        if np.array_equal(frames[0], self.lost_frame):
            visibility = np.zeros_like(visibility)
            visibility[0] = True
        return tracks, visibility


class CountingTracker:
    """The real tracker, counting the clips it is asked to track."""

    def __init__(self, tracker):
        self.tracker, self.name, self.version, self.calls = tracker, tracker.name, tracker.version, 0

    def setup(self):
        self.tracker.setup()

    def track(self, frames, depth, queries, **inputs):
        self.calls += 1
        return self.tracker.track(frames, depth, queries, **inputs)


def with_tracker(backends: StageBackends, tracker) -> StageBackends:
    return StageBackends(backends.object_extractor, backends.segmenter, backends.depth_estimator, lambda: tracker)


def stage_file_times(settings: PipelineSettings, key: str) -> dict[str, int]:
    return {str(path): path.stat().st_mtime_ns for path in sorted(settings.stages_dir.glob(f"*/{PARTITION}/{key}/*.npy"))}


@pytest.fixture(scope="module")
def failed_stages(tmp_path_factory):
    """Every stage but the shard of a 3-clip partition, curated with a tracker that timed out on clip 1
    (tried 2 times, no wait) and lost clip 2. Tests copy it before changing it."""
    settings = PipelineSettings(data_dir=tmp_path_factory.mktemp("data"), shard_size=3, retry_attempts=2, retry_backoff_s=0.0)
    backends = lazy_backends("cpu")
    run_stage("clips", PARTITION, settings, backends)
    keys = [row.key for row in partition_rows(settings)[PARTITION]]
    first_frames = [np.load(settings.stages_dir / "clips" / PARTITION / key / "frames.npy", mmap_mode="r")[0] for key in keys]
    flaky = with_tracker(backends, TrackerThatFailsOnce(backends.point_tracker(), first_frames[1], first_frames[2]))
    for stage in STAGES[1:-1]:
        run_stage(stage, PARTITION, settings, flaky)
    return settings, keys


def copied(failed_stages, tmp_path, **changes) -> PipelineSettings:
    settings, _ = failed_stages
    shutil.copytree(settings.data_dir, tmp_path / "data")
    return replace(settings, data_dir=tmp_path / "data", **changes)


@pytest.fixture(scope="module")
def failed_run(failed_stages, tmp_path_factory):
    """The failed partition's shard written, every stage file kept."""
    settings = copied(failed_stages, tmp_path_factory.mktemp("kept"), keep_stage_files="keep")
    run_stage(STAGES[-1], PARTITION, settings, lazy_backends("cpu"))
    return settings, failed_stages[1]


def ledger(settings: PipelineSettings) -> list[dict]:
    return json.loads((settings.shards_dir / f"{PARTITION}.json").read_text())["rejected"]


def test_retry_reprocesses_only_the_transient_rejection(failed_run):
    settings, keys = failed_run
    assert [(row["key"], row["reason"], row["class"], row["attempts"]) for row in ledger(settings)] == [
        (keys[1], "backend_error", "transient", 2),
        (keys[2], "no_visible_track", "permanent", 1),
    ]
    assert "TimeoutError" in ledger(settings)[0]["detail"]
    untouched = stage_file_times(settings, keys[0])
    lost_before = stage_file_times(settings, keys[2])
    counting = CountingTracker(lazy_backends("cpu").point_tracker())
    backends = with_tracker(lazy_backends("cpu"), counting)
    reports = {stage: run_stage(stage, PARTITION, settings, backends, retry=TRANSIENT_REASONS) for stage in STAGES}

    assert counting.calls == 1  # only the clip that timed out was tracked again
    assert reports["clips"].accepted == 3 and reports["tracks_3d"].accepted == 2
    assert stage_file_times(settings, keys[0]) == untouched and stage_file_times(settings, keys[2]) == lost_before
    assert [(row["key"], row["reason"]) for row in ledger(settings)] == [(keys[2], "no_visible_track")]
    samples = read_samples(settings.shards_dir / f"{PARTITION}.tar")
    assert list(samples) == [keys[0], keys[1]]  # manifest order, the retried clip now in the shard
    index = json.loads((settings.shards_dir / f"{PARTITION}.json").read_text())
    assert index["input_rows"] == 3 and len({s["key"] for s in index["samples"]} | {r["key"] for r in index["rejected"]}) == 3


def test_retry_transient_command_runs_through_dagster(failed_run, tmp_path):
    """`pointvid run --retry-transient` sets the `pointvid/retry` run tag; untouched samples stay so."""
    settings, keys = failed_run
    before = {key: stage_file_times(settings, key) for key in (keys[0], keys[2])}
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
    command = ["pointvid", "run", "--retry-transient", "--data-dir", str(settings.data_dir), "--shard-size", "3", "--keep-stage-files", "keep"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "partitions have rows rejected for a transient reason" in done.stderr
    assert {key: stage_file_times(settings, key) for key in (keys[0], keys[2])} == before
    assert list(read_samples(settings.shards_dir / f"{PARTITION}.tar")) == [keys[0], keys[1]]
    with DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        runs = instance.get_runs()
    assert all(run.tags.get(RETRY_TAG) == ",".join(sorted(TRANSIENT_REASONS)) for run in runs if run.job_name == "curate_shard")


# ---- retention of stage files once the shard is written (docs/rejections.md)


def sample_folders(settings: PipelineSettings) -> dict[str, list[str]]:
    """Key -> the stages that still hold a folder for it."""
    folders: dict[str, list[str]] = {}
    for stage in STAGES[:-1]:
        for folder in sorted((settings.stages_dir / stage / PARTITION).glob("*/")):
            folders.setdefault(folder.name, []).append(stage)
    return folders


def indexes(settings: PipelineSettings) -> list[str]:
    return sorted(path.parent.parent.name for path in settings.stages_dir.glob(f"*/{PARTITION}/_index.json"))


@pytest.mark.parametrize("policy", ["keep", "accepted-only", "none"])
def test_retention_policy_leaves_the_documented_stage_files(failed_stages, tmp_path, policy):
    """Shipped clip 0, clip 1 awaiting --retry-transient (rejected at tracks_3d), clip 2 lost for good at tracks_3d."""
    _, keys = failed_stages
    settings = copied(failed_stages, tmp_path, keep_stage_files=policy)
    before = sample_folders(settings)
    run_stage(STAGES[-1], PARTITION, settings, lazy_backends("cpu"))

    upstream = ["clips", "reference_masks", "query_points", "depth"]  # object_prompts stores no arrays
    assert before == {keys[0]: [*upstream, "tracks_3d", "smoothed_tracks", "point_maps"], keys[1]: upstream, keys[2]: upstream}
    kept = {"keep": keys, "accepted-only": keys[:2], "none": keys[:2]}[policy]  # none: clip 1 still awaits a retry, and a retry rewrites the shard from clip 0
    assert sample_folders(settings) == {key: before[key] for key in kept}
    assert indexes(settings) == sorted(STAGES[:-1])
    assert list(read_samples(settings.shards_dir / f"{PARTITION}.tar")) == [keys[0]]


@pytest.mark.parametrize("policy", ["accepted-only", "none"])
def test_retry_resumes_from_retained_files_and_then_the_policy_applies(failed_stages, tmp_path, policy):
    _, keys = failed_stages
    settings = copied(failed_stages, tmp_path, keep_stage_files=policy)
    run_stage(STAGES[-1], PARTITION, settings, lazy_backends("cpu"))
    for stage in STAGES:
        run_stage(stage, PARTITION, settings, lazy_backends("cpu"), retry=TRANSIENT_REASONS)

    assert list(read_samples(settings.shards_dir / f"{PARTITION}.tar")) == keys[:2]
    assert sorted(sample_folders(settings)) == (sorted(keys[:2]) if policy == "accepted-only" else [])
    assert indexes(settings) == sorted(STAGES[:-1])
    summary = build_dataset(settings, [PARTITION])  # the card's ground-truth section reads the stage files
    card = (settings.dataset_dir / "README.md").read_text()
    if policy == "accepted-only":
        assert summary["quality_vs_ground_truth"]["tracks"]["shipped"] and not summary["quality_vs_ground_truth"]["samples_without_truth"]
    else:
        assert summary["quality_vs_ground_truth"] == {} and "the ground truth of 2 synthetic samples was removed from stages/" in card
