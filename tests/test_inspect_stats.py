"""`pointvid inspect` and `pointvid stats` on real shards of the curation pipeline."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pointvid_pipeline.cli import main
from pointvid_pipeline.dataset import build_dataset
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.shard_format import read_samples


@pytest.fixture(scope="module")
def shard_keys(shard_dir) -> list[str]:
    return list(read_samples(shard_dir / "shard-00000.tar"))


def test_inspect_lists_every_key_with_its_caption(shard_dir, shard_keys, capsys):
    assert main(["inspect", f"file://{shard_dir / 'shard-00000.tar'}"]) == 0  # an fsspec URL, as for remote shards
    out = capsys.readouterr().out
    assert "schema version 1.2; 3 samples" in out
    for key in shard_keys:
        line = next(line for line in out.splitlines() if line.startswith(key))
        assert " 16 " in line and "<synthetic>" in line


def test_inspect_key_writes_contact_sheet_and_16_frame_gif(shard_dir, shard_keys, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    key = shard_keys[1]
    assert main(["inspect", str(shard_dir / "shard-00000.tar"), "--key", key]) == 0
    out_dir = tmp_path / "inspect" / "shard-00000" / key
    assert f"contact_sheet: inspect/shard-00000/{key}/contact_sheet.png" in capsys.readouterr().out
    sheet_path, gif_path = out_dir / "contact_sheet.png", out_dir / "preview.gif"
    assert 30_000 < sheet_path.stat().st_size <= 300_000
    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    assert sheet.shape[0] >= 400 and sheet.shape[1] >= 1200  # 4 x 2 panels of the 448x256 frame
    assert sheet.std() > 30  # pictures, not a blank canvas
    with Image.open(gif_path) as gif:
        assert gif.n_frames == 16 and gif.size == (448, 256)


def test_inspect_unknown_key_exits_2_and_names_existing_keys(shard_dir, shard_keys, tmp_path, capsys):
    assert main(["inspect", str(shard_dir / "shard-00000.tar"), "--key", "no_such_scene", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no_such_scene" in err and shard_keys[0] in err
    assert not any(tmp_path.iterdir())
    assert main(["inspect", str(shard_dir / "shard-09999.tar")]) == 2


@pytest.fixture(scope="module")
def dataset_dir(shard_dir):
    settings = PipelineSettings(data_dir=shard_dir.parent)
    build_dataset(settings, ["shard-00000"])
    return settings.dataset_dir


def test_stats_prints_reasons_and_distributions_and_writes_png(dataset_dir, tmp_path, capsys):
    assert main(["stats", str(dataset_dir), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 input rows: 3 accepted, 0 rejected" in out and "(no rejections)" in out
    metas = json.loads((dataset_dir.parent / "shards" / "shard-00000.json").read_text())["sample_meta"].values()
    fractions = sorted(m["stats"]["tracks_3d"]["visible_fraction"] for m in metas)
    visible_line = next(line for line in out.splitlines() if line.startswith("visible fraction"))
    assert visible_line.split()[3:6] == [f"{f:.3f}" for f in fractions]  # min, median, max of 3 samples
    length_line = next(line for line in out.splitlines() if line.startswith("track length"))
    low, median, high = map(int, length_line.split(")", 1)[1].split()[:3])
    assert 1 <= low <= median <= high == 16 and "tracks of 3 samples" in length_line  # frame 0 always counts; some track lasts
    with Image.open(tmp_path / "stats.png") as picture:
        assert picture.size[0] >= 1000 and np.asarray(picture.convert("RGB")).std() > 10


def test_stats_without_stage_files_says_which_samples_lack_track_lengths(dataset_dir, tmp_path, capsys):
    copy = tmp_path / "copied" / "dataset"
    shutil.copytree(dataset_dir, copy)  # no stages/ beside it, as when only the dataset folder is shipped
    assert main(["stats", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "3 samples have no stages/tracks_3d files" in out
    assert (copy / "stats.png").stat().st_size > 10_000
    assert main(["stats", str(tmp_path / "nothing")]) == 2
