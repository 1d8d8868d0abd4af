"""Crash safety: SIGKILL a real Dagster run while it writes a shard, then rerun it.

The run is `dagster job execute -j curate_shard` (every stage of one partition, in one process)
started in its own session, so the whole process group can be killed with one `os.killpg`.
Kill point: the moment the shard stage's temporary tar (`.shard-00000.tar.<random>.tmp`, made by
`stage_store.atomic_path`) appears in the shards folder. The window is short (the tar is written
in tens of milliseconds after the samples are encoded), so the run is started at nice 10 and,
once the `point_maps` stage index exists, the folder is polled in a busy loop (about one poll per
20 us). If the temporary file is never seen, the test fails instead of passing vacuously.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from pointvid_pipeline.pipeline import partition_rows
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.storage.shard_format import CHECKS, file_md5, read_samples, verify_shard

REPO = Path(__file__).resolve().parents[1]
PARTITION = "shard-00000"
SHARD_SIZE = 4  # a 4-sample tar is ~3 MB: the temporary file lives for ~10-50 ms
RUN_TIMEOUT = 300  # seconds; a normal run of the partition takes 25-55 s on 2 busy cores


def _environment(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POINTVID_")}
    env.update(DAGSTER_HOME=str(home), POINTVID_DATA_DIR=str(tmp_path / "data"), POINTVID_SHARD_SIZE=str(SHARD_SIZE))
    return env


def _materialize_command() -> list[str]:
    tags = json.dumps({"dagster/partition": PARTITION})
    return [sys.executable, "-m", "dagster", "job", "execute", "-m", "pointvid_pipeline.definitions", "-j", "curate_shard", "--tags", tags]


def _tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _live_group_members(pgid: int) -> list[int]:
    """Processes of the group that still run (zombies excluded: they cannot write any more)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            live.append(int(stat.parent.name))
    return live


def _kill_while_shard_is_written(env: dict[str, str], settings: PipelineSettings, log: Path) -> dict:
    """Run the partition and SIGKILL its process group as soon as the temporary tar exists."""
    shards_dir, tar_name = settings.shards_dir, f"{PARTITION}.tar"
    point_maps_index = settings.stages_dir / "point_maps" / PARTITION / "_index.json"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            _materialize_command(), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    pgid = process.pid  # start_new_session: the child leads its own process group
    os.setpriority(os.PRIO_PROCESS, process.pid, 10)  # the poller below must win the CPU over the writer
    seen = None
    try:
        deadline, shard_stage, polls = time.monotonic() + RUN_TIMEOUT, False, 0
        while seen is None and time.monotonic() < deadline:
            polls += 1
            if polls % 256 == 0 and process.poll() is not None:
                break
            if not shard_stage:
                shard_stage = point_maps_index.exists()
                if not shard_stage:
                    time.sleep(0.005)
                    continue
            try:
                names = os.listdir(shards_dir)
            except FileNotFoundError:
                continue
            temps = [n for n in names if n.startswith(f".{tar_name}.") and n.endswith(".tmp")]
            if temps:
                os.killpg(pgid, signal.SIGKILL)
                seen = {"temp": temps[0], "names_at_kill": sorted(names)}
    finally:
        if seen is None and process.poll() is None:
            os.killpg(pgid, signal.SIGKILL)
        returncode = process.wait(timeout=60)
    assert seen is not None, (
        f"kill point missed: the temporary tar never appeared in {shards_dir} while the run was alive "
        f"(run exit code {returncode}, point_maps index present: {point_maps_index.exists()}, "
        f"shards folder now: {sorted(os.listdir(shards_dir)) if shards_dir.exists() else 'missing'}).\nrun log:\n{_tail(log)}"
    )
    assert returncode == -signal.SIGKILL, f"the run ended with {returncode}, not by SIGKILL\n{_tail(log)}"
    deadline = time.monotonic() + 10
    while _live_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _live_group_members(pgid), f"processes of the killed run still alive: {_live_group_members(pgid)}"
    assert point_maps_index.exists() and tar_name not in seen["names_at_kill"], (
        f"the kill did not land inside the shard write: folder at kill time {seen['names_at_kill']}"
    )
    return seen


def _passes_all_checks(tar: Path, index: dict, expected_keys: list[str]) -> None:
    results = verify_shard(tar, index, expected_keys)
    assert set(results) == set(CHECKS)
    failing = {name: detail for name, (passed, detail) in results.items() if not passed}
    assert not failing, f"{tar.name} fails shard checks: {failing}"


def test_sigkill_during_shard_write_leaves_no_partial_shard_and_rerun_completes(tmp_path):
    env = _environment(tmp_path)
    settings = PipelineSettings.from_env(env)
    rows = partition_rows(settings)[PARTITION]
    assert len(rows) == SHARD_SIZE
    registered = subprocess.run([sys.executable, "-m", "pointvid_pipeline.cli", "partitions"], cwd=REPO, env=env, capture_output=True, text=True)
    assert registered.returncode == 0 and PARTITION in registered.stdout.split(), registered.stdout + registered.stderr
    shards_dir = settings.shards_dir

    killed = _kill_while_shard_is_written(env, settings, tmp_path / "killed_run.log")

    # After the kill: whatever a loader globbing *.tar / *.json would pick up is complete and valid.
    expected_keys = list(json.loads((settings.stages_dir / "point_maps" / PARTITION / "_index.json").read_text())["accepted"])
    names = sorted(os.listdir(shards_dir))
    temps = [n for n in names if n.startswith(".") and n.endswith(".tmp")]
    assert set(names) - set(temps) <= {f"{PARTITION}.tar", f"{PARTITION}.json"}, f"unexpected files after the kill: {names}"
    # SIGKILL skips atomic_path's cleanup, so the killed write's temporary file stays behind (hidden:
    # dot-prefixed, `.tmp`), unless the rename onto the final name beat the signal.
    assert killed["temp"] in temps or f"{PARTITION}.tar" in names, f"the temporary tar vanished without becoming the shard: {names}"
    for tar in shards_dir.glob("*.tar"):  # only if the rename won the race against SIGKILL
        with tarfile.open(tar) as archive:
            archive.getmembers()
        index_path = tar.with_suffix(".json")
        index = json.loads(index_path.read_text()) if index_path.exists() else {"md5": file_md5(tar)}
        _passes_all_checks(tar, index, expected_keys)
    for index_path in shards_dir.glob("*.json"):
        json.loads(index_path.read_text())
    partial = (shards_dir / killed["temp"]).read_bytes() if killed["temp"] in temps else None

    # The rerun (same job, same partition, no kill) completes and writes a valid, complete shard.
    log = tmp_path / "rerun.log"
    with open(log, "wb") as out:
        rerun = subprocess.run(_materialize_command(), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT)
    assert rerun.returncode == 0, f"rerun failed ({rerun.returncode}):\n{_tail(log)}"
    tar, index_path = shards_dir / f"{PARTITION}.tar", shards_dir / f"{PARTITION}.json"
    expected_keys = list(json.loads((settings.stages_dir / "point_maps" / PARTITION / "_index.json").read_text())["accepted"])
    index = json.loads(index_path.read_text())
    _passes_all_checks(tar, index, expected_keys)
    assert sorted(p.name for p in shards_dir.glob("*.tar")) == [tar.name]

    # Accounting: every input row of the partition ends exactly once, in the shard or in the ledger.
    sample_keys = [s["key"] for s in index["samples"]]
    rejected_keys = [r["key"] for r in index["rejected"]]
    assert len(sample_keys) + len(rejected_keys) == len(rows) == index["input_rows"]
    assert len(set(sample_keys + rejected_keys)) == len(rows), f"duplicate keys: {sample_keys + rejected_keys}"
    assert set(sample_keys + rejected_keys) == {row.key for row in rows}
    assert sorted([index["sample_meta"][k]["row"] for k in sample_keys] + [r["row"] for r in index["rejected"]]) == sorted(row.row for row in rows)
    assert list(read_samples(tar)) == sample_keys == expected_keys

    # The killed write was a genuine prefix of this (deterministic) shard, and the rerun cleared it away.
    final = tar.read_bytes()
    assert partial is None or len(partial) <= len(final) and final.startswith(partial), (
        f"the killed {killed['temp']} ({len(partial)} bytes) is not a prefix of the rerun's {tar.name} ({len(final)} bytes)"
    )
    assert sorted(os.listdir(shards_dir)) == [index_path.name, tar.name]
