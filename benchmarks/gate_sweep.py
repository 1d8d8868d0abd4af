"""The sweep that sets the quality gate's thresholds (stages/quality_gate.py), on curated synthetic data.

Reads a data directory curated by the pipeline (its stage files: smoothed tracks, visibility, frames,
depth, ground truth), computes every object's gate signals and whether it failed by the ground truth
(median error of its tracks at its last frame in view, over its ground-truth-visible points, above 8 px), and
grid-searches the thresholds. Ranks first the settings that leave no failed object in the first data
directory (the default scenes, which every user curates first), then by F1 over the others, and prints the
best settings and the shipped ones, per directory. The tracker's second draws (`redraw_disagreement`) are read
from the run: they exist for the objects the run's thresholds asked about (quality_gate.needs_redraw).
Run: python benchmarks/gate_sweep.py DATA_DIR [DATA_DIR ...]   (e.g. DIR/default DIR/seeds, the --keep folders of point_map_quality.py)
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from pointvid_pipeline.evaluation.point_map_accuracy import LOST_OBJECT_PX
from pointvid_pipeline.evaluation.track_errors import object_last_seen_errors
from pointvid_pipeline.stages.quality_gate import GATE_THRESHOLDS, GateThresholds, gate_signals, lost_objects
from pointvid_pipeline.storage.stage_store import StageStore

GRID = {
    "max_floating": (0.1, 0.15, 0.2, 0.22, 0.25, 0.3, 0.4, 1.0),
    "max_hidden_unoccluded": (0.3, 0.5, 0.7, 0.9, 1.0),
    "max_hidden_frames": (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0),
    "max_recoloured": (0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0),
    "max_colour_change": (25.0, 30.0, 35.0, 40.0, 45.0, 60.0, 80.0, 1e9),
}


def second_draws(store: StageStore, partition: str) -> dict[str, dict[str, list[float]]]:
    """Sample key -> the tracks_3d stage's `redraw_disagreement_px` (empty: nothing redrawn)."""
    return {key: meta.get("redraw_disagreement_px", {}) for key, meta in store.read_index("tracks_3d", partition).accepted.items()}


def objects(data_dir: Path) -> list[dict]:
    """Every object of every sample that reached the smoothed_tracks stage: signals and failure."""
    store = StageStore(data_dir / "stages")
    out = []
    for index_path in sorted((data_dir / "stages" / "smoothed_tracks").glob("*/_index.json")):
        partition = index_path.parent.name
        redraws = second_draws(store, partition)
        for key in store.read_index("smoothed_tracks", partition).accepted:
            clip = store.read_arrays("clips", partition, key)
            queries = store.read_arrays("query_points", partition, key)["queries"]
            u, v = queries.T
            labels = store.read_arrays("reference_masks", partition, key)["labels"][v, u]
            tracks = np.asarray(store.read_arrays("smoothed_tracks", partition, key)["tracks"])
            visibility = np.asarray(store.read_arrays("tracks_3d", partition, key)["visibility"])
            # the second draw exists for the objects the run's thresholds asked about
            signals = gate_signals(clip["frames"], store.read_arrays("depth", partition, key)["depth"], tracks, visibility, labels, queries, redraws[key])
            errors = object_last_seen_errors(tracks, labels, clip["truth_track_uvd"][:, v, u], clip["truth_track_visible"][:, v, u])
            out += [{"key": key, "object_id": object_id, "failed": errors[object_id] > LOST_OBJECT_PX, "signals": values} for object_id, values in signals.items()]
    return out


def precision_recall(removed: list[bool], failed: list[bool]) -> dict:
    """The gate judged against the ground truth: of the objects it removed, how many had failed, and of the failed, how many it removed."""
    caught = sum(a and b for a, b in zip(removed, failed))
    precision = caught / sum(removed) if any(removed) else float("nan")
    recall = caught / sum(failed) if any(failed) else float("nan")
    return {"objects": len(failed), "failed": sum(failed), "removed": sum(removed), "caught": caught, "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if caught else 0.0, "good_objects_removed": sum(removed) - caught}


def figures(rows: list[dict], thresholds: GateThresholds) -> dict:
    removed = [r["object_id"] in lost_objects({r["object_id"]: r["signals"]}, thresholds) for r in rows]
    return precision_recall(removed, [r["failed"] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    first, *others = [objects(data_dir) for data_dir in args.data_dirs]
    rest = [row for rows in others for row in rows] or first

    def per_directory(thresholds: GateThresholds) -> str:
        return "  ".join(f"{data_dir.name}: P {f['precision']:.3f} R {f['recall']:.3f} ({f['failed']} failed, {f['removed']} removed, {f['good_objects_removed']} good)"
                         for data_dir, f in ((d, figures(rows, thresholds)) for d, rows in zip(args.data_dirs, [first, *others])))

    results = []
    for values in itertools.product(*GRID.values()):
        thresholds = GateThresholds(*values)
        results.append((figures(first, thresholds)["recall"] == 1.0, figures(rest, thresholds), thresholds))
    for _, _, thresholds in sorted(results, key=lambda r: (not r[0], -r[1]["f1"], -r[1]["recall"]))[:8]:
        print(f"{thresholds}\n    {per_directory(thresholds)}")
    print(f"shipped {GATE_THRESHOLDS}\n    {per_directory(GATE_THRESHOLDS)}")


if __name__ == "__main__":
    main()
