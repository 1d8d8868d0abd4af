"""FAKE stand-in for CoTracker's `cotracker/predictor.py`, for the adapter tests only.

Not upstream code (CoTracker is CC-BY-NC and is never vendored). It honours the documented
contract of the offline `CoTrackerPredictor`: `.model` takes a state dict, and the predictor is
called as `(video (B,T,3,H,W) float 0-255, queries=(B,N,3) (t,x,y))` returning `(tracks
(B,T,N,2) in input pixels, visibilities (B,T,N) bool)`.

It validates every input as upstream expects it and raises ValueError otherwise. Its "tracking" is
a known motion: query (x, y) is at (x, y) + t * velocity in frame t, `velocity` coming from the
checkpoint; point n is reported occluded from frame T//2 on when n % 3 == 2 (points outside the
frame are still reported visible, as a model may do). Every call is recorded in `self.calls`.
"""

import torch


def require(condition, message):
    if not condition:
        raise ValueError(f"fake CoTrackerPredictor: {message}")


class FakeCoTrackerModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("velocity", torch.zeros(2))
        self.model_resolution = (384, 512)


class CoTrackerPredictor(torch.nn.Module):
    def __init__(self, checkpoint=None, window_len=60):
        super().__init__()
        require(checkpoint is None, "the hub entry point builds the model without a checkpoint")
        self.model = FakeCoTrackerModel()
        self.interp_shape = self.model.model_resolution
        self.model.eval()
        self.calls = []

    @torch.no_grad()
    def forward(self, video, queries=None, segm_mask=None, grid_size=0, grid_query_frame=0, backward_tracking=False):
        device = self.model.velocity.device
        require(isinstance(video, torch.Tensor) and video.dtype == torch.float32, "video must be a float32 tensor")
        require(video.ndim == 5 and video.shape[2] == 3, f"video must be (B, T, 3, H, W), got {tuple(video.shape)}")
        B, T, _, H, W = video.shape
        require(video.device == device, f"video on {video.device}, model on {device}")
        require(video.min() >= 0 and video.max() <= 255, "video values must lie in 0-255")
        require(video.max() > 1, "video looks normalised to 0-1; upstream expects 0-255")
        require(grid_size == 0 and segm_mask is None, "explicit queries expected")
        require(isinstance(queries, torch.Tensor) and queries.dtype == torch.float32, "queries must be a float32 tensor")
        require(queries.ndim == 3 and queries.shape[0] == B and queries.shape[2] == 3, f"queries must be (B, N, 3), got {tuple(queries.shape)}")
        require(queries.device == device, f"queries on {queries.device}, model on {device}")
        require(bool((queries[..., 0] == 0).all()), "queries must be (t, x, y) with t = 0 (first-frame queries)")
        x, y = queries[..., 1], queries[..., 2]
        require(bool(((x >= 0) & (x <= W - 1)).all()), "query x must be a column in [0, W-1]")
        require(bool(((y >= 0) & (y <= H - 1)).all()), "query y must be a row in [0, H-1]")
        self.calls.append({"video_shape": tuple(video.shape), "query_count": queries.shape[1],
                           "inference_mode": torch.is_inference_mode_enabled()})

        N = queries.shape[1]
        frame = torch.arange(T, dtype=torch.float32, device=device)[None, :, None, None]
        tracks = queries[:, None, :, 1:] + frame * self.model.velocity  # (B, T, N, 2)
        occluded = (torch.arange(N, device=device) % 3 == 2)[None, None] & (frame[..., 0] >= T // 2)
        return tracks, ~occluded.expand(B, T, N)
