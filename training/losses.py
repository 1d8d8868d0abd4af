"""Point regularisation losses of the paper (§3.3, Eq. 1–3) on point clouds of shape (B, T, N, 3).

The decoded point channels are a (B, T, 3, H, W) map in the training normalisation; the losses
run on N foreground pixels per sample, picked once with `sample_foreground_points` and gathered
from prediction and target alike with `gather_points`, then unprojected to metres with
`normalised_uvd_to_xyz`. Norms use `torch.linalg.vector_norm`, whose gradient at a zero vector
is 0 rather than NaN, so coincident points and exact predictions are safe to differentiate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pointvid_pipeline.clip import FRAME_HEIGHT, FRAME_WIDTH


def normalised_uvd_to_xyz(
    points: torch.Tensor,
    intrinsics: torch.Tensor,
    depth_max: float | torch.Tensor,
    frame_size: tuple[int, int] = (FRAME_WIDTH, FRAME_HEIGHT),
) -> torch.Tensor:
    """(B, T, N, 3) normalised (u', v', d') in [-1, 1] -> (B, T, N, 3) camera-space xyz in metres.

    Undoes u' = 2u/(W-1) - 1, v' = 2v/(H-1) - 1, d' = 2d/depth_max - 1 for the (W, H) frame the
    (B, T, 3, 3) OpenCV intrinsics belong to, then unprojects x = (u-cx)d/fx, y = (v-cy)d/fy, z = d with
    each frame's own K (a zoom changes it from frame to frame).
    Values outside [-1, 1] are not clamped, so the gradient reaches every prediction.
    `depth_max` is a float or a (B,) tensor.
    """
    width, height = frame_size
    u = (points[..., 0] + 1) * (width - 1) / 2
    v = (points[..., 1] + 1) * (height - 1) / 2
    depth_max = torch.as_tensor(depth_max, dtype=points.dtype, device=points.device).reshape(-1, 1, 1)
    d = (points[..., 2] + 1) * depth_max / 2
    k = intrinsics.to(points.dtype)[:, :, None]  # (B, T, 1, 3, 3) broadcasts over N
    fx, fy, cx, cy = k[..., 0, 0], k[..., 1, 1], k[..., 0, 2], k[..., 1, 2]
    return torch.stack([(u - cx) * d / fx, (v - cy) * d / fy, d], dim=-1)


def _rms_norm_per_step(diff: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T', N, 3) -> (B,): Σ_τ ||diff^τ||_F / sqrt(valid points of τ), so the scale does not grow with N.

    `mask` is (B, N) (the same points at every step) or (B, T', N) (per step)."""
    if mask is None:
        mask = torch.ones(diff.shape[0], diff.shape[2], dtype=torch.bool, device=diff.device)
    if mask.dim() == 2:
        mask = mask[:, None, :].expand(-1, diff.shape[1], -1)
    diff = diff * mask[..., None]
    valid_count = mask.sum(dim=2).clamp(min=1).to(diff.dtype)  # (B, T')
    return (torch.linalg.vector_norm(diff, dim=(2, 3)) / valid_count.sqrt()).sum(dim=1)


def reconstruction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: Sequence[float] = (1.0, 1.0, 1.0),
    mask: torch.Tensor | None = None,
    visible: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 1: fidelity + velocity + acceleration penalties on (B, T, N, 3) point clouds.

    ||·|| at one time step is the Frobenius norm of the N×3 difference over the valid points of
    the (B, N) bool `mask`, divided by sqrt(number of valid points) (a root-mean-square point
    error), summed over time steps as the paper writes, then averaged over the batch. A sample
    without valid points contributes 0. `visible` (B, T, N) bool (schema 1.1 shards) drops the
    target's occluded point-frames from the fidelity term: their values are the tracker's guesses.
    Only the prediction enters the smoothness terms.
    """
    c0, c1, c2 = weights
    fidelity = _rms_norm_per_step(pred - target, _per_frame(mask, visible, pred))
    velocity = _rms_norm_per_step(pred[:, 1:] - pred[:, :-1], mask)
    acceleration = _rms_norm_per_step(pred[:, 2:] - 2 * pred[:, 1:-1] + pred[:, :-2], mask)
    return (c0 * fidelity + c1 * velocity + c2 * acceleration).mean()


def _per_frame(mask: torch.Tensor | None, visible: torch.Tensor | None, points: torch.Tensor) -> torch.Tensor | None:
    """(B, N) mask and (B, T, N) visibility -> (B, T, N), or the mask as it is without visibility."""
    if visible is None:
        return mask
    if mask is None:
        mask = torch.ones(points.shape[0], points.shape[2], dtype=torch.bool, device=points.device)
    return mask[:, None, :] & visible.bool()


def knn_pairs(reference_points: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N, 3) frame-0 points -> (B, N, k) long indices of each point's k nearest valid neighbours.

    A point is never its own neighbour and masked points (False in the (B, N) `mask`) are never
    chosen. When a row has fewer than k candidates (fewer than k + 1 valid points), the ones it
    has are repeated cyclically, so close neighbours count more than once in the loss; a row with
    no candidate at all gets its own index, a zero-length pair that adds nothing to L_rigid.
    """
    batch, count, _ = reference_points.shape
    with torch.no_grad():
        distances = torch.cdist(reference_points, reference_points)
        distances.diagonal(dim1=1, dim2=2).fill_(torch.inf)
        if mask is not None:
            distances.masked_fill_(~mask[:, None, :], torch.inf)
        if k > count:  # inf columns give topk enough entries; they are never kept below
            distances = torch.nn.functional.pad(distances, (0, k - count), value=torch.inf)
        nearest_distances, nearest = distances.topk(k, dim=-1, largest=False)  # ascending
        found = torch.isfinite(nearest_distances).sum(dim=-1, keepdim=True)  # (B, N, 1)
        cycled = torch.arange(k, device=nearest.device) % found.clamp(min=1)
        neighbours = nearest.gather(-1, cycled)
        self_index = torch.arange(count, device=nearest.device)[None, :, None].expand(batch, count, k)
        return torch.where(found > 0, neighbours, self_index)


def rigidity_loss(pred: torch.Tensor, neighbours: torch.Tensor, mask: torch.Tensor | None = None, visible: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2: squared change, from frame 0, of the distance between each point and its neighbours.

    `pred` is (B, T, N, 3), `neighbours` the (B, N, k) indices from `knn_pairs`. Summed over
    τ ≥ 1 as the paper writes, but divided by the number of valid (i, j) pairs (both ends valid
    in the (B, N) `mask`) so the scale does not depend on N or k; then averaged over the batch.
    With `visible` (B, T, N), a pair counts at frame τ only where both ends are visible in the data
    then (occluded point-frames carry no evidence that the pair kept its distance).
    Exactly 0 for any rigid motion of the whole cloud.
    """
    batch, frames, count, _ = pred.shape
    k = neighbours.shape[-1]
    flat_neighbours = neighbours.reshape(batch, 1, count * k, 1).expand(batch, frames, count * k, 3)
    neighbour_points = pred.gather(2, flat_neighbours).reshape(batch, frames, count, k, 3)
    distances = torch.linalg.vector_norm(neighbour_points - pred[:, :, :, None, :], dim=-1)  # (B, T, N, k)
    squared_change = (distances[:, 1:] - distances[:, :1]) ** 2
    if mask is None:
        mask = torch.ones(batch, count, dtype=torch.bool, device=pred.device)
    pair_valid = mask[:, :, None] & mask.gather(1, neighbours.reshape(batch, -1)).reshape(batch, count, k)
    pair_count = pair_valid.sum(dim=(1, 2)).clamp(min=1).to(pred.dtype)
    pair_valid = pair_valid[:, None]  # (B, 1, N, k): every frame τ >= 1
    if visible is not None:
        seen = visible[:, 1:].bool()  # (B, T-1, N)
        pair_valid = pair_valid & seen[..., None] & seen.gather(2, neighbours.reshape(batch, 1, -1).expand(-1, frames - 1, -1)).reshape(batch, frames - 1, count, k)
    per_sample = (squared_change * pair_valid).sum(dim=(1, 2, 3)) / pair_count
    return per_sample.mean()


def total_loss(
    l_ddim: torch.Tensor, l_recon: torch.Tensor, l_rigid: torch.Tensor, lambdas: Sequence[float]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 3 with `lambdas` = (λ_ddim, λ_recon, λ_rigid); also the unweighted terms as floats for logging."""
    lambda_ddim, lambda_recon, lambda_rigid = lambdas
    total = lambda_ddim * l_ddim + lambda_recon * l_recon + lambda_rigid * l_rigid
    terms = {"ddim": l_ddim.item(), "recon": l_recon.item(), "rigid": l_rigid.item(), "total": total.item()}
    return total, terms


def sample_foreground_points(
    foreground: torch.Tensor, count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, H, W) foreground -> flat pixel indices (B, N) and validity mask (B, N), N = min(count, H·W).

    Draws up to `count` distinct foreground pixels per sample uniformly (seeded by `generator`).
    A sample with fewer foreground pixels gets all of them, padded with background pixels marked
    False in the mask, so every sample has the same N and the losses stay batched. Use the same
    indices with `gather_points` on prediction and target.
    """
    is_foreground = foreground.flatten(1).bool()  # (B, H·W)
    scores = torch.rand(is_foreground.shape, generator=generator, device=generator.device)
    scores = scores.to(foreground.device).masked_fill(~is_foreground, -1.0)  # background ranks last
    indices = scores.topk(min(count, scores.shape[1]), dim=1).indices
    return indices, is_foreground.gather(1, indices)


def gather_points(point_map: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) point map and (B, N) flat pixel indices -> (B, T, N, 3) points, differentiably."""
    batch, frames, channels = point_map.shape[:3]
    flat = point_map.flatten(3)  # (B, T, 3, H·W)
    index = indices[:, None, None, :].expand(batch, frames, channels, indices.shape[1])
    return flat.gather(3, index).transpose(2, 3)
