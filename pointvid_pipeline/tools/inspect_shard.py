"""`pointvid inspect`: read a shard (local path or fsspec URL) and draw what one sample holds.

Everything is drawn from the shard alone (video, point map, mask, JSON), so a shard copied
elsewhere or served over HTTP/S3 can be judged without the stage files that produced it.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.parse import urlparse

import av
import cv2
import fsspec
import numpy as np
from PIL import Image

from pointvid_pipeline.clip import unproject
from pointvid_pipeline.storage.shard_format import load_points, sample_intrinsics
from pointvid_pipeline.tools.previews import INSTANCE_COLOURS, depth_colormap, draw_tracks, frame_strip, mask_overlay, png_bytes

SHEET_FRAMES = (0, 5, 10, 15)
TRAIL_FRAMES = 4  # frames of history drawn behind each tracked point
MAX_DRAWN_TRACKS = 200
DIM = 0.6  # frames under the dots are darkened so the depth colours stand out on any scene
GIF_MAX_FPS = 8
SHEET_MAX_BYTES = 300_000  # a 256-colour palette keeps full resolution well under this
SCATTER_POINTS = 6000  # enough to show every object's shape; more only slows matplotlib down


def shard_stem(url: str) -> str:
    """`.../shard-00000.tar` -> `shard-00000`, for paths and URLs alike."""
    return PurePosixPath(urlparse(str(url)).path).name.removesuffix(".tar")


def iter_samples(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) in tar order, streamed: a remote shard is read only up to what is needed."""
    key, members = None, {}
    with fsspec.open(str(url), "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for info in tar:
            name_key, _, suffix = info.name.partition(".")
            if name_key != key and key is not None:
                yield key, members
                members = {}
            key = name_key
            members[suffix] = tar.extractfile(info).read()
    if key is not None:
        yield key, members


def decode_frames(mp4: bytes) -> np.ndarray:
    with av.open(io.BytesIO(mp4)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def mp4_frame_count(mp4: bytes) -> int:
    """Frame count from the container header, without decoding."""
    with av.open(io.BytesIO(mp4)) as container:
        return int(container.streams.video[0].frames)


def point_map_shape(points_npz: bytes) -> tuple[int, ...]:
    """Shape of `uvd` from its .npy header, without inflating the (large) array."""
    with zipfile.ZipFile(io.BytesIO(points_npz)) as archive, archive.open("uvd.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read_header(member)
    return shape


def summary_row(key: str, members: dict[str, bytes]) -> dict:
    """One line of the listing: what a user checks first about a sample."""
    meta = json.loads(members["json"])
    with np.load(io.BytesIO(members["points.npz"])) as npz:  # npz members inflate lazily: only `valid` here
        foreground = float(npz["valid"].mean())
    return {
        "key": key,
        "schema_version": meta.get("schema_version", "?"),
        "frames": mp4_frame_count(members["mp4"]),
        "point_map_frames": point_map_shape(members["points.npz"])[0],
        "foreground": foreground,
        "objects": meta.get("objects", []),
        "caption": meta.get("caption", ""),
    }


def format_listing(rows: list[dict]) -> str:
    versions = sorted({r["schema_version"] for r in rows})
    key_width = max([len("key"), *(len(r["key"]) for r in rows)])
    objects = [", ".join(r["objects"]) or "-" for r in rows]
    object_width = max([len("objects"), *(len(o) for o in objects)])
    lines = [
        f"schema version {', '.join(versions) or '-'}; {len(rows)} samples",
        f"{'key':<{key_width}}  frames  fg %   {'objects':<{object_width}}  caption",
    ]
    for row, names in zip(rows, objects):
        frames = str(row["frames"]) if row["frames"] == row["point_map_frames"] else f"{row['frames']}/{row['point_map_frames']}"
        lines.append(f"{row['key']:<{key_width}}  {frames:>6}  {100 * row['foreground']:5.1f}  {names:<{object_width}}  {row['caption']}")
    return "\n".join(lines)


def _label(image: np.ndarray, text: str) -> np.ndarray:
    """Frame number in the corner, so a paused GIF says where it is (and no two GIF frames are identical)."""
    out = image.copy()
    cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def tracked_frames(frames: np.ndarray, points: dict[str, np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Every frame (dimmed, so the dots stand out) with tracked pixels of the point map projected
    onto it and short trails, occluded ones hollow; returns the images and how many tracks are drawn. At most
    MAX_DRAWN_TRACKS, evenly spread: hundreds of dots with trails bury the objects."""
    tracks = points["uvd"][:, points["tracked"]].astype(np.float32)  # (T, N, 3)
    visible = points["visible"][:, points["tracked"]]  # schema 1.0 shards: every valid pixel counts as visible
    step = max(1, -(-tracks.shape[1] // MAX_DRAWN_TRACKS))
    tracks, visible = tracks[:, ::step], visible[:, ::step]
    drawn_count = tracks.shape[1]
    # draw_tracks spreads its colours over the depths it is given; two points far off the canvas
    # (never drawn) carrying the whole clip's depth range keep one colour per depth across frames.
    depths, off = tracks[..., 2], -1e4
    pins = np.array([[off, off, depths.min(initial=1.0)], [off, off, depths.max(initial=1.0)]], np.float32)
    tracks = np.concatenate([tracks, np.broadcast_to(pins, (len(tracks), 2, 3))], axis=1)
    visible = np.concatenate([visible, np.ones((len(visible), 2), bool)], axis=1)
    drawn = []
    for t, frame in enumerate(frames):
        trail = tracks[max(0, t - TRAIL_FRAMES): t + 1, :, :2] if t else None
        dimmed = (frame.astype(np.float32) * DIM).astype(np.uint8)
        drawn.append(draw_tracks(dimmed, tracks[t, :, :2], tracks[t, :, 2], visible[t], trail))  # occluded: hollow
    return drawn, drawn_count


def camera_points(points: dict[str, np.ndarray], labels: np.ndarray, intrinsics: np.ndarray, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space xyz of every foreground pixel's point at `frame`, with its frame-0 instance label;
    `intrinsics` is the (T, 3, 3) K of every frame (a zoom changes it)."""
    valid = points["valid"]
    return unproject(points["uvd"][frame][valid].astype(np.float64), intrinsics[frame]), labels[valid]


def scatter_3d(xyz: np.ndarray, instance: np.ndarray, limits: tuple[np.ndarray, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Camera-space points coloured by instance as in mask_overlay, as an (H, W, 3) image.

    Plotted as (x, z, -y) so the camera's up is the plot's up and depth runs into the picture;
    `limits` (low, high xyz) are shared between panels so motion between them reads directly.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    present = [k for k in np.unique(instance) if k > 0]  # mask_overlay's colour order
    if len(xyz) > SCATTER_POINTS:
        keep = np.random.default_rng(0).choice(len(xyz), SCATTER_POINTS, replace=False)
        xyz, instance = xyz[keep], instance[keep]
    height, width = size
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.04, 0.86, 0.96), projection="3d")
    for k in np.unique(instance):
        chosen = instance == k
        name = "unlabelled" if k == 0 else f"instance {k}"  # the shard does not say which object a label is
        colour = (0.5, 0.5, 0.5) if k == 0 else INSTANCE_COLOURS[present.index(k) % len(INSTANCE_COLOURS)] / 255.0
        ax.scatter(xyz[chosen, 0], xyz[chosen, 2], -xyz[chosen, 1], s=0.8, color=colour, label=name, depthshade=False)
    low, high = limits
    span = np.maximum(high - low, 1e-3)
    ax.set_xlim(low[0], high[0])
    ax.set_ylim(low[2], high[2])
    ax.set_zlim(-high[1], -low[1])
    box = np.maximum([span[0], span[2], span[1]], 0.35 * span.max())  # a thin slab of depth would vanish
    ax.set_box_aspect(tuple(box), zoom=0.95)
    if len(xyz):
        fig.legend(loc="upper right", fontsize=7, markerscale=6, frameon=False)
    ax.view_init(elev=18, azim=-62)
    for axis, name in ((ax.xaxis, "x (m)"), (ax.yaxis, "depth z (m)"), (ax.zaxis, "up -y (m)")):
        axis.set_major_locator(MaxNLocator(4))
        axis.set_label_text(name, fontsize=7)
        axis.labelpad = -6
    ax.tick_params(labelsize=6, pad=-2)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def contact_sheet(frames: np.ndarray, points: dict[str, np.ndarray], labels: np.ndarray, meta: dict) -> np.ndarray:
    """Frames 0/5/10/15 with tracks; frame-0 depth and mask; foreground points in 3D at frames 0 and 15."""
    with_tracks, drawn = tracked_frames(frames, points)
    depth0 = points["uvd"][0, :, :, 2].astype(np.float32)
    valid = points["valid"]
    objects = meta.get("objects", [])
    tracked = int(points["tracked"].sum())
    depths = depth0[valid]
    depth_label = f"depth, frame 0: {depths.min():.2f}-{depths.max():.2f} m (red near)" if depths.size else "depth, frame 0: no foreground"
    intrinsics, last = sample_intrinsics(meta), len(frames) - 1
    clouds = [camera_points(points, labels, intrinsics, t) for t in (0, last)]
    everything = np.concatenate([xyz for xyz, _ in clouds]) if valid.any() else np.zeros((1, 3))
    limits = (everything.min(axis=0), everything.max(axis=0))
    panels = [with_tracks[t] for t in SHEET_FRAMES] + [
        depth_colormap(depth0, valid),
        mask_overlay(frames[0], labels),
        *(scatter_3d(xyz, instance, limits, frames.shape[1:3]) for xyz, instance in clouds),
    ]
    names = [f"frame {t}: {drawn} of {tracked} tracks, coloured by depth" for t in SHEET_FRAMES] + [
        depth_label,
        f"mask, frame 0: {', '.join(objects) or 'no objects'} ({100 * valid.mean():.1f}% fg)",
        "foreground points, frame 0, camera space",
        f"foreground points, frame {last}, camera space",
    ]
    return frame_strip(panels, columns=4, labels=names)


def write_gif(path, images: list[np.ndarray], fps: float) -> None:
    """Looping GIF, one adaptive palette per frame; at most GIF_MAX_FPS so 16 frames can be followed by eye."""
    frames = [Image.fromarray(image).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE) for image in images]
    duration = int(round(1000 / min(fps, GIF_MAX_FPS)))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration, loop=0, optimize=False)


def find_sample(url: str, key: str) -> tuple[dict[str, bytes] | None, list[str]]:
    """The sample's members (and the keys before it), or None and every key of the shard."""
    seen = []
    for sample_key, members in iter_samples(url):
        if sample_key == key:
            return members, seen
        seen.append(sample_key)
    return None, seen


def inspect_sample(members: dict[str, bytes], out_dir) -> dict[str, str]:
    """Write contact_sheet.png and preview.gif for one sample; returns name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = json.loads(members["json"])
    frames = decode_frames(members["mp4"])
    points = load_points(members["points.npz"])
    labels = np.asarray(Image.open(io.BytesIO(members["mask.png"])), dtype=np.int32)
    sheet_path, gif_path = out_dir / "contact_sheet.png", out_dir / "preview.gif"
    sheet_path.write_bytes(png_bytes(contact_sheet(frames, points, labels, meta), max_bytes=SHEET_MAX_BYTES))
    fps = meta.get("source", {}).get("fps") or 16
    write_gif(gif_path, [_label(image, f"t={t}") for t, image in enumerate(tracked_frames(frames, points)[0])], fps)
    return {"contact_sheet": str(sheet_path), "preview": str(gif_path)}
