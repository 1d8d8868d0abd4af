import json

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pointvid_pipeline.backends.registry import lazy_backends
from pointvid_pipeline.dataset import build_dataset
from pointvid_pipeline.pipeline import STAGES, partition_rows, run_stage
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.manifest import ManifestError, read_manifest
from pointvid_pipeline.storage.stage_store import StageStore
from pointvid_pipeline.tools.dataset_stats import collect, format_report


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


# ---------------------------------------------------------------- files as spreadsheets and data tools write them


def _videos_and_captions(rows):
    return [(r.video.rsplit("/", 1)[1], r.caption) for r in rows]


EXPECTED = [("01_dog.mp4", "A dog, on a leash"), ("02_cups.mp4", "Cups on a table")]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bom.csv", b"\xef\xbb\xbfvideo,caption\r\n01_dog.mp4,\"A dog, on a leash\"\r\n02_cups.mp4,Cups on a table\r\n"),  # Excel "CSV UTF-8"
        ("header.csv", b" Video , CAPTION\n01_dog.mp4,\"A dog, on a leash\"\n02_cups.mp4,Cups on a table\n"),
        ("aliases.csv", b"Path,Text\n01_dog.mp4,\"A dog, on a leash\"\n02_cups.mp4,Cups on a table\n"),
        ("tabs.tsv", b"video\tcaption\n01_dog.mp4\tA dog, on a leash\n02_cups.mp4\tCups on a table\n"),
        ("tabs.csv", b"Video Path\tCaption\n01_dog.mp4\tA dog, on a leash\n02_cups.mp4\tCups on a table\n"),  # sniffed from the header
        ("semicolons.csv", b"video;caption\n01_dog.mp4;A dog, on a leash\n02_cups.mp4;Cups on a table\n"),  # Excel in a comma-decimal locale
        ("unicode.txt", "video\tcaption\r\n01_dog.mp4\tA dog, on a leash\r\n02_cups.mp4\tCups on a table\r\n".encode("utf-16")),  # Excel "Unicode text"
    ],
)
def test_spreadsheet_exports_read_every_row(name, content, tmp_path):
    (tmp_path / name).write_bytes(content)
    rows = read_manifest(str(tmp_path / name))
    assert [r.error for r in rows] == [None, None]
    assert _videos_and_captions(rows) == EXPECTED


def test_cp1252_lines_are_read_in_the_fallback_encoding_and_utf8_lines_stay_utf8(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"video,caption\n" + "01_dog.mp4,Un chien au caf\u00e9 \u20ac\n".encode("cp1252") + "02_cups.mp4,Tasses \u00e0 caf\u00e9\n".encode("utf-8"))
    rows = read_manifest(str(path))
    assert [r.caption for r in rows] == ["Un chien au caf\u00e9 \u20ac", "Tasses \u00e0 caf\u00e9"]
    path.write_bytes(b"video,caption\n01_dog.mp4,caf\xe9 \x81\n02_cups.mp4,ok\n")  # 0x81 is not cp1252
    bad, good = read_manifest(str(path))
    assert bad.error == "line 2: line 2 is neither UTF-8 nor the fallback encoding (set POINTVID_MANIFEST_ENCODING)" and good.error is None
    assert read_manifest(str(path), fallback_encoding="latin-1")[0].caption == "caf\u00e9 \x81"
    path.write_bytes(b"\xef\xbb\xbfVideo,Caption\r\n01_dog.mp4,A dog\r\n" + "02_cups.mp4,Tasses \u00e0 caf\u00e9\r\n".encode("cp1252"))  # "CSV UTF-8", a line pasted from a cp1252 file
    assert [(r.caption, r.error) for r in read_manifest(str(path))] == [("A dog", None), ("Tasses \u00e0 caf\u00e9", None)]


def test_a_malformed_jsonl_line_is_ledgered_with_its_line_number_and_the_rest_is_read(shared_videos, tmp_path):
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"video": str(shared_videos / "01_dog.mp4"), "caption": "A dog walks on a path."}) + "\n"
        + json.dumps({"video": str(shared_videos / "02_cups.mp4"), "caption": "A person shuffles cups."}) + "\n"
        + '{"video": "03_blocks.mp4", "caption": "Hands move blocks."\n'  # no closing brace
        + "\n"
        + json.dumps({"video": str(shared_videos / "04_coffee.mp4"), "caption": "A person pours water into a cup."}) + "\n"
        + "[1, 2]\n"
    )
    rows = read_manifest(str(tmp_path / "m.jsonl"))
    assert [r.error for r in rows] == [None, None, "line 3: not JSON: Expecting ',' delimiter at column 59", None, "line 6: a JSON list, not an object"]
    (tmp_path / "broken.jsonl").write_text('{"video": "03_blocks.mp4", "caption": "Hands move blocks."\n')
    with pytest.raises(ManifestError, match=r"not one of its 1 records can be read \(JSON Lines, utf-8\); the first, line 1: not JSON: Expecting ','"):
        read_manifest(str(tmp_path / "broken.jsonl"))
    settings = PipelineSettings(data_dir=tmp_path / "data", manifest=str(tmp_path / "m.jsonl"))
    (partition,) = partition_rows(settings)
    report = run_stage("clips", partition, settings, lazy_backends("cpu"))
    assert report.accepted == 3  # the three real clips decode
    ledger = StageStore(settings.stages_dir).read_index("clips", partition).rejected
    assert [(r["row"], r["reason"], r["detail"].split(":")[0]) for r in ledger] == [(2, "invalid_manifest_row", "line 3"), (4, "invalid_manifest_row", "line 6")]


def test_json_file_holding_one_object_is_one_row_and_broken_json_names_its_line(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps({"video": "01_dog.mp4", "caption": "A dog, on a leash"}, indent=2))
    (row,) = read_manifest(str(tmp_path / "one.json"))
    assert row.error is None and _videos_and_captions([row]) == EXPECTED[:1]
    (tmp_path / "list.json").write_text(json.dumps([{"video": "01_dog.mp4", "caption": "A dog, on a leash"}, "02_cups.mp4"]))
    assert [r.error for r in read_manifest(str(tmp_path / "list.json"))] == [None, "item 1: a JSON str, not an object"]
    (tmp_path / "broken.json").write_text('[\n  {"video": "01_dog.mp4"},\n  {"video": "02_cups.mp4",}\n]\n')
    with pytest.raises(ManifestError, match=r"broken.json is not valid JSON \(.*line 3 column 27"):
        read_manifest(str(tmp_path / "broken.json"))


def test_a_parquet_cell_that_does_not_convert_fails_only_its_row(tmp_path):
    data = b"01_dog.mp4" + b"02_\xffcups.mp4" + b"04_coffee.mp4"  # the middle value is not UTF-8, written unchecked
    offsets = np.cumsum([0, 10, 12, 13], dtype=np.int32)
    video = pa.Array.from_buffers(pa.string(), 3, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)])
    pq.write_table(pa.table({"video": video, "caption": ["A dog.", "Cups.", None], "start": ["0:00:01.5", "0", "soon"]}), tmp_path / "m.parquet")
    rows = read_manifest(str(tmp_path / "m.parquet"))
    assert rows[0].error is None and rows[0].start == 1.5 and rows[0].video.endswith("01_dog.mp4")
    assert rows[1].error.startswith("row 1: column 'video': UnicodeDecodeError")
    assert rows[2].error.startswith("row 2: bad start/end") and rows[2].video.endswith("04_coffee.mp4")


def test_no_video_column_is_a_configuration_error_naming_the_columns_found(tmp_path):
    (tmp_path / "m.csv").write_text("clip;caption;start\n01_dog.mp4;A dog.;0\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(str(tmp_path / "m.csv"))
    message = str(info.value)
    assert "has no video column: found columns ['clip', 'caption', 'start'] (semicolon-separated, utf-8)" in message
    assert "video, path, url" in message and "Panda-70M" in message and "\n" not in message
    with pytest.raises(ManifestError, match="cannot read manifest .*no_such.csv: FileNotFoundError"):
        read_manifest(str(tmp_path / "no_such.csv"))


def test_csv_records_that_do_not_parse_fail_alone(tmp_path):
    (tmp_path / "m.csv").write_text('video,caption\n01_dog.mp4,A dog, on a leash\n02_cups.mp4,"Cups "on" a table"\n03_blocks.mp4,Blocks,,\n04_coffee.mp4,"never closed\n05_juggle.mp4,Juggling\n')
    rows = read_manifest(str(tmp_path / "m.csv"))
    assert [r.error for r in rows] == [
        "line 2: 3 fields but the header has 2 (an unquoted delimiter in a caption?)",
        "line 3: ',' expected after '\"'",
        None,
        "line 5: unexpected end of data (lines 5-6 not read: a quote left open?)",
    ]


def test_card_counts_input_rows_from_the_manifest_including_rows_not_in_a_finished_shard(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        '{"video": "missing_1.mp4", "caption": "A dog runs."}\n'
        "not json\n"
        '{"video": "", "caption": "A cat sits."}\n'
        '{"video": "missing_2.mp4", "caption": "A bird flies."}\n'
        '{"video": "missing_3.mp4", "caption": "A ball rolls."}\n'
    )
    settings = PipelineSettings(data_dir=tmp_path / "data", manifest=str(tmp_path / "m.jsonl"), shard_size=3)
    partitions = list(partition_rows(settings))
    assert partitions == ["shard-00000", "shard-00001"]
    for stage in STAGES:  # only the first partition is curated
        run_stage(stage, partitions[0], settings, lazy_backends("cpu"))
    summary = build_dataset(settings, partitions)
    assert (summary["input_rows"], summary["accepted"], summary["rejected"], summary["rows_without_shard"]) == (5, 0, 3, 2)
    assert summary["rejections_by_reason"] == {"invalid_manifest_row": 2, "unreadable_video": 1}
    assert summary["partitions_without_shard"] == ["shard-00001"]
    card = (settings.dataset_dir / "README.md").read_text()
    assert "Input rows: 5; accepted samples: 0; rejected: 3; in partitions without a finished shard: 2 (shard-00001)." in card
    assert format_report(collect(settings.dataset_dir)).startswith("5 input rows: 0 accepted, 3 rejected, 2 in partitions without a finished shard\n")


def test_a_manifest_that_loses_its_video_column_fails_the_dagster_run_with_the_message(tmp_path):
    from dagster import DagsterInstance

    from pointvid_pipeline.dagster_defs.assets import clip_shards
    from pointvid_pipeline.dagster_defs.definitions import build_definitions

    manifest = tmp_path / "m.csv"
    manifest.write_text("video,caption\nmissing.mp4,A dog runs.\n")
    settings = PipelineSettings(data_dir=tmp_path / "data", manifest=str(manifest))
    (partition,) = partition_rows(settings)
    manifest.write_text("clip,caption\nmissing.mp4,A dog runs. The column was renamed since.\n")
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions(clip_shards.name, [partition])
        result = build_definitions(settings).resolve_job_def("curate_shard").execute_in_process(partition_key=partition, instance=instance, raise_on_error=False)
    assert not result.success
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    assert failure.step_key == "clips" and "ManifestError" in str(failure.event_specific_data.error) and "found columns ['clip', 'caption']" in str(failure.event_specific_data.error)
    assert not (settings.stages_dir / "clips" / partition).exists()
