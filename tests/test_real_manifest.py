"""The Panda-70M-layout manifest of the shared real clips through the cpu profile."""

import json

import numpy as np
import pytest

from pointvid_pipeline.backends.registry import lazy_backends
from pointvid_pipeline.pipeline import STAGES, partition_rows, run_stage
from pointvid_pipeline.rejections import BackendUnavailable
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.stage_store import StageStore


def test_real_clips_are_segmented_then_ledgered_for_missing_depth(shared_videos, tmp_path):
    settings = PipelineSettings(data_dir=tmp_path, manifest=str(shared_videos / "panda70m_style.csv"))
    backends = lazy_backends("cpu")
    (partition,) = partition_rows(settings)
    reports = {stage: run_stage(stage, partition, settings, backends) for stage in STAGES[:-1]}

    store = StageStore(settings.stages_dir)
    masks = store.read_index("reference_masks", partition)
    assert len(masks.accepted) == 5  # every clip decoded, named and segmented by motion
    for key, meta in masks.accepted.items():
        labels = store.read_arrays("reference_masks", partition, key)["labels"]
        assert labels.shape == (256, 448) and (labels > 0).any()
        assert meta["source"]["first_frame_s"] >= meta["input"].get("start", 0.0) - 1e-3
        assert meta["backends"]["reference_masks"].startswith("motion-grabcut@")
        clip = store.read_arrays("clips", partition, key)  # real video: the one assumed K holds for every frame
        np.testing.assert_array_equal(clip["frame_intrinsics"], np.broadcast_to(clip["intrinsics"], (16, 3, 3)))
    assert reports["depth"].rejected_here == {"no_depth_backend": 5}
    folders = sorted(settings.stages_dir.glob(f"*/{partition}/*/"))
    assert len(folders) == 15  # clips, reference_masks, query_points
    megabytes = sum(path.stat().st_size for folder in folders for path in folder.iterdir()) / 1e6
    run_stage(STAGES[-1], partition, settings, backends)
    index = json.loads((settings.shards_dir / f"{partition}.json").read_text())
    assert index["input_rows"] == 5 and index["samples"] == []
    assert not list(settings.stages_dir.glob(f"*/{partition}/*/")), f"accepted-only (the default) keeps no folder of a permanently rejected clip; {megabytes:.1f} MB removed"
    assert len(list(settings.stages_dir.glob(f"*/{partition}/_index.json"))) == len(STAGES) - 1
    print(f"stage files of 5 rejected real clips removed once the shard was written: {megabytes:.1f} MB")


def test_a_missing_model_stops_the_stage_instead_of_ledgering_samples(shared_videos, tmp_path, monkeypatch):
    monkeypatch.setenv("POINTVID_DEPTH_ESTIMATOR_BACKEND", "zoedepth")
    monkeypatch.setenv("POINTVID_ZOEDEPTH_MODEL", str(tmp_path / "no_such_model"))
    settings = PipelineSettings(data_dir=tmp_path / "data", manifest=str(shared_videos / "panda70m_style.csv"))
    backends = lazy_backends("cpu")
    (partition,) = partition_rows(settings)
    for stage in STAGES[: STAGES.index("depth")]:
        run_stage(stage, partition, settings, backends)
    with pytest.raises(BackendUnavailable) as info:
        run_stage("depth", partition, settings, backends)
    assert "no_such_model" in str(info.value) and "POINTVID_ZOEDEPTH_MODEL" in str(info.value)
    assert not (settings.stages_dir / "depth" / partition / "_index.json").exists()
