"""A full disk stops the run with one configuration line (`disk_full`) naming the file, the space left and the
fix; the half-written temporary file is removed and a rerun once there is room runs as usual.

Every machine: ENOSPC / EDQUOT injected into the writes (stage arrays, JSON, a published file), numpy's
errno-less report of a full disk, SQLite's own "database or disk is full", and a Dagster run and `pointvid run`
in-process with the injected error. As root where tmpfs can be mounted: `pointvid run` on a real filesystem
with 2 MB left, then again once the space is freed.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from dagster import DagsterInstance

from pointvid_pipeline.cli import main, register_partitions
from pointvid_pipeline.dagster_defs.assets import configuration_error
from pointvid_pipeline.dagster_defs.definitions import build_definitions
from pointvid_pipeline.pipeline import partition_rows
from pointvid_pipeline.rejections import (
    ConfigurationError,
    RejectionClass,
    RejectionReason,
    rejection_class,
)
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.disk_full import disk_full_as_configuration_error
from pointvid_pipeline.storage.publish import publish_file
from pointvid_pipeline.storage.stage_store import StageStore, atomic_write_json

REPO = Path(__file__).resolve().parents[1]
FIX = "free space there, or point --data-dir / POINTVID_DATA_DIR at a disk with room, and run again"
CAUSES = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def leftovers(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp"))


def write_half_then_fail(write, data: bytes, code: int) -> None:
    """Put half of `data` down, then find the disk full, as a real write does."""
    write(data[: len(data) // 2])
    raise OSError(code, os.strerror(code))


def fail_saves(monkeypatch, code: int) -> None:
    """np.save (the stage store's array writer) writes part of the array, then raises `code`."""
    monkeypatch.setattr(np, "save", lambda file, array, allow_pickle: write_half_then_fail(file.write, np.asarray(array).tobytes(), code))


def write_file_half_then_fail(path, data: bytes) -> None:
    with open(path, "wb") as f:
        write_half_then_fail(f.write, data, errno.ENOSPC)


@pytest.mark.parametrize("code", list(CAUSES))
def test_a_full_disk_while_writing_stage_arrays_is_one_configuration_line_and_leaves_no_partial_file(tmp_path, monkeypatch, code):
    store = StageStore(tmp_path / "stages")
    arrays = {"frames": np.arange(4096, dtype=np.uint8), "depth": np.ones(64, np.float32)}
    store.write_arrays("clips", "shard-00000", "scene", arrays)  # an earlier run's complete files
    with monkeypatch.context() as patch:
        fail_saves(patch, code)
        with pytest.raises(ConfigurationError) as raised:
            store.write_arrays("clips", "shard-00000", "scene", {"frames": np.zeros(4096, np.uint8)})
    error, target = raised.value, tmp_path / "stages" / "clips" / "shard-00000" / "scene" / "frames.npy"
    assert error.reason is RejectionReason.disk_full and rejection_class(error.reason) is RejectionClass.configuration
    line = error.one_line()
    assert line.startswith(f"configuration error (disk_full): {CAUSES[code]} writing {target} (") and line.endswith(FIX) and "\n" not in line
    assert " MB free on its disk)" in line
    assert leftovers(tmp_path) == []
    np.testing.assert_array_equal(np.load(target), arrays["frames"])  # the complete file is never replaced by half a one
    store.write_arrays("clips", "shard-00000", "scene", {"frames": np.zeros(4096, np.uint8)})  # room again: written as usual
    np.testing.assert_array_equal(store.read_arrays("clips", "shard-00000", "scene")["frames"], np.zeros(4096, np.uint8))


NUMPY_SHORT_WRITE = "5505024 requested and 1593216 written"  # how np.save (tofile) reports a full disk: no errno


@pytest.mark.parametrize(("refusal", "raised"), [(errno.EDQUOT, ConfigurationError), (None, OSError)])
def test_numpy_losing_the_errno_asks_the_filesystem(tmp_path, monkeypatch, refusal, raised):
    """The filesystem's answer to "room for the whole array?" decides: refused, a full disk; granted, numpy's own error."""

    def save(file, array, allow_pickle):
        file.write(b"\x93NUMPY")
        raise OSError(NUMPY_SHORT_WRITE)

    def fallocate(fd, offset, length):
        if refusal is not None:
            raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(np, "save", save)
    monkeypatch.setattr(os, "posix_fallocate", fallocate, raising=False)
    with pytest.raises(raised) as error:
        StageStore(tmp_path).write_arrays("clips", "shard-00000", "scene", {"frames": np.zeros(4096, np.uint8)})
    assert str(error.value).startswith("disk quota exceeded writing ") if refusal else str(error.value) == NUMPY_SHORT_WRITE
    assert leftovers(tmp_path) == []


def test_a_full_disk_while_writing_json_removes_the_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "dataset" / "summary.json"
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: write_file_half_then_fail(self, data))
    with pytest.raises(ConfigurationError, match=r"^no space left on device writing .*summary\.json \(\d+\.\d MB free on its disk\): free space there"):
        atomic_write_json(path, {"accepted": 1})
    assert leftovers(tmp_path) == [] and not path.exists()


def test_a_full_local_output_uri_names_its_setting(tmp_path, monkeypatch):
    from fsspec.implementations.local import LocalFileSystem

    source, out = tmp_path / "shard-00000.tar", tmp_path / "published"
    source.write_bytes(b"x" * 1000)
    out.mkdir()
    monkeypatch.setattr(LocalFileSystem, "put_file", lambda self, local, path, **kw: write_file_half_then_fail(path, Path(local).read_bytes()))
    with pytest.raises(ConfigurationError, match=r"point POINTVID_OUTPUT_URI at a disk with room") as raised:
        publish_file(source, f"file://{out}/shards/shard-00000.tar", {})
    assert raised.value.reason is RejectionReason.disk_full and f"writing {out}/shards/shard-00000.tar" in str(raised.value)
    assert leftovers(out) == []


def test_sqlite_finding_the_disk_full_is_a_full_disk(tmp_path):
    """SQLite's SQLITE_FULL (here from a page limit; on a full disk from the filesystem) is how a Dagster home says it."""
    database = tmp_path / "runs.db"
    connection = sqlite3.connect(database)
    connection.execute("PRAGMA max_page_count = 2")
    with pytest.raises(ConfigurationError, match=rf"^database or disk is full writing {database} "), disk_full_as_configuration_error(database):
        connection.execute("CREATE TABLE events (body TEXT)")
        connection.execute("INSERT INTO events VALUES (?)", ("x" * 100_000,))
    connection.close()


def test_other_write_errors_pass_through(tmp_path):
    with pytest.raises(PermissionError), disk_full_as_configuration_error(tmp_path / "x"):
        raise PermissionError(errno.EACCES, "Permission denied")


@pytest.fixture
def one_clip(tmp_path) -> PipelineSettings:
    return PipelineSettings(data_dir=tmp_path / "data", shard_size=1)


def test_the_dagster_step_fails_with_the_one_line(one_clip, monkeypatch):
    fail_saves(monkeypatch, errno.ENOSPC)
    with DagsterInstance.ephemeral() as instance:
        partition = register_partitions(instance, list(partition_rows(one_clip)))[0]
        result = build_definitions(one_clip).resolve_job_def("curate_shard").execute_in_process(partition_key=partition, instance=instance, raise_on_error=False)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    data = failure.step_failure_data.user_failure_data
    assert failure.step_key == "clips" and data.description.startswith("configuration error (disk_full): no space left on device writing ") and "\n" not in data.description
    assert (data.metadata["reason"].value, data.metadata["class"].value) == ("disk_full", "configuration")
    assert configuration_error(result).one_line() == data.description
    assert leftovers(one_clip.data_dir) == [] and not list(one_clip.stages_dir.glob("*/*/_index.json"))


def test_pointvid_run_prints_one_line_and_exits_2(one_clip, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    fail_saves(monkeypatch, errno.EDQUOT)
    code = main(["run", "--data-dir", str(one_clip.data_dir), "--shard-size", "1", "--partition", "shard-00000"])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert stderr.rstrip().splitlines()[-1].startswith("configuration error (disk_full): disk quota exceeded writing ")
    assert "Traceback" not in stderr and "Stack Trace" not in stderr and "FAILED partitions" not in stderr
    assert leftovers(one_clip.data_dir) == []


def test_pointvid_run_still_prints_any_other_step_error_with_its_stack_trace(one_clip, monkeypatch, capsys, tmp_path):
    """Dagster's console log is off in `pointvid run`; a failure that is not a configuration error is printed by the CLI."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(np, "save", lambda file, array, allow_pickle: 1 / 0)
    code = main(["run", "--data-dir", str(one_clip.data_dir), "--shard-size", "1", "--partition", "shard-00000"])
    stderr = capsys.readouterr().err
    assert code == 1 and "step clips failed: " in stderr and "ZeroDivisionError" in stderr and "Stack Trace" in stderr
    assert "FAILED partitions: ['shard-00000']" in stderr


@pytest.fixture
def nearly_full_tmpfs():
    """A 96 MB tmpfs with all but about 2 MB taken by a filler file (removing it frees the space). Needs root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root: the full-disk run on a real filesystem is skipped (the injected ENOSPC tests still run)")
    mount = Path(tempfile.mkdtemp(prefix="pointvid-full-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({' '.join(mounted.stderr.split())}): the full-disk run on a real filesystem is skipped")
    try:
        filler = mount / "filler"
        with open(filler, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize - 2 * 2**20)
        yield mount, filler
    finally:
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()


def test_pointvid_run_on_a_full_filesystem_then_again_once_there_is_room(nearly_full_tmpfs):
    mount, filler = nearly_full_tmpfs
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POINTVID_", "DAGSTER_HOME"))}  # Dagster's home: <data dir>/dagster_home, on the full disk too
    command = [sys.executable, "-m", "pointvid_pipeline.cli", "run", "--data-dir", str(mount / "data"), "--shard-size", "1", "--partition", "shard-00000"]
    full = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert full.returncode == 2, full.stdout + full.stderr
    line = full.stderr.rstrip().splitlines()[-1]  # the first write to find no room: a stage array, or Dagster's run storage in <data dir>/dagster_home
    assert re.match(rf"configuration error \(disk_full\): (no space left on device|database or disk is full) writing {mount}/data/", line), full.stderr
    assert " MB free on its disk): free space there, or point --data-dir / POINTVID_DATA_DIR" in line
    assert "Traceback" not in full.stderr and "Stack Trace" not in full.stderr
    assert leftovers(mount) == []

    filler.unlink()
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (mount / "data" / "shards" / "shard-00000.tar").stat().st_size > 0 and (mount / "data" / "dataset" / "README.md").exists()
    assert leftovers(mount) == []
