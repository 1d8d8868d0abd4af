"""Bad input never crashes a run and is never silently dropped: every row ends in the ledger."""

import csv
import json
import shutil

import numpy as np
import pytest
from media import textured_frames, write_video

from pointvid_pipeline.backends.registry import lazy_backends
from pointvid_pipeline.dataset import build_dataset
from pointvid_pipeline.pipeline import STAGES, partition_rows, run_stage
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.shard_format import read_samples
from pointvid_pipeline.storage.stage_store import StageStore


@pytest.fixture(scope="module")
def bad_manifest(tmp_path_factory, shared_videos):
    folder = tmp_path_factory.mktemp("bad_input")
    cups = shared_videos / "02_cups.mp4"
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("not a video at all\n")
    data = cups.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    write_video(folder / "short.mp4", textured_frames(8, seed=1))
    write_video(folder / "black.mp4", np.zeros((20, 256, 448, 3), np.uint8))
    write_video(folder / "static.mp4", textured_frames(20, seed=2))
    shutil.copy(cups, folder / "cups.mp4")
    rows = [
        ("empty.mp4", "A dog runs.", "", "unreadable_video"),
        ("text.mp4", "A dog runs.", "", "unreadable_video"),
        ("missing.mp4", "A dog runs.", "", "unreadable_video"),
        ("truncated.mp4", "A person shuffles cups.", "6.0", "truncated_or_unreadable"),
        ("short.mp4", "A ball rolls.", "", "too_few_frames"),
        ("black.mp4", "A ball rolls.", "", "black_first_frame"),
        ("cups.mp4", "", "", "missing_caption"),
        ("cups.mp4", "The light changes slowly.", "1.0", "no_object_in_caption"),
        ("static.mp4", "A box sits still.", "", "empty_mask"),
        ("cups.mp4", "A person shuffles three red cups.", "2.0", "no_depth_backend"),
        ("cups.mp4", "A person shuffles three red cups.", "2.0", "duplicate_row"),
        ("cups.mp4", "A person shuffles three red cups.", "soon", "invalid_manifest_row"),
        ("cups.mp4", "A person shuffles three red cups.", "inf", "invalid_manifest_row"),
    ]
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "caption", "start"])
        writer.writerows(row[:3] for row in rows)
    return folder / "manifest.csv", [row[3] for row in rows]


@pytest.fixture(scope="module")
def bad_run(bad_manifest, tmp_path_factory):
    manifest, expected = bad_manifest
    settings = PipelineSettings(data_dir=tmp_path_factory.mktemp("data"), manifest=str(manifest), shard_size=64)
    backends = lazy_backends("cpu")
    (partition,) = partition_rows(settings)
    for stage in STAGES:
        run_stage(stage, partition, settings, backends)
    return settings, partition, expected, build_dataset(settings, [partition])


def test_every_row_is_ledgered_with_its_typed_reason(bad_run):
    settings, partition, expected, summary = bad_run
    ledger = json.loads((settings.shards_dir / f"{partition}.json").read_text())["rejected"]
    reasons = [r["reason"] for r in sorted(ledger, key=lambda r: r["row"])]
    assert len(reasons) == len(expected)
    for got, want in zip(reasons, expected):
        assert got in ("truncated_video", "unreadable_video") if want == "truncated_or_unreadable" else got == want
    assert all(r["detail"] for r in ledger if r["reason"] != "missing_caption")
    assert {(r["class"], r["attempts"]) for r in ledger} == {("permanent", 1)}  # none of these is retried


def test_accepted_plus_rejected_equals_input_rows(bad_run):
    settings, partition, expected, summary = bad_run
    assert summary["accepted"] == 0
    assert summary["accepted"] + summary["rejected"] == summary["input_rows"] == len(expected)
    assert sum(summary["rejections_by_reason"].values()) == len(expected)


def test_no_partial_files_and_the_empty_shard_is_valid(bad_run):
    settings, partition, _, _ = bad_run
    leftovers = [p for p in settings.data_dir.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert read_samples(settings.shards_dir / f"{partition}.tar") == {}


def test_scene_cut_after_the_reference_frame_leaves_no_visible_track(tmp_path):
    """A rendered scene whose frames 1-15 are replaced by unrelated content (a hard cut)."""
    settings = PipelineSettings(data_dir=tmp_path, shard_size=1)
    backends = lazy_backends("cpu")
    partition = "shard-00000"
    for stage in STAGES[: STAGES.index("tracks_3d")]:
        run_stage(stage, partition, settings, backends)
    store = StageStore(settings.stages_dir)
    (key,) = store.read_index("depth", partition).accepted
    clip_arrays = {name: np.array(array) for name, array in store.read_arrays("clips", partition, key).items()}
    clip_arrays["frames"][1:] = np.random.default_rng(0).integers(0, 256, clip_arrays["frames"][1:].shape, dtype=np.uint8)
    store.write_arrays("clips", partition, key, clip_arrays)

    report = run_stage("tracks_3d", partition, settings, backends)
    for stage in STAGES[STAGES.index("tracks_3d") + 1 :]:
        run_stage(stage, partition, settings, backends)

    assert report.accepted == 0 and report.rejected_here == {"no_visible_track": 1}
    (row,) = json.loads((settings.shards_dir / f"{partition}.json").read_text())["rejected"]
    assert (row["key"], row["stage"], row["reason"]) == (key, "tracks_3d", "no_visible_track")
    assert read_samples(settings.shards_dir / f"{partition}.tar") == {}
