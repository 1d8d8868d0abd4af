"""The shard checks (`shard_format.verify_shard`) pass a good shard and name each kind of bad point map.

The checks read the float16 point map through its bit patterns; these cases pin that to what the
checks promise in float terms (NaN and infinity, exact zeros off `valid`, in-frame (u, v), depth > 0).
"""

from __future__ import annotations

import numpy as np
import pytest

from pointvid_pipeline.storage.shard_format import CHECKS, file_md5, npz_bytes, pack_points, png_bytes, sample_members, verify_shard, write_tar

FRAMES, HEIGHT, WIDTH = 4, 8, 16


def good_point_map() -> dict[str, np.ndarray]:
    valid = np.zeros((HEIGHT, WIDTH), bool)
    valid[2:6, 3:9] = True
    rows, cols = np.nonzero(valid)
    uvd = np.zeros((FRAMES, HEIGHT, WIDTH, 3), np.float16)
    for t in range(FRAMES):
        uvd[t, rows, cols] = np.stack([cols + 0.5 * t, rows + 0.25, np.full(len(rows), 2.0 + t)], axis=1)
    return {"uvd": uvd, "valid": valid, "tracked": valid.copy(), "visible": np.broadcast_to(valid, (FRAMES, HEIGHT, WIDTH)).copy()}


def shard_with(tmp_path, point_map: dict[str, np.ndarray]):
    members = sample_members("sample", b"not decoded by the checks", npz_bytes(pack_points(point_map)), png_bytes(point_map["valid"].astype(np.uint8)), {"key": "sample"})
    path = tmp_path / "shard.tar"
    write_tar(path, members)
    return verify_shard(path, {"md5": file_md5(path)}, ["sample"])


def failing(results: dict) -> set[str]:
    assert set(results) == set(CHECKS)
    return {name for name, (passed, _) in results.items() if not passed}


def test_a_good_point_map_passes_every_check(tmp_path):
    assert failing(shard_with(tmp_path, good_point_map())) == set()


@pytest.mark.parametrize(
    ("frame", "row", "col", "channel", "value", "check"),
    [
        (1, 3, 4, 2, np.nan, "no_nan"),
        (2, 0, 0, 0, np.nan, "no_nan"),  # off the foreground too
        (3, 4, 5, 1, np.inf, "no_nan"),
        (0, 0, 0, 2, 0.001, "background_exactly_zero"),
        (0, 7, 15, 0, -1.0, "background_exactly_zero"),
        (1, 3, 4, 0, WIDTH - 0.5, "uv_inside_frame"),
        (1, 3, 4, 1, -0.25, "uv_inside_frame"),
        (2, 5, 8, 2, 0.0, "depth_positive_on_foreground"),
        (2, 5, 8, 2, -3.0, "depth_positive_on_foreground"),
    ],
)
def test_each_kind_of_bad_value_fails_its_check(tmp_path, frame, row, col, channel, value, check):
    point_map = good_point_map()
    point_map["uvd"][frame, row, col, channel] = value
    assert check in failing(shard_with(tmp_path, point_map))


def test_negative_zero_off_the_foreground_is_still_exactly_zero(tmp_path):
    point_map = good_point_map()
    point_map["uvd"][0, 0, 0] = -0.0
    assert failing(shard_with(tmp_path, point_map)) == set()
