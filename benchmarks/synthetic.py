"""Generated scenes at scale: render time, what was drawn, and where tracking breaks, per camera motion class.

Draws `--count` scenes (`pointvid synth`, default 200; `--cameras K` makes each a synchronized rig of K views),
curates them on the `cpu` profile through the plain-Python runner (the code the Dagster assets call), on one core
(thread pools pinned to 1 before numpy/OpenCV load), then prints:
- render time (simulation, rendering and ground truth, from `render_views`' DEBUG log) per clip, per camera movement
  and, for rigs, per extra camera: the first `--timing-scenes` rigs are rendered again, whole and with their first
  camera alone, back to back;
- the pipeline's wall time per view and stage;
- the distributions drawn: object kinds, sizes, motions, floors, backdrops, light tones, camera movements, labels, focus;
- per camera movement class: views curated and rejected (by reason), objects removed by the quality gate, lost objects
  shipped, and the point-map evaluation of `pointvid evaluate` (`evaluation/point_map_accuracy.py`: mean over views of
  the shipped pixels' figures on frames 1-15);
- for rigs, how well two shipped views agree in world space: for the shipped points of one view that the other view
  also sees (by the ground truth), the distance to the other view's nearest shipped point of the same object at the
  same frame (median per scene, frames 1, 4, ..., 13, both directions).
Run: python benchmarks/synthetic.py [--count 200] [--seed 0] [--cameras 1] [--keep DIR] [--json FILE]
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pointvid_pipeline.backends.registry import lazy_backends  # noqa: E402
from pointvid_pipeline.clip import FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH, project, unproject  # noqa: E402
from pointvid_pipeline.evaluation.point_map_accuracy import HEADLINE, LOST_OBJECT_PX, evaluate_dataset, summarise  # noqa: E402
from pointvid_pipeline.pipeline import STAGES, partition_rows, run_stage  # noqa: E402
from pointvid_pipeline.settings import PipelineSettings  # noqa: E402
from pointvid_pipeline.storage.shard_format import load_points, read_samples  # noqa: E402
from pointvid_pipeline.synthetic.cameras import MOVEMENTS  # noqa: E402
from pointvid_pipeline.synthetic.generator import generate_scenes  # noqa: E402
from pointvid_pipeline.synthetic.scenes import MOTIONS, Light, SceneSpec, render_views  # noqa: E402
from training.data import CAMERA_TAG  # noqa: E402


def _cell(value) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.3f}"


class RenderTimes(logging.Handler):
    """Collects the `render` records `render_views` logs at DEBUG."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "render"):
            self.records.append(record.render)


def distributions(scenes: list[dict]) -> dict[str, Counter]:
    specs = [SceneSpec.from_dict(scene) for scene in scenes]
    programs = [program for spec in specs for program in spec.resolve_cameras(spec.seed_rig())]
    return {
        "object kinds": Counter(obj.kind for spec in specs for obj in spec.scene_objects),
        "object sizes": Counter(obj.size for spec in specs for obj in spec.scene_objects),
        "objects per scene": Counter(len(spec.objects) for spec in specs),
        "motions": Counter(spec.motion for spec in specs),
        "floors": Counter(spec.floor for spec in specs),
        "backdrops": Counter("open floor" if spec.background is None else "backdrop" for spec in specs),
        "light": Counter(Light(**spec.light).caption if spec.light else "default light" for spec in specs),
        "camera movements (views)": Counter(program.movement for program in programs),
        "camera labels (views)": Counter(label for program in programs for label in program.labels),
        "focus (views)": Counter(f"{program.focus}/{program.focus_position}" for program in programs),
    }


def render_timing(scenes: list[dict], records: list[dict], timing_scenes: int) -> dict:
    """Seconds per clip overall and per movement (a rig's time shared evenly by its views), and per extra camera of a rig."""
    movements_of = {scene["name"]: [c["movement"] for c in (scene["camera"] if isinstance(scene["camera"], list) else [scene["camera"]])] for scene in scenes}
    per_movement: dict[str, list[float]] = defaultdict(list)
    for record in records:
        for movement in movements_of[record["scene"]]:
            per_movement[movement].append(record["seconds"] / record["views"])
    timing = {
        "scenes": len(records),
        "seconds_per_scene": float(np.mean([r["seconds"] for r in records])),
        "seconds_per_clip": sum(r["seconds"] for r in records) / sum(r["views"] for r in records),
        "seconds_per_clip_by_movement": {m: float(np.mean(per_movement[m])) for m in MOVEMENTS if m in per_movement},
    }
    rigs = [scene for scene in scenes if isinstance(scene["camera"], list) and len(scene["camera"]) > 1][:timing_scenes]
    if rigs:  # each rig rendered whole and with its first camera alone, back to back (the machine's load changes over a run)
        alone, extra = [], []
        for scene in tqdm(rigs, desc="rig vs first camera alone", unit="scene"):
            seconds = []
            for cameras in (scene["camera"][0], scene["camera"]):
                started = time.perf_counter()
                render_views(SceneSpec.from_dict({**scene, "camera": cameras}))
                seconds.append(time.perf_counter() - started)
            alone.append(seconds[0])
            extra.append((seconds[1] - seconds[0]) / (len(scene["camera"]) - 1))
        timing.update(timing_scenes=len(rigs), seconds_first_camera_alone=float(np.mean(alone)), seconds_per_extra_camera=float(np.mean(extra)))
    return timing


def curate(settings: PipelineSettings) -> dict[str, float]:
    """Run every stage of every partition; wall seconds per stage."""
    backends = lazy_backends(settings.profile)
    seconds = dict.fromkeys(STAGES, 0.0)
    for partition in tqdm(list(partition_rows(settings)), desc="curate", unit="shard"):
        for stage in STAGES:
            seconds[stage] += run_stage(stage, partition, settings, backends).seconds
    return seconds


def outcomes_by(settings: PipelineSettings, rows: list[dict], group_of: dict[str, str], groups: tuple[str, ...]) -> dict[str, dict]:
    """Per group of views (`group_of`: sample key -> group): views accepted and rejected (by reason), objects removed
    by the gate, lost objects shipped."""
    outcome: dict[str, dict] = {g: {"views": 0, "shipped": 0, "rejected": Counter(), "objects": 0, "removed_objects": 0, "lost_objects_shipped": 0} for g in groups}
    for group in group_of.values():
        outcome[group]["views"] += 1
    for index_path in sorted(settings.shards_dir.glob("*.json")):
        index = json.loads(index_path.read_text())
        for sample in index["samples"]:
            outcome[group_of[sample["key"]]]["shipped"] += 1
        for rejected in index["rejected"]:
            outcome[group_of[rejected["key"]]]["rejected"][rejected["reason"]] += 1
    for row in rows:
        if row["object"] != "all" and row["subset"] == "all" and row["frames"] == "1-15":
            figures = outcome[group_of[row["key"]]]
            figures["objects"] += 1
            figures["removed_objects"] += row["shipped_pixels"] == 0
            figures["lost_objects_shipped"] += row.get("last_frame_median_px", 0) > LOST_OBJECT_PX
    return {g: {**o, "rejected": dict(o["rejected"])} for g, o in outcome.items() if o["views"]}


def _outcome_cells(outcome: dict) -> list:
    rejected = ", ".join(f"{reason} {count}" for reason, count in outcome["rejected"].items()) or "0"
    return [outcome["views"], outcome["shipped"], rejected, outcome["objects"], outcome["removed_objects"], outcome["lost_objects_shipped"]]


def _shipped_view(data_dir: Path, tar: Path, key: str, members: dict) -> dict:
    truth = data_dir / "stages" / "clips" / tar.stem / key
    return {
        "meta": json.loads(members["json"]),
        "points": load_points(members["points.npz"]),
        "labels": np.asarray(Image.open(io.BytesIO(members["mask.png"])), dtype=np.int32),
        **{name: np.load(truth / f"truth_{name}.npy", mmap_mode="r") for name in ("depth", "instance_masks", "track_uvd", "track_visible")},
    }


def _to_world(points_cam: np.ndarray, extrinsic: np.ndarray) -> np.ndarray:
    return (points_cam - extrinsic[:3, 3]) @ extrinsic[:3, :3]


def _covisible_distances(first: dict, second: dict, t: int) -> list[float]:
    """Per object: median distance from `first`'s shipped world points that `second` also sees to `second`'s nearest shipped point."""
    medians = []
    cameras = [(np.asarray(view["meta"]["frame_intrinsics"][t]), np.asarray(view["meta"]["extrinsics"][t])) for view in (first, second)]
    for label in range(1, len(first["meta"]["objects"]) + 1):
        shipped = [view["points"]["valid"] & view["points"]["visible"][t] & (view["labels"] == label) for view in (first, second)]
        shipped[0] &= first["track_visible"][t]
        if min(s.sum() for s in shipped) < 20:
            continue
        (k_first, e_first), (k_second, e_second) = cameras
        truth = _to_world(unproject(np.asarray(first["track_uvd"][t][shipped[0]], np.float64), k_first), e_first)
        uvd = project(truth @ e_second[:3, :3].T + e_second[:3, 3], k_second)
        column, row = np.rint(uvd[:, 0]).astype(int), np.rint(uvd[:, 1]).astype(int)
        inside = (column >= 0) & (column < FRAME_WIDTH) & (row >= 0) & (row < FRAME_HEIGHT)
        column, row = np.where(inside, column, 0), np.where(inside, row, 0)
        seen = inside & (second["instance_masks"][t][row, column] == label) & (np.abs(second["depth"][t][row, column] - uvd[:, 2]) < np.maximum(0.01, 0.01 * uvd[:, 2]))
        if seen.sum() < 20:
            continue
        points_first = _to_world(unproject(first["points"]["uvd"][t][shipped[0]][seen].astype(np.float64), k_first), e_first)
        points_second = _to_world(unproject(second["points"]["uvd"][t][shipped[1]].astype(np.float64), k_second), e_second)
        medians.append(float(np.median(cKDTree(points_second).query(points_first)[0])))
    return medians


def cross_view_agreement(data_dir: Path) -> dict:
    """Per scene with two or more shipped views (the first two): the median world distance of co-visible shipped points.
    A scene's views share a shard; one scene's arrays are in memory at a time."""
    per_scene = {}
    for tar in sorted((data_dir / "shards").glob("*.tar")):
        keys_of_scene: dict[str, list[str]] = defaultdict(list)
        samples = read_samples(tar)
        for key, members in samples.items():
            keys_of_scene[json.loads(members["json"]).get("scene_id")].append(key)
        for scene, keys in keys_of_scene.items():
            if len(keys) < 2:
                continue
            shipped = [_shipped_view(data_dir, tar, key, samples[key]) for key in keys[:2]]
            distances = [d for first, second in (shipped, shipped[::-1]) for t in range(1, FRAME_COUNT, 3) for d in _covisible_distances(first, second, t)]
            if distances:
                per_scene[scene] = {"cameras": [view["meta"]["source"]["camera"] for view in shipped], "median_m": float(np.median(distances))}
    return per_scene


def report(scenes: list[dict], timing: dict, stage_seconds: dict[str, float], settings: PipelineSettings) -> dict:
    views = sum(len(s["camera"]) if isinstance(s["camera"], list) else 1 for s in scenes)
    print(f"\n== {len(scenes)} scenes, {views} views ==")
    print(f"render (simulation + rendering + ground truth): {timing['seconds_per_scene']:.2f} s per scene, {timing['seconds_per_clip']:.2f} s per clip (view)")
    if "seconds_per_extra_camera" in timing:
        print(f"  over {timing['timing_scenes']} rigs: first camera alone {timing['seconds_first_camera_alone']:.2f} s, each extra camera {timing['seconds_per_extra_camera']:.2f} s")
    print("  per clip by camera movement: " + ", ".join(f"{m} {s:.2f} s" for m, s in timing["seconds_per_clip_by_movement"].items()))
    print("pipeline wall time per view: " + ", ".join(f"{stage} {seconds / views:.2f} s" for stage, seconds in stage_seconds.items()) + f"; total {sum(stage_seconds.values()) / views:.2f} s")
    drawn = distributions(scenes)
    print("\ndistributions:")
    for name, counter in drawn.items():
        print(f"  {name}: " + ", ".join(f"{value} {count}" for value, count in sorted(counter.items(), key=lambda item: (-item[1], str(item[0])))))
    rows, missing = evaluate_dataset(settings.data_dir)
    summary = summarise(rows)
    views_of = [row for rows_ in partition_rows(settings).values() for row in rows_]  # generated specs are all valid
    outcomes = outcomes_by(settings, rows, {row.key: CAMERA_TAG.search(row.caption).group(1) for row in views_of}, MOVEMENTS)
    motion_of_scene = {scene["name"]: scene["motion"] for scene in scenes}
    by_motion = outcomes_by(settings, rows, {row.key: motion_of_scene[row.scene] for row in views_of}, MOTIONS)
    print(f"\nper camera movement (point-map evaluation: mean over shipped views, all shipped pixels, frames 1-15; lost = last-frame error > {LOST_OBJECT_PX:g} px){'; no ground truth for ' + str(missing) if missing else ''}:")
    header = ["movement", "views", "shipped", "rejected", "objects", "removed", "lost shipped", *(label for label, _ in HEADLINE)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for movement, outcome in outcomes.items():
        figures = summary["by_camera"].get(movement, {})
        cells = [movement, *_outcome_cells(outcome), *(_cell(figures.get(name)) for _, name in HEADLINE)]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    pooled = summary["pooled"]["all/1-15"]
    shipped = sum(o["shipped"] for o in outcomes.values())
    cells = ["pooled", views, shipped, "", summary["objects"], summary["removed_objects"], len(summary["lost_objects_shipped"]), *(_cell(pooled[name]) for _, name in HEADLINE)]
    print("| " + " | ".join(str(cell) for cell in cells) + " |")
    print("\nper scene motion (what the objects do matters more than what the camera does):")
    print("| motion | " + " | ".join(header[1:7]) + " |")
    print("|" + "---|" * 7)
    for motion, outcome in by_motion.items():
        print("| " + " | ".join(str(cell) for cell in [motion, *_outcome_cells(outcome)]) + " |")
    agreement = cross_view_agreement(settings.data_dir)
    if agreement:
        medians = np.array([scene["median_m"] for scene in agreement.values()])
        worst = sorted(agreement.items(), key=lambda item: -item[1]["median_m"])[:3]
        print(
            f"\nviews of one scene in world space: {len(agreement)} scenes with two shipped views seeing an object in common; per-scene median distance of co-visible "
            f"shipped points to the other view's: median {1000 * np.median(medians):.1f} mm, 90th percentile {1000 * np.quantile(medians, 0.9):.1f} mm, "
            f"under 1 cm in {np.mean(medians < 0.01):.0%} of scenes; worst: " + ", ".join(f"{name} ({'/'.join(s['cameras'])}) {1000 * s['median_m']:.1f} mm" for name, s in worst)
        )
    return {"scenes": len(scenes), "views": views, "render": timing, "stage_seconds_per_view": {k: v / views for k, v in stage_seconds.items()},
            "distributions": {k: dict(v) for k, v in drawn.items()}, "by_movement": outcomes, "by_motion": by_motion, "evaluation": summary, "cross_view_agreement": agreement}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="generated scenes (default 200; every block of 10 holds each camera movement once)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--cameras", type=int, default=1, help="cameras per scene (default 1; K > 1: synchronized rigs)")
    parser.add_argument("--timing-scenes", type=int, default=10, help="rigs rendered again whole and with their first camera alone, for the time per extra camera (default 10)")
    parser.add_argument("--keep", help="write the run here instead of a temporary folder")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)
    times = RenderTimes()
    render_log = logging.getLogger("pointvid_pipeline.synthetic.scenes")
    render_log.setLevel(logging.DEBUG)
    render_log.addHandler(times)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        scenes = generate_scenes(args.count, args.seed, args.cameras)
        (root / "scenes.json").write_text(json.dumps(scenes))
        settings = PipelineSettings(data_dir=root / "data", scenes=str(root / "scenes.json"))
        stage_seconds = curate(settings)
        render_records = list(times.records)
        timing = render_timing(scenes, render_records, args.timing_scenes)
        results = report(scenes, timing, stage_seconds, settings)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
