"""Per-stage wall time per clip on the default input, post-processing speed-ups, bytes per sample.

Runs every stage of the plain-Python runner (the same code the Dagster assets call) on all
partitions of the default synthetic scenes in a temporary data directory, on one core (thread
pools pinned to 1 before numpy/OpenCV load), then the Kalman / Algorithm-1 comparison of
`postprocess.py`. Targets from the curation issue: clip -> shard <= 1 s per clip (rendering
excluded), Kalman >= 300x, densification >= 30x, <= 1.5 MB per sample.
Run: python benchmarks/pipeline.py [--keep DIR]
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import postprocess  # noqa: E402

from pointvid_pipeline.backends.registry import lazy_backends  # noqa: E402
from pointvid_pipeline.dataset import build_dataset  # noqa: E402
from pointvid_pipeline.pipeline import STAGES, partition_rows, run_stage  # noqa: E402
from pointvid_pipeline.settings import PipelineSettings  # noqa: E402

TARGET_SECONDS_PER_CLIP = 1.0
TARGET_BYTES_PER_SAMPLE = 1.5e6


def measure_stages(data_dir: Path) -> dict:
    settings = PipelineSettings(data_dir=data_dir)
    backends = lazy_backends(settings.profile)
    partitions = list(partition_rows(settings))
    seconds = dict.fromkeys(STAGES, 0.0)
    clips = 0
    for partition in partitions:
        for stage in STAGES:
            report = run_stage(stage, partition, settings, backends)
            seconds[stage] += report.seconds
        clips += report.accepted
    summary = build_dataset(settings, partitions)
    per_clip = {stage: s / clips for stage, s in seconds.items()}
    return {
        "clips": clips,
        "seconds_per_clip": per_clip,
        "clip_to_shard_seconds_per_clip": sum(v for stage, v in per_clip.items() if stage != "clips"),
        "bytes_per_sample": summary["bytes_per_sample"],
        "quality_vs_ground_truth": summary["quality_vs_ground_truth"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="write the run here instead of a temporary folder")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        stages = measure_stages(Path(args.keep or tmp))
    print(f"Per-stage wall time per clip ({stages['clips']} default synthetic clips, one core):")
    for stage, value in stages["seconds_per_clip"].items():
        note = "  (pybullet rendering + ground truth)" if stage == "clips" else ""
        print(f"  {stage:<16} {value * 1000:8.1f} ms{note}")
    total = stages["clip_to_shard_seconds_per_clip"]
    print(f"  clip -> shard    {total * 1000:8.1f} ms per clip, rendering excluded (target <= {TARGET_SECONDS_PER_CLIP:.1f} s)")
    print(f"Bytes per sample: {stages['bytes_per_sample'] / 1e6:.3f} MB (target <= {TARGET_BYTES_PER_SAMPLE / 1e6:.1f} MB)")
    post = postprocess.measure()
    print("Post-processing against the paper-literal references, same run:")
    print(json.dumps(post, indent=1))
    print("Quality against ground truth:")
    print(json.dumps(stages["quality_vs_ground_truth"], indent=1))


if __name__ == "__main__":
    main()
