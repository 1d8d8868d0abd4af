"""TAP-Vid / TAPVid-3D metrics against hand-computed cases and a transcription of tapnet's formulas.

Arrays are time-major (T, N, ...). Expected numbers are worked out by hand in the comments.
"""

import math

import numpy as np
import pytest

from pointvid_pipeline.clip import unproject
from pointvid_pipeline.evaluation.tapvid_metrics import tapvid3d_metrics, tapvid_2d_metrics

THRESHOLDS = (1, 2, 4, 8, 16)


def expect(metrics, **expected):
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, nan_ok=True), key


# 2D, square 256x256 frame (raster = pixels), 3 frames x 2 tracks, errors in px:
#   t  track 0                              track 1
#   0  err 0,   gt vis, pred vis            err 0.5, gt vis, pred vis
#   1  err 2.0, gt vis, pred vis            err 0,   gt OCC, pred vis   (a false positive)
#   2  err 3,   gt vis, pred OCC            err 100, gt OCC, pred occ
GT_UV = np.full((3, 2, 2), 100.0)
PRED_UV = GT_UV + np.array([[[0, 0], [0.3, 0.4]], [[2, 0], [0, 0]], [[0, 3], [100, 0]]])
GT_VIS = np.array([[1, 1], [1, 0], [1, 0]], bool)
PRED_VIS = np.array([[1, 1], [1, 1], [0, 0]], bool)


def test_2d_hand_case():
    metrics = tapvid_2d_metrics(PRED_UV, PRED_VIS, GT_UV, GT_VIS, frame_size=(256, 256))
    # gt-visible errors 0, 2, 3, 0.5 -> <1: 2/4, <2: 2/4 (2.0 is not < 2), <4, <8, <16: 4/4; mean 4/5.
    # OA: wrong at (t2, track 0) and (t1, track 1) -> 4/6.
    # jaccard, 4 gt-visible: δ=1,2: TP {t0 both} = 2, FP {t1 track 0 too far, t1 track 1 occluded} = 2 -> 2/6;
    #   δ>=4: TP 3 (t2 track 0 is within but predicted occluded), FP 1 -> 3/5.  AJ = (2/6*2 + 3/5*3)/5 = 37/75.
    expect(
        metrics,
        pts_within_1=0.5, pts_within_2=0.5, pts_within_4=1, pts_within_8=1, pts_within_16=1,
        average_pts_within_thresh=0.8, occlusion_accuracy=4 / 6,
        jaccard_1=1 / 3, jaccard_2=1 / 3, jaccard_4=0.6, jaccard_8=0.6, jaccard_16=0.6, average_jaccard=37 / 75,
    )


def test_2d_predicted_occluded_lowers_jaccard_not_pts_within():
    all_visible = PRED_VIS.copy()
    all_visible[2, 0] = True  # now t2 track 0 (gt visible, err 3) is predicted visible too
    before = tapvid_2d_metrics(PRED_UV, PRED_VIS, GT_UV, GT_VIS, frame_size=(256, 256))
    after = tapvid_2d_metrics(PRED_UV, all_visible, GT_UV, GT_VIS, frame_size=(256, 256))
    assert after["average_pts_within_thresh"] == before["average_pts_within_thresh"] == 0.8
    # δ=4: TP 4, FP 1 (the occluded gt) -> 4/5, up from 3/5.  δ=1: its 3 px error makes it one more FP -> 2/7.
    expect(after, jaccard_4=4 / 5, jaccard_1=2 / 7, occlusion_accuracy=5 / 6)


def test_2d_evaluate_mask():
    evaluate = np.ones((3, 2), bool)
    evaluate[0] = False  # e.g. drop the query frame
    metrics = tapvid_2d_metrics(PRED_UV, PRED_VIS, GT_UV, GT_VIS, frame_size=(256, 256), evaluate=evaluate)
    # Left: t1 track 0 (err 2, vis/vis), t2 track 0 (err 3, vis/occ), t1 track 1 (occ/vis), t2 track 1 (occ/occ).
    # pts_within: 0/2, 0/2, 2/2, 2/2, 2/2 -> 3/5.  OA 2/4.
    # jaccard δ=1,2: TP 0 -> 0; δ>=4: TP 1, FP 1 (occluded gt) -> 1/(2+1).  AJ = 3 * (1/3) / 5 = 0.2.
    expect(
        metrics,
        pts_within_2=0, pts_within_4=1, average_pts_within_thresh=0.6, occlusion_accuracy=0.5,
        jaccard_2=0, jaccard_4=1 / 3, average_jaccard=0.2,
    )


def test_2d_errors_are_measured_on_the_256_raster():
    gt = np.zeros((1, 2, 2))
    pred = np.array([[[4.0, 0.0], [0.0, 1.5]]])
    visible = np.ones((1, 2), bool)
    # 512x128 frame: u x 0.5, v x 2 -> raster errors 2.0 and 3.0: neither < 2, both < 4.
    # (Unscaled pixel errors 4 and 1.5 would give 1/2 for both.)
    expect(tapvid_2d_metrics(pred, visible, gt, visible, frame_size=(512, 128)), pts_within_2=0, pts_within_4=1)
    # Our 448x256 frame: u error 6 px -> 6 * 256/448 = 3.43 < 4 (raw 6 px would not be).
    pred = np.array([[[6.0, 0.0], [0.0, 6.0]]])
    expect(tapvid_2d_metrics(pred, visible, gt, visible), pts_within_4=0.5, pts_within_8=1)


def test_2d_empty_denominators_are_nan():
    only_occluded = np.zeros((3, 2), bool)
    only_occluded[2, 1] = True  # gt occluded, predicted occluded
    metrics = tapvid_2d_metrics(PRED_UV, PRED_VIS, GT_UV, GT_VIS, frame_size=(256, 256), evaluate=only_occluded)
    assert metrics["occlusion_accuracy"] == 1
    for key in ("pts_within_1", "average_pts_within_thresh", "jaccard_1", "average_jaccard"):
        assert math.isnan(metrics[key]), key
    nothing = tapvid_2d_metrics(PRED_UV, PRED_VIS, GT_UV, GT_VIS, evaluate=np.zeros((3, 2), bool))
    assert all(math.isnan(value) for value in nothing.values())


# 3D: fx = fy = 256 in a 448x256 frame, so the δ threshold at depth z is δ * z / 256 metres.
K = np.array([[256.0, 0.0, 223.5], [0.0, 256.0, 127.5], [0.0, 0.0, 1.0]])


def test_3d_hand_case():
    # 1 track x 4 frames at z = 2 (thresholds δ/128 m):
    #   t0 exact, gt vis / pred vis;  t1 gt OCC / pred vis (FP);  t2 exact, gt vis / pred OCC;
    #   t3 error 3/128 m (between δ=2 and δ=4), gt vis / pred vis.
    gt = np.array([[[0.1, -0.2, 2.0]]] * 4)
    pred = gt + np.array([0, 0, 0, 3 / 128])[:, None, None] * [1, 0, 0]
    gt_vis = np.array([[1], [0], [1], [1]], bool)
    pred_vis = np.array([[1], [1], [0], [1]], bool)
    metrics = tapvid3d_metrics(pred, pred_vis, gt, gt_vis, K)
    # pts_within (3 gt-visible): δ=1,2: 2/3; δ>=4: 1 -> APD = (4/3 + 3)/5 = 13/15.  OA: t1, t2 wrong -> 2/4.
    # jaccard δ=1,2: TP {t0}, FP {t1, t3} -> 1/5; δ>=4: TP {t0, t3}, FP {t1} -> 2/4.  AJ = (2/5 + 3/2)/5 = 0.38.
    expect(
        metrics,
        pts_within_2=2 / 3, pts_within_4=1, average_pts_within_thresh=13 / 15, occlusion_accuracy=0.5,
        jaccard_1=0.2, jaccard_2=0.2, jaccard_4=0.5, jaccard_16=0.5, average_jaccard=0.38, scale=1.0,
    )


def test_3d_threshold_grows_with_depth_and_is_strict():
    # Same 1/64 m error at z = 2 (δ=2 threshold is exactly 1/64) and at z = 4 (δ=1 threshold is exactly 1/64).
    gt = np.array([[[0.0, 0.0, 2.0], [0.0, 0.0, 4.0]]])
    pred = gt + [1 / 64, 0, 0]
    visible = np.ones((1, 2), bool)
    # δ=1: neither; δ=2: only the far point; δ>=4: both -> APD = (0 + 0.5 + 3)/5 = 0.7.
    # All predicted visible, so each miss is a FN and a FP: jaccard 0/4, 1/3, 1, 1, 1 -> AJ = (1/3 + 3)/5 = 2/3.
    expect(
        tapvid3d_metrics(pred, visible, gt, visible, K),
        pts_within_1=0, pts_within_2=0.5, pts_within_4=1, average_pts_within_thresh=0.7,
        jaccard_1=0, jaccard_2=1 / 3, average_jaccard=2 / 3,
    )


def test_3d_threshold_uses_geometric_mean_focal_and_256_short_side():
    k = np.array([[64.0, 0.0, 223.5], [0.0, 256.0, 127.5], [0.0, 0.0, 1.0]])
    gt = np.array([[[0.0, 0.0, 2.0]]])
    pred = gt + [0.025, 0, 0]
    visible = np.ones((1, 1), bool)
    # √(64·256) = 128 -> thresholds 2δ/128 = δ/64: 0.025 misses δ=1 (0.0156), is inside δ=2 (0.03125).
    # (Mean focal 160 would miss δ=2 at 0.025 exactly; fx alone would accept δ=1.)
    expect(tapvid3d_metrics(pred, visible, gt, visible, k), pts_within_1=0, pts_within_2=1)
    # Portrait 256x1024: short side already 256, same answer.
    expect(tapvid3d_metrics(pred, visible, gt, visible, k, frame_size=(256, 1024)), pts_within_1=0, pts_within_2=1)
    # 896x512: K is rescaled by 256/512 -> focal 64 -> thresholds δ/32, so δ=1 (0.03125) now accepts.
    expect(tapvid3d_metrics(pred, visible, gt, visible, k, frame_size=(896, 512)), pts_within_1=1)


def test_3d_threshold_uses_each_frames_own_focal_under_a_zoom():
    # 1 track x 3 frames at z = 2, the same 3/256 m error every frame; the camera zooms: fx = fy = 256, 512, 128,
    # so the thresholds δ·2/f are δ/128, δ/256, δ/64 m. 3/256 = 0.0117 m is within δ >= 2 at t0 (δ=2: 0.0156),
    # δ >= 4 at t1 (δ=2: 0.0078, δ=4: 0.0156), every δ at t2 (δ=1: 0.0156).
    # pts_within: δ=1 1/3, δ=2 2/3, δ>=4 1.  All predicted visible: jaccard δ=1 1/(3+2), δ=2 2/(3+1), δ>=4 1 -> AJ 0.74.
    zoom = np.repeat(K[None], 3, axis=0)
    zoom[:, 0, 0] = zoom[:, 1, 1] = (256.0, 512.0, 128.0)
    gt = np.array([[[0.1, -0.2, 2.0]]] * 3)
    pred = gt + [3 / 256, 0, 0]
    visible = np.ones((3, 1), bool)
    metrics = tapvid3d_metrics(pred, visible, gt, visible, zoom)
    expect(metrics, pts_within_1=1 / 3, pts_within_2=2 / 3, pts_within_4=1, jaccard_1=0.2, jaccard_2=0.5, jaccard_4=1, average_jaccard=0.74)
    # Frame 0's K for every frame (one K per clip) judges every frame by δ/128: 0 and 1, AJ 0.8.
    expect(tapvid3d_metrics(pred, visible, gt, visible, zoom[0]), pts_within_1=0, pts_within_2=1, average_jaccard=0.8)
    # A per-frame K that repeats one K is that K, to the bit.
    assert tapvid3d_metrics(pred, visible, gt, visible, np.broadcast_to(K, (3, 3, 3))) == tapvid3d_metrics(pred, visible, gt, visible, K)


def test_3d_median_scaling_removes_a_global_scale():
    gt = unproject(np.array([[[100.0, 50.0, 2.0], [300.0, 200.0, 3.0]], [[110.0, 60.0, 2.5], [290.0, 190.0, 5.0]]]), K)
    visible = np.ones((2, 2), bool)
    # Errors are >= 2 m against thresholds <= 16 * 5/256 m: all miss without scaling.
    expect(tapvid3d_metrics(2 * gt, visible, gt, visible, K), average_pts_within_thresh=0, average_jaccard=0)
    expect(
        tapvid3d_metrics(2 * gt, visible, gt, visible, K, scaling="median"),
        average_pts_within_thresh=1, average_jaccard=1, occlusion_accuracy=1, scale=0.5,
    )


def test_3d_scale_uses_evaluated_points_visible_in_both():
    gt = np.array([[[0.0, 0.0, 1.0]], [[0.0, 0.0, 2.0]], [[0.0, 0.0, 3.0]], [[0.0, 0.0, 4.0]], [[0.0, 0.0, 5.0]]])
    pred = gt * np.array([2, 2, 10, 7, 7])[:, None, None]
    gt_vis = np.array([[1], [1], [1], [0], [1]], bool)
    pred_vis = np.array([[1], [1], [1], [1], [0]], bool)
    # Visible in both: t0..t2, gt norms 1, 2, 3 and pred norms 2, 4, 30.
    # median: 2 / 4 = 0.5;  mean: 2 / 12 = 1/6;  only t2 evaluated: 3 / 30 = 0.1.
    assert tapvid3d_metrics(pred, pred_vis, gt, gt_vis, K, scaling="median")["scale"] == pytest.approx(0.5)
    assert tapvid3d_metrics(pred, pred_vis, gt, gt_vis, K, scaling="mean")["scale"] == pytest.approx(1 / 6)
    only_t2 = np.array([[0], [0], [1], [0], [0]], bool)
    assert tapvid3d_metrics(pred, pred_vis, gt, gt_vis, K, evaluate=only_t2, scaling="median")["scale"] == 0.1
    with pytest.raises(ValueError):
        tapvid3d_metrics(pred, pred_vis, gt, gt_vis, K, scaling="per_trajectory")


def test_3d_evaluate_mask_and_empty_denominators():
    gt = np.array([[[0.0, 0.0, 2.0]], [[0.0, 0.0, 2.0]]])
    pred = gt + np.array([[[0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]]])  # t1 misses every threshold
    visible = np.ones((2, 1), bool)
    first_only = np.array([[1], [0]], bool)
    expect(tapvid3d_metrics(pred, visible, gt, visible, K), average_pts_within_thresh=0.5, average_jaccard=1 / 3)
    expect(tapvid3d_metrics(pred, visible, gt, visible, K, evaluate=first_only), average_pts_within_thresh=1)
    # gt occluded everywhere: no gt-visible points -> pts_within NaN; nothing predicted visible -> jaccard 0/0 NaN.
    hidden = np.zeros((2, 1), bool)
    metrics = tapvid3d_metrics(pred, hidden, gt, hidden, K)
    assert metrics["occlusion_accuracy"] == 1
    assert math.isnan(metrics["average_pts_within_thresh"]) and math.isnan(metrics["average_jaccard"])
    # Nothing visible in both: no median scale (NaN); as in tapnet every point then counts as a miss.
    metrics = tapvid3d_metrics(pred, hidden, gt, visible, K, scaling="median")
    assert math.isnan(metrics["scale"]) and metrics["average_pts_within_thresh"] == 0


# Direct transcriptions of tapnet's formulas, in its own layout: (N, T) occlusion flags, one video.
def reference_tapvid(query_frame, gt_occluded, gt_tracks, pred_occluded, pred_tracks):
    """compute_tapvid_metrics with query_mode="first": only frames after each query frame count."""
    eye = np.eye(gt_tracks.shape[1], dtype=np.int32)
    evaluation_points = (np.cumsum(eye, axis=1) - eye)[query_frame] > 0
    squared_error = np.sum(np.square(pred_tracks - gt_tracks), axis=-1)
    return reference_scores(gt_occluded, pred_occluded, squared_error, 1.0, evaluation_points)


def reference_tapvid3d(gt_occluded, gt_tracks, pred_occluded, pred_tracks, fx_fy_cx_cy, scaling):
    """compute_tapvid3d_metrics with order "n t" and scaling "median" or "none"; all point-frames count."""
    if scaling == "median":
        either = gt_occluded | pred_occluded
        gt_norms = np.where(either, np.nan, np.sqrt(np.maximum(1e-12, np.sum(np.square(gt_tracks), axis=-1))))
        pred_norms = np.where(either, np.nan, np.sqrt(np.maximum(1e-12, np.sum(np.square(pred_tracks), axis=-1))))
        pred_tracks = pred_tracks * np.nanmedian(gt_norms) / np.nanmedian(pred_norms)
    multiplier = gt_tracks[..., -1] / np.sqrt(fx_fy_cx_cy[0] * fx_fy_cx_cy[1])
    squared_error = np.sum(np.square(pred_tracks - gt_tracks), axis=-1)
    return reference_scores(gt_occluded, pred_occluded, squared_error, multiplier, np.ones_like(gt_occluded))


def reference_scores(gt_occluded, pred_occluded, squared_error, multiplier, evaluation_points):
    visible, pred_visible = ~gt_occluded, ~pred_occluded
    out = {"occlusion_accuracy": np.sum((pred_occluded == gt_occluded) & evaluation_points) / evaluation_points.sum()}
    for d in THRESHOLDS:
        within_dist = squared_error < np.square(d * multiplier)
        is_correct = within_dist & visible
        gt_positives = np.sum(visible & evaluation_points)
        out[f"pts_within_{d}"] = np.sum(is_correct & evaluation_points) / gt_positives
        true_positives = np.sum(is_correct & pred_visible & evaluation_points)
        false_positives = ((~visible) & pred_visible) | ((~within_dist) & pred_visible)
        out[f"jaccard_{d}"] = true_positives / (gt_positives + np.sum(false_positives & evaluation_points))
    out["average_jaccard"] = np.mean([out[f"jaccard_{d}"] for d in THRESHOLDS])
    out["average_pts_within_thresh"] = np.mean([out[f"pts_within_{d}"] for d in THRESHOLDS])
    return out


def random_case(rng, num_frames=16, num_points=40):
    gt_uvd = np.stack(
        [rng.uniform(0, 447, (num_frames, num_points)), rng.uniform(0, 255, (num_frames, num_points)),
         rng.uniform(1, 6, (num_frames, num_points))], axis=-1)
    noise = rng.normal(size=gt_uvd.shape) * np.exp(rng.uniform(-1, 3.5, (num_frames, num_points, 1)))
    pred_uvd = gt_uvd + noise * [1, 1, 0.02]
    return gt_uvd, pred_uvd, rng.random((num_frames, num_points)) < 0.8, rng.random((num_frames, num_points)) < 0.7


def test_2d_matches_reference_transcription_on_random_tracks():
    rng = np.random.default_rng(0)
    gt_uvd, pred_uvd, gt_vis, pred_vis = random_case(rng)
    query_frame = rng.integers(0, 16, gt_vis.shape[1])
    after_query = np.arange(16)[:, None] > query_frame
    ours = tapvid_2d_metrics(pred_uvd[..., :2], pred_vis, gt_uvd[..., :2], gt_vis, evaluate=after_query)
    to_raster = np.array([256 / 448, 256 / 256])  # the reference reads tracks already on the 256x256 raster
    gt_uv, pred_uv = (np.swapaxes(uvd[..., :2] * to_raster, 0, 1) for uvd in (gt_uvd, pred_uvd))
    ref = reference_tapvid(query_frame, ~gt_vis.T, gt_uv, ~pred_vis.T, pred_uv)
    assert 0 < ref["average_jaccard"] < ref["average_pts_within_thresh"] < 1
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value), key


@pytest.mark.parametrize("scaling", ["none", "median"])
def test_3d_matches_reference_transcription_on_random_tracks(scaling):
    rng = np.random.default_rng(1)
    gt_uvd, pred_uvd, gt_vis, pred_vis = random_case(rng)
    gt, pred = unproject(gt_uvd, K), unproject(pred_uvd, K) * (1.3 if scaling == "median" else 1.0)
    ours = tapvid3d_metrics(pred, pred_vis, gt, gt_vis, K, scaling=scaling)
    fx_fy_cx_cy = np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]])  # 448x256: short side already 256
    gt_nt, pred_nt = np.swapaxes(gt, 0, 1), np.swapaxes(pred, 0, 1)
    ref = reference_tapvid3d(~gt_vis.T, gt_nt, ~pred_vis.T, pred_nt, fx_fy_cx_cy, scaling)
    assert 0 < ref["average_jaccard"] < ref["average_pts_within_thresh"] < 1
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value), key
