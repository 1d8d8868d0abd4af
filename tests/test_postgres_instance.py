"""Dagster on a real PostgreSQL server (Debian `postgresql`, on 127.0.0.1): the committed
deploy/postgres/dagster.yaml, two partitions materialized by two multiprocess runs at the same time,
which the default SQLite storage cannot be trusted with ("database is locked")."""

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterInstance, DagsterRunStatus

from pointvid_pipeline.dagster_defs.assets import MODEL_STAGES
from pointvid_pipeline.pipeline import STAGES

REPO = Path(__file__).resolve().parents[1]
DAGSTER_YAML = REPO / "deploy" / "postgres" / "dagster.yaml"
PARTITIONS = ["shard-00000", "shard-00001"]
CLIPS_PER_PARTITION = 2
RUN_TIMEOUT = 600


def unavailable(reason: str):
    """Skip, saying why; `.ci/run` sets POINTVID_REQUIRE_POSTGRES=1 so CI fails instead."""
    if os.environ.get("POINTVID_REQUIRE_POSTGRES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def postgres_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: `pg_config --bindir`, else the newest /usr/lib/postgresql/<version>/bin."""
    candidates = []
    if shutil.which("pg_config"):
        candidates.append(Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()))
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    candidates.extend(versions)
    return next((d for d in candidates if (d / "initdb").exists() and (d / "pg_ctl").exists()), None)


def server_user_prefix() -> list[str]:
    """postgres refuses to run as root, so as root its tools run as the `postgres` user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        unavailable("running as root and there is no `postgres` user to run the server as (Debian: apt-get install postgresql)")
    if not shutil.which("runuser"):
        unavailable("running as root and `runuser` is missing, so the server cannot be started as the `postgres` user")
    return ["runuser", "-u", "postgres", "--"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_run(command: list, what: str) -> None:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"{what} exited with {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


@pytest.fixture(scope="module")
def postgres_env():
    """A throwaway server with password auth on TCP, given as the DAGSTER_PG_* variables dagster.yaml reads."""
    try:
        import psycopg2  # installed with dagster-postgres
        import dagster_postgres  # noqa: F401
    except ImportError:
        unavailable("dagster-postgres is not installed (pip install -e '.[postgres]')")
    bindir = postgres_bindir()
    if bindir is None:
        unavailable("no PostgreSQL server binaries (initdb, pg_ctl) found (Debian: apt-get install postgresql)")
    as_server_user = server_user_prefix()

    # Not under pytest's tmp dir: that is private to the current user, and the server user must reach it.
    root = Path(tempfile.mkdtemp(prefix="pointvid-pg-"))
    data, password_file, server_log = root / "data", root / "password", root / "server.log"
    password = secrets.token_hex(12)
    password_file.write_text(password)
    if as_server_user:
        for path in (root, password_file):
            shutil.chown(path, "postgres", "postgres")
    port = free_port()
    pg_ctl = [*as_server_user, bindir / "pg_ctl", "-D", data]
    try:
        check_run(
            [*as_server_user, bindir / "initdb", "-D", data, "-U", "dagster", f"--pwfile={password_file}",
             "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"],
            "initdb",
        )
        server_options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}"
        start = subprocess.run([str(part) for part in [*pg_ctl, "-l", server_log, "-o", server_options, "-w", "-t", "60", "start"]], capture_output=True, text=True)
        if start.returncode != 0:
            pytest.fail(f"pg_ctl start exited with {start.returncode}:\n{start.stderr}\n{server_log.read_text() if server_log.exists() else ''}")
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="dagster", password=password, dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        connection.cursor().execute("CREATE DATABASE pointvid_dagster")
        connection.close()
        yield {
            "DAGSTER_PG_USERNAME": "dagster",
            "DAGSTER_PG_PASSWORD": password,
            "DAGSTER_PG_HOSTNAME": "127.0.0.1",
            "DAGSTER_PG_DB_NAME": "pointvid_dagster",
            "DAGSTER_PG_PORT": str(port),
        }
    finally:
        subprocess.run([str(part) for part in [*pg_ctl, "-m", "fast", "stop"]], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def wait_for_all(processes: dict[str, subprocess.Popen], timeout: float) -> dict[str, int]:
    """Exit codes; once one fails the rest are killed, as a failed run can keep the gpu slot the others wait for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(process.poll() is None for process in processes.values()):
        if any(process.poll() not in (None, 0) for process in processes.values()):
            break
        time.sleep(1)
    for process in processes.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # with its step processes
            process.wait()
    return {name: process.returncode for name, process in processes.items()}


@pytest.fixture(scope="module")
def parallel_runs(postgres_env, tmp_path_factory):
    """Register the partitions, then materialize two of them with two `dagster asset materialize` at once."""
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(DAGSTER_YAML, home / "dagster.yaml")
    data_dir = tmp_path_factory.mktemp("data")
    instance_env = {**postgres_env, "DAGSTER_HOME": str(home)}
    env = {**os.environ, **instance_env, "POINTVID_DATA_DIR": str(data_dir), "POINTVID_SHARD_SIZE": str(CLIPS_PER_PARTITION)}
    registered = subprocess.run([sys.executable, "-m", "pointvid_pipeline.cli", "partitions"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert registered.returncode == 0, registered.stderr[-3000:]
    assert registered.stdout.split()[: len(PARTITIONS)] == PARTITIONS

    logs = {partition: home.parent / f"materialize-{partition}.log" for partition in PARTITIONS}
    processes = {}
    for partition in PARTITIONS:
        with logs[partition].open("w") as log:
            processes[partition] = subprocess.Popen(
                [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "pointvid_pipeline.definitions",
                 "--select", "*pointvid_shards", "--partition", partition],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
    exit_codes = wait_for_all(processes, RUN_TIMEOUT)
    return {"home": home, "data_dir": data_dir, "instance_env": instance_env, "exit_codes": exit_codes, "logs": logs}


@pytest.fixture(scope="module")
def instance(parallel_runs):
    """`DagsterInstance.get()` as the runs saw it: it reads the copied postgres dagster.yaml."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in parallel_runs["instance_env"].items():
            patch.setenv(name, value)
        with DagsterInstance.get() as instance:
            yield instance


def test_both_partitions_succeed_in_overlapping_runs(parallel_runs, instance):
    for partition, code in parallel_runs["exit_codes"].items():
        assert code == 0, f"{partition} exited with {code}:\n{parallel_runs['logs'][partition].read_text()[-4000:]}"
    records = instance.get_run_records()
    assert sorted(record.dagster_run.tags["dagster/partition"] for record in records) == PARTITIONS
    assert all(record.dagster_run.status == DagsterRunStatus.SUCCESS for record in records)
    assert max(record.start_time for record in records) < min(record.end_time for record in records), "the two runs did not overlap in time"


def test_runs_use_the_multiprocess_executor(instance):
    """Every step started in a process of its own."""
    for record in instance.get_run_records():
        step_starts = instance.all_logs(record.dagster_run.run_id, of_type=DagsterEventType.STEP_START)
        assert sorted(entry.step_key for entry in step_starts) == sorted(STAGES)
        assert len({entry.dagster_event.pid for entry in step_starts}) == len(STAGES)


def test_instance_storage_is_postgres_not_sqlite(parallel_runs, instance):
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    home = parallel_runs["home"]
    assert not (home / "history" / "runs.db").exists()
    assert not [path for path in home.rglob("*.db")], "a SQLite database was written under DAGSTER_HOME"


def test_both_partitions_have_their_shard_materialized(parallel_runs, instance):
    for partition in PARTITIONS:
        records = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("pointvid_shards"), asset_partitions=[partition]), limit=1).records
        assert records, f"no pointvid_shards materialization for {partition}"
        assert records[0].asset_materialization.metadata["accepted"].value == CLIPS_PER_PARTITION
        assert (parallel_runs["data_dir"] / "shards" / f"{partition}.tar").stat().st_size > 0


def test_gpu_pool_runs_one_model_step_at_a_time(instance):
    """dagster.yaml's pool default_limit of 1 holds across the two runs: their model steps never overlap."""
    assert {pool.name: pool.limit for pool in instance.event_log_storage.get_pool_limits()}.get("gpu") == 1
    assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1  # created once, before the runs raced
    intervals = []
    for record in instance.get_run_records():
        entries = instance.all_logs(record.dagster_run.run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS})
        times = {(entry.step_key, entry.dagster_event_type): entry.timestamp for entry in entries if entry.step_key in MODEL_STAGES}
        intervals += [(times[step, DagsterEventType.STEP_START], times[step, DagsterEventType.STEP_SUCCESS]) for step in MODEL_STAGES]
    intervals.sort()
    assert len(intervals) == 2 * len(MODEL_STAGES)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(intervals, intervals[1:])), intervals
