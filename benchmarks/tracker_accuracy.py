"""Tracker accuracy against the renderer's ground truth: OpticalFlowTracker (per-point chained DIS flow)
versus RigidObjectTracker (one SE(3) pose per reference-mask instance, re-anchored to frame 0).

Both trackers get the same inputs per synthetic scene: frames, renderer depth, renderer frame-0
instance labels and the pipeline's query points (grid 80 + the settings' background fraction).
Figures are for FOREGROUND queries (labels > 0) on frames 1-15:
- median 2D error (px), fraction within 1 px and median relative depth error, where the
  ground-truth point is visible;
- per object, the median 2D error at the last frame (visible points); an object "fails" above 8 px;
- occlusion accuracy: predicted visibility == ground-truth visibility over all point-frames;
- tracker CPU and wall seconds per clip on one core (thread pools pinned to 1 before numpy/OpenCV load);
  timings are noisy on a shared machine: compare runs made at the same time.
Tables: per scene, per camera motion (the scene name's last word), overall (mean of per-scene
figures). Scene sets: the 14 default scenes, then the same specs rendered with other seeds.
Run: python benchmarks/tracker_accuracy.py [--extra-seeds 3] [--scenes NAME ...]
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pointvid_pipeline.clip import Clip  # noqa: E402
from pointvid_pipeline.settings import PipelineSettings  # noqa: E402
from pointvid_pipeline.stages.object_tracking import RigidObjectTracker  # noqa: E402
from pointvid_pipeline.stages.query_points import sample_query_points, sample_seed  # noqa: E402
from pointvid_pipeline.stages.tracking import OpticalFlowTracker  # noqa: E402
from pointvid_pipeline.synthetic.scenes import SceneSpec, load_default_scenes, render_scene  # noqa: E402

cv2.setNumThreads(1)
FAIL_PX = 8.0
COLUMNS = ("median_px", "within_1px", "rel_depth", "occlusion_acc", "worst_object_px", "failed_objects", "seconds", "wall_seconds")


def scene_inputs(clip: Clip, settings: PipelineSettings) -> tuple[np.ndarray, np.ndarray]:
    """Frame-0 labels and query points exactly as the pipeline's stages 3-4 make them for this clip."""
    labels = clip.truth.instance_masks[0].astype(np.int32)
    queries = sample_query_points(labels, settings.grid_size, settings.background_fraction, sample_seed(clip.key))
    return labels, queries


def score(tracks: np.ndarray, visible: np.ndarray, clip: Clip, labels: np.ndarray, queries: np.ndarray) -> dict:
    """The figures of one tracker on one clip (foreground queries, frames 1..T-1)."""
    u, v = queries[:, 0], queries[:, 1]
    query_labels = labels[v, u]
    foreground = query_labels > 0
    truth_uvd = clip.truth.track_uvd[1:, v[foreground], u[foreground]].astype(np.float64)
    truth_visible = clip.truth.track_visible[1:, v[foreground], u[foreground]]
    predicted = tracks[1:, foreground].astype(np.float64)
    error_px = np.linalg.norm(predicted[..., :2] - truth_uvd[..., :2], axis=-1)
    rel_depth = np.abs(predicted[..., 2] - truth_uvd[..., 2]) / truth_uvd[..., 2]
    last_frame = {}
    for k in np.unique(query_labels[foreground]):
        seen = truth_visible[-1] & (query_labels[foreground] == k)
        if seen.any():
            last_frame[clip.truth.object_names[k - 1]] = float(np.median(error_px[-1, seen]))
    return {
        "median_px": float(np.median(error_px[truth_visible])),
        "within_1px": float(np.mean(error_px[truth_visible] <= 1.0)),
        "rel_depth": float(np.median(rel_depth[truth_visible])),
        "occlusion_acc": float(np.mean(visible[1:, foreground] == truth_visible)),
        "worst_object_px": max(last_frame.values(), default=0.0),
        "failed_objects": sum(error > FAIL_PX for error in last_frame.values()),
        "last_frame_px": last_frame,
    }


def run_tracker(tracker, clip: Clip, labels: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Tracks, visibility, the tracker's CPU seconds (this process: user + system) and wall seconds."""
    points = queries.astype(np.float32)
    start, wall_start = time.process_time(), time.perf_counter()
    if isinstance(tracker, RigidObjectTracker):
        tracks, visible = tracker.track(clip.frames, clip.truth.depth, points, labels, clip.frame_intrinsics)
    else:
        tracks, visible = tracker.track(clip.frames, clip.truth.depth, points)
    return tracks, visible, time.process_time() - start, time.perf_counter() - wall_start


def evaluate(specs: list[SceneSpec], title: str) -> dict[str, dict[str, dict]]:
    """Render each scene, run both trackers, return {tracker: {scene: figures}}."""
    settings = PipelineSettings()
    trackers = {"before": OpticalFlowTracker(), "after": RigidObjectTracker()}
    for tracker in trackers.values():
        tracker.setup()
    results: dict[str, dict[str, dict]] = {name: {} for name in trackers}
    for spec in tqdm(specs, desc=title, unit="scene"):
        clip = render_scene(spec)
        labels, queries = scene_inputs(clip, settings)
        for name, tracker in trackers.items():
            tracks, visible, seconds, wall_seconds = run_tracker(tracker, clip, labels, queries)
            results[name][spec.name] = score(tracks, visible, clip, labels, queries) | {"seconds": seconds, "wall_seconds": wall_seconds}
    return results


def format_row(label: str, before: dict, after: dict) -> str:
    cells = []
    for column in COLUMNS:
        fmt = "{:.0f}" if column == "failed_objects" else "{:.3f}" if column in ("within_1px", "occlusion_acc") else "{:.2f}"
        if column == "rel_depth":
            fmt = "{:.2%}"
        cells.append(f"{fmt.format(before[column])} -> {fmt.format(after[column])}".rjust(18))
    return f"{label:<44}" + "".join(cells)


def mean_figures(rows: list[dict]) -> dict:
    figures = {column: float(np.mean([row[column] for row in rows])) for column in COLUMNS}
    figures["failed_objects"] = float(sum(row["failed_objects"] for row in rows))
    figures["worst_object_px"] = float(max(row["worst_object_px"] for row in rows))
    return figures


def print_tables(results: dict[str, dict[str, dict]], title: str) -> None:
    """Per scene, per camera motion and overall, each cell 'before -> after'."""
    before, after = results["before"], results["after"]
    header = f"{'':<44}" + "".join(column.rjust(18) for column in COLUMNS)
    print(f"\n== {title}: before (OpticalFlowTracker) -> after (RigidObjectTracker) ==")
    print("means of per-scene figures; worst_object_px = the worst object's last-frame median (max over scenes);")
    print(f"failed_objects = objects with last-frame median > {FAIL_PX:.0f} px (summed); seconds / wall_seconds = tracker CPU / wall s per clip")
    print(header)
    for scene in before:
        print(format_row(scene, before[scene], after[scene]))
    print(header)
    for motion in ("static", "orbit", "pan", "dolly"):
        scenes = [scene for scene in before if scene.split("-s")[0].endswith(motion)]
        if scenes:
            rows = [before[s] for s in scenes], [after[s] for s in scenes]
            print(format_row(f"camera {motion} ({len(scenes)} scenes)", mean_figures(rows[0]), mean_figures(rows[1])))
    print(format_row(f"overall ({len(before)} scenes)", mean_figures(list(before.values())), mean_figures(list(after.values()))))
    failures = [f"{scene}: {name} {error:.1f} px" for scene, row in after.items()
                for name, error in row["last_frame_px"].items() if error > FAIL_PX]  # fmt: skip
    print(f"objects failing after ({len(failures)}): " + ("; ".join(failures) or "none"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Measure OpticalFlowTracker and RigidObjectTracker against the synthetic renderer's ground "
        "truth (foreground 2D/depth error, per-object last-frame error, occlusion accuracy, CPU time per clip) "
        "on the default scenes and on the same scene specs rendered with other seeds.",
    )
    parser.add_argument("--extra-seeds", type=int, default=3, help="other seeds per default spec (0: default scenes only)")
    parser.add_argument("--scenes", nargs="*", help="only the default scenes with these names")
    args = parser.parse_args()

    specs = [spec for spec in load_default_scenes() if not args.scenes or spec.name in args.scenes]
    print_tables(evaluate(specs, "default scenes"), f"{len(specs)} default scenes")
    if args.extra_seeds:
        extra = [
            dataclasses.replace(spec, seed=spec.seed + 1000 * n, name=f"{spec.name}-s{spec.seed + 1000 * n}")
            for n in range(1, args.extra_seeds + 1)
            for spec in specs
        ]
        print_tables(evaluate(extra, "other seeds"), f"{len(extra)} scenes with other seeds")


if __name__ == "__main__":
    main()
