"""Preview pictures of a partition's stage files, so a user can judge the data at a glance.

Plain functions, arrays in and PNG bytes out (no Dagster): the Dagster assets embed them in
their metadata and the CLI writes them to disk. Depth colours follow one convention everywhere:
turbo colour map, near = red, far = blue, invalid = black.
"""

from __future__ import annotations

import io
import json
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.stage_store import StageStore

MAX_SAMPLES = 3  # samples stacked per picture
STRIP_FRAMES = (0, 5, 10, 15)
UI_MAX_WIDTH = 1200  # Dagster's markdown dialog is ~1250 px wide in a 1600 px window; wider pictures get cut off
TRAIL = 3  # frames of trail behind each tracked point
SHOWN_POINTS = (200, 60)  # foreground, background tracks drawn per frame: all ~1000 would bury the objects
LABEL_HEIGHT = 18
INSTANCE_COLOURS = np.array(
    [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)],
    dtype=np.uint8,
)
ERROR_BINS_PX = (1.0, 2.0, 4.0)  # the thresholds of evaluation.track_errors.track_error_stats
ERROR_COLOURS = ((40, 200, 60), (170, 220, 40), (255, 170, 0), (240, 40, 40))


# ---------------------------------------------------------------- drawing API


@lru_cache(maxsize=1)
def _turbo() -> np.ndarray:
    return cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_TURBO)[:, 0, ::-1].copy()


def _depth_range(depth: np.ndarray, valid: np.ndarray | None = None) -> tuple[float, float]:
    """1st-99th percentile of the valid depths, so a few stray far pixels do not wash out the objects."""
    values = np.asarray(depth, dtype=np.float64)
    good = np.isfinite(values) & (values > 0)
    if valid is not None:
        good &= valid
    if not good.any():
        return 0.0, 1.0
    lo, hi = np.percentile(values[good], (1, 99))
    return float(lo), float(max(hi, lo + 1e-6))


def _depth_colours(depth: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    t = (vmax - np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=vmax, posinf=vmax, neginf=vmin)) / max(vmax - vmin, 1e-9)
    return _turbo()[np.clip(np.rint(t * 255), 0, 255).astype(np.intp)]


def depth_colormap(depth: np.ndarray, valid: np.ndarray | None = None, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) u8 turbo image (near red, far blue); invalid, non-finite or <= 0 pixels black."""
    depth = np.asarray(depth, dtype=np.float32)
    good = np.isfinite(depth) & (depth > 0)
    if valid is not None:
        good &= np.asarray(valid, dtype=bool)
    lo, hi = _depth_range(depth, good)
    image = _depth_colours(depth, lo if vmin is None else vmin, hi if vmax is None else vmax)
    image[~good] = 0
    return image


def mask_overlay(frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each instance tinted in its own colour (alpha 0.5) with a solid outline; background dimmed."""
    out = frame.astype(np.float32) * 0.75
    labels = np.asarray(labels)
    for i, label in enumerate(l for l in np.unique(labels) if l > 0):
        colour = INSTANCE_COLOURS[i % len(INSTANCE_COLOURS)].astype(np.float32)
        inside = labels == label
        out[inside] = frame[inside] * 0.5 + colour * 0.5
        edge = inside & ~cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        out[cv2.dilate(edge.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)] = colour
    return out.astype(np.uint8)


def _draw_points(frame: np.ndarray, uv: np.ndarray, colours: np.ndarray, visible: np.ndarray | None, trail_uv: np.ndarray | None, radius: int = 2) -> np.ndarray:
    """Filled dots with a dark rim for visible points, rings for occluded ones, optional trails."""
    out = np.ascontiguousarray(frame, dtype=np.uint8).copy()
    visible = np.ones(len(uv), bool) if visible is None else np.asarray(visible, bool)
    if trail_uv is not None:
        for n in range(len(uv)):
            path = np.rint(np.asarray(trail_uv)[:, n]).astype(np.int32)
            if np.isfinite(trail_uv[:, n]).all():
                cv2.polylines(out, [path], False, tuple(int(c) for c in colours[n]), 1, cv2.LINE_AA)
    for (u, v), colour, seen in zip(np.asarray(uv, dtype=np.float64), colours, visible):
        if not (np.isfinite(u) and np.isfinite(v)):
            continue
        centre, colour = (int(round(u)), int(round(v))), tuple(int(c) for c in colour)
        if seen:
            cv2.circle(out, centre, radius + 1, (0, 0, 0), -1, cv2.LINE_AA)
            cv2.circle(out, centre, radius, colour, -1, cv2.LINE_AA)
        else:
            cv2.circle(out, centre, radius + 1, colour, 1, cv2.LINE_AA)
    return out


def draw_tracks(frame: np.ndarray, uv: np.ndarray, depth: np.ndarray, visible: np.ndarray | None = None, trail_uv: np.ndarray | None = None) -> np.ndarray:
    """Points at (u, v) coloured by depth over the range of `depth` (near red, far blue); occluded ones hollow."""
    depth = np.asarray(depth, dtype=np.float64)
    finite = depth[np.isfinite(depth)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return _draw_points(frame, uv, _depth_colours(depth, lo, hi), visible, trail_uv)


@lru_cache(maxsize=4)
def _font(size: int = 12) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _label_bar(width: int, text: str, height: int = LABEL_HEIGHT) -> np.ndarray:
    bar = Image.new("RGB", (width, height), (32, 32, 32))
    ImageDraw.Draw(bar).text((4, height // 2), text, fill=(235, 235, 235), font=_font(), anchor="lm")
    return np.asarray(bar)


def frame_strip(images: list[np.ndarray], columns: int, labels: list[str] | None = None) -> np.ndarray:
    """Tile images row by row (2 px gaps), each under its own label bar when labels are given."""
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    tiles = []
    for i, image in enumerate(images):
        tile = np.zeros((height, width, 3), np.uint8)
        tile[: image.shape[0], : image.shape[1]] = image
        if labels is not None:
            tile = np.vstack([_label_bar(width, labels[i]), tile])
        tiles.append(tile)
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    gap = 2
    tile_h, tile_w = tiles[0].shape[:2]
    rows = len(tiles) // columns
    out = np.full((rows * tile_h + (rows - 1) * gap, columns * tile_w + (columns - 1) * gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * (tile_h + gap) : r * (tile_h + gap) + tile_h, c * (tile_w + gap) : c * (tile_w + gap) + tile_w] = tile
    return out


def _encode(image: np.ndarray, palette: bool) -> bytes:
    picture = Image.fromarray(image)
    if palette:
        picture = picture.quantize(256, method=Image.Quantize.FASTOCTREE)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=7)
    return buffer.getvalue()


def fit_width(image: np.ndarray, max_width: int) -> np.ndarray:
    """Downscaled (area filter) to at most `max_width` pixels wide; narrower images are returned as they are."""
    if image.shape[1] <= max_width:
        return image
    height = round(image.shape[0] * max_width / image.shape[1])
    return cv2.resize(np.ascontiguousarray(image), (max_width, height), interpolation=cv2.INTER_AREA)


def png_bytes(image: np.ndarray, max_bytes: int = 200_000) -> bytes:
    """PNG under `max_bytes`: full colour, else a 256-colour palette, else downscaled until it fits."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    while True:
        for palette in (False, True):
            data = _encode(image, palette)
            if len(data) <= max_bytes:
                return data
        if min(image.shape[:2]) <= 8:
            return data
        scale = max(0.5, min(0.9, (max_bytes / len(data)) ** 0.5))
        size = (max(8, int(image.shape[1] * scale)), max(8, int(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------- legends


def _colour_bar(width: int, vmin: float, vmax: float) -> np.ndarray:
    """Turbo gradient (near left, red) with its depth values, to read the colours as metres."""
    ramp = np.repeat(_turbo()[::-1][np.linspace(0, 255, width).astype(int)][None], 10, axis=0)
    text = _label_bar(width, f"depth: near {vmin:.2f} m (red) ... far {vmax:.2f} m (blue); black = no depth")
    return np.vstack([ramp, text])


def _error_legend(width: int) -> np.ndarray:
    bar = Image.new("RGB", (width, LABEL_HEIGHT), (32, 32, 32))
    draw = ImageDraw.Draw(bar)
    x = 4
    draw.text((x, LABEL_HEIGHT // 2), "white ring = ground truth, dot = prediction, coloured by 2D error:", fill=(235, 235, 235), font=_font(), anchor="lm")
    x += int(draw.textlength("white ring = ground truth, dot = prediction, coloured by 2D error:", font=_font())) + 8
    names = [f"<= {ERROR_BINS_PX[0]:g} px", *(f"<= {b:g} px" for b in ERROR_BINS_PX[1:]), f"> {ERROR_BINS_PX[-1]:g} px"]
    for colour, name in zip(ERROR_COLOURS, names):
        draw.ellipse((x, LABEL_HEIGHT // 2 - 4, x + 8, LABEL_HEIGHT // 2 + 4), fill=colour)
        draw.text((x + 12, LABEL_HEIGHT // 2), name, fill=(235, 235, 235), font=_font(), anchor="lm")
        x += 16 + int(draw.textlength(name, font=_font())) + 10
    return np.asarray(bar)


def _with_footer(image: np.ndarray, footer: np.ndarray) -> np.ndarray:
    padded = np.zeros((footer.shape[0], image.shape[1], 3), np.uint8)
    padded[:, : footer.shape[1]] = footer[:, : image.shape[1]]
    return np.vstack([image, padded])


# ---------------------------------------------------------------- per-stage pictures


def _dim(frame: np.ndarray) -> np.ndarray:
    """Darker frame so coloured points stand out on any scene."""
    return (np.asarray(frame, dtype=np.float32) * 0.55).astype(np.uint8)


def _clips_pictures(store: StageStore, partition: str, keys: list[str], index: dict) -> dict[str, np.ndarray]:
    tiles, labels = [], []
    for key in keys:
        frames = store.read_arrays("clips", partition, key)["frames"]
        tiles += [np.asarray(frames[t]) for t in STRIP_FRAMES]
        labels += [f"{key}  frame {t}" for t in STRIP_FRAMES]
    return {"clips frames 0 5 10 15": frame_strip(tiles, len(STRIP_FRAMES), labels)}


def _reference_mask_pictures(store: StageStore, partition: str, keys: list[str], index: dict) -> dict[str, np.ndarray]:
    tiles, labels = [], []
    for key in keys:
        frame = store.read_arrays("clips", partition, key)["frames"][0]
        mask = store.read_arrays("reference_masks", partition, key)["labels"]
        tiles += [np.asarray(frame), mask_overlay(np.asarray(frame), mask)]
        objects = ", ".join(index[key].get("objects", []))
        instances = len(np.unique(mask[mask > 0]))
        labels += [f"{key}  reference frame", f"{instances} instance(s), {float((mask > 0).mean()):.1%} foreground: {objects}"]
    return {"reference masks": frame_strip(tiles, 2, labels)}


def _query_point_pictures(store: StageStore, partition: str, keys: list[str], index: dict) -> dict[str, np.ndarray]:
    tiles, labels = [], []
    for key in keys:
        frame = store.read_arrays("clips", partition, key)["frames"][0]
        queries = np.asarray(store.read_arrays("query_points", partition, key)["queries"])
        on_fg = _query_foreground(store, partition, key)
        colours = np.where(on_fg[:, None], np.array([255, 220, 0], np.uint8), np.array([150, 150, 150], np.uint8))
        tiles.append(_draw_points(_dim(frame), queries, colours, None, None, radius=1))
        labels.append(f"{key}: {int(on_fg.sum())} foreground (yellow), {int((~on_fg).sum())} background")
    return {"query points": frame_strip(tiles, 1, labels)}


def _depth_pictures(store: StageStore, partition: str, keys: list[str], index: dict) -> dict[str, np.ndarray]:
    depths = {key: np.asarray(store.read_arrays("depth", partition, key)["depth"][0]) for key in keys}
    vmin, vmax = _depth_range(np.concatenate([d.ravel() for d in depths.values()]))
    tiles, labels = [], []
    for key, depth in depths.items():
        tiles += [np.asarray(store.read_arrays("clips", partition, key)["frames"][0]), depth_colormap(depth, vmin=vmin, vmax=vmax)]
        labels += [f"{key}  frame 0", f"depth frame 0: median {np.median(depth):.2f} m"]
    strip = frame_strip(tiles, 2, labels)
    return {f"depth frame 0 ({vmin:.2f} m red to {vmax:.2f} m blue)": _with_footer(strip, _colour_bar(strip.shape[1], vmin, vmax))}


def _query_foreground(store: StageStore, partition: str, key: str) -> np.ndarray:
    """(N,) bool: which query points start on the reference mask."""
    mask = store.read_arrays("reference_masks", partition, key)["labels"]
    queries = np.asarray(store.read_arrays("query_points", partition, key)["queries"])
    return mask[queries[:, 1], queries[:, 0]] > 0


def _shown(candidates: np.ndarray, limit: int) -> np.ndarray:
    """Indices of at most `limit` candidates, evenly spread over the (grid-ordered) list."""
    index = np.flatnonzero(candidates)
    return index[np.unique(np.linspace(0, len(index) - 1, min(limit, len(index))).astype(int))] if len(index) else index


def _query_truth(store: StageStore, partition: str, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Ground-truth (T, N, 3) uvd and (T, N) visibility at the query pixels; None for real clips."""
    clips = store.read_arrays("clips", partition, key)
    if "truth_track_uvd" not in clips:
        return None
    queries = np.asarray(store.read_arrays("query_points", partition, key)["queries"])
    return np.asarray(clips["truth_track_uvd"][:, queries[:, 1], queries[:, 0]]), np.asarray(clips["truth_track_visible"][:, queries[:, 1], queries[:, 0]])


def _error_colours(error: np.ndarray) -> np.ndarray:
    return np.array(ERROR_COLOURS, np.uint8)[np.searchsorted(np.array(ERROR_BINS_PX), error)]


def _truth_tile(frame: np.ndarray, pred_uv: np.ndarray, truth_uv: np.ndarray) -> np.ndarray:
    """GT as a white ring, prediction as a dot coloured by its 2D error, a line between them."""
    out = _dim(frame).copy()
    error = np.linalg.norm(pred_uv - truth_uv, axis=1)
    for p, g, colour in zip(pred_uv, truth_uv, _error_colours(error)):
        colour = tuple(int(c) for c in colour)
        p, g = tuple(int(round(x)) for x in p), tuple(int(round(x)) for x in g)
        cv2.line(out, g, p, colour, 1, cv2.LINE_AA)
        cv2.circle(out, g, 3, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.circle(out, p, 2, colour, -1, cv2.LINE_AA)
    return out


def _track_pictures(stage: str):
    def pictures(store: StageStore, partition: str, keys: list[str], index: dict) -> dict[str, np.ndarray]:
        tracks = {key: np.asarray(store.read_arrays(stage, partition, key)["tracks"]) for key in keys}
        vmin, vmax = _depth_range(np.concatenate([t[..., 2].ravel() for t in tracks.values()]))
        tiles, labels, truth_tiles, truth_labels = [], [], [], []
        for key in keys:
            frames = store.read_arrays("clips", partition, key)["frames"]
            visible = np.asarray(store.read_arrays("tracks_3d", partition, key)["visibility"])
            foreground = _query_foreground(store, partition, key)
            shown = np.concatenate([_shown(foreground, SHOWN_POINTS[0]), _shown(~foreground, SHOWN_POINTS[1])])
            uvd = tracks[key][:, shown]
            for t in STRIP_FRAMES:
                trail = uvd[max(0, t - TRAIL) : t + 1, :, :2] if t else None
                tiles.append(_draw_points(_dim(frames[t]), uvd[t, :, :2], _depth_colours(uvd[t, :, 2], vmin, vmax), visible[t, shown], trail))
                labels.append(f"{key}  frame {t}: {visible[t].mean():.0%} of {len(foreground)} tracks visible")
            truth = _query_truth(store, partition, key)
            if truth is None:
                continue
            truth_uvd, truth_visible = truth
            for t in STRIP_FRAMES[1:]:
                candidates = foreground & truth_visible[t]
                error = np.linalg.norm(tracks[key][t, candidates, :2] - truth_uvd[t, candidates, :2], axis=1)
                drawn = _shown(candidates, SHOWN_POINTS[0])
                truth_tiles.append(_truth_tile(frames[t], tracks[key][t, drawn, :2], truth_uvd[t, drawn, :2]))
                median = f"{np.median(error):.2f} px" if error.size else "n/a"
                truth_labels.append(f"{key}  frame {t}: foreground median error {median}")
        strip = frame_strip(tiles, len(STRIP_FRAMES), labels)
        name = stage.replace("_", " ")
        out = {f"{name} frames 0 5 10 15": _with_footer(strip, _colour_bar(strip.shape[1], vmin, vmax))}
        if truth_tiles:
            truth_strip = frame_strip(truth_tiles, len(STRIP_FRAMES) - 1, truth_labels)
            out[f"{name} predicted vs ground truth"] = _with_footer(truth_strip, _error_legend(truth_strip.shape[1]))
        return out

    return pictures


def _point_map_pictures(store: StageStore, partition: str, keys: list[str], index: dict) -> dict[str, np.ndarray]:
    frames = (0, 15)
    maps = {key: store.read_arrays("point_maps", partition, key) for key in keys}
    depths = {key: np.asarray(m["uvd"][list(frames), ..., 2], dtype=np.float32) for key, m in maps.items()}
    vmin, vmax = _depth_range(np.concatenate([depths[key][:, np.asarray(m["valid"])].ravel() for key, m in maps.items()]))
    tiles, labels = [], []
    for key, arrays in maps.items():
        valid, tracked = np.asarray(arrays["valid"]), np.asarray(arrays["tracked"])
        for i, t in enumerate(frames):
            tiles.append(depth_colormap(depths[key][i], valid, vmin, vmax))
            labels.append(f"{key}  frame {t}" + ("" if i else f": {int(valid.sum())} px, {tracked[valid].mean():.1%} tracked"))
    strip = frame_strip(tiles, len(frames), labels)
    return {"point map depth frames 0 and 15": _with_footer(strip, _colour_bar(strip.shape[1], vmin, vmax))}


STAGE_PICTURES = {
    "clips": _clips_pictures,
    "reference_masks": _reference_mask_pictures,
    "query_points": _query_point_pictures,
    "depth": _depth_pictures,
    "tracks_3d": _track_pictures("tracks_3d"),
    "smoothed_tracks": _track_pictures("smoothed_tracks"),
    "point_maps": _point_map_pictures,
}


def partition_previews(stage: str, partition: str, settings: PipelineSettings) -> dict[str, bytes]:
    """PNG bytes by title for the first accepted samples (up to 3, stacked) of a stage's partition."""
    if stage not in STAGE_PICTURES:
        return {}
    store = StageStore(settings.stages_dir)
    accepted = store.read_index(stage, partition).accepted
    keys = list(accepted)[:MAX_SAMPLES]
    if not keys:
        return {}
    return {title: png_bytes(fit_width(image, UI_MAX_WIDTH)) for title, image in STAGE_PICTURES[stage](store, partition, keys, accepted).items()}


def _cell(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def shard_samples_markdown(partition: str, settings: PipelineSettings) -> str:
    """Per-sample statistics of a written shard (from its index json), as a markdown table."""
    index_path = settings.shards_dir / f"{partition}.json"
    index = json.loads(index_path.read_text())
    lines = [
        f"Shard `{settings.shards_dir / index['tar']}` ({index['bytes'] / 1e6:.1f} MB, {len(index['samples'])} samples, {len(index['rejected'])} rejected)",
        "",
        "| key | foreground fraction | tracked points | visible fraction | jitter raw / smoothed (px/frame²) | point-map pixels visible |",
        "|---|---|---|---|---|---|",
    ]
    for key, meta in index["sample_meta"].items():
        stats = meta.get("stats", {})
        smooth = stats.get("smoothed_tracks", {})
        lines.append(
            f"| {key} | {_cell(stats.get('reference_masks', {}).get('foreground_fraction'), '.3f')} "
            f"| {_cell(stats.get('query_points', {}).get('query_points'), 'd')} "
            f"| {_cell(stats.get('tracks_3d', {}).get('visible_fraction'), '.3f')} "
            f"| {_cell(smooth.get('jitter_raw_px'), '.2f')} / {_cell(smooth.get('jitter_smoothed_px'), '.2f')} "
            f"| {_cell(stats.get('point_maps', {}).get('visible_fraction'), '.3f')} |"
        )
    return "\n".join(lines) + "\n"
