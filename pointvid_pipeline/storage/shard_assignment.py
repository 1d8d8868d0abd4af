"""Stable assignment of clips to shards, so a manifest edit never renumbers an existing shard.

The first time a sample key is seen it is written, with its shard, to the ledger
`<data_dir>/shard_assignment.json`; from then on the key stays in that shard whatever happens to
the manifest. Keys not in the ledger yet fill new shards, numbered after the last one, in
manifest order: appending rows to a 70K-clip manifest adds shards and touches none of the old
ones. A key removed from the manifest leaves its shard (the shard is smaller when re-run); a
shard left with no rows is not a partition of the current input. Rows repeating a key go to the
key's shard, where the `clips` stage ledgers them as duplicates.

The views of one synthetic scene (a camera rig, `InputRow.group`) always share a shard: a new shard
takes whole scenes while they fit in `shard_size` rows (a scene with more views than that fills a shard
alone), and a new view of a scene already assigned joins that scene's shard.

Writers (the sensor, `pointvid partitions`, parallel runs) take an exclusive lock on
`shard_assignment.lock` and rewrite the ledger atomically.
"""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path

from pointvid_pipeline.storage.manifest import InputRow, shard_key
from pointvid_pipeline.storage.stage_store import atomic_write_bytes

LEDGER_NAME = "shard_assignment.json"


@contextmanager
def _locked(ledger: Path):
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with open(ledger.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_assignment(ledger: Path) -> dict[str, list[str]]:
    """Shard -> sample keys, in shard order; empty when nothing has been assigned yet."""
    if not ledger.exists():
        return {}
    return json.loads(ledger.read_text())["shards"]


def _extend(assignment: dict[str, list[str]], rows: list[InputRow], shard_size: int) -> bool:
    """Give every row whose key has no shard yet one: its group's shard, or new shards of whole groups. True if any was added."""
    before = sum(len(keys) for keys in assignment.values())
    shard_of = {key: shard for shard, keys in assignment.items() for key in keys}
    shard_of_group = {row.group: shard_of[row.key] for row in rows if row.key in shard_of}
    groups: dict[str, list[str]] = {}
    for row in rows:
        if row.key not in shard_of and row.key not in groups.get(row.group, []):
            if row.group in shard_of_group:
                assignment[shard_of_group[row.group]].append(row.key)
                shard_of[row.key] = shard_of_group[row.group]
            else:
                groups.setdefault(row.group, []).append(row.key)
    new: list[list[str]] = []
    for keys in groups.values():
        if not new or len(new[-1]) + len(keys) > shard_size:
            new.append([])
        new[-1] += keys
    first = len(assignment)
    assignment.update({shard_key(first + i): keys for i, keys in enumerate(new)})
    return sum(len(keys) for keys in assignment.values()) > before


def assign_shards(rows: list[InputRow], shard_size: int, ledger: Path) -> dict[str, list[InputRow]]:
    """Shard -> its rows of the current manifest (manifest order), extending the ledger with new keys."""
    assignment = read_assignment(ledger)
    shard_of = {key: shard for shard, keys in assignment.items() for key in keys}
    if any(row.key not in shard_of for row in rows):
        with _locked(ledger):
            assignment = read_assignment(ledger)  # another writer may have extended it meanwhile
            if _extend(assignment, rows, shard_size):
                atomic_write_bytes(ledger, json.dumps({"shards": assignment}, separators=(",", ":")).encode())
            shard_of = {key: shard for shard, keys in assignment.items() for key in keys}
    partitions: dict[str, list[InputRow]] = {shard: [] for shard in assignment}
    for row in rows:
        partitions[shard_of[row.key]].append(row)
    return {shard: shard_rows for shard, shard_rows in partitions.items() if shard_rows}
