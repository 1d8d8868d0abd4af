"""Files between stages: `<data_dir>/stages/<stage>/<partition>/`.

Each stage writes a folder of `.npy` arrays per accepted sample (`<key>/<name>.npy`, read back
memory-mapped so a stage pages in only the arrays it touches) and, last, `_index.json` with the
accepted keys (plus per-sample metadata) and the cumulative rejection ledger of the partition.
Every file is written to a temporary name and renamed, so a killed run never leaves a file
that looks complete; the index is written last, so a stage counts as done only once it exists.
A write that finds the disk full removes its temporary file and raises a one-line
ConfigurationError (`disk_full`, see storage/disk_full.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pointvid_pipeline.storage.disk_full import (
    DATA_DIR_SETTING,
    disk_full_as_configuration_error,
)

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path, setting: str = DATA_DIR_SETTING):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    Temporary files of an earlier writer of `path` that was killed (SIGKILL skips the cleanup
    below) are removed first: every path here has one writer at a time. A full disk raises
    ConfigurationError(disk_full) once the temporary file is removed. `setting`: what moves `path` to another disk.
    """
    with disk_full_as_configuration_error(path, setting):
        path.parent.mkdir(parents=True, exist_ok=True)
        for partial in path.parent.glob(f".{path.name}.*.tmp"):
            partial.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are shared data
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes, setting: str = DATA_DIR_SETTING) -> None:
    with atomic_path(path, setting) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path, data, setting: str = DATA_DIR_SETTING) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1, default=_json_default) + "\n").encode(), setting)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _save_array(path: Path, array: np.ndarray) -> None:
    """np.save. numpy's tofile reports a full disk without errno ("N requested and M written", "Not enough free
    space to write N bytes"); the filesystem is then asked for the room the array needs, and its refusal, with
    the errno (ENOSPC, EDQUOT) that tells a full disk, is raised instead. (Writing through f.write keeps the
    errno but copies every array: 1.7x the time to write a synthetic clip's 40 MB of `clips` arrays on ext4.)"""
    with open(path, "wb") as f:
        try:
            np.save(f, array, allow_pickle=False)
        except OSError as error:
            if error.errno is None and hasattr(os, "posix_fallocate"):  # (not on macOS: numpy's error stays)
                os.posix_fallocate(f.fileno(), 0, array.nbytes)
            raise


@dataclass
class StageIndex:
    """What a stage produced for one partition. `rejected` includes upstream rejections."""

    stage: str
    partition: str
    accepted: dict[str, dict] = field(default_factory=dict)  # key -> per-sample metadata
    rejected: list[dict] = field(default_factory=list)  # ledger rows: key, row, stage, reason, detail

    def to_json(self) -> dict:
        return {"stage": self.stage, "partition": self.partition, "accepted": self.accepted, "rejected": self.rejected}


class StageStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def partition_dir(self, stage: str, partition: str) -> Path:
        return self.root / stage / partition

    def write_arrays(self, stage: str, partition: str, key: str, arrays: dict[str, np.ndarray]) -> None:
        folder = self.partition_dir(stage, partition) / key
        for stale in folder.glob("*.npy"):
            if stale.stem not in arrays:
                stale.unlink()
        for name, array in arrays.items():
            with atomic_path(folder / f"{name}.npy") as tmp:
                _save_array(tmp, np.asarray(array))

    def read_arrays(self, stage: str, partition: str, key: str) -> dict[str, np.ndarray]:
        """Read-only memory maps; copy an array before changing it."""
        folder = self.partition_dir(stage, partition) / key
        return {path.stem: np.load(path, mmap_mode="r") for path in sorted(folder.glob("*.npy"))}

    def write_index(self, index: StageIndex) -> None:
        atomic_write_json(self.partition_dir(index.stage, index.partition) / "_index.json", index.to_json())

    def read_index_if_present(self, stage: str, partition: str) -> StageIndex | None:
        try:
            return self.read_index(stage, partition)
        except FileNotFoundError:
            return None

    def forget_index(self, stage: str, partition: str) -> None:
        """Called before a stage rewrites its files, so a run killed half-way leaves no index vouching for them."""
        (self.partition_dir(stage, partition) / "_index.json").unlink(missing_ok=True)

    def read_index(self, stage: str, partition: str) -> StageIndex:
        path = self.partition_dir(stage, partition) / "_index.json"
        if not path.exists():
            raise FileNotFoundError(f"stage {stage!r} has not been materialized for partition {partition!r} ({path} missing)")
        data = json.loads(path.read_text())
        return StageIndex(stage=data["stage"], partition=data["partition"], accepted=data["accepted"], rejected=data["rejected"])

    def remove_stale_samples(self, stage: str, partition: str, keep: set[str]) -> None:
        """Delete sample folders of an earlier run that this run did not accept."""
        for folder in self.partition_dir(stage, partition).glob("*/"):
            if folder.name not in keep:
                shutil.rmtree(folder)

    def remove_samples_except(self, partition: str, keep: set[str]) -> None:
        """Delete the sample folders of every stage of `partition` but those of `keep`; the indexes stay."""
        for stage_dir in sorted(self.root.glob(f"*/{partition}")):
            self.remove_stale_samples(stage_dir.parent.name, partition, keep)
