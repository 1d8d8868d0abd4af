"""Stable assignment of clips to shards, so a manifest edit never renumbers an existing shard.

The first time a sample key is seen it is written, with its shard, to the ledger
`<data_dir>/shard_assignment.json`; from then on the key stays in that shard whatever happens to
the manifest. Keys not in the ledger yet fill new shards, numbered after the last one, in
manifest order: appending rows to a 70K-clip manifest adds shards and touches none of the old
ones. A key removed from the manifest leaves its shard (the shard is smaller when re-run); a
shard left with no rows is not a partition of the current input. Rows repeating a key go to the
key's shard, where the `clips` stage ledgers them as duplicates.

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


def _new_shards(keys: list[str], assignment: dict[str, list[str]], shard_size: int) -> dict[str, list[str]]:
    first = len(assignment)
    return {shard_key(first + i // shard_size): keys[i : i + shard_size] for i in range(0, len(keys), shard_size)}


def assign_shards(rows: list[InputRow], shard_size: int, ledger: Path) -> dict[str, list[InputRow]]:
    """Shard -> its rows of the current manifest (manifest order), extending the ledger with new keys."""
    assignment = read_assignment(ledger)
    shard_of = {key: shard for shard, keys in assignment.items() for key in keys}
    unassigned = list(dict.fromkeys(row.key for row in rows if row.key not in shard_of))
    if unassigned:
        with _locked(ledger):
            assignment = read_assignment(ledger)  # another writer may have extended it meanwhile
            shard_of = {key: shard for shard, keys in assignment.items() for key in keys}
            unassigned = [key for key in unassigned if key not in shard_of]
            added = _new_shards(unassigned, assignment, shard_size)
            if added:
                assignment.update(added)
                atomic_write_bytes(ledger, json.dumps({"shards": assignment}, separators=(",", ":")).encode())
                shard_of.update({key: shard for shard, keys in added.items() for key in keys})
    partitions: dict[str, list[InputRow]] = {shard: [] for shard in assignment}
    for row in rows:
        partitions[shard_of[row.key]].append(row)
    return {shard: shard_rows for shard, shard_rows in partitions.items() if shard_rows}
