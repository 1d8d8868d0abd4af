import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pointvid_pipeline.storage.manifest import read_manifest


def test_plain_csv_resolves_relative_paths(shared_videos):
    rows = read_manifest(str(shared_videos / "manifest.csv"))
    assert len(rows) == 6
    assert all(r.error is None and r.caption for r in rows)
    assert rows[0].video == str(shared_videos / "01_dog.mp4")
    assert len({r.key for r in rows}) == 6
    assert all("." not in r.key for r in rows)


def test_panda70m_layout_expands_one_row_per_clip(shared_videos):
    rows = read_manifest(str(shared_videos / "panda70m_style.csv"))
    assert len(rows) == 5  # 2 + 1 + 2 clips
    assert (rows[1].start, rows[1].end) == (4.004, 9.509)
    assert rows[2].start == 0.5 and rows[2].video.endswith("04_coffee.mp4")
    assert [r.row for r in rows] == list(range(5))


def test_jsonl_and_parquet_equal_csv_and_keys_survive_relocation(shared_videos, tmp_path):
    csv_rows = read_manifest(str(shared_videos / "manifest.csv"))
    records = [{"video": r.video.rsplit("/", 1)[1], "caption": r.caption} for r in csv_rows]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "m.parquet")
    for name in ("m.jsonl", "m.parquet"):
        rows = read_manifest(str(tmp_path / name))
        assert [r.key for r in rows] == [r.key for r in csv_rows]  # keys do not depend on the folder
        assert rows[0].video == str(tmp_path / "01_dog.mp4")


def test_fsspec_url_manifest_resolves_against_its_url(shared_videos):
    fs = fsspec.filesystem("memory")
    with fs.open("/videos/manifest.csv", "wb") as f:
        f.write((shared_videos / "manifest.csv").read_bytes())
    rows = read_manifest("memory://videos/manifest.csv")
    assert rows[0].video == "memory://videos/01_dog.mp4"


def test_bad_rows_are_kept_with_an_error(tmp_path):
    (tmp_path / "m.csv").write_text('video,caption,start\n,no video,\na.mp4,ok,abc\nb.mp4,,\n')
    rows = read_manifest(str(tmp_path / "m.csv"))
    assert [r.error is not None for r in rows] == [True, True, False]
    assert rows[2].caption == ""
    panda = tmp_path / "p.csv"
    panda.write_text('videoID,url,timestamp,caption,matching_score\nx,x.mp4,"[[\'0:00:00.000\', \'0:00:01.000\']]","[\'a\', \'b\']","[0.1]"\n')
    (row,) = read_manifest(str(panda))
    assert "timestamps" in row.error
