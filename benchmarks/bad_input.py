"""Bad input end to end: every kind of row issue 14 names, fed to `pointvid run` in child processes.

Three manifests, one per format, hold the rows: a spreadsheet's CSV (UTF-8 byte-order mark, a
`Video,Caption,Start` header, CRLF, one caption in cp1252) with the videos and URLs, a JSONL file with
a malformed line, a tab-separated file with special files. Two more runs hold a configuration error
each. Each run is a real `python -m pointvid_pipeline.cli run` child whose peak resident memory is read
with os.wait4; each row's time in the clips stage (open, read, decode, tries and backoff) comes from
the `row_seconds` metadata the run records in Dagster. Budgets are shortened through the environment
(RUN_ENV). tests/test_bad_input_run.py runs the same cases and asserts; this prints the table.

Run: python benchmarks/bad_input.py [--each] [--keep DIR]
  --each: every case in a run of its own (with the row it needs before it, see Case.after), so peak memory is per case.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the videos and local servers the tests make

from local_servers import free_port, http_server, silent_server
from media import SHARED_VIDEOS, write_video

READ_TIMEOUT_S = 2.0
RETRY_ATTEMPTS = 3
RETRY_BACKOFF_S = 0.05
MAX_SOURCE_PIXELS = 960 * 540  # the real clip (bedroom.mp4) is exactly this large; the "over the pixel limit" video is 1024x576
RUN_ENV = {
    "POINTVID_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
    "POINTVID_RETRY_ATTEMPTS": str(RETRY_ATTEMPTS),
    "POINTVID_RETRY_BACKOFF_S": str(RETRY_BACKOFF_S),
    "POINTVID_MAX_SOURCE_PIXELS": str(MAX_SOURCE_PIXELS),
}
RUN_PEAK_MEMORY_BOUND_MB = 600  # measured 300-330 MB on a 2-core machine (Dagster, OpenCV, PyAV loaded); a 1x1080 video used to take 10 GB
ROW_TIME_SLACK_S = 5.0  # on top of a row's budget: a shared machine, decoding, the tries' own work
REAL_CLIP = "bedroom.mp4"
REAL_CAPTION = "Two children jump up and down on a bed."
RUN_TIMEOUT_S = 600


@dataclass(frozen=True)
class Case:
    """One manifest row and where it must end: `reason` and `kind` (its class), or "" for a shipped sample.

    `line`: the row's manifest line as written, when it is not a well-formed record (a malformed JSONL line).
    `encoding`: how the row's line is encoded in a text manifest. `after`: the case whose row this one needs before
    it in a manifest of its own (the row a duplicate repeats; a readable line beside a malformed one).
    """

    name: str
    video: str
    caption: str
    reason: str
    kind: str
    start: str = ""
    line: str = ""
    encoding: str = "utf-8"
    after: str = ""

    @property
    def attempts(self) -> int:
        """Tries the pipeline makes: transient failures are retried in the run."""
        return RETRY_ATTEMPTS if self.kind == "transient" else 1

    @property
    def budget_s(self) -> float:
        """Wall clock the clips stage may spend on the row: the read budget per try, plus the backoff between tries."""
        return self.attempts * READ_TIMEOUT_S + sum(RETRY_BACKOFF_S * 2**i for i in range(self.attempts - 1))


@dataclass(frozen=True)
class Manifest:
    """A manifest file in one format (`csv`, `jsonl`, `tsv`) holding `cases` in order."""

    format: str
    cases: tuple[Case, ...]
    env: dict = field(default_factory=dict)

    def write(self, path: Path) -> Path:
        path.write_bytes(MANIFEST_WRITERS[self.format](self.cases))
        return path


@dataclass(frozen=True)
class ConfigurationCase:
    """A run that must stop with exit code 2 before any row, its message naming `fix`."""

    name: str
    manifest: Manifest
    fix: str


@dataclass
class RunResult:
    returncode: int
    seconds: float
    peak_mb: float
    stdout: str
    stderr: str
    data_dir: Path


@dataclass
class RowOutcome:
    case: Case
    reason: str  # "" = shipped
    kind: str
    stage: str
    attempts: int
    detail: str
    clips_seconds: float | None  # None for a duplicate row: never opened, its key's time is the first row's


def _delimited(cases: tuple[Case, ...], delimiter: str, header: list[str]) -> list[tuple[str, str]]:
    lines = []
    for case in cases:
        text = io.StringIO()
        csv.writer(text, delimiter=delimiter, lineterminator="\r\n").writerow([case.video, case.caption, case.start])
        lines.append((case.line or text.getvalue(), case.encoding))
    return [(delimiter.join(header) + "\r\n", "utf-8"), *lines]


def _spreadsheet_csv(cases: tuple[Case, ...]) -> bytes:
    """As Excel's "CSV UTF-8" saves it (byte-order mark, CRLF, capitalised header), one line pasted in from a cp1252 file."""
    return b"\xef\xbb\xbf" + b"".join(line.encode(encoding) for line, encoding in _delimited(cases, ",", ["Video", "Caption", "Start"]))


def _tsv(cases: tuple[Case, ...]) -> bytes:
    return b"".join(line.encode(encoding) for line, encoding in _delimited(cases, "\t", ["video", "caption", "start"]))


def _jsonl(cases: tuple[Case, ...]) -> bytes:
    return "".join((case.line or json.dumps({"video": case.video, "caption": case.caption})) + "\n" for case in cases).encode()


MANIFEST_WRITERS = {"csv": _spreadsheet_csv, "jsonl": _jsonl, "tsv": _tsv}


class NotFound(BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.send_error(404)

    def do_GET(self):
        self.send_error(404)

    def log_message(self, *_):
        pass


def noise(count: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(count * height + width).integers(40, 220, size=(count, height, width, 3), dtype=np.uint8)


def real_frames(count: int) -> np.ndarray:
    """The real clip's first `count` frames at 448x256."""
    with av.open(str(SHARED_VIDEOS / REAL_CLIP)) as container:
        frames = [frame.to_ndarray(width=448, height=256, format="rgb24") for frame, _ in zip(container.decode(video=0), range(count))]
    return np.stack(frames)


def build_cases(folder: Path, servers: ExitStack) -> tuple[list[Manifest], list[ConfigurationCase]]:
    """Write the videos and special files into `folder`, start the local servers on `servers`; the manifests and configuration cases."""
    real = real_frames(40)
    fade = real.copy()
    fade[:3] = 0
    videos = {
        "thin_1x1080": write_video(folder / "thin_1x1080.mp4", noise(20, 1080, 1), pix_fmt="yuv444p"),
        "thin_1x256": write_video(folder / "thin_1x256.mp4", noise(20, 256, 1), pix_fmt="yuv444p"),
        "over_limit": write_video(folder / "over_limit_1024x576.mp4", noise(3, 576, 1024), preset="ultrafast"),
        "fade": write_video(folder / "fade_in.mp4", fade),
        "raw": write_video(folder / "raw_stream.h264", real),
        "black": write_video(folder / "all_black.mp4", np.zeros((20, 96, 160, 3), np.uint8)),
    }
    os.mkfifo(folder / "named_pipe.mp4")
    (folder / "folder.mp4").mkdir()
    silent_url = servers.enter_context(silent_server())
    not_found_url = servers.enter_context(http_server(NotFound)) + "/gone.mp4"
    refused_url = f"http://127.0.0.1:{free_port()}/clip.mp4"
    clip = str(SHARED_VIDEOS / REAL_CLIP)
    real_row = Case(f"real clip ({REAL_CLIP})", clip, REAL_CAPTION, "no_depth_backend", "permanent")
    spreadsheet = (
        Case("1x1080 video", str(videos["thin_1x1080"]), "A ball rolls.", "unsupported_frame_shape", "permanent"),
        Case("1x256 video", str(videos["thin_1x256"]), "A ball rolls.", "unsupported_frame_shape", "permanent"),
        Case("1024x576, over a 960x540 pixel limit", str(videos["over_limit"]), "A ball rolls.", "unsupported_frame_shape", "permanent"),
        Case("fade-in: 3 black frames first", str(videos["fade"]), REAL_CAPTION, "no_depth_backend", "permanent"),
        Case("raw H.264 stream, no timestamps", str(videos["raw"]), REAL_CAPTION, "no_depth_backend", "permanent"),
        Case("all black", str(videos["black"]), "A ball rolls.", "black_first_frame", "permanent"),
        real_row,
        replace(real_row, name="duplicate of the real clip's row", reason="duplicate_row", after=real_row.name),
        Case("caption naming no object", clip, "The light changes slowly.", "no_object_in_caption", "permanent", start="2"),
        Case("caption line in cp1252", clip, "Two children jump on a bed \u2013 caf\u00e9 au lait sheets.", "no_depth_backend", "permanent", start="1", encoding="cp1252"),
        Case("start inf", clip, REAL_CAPTION, "invalid_manifest_row", "permanent", start="inf"),
        Case("refused connection (closed local port)", refused_url, "A dog runs.", "network_error", "transient"),
        Case("silent HTTP server", silent_url, "A dog runs.", "read_timeout", "transient"),
        Case("HTTP 404", not_found_url, "A dog runs.", "unreadable_video", "permanent"),
    )
    missing = Case("missing local file", str(folder / "missing.mp4"), "A dog runs.", "unreadable_video", "permanent")
    data_tool = (
        missing,
        Case("malformed JSONL line", "", "", "invalid_manifest_row", "permanent", line='{"video": "a.mp4", "caption": "A dog runs."', after=missing.name),
        Case("no caption", clip, "", "missing_caption", "permanent"),
    )
    special_files = (
        Case("named pipe (FIFO) as video", str(folder / "named_pipe.mp4"), "A dog runs.", "unreadable_video", "permanent"),
        Case("directory as video", str(folder / "folder.mp4"), "A dog runs.", "unreadable_video", "permanent"),
    )
    manifests = [Manifest("csv", spreadsheet), Manifest("jsonl", data_tool), Manifest("tsv", special_files)]
    configuration = [
        ConfigurationCase("s3:// URL without s3fs", Manifest("csv", (real_row, Case("s3 video", "s3://pointvid-test-bucket/clip.mp4", "A dog runs.", "", ""))), "fix: pip install s3fs"),
        ConfigurationCase("POINTVID_FRAME_STRIDE=0", Manifest("csv", (real_row,), {"POINTVID_FRAME_STRIDE": "0"}), "POINTVID_FRAME_STRIDE must be a whole number of at least 1"),
    ]
    return manifests, configuration


# A process forked from a large one (pytest after many tests) keeps the parent's resident-set high-water mark in
# ru_maxrss across exec, so the run is started by this small launcher, whose own wait4 measures only the run (and
# the processes it waits for) and writes "ru_maxrss_kb exit_code" to argv[1].
LAUNCHER = (
    "import os, subprocess, sys; child = subprocess.Popen(sys.argv[2:]); _, status, usage = os.wait4(child.pid, 0); "
    "open(sys.argv[1], 'w').write(f'{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}')"
)


def measured_run(manifest: Manifest, folder: Path) -> RunResult:
    """`pointvid run` over `manifest` in a child process; its wall time and peak resident memory (ru_maxrss from wait4)."""
    folder.mkdir(parents=True)
    path = manifest.write(folder / f"manifest.{manifest.format}")
    data_dir = folder / "data"
    env = {**os.environ, **RUN_ENV, **manifest.env, "PYTHONPATH": str(ROOT), "DAGSTER_HOME": str(data_dir / "dagster_home")}
    command = [sys.executable, "-m", "pointvid_pipeline.cli", "run", "--manifest", str(path), "--data-dir", str(data_dir)]
    measured = folder / "peak_and_exit.txt"
    with open(folder / "stdout.txt", "w") as stdout, open(folder / "stderr.txt", "w") as stderr:
        started = time.perf_counter()
        launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(measured), *command], cwd=folder, env=env, stdout=stdout, stderr=stderr, start_new_session=True)
        watchdog = threading.Timer(RUN_TIMEOUT_S, os.killpg, (launcher.pid, signal.SIGKILL))
        watchdog.start()
        launcher.wait()
        watchdog.cancel()
        seconds = time.perf_counter() - started
    peak_kb, returncode = map(int, measured.read_text().split()) if measured.exists() else (0, launcher.returncode)
    return RunResult(returncode, seconds, peak_kb / 1024, (folder / "stdout.txt").read_text(), (folder / "stderr.txt").read_text(), data_dir)


def row_seconds(data_dir: Path, stage: str) -> dict[str, float]:
    """Key -> the seconds `stage` spent on the row, as the run recorded them in its Dagster materializations."""
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

    partitions = [shard["partition"] for shard in json.loads((data_dir / "dataset" / "summary.json").read_text())["shards"]]
    seconds: dict[str, float] = {}
    with DagsterInstance.from_config(str(data_dir / "dagster_home")) as instance:
        for partition in partitions:
            (record,) = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(stage), asset_partitions=[partition]), limit=1).records
            seconds.update(record.asset_materialization.metadata["row_seconds"].value)
    return seconds


def row_outcomes(manifest: Manifest, data_dir: Path) -> list[RowOutcome]:
    """Each case's end as the run recorded it: its ledger row (dataset/rejections.parquet) or its shipped sample."""
    import pyarrow.parquet as pq

    ledger = {row["row"]: row for row in pq.read_table(data_dir / "dataset" / "rejections.parquet").to_pylist()}
    shipped = {meta["row"]: key for index in sorted((data_dir / "shards").glob("*.json")) for key, meta in json.loads(index.read_text())["sample_meta"].items()}
    keys = {row: entry["key"] for row, entry in ledger.items()} | shipped
    clips = row_seconds(data_dir, "clips")
    outcomes = []
    for position, case in enumerate(manifest.cases):
        entry = ledger.get(position, {"reason": "", "class": "", "stage": "", "attempts": 1, "detail": ""})
        seconds = None if entry["reason"] == "duplicate_row" else clips.get(keys.get(position))
        outcomes.append(RowOutcome(case, entry["reason"], entry["class"], entry["stage"], entry["attempts"], entry["detail"], seconds))
    return outcomes


def run_all(folder: Path, each: bool = False) -> tuple[list[tuple[Manifest, RunResult, list[RowOutcome]]], list[tuple[ConfigurationCase, RunResult]]]:
    """Every manifest (or, with `each`, every case alone) and every configuration case, run and read back."""
    with ExitStack() as servers:
        manifests, configuration = build_cases(folder, servers)
        if each:
            by_name = {case.name: case for manifest in manifests for case in manifest.cases}
            manifests = [replace(manifest, cases=(by_name[case.after], case) if case.after else (case,)) for manifest in manifests for case in manifest.cases]
        runs = []
        for number, manifest in enumerate(manifests):
            result = measured_run(manifest, folder / f"run-{number:02d}-{manifest.format}")
            outcomes = row_outcomes(manifest, result.data_dir) if result.returncode == 0 else []
            runs.append((manifest, result, outcomes[-1:] if each else outcomes))
        stopped = [(case, measured_run(case.manifest, folder / f"configuration-{number}")) for number, case in enumerate(configuration)]
    return runs, stopped


def markdown_table(runs, stopped) -> str:
    lines = [
        "| manifest | case | outcome (reason / class) | stage | tries | clips stage s | budget s | run peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for manifest, result, outcomes in runs:
        for row in outcomes:
            outcome = f"`{row.reason}` / {row.kind}" if row.reason else "shipped"
            seconds = "-" if row.clips_seconds is None else f"{row.clips_seconds:.2f}"
            lines.append(f"| {manifest.format} | {row.case.name} | {outcome} | {row.stage} | {row.attempts} | {seconds} | {row.case.budget_s:.2f} | {result.peak_mb:.0f} |")
        if not outcomes:
            lines.append(f"| {manifest.format} | {', '.join(case.name for case in manifest.cases)} | run failed, exit {result.returncode} | | | | | {result.peak_mb:.0f} |")
    for case, result in stopped:
        message = next((line[line.index("configuration error") :] for line in result.stderr.splitlines() if "configuration error" in line), result.stderr.strip()[-200:])
        lines.append(f"| {case.manifest.format} | {case.name} | exit {result.returncode}: {message} | before any row | | {result.seconds:.2f} (whole run) | | {result.peak_mb:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--each", action="store_true", help="every case in a run of its own: peak memory per case")
    parser.add_argument("--keep", help="folder for the videos, manifests and runs (default: a temporary one, removed)")
    args = parser.parse_args()
    if not (SHARED_VIDEOS / REAL_CLIP).is_file():
        print(f"bad_input: the real clip {SHARED_VIDEOS / REAL_CLIP} is absent (real clips are read from ../shared/videos)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(args.keep or temporary)
        folder.mkdir(parents=True, exist_ok=True)
        runs, stopped = run_all(folder, args.each)
    print(f"settings: {' '.join(f'{k}={v}' for k, v in RUN_ENV.items())}; cpu profile\n")
    print(markdown_table(runs, stopped))
    print(
        f"\nbudget: tries x POINTVID_READ_TIMEOUT_S + the backoff between tries; the timer runs on URLs, local regular files have none (their decode is bounded by the frames it needs) and are held to the same figure. tests/test_bad_input_run.py allows {ROW_TIME_SLACK_S:g} s over it and {RUN_PEAK_MEMORY_BOUND_MB} MB per run."
    )
    print("\nruns: " + ", ".join(f"{manifest.format} {len(manifest.cases)} rows {result.seconds:.0f} s" for manifest, result, _ in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
