"""Stage "tracks_3d" (paper profile): learned point trackers run from the user's own checkouts.

SpaTracker v1 and CoTracker3 are not on PyPI and are CC-BY-NC licensed, so this project never
copies their code: the user clones the upstream repository and downloads a checkpoint, and these
adapters import from that checkout inside `setup()`. Both adapters honour the `PointTracker`
contract of tracking.py exactly like the CPU tracker: one upstream call per clip with all queries
as explicit frame-0 (t, x, y) queries, uv clamped into the frame, points outside it invisible,
frame 0 forced to the exact queries and visible, float32 tracks and bool visibility.

Both run in float32 whatever `POINTVID_DTYPE` says: they regress pixel coordinates, and bfloat16's
8 significant bits would round every coordinate past 256 px to a 2-px step.
"""

from __future__ import annotations

import inspect
import os
import pickle
import shlex
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from pointvid_pipeline.backends.torch_runtime import resolve_device
from pointvid_pipeline.rejections import BackendUnavailable
from pointvid_pipeline.stages.tracking import sample_nearest

SPATRACKER_REPOSITORY = "https://github.com/henry123-boy/SpaTracker"
SPATRACKER_CHECKPOINT_HELP = (
    "download spaT_final.pth from the Google Drive folder linked in the README's 'Data' section "
    "(https://drive.google.com/drive/folders/1UtzUJLPhJdUg2XvemXXz1oe6KUQKVjsZ)"
)
# What SpaTracker's code imports at import time beyond torch (torchvision, timm, cupy, ...): its
# requirements.txt pins opencv-python (which clashes with our opencv-python-headless) and cupy
# (an sdist that compiles), so these are the installable equivalents; torchvision must be the one
# built for the installed torch.
SPATRACKER_INSTALL = (
    "pip install torch==2.14.1 torchvision==0.29.1 timm==0.6.7 einops easydict scikit-learn matplotlib "
    "cupy-cuda12x (torchvision paired with torch; cupy-cuda13x for a CUDA 13 torch; see docs/paper_profile.md)"
)
PIP_NAMES = {"cupy": "cupy-cuda12x", "cv2": "opencv-python-headless", "sklearn": "scikit-learn"}
COTRACKER_REPOSITORY = "https://github.com/facebookresearch/co-tracker"
COTRACKER_CHECKPOINT_HELP = (
    "download the offline model as the README says: "
    "wget https://huggingface.co/facebook/cotracker3/resolve/main/scaled_offline.pth"
)


def checkout_commit(checkout: Path) -> str:
    """Commit checked out in `checkout`, read from its own .git by hand (no git subprocess).

    Only `checkout/.git` is looked at, never a parent folder's repository. A `.git` file (submodule
    or worktree) is followed to its gitdir. "unknown-commit" when nothing can be read.
    """
    git = checkout / ".git"
    if git.is_file():
        pointer = git.read_text().strip()
        if not pointer.startswith("gitdir:"):
            return "unknown-commit"
        git = (checkout / pointer.removeprefix("gitdir:").strip()).resolve()
    head_file = git / "HEAD"
    if not head_file.is_file():
        return "unknown-commit"
    head = head_file.read_text().strip()
    if not head.startswith("ref:"):
        return head or "unknown-commit"  # detached HEAD holds the commit itself
    ref = head.removeprefix("ref:").strip()
    if (git / ref).is_file():
        return (git / ref).read_text().strip()
    packed = git / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            commit, _, name = line.partition(" ")
            if name.strip() == ref:
                return commit
    return "unknown-commit"


def required_path(value: str, env_var: str, what: str, how_to_get: str) -> Path:
    """The configured path, or BackendUnavailable naming the variable, the path and how to get it."""
    if not value:
        raise BackendUnavailable(f"{env_var} is not set: it must point at {what}. {how_to_get}")
    path = Path(value).expanduser()
    if not path.exists():
        raise BackendUnavailable(f"{env_var}={path} does not exist: it must point at {what}. {how_to_get}")
    return path


def add_checkout_to_path(checkout: Path) -> None:
    """Make the checkout's top-level packages importable.

    Appended, not prepended: SpaTracker's checkout also holds generic top-level names (utils,
    config, logger) that must not shadow other packages for the rest of the process.
    """
    if str(checkout) not in sys.path:
        sys.path.append(str(checkout))


def require_from_checkout(obj: object, checkout: Path, env_var: str) -> None:
    """Fail when `obj` was imported from somewhere else than the checkout (a same-named package)."""
    source = Path(inspect.getfile(obj)).resolve()
    if not source.is_relative_to(checkout.resolve()):
        raise BackendUnavailable(
            f"{obj.__module__} was imported from {source}, not from {env_var}={checkout}: another "
            f"package with the same top-level name is already imported or installed"
        )


def installed_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed as a distribution"


def import_spatracker_predictor(checkout: Path):
    """`SpaTrackerPredictor` from the checkout; each way its import-time dependencies fail is BackendUnavailable."""
    import torch

    where = f"cannot import models.spatracker.predictor from POINTVID_SPATRACKER_DIR={checkout}"
    try:
        from models.spatracker.predictor import SpaTrackerPredictor
    except ImportError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing and not (checkout / missing).exists():
            raise BackendUnavailable(
                f"{where}: SpaTracker's code imports {missing!r}, which is missing ({exc}); install "
                f"{PIP_NAMES.get(missing, missing)}, or all it needs: {SPATRACKER_INSTALL}"
            ) from exc
        raise BackendUnavailable(
            f"{where} ({exc}); is it a checkout of {SPATRACKER_REPOSITORY}? Its dependencies: {SPATRACKER_INSTALL}"
        ) from exc
    except RuntimeError as exc:  # a torchvision built for another torch fails with RuntimeError, not ImportError
        raise BackendUnavailable(
            f"{where}: RuntimeError ({exc}), which is what a torchvision built for another torch raises "
            f"(torch {torch.__version__}, torchvision {installed_version('torchvision')}); install the pair: {SPATRACKER_INSTALL}"
        ) from exc
    return SpaTrackerPredictor


def weights_only_command(checkpoint: Path) -> list[str]:
    """A command that saves a checkpoint's tensors alone, so `torch.load(weights_only=True)` accepts the copy.

    It unpickles the original with weights_only=False: run it only on a file from a trusted source.
    """
    script = ('import sys, torch; c = torch.load(sys.argv[1], map_location="cpu", weights_only=False); '
              'w = c.get("model", c); torch.save({"model": {k: v for k, v in w.items() if torch.is_tensor(v)}}, sys.argv[2])')
    return ["python", "-c", script, str(checkpoint), str(checkpoint.with_name(f"{checkpoint.stem}_weights_only.pth"))]


def check_spatracker_cuda(device: str) -> None:
    """SpaTracker's code puts tensors on "cuda" itself (the current device, cuda:0), so only that device
    works, and it must really hold tensors (torch can see a GPU whose driver it cannot use)."""
    import torch

    index = torch.device(device).index
    if index not in (None, 0):
        raise BackendUnavailable(
            f"POINTVID_DEVICE={device}, but SpaTracker's code places tensors on 'cuda' (cuda:0) itself and would "
            f"split the model across GPUs; run with CUDA_VISIBLE_DEVICES={index} and POINTVID_DEVICE=cuda instead"
        )
    try:
        torch.zeros(1, device=device)
    except (AssertionError, RuntimeError) as exc:  # a CPU-only torch asserts; a driver mismatch raises RuntimeError
        raise BackendUnavailable(
            f"SpaTracker needs a working CUDA device, but torch {torch.__version__} (CUDA {torch.version.cuda}) cannot "
            f"put a tensor on {device!r} ({exc}); install a CUDA build of torch that matches the driver "
            f"({SPATRACKER_INSTALL}) or use POINTVID_POINT_TRACKER_BACKEND=cotracker3"
        ) from exc


def finish_tracks(uv: np.ndarray, z: np.ndarray, visible: np.ndarray, queries: np.ndarray,
                  depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply the PointTracker output contract to raw upstream output.

    uv (T, N, 2) and z (T, N) as the tracker reported them (z is only used from frame 1 on),
    visible (T, N) bool. Frame 0 takes the exact queries and our depth there, as the CPU tracker.
    """
    height, width = depth.shape[1:]
    upper = np.array([width - 1, height - 1], np.float32)
    inside = np.all((uv >= 0) & (uv <= upper), axis=2)
    tracks = np.empty((*uv.shape[:2], 3), np.float32)
    tracks[..., :2] = np.clip(uv, 0, upper)
    tracks[..., 2] = z
    visibility = np.asarray(visible, bool) & inside
    tracks[0, :, :2] = queries
    tracks[0, :, 2] = sample_nearest(depth[0], np.clip(queries, 0, upper))
    visibility[0] = True
    return tracks, visibility


def empty_tracks(frame_count: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((frame_count, 0, 3), np.float32), np.zeros((frame_count, 0), bool)


def first_frame_queries(queries: np.ndarray, device: str):
    """(N, 2) (u, v) -> (1, N, 3) float32 (t=0, x=u, y=v): the upstream query layout."""
    import torch

    layout = np.concatenate([np.zeros((len(queries), 1), np.float32), queries.astype(np.float32)], axis=1)
    return torch.from_numpy(layout)[None].to(device)


def video_tensor(frames: np.ndarray, device: str):
    """(T, H, W, 3) uint8 -> (1, T, 3, H, W) float32 in 0-255, as both upstream predictors take it."""
    import torch

    return torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2)[None].float().to(device)


@dataclass
class SpaTrackerTracker:
    """SpaTracker v1: 3D tracks from RGB-D, fed our metric depth; its own depth estimate per frame.

    The video goes in at 448x256 (the upstream demo first upsamples 448-wide video to 896x512; we do
    not). `interp_shape` is the predictor's internal working resolution (H, W): it resizes the video
    (bilinear) and depth (nearest) to it, scales the queries in and the tracks back out, so
    coordinates at this boundary are always in our 448x256 pixels; (384, 512) is what the checkpoint
    was run at in the demo. `window_length` is the demo's S (8, 12 or 16), passed both as the model's
    seq_length and the call's wind_length like the demo does.

    CUDA only: the model's splatting kernel is written in cupy, and its code puts tensors on "cuda"
    itself, so only cuda:0 works (select another GPU with CUDA_VISIBLE_DEVICES). `allow_cpu_for_tests`
    exists only so the adapter's own tests can run it against a fake checkout on a CPU-only machine.
    """

    checkout: str = ""
    checkpoint: str = ""
    interp_shape: tuple[int, int] = (384, 512)
    window_length: int = 12
    allow_cpu_for_tests: bool = False

    name = "spatracker"
    version = "not-set-up"

    @classmethod
    def from_env(cls) -> SpaTrackerTracker:
        """`POINTVID_SPATRACKER_DIR`, `POINTVID_SPATRACKER_CHECKPOINT`; test-only:
        `POINTVID_SPATRACKER_ALLOW_CPU_FOR_TESTS=1`."""
        return cls(
            checkout=os.environ.get("POINTVID_SPATRACKER_DIR", ""),
            checkpoint=os.environ.get("POINTVID_SPATRACKER_CHECKPOINT", ""),
            allow_cpu_for_tests=os.environ.get("POINTVID_SPATRACKER_ALLOW_CPU_FOR_TESTS") == "1",
        )

    def setup(self) -> None:
        import torch

        self.device = resolve_device()
        if not self.device.startswith("cuda") and not self.allow_cpu_for_tests:
            raise BackendUnavailable(
                f"SpaTracker needs a CUDA device (its splatting kernel is cupy) but the device is "
                f"{self.device!r} (torch {torch.__version__}); use POINTVID_POINT_TRACKER_BACKEND=cotracker3 "
                f"or optical-flow on this machine"
            )
        checkout = required_path(
            self.checkout, "POINTVID_SPATRACKER_DIR", "a checkout of SpaTracker v1",
            f"git clone {SPATRACKER_REPOSITORY} and install its requirements.txt.",
        )
        checkpoint = required_path(
            self.checkpoint, "POINTVID_SPATRACKER_CHECKPOINT", "the SpaTracker checkpoint file",
            f"In the checkout of {SPATRACKER_REPOSITORY}, {SPATRACKER_CHECKPOINT_HELP}.",
        )
        if self.device.startswith("cuda"):
            check_spatracker_cuda(self.device)
        add_checkout_to_path(checkout)
        SpaTrackerPredictor = import_spatracker_predictor(checkout)
        require_from_checkout(SpaTrackerPredictor, checkout, "POINTVID_SPATRACKER_DIR")
        try:
            predictor = SpaTrackerPredictor(str(checkpoint), interp_shape=tuple(self.interp_shape), seq_length=self.window_length)
        except pickle.UnpicklingError as exc:  # upstream calls torch.load without weights_only, which is True since torch 2.6
            raise BackendUnavailable(
                f"POINTVID_SPATRACKER_CHECKPOINT={checkpoint} holds pickled objects besides tensors, which torch "
                f"{torch.__version__} refuses (torch.load defaults to weights_only=True since 2.6; SpaTracker does not "
                f"pass it). If the file is from a trusted source, save its weights alone once with "
                f"`{shlex.join(weights_only_command(checkpoint))}` and point POINTVID_SPATRACKER_CHECKPOINT at the copy."
            ) from exc
        except (RuntimeError, KeyError, OSError) as exc:
            raise BackendUnavailable(
                f"POINTVID_SPATRACKER_CHECKPOINT={checkpoint} does not load into SpaTracker ({exc}); to get the right file, {SPATRACKER_CHECKPOINT_HELP}."
            ) from exc
        self.predictor = predictor.to(self.device).eval()
        self.version = f"henry123-boy/SpaTracker@{checkout_commit(checkout)}/{checkpoint.name}"

    def track(self, frames: np.ndarray, depth: np.ndarray, queries: np.ndarray, labels: np.ndarray | None = None, intrinsics: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        import torch

        if len(queries) == 0:
            return empty_tracks(len(frames))
        with torch.inference_mode():
            outputs = self.predictor(
                video_tensor(frames, self.device),
                video_depth=torch.from_numpy(np.array(depth, np.float32))[:, None].to(self.device),
                queries=first_frame_queries(queries, self.device),
                grid_size=0,
                wind_length=self.window_length,
            )
        tracks, visible = outputs[0], outputs[1]  # the third output (each track's start frame) is all 0 here
        tracks = tracks[0].float().cpu().numpy()
        return finish_tracks(tracks[..., :2], tracks[..., 2], visible[0].cpu().numpy(), queries, depth)


@dataclass
class CoTracker3Tracker:
    """CoTracker3 offline: 2D tracks, lifted to 3D with our depth at each tracked pixel.

    The depth of a track at frame t is our depth map t at the nearest pixel to its (clamped)
    position, as the CPU tracker reads it. Loaded through torch.hub from the local checkout
    (`hubconf.cotracker3_offline(pretrained=False)`, no download), then the checkpoint's state dict
    is loaded into the predictor's model. Pure torch: runs on CPU too.
    """

    checkout: str = ""
    checkpoint: str = ""

    name = "cotracker3"
    version = "not-set-up"

    @classmethod
    def from_env(cls) -> CoTracker3Tracker:
        """`POINTVID_COTRACKER_DIR`, `POINTVID_COTRACKER_CHECKPOINT`."""
        return cls(
            checkout=os.environ.get("POINTVID_COTRACKER_DIR", ""),
            checkpoint=os.environ.get("POINTVID_COTRACKER_CHECKPOINT", ""),
        )

    def setup(self) -> None:
        import torch

        checkout = required_path(
            self.checkout, "POINTVID_COTRACKER_DIR", "a checkout of CoTracker (with hubconf.py)",
            f"git clone {COTRACKER_REPOSITORY}.",
        )
        checkpoint = required_path(
            self.checkpoint, "POINTVID_COTRACKER_CHECKPOINT", "the CoTracker3 offline checkpoint file",
            f"In the checkout of {COTRACKER_REPOSITORY}, {COTRACKER_CHECKPOINT_HELP}.",
        )
        if not (checkout / "hubconf.py").is_file():
            raise BackendUnavailable(
                f"POINTVID_COTRACKER_DIR={checkout} has no hubconf.py: it must be a checkout of {COTRACKER_REPOSITORY}"
            )
        self.device = resolve_device()
        try:
            predictor = torch.hub.load(str(checkout), "cotracker3_offline", source="local", pretrained=False)
        except ImportError as exc:
            raise BackendUnavailable(
                f"cannot build cotracker3_offline from POINTVID_COTRACKER_DIR={checkout} ({exc}); is it a checkout "
                f"of {COTRACKER_REPOSITORY} with its dependencies installed?"
            ) from exc
        require_from_checkout(type(predictor), checkout, "POINTVID_COTRACKER_DIR")
        try:
            state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
            if "model" in state_dict:  # training checkpoints wrap the weights, as upstream's build_cotracker handles
                state_dict = state_dict["model"]
            predictor.model.load_state_dict(state_dict)
        except (RuntimeError, KeyError, OSError) as exc:
            raise BackendUnavailable(
                f"POINTVID_COTRACKER_CHECKPOINT={checkpoint} does not load into cotracker3_offline ({exc}); it must be "
                f"the offline model: {COTRACKER_CHECKPOINT_HELP}."
            ) from exc
        self.predictor = predictor.to(self.device).eval()
        self.version = f"facebookresearch/co-tracker@{checkout_commit(checkout)}/{checkpoint.name}"

    def track(self, frames: np.ndarray, depth: np.ndarray, queries: np.ndarray, labels: np.ndarray | None = None, intrinsics: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        import torch

        if len(queries) == 0:
            return empty_tracks(len(frames))
        with torch.inference_mode():
            uv, visible = self.predictor(video_tensor(frames, self.device), queries=first_frame_queries(queries, self.device))
        uv = uv[0].float().cpu().numpy()
        height, width = depth.shape[1:]
        clamped = np.clip(uv, 0, np.array([width - 1, height - 1], np.float32))
        z = np.stack([sample_nearest(depth[t], clamped[t]) for t in range(len(depth))])
        return finish_tracks(uv, z, visible[0].cpu().numpy(), queries, depth)
