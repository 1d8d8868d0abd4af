"""Each failure lands in its class: permanent rows are tried once, transient ones are retried with backoff in the
run and by --retry-transient, configuration errors stop the run before any row with the fix in the message."""

import csv
import json
import logging
import os
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dagster import DagsterInstance
from local_servers import free_port

from pointvid_pipeline.backends.registry import lazy_backends
from pointvid_pipeline.cli import register_partitions
from pointvid_pipeline.dagster_defs.definitions import build_definitions
from pointvid_pipeline.pipeline import STAGES, partition_rows, retry_keys, run_stage
from pointvid_pipeline.rejections import REASONS, TRANSIENT_REASONS, ConfigurationError, RejectionClass, RejectionReason, reasons_markdown
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.stage_store import StageStore

DOC = Path(__file__).resolve().parents[1] / "docs" / "rejections.md"
CAPTION = "A person shuffles three red cups."


def test_every_reason_has_one_class_and_the_doc_shows_the_table():
    assert set(REASONS) == set(RejectionReason), f"reasons without a class in rejections.REASONS: {sorted(set(RejectionReason) - set(REASONS))}"
    assert TRANSIENT_REASONS == {reason.value for reason, (kind, _) in REASONS.items() if kind is RejectionClass.transient} == {"backend_error", "network_error", "read_timeout"}
    table = re.search(r"<!-- reasons table[^\n]*-->\n(.*?)<!-- end of reasons table -->", DOC.read_text(), re.DOTALL)
    assert table and table.group(1) == reasons_markdown(), "docs/rejections.md's table differs from rejections.reasons_markdown(): paste its output"


class ByteRangeHandler(BaseHTTPRequestHandler):
    """Serves the server's `payload` at any path, with the byte ranges fsspec's HTTP driver asks for."""

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.reply(body=False)

    def do_GET(self):
        self.server.requests += 1
        self.reply(body=True)

    def reply(self, body: bool):
        data = self.server.payload
        start, end = 0, len(data) - 1
        wanted = self.headers.get("Range")
        if wanted:
            first, last = wanted.removeprefix("bytes=").split("-")
            start, end = int(first), min(int(last) if last else end, end)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if body:
            self.wfile.write(data[start : end + 1])


def write_manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "caption", "start"])
        writer.writerows(rows)
    return path


class Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, shared_videos):
    """A missing file, a start of inf and a video behind a refused connection, tried 3 times with 0.05 s backoff."""
    folder = tmp_path_factory.mktemp("classes")
    cups = shared_videos / "02_cups.mp4"
    port = free_port()
    manifest = write_manifest(folder / "manifest.csv", [("missing.mp4", CAPTION, ""), (str(cups), CAPTION, "inf"), (f"http://127.0.0.1:{port}/cups.mp4", CAPTION, "")])
    settings = PipelineSettings(data_dir=folder / "data", manifest=str(manifest), retry_attempts=3, retry_backoff_s=0.05)
    (partition,) = partition_rows(settings)
    messages = Messages()
    logging.getLogger("pointvid_pipeline.pipeline").addHandler(messages)
    try:
        for stage in STAGES:
            run_stage(stage, partition, settings, lazy_backends("cpu"))
    finally:
        logging.getLogger("pointvid_pipeline.pipeline").removeHandler(messages)
    keys = [row.key for row in partition_rows(settings)[partition]]
    return settings, partition, keys, port, messages.lines


def ledger(settings: PipelineSettings, partition: str) -> dict[str, dict]:
    return {row["key"]: row for row in json.loads((settings.shards_dir / f"{partition}.json").read_text())["rejected"]}


def test_permanent_failures_are_tried_once_and_never_retried(first_run):
    settings, partition, keys, _, _ = first_run
    rows = ledger(settings, partition)
    assert [(rows[k]["stage"], rows[k]["reason"], rows[k]["class"], rows[k]["attempts"]) for k in keys[:2]] == [
        ("clips", "unreadable_video", "permanent", 1),
        ("clips", "invalid_manifest_row", "permanent", 1),
    ]
    assert "FileNotFoundError" in rows[keys[0]]["detail"] and "start inf is not a finite time" in rows[keys[1]]["detail"]
    assert retry_keys(StageStore(settings.stages_dir), partition, TRANSIENT_REASONS) == {keys[2]}


def test_refused_connection_is_transient_and_retried_with_backoff_in_the_run(first_run):
    settings, partition, keys, port, messages = first_run
    row = ledger(settings, partition)[keys[2]]
    assert (row["stage"], row["reason"], row["class"], row["attempts"]) == ("clips", "network_error", "transient", 3)
    assert f"127.0.0.1:{port}" in row["detail"] and "Connect" in row["detail"]
    waits = [re.search(r"try (\d) of 3\); trying again in ([\d.]+) s", line).groups() for line in messages if keys[2] in line]
    assert waits == [("1", "0.05"), ("2", "0.10")]


def test_retry_transient_command_fetches_the_video_once_the_server_answers(first_run, shared_videos, tmp_path):
    settings, partition, keys, port, _ = first_run
    server = ThreadingHTTPServer(("127.0.0.1", port), ByteRangeHandler)
    server.payload, server.requests = (shared_videos / "02_cups.mp4").read_bytes(), 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        command = ["pointvid", "run", "--retry-transient", "--manifest", settings.manifest, "--data-dir", str(settings.data_dir)]
        done = subprocess.run(command, env={**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}, check=False, capture_output=True, text=True, timeout=600)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{partition}: retrying 1 rows ({keys[2]})" in done.stderr
    assert server.requests > 0
    rows = ledger(settings, partition)
    assert (rows[keys[2]]["stage"], rows[keys[2]]["reason"]) == ("depth", "no_depth_backend")  # decoded; the cpu profile has no depth model
    assert [rows[k]["reason"] for k in keys[:2]] == ["unreadable_video", "invalid_manifest_row"]


CONFIGURATION_CASES = {
    "s3 without s3fs": ("s3://pointvid-test-bucket/clip.mp4", {}, "fix: pip install s3fs"),
    "unknown protocol": ("nosuchprotocol://clip.mp4", {}, "fsspec knows no protocol 'nosuchprotocol'"),
    "frame stride 0": (None, {"POINTVID_FRAME_STRIDE": "0"}, "POINTVID_FRAME_STRIDE must be a whole number of at least 1"),
}


@pytest.fixture
def configuration_case(request, tmp_path, shared_videos):
    video, env, message = CONFIGURATION_CASES[request.param]
    rows = [(str(shared_videos / "02_cups.mp4"), CAPTION, "")] + ([(video, CAPTION, "")] if video else [])
    return write_manifest(tmp_path / "manifest.csv", rows), env, message


@pytest.mark.parametrize("configuration_case", list(CONFIGURATION_CASES), indirect=True)
def test_configuration_error_stops_the_command_before_any_row(configuration_case, tmp_path):
    manifest, env, message = configuration_case
    if "s3fs" in message:
        assert subprocess.run(["python", "-c", "import s3fs"], check=False, capture_output=True).returncode != 0, "s3fs is installed here: this case needs an environment without it"
    command = ["pointvid", "run", "--manifest", str(manifest), "--data-dir", str(tmp_path / "data")]
    done = subprocess.run(command, env={**os.environ, **env, "DAGSTER_HOME": str(tmp_path / "home")}, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "configuration error" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "stages").exists()


@pytest.mark.parametrize("configuration_case", list(CONFIGURATION_CASES), indirect=True)
def test_configuration_error_fails_the_dagster_run_before_any_row(configuration_case, tmp_path):
    manifest, env, message = configuration_case
    settings = PipelineSettings(data_dir=tmp_path / "data", manifest=str(manifest))
    overrides = {"data_dir": str(settings.data_dir), "manifest": str(manifest), "frame_stride": int(env["POINTVID_FRAME_STRIDE"])} if env else None
    run_config = {"resources": {"pipeline_settings": {"config": overrides}}} if overrides else {}  # run config as the UI's launchpad sends it
    with DagsterInstance.ephemeral() as instance:
        (partition,) = register_partitions(instance, list(partition_rows(settings)))
        result = build_definitions(settings).resolve_job_def("curate_shard").execute_in_process(partition_key=partition, instance=instance, run_config=run_config, raise_on_error=False)
    assert not result.success
    failures = [event.step_failure_data.error.to_string() for event in result.all_events if event.is_step_failure]
    assert len(failures) == 1 and message in failures[0]
    assert not list((tmp_path / "data" / "stages").glob("*/*/_index.json")) and not list((tmp_path / "data" / "stages").glob("*/*/*/*.npy"))


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("POINTVID_FRAME_STRIDE", "0", "at least 1 (1 = every decoded frame), got 0"),
        ("POINTVID_FRAME_STRIDE", "two", "POINTVID_FRAME_STRIDE='two' is not a whole number"),
        ("POINTVID_GRID_SIZE", "-4", "at least 1"),
        ("POINTVID_BATCH_SIZE", "0", "at least 1"),
        ("POINTVID_SHARD_SIZE", "-1", "at least 1"),
        ("POINTVID_RETRY_ATTEMPTS", "0", "at least 1 (1 = no retry within the run)"),
        ("POINTVID_RETRY_BACKOFF_S", "-1", "between 0 and 60"),
        ("POINTVID_BACKGROUND_FRACTION", "nan", "between 0 and 1"),
        ("POINTVID_KEEP_STAGE_FILES", "some", "one of ('keep', 'accepted-only', 'none')"),
    ],
)
def test_invalid_settings_are_configuration_errors_naming_the_variable(variable, value, message):
    with pytest.raises(ConfigurationError) as raised:
        PipelineSettings.from_env({variable: value})
    assert variable in str(raised.value) and message in str(raised.value)
    assert raised.value.reason is RejectionReason.invalid_setting
