"""Preview pictures of real stage files (the `shard_dir` pipeline run) and in Dagster metadata."""

import io

import numpy as np
import pytest
from dagster import AssetKey, DagsterInstance
from PIL import Image

from pointvid_pipeline.dagster_defs.assets import clip_shards
from pointvid_pipeline.dagster_defs.definitions import build_definitions
from pointvid_pipeline.pipeline import STAGES
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.tools.previews import (
    UI_MAX_WIDTH,
    depth_colormap,
    draw_tracks,
    frame_strip,
    mask_overlay,
    partition_previews,
    png_bytes,
    shard_samples_markdown,
)

PARTITION = "shard-00000"
EXPECTED_TITLES = {
    "clips": 1,
    "reference_masks": 1,
    "query_points": 1,
    "depth": 1,
    "tracks_3d": 2,  # tracks + predicted vs ground truth (synthetic)
    "smoothed_tracks": 2,
    "point_maps": 1,
}


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.fixture(scope="module")
def previews(shard_dir):
    settings = PipelineSettings(data_dir=shard_dir.parent)
    return {stage: partition_previews(stage, PARTITION, settings) for stage in STAGES}


def test_every_stage_with_arrays_gets_readable_small_non_trivial_pictures(previews):
    assert {stage: len(pictures) for stage, pictures in previews.items() if pictures} == EXPECTED_TITLES
    for stage, pictures in previews.items():
        for title, png in pictures.items():
            image = _decode(png)
            assert len(png) <= 200_000, (stage, title, len(png))
            assert image.shape[0] >= 200 and 400 <= image.shape[1] <= UI_MAX_WIDTH, (stage, title, image.shape)  # fits the UI dialog
            packed = image.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1])
            assert len(np.unique(packed)) > 50 and image.std() > 10, (stage, title)
    assert any("ground truth" in title for title in previews["smoothed_tracks"])
    assert any(" m red to " in title for title in previews["depth"])  # colour bar values in the title


def test_shard_table_lists_every_sample_with_ground_truth_errors(shard_dir):
    table = shard_samples_markdown(PARTITION, PipelineSettings(data_dir=shard_dir.parent))
    assert str(shard_dir / f"{PARTITION}.tar") in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| key")]
    assert len(rows) == 3
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 6 and "–" not in row, row  # synthetic: every figure known


def test_draw_tracks_puts_depth_coloured_points_at_uv():
    frame = np.zeros((64, 96, 3), np.uint8)
    uv = np.array([[20.0, 30.0], [70.0, 10.0]])
    depth = np.array([1.0, 3.0])
    out = draw_tracks(frame, uv, depth)
    expected = depth_colormap(depth[None], vmin=1.0, vmax=3.0)[0]
    for (u, v), colour in zip(uv.astype(int), expected):
        assert np.abs(out[v, u].astype(int) - colour).max() <= 2
    assert expected[0][0] > expected[0][2] and expected[1][2] > expected[1][0]  # near red, far blue
    assert out[50, 50].sum() == 0  # nothing drawn elsewhere


def test_draw_tracks_draws_occluded_points_hollow_and_trails():
    frame = np.zeros((64, 96, 3), np.uint8)
    uv = np.array([[20.0, 30.0]])
    hollow = draw_tracks(frame, uv, np.array([2.0]), visible=np.array([False]))
    assert hollow[30, 20].sum() == 0 and hollow[30, 23].sum() > 0
    trail = np.array([[[60.0, 30.0]], [[40.0, 30.0]], [[20.0, 30.0]]])
    assert draw_tracks(frame, uv, np.array([2.0]), trail_uv=trail)[30, 50].sum() > 0


def test_depth_colormap_blackens_invalid_pixels():
    depth = np.linspace(1, 4, 32 * 48, dtype=np.float32).reshape(32, 48)
    depth[0, 0], depth[0, 1], depth[0, 2] = np.nan, 0.0, np.inf
    valid = np.ones_like(depth, bool)
    valid[5:10, 5:10] = False
    image = depth_colormap(depth, valid)
    assert (image[5:10, 5:10] == 0).all() and (image[0, :3] == 0).all()
    assert (image[20:, 20:].sum(axis=-1) > 0).all()


def test_mask_overlay_tints_instances_differently():
    frame = np.full((40, 60, 3), 128, np.uint8)
    labels = np.zeros((40, 60), np.int32)
    labels[5:20, 5:20], labels[20:35, 30:50] = 1, 7
    out = mask_overlay(frame, labels)
    assert not np.array_equal(out[12, 12], out[27, 40]) and not np.array_equal(out[12, 12], out[2, 55])


def test_frame_strip_lays_out_labelled_tiles():
    tiles = [np.full((20, 30, 3), i * 40, np.uint8) for i in range(5)]
    strip = frame_strip(tiles, 2, [f"tile {i}" for i in range(5)])
    assert strip.shape[1] == 2 * 30 + 2 and strip.shape[0] > 3 * 20


def test_png_bytes_shrinks_noise_below_the_limit():
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    png = png_bytes(noise, max_bytes=200_000)
    assert len(png) <= 200_000
    assert min(_decode(png).shape[:2]) >= 64
    small = np.zeros((10, 10, 3), np.uint8)
    assert _decode(png_bytes(small)).shape == (10, 10, 3)  # under the limit: untouched


@pytest.fixture(scope="module")
def dagster_run(tmp_path_factory):
    settings = PipelineSettings(data_dir=tmp_path_factory.mktemp("data"), shard_size=1)
    with DagsterInstance.local_temp(str(tmp_path_factory.mktemp("dagster_home"))) as instance:
        instance.add_dynamic_partitions(clip_shards.name, [PARTITION])
        result = build_definitions(settings).resolve_job_def("curate_shard").execute_in_process(partition_key=PARTITION, instance=instance)
        yield result, instance


def test_dagster_materializations_carry_preview_pictures(dagster_run):
    result, instance = dagster_run
    assert result.success
    for stage, count in EXPECTED_TITLES.items():
        metadata = instance.get_latest_materialization_event(AssetKey(stage)).asset_materialization.metadata
        previews = {name: value for name, value in metadata.items() if name.startswith("preview_")}
        assert len(previews) == count, (stage, list(metadata))
        for value in previews.values():
            assert value.value.startswith("![") and "data:image/png;base64," in value.value
    shards = instance.get_latest_materialization_event(AssetKey("pointvid_shards")).asset_materialization.metadata
    assert "| key |" in shards["samples"].value and PARTITION in shards["samples"].value
