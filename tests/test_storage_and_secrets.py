"""Input and output through fsspec URLs (file://, memory://, dir://), and secrets that reach their
backends but never metadata, logs, run config or files."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import posixpath
import secrets
import sqlite3
import threading
import zlib
from contextlib import closing, contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import numpy as np
import pytest
from dagster import AssetKey, DagsterInstance, build_resources
from fsspec.core import url_to_fs
from media import SHARED_VIDEOS, shared_video

from pointvid_pipeline.backends.llm import API_KEY_ENV
from pointvid_pipeline.backends.registry import lazy_backends
from pointvid_pipeline.dagster_defs.assets import clip_shards
from pointvid_pipeline.dagster_defs.definitions import build_definitions
from pointvid_pipeline.dataset import DATASET_FILES, build_dataset
from pointvid_pipeline.pipeline import STAGES, run_stage
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.stages.clips import decode_clip
from pointvid_pipeline.stages.shards import shard_paths
from pointvid_pipeline.storage.publish import STORAGE_OPTIONS_ENV, parse_storage_options, publish_file
from pointvid_pipeline.storage.shard_format import file_md5
from pointvid_pipeline.storage.stage_store import StageStore

PARTITION = "shard-00000"
VIDEO = "04_coffee.mp4"
MODEL = "secret-test-llm"
PUBLISHED_NAMES = sorted([*(f"dataset/{name}" for name in DATASET_FILES), f"shards/{PARTITION}.json", f"shards/{PARTITION}.tar"])


@pytest.fixture
def memory_root():
    """A fresh folder of the process-wide memory filesystem, removed afterwards."""
    root = f"memory://pointvid-test-{secrets.token_hex(4)}"
    yield root
    fs, path = url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@pytest.fixture(autouse=True)
def no_secrets_in_env(monkeypatch):
    for name in (STORAGE_OPTIONS_ENV, API_KEY_ENV, "POINTVID_OUTPUT_URI"):
        monkeypatch.delenv(name, raising=False)


def relative_files(uri: str) -> list[str]:
    fs, root = url_to_fs(uri)
    return sorted(posixpath.relpath(path, root) for path in fs.find(root))


# ---- input: a manifest and its video behind an fsspec URL


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_manifest_and_video_behind_a_url_go_through_the_clips_stage(scheme, tmp_path, memory_root, shared_videos):
    video = shared_video(VIDEO)
    with open(SHARED_VIDEOS / "manifest.csv", newline="") as f:
        caption = next(row["caption"] for row in csv.DictReader(f) if row["video"] == VIDEO)
    folder = (tmp_path / "remote").as_uri() if scheme == "file" else f"{memory_root}/remote"
    fs, path = url_to_fs(folder)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/{VIDEO}", video.read_bytes())
    fs.pipe_file(f"{path}/manifest.csv", f"video,caption\n{VIDEO},{json.dumps(caption)}\n".encode())

    settings = PipelineSettings(data_dir=tmp_path / "data", manifest=f"{folder}/manifest.csv")
    report = run_stage("clips", PARTITION, settings, lazy_backends("cpu"))

    assert (report.accepted, report.rejected_total) == (1, 0)
    store = StageStore(settings.stages_dir)
    ((key, meta),) = store.read_index("clips", PARTITION).accepted.items()
    assert meta["source"]["uri"] == f"{folder}/{VIDEO}" and meta["caption"] == caption
    local_frames, _ = decode_clip(str(video))
    assert np.array_equal(store.read_arrays("clips", PARTITION, key)["frames"], local_frames)


# ---- output: finished shard and dataset files published to a URL


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> PipelineSettings:
    """Every stage before the shard, once, for a partition of two synthetic scenes."""
    settings = PipelineSettings(data_dir=tmp_path_factory.mktemp("data"), shard_size=2)
    backends = lazy_backends("cpu")
    for stage in STAGES[:-1]:
        run_stage(stage, PARTITION, settings, backends)
    return settings


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_shard_and_dataset_are_published_byte_identical(scheme, curated, tmp_path, memory_root):
    output_uri = (tmp_path / "published").as_uri() if scheme == "file" else f"{memory_root}/published"
    settings = replace(curated, output_uri=output_uri)

    report = run_stage("pointvid_shards", PARTITION, settings, lazy_backends("cpu"))
    summary = build_dataset(settings, [PARTITION])

    assert report.extra["published_uri"] == f"{output_uri}/shards/{PARTITION}.tar"
    assert summary["published_uri"] == f"{output_uri}/dataset"
    assert relative_files(output_uri) == PUBLISHED_NAMES  # no temporary names left behind
    tar_path, index_path = shard_paths(settings, PARTITION)
    with fsspec.open(report.extra["published_uri"], "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == file_md5(tar_path) == json.loads(index_path.read_text())["md5"]
    for local in [index_path, *(settings.dataset_dir / name for name in DATASET_FILES)]:
        remote = f"{output_uri}/{local.parent.name}/{local.name}"
        with fsspec.open(remote, "rb") as f:
            assert f.read() == local.read_bytes(), remote


def test_failed_upload_leaves_nothing_at_the_destination(tmp_path, memory_root):
    with pytest.raises(FileNotFoundError):
        publish_file(tmp_path / "missing.tar", f"{memory_root}/shards/missing.tar", {})
    assert relative_files(memory_root) == []


def test_storage_option_errors_never_quote_the_value():
    assert parse_storage_options(None) == parse_storage_options("  ") == {}
    token = secrets.token_hex(8)
    for text in (f'{{"key": "{token}"', f'["{token}"]'):
        with pytest.raises(ValueError, match=STORAGE_OPTIONS_ENV) as caught:
            parse_storage_options(text)
        assert token not in str(caught.value) and caught.value.__cause__ is None


def test_settings_refuse_a_uri_carrying_a_password():
    token = secrets.token_hex(8)
    with pytest.raises(ValueError, match="POINTVID_OUTPUT_URI carries a password") as caught:
        PipelineSettings(output_uri=f"s3://user:{token}@bucket/pointvid")
    assert token not in str(caught.value)


# ---- secrets: through Dagster EnvVars into the backends, nowhere else


@contextmanager
def chat_endpoint():
    """A real OpenAI-shaped server on 127.0.0.1 that records the Authorization header of every request."""
    authorizations: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            authorizations.append(self.headers.get("Authorization"))
            self.reply({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            authorizations.append(self.headers.get("Authorization"))
            self.reply({"choices": [{"index": 0, "message": {"role": "assistant", "content": '{"objects": []}'}, "finish_reason": "stop"}]})

        def reply(self, payload: dict):
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", authorizations
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def sqlite_cells(path: Path) -> list[bytes]:
    """Every cell of every table, zlib blobs inflated: Dagster stores run and job snapshots compressed."""
    cells = []
    with closing(sqlite3.connect(path)) as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for row in db.execute(f'SELECT * FROM "{table}"'):
                for cell in row:
                    if isinstance(cell, bytes):
                        try:
                            cell = zlib.decompress(cell)
                        except zlib.error:
                            pass
                    cells.append(cell if isinstance(cell, bytes) else str(cell).encode())
    return cells


def files_holding(secret: str, *folders: Path) -> list[Path]:
    found = []
    for path in (p for folder in folders for p in folder.rglob("*") if p.is_file()):
        contents = [path.read_bytes(), *(sqlite_cells(path) if path.suffix == ".db" else [])]
        if any(secret.encode() in content for content in contents):
            found.append(path)
    return found


def test_secrets_reach_their_backends_and_nothing_else(tmp_path, monkeypatch, capfd, caplog):
    api_key, storage_token = f"sk-{secrets.token_hex(16)}", secrets.token_hex(16)
    data, home, bucket = tmp_path / "data", tmp_path / "dagster_home", tmp_path / "bucket"
    home.mkdir()
    # dir:// takes its root folder from the storage options: the shard landing under `bucket`
    # shows the options reached fsspec; `secret_token` rides along as a credential would.
    options = {"path": str(bucket), "target_protocol": "file", "secret_token": storage_token}
    caplog.set_level(logging.DEBUG)
    with chat_endpoint() as (endpoint, authorizations):
        for name, value in {
            "POINTVID_OBJECT_EXTRACTOR_BACKEND": "llm-http", "POINTVID_LLM_ENDPOINT": endpoint, "POINTVID_LLM_MODEL": MODEL,
            "POINTVID_LLM_CACHE_DIR": str(data / "cache"), API_KEY_ENV: api_key, STORAGE_OPTIONS_ENV: json.dumps(options),
        }.items():
            monkeypatch.setenv(name, value)
        settings = PipelineSettings(data_dir=data, shard_size=2, output_uri="dir://pointvid")
        defs = build_definitions(settings)
        with build_resources({k: defs.resources[k] for k in ("pipeline_settings", "object_extractor")}) as resolved:
            assert resolved.pipeline_settings.storage_options() == options and resolved.object_extractor.api_key == api_key
            reprs = repr(resolved.pipeline_settings) + repr(resolved.object_extractor)
        with DagsterInstance.local_temp(str(home)) as instance:
            instance.add_dynamic_partitions(clip_shards.name, [PARTITION])
            result = defs.resolve_job_def("curate_shard").execute_in_process(partition_key=PARTITION, instance=instance)
            dataset_result = defs.resolve_job_def("build_dataset").execute_in_process(instance=instance)
            run_configs = json.dumps([instance.get_run_by_id(r.run_id).run_config for r in (result, dataset_result)])
            shard_metadata = instance.get_latest_materialization_event(AssetKey("pointvid_shards")).asset_materialization.metadata
            recorded = repr([instance.get_latest_materialization_event(AssetKey(stage)) for stage in (*STAGES, "dataset")])
    printed = capfd.readouterr()

    assert result.success and dataset_result.success
    # The secrets did their work: every request carried the key; the shard sits under the options' root.
    assert len(authorizations) > 1 and set(authorizations) == {f"Bearer {api_key}"}
    assert defs.get_repository_def().get_env_vars_by_top_level_resource() == {STORAGE_OPTIONS_ENV: {"pipeline_settings"}, API_KEY_ENV: {"object_extractor"}}
    assert shard_metadata["published_uri"].value == f"dir://pointvid/shards/{PARTITION}.tar"
    assert file_md5(bucket / "pointvid" / "shards" / f"{PARTITION}.tar") == file_md5(shard_paths(settings, PARTITION)[0])
    assert sorted(str(p.relative_to(bucket / "pointvid")) for p in bucket.rglob("*") if p.is_file()) == PUBLISHED_NAMES
    assert len(list(home.glob("storage/*/compute_logs/*.err"))) == 2  # one captured log per run, scanned below
    # ... and are nowhere else.
    for secret in (api_key, storage_token):
        assert files_holding(secret, home, data, bucket) == []  # event log, runs and job snapshots, compute logs; stage store, shards, dataset, cache
        assert secret not in run_configs and secret not in recorded and secret not in reprs
        assert secret not in printed.out and secret not in printed.err
        assert secret not in caplog.text and all(secret not in repr(r.__dict__) for r in caplog.records)
