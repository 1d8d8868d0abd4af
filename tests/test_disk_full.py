"""A full disk is one configuration error (`disk_full`) naming the file, the space left and the fix; the
half-written temporary file is removed and a write once there is room works as usual.

ENOSPC / EDQUOT injected into the writes (stage arrays, JSON, a published file), numpy's errno-less report of a
full disk, and SQLite's own "database or disk is full".
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from pointvid_pipeline.rejections import (
    ConfigurationError,
    RejectionClass,
    RejectionReason,
    rejection_class,
)
from pointvid_pipeline.storage.disk_full import disk_full_as_configuration_error
from pointvid_pipeline.storage.publish import publish_file
from pointvid_pipeline.storage.stage_store import StageStore, atomic_write_json

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
