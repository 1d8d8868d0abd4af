"""Issue 14's "done when", end to end: `pointvid run` in child processes over every kind of bad row
(benchmarks/bad_input.py builds them and prints the table; `pytest -s` prints it here too).

Every row ends as one ledger row with its typed reason and class (or ships), accepted + rejected equals
the manifest's rows and the card's input rows, each run's peak resident memory stays under a bound,
no row spends longer in the clips stage than its budget, and a configuration error stops the run before
any row with exit code 2 and the fix in its message.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bad_input

from pointvid_pipeline.stages.clips import REFERENCE_SEARCH_FRAMES


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_videos):
    runs, stopped = bad_input.run_all(tmp_path_factory.mktemp("bad_input"))
    print("\n" + bad_input.markdown_table(runs, stopped))
    return runs, stopped


def finished(runs) -> list[tuple[bad_input.Manifest, bad_input.RunResult, list[bad_input.RowOutcome]]]:
    for _, result, _ in runs[0]:
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return runs[0]


def spreadsheet_run(runs) -> tuple[bad_input.Manifest, bad_input.RunResult, list[bad_input.RowOutcome]]:
    (run,) = [run for run in finished(runs) if run[0].format == "csv"]
    return run


def outcome(runs, name: str) -> bad_input.RowOutcome:
    return next(row for _, _, outcomes in runs[0] for row in outcomes if row.case.name == name)


def test_every_row_ends_with_its_typed_reason_and_class(runs):
    for manifest, _, outcomes in finished(runs):
        assert [(row.case.name, row.reason, row.kind, row.attempts) for row in outcomes] == [(case.name, case.reason, case.kind, case.attempts) for case in manifest.cases]


def test_accepted_plus_rejected_equals_the_manifest_rows_and_the_card_input_rows(runs):
    for manifest, result, _ in finished(runs):
        lines = (result.data_dir.parent / f"manifest.{manifest.format}").read_bytes().splitlines()
        manifest_rows = len(lines) - (manifest.format != "jsonl")  # a header line, but in JSONL
        summary = json.loads((result.data_dir / "dataset" / "summary.json").read_text())
        assert summary["accepted"] + summary["rejected"] == summary["input_rows"] == manifest_rows == len(manifest.cases)
        assert f"Input rows: {manifest_rows};" in (result.data_dir / "dataset" / "README.md").read_text()


def test_each_run_peak_memory_stays_bounded(runs):
    results = [result for _, result, _ in runs[0]] + [result for _, result in runs[1]]
    peaks = [round(result.peak_mb) for result in results]
    print(f"run peaks {peaks} MB (bound {bad_input.RUN_PEAK_MEMORY_BOUND_MB})")
    assert all(0 < peak < bad_input.RUN_PEAK_MEMORY_BOUND_MB for peak in peaks)


def test_no_row_spends_longer_than_its_budget_in_the_clips_stage(runs):
    for _, _, outcomes in finished(runs):
        for row in outcomes:
            if row.reason == "duplicate_row":  # ledgered before the stage opens anything
                assert row.clips_seconds is None
                continue
            assert row.clips_seconds is not None, f"{row.case.name}: no time recorded"
            assert row.clips_seconds <= row.case.budget_s + bad_input.ROW_TIME_SLACK_S, (row.case.name, row.clips_seconds)


def test_transient_rows_are_retried_in_the_run_with_the_configured_backoff(runs):
    _, result, _ = spreadsheet_run(runs)
    waits = re.findall(r"try (\d) of (\d)\); trying again in ([\d.]+) s", result.stderr)
    assert waits == [("1", "3", "0.05"), ("2", "3", "0.10")] * 2  # the refused connection, then the silent server
    silent = outcome(runs, "silent HTTP server")
    assert f"{bad_input.READ_TIMEOUT_S:g} s budget" in silent.detail
    assert "Connect" in outcome(runs, "refused connection (closed local port)").detail


def test_details_name_what_was_wrong(runs):
    details = {row.case.name: row.detail for _, _, outcomes in finished(runs) for row in outcomes}
    assert "1x1080 frames: aspect ratio above 4:1" in details["1x1080 video"]
    assert f"1024x576 frames: more than {bad_input.MAX_SOURCE_PIXELS} pixels" in details["1024x576, over a 960x540 pixel limit"]
    assert "a named pipe" in details["named pipe (FIFO) as video"] and "a directory" in details["directory as video"]
    assert "FileNotFoundError" in details["HTTP 404"] and "FileNotFoundError" in details["missing local file"]
    assert details["malformed JSONL line"].startswith("line 2: not JSON")
    assert "start inf is not a finite time" in details["start inf"]


def test_fade_raw_stream_and_cp1252_caption_pass_the_clips_stage(runs):
    csv_manifest, result, _ = spreadsheet_run(runs)
    clips = json.loads((result.data_dir / "stages" / "clips" / "shard-00000" / "_index.json").read_text())["accepted"]
    by_row = {meta["row"]: meta for meta in clips.values()}
    names = [case.name for case in csv_manifest.cases]
    fade = by_row[names.index("fade-in: 3 black frames first")]["source"]
    assert fade["skipped_leading_frames"] == 3 < REFERENCE_SEARCH_FRAMES
    assert by_row[names.index("raw H.264 stream, no timestamps")]["source"]["frame_timing"] == "frame order"
    cp1252 = names.index("caption line in cp1252")
    assert by_row[cp1252]["caption"] == csv_manifest.cases[cp1252].caption


def test_configuration_errors_stop_the_run_before_any_row(runs):
    assert importlib.util.find_spec("s3fs") is None, "s3fs is installed here: the s3:// case needs an environment without it"
    for case, result in runs[1]:
        assert result.returncode == 2, result.stdout + result.stderr[-3000:]
        assert case.fix in result.stderr and "configuration error" in result.stderr and "Traceback" not in result.stderr
        assert not (result.data_dir / "stages").exists() and not (result.data_dir / "shards").exists()
