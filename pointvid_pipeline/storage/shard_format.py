"""Stage `pointvid_shards`: one WebDataset tar per partition, plus its index, written atomically.

Sample schema (SCHEMA_VERSION; documented in docs/architecture.md). Members per sample key:
- `<key>.mp4`        16 frames, 448x256, H.264 (libx264, yuv420p), the clip the points belong to;
- `<key>.points.npz` `uvd` (16, 256, 448, 3) float16 point map: (u, v) in pixels of the 448x256 frame,
                     d = camera-space z-depth in metres, exactly 0 off `valid`;
                     `valid` (256, 448) bool pixels that carry a trajectory (labelled and not gated out);
                     `tracked` (256, 448) bool pixels that carry their own track (the rest are
                     interpolated from 3 neighbours);
                     since 1.1 `visible_bits` (16, 256, 56) uint8: per-frame visibility, np.packbits
                     along the width (`load_points` unpacks it into `visible` (16, 256, 448) bool);
- `<key>.mask.png`   (256, 448) uint8 instance labels of the reference frame (0 = background): the
                     object id of every pixel, indexing the JSON's `objects`;
- `<key>.json`       caption, objects, intrinsics (frame 0's K), since 1.2 frame_intrinsics (K of every
                     frame: a zoom changes it; real video repeats `intrinsics`), frame size, depth
                     convention, camera extrinsics (per frame world-to-camera, synthetic only, else null),
                     backends and versions, source and clip times, stats.
Readers accept 1.0 (no visibility: every valid pixel counts as visible in every frame) and 1.1 (frame_intrinsics
null or absent: `intrinsics` holds for every frame); `sample_intrinsics` reads K per frame from any of them.
Bytes are deterministic: fixed member order, mtime 0, fixed zip timestamps, single-threaded x264 without mbtree."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile

import av
import numpy as np
from PIL import Image

from pointvid_pipeline.clip import FRAME_COUNT, per_frame_intrinsics

SCHEMA_VERSION = "1.2"
READABLE_SCHEMA_VERSIONS = ("1.0", "1.1", "1.2")
MEMBER_SUFFIXES = ("mp4", "points.npz", "mask.png", "json")
MP4_CRF = 18
# x264 preset. "superfast" against "veryfast": 25-40 % more mp4 bytes at the same CRF, about 25 ms less per clip. "ultrafast"
# against "superfast", 14 default clips, same CRF, one core under load: encoding 100 -> 40 ms a clip, 243 -> 315 KB a clip
# (+30 %, ~8 % of a sample), PSNR of the decoded RGB frames 31.2 -> 32.0 dB (min 23.8 -> 24.7; 4:2:0 chroma dominates).
MP4_PRESET = "ultrafast"
NPZ_COMPRESSLEVEL = 1  # zlib level: float16 point maps deflate poorly at any level; 1 is ~10 % bigger than 6 and ~40 ms faster per clip


def encode_mp4(frames: np.ndarray, fps: float) -> bytes:
    """H.264 in MP4, in memory. One encoder thread and no macroblock-tree rate control: with mbtree
    on, this x264 build gives different bytes for the same frames from one call to the next."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)), options={"crf": str(MP4_CRF), "preset": MP4_PRESET, "x264-params": "mbtree=0"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """np.savez_compressed, but with fixed zip timestamps (numpy stamps the current time) and a faster zlib level."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue(), compresslevel=NPZ_COMPRESSLEVEL)
    return buffer.getvalue()


def png_bytes(labels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(labels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def sample_members(key: str, mp4: bytes, points: bytes, mask_png: bytes, meta: dict) -> list[tuple[str, bytes]]:
    meta_bytes = json.dumps(meta, sort_keys=True, indent=1).encode()
    return [(f"{key}.mp4", mp4), (f"{key}.points.npz", points), (f"{key}.mask.png", mask_png), (f"{key}.json", meta_bytes)]


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    """A plain tar (WebDataset layout) with normalised headers, so reruns give identical bytes."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


def file_md5(path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_samples(path) -> dict[str, dict[str, bytes]]:
    """key -> {suffix: bytes}, in tar order (WebDataset grouping: key = name up to the first dot)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path, "r") as tar:
        for info in tar:
            key, _, suffix = info.name.partition(".")
            samples.setdefault(key, {})[suffix] = tar.extractfile(info).read()
    return samples


def pack_points(point_map: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The point_maps stage's arrays as the shard stores them: visibility packed to bits (8x smaller)."""
    packed = {name: array for name, array in point_map.items() if name != "visible"}
    packed["visible_bits"] = np.packbits(point_map["visible"], axis=-1)
    return packed


def load_points(data: bytes) -> dict[str, np.ndarray]:
    """uvd, valid, tracked and visible (T, H, W) bool of a `points.npz` of schema 1.0 or 1.1."""
    with np.load(io.BytesIO(data)) as npz:
        points = {name: npz[name] for name in npz.files}
    uvd, valid = points["uvd"], points["valid"]
    bits = points.pop("visible_bits", None)
    if bits is None:  # schema 1.0 shipped no visibility
        points["visible"] = np.broadcast_to(valid, uvd.shape[:3]).copy()
    else:
        points["visible"] = np.unpackbits(bits, axis=-1, count=uvd.shape[2]).astype(bool)
    return points


def sample_intrinsics(meta: dict) -> np.ndarray:
    """(T, 3, 3) float64 K of every frame of a sample's JSON: `frame_intrinsics`, or for samples without it
    (schema 1.0, and 1.1 real video) `intrinsics` repeated: those were written assuming one K per clip.
    Raises ValueError for a schema this reader does not know (a newer writer's fields could mean something else)."""
    version = meta.get("schema_version", "1.0")
    if version not in READABLE_SCHEMA_VERSIONS:
        raise ValueError(f"sample schema {version!r} is not one of {READABLE_SCHEMA_VERSIONS}: update pointvid_pipeline to read it")
    if meta.get("frame_intrinsics") is not None:
        return np.asarray(meta["frame_intrinsics"], np.float64)
    return per_frame_intrinsics(np.asarray(meta["intrinsics"], np.float64), meta.get("frame_size", {}).get("frames", FRAME_COUNT))


CHECKS = {
    "shard_readable": "The tar opens, its md5 matches the index, and every sample has all members.",
    "sample_count_matches": "The shard holds exactly the samples the point_maps stage accepted.",
    "no_nan": "No NaN or infinity anywhere in a point map.",
    "uv_inside_frame": "Every foreground (u, v) lies inside the 448x256 frame.",
    "depth_positive_on_foreground": "Depth is > 0 on every foreground pixel of every frame.",
    "background_exactly_zero": "Every background pixel of the point map is exactly 0 (Algorithm 1, line 1).",
}


def verify_shard(path, index: dict, expected_keys: list[str]) -> dict[str, tuple[bool, str]]:
    """Run CHECKS on a written shard; returns check name -> (passed, what was seen)."""
    try:
        samples = read_samples(path)
    except (tarfile.TarError, OSError) as exc:
        return {name: (False, f"shard unreadable: {exc}") for name in CHECKS}
    md5 = file_md5(path)
    incomplete = [k for k, members in samples.items() if set(members) != set(MEMBER_SUFFIXES)]
    results = {
        "shard_readable": (md5 == index["md5"] and not incomplete, f"md5 {md5} (index {index['md5']}); incomplete samples: {incomplete}"),
        "sample_count_matches": (list(samples) == expected_keys, f"{len(samples)} samples in shard, {len(expected_keys)} accepted upstream"),
    }
    bad = {name: [] for name in ("no_nan", "uv_inside_frame", "depth_positive_on_foreground", "background_exactly_zero")}
    for key, members in samples.items():
        with np.load(io.BytesIO(members["points.npz"])) as npz:  # uvd and valid only: the checks need no visibility
            uvd, valid = npz["uvd"], npz["valid"]
        _, height, width, _ = uvd.shape
        # Whole-map checks on the float16 bit patterns without the sign (numpy has no fast float16 arithmetic): an
        # exponent of all ones (magnitude >= 0x7C00) is NaN or infinity, and only +0 and -0 have magnitude 0. The
        # background check ORs the magnitudes over frames first: ~4x faster than gathering every frame's background.
        magnitude = uvd.view(np.uint16) & 0x7FFF
        if magnitude.max(initial=0) >= 0x7C00:
            bad["no_nan"].append(key)
        nonzero_somewhere = np.bitwise_or.reduce(magnitude, axis=0).any(axis=-1)  # (H, W)
        if (nonzero_somewhere & ~valid).any():
            bad["background_exactly_zero"].append(key)
        foreground = uvd[:, valid].astype(np.float32)
        u, v = foreground[..., 0], foreground[..., 1]
        if ((u < 0) | (u > width - 1) | (v < 0) | (v > height - 1)).any():
            bad["uv_inside_frame"].append(key)
        if not (foreground[..., 2] > 0).all():
            bad["depth_positive_on_foreground"].append(key)
    for name, keys in bad.items():
        results[name] = (not keys, f"failing samples: {keys}" if keys else f"all {len(samples)} samples pass")
    return results
