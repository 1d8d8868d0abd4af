"""TAP-Vid (2D) and TAPVid-3D point-tracking metrics for one video, as Google DeepMind's tapnet defines them.

The definitions follow tapnet's `compute_tapvid_metrics` (tapnet/tapvid/evaluation_datasets.py, formerly
tapnet/evaluation_datasets.py) and `compute_tapvid3d_metrics` (tapnet/tapvid3d/evaluation/metrics.py), with
the intrinsics rescale of tapnet/tapvid3d/evaluation/evaluate_model.py. For each pixel threshold δ:
- pts_within_δ: among gt-visible point-frames, the fraction with error < δ (strict), whatever the predicted
  visibility; average_pts_within_thresh is its mean over δ (APD, or APD-3D);
- jaccard_δ = TP / (#gt-visible + FP), TP = within ∧ gt-visible ∧ pred-visible,
  FP = pred-visible ∧ (gt-occluded ∨ ¬within); average_jaccard is its mean over δ (AJ, or 3D-AJ);
- occlusion_accuracy: fraction of point-frames whose predicted visibility equals the ground truth.
2D errors are measured on the 256x256 raster; in 3D, δ becomes δ·z_gt / √(fx·fy) metres, with K rescaled
so the shorter image side is 256 (fx, fy of each point-frame's own frame when K changes over the video: a zoom).

Differences from the reference:
- inputs are one video, time-major (T, N, ...), with visibility flags (True = visible) rather than
  occlusion flags in (N, T) layouts; 2D tracks are in our pixels and mapped to the 256 raster here;
- `evaluate` (T, N) picks the point-frames that count (default all). The reference derives that set itself:
  in 2D from its query mode ("first": frames after the query frame; "strided": all but the query frame),
  in 3D all point-frames; pass the equivalent mask to reproduce it;
- 3D `scaling` defaults to "none" (our depth is metric; the reference defaults to "median"), and the
  median/mean norms are taken over evaluated point-frames only, so a masked evaluation equals the reference
  run on that subset. The reference's query-based and neighbourhood scalings are not implemented.
Empty denominators give NaN, as numpy's 0/0 does in the reference. Camera-space points of pixel tracks
come from `pointvid_pipeline.clip.unproject`.
"""

from __future__ import annotations

import numpy as np

from pointvid_pipeline.clip import FRAME_HEIGHT, FRAME_WIDTH, pinhole

THRESHOLDS = (1, 2, 4, 8, 16)  # pixels at the benchmark's 256 resolution
RASTER = 256.0


def _ratio(numerator, denominator) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def _tap_scores(within, pred_visible, gt_visible, evaluate, thresholds) -> dict[str, float]:
    """The shared TAP-Vid scores from `within` (len(thresholds), T, N): error below each threshold."""
    pred_visible, gt_visible = np.asarray(pred_visible, bool), np.asarray(gt_visible, bool)
    evaluate = np.ones_like(gt_visible) if evaluate is None else np.asarray(evaluate, bool)
    visible = gt_visible & evaluate
    metrics = {"occlusion_accuracy": _ratio(np.sum((pred_visible == gt_visible) & evaluate), evaluate.sum())}
    for delta, hit in zip(thresholds, within, strict=True):
        true_positives = np.sum(hit & visible & pred_visible)
        false_positives = np.sum(pred_visible & evaluate & ~(hit & gt_visible))
        metrics[f"pts_within_{delta}"] = _ratio(np.sum(hit & visible), visible.sum())
        metrics[f"jaccard_{delta}"] = _ratio(true_positives, visible.sum() + false_positives)
    metrics["average_pts_within_thresh"] = float(np.mean([metrics[f"pts_within_{d}"] for d in thresholds]))
    metrics["average_jaccard"] = float(np.mean([metrics[f"jaccard_{d}"] for d in thresholds]))
    return metrics


def tapvid_2d_metrics(
    pred_uv: np.ndarray,
    pred_visible: np.ndarray,
    gt_uv: np.ndarray,
    gt_visible: np.ndarray,
    frame_size: tuple[int, int] = (FRAME_WIDTH, FRAME_HEIGHT),
    evaluate: np.ndarray | None = None,
    thresholds: tuple[float, ...] = THRESHOLDS,
) -> dict[str, float]:
    """TAP-Vid metrics of (T, N, 2) pixel tracks in a (W, H) frame, on the benchmark's 256x256 raster.

    The raster stretches u by 256/W and v by 256/H (the reference resizes every video to 256x256).
    """
    width, height = frame_size
    error = (np.asarray(pred_uv, float) - gt_uv) * [RASTER / width, RASTER / height]
    squared = np.sum(np.square(error), axis=-1)
    within = np.stack([squared < np.square(delta) for delta in thresholds])
    return _tap_scores(within, pred_visible, gt_visible, evaluate, thresholds)


def tapvid3d_metrics(
    pred_xyz: np.ndarray,
    pred_visible: np.ndarray,
    gt_xyz: np.ndarray,
    gt_visible: np.ndarray,
    intrinsics: np.ndarray,
    frame_size: tuple[int, int] = (FRAME_WIDTH, FRAME_HEIGHT),
    evaluate: np.ndarray | None = None,
    scaling: str = "none",
    thresholds: tuple[float, ...] = THRESHOLDS,
) -> dict[str, float]:
    """TAPVid-3D metrics of (T, N, 3) camera-space tracks in metres; `intrinsics` is K of the (W, H) frame:
    (3, 3), or (T, 3, 3) for a camera whose K changes (a zoom).

    A pixel threshold δ is back-projected to each gt point's depth with its frame's focal length, so the
    bar is a fixed image-plane error, not a fixed metric one. `scaling` ("none", "median", "mean") first multiplies predictions by
    s = reduce‖gt‖ / reduce‖pred‖ over evaluated point-frames visible in both; s is returned as "scale".
    """
    pred_xyz, gt_xyz = np.asarray(pred_xyz, float), np.asarray(gt_xyz, float)
    pred_visible, gt_visible = np.asarray(pred_visible, bool), np.asarray(gt_visible, bool)
    mask = np.ones_like(gt_visible) if evaluate is None else np.asarray(evaluate, bool)
    scale = _alignment_scale(pred_xyz, gt_xyz, pred_visible & gt_visible & mask, scaling)
    fx, fy, _, _ = pinhole(intrinsics, gt_xyz.ndim)
    focal = np.sqrt(fx * fy) * RASTER / min(frame_size)
    squared = np.sum(np.square(scale * pred_xyz - gt_xyz), axis=-1)
    within = np.stack([squared < np.square(delta * gt_xyz[..., 2] / focal) for delta in thresholds])
    return {**_tap_scores(within, pred_visible, gt_visible, mask, thresholds), "scale": scale}


def _alignment_scale(pred_xyz, gt_xyz, both_visible, scaling) -> float:
    """Global factor on predictions; NaN when nothing is visible in both (every point then misses, as in tapnet)."""
    if scaling == "none":
        return 1.0
    if scaling not in ("median", "mean"):
        raise ValueError(f"unknown scaling {scaling!r}: expected 'none', 'median' or 'mean'")
    if not both_visible.any():
        return float("nan")
    reduce = np.median if scaling == "median" else np.mean
    gt_norm, pred_norm = (np.linalg.norm(xyz[both_visible], axis=-1) for xyz in (gt_xyz, pred_xyz))
    return float(reduce(gt_norm) / reduce(pred_norm))
