"""FAKE stand-in for SpaTracker v1's `models/spatracker/predictor.py`, for the adapter tests only.

Not upstream code (SpaTracker is CC-BY-NC and is never vendored). It honours the documented
contract of `SpaTrackerPredictor`: constructed as `(checkpoint, interp_shape, seq_length)`, loads a
state dict from `checkpoint` (plain or wrapped in "model"), and is called as `(video (1,T,3,H,W)
float 0-255, video_depth=(T,1,H,W) metres, queries=(1,N,3) (t,x,y), segm_mask=(1,1,H,W) or None,
grid_size, ..., wind_length)` returning `(tracks (1,T,N,3) = (u, v in input pixels, depth in the
input depth's units), visibilities (1,T,N) bool, T_First (1,N) uint8)`.

It validates every input as upstream expects it and raises ValueError otherwise. Its "tracking" is
a known motion: query (x, y) is at (x, y) + t * velocity in frame t, `velocity` coming from the
checkpoint; depth is video_depth at the nearest pixel to the (clamped) tracked position; point n is
reported occluded from frame T//2 on when n % 3 == 2 (points outside the frame are still reported
visible, as a model may do). Every call is recorded in `self.calls`.

Like upstream, importing it imports torchvision (blocks.py), timm (dpt/vit.py) and cupy (softsplat.py),
and its checkpoint is read with `torch.load(f, map_location="cpu")`, without weights_only.
"""

import cupy  # noqa: F401  (upstream: softsplat.py)
import timm  # noqa: F401  (upstream: dpt/vit.py)
import torch
import torchvision  # noqa: F401  (upstream: blocks.py, `import torchvision.models as tvm`)


def require(condition, message):
    if not condition:
        raise ValueError(f"fake SpaTrackerPredictor: {message}")


class FakeSpaTrackerModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("velocity", torch.zeros(2))


class SpaTrackerPredictor(torch.nn.Module):
    def __init__(self, checkpoint="cotracker/checkpoints/cotracker_stride_4_wind_8.pth", interp_shape=(384, 512), seq_length=16):
        super().__init__()
        require(isinstance(checkpoint, str), f"checkpoint must be a path string, got {type(checkpoint)}")
        self.interp_shape = interp_shape
        self.seq_length = seq_length
        self.model = FakeSpaTrackerModel()
        with open(checkpoint, "rb") as f:
            state_dict = torch.load(f, map_location="cpu")
        if "model" in state_dict:
            state_dict = state_dict["model"]
        self.model.load_state_dict(state_dict)
        self.model.eval()
        self.calls = []

    @torch.no_grad()
    def forward(self, video, video_depth=None, queries=None, segm_mask=None, grid_size=0, grid_query_frame=0,
                backward_tracking=False, depth_predictor=None, wind_length=8):
        device = self.model.velocity.device
        require(isinstance(video, torch.Tensor) and video.dtype == torch.float32, "video must be a float32 tensor")
        require(video.ndim == 5 and video.shape[0] == 1 and video.shape[2] == 3, f"video must be (1, T, 3, H, W), got {tuple(video.shape)}")
        _, T, _, H, W = video.shape
        require(video.device == device, f"video on {video.device}, model on {device}")
        require(video.min() >= 0 and video.max() <= 255, "video values must lie in 0-255")
        require(video.max() > 1, "video looks normalised to 0-1; upstream expects 0-255")
        require(video_depth is not None or depth_predictor is not None, "no video_depth and no depth_predictor")
        require(isinstance(video_depth, torch.Tensor) and video_depth.dtype == torch.float32, "video_depth must be a float32 tensor")
        require(tuple(video_depth.shape) == (T, 1, H, W), f"video_depth must be (T, 1, H, W) = {(T, 1, H, W)}, got {tuple(video_depth.shape)}")
        require(video_depth.device == device, f"video_depth on {video_depth.device}, model on {device}")
        require(bool((video_depth > 0).all()), "video_depth must be positive metric depth")
        require(grid_size == 0, "explicit queries expected: grid mode gives grid points random start frames")
        require(segm_mask is None or tuple(segm_mask.shape) == (1, 1, H, W), "segm_mask must be (1, 1, H, W)")
        require(isinstance(queries, torch.Tensor) and queries.dtype == torch.float32, "queries must be a float32 tensor")
        require(queries.ndim == 3 and queries.shape[0] == 1 and queries.shape[2] == 3, f"queries must be (1, N, 3), got {tuple(queries.shape)}")
        require(queries.device == device, f"queries on {queries.device}, model on {device}")
        require(bool((queries[..., 0] == 0).all()), "queries must be (t, x, y) with t = 0 (first-frame queries)")
        x, y = queries[0, :, 1], queries[0, :, 2]
        require(bool(((x >= 0) & (x <= W - 1)).all()), "query x must be a column in [0, W-1]")
        require(bool(((y >= 0) & (y <= H - 1)).all()), "query y must be a row in [0, H-1]")
        self.calls.append({"video_shape": tuple(video.shape), "query_count": queries.shape[1], "wind_length": wind_length,
                           "interp_shape": tuple(self.interp_shape), "inference_mode": torch.is_inference_mode_enabled()})

        N = queries.shape[1]
        frame = torch.arange(T, dtype=torch.float32, device=device)[:, None, None]
        xy = queries[0, :, 1:][None] + frame * self.model.velocity  # (T, N, 2)
        cols = xy[..., 0].round().clamp(0, W - 1).long()
        rows = xy[..., 1].round().clamp(0, H - 1).long()
        depth = video_depth[torch.arange(T, device=device)[:, None], 0, rows, cols]  # (T, N)
        tracks = torch.cat([xy, depth[..., None]], dim=-1)[None]
        occluded = (torch.arange(N, device=device) % 3 == 2)[None] & (frame[:, :, 0] >= T // 2)
        return tracks, ~occluded[None], queries[..., 0].to(torch.uint8)
