"""The sweep behind the smoothing presets (stages/smoothing.py): error and acceleration against the ground truth.

Reads data directories curated by the pipeline (e.g. the --keep folders of point_map_quality.py), takes every
synthetic sample's raw foreground query tracks (tracks_3d) and smooths them with each Kalman setting of the
grid; prints the mean over samples of the median 2D error (frames 1-15, ground-truth visible) and the mean
|acceleration| as a multiple of the ground truth's, for all objects and for the objects the run's gate kept.
Run: python benchmarks/smoothing_sweep.py DATA_DIR [DATA_DIR ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pointvid_pipeline.clip import project, unproject
from pointvid_pipeline.evaluation.track_errors import mean_abs_acceleration
from pointvid_pipeline.stages.smoothing import SMOOTHING_CONFIGS, KalmanConfig, kalman_filter_xyz
from pointvid_pipeline.storage.stage_store import StageStore

GRID = {"raw (no smoothing)": None, **SMOOTHING_CONFIGS}
GRID.update({f"({q:g}, {r:g}, {s:g})": KalmanConfig(process_noise=q, measurement_noise=r, occluded_measurement_scale=s) for q, r, s in (
    (2e-3, 1e-7, 1e3), (3e-3, 1e-7, 1e3), (1e-2, 1e-7, 1e3), (3e-4, 1e-7, 1e3), (1e-4, 1e-7, 1e3), (3e-3, 1e-7, 1e2), (3e-3, 1e-7, 1e4))})


def foreground_tracks(data_dir: Path) -> dict[str, list[tuple]]:
    """Scope -> per sample (raw tracks, visibility, per-frame K, truth uvd, truth visibility). "all": every foreground
    track; "shipped": those of the objects the run's quality gate kept, in samples that reached the point map."""
    store = StageStore(data_dir / "stages")
    samples = {"all": [], "shipped": []}
    for index_path in sorted((data_dir / "stages" / "tracks_3d").glob("*/_index.json")):
        partition = index_path.parent.name
        gated = store.read_index_if_present("point_maps", partition)
        for key, meta in store.read_index("tracks_3d", partition).accepted.items():
            if not meta["synthetic"]:
                continue
            clip, tracks = store.read_arrays("clips", partition, key), store.read_arrays("tracks_3d", partition, key)
            u, v = store.read_arrays("query_points", partition, key)["queries"].T
            labels = store.read_arrays("reference_masks", partition, key)["labels"][v, u]
            scopes = {"all": labels > 0}
            if gated and key in gated.accepted:
                removed = [g["object_id"] for g in gated.accepted[key].get("gate", {}).get("removed", [])]
                scopes["shipped"] = (labels > 0) & ~np.isin(labels, removed)
            for scope, points in scopes.items():
                if points.any():
                    samples[scope].append((tracks["tracks"][:, points], tracks["visibility"][:, points], clip["frame_intrinsics"], clip["truth_track_uvd"][:, v[points], u[points]], clip["truth_track_visible"][:, v[points], u[points]]))
    return samples


def figures(samples: list[tuple], config: KalmanConfig | None) -> tuple[float, float]:
    errors, accelerations, truth_accelerations = [], [], []
    for raw, visible, intrinsics, truth, truth_visible in samples:
        smoothed = raw if config is None else project(kalman_filter_xyz(unproject(np.asarray(raw, np.float64), intrinsics), visible, config), intrinsics)
        seen = truth_visible[1:]
        errors.append(np.median(np.linalg.norm(smoothed[1:, ..., :2] - truth[1:, ..., :2], axis=-1)[seen]))
        accelerations.append(mean_abs_acceleration(smoothed))
        truth_accelerations.append(mean_abs_acceleration(truth))
    return float(np.mean(errors)), float(np.mean(accelerations) / np.mean(truth_accelerations))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    sets = {f"{d.name}/{scope}": samples for d in args.data_dirs for scope, samples in foreground_tracks(d).items()}
    print("setting".ljust(24) + "".join(f"{name[-26:]:>28}" for name in sets))
    for name, config in GRID.items():
        cells = [figures(samples, config) for samples in sets.values()]
        print(name.ljust(24) + "".join(f"{f'{error:.4f} px / x{ratio:.3f}':>28}" for error, ratio in cells))

if __name__ == "__main__":
    main()
