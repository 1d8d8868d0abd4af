"""The paper's point losses (Eq. 1–3) on hand-made tensors whose values can be worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pointvid_pipeline.clip import FRAME_HEIGHT, FRAME_WIDTH, default_intrinsics
from training.losses import (
    gather_points,
    knn_pairs,
    normalised_uvd_to_xyz,
    reconstruction_loss,
    rigidity_loss,
    sample_foreground_points,
    total_loss,
)


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def rigidly_moving_cloud(batch: int, frames: int, count: int, seed: int = 0) -> torch.Tensor:
    """(B, T, N, 3) float64: a random cloud under a random rotation + translation per frame."""
    generator = torch.Generator().manual_seed(seed)
    cloud = torch.randn(batch, count, 3, generator=generator, dtype=torch.float64)
    steps = []
    for _ in range(frames):
        rotations = torch.stack([random_rotation(generator) for _ in range(batch)])
        translations = torch.randn(batch, 1, 3, generator=generator, dtype=torch.float64)
        steps.append(cloud @ rotations.transpose(1, 2) + translations)
    return torch.stack(steps, dim=1)


def test_rigidity_is_zero_for_rigid_motion_and_positive_for_a_stretch():
    points = rigidly_moving_cloud(batch=2, frames=6, count=40)
    neighbours = knn_pairs(points[:, 0], k=5)
    assert rigidity_loss(points, neighbours).item() <= 1e-10

    stretched = points.clone()
    stretched[:, 3:, :, 0] *= 1.5
    assert rigidity_loss(stretched, neighbours).item() > 1e-3


def test_rigidity_hand_computed_and_normalised_by_pairs():
    # Two points 1 m apart at frame 0, 2 m apart at frame 1 and 3 m at frame 2: each of the two
    # ordered pairs contributes (2-1)^2 + (3-1)^2 = 5; divided by 2 pairs gives 5.
    points = torch.tensor([[[[0.0, 0, 0], [1, 0, 0]], [[0, 0, 0], [2, 0, 0]], [[0, 0, 0], [3, 0, 0]]]])
    neighbours = torch.tensor([[[1], [0]]])
    assert rigidity_loss(points, neighbours).item() == pytest.approx(5.0)


def test_rigidity_mask_excludes_points():
    points = rigidly_moving_cloud(batch=1, frames=4, count=20, seed=1)
    mask = torch.ones(1, 20, dtype=torch.bool)
    mask[0, :5] = False
    neighbours = knn_pairs(points[:, 0], k=4, mask=mask)
    deformed = points.clone()
    deformed[:, 1:, :5] += torch.randn(1, 3, 5, 3, dtype=torch.float64)  # only masked points move
    assert rigidity_loss(deformed, neighbours, mask).item() <= 1e-10
    assert rigidity_loss(deformed, neighbours).item() > 1e-3


def test_constant_velocity_track_has_zero_acceleration_and_hand_computed_velocity():
    # Two points moving with velocities (1, 2, 2) and (0, 3, 4) per step (norms 3 and 5); the
    # prediction equals the target, so only the velocity term is non-zero:
    # per step sqrt(3^2 + 5^2) / sqrt(2) = sqrt(17), over T-1 = 4 steps.
    frames = 5
    start = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.25, 3.0]], dtype=torch.float64)
    velocity = torch.tensor([[1.0, 2.0, 2.0], [0.0, 3.0, 4.0]], dtype=torch.float64)
    track = torch.stack([start + t * velocity for t in range(frames)])[None]  # (1, T, N, 3)
    assert reconstruction_loss(track, track, weights=(0.0, 0.0, 1.0)).item() == 0.0
    assert reconstruction_loss(track, track, weights=(0.0, 1.0, 0.0)).item() == pytest.approx(4 * math.sqrt(17))


def test_fidelity_term_equals_hand_computation():
    # Frame 0 errors (3, 4, 0) and (0, 0, 0): sqrt(25) / sqrt(2); frame 1 errors (1, 0, 0) and (0, 2, 2):
    # sqrt(1 + 8) / sqrt(2). Batch item two has zero error, so the batch mean halves the sum.
    target = torch.zeros(2, 2, 2, 3, dtype=torch.float64)
    pred = target.clone()
    pred[0, 0, 0] = torch.tensor([3.0, 4.0, 0.0])
    pred[0, 1, 0] = torch.tensor([1.0, 0.0, 0.0])
    pred[0, 1, 1] = torch.tensor([0.0, 2.0, 2.0])
    expected = (5 / math.sqrt(2) + 3 / math.sqrt(2)) / 2
    assert reconstruction_loss(pred, target, weights=(1.0, 0.0, 0.0)).item() == pytest.approx(expected)
    assert reconstruction_loss(pred, target, weights=(2.0, 0.0, 0.0)).item() == pytest.approx(2 * expected)


def test_reconstruction_mask_excludes_points_and_scale_does_not_depend_on_count():
    generator = torch.Generator().manual_seed(2)
    pred = torch.randn(1, 4, 6, 3, generator=generator, dtype=torch.float64)
    target = torch.randn(1, 4, 6, 3, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False, False, False]])
    masked = reconstruction_loss(pred, target, mask=mask)
    assert masked.item() == pytest.approx(reconstruction_loss(pred[:, :, :3], target[:, :, :3]).item())

    garbage = pred.clone()
    garbage[:, :, 3:] = 1e6
    assert reconstruction_loss(garbage, target, mask=mask).item() == pytest.approx(masked.item())

    repeated = reconstruction_loss(pred.repeat(1, 1, 5, 1), target.repeat(1, 1, 5, 1))
    assert repeated.item() == pytest.approx(reconstruction_loss(pred, target).item())


def test_knn_excludes_self_and_masked_points():
    # Points on a line at x = 0, 1, 2, 3, 10; point 1 is masked out.
    reference = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [10, 0, 0]]])
    mask = torch.tensor([[True, False, True, True, True]])
    neighbours = knn_pairs(reference, k=2, mask=mask)
    assert neighbours.shape == (1, 5, 2)
    assert neighbours[0, 0].tolist() == [2, 3]
    assert neighbours[0, 2].tolist() == [3, 0]
    assert neighbours[0, 4].tolist() == [3, 2]
    assert not (neighbours == torch.arange(5)[None, :, None]).any()
    assert not (neighbours == 1).any()


def test_knn_repeats_valid_neighbours_when_too_few():
    reference = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [5, 0, 0], [9, 9, 9]]])
    mask = torch.tensor([[True, True, True, False]])
    neighbours = knn_pairs(reference, k=5, mask=mask)
    assert neighbours[0, 0].tolist() == [1, 2, 1, 2, 1]
    assert neighbours[0, 2].tolist() == [1, 0, 1, 0, 1]

    lonely = knn_pairs(reference, k=2, mask=torch.tensor([[True, False, False, False]]))
    assert lonely[0, 0].tolist() == [0, 0]  # no valid neighbour: a zero-length self pair


def test_gradients_are_finite_when_points_coincide():
    points = torch.zeros(1, 3, 4, 3, dtype=torch.float64)
    points[:, :, 2:] = 1.0  # two pairs of coincident points, all frames identical
    points.requires_grad_(True)
    neighbours = torch.tensor([[[1], [0], [3], [2]]])
    loss = rigidity_loss(points, neighbours) + reconstruction_loss(points, points.detach())
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(points.grad).all()

    moved = points.detach().clone()
    moved[:, 1:, 0, 0] += 0.5  # point 0 leaves point 1: the gradient must still be finite and non-zero
    moved.requires_grad_(True)
    rigidity_loss(moved, neighbours).backward()
    assert torch.isfinite(moved.grad).all() and moved.grad.abs().sum() > 0


def hand_normalised_uvd(xyz: np.ndarray, intrinsics: np.ndarray, depth_max: float) -> np.ndarray:
    """(T, N, 3) camera-space points seen through (T, 3, 3) K -> the loader's normalised (u', v', d'), worked out by hand."""
    fx, fy, cx, cy = (intrinsics[:, row, column, None] for row, column in ((0, 0), (1, 1), (0, 2), (1, 2)))
    u = fx * xyz[..., 0] / xyz[..., 2] + cx
    v = fy * xyz[..., 1] / xyz[..., 2] + cy
    return np.stack([2 * u / (FRAME_WIDTH - 1) - 1, 2 * v / (FRAME_HEIGHT - 1) - 1, 2 * np.clip(xyz[..., 2] / depth_max, 0, 1) - 1], axis=-1)


def test_normalised_uvd_to_xyz_inverts_a_hand_projection():
    intrinsics = np.repeat(default_intrinsics()[None], 3, axis=0)  # (T=3, 3, 3)
    xyz = np.array([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0], [0.0, 0.0, 1.0]])
    depth_max = 8.0
    normalised = hand_normalised_uvd(np.broadcast_to(xyz, (3, 3, 3)), intrinsics, depth_max)
    points = torch.from_numpy(normalised)[None].repeat(2, 1, 1, 1)  # (B=2, T=3, N=3, 3)
    k = torch.from_numpy(intrinsics)[None].repeat(2, 1, 1, 1)  # (B, T, 3, 3)
    recovered = normalised_uvd_to_xyz(points, k, depth_max)
    assert recovered.shape == (2, 3, 3, 3)
    np.testing.assert_allclose(recovered.numpy(), np.broadcast_to(xyz, (2, 3, 3, 3)), atol=1e-12)
    # the image centre at depth 1 m lies on the optical axis
    np.testing.assert_allclose(recovered[0, 0, 2].numpy(), [0.0, 0.0, 1.0], atol=1e-12)

    per_sample_depth = normalised_uvd_to_xyz(points, k, torch.tensor([8.0, 16.0], dtype=torch.float64))
    np.testing.assert_allclose(per_sample_depth[1].numpy(), 2 * recovered[1].numpy(), atol=1e-12)


def test_a_zoom_is_no_motion_with_per_frame_intrinsics():
    """A still cloud filmed through a zoom (focal length x1.5 over 4 frames): its pixels spread out frame by frame, but
    unprojected with each frame's K it stays put, so Eq. 1's velocity and acceleration and Eq. 2's rigidity are 0.
    With frame 0's K for every frame (one K per clip) the same pixels make a cloud that grows: all three are not."""
    frames, depth_max = 4, 8.0
    zoom = np.repeat(default_intrinsics()[None], frames, axis=0)
    zoom[:, 0, 0] *= 1.5 ** (np.arange(frames) / (frames - 1))
    zoom[:, 1, 1] = zoom[:, 0, 0]
    rng = np.random.default_rng(0)
    xyz = np.stack([rng.uniform(-0.3, 0.3, 30), rng.uniform(-0.2, 0.2, 30), rng.uniform(1.5, 3.0, 30)], axis=-1)
    points = torch.from_numpy(hand_normalised_uvd(np.broadcast_to(xyz, (frames, 30, 3)), zoom, depth_max))[None]  # (1, T, N, 3)
    assert (points[0, -1, :, :2].abs() > points[0, 0, :, :2].abs()).all()  # every pixel moves away from the centre
    per_frame = normalised_uvd_to_xyz(points, torch.from_numpy(zoom)[None], depth_max)
    frame_0 = normalised_uvd_to_xyz(points, torch.from_numpy(zoom[:1]).expand(frames, 3, 3)[None], depth_max)
    np.testing.assert_allclose(per_frame[0].numpy(), np.broadcast_to(xyz, (frames, 30, 3)), atol=1e-12)
    smoothness = (0.0, 1.0, 1.0)  # velocity and acceleration of the prediction only
    neighbours = knn_pairs(per_frame[:, 0], 3)
    assert reconstruction_loss(per_frame, per_frame, smoothness).item() < 1e-12 and rigidity_loss(per_frame, neighbours).item() < 1e-20
    assert reconstruction_loss(frame_0, frame_0, smoothness).item() > 0.05 and rigidity_loss(frame_0, neighbours).item() > 1e-4


def test_total_loss_weights_terms_and_reports_floats():
    total, terms = total_loss(torch.tensor(2.0), torch.tensor(3.0), torch.tensor(5.0), lambdas=(1.0, 0.5, 0.1))
    assert total.item() == pytest.approx(2.0 + 1.5 + 0.5)
    assert terms == pytest.approx({"ddim": 2.0, "recon": 3.0, "rigid": 5.0, "total": 4.0})
    assert all(isinstance(value, float) for value in terms.values())


def test_foreground_sampling_picks_foreground_pixels_reproducibly():
    height, width = 6, 8
    foreground = torch.zeros(2, 1, height, width, dtype=torch.bool)
    foreground[0, 0, 1:4, 2:6] = True  # 12 pixels
    foreground[1, 0, 0, :3] = True  # 3 pixels, fewer than asked for
    indices, mask = sample_foreground_points(foreground, 5, torch.Generator().manual_seed(0))
    assert indices.shape == mask.shape == (2, 5)
    assert mask[0].all() and mask[1].sum() == 3
    assert foreground.flatten(1).gather(1, indices).equal(mask)
    assert len(set(indices[0].tolist())) == 5
    assert sorted(indices[1][mask[1]].tolist()) == [0, 1, 2]
    again, _ = sample_foreground_points(foreground, 5, torch.Generator().manual_seed(0))
    assert again.equal(indices)


def test_gather_points_picks_the_same_pixels_from_prediction_and_target():
    batch, frames, height, width = 2, 3, 4, 5
    point_map = torch.arange(batch * frames * 3 * height * width, dtype=torch.float64)
    point_map = point_map.reshape(batch, frames, 3, height, width).requires_grad_(True)
    indices = torch.tensor([[0, 7, 19], [3, 3, 12]])
    points = gather_points(point_map, indices)
    assert points.shape == (batch, frames, 3, 3)
    for b in range(batch):
        for n, flat in enumerate(indices[b].tolist()):
            row, col = divmod(flat, width)
            assert points[b, :, n].tolist() == point_map[b, :, :, row, col].tolist()
    points.sum().backward()
    assert point_map.grad[1, :, :, 0, 3].eq(2).all()  # pixel 3 of sample 1 was picked twice


def test_occluded_target_frames_do_not_enter_fidelity_or_rigidity():
    generator = torch.Generator().manual_seed(3)
    target = torch.randn(2, 5, 12, 3, generator=generator)
    pred = target + 0.01 * torch.randn(2, 5, 12, 3, generator=generator)
    visible = torch.ones(2, 5, 12, dtype=torch.bool)
    visible[0, 3, :4] = False
    corrupted = target.clone()
    corrupted[0, 3, :4] += 100.0  # what a lost track would put in the point map while occluded
    weights = (1.0, 0.0, 0.0)
    assert reconstruction_loss(pred, corrupted, weights, visible=visible).item() == pytest.approx(reconstruction_loss(pred, target, weights, visible=visible).item(), rel=1e-6)
    assert reconstruction_loss(pred, corrupted, weights).item() > 10 * reconstruction_loss(pred, target, weights).item()

    neighbours = knn_pairs(target[:, 0], 3)
    stretched = pred.clone()
    stretched[0, 3, :4] *= 3.0  # only occluded point-frames move apart
    assert rigidity_loss(stretched, neighbours, visible=visible).item() == pytest.approx(rigidity_loss(pred, neighbours, visible=visible).item(), abs=1e-3)
    assert rigidity_loss(stretched, neighbours).item() > rigidity_loss(pred, neighbours).item() + 1e-2
