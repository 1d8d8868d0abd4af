"""A full disk as a configuration error: no row can be written until there is room.

A write that runs out of space (ENOSPC) or quota (EDQUOT), or a Dagster instance whose SQLite storage
finds the disk full, raises ConfigurationError(`disk_full`) in one line naming the path, the space left
on its disk and the setting that moves it elsewhere. Callers remove what they half wrote first.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from contextlib import contextmanager
from pathlib import Path

from pointvid_pipeline.rejections import ConfigurationError, RejectionReason

DATA_DIR_SETTING = "--data-dir / POINTVID_DATA_DIR"
DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def disk_full_cause(error: BaseException | None) -> str | None:
    """How `error`, or an error it was raised from, says the disk is full; None when it does not."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return DISK_FULL[error.errno]
        if isinstance(error, sqlite3.Error) and getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:  # (Python 3.11+)
            return "database or disk is full"
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def disk_full_as_configuration_error(path: Path, setting: str = DATA_DIR_SETTING):
    """Raise ConfigurationError(disk_full) for a full disk met in the block while writing the local `path`.
    `setting`: the option or variable that puts `path` on another disk."""
    try:
        yield
    except ConfigurationError:
        raise
    except Exception as error:
        cause = disk_full_cause(error)
        if cause is None:
            raise
        folder = next(folder for folder in (Path(path), *Path(path).parents) if folder.exists())
        raise ConfigurationError(
            f"{cause} writing {path} ({shutil.disk_usage(folder).free / 1e6:.1f} MB free on its disk): free space there, or point {setting} at a disk with room, and run again",
            RejectionReason.disk_full,
        ) from error
