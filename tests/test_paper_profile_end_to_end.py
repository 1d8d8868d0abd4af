"""The `paper` profile wired end to end through Dagster on real videos, with tiny random models.

The models are randomly initialised (no weights can be downloaded here), so masks, depth and
names are meaningless; what this proves is the wiring: each paper backend loads by path, runs on
real decoded clips inside the Dagster assets, and its identity lands in every sample's provenance.
The tracker is CoTracker3's adapter on the fake upstream checkout (SpaTracker needs CUDA).
"""

import csv
import json
from pathlib import Path

import pytest
import torch
from dagster import DagsterInstance
from tiny_grounded_sam2 import save_tiny_grounded_sam2
from tiny_qwen2 import save_tiny_qwen2
from tiny_zoedepth import save_tiny_zoedepth

from pointvid_pipeline.dagster_defs.assets import clip_shards
from pointvid_pipeline.dagster_defs.definitions import build_definitions
from pointvid_pipeline.pipeline import partition_rows
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.shard_format import CHECKS, read_samples

COTRACKER_CHECKOUT = Path(__file__).resolve().parent / "fake_trackers" / "co-tracker"


@pytest.fixture
def paper_environment(tmp_path, monkeypatch):
    dino, sam2 = save_tiny_grounded_sam2(tmp_path / "grounded_sam2")
    checkpoint = tmp_path / "scaled_offline.pth"
    torch.save({"velocity": torch.tensor([1.0, 0.5])}, checkpoint)
    for name, value in {
        "HF_HUB_OFFLINE": "1",
        "POINTVID_DEVICE": "cpu",
        "POINTVID_LLM_LOCAL_MODEL": str(save_tiny_qwen2(tmp_path / "qwen2")),
        "POINTVID_GROUNDING_DINO_MODEL": str(dino),
        "POINTVID_SAM2_MODEL": str(sam2),
        "POINTVID_BOX_THRESHOLD": "0",
        "POINTVID_TEXT_THRESHOLD": "0",
        "POINTVID_MAX_INSTANCES": "4",
        "POINTVID_ZOEDEPTH_MODEL": str(save_tiny_zoedepth(tmp_path / "zoedepth")),
        "POINTVID_POINT_TRACKER_BACKEND": "cotracker3",
        "POINTVID_COTRACKER_DIR": str(COTRACKER_CHECKOUT),
        "POINTVID_COTRACKER_CHECKPOINT": str(checkpoint),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))


def test_paper_profile_materializes_real_clips_with_model_provenance(shared_videos, paper_environment, tmp_path):
    manifest = tmp_path / "manifest.csv"
    with open(shared_videos / "manifest.csv") as source, open(manifest, "w", newline="") as target:
        rows = [row for row in csv.DictReader(source) if row["video"] in ("05_juggle.mp4", "bedroom.mp4")]
        writer = csv.DictWriter(target, ["video", "caption"])
        writer.writeheader()
        writer.writerows({"video": str(shared_videos / r["video"]), "caption": r["caption"]} for r in rows)
    settings = PipelineSettings(data_dir=tmp_path / "data", manifest=str(manifest), profile="paper")
    defs = build_definitions(settings)
    (partition,) = partition_rows(settings)
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions(clip_shards.name, [partition])
        result = defs.resolve_job_def("curate_shard").execute_in_process(partition_key=partition, instance=instance)
    assert result.success
    assert {e.check_name for e in result.get_asset_check_evaluations() if e.passed} == set(CHECKS)

    index = json.loads((settings.shards_dir / f"{partition}.json").read_text())
    assert len(index["samples"]) + len(index["rejected"]) == 2
    assert {r["reason"] for r in index["rejected"]} <= {"empty_mask", "no_visible_track"}
    samples = read_samples(settings.shards_dir / f"{partition}.tar")
    assert samples, f"no sample reached the shard: {index['rejected']}"
    for members in samples.values():
        backends = json.loads(members["json"])["backends"]
        assert backends["object_prompts"].startswith("llm-transformers@") and "-> lexical@" in backends["object_prompts"]
        assert backends["reference_masks"].startswith("grounded-sam2@") and str(tmp_path) in backends["reference_masks"]
        assert backends["depth"].startswith("zoedepth@") and str(tmp_path) in backends["depth"]
        assert backends["tracks_3d"].startswith("cotracker3@")
