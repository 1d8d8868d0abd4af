"""training.data on real shards written by the curation pipeline (3 synthetic scenes) plus one "real"
shard holding a copy of a synthetic sample with its caption tag removed."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from pointvid_pipeline.clip import SYNTHETIC_CAPTION_TAG
from pointvid_pipeline.storage.shard_format import load_points, read_samples, write_tar
from training.data import decode_video, denormalise_points, expand_shards, make_loader

DEPTH_MAX = 4.0  # the default scenes' depths are 1-2 m: nothing is clamped


@pytest.fixture(scope="session")
def samples(shard_dir) -> dict[str, dict[str, bytes]]:
    return read_samples(shard_dir / "shard-00000.tar") | read_samples(shard_dir / "shard-00001.tar")


def both_shards(shard_dir: Path) -> str:
    return f"{shard_dir}/shard-{{00000..00001}}.tar"


def loader(shards, synthetic_mix=None, seed=0, skip=0, frames=8, height=64, width=112, batch_size=2, num_workers=0):
    return make_loader(shards, frames, height, width, batch_size, DEPTH_MAX, synthetic_mix, seed, num_workers=num_workers, skip=skip)


def stream_keys(data_loader, count: int) -> list[str]:
    """Keys of the first `count` samples, without decoding them."""
    return [raw["__key__"] for raw in itertools.islice(data_loader.dataset.raw_samples(), count)]


def test_batch_layout_ranges_and_nearest_resize(shard_dir, samples):
    for batch in itertools.islice(loader(both_shards(shard_dir)), 2):
        assert batch["video"].shape == batch["points"].shape == (2, 8, 3, 64, 112)
        assert batch["foreground"].shape == (2, 1, 64, 112) and batch["intrinsics"].shape == (2, 8, 3, 3)
        assert batch["synthetic"].shape == (2,) and batch["synthetic"].dtype == torch.bool
        for name in ("video", "points", "foreground", "intrinsics"):
            assert batch[name].dtype == torch.float32
        assert batch["video"].min() >= -1 and batch["video"].max() <= 1
        assert batch["points"].min() >= -1 and batch["points"].max() <= 1
        assert set(batch["foreground"].unique().tolist()) == {0.0, 1.0}
        background = (batch["foreground"] == 0).unsqueeze(1).expand_as(batch["points"])
        assert (batch["points"][background] == 0).all()
        for i, key in enumerate(batch["key"]):
            meta = json.loads(samples[key]["json"])
            assert batch["caption"][i] == meta["caption"]
            assert bool(batch["synthetic"][i]) == meta["caption"].startswith(SYNTHETIC_CAPTION_TAG) == meta["synthetic"]
            assert torch.equal(batch["intrinsics"][i], torch.tensor(meta["frame_intrinsics"][::2], dtype=torch.float32))
            # Nearest resize by exactly 4: output pixel (i, j) is source pixel (4i+2, 4j+2) of frames 0, 2, ..., 14.
            points = load_points(samples[key]["points.npz"])
            foreground = points["valid"][2::4, 2::4]
            uvd = torch.from_numpy(points["uvd"][::2, 2::4, 2::4].astype(np.float32)).permute(0, 3, 1, 2)
            assert torch.equal(batch["foreground"][i, 0], torch.from_numpy(foreground).float())
            expected = denormalise_points(batch["points"][i], DEPTH_MAX, batch["foreground"][i])
            torch.testing.assert_close(expected, uvd * torch.from_numpy(foreground), rtol=1e-5, atol=1e-4)


def test_full_resolution_round_trip(shard_dir, samples):
    batch = next(iter(loader(f"{shard_dir}/shard-00000.tar", frames=16, height=256, width=448, batch_size=1)))
    key = batch["key"][0]
    points = load_points(samples[key]["points.npz"])
    uvd = torch.from_numpy(points["uvd"].astype(np.float32)).permute(0, 3, 1, 2)
    foreground = torch.from_numpy(points["valid"])
    assert torch.equal(batch["foreground"][0, 0], foreground.float())
    for mask in (None, batch["foreground"][0]):  # background found by mask and by exact zeros
        restored = denormalise_points(batch["points"][0], DEPTH_MAX, mask)
        assert (restored[:, :, ~foreground] == 0).all()
        torch.testing.assert_close(restored[:, :, foreground], uvd[:, :, foreground], rtol=2**-11, atol=1e-4)
    frames = torch.from_numpy(decode_video(samples[key]["mp4"])).permute(0, 3, 1, 2).float()
    assert torch.equal(batch["video"][0], frames / 127.5 - 1)


def test_brace_patterns_lists_and_urls(shard_dir):
    paths = [f"{shard_dir}/shard-00000.tar", f"{shard_dir}/shard-00001.tar"]
    assert expand_shards(both_shards(shard_dir)) == paths
    assert expand_shards([f"{shard_dir}/shard-0000{{0,1}}.tar"]) == paths
    expected = stream_keys(loader(paths), 12)
    assert set(expected) == {"drop_duck_cube_static", "drop_ball_teddy_block_orbit", "push_soccer_ball_cube_static", "real_drop_duck_cube_static"}
    assert stream_keys(loader(both_shards(shard_dir)), 12) == expected
    assert stream_keys(loader([Path(p).as_uri() for p in paths]), 12) == expected
    memory = fsspec.filesystem("memory")
    for path in paths:
        memory.pipe(f"/pointvid/{Path(path).name}", Path(path).read_bytes())
    assert stream_keys(loader("memory://pointvid/shard-{00000..00001}.tar"), 12) == expected


@pytest.mark.parametrize("synthetic_mix", [None, 0.5])
def test_seeded_order_and_skip_resume(shard_dir, synthetic_mix):
    shards = both_shards(shard_dir)
    keys = stream_keys(loader(shards, synthetic_mix, seed=3), 30)
    assert stream_keys(loader(shards, synthetic_mix, seed=3), 30) == keys
    assert stream_keys(loader(shards, synthetic_mix, seed=4), 30) != keys
    assert stream_keys(loader(shards, synthetic_mix, seed=3, skip=7), 23) == keys[7:]


def test_skip_resumes_decoded_batches_exactly(shard_dir):
    first, second = itertools.islice(loader(both_shards(shard_dir), 0.5, seed=1), 2)
    resumed = next(iter(loader(both_shards(shard_dir), 0.5, seed=1, skip=2)))
    assert resumed["key"] == second["key"] != first["key"]
    for name in ("video", "points", "foreground", "intrinsics", "synthetic"):
        assert torch.equal(resumed[name], second[name])


@pytest.mark.parametrize("synthetic_mix", [0.3, 0.8])
def test_mix_rate_matches_request(shard_dir, synthetic_mix):
    draws = 600
    keys = stream_keys(loader(both_shards(shard_dir), synthetic_mix), draws)
    rate = sum(not key.startswith("real_") for key in keys) / draws
    assert abs(rate - synthetic_mix) < 4 * math.sqrt(synthetic_mix * (1 - synthetic_mix) / draws)


def test_empty_stream_falls_back_with_warning(shard_dir):
    only_synthetic = loader(f"{shard_dir}/shard-00000.tar", synthetic_mix=0.5)
    with pytest.warns(UserWarning, match="no real samples"):
        keys = stream_keys(only_synthetic, 20)
    assert len(keys) == 20 and not any(key.startswith("real_") for key in keys)


def test_empty_shards_raise(tmp_path):
    write_tar(tmp_path / "empty.tar", [])
    with pytest.raises(ValueError, match="no PointVid samples"):
        next(iter(loader(str(tmp_path / "empty.tar"))))


def test_workers_split_shards(shard_dir):
    """Two workers, two shards: worker 0 reads the synthetic shard, worker 1 the real one; batches alternate."""
    first, second = itertools.islice(loader(both_shards(shard_dir), num_workers=2), 2)
    assert first["synthetic"].all() and not second["synthetic"].any()
    assert second["key"] == ["real_drop_duck_cube_static"] * 2
