"""PointVid shards -> training batches: a seeded, resumable WebDataset stream.

Every sample (docs/architecture.md, "Sample schema, version 1.0") is decoded, cut to `frames` frames,
centre-cropped to the aspect ratio of height x width (nothing is cut at 448:256) and resized, then normalised. Training and sampling must use this same convention:

- video: RGB uint8 -> float32 in [-1, 1] (x / 127.5 - 1); resized bilinear with antialiasing.
- points: the (u, v, d) map, resized nearest-neighbour (and the foreground mask with it), so the
  background stays exactly 0 and no foreground value is ever blended with background; then
      u' = 2 u / (448 - 1) - 1,   v' = 2 v / (256 - 1) - 1,   d' = 2 clamp(d / depth_max, 0, 1) - 1,
  with (u, v) always in pixels of the 448x256 curation frame (not the resized one), so normalised
  coordinates do not depend on the training resolution; finally every background pixel is set to 0.
  `denormalise_points` inverts this.
- frames: indices 0, s, 2s, ... with stride s = 16 // frames: evenly spaced in time, starting at the
  reference frame, so Eq. 1's velocity and acceleration terms see a constant time step.
- intrinsics: the stored K of the 448x256 frame of each kept frame (`frame_intrinsics`, which a zoom changes
  from frame to frame; shards without it repeat `intrinsics`), unchanged by the resize: (u, v) stay in curation pixels.

Batches are dicts: "video" (B,T,3,H,W) and "points" (B,T,3,H,W) float32, "visible" (B,T,1,H,W) float32
(1 where the point map's pixel is visible in that frame; schema 1.0 shards: all valid pixels), "foreground" (B,1,H,W)
float32 in {0, 1}, "intrinsics" (B,T,3,3) float32, "caption" list[str] (the "<synthetic>" tag is kept:
the model is conditioned on it), "synthetic" (B,) bool (caption starts with the tag), "key" list[str].

The stream never ends: each epoch reshuffles the shard order and refills the seeded shuffle buffer;
the trainer stops after its step count (shards without any sample raise ValueError instead).
With `synthetic_mix` = p, each sample comes from the synthetic stream with probability p and from
the real stream otherwise (the mix rate of the synthetic-video paper, Table 8); the two streams are
the same shards filtered by caption tag. If one stream has no sample at all, every draw falls back
to the other and a warning says so once.

Camera classes: a synthetic caption carries a `<camera-MOVEMENT>` tag (synthetic/cameras.py). With `cameras`
only synthetic samples of those movements are kept (real samples are untouched); with `balance_cameras`
the synthetic stream draws each sample from a uniformly chosen movement class (of `cameras`, default all
ten), so rare classes are seen as often as common ones; a class with no sample drops out with a warning.
Balancing needs `synthetic_mix` (1.0 = synthetic only).

View pairs (`make_view_pair_loader`): the views of a synchronized camera rig (`pointvid synth --cameras K`)
share a shard, in camera order, and carry `scene_id` / `camera_id`. Each epoch the pair stream takes,
shard by shard (a new shard order per epoch), one seeded random pair of two different views of every
scene with at least two, and shuffles the pairs with the same seeded buffer. A batch is {"a": ..., "b": ...},
each a batch of the layout above (the same frame indices for both views; "intrinsics" is that view's K per
frame) plus "extrinsics" (B,T,4,4) float32 world->camera of those frames, "scene_id" and "camera_id". Point
maps stay in each view's camera space; `extrinsics` take both to the shared world frame.

Resume: the stream is a function of (shards, seed, synthetic_mix, cameras, balance_cameras, shuffle_buffer) only, so a run that
has consumed n samples resumes exactly with the same seed and `skip=n` (skipped samples are not
decoded). That is exact for num_workers = 0 (the tiny config). With num_workers > 0 the shards are
split between workers (wds.split_by_worker), each worker has its own seeded stream and skips
skip // num_workers samples, so resume is only approximate.

Several processes (`rank`, `processes`): every process reads the same stream and keeps its share,
consecutive chunks of `batch_size` samples dealt round-robin (chunk c to process c % processes), so
together they consume the one-process stream in order; other processes' samples are not decoded.
`skip` counts samples of the whole stream and should be a multiple of batch_size x processes.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import re
import warnings
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

import av
import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from av.video.reformatter import VideoReformatter
from braceexpand import braceexpand
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from pointvid_pipeline.clip import FRAME_COUNT, FRAME_HEIGHT, FRAME_WIDTH, SYNTHETIC_CAPTION_TAG
from pointvid_pipeline.storage.shard_format import load_points, sample_intrinsics
from pointvid_pipeline.synthetic.cameras import MOVEMENTS

CAMERA_TAG = re.compile(r"<camera-([a-z]+)>")

MEMBERS = {"mp4", "points.npz", "json"}  # the mask png is not needed for training


def expand_shards(shards: str | list[str]) -> list[str]:
    """Brace patterns ("shard-{00000..00003}.tar") expanded, in order."""
    patterns = [shards] if isinstance(shards, str) else shards
    return [url for pattern in patterns for url in braceexpand(pattern)]


def open_shard(url: str):
    """wds.gopen reads local paths, file://, pipe: and the curl/gsutil schemes; any other scheme
    (s3://, memory://, ...) is opened with fsspec."""
    scheme = urlparse(url).scheme
    if scheme in ("", "file") or scheme in wds.gopen_schemes:
        return wds.gopen(url)
    import fsspec

    return fsspec.open(url, "rb").open()


def tar_samples(urls: list[str]) -> Iterator[dict]:
    """Raw WebDataset samples ({"__key__", "mp4", "points.npz", "json"} bytes) of the shards, in order."""
    streams = ({"url": url, "stream": open_shard(url)} for url in urls)
    return group_by_keys(tar_file_expander(streams), suffixes=MEMBERS)


def is_synthetic(raw: dict) -> bool:
    return json.loads(raw["json"])["caption"].startswith(SYNTHETIC_CAPTION_TAG)


def camera_movement(raw: dict) -> str | None:
    """The movement of the caption's <camera-MOVEMENT> tag; None without one (real video)."""
    found = CAMERA_TAG.search(json.loads(raw["json"])["caption"])
    return found.group(1) if found else None


def shuffled_epochs(urls: list[str], keep: Callable[[dict], bool], buffer: int, rng: random.Random) -> Iterator[dict]:
    """The kept raw samples, epoch after epoch, each epoch with a new shard order and buffer shuffle.
    Ends only when an epoch finds no sample (this stream is empty)."""
    while True:
        found = False
        order = rng.sample(urls, len(urls))
        for raw in wds.shuffle(buffer, initial=buffer, rng=rng)(filter(keep, tar_samples(order))):
            found = True
            yield raw
        if not found:
            return


def scene_views(raws: Iterator[dict]) -> Iterator[list[dict]]:
    """Runs of consecutive raw samples of one scene (a rig's views follow each other in a shard); a sample without scene_id runs alone."""
    run: list[dict] = []
    for raw in raws:
        scene = json.loads(raw["json"]).get("scene_id")
        if run and (scene is None or json.loads(run[-1]["json"]).get("scene_id") != scene):
            yield run
            run = []
        run.append(raw)
    if run:
        yield run


def view_pair_epochs(urls: list[str], buffer: int, rng: random.Random) -> Iterator[tuple[dict, dict]]:
    """Per epoch, one random pair of different views of every multi-view scene, shuffled; ends only if the shards hold no such scene."""
    while True:
        found = False
        order = rng.sample(urls, len(urls))
        pairs = (tuple(rng.sample(views, 2)) for views in scene_views(tar_samples(order)) if len(views) >= 2)
        for pair in wds.shuffle(buffer, initial=buffer, rng=rng)(pairs):
            found = True
            yield pair
        if not found:
            return


def mix_streams(synthetic: Iterator[dict], real: Iterator[dict], synthetic_mix: float, rng: random.Random) -> Iterator[dict]:
    """Each draw from `synthetic` with probability synthetic_mix, else from `real`; falls back to the
    other stream for good if the drawn one is empty."""
    streams = {True: synthetic, False: real}
    while True:
        drawn = rng.random() < synthetic_mix
        raw = next(streams[drawn], None)
        if raw is None:
            missing, present = ("synthetic", "real") if drawn else ("real", "synthetic")
            warnings.warn(f"the shards hold no {missing} samples: every sample now comes from the {present} stream", stacklevel=2)
            yield from streams[not drawn]
            return
        yield raw


def balance_streams(streams: dict[str, Iterator[dict]], rng: random.Random) -> Iterator[dict]:
    """Each draw from a uniformly chosen stream; an empty stream drops out (with a warning), the others go on."""
    streams = dict(streams)
    while streams:
        name = rng.choice(sorted(streams))
        raw = next(streams[name], None)
        if raw is None:
            warnings.warn(f"no sample of class {name!r} in the shards: balancing over {sorted(set(streams) - {name})}", stacklevel=2)
            del streams[name]
            continue
        yield raw


def decode_video(mp4: bytes, keep: np.ndarray | None = None) -> np.ndarray:
    """Frames `keep` (default all) of an MP4, (T, H, W, 3) RGB uint8. H.264 decodes every frame; only
    the kept ones are converted, with one reformatter for all of them (frame.to_ndarray alone builds
    a new swscale context per frame, which triples the decode time)."""
    reformatter = VideoReformatter()
    with av.open(io.BytesIO(mp4)) as container:
        frames = list(container.decode(video=0))
    kept = range(len(frames)) if keep is None else keep
    return np.stack([reformatter.reformat(frames[i], format="rgb24").to_ndarray() for i in kept])


def frame_indices(frames: int, available: int = FRAME_COUNT) -> np.ndarray:
    if not 1 <= frames <= available:
        raise ValueError(f"frames must be in [1, {available}], got {frames}")
    return np.arange(frames) * (available // frames)


def normalise_points(uvd: torch.Tensor, foreground: torch.Tensor, depth_max: float) -> torch.Tensor:
    """(..., 3, H, W) pixel/metre (u, v, d) -> [-1, 1]; background (foreground == 0) set to 0."""
    u, v, d = uvd.unbind(-3)
    normalised = torch.stack([2 * u / (FRAME_WIDTH - 1) - 1, 2 * v / (FRAME_HEIGHT - 1) - 1, 2 * (d / depth_max).clamp(0, 1) - 1], dim=-3)
    return normalised * foreground


def denormalise_points(points: torch.Tensor, depth_max: float, foreground: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of the normalisation: (..., 3, H, W) in [-1, 1] -> (u, v) pixels of the 448x256 frame and
    d metres. Background stays 0: pixels where `foreground` (broadcastable to (..., 1, H, W)) is 0, or,
    without a mask, pixels whose three channels are all exactly 0. Depths beyond depth_max were clamped."""
    if foreground is None:
        foreground = (points != 0).any(dim=-3, keepdim=True)
    u, v, d = points.unbind(-3)
    uvd = torch.stack([(u + 1) * (FRAME_WIDTH - 1) / 2, (v + 1) * (FRAME_HEIGHT - 1) / 2, (d + 1) * depth_max / 2], dim=-3)
    return uvd * foreground


def fit_frames(images: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """(N, C, H, W) -> (N, C, height, width): centre crop to the target aspect ratio, then resize (bilinear
    with antialiasing for pictures, nearest for point maps and masks). The sampler prepares its first
    frame with this same function, as I2VGen-XL's pipeline prepares its image like its training data."""
    source_height, source_width = images.shape[-2:]
    crop_height, crop_width = min(source_height, round(source_width * height / width)), min(source_width, round(source_height * width / height))
    top, left = (source_height - crop_height) // 2, (source_width - crop_width) // 2
    images = images[..., top : top + crop_height, left : left + crop_width]
    if mode == "bilinear":
        return F.interpolate(images, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(images, size=(height, width), mode=mode)


def decode_sample(raw: dict, frames: int, height: int, width: int, depth_max: float) -> dict:
    """One raw sample -> the normalised tensors of one batch element (see the module docstring)."""
    meta = json.loads(raw["json"])
    indices = frame_indices(frames)
    video = torch.from_numpy(decode_video(raw["mp4"], indices)).permute(0, 3, 1, 2).float()
    points = load_points(raw["points.npz"])  # schema 1.0 shards: every valid pixel visible
    uvd = torch.from_numpy(points["uvd"][indices]).permute(0, 3, 1, 2)  # float16 until resized
    foreground = torch.from_numpy(points["valid"])[None].float()
    visible = torch.from_numpy(points["visible"][indices])[:, None].float()  # (T, 1, H, W)
    if video.shape[-2:] != (height, width):
        video = fit_frames(video, height, width)
        uvd = fit_frames(uvd, height, width, "nearest-exact")
        foreground = fit_frames(foreground[None], height, width, "nearest-exact")[0]
        visible = fit_frames(visible, height, width, "nearest-exact")
    return {
        "video": (video / 127.5 - 1).clamp(-1, 1),
        "points": normalise_points(uvd.float(), foreground, depth_max),
        "foreground": foreground,
        "visible": visible,
        "intrinsics": torch.tensor(sample_intrinsics(meta)[indices], dtype=torch.float32),
        "caption": meta["caption"],
        "synthetic": torch.tensor(meta["caption"].startswith(SYNTHETIC_CAPTION_TAG)),
        "key": raw["__key__"],
    }


def decode_view(raw: dict, frames: int, height: int, width: int, depth_max: float) -> dict:
    """`decode_sample` (whose "intrinsics" are the kept frames' K) plus the view's world->camera extrinsics of those frames, scene and camera ids."""
    meta = json.loads(raw["json"])
    indices = frame_indices(frames)
    return {
        **decode_sample(raw, frames, height, width, depth_max),
        "extrinsics": torch.tensor(np.asarray(meta["extrinsics"])[indices], dtype=torch.float32),
        "scene_id": meta["scene_id"],
        "camera_id": meta["camera_id"],
    }


def worker_shards(urls: list[str]) -> tuple[int, int, list[str]]:
    """(this DataLoader worker's id, how many workers there are, the shards it reads)."""
    worker = get_worker_info()
    return (worker.id, worker.num_workers, list(wds.split_by_worker(urls))) if worker else (0, 1, list(urls))


class PointVidStream(IterableDataset):
    """The endless, seeded sample stream of `make_loader` (one per DataLoader worker)."""

    def __init__(self, urls: list[str], frames: int, height: int, width: int, depth_max: float, synthetic_mix: float | None, seed: int, shuffle_buffer: int, skip: int,
                 rank: int = 0, processes: int = 1, batch_size: int = 1, cameras: list[str] | None = None, balance_cameras: bool = False):
        if synthetic_mix is not None and not 0 <= synthetic_mix <= 1:
            raise ValueError(f"synthetic_mix must be in [0, 1] or None, got {synthetic_mix}")
        if cameras is not None and not set(cameras) <= set(MOVEMENTS):
            raise ValueError(f"cameras must be movements of {sorted(MOVEMENTS)}, got {cameras}")
        if balance_cameras and synthetic_mix is None:
            raise ValueError("balance_cameras balances the synthetic stream: set synthetic_mix (1.0 = synthetic samples only)")
        self.cameras, self.balance_cameras = cameras, balance_cameras
        frame_indices(frames)  # raises early on an impossible frame count
        self.urls, self.frames, self.height, self.width, self.depth_max = urls, frames, height, width, depth_max
        self.synthetic_mix, self.seed, self.shuffle_buffer, self.skip = synthetic_mix, seed, shuffle_buffer, skip
        self.rank, self.processes, self.batch_size = rank, processes, batch_size

    def raw_samples(self) -> Iterator[dict]:
        """Undecoded samples in stream order, after mixing, shuffling and `skip`."""
        worker_id, workers, urls = worker_shards(self.urls)
        if not urls:  # more workers than shards: this one idles
            return

        def rng(purpose: str) -> random.Random:
            return random.Random(f"pointvid/{self.seed}/{worker_id}/{purpose}")

        def kept_camera(raw: dict) -> bool:
            return self.cameras is None or not is_synthetic(raw) or camera_movement(raw) in self.cameras

        if self.synthetic_mix is None:
            stream = shuffled_epochs(urls, kept_camera, self.shuffle_buffer, rng("all"))
        else:
            if self.balance_cameras:
                classes = {name: shuffled_epochs(urls, lambda raw, name=name: is_synthetic(raw) and camera_movement(raw) == name, self.shuffle_buffer, rng(f"camera-{name}")) for name in self.cameras or MOVEMENTS}
                synthetic = balance_streams(classes, rng("balance"))
            else:
                synthetic = shuffled_epochs(urls, lambda raw: is_synthetic(raw) and kept_camera(raw), self.shuffle_buffer, rng("synthetic"))
            real = shuffled_epochs(urls, lambda raw: not is_synthetic(raw), self.shuffle_buffer, rng("real"))
            stream = mix_streams(synthetic, real, self.synthetic_mix, rng("mix"))
        stream = itertools.islice(stream, self.skip // workers, None)
        for index, raw in enumerate(stream):
            if index // self.batch_size % self.processes == self.rank:
                yield raw
        raise ValueError(f"no PointVid samples in {urls}")  # the stream only ends if the shards are empty

    def __iter__(self) -> Iterator[dict]:
        for raw in self.raw_samples():
            yield decode_sample(raw, self.frames, self.height, self.width, self.depth_max)


def make_loader(
    shards: str | list[str],
    frames: int,
    height: int,
    width: int,
    batch_size: int,
    depth_max: float,
    synthetic_mix: float | None,
    seed: int,
    num_workers: int = 0,
    shuffle_buffer: int = 64,
    skip: int = 0,
    rank: int = 0,
    processes: int = 1,
    cameras: list[str] | None = None,
    balance_cameras: bool = False,
) -> DataLoader:
    """Endless DataLoader of normalised PointVid batches (module docstring: layout, normalisation,
    mixing, resume). `shards`: paths or URLs (file://, http(s)://, any fsspec scheme), brace patterns
    allowed. To resume after n consumed samples (steps x batch_size), pass the same seed and skip=n.
    With `processes` > 1 this process (`rank`) gets every processes-th chunk of batch_size samples.
    `cameras` / `balance_cameras`: filter / balance synthetic samples by camera movement (module docstring)."""
    urls = expand_shards(shards)
    if not urls:
        raise ValueError(f"no shards in {shards!r}")
    dataset = PointVidStream(urls, frames, height, width, depth_max, synthetic_mix, seed, shuffle_buffer, skip, rank, processes, batch_size, cameras, balance_cameras)
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)


class ViewPairStream(IterableDataset):
    """The endless, seeded stream of view pairs of `make_view_pair_loader` (module docstring)."""

    def __init__(self, urls: list[str], frames: int, height: int, width: int, depth_max: float, seed: int, shuffle_buffer: int, skip: int):
        frame_indices(frames)  # raises early on an impossible frame count
        self.urls, self.frames, self.height, self.width, self.depth_max = urls, frames, height, width, depth_max
        self.seed, self.shuffle_buffer, self.skip = seed, shuffle_buffer, skip

    def __iter__(self) -> Iterator[dict]:
        worker_id, workers, urls = worker_shards(self.urls)
        if not urls:  # more workers than shards: this one idles
            return
        pairs = view_pair_epochs(urls, self.shuffle_buffer, random.Random(f"pointvid/{self.seed}/{worker_id}/view-pairs"))
        for first, second in itertools.islice(pairs, self.skip // workers, None):
            yield {"a": decode_view(first, self.frames, self.height, self.width, self.depth_max), "b": decode_view(second, self.frames, self.height, self.width, self.depth_max)}
        raise ValueError(f"no scene with two views in {urls}: render rigs with pointvid synth --cameras K")


def make_view_pair_loader(shards: str | list[str], frames: int, height: int, width: int, batch_size: int, depth_max: float, seed: int, num_workers: int = 0, shuffle_buffer: int = 64, skip: int = 0) -> DataLoader:
    """Endless DataLoader of pairs of synchronized views of one scene (module docstring); resume with the same seed and skip = pairs consumed."""
    urls = expand_shards(shards)
    if not urls:
        raise ValueError(f"no shards in {shards!r}")
    return DataLoader(ViewPairStream(urls, frames, height, width, depth_max, seed, shuffle_buffer, skip), batch_size=batch_size, num_workers=num_workers)
