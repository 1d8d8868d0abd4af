"""Publish finished outputs (shards, dataset files) to any fsspec URL (`s3://`, `gs://`, `file://`, ...).

The stage store stays on a local or shared POSIX directory (memory maps, atomic renames); only
finished files are copied out. Each goes to a temporary name beside its final one and is then
moved onto it, so a reader of the destination never sees half a file: on `file://` the move is a
rename, on object stores the final object is created whole by one copy. A local destination that
is full raises ConfigurationError (`disk_full`), as the stage store's writes do.

Credentials never travel as settings. fsspec backends read their own environment
(AWS_ACCESS_KEY_ID / AWS_PROFILE for s3fs, GOOGLE_APPLICATION_CREDENTIALS for gcsfs, ...);
explicit options come from one env var, POINTVID_STORAGE_OPTIONS, a JSON object.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from contextlib import nullcontext
from pathlib import Path

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pointvid_pipeline.storage.disk_full import disk_full_as_configuration_error

STORAGE_OPTIONS_ENV = "POINTVID_STORAGE_OPTIONS"


def parse_storage_options(text: str | None) -> dict:
    """The JSON object of fsspec options; blank = none. Errors never quote the text: it holds secrets."""
    if not text or not text.strip():
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{STORAGE_OPTIONS_ENV} is not valid JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(options, dict):
        raise ValueError(f"{STORAGE_OPTIONS_ENV} must be a JSON object, got a JSON {type(options).__name__}")
    return options


def storage_options_from_env(environ=None) -> dict:
    env = os.environ if environ is None else environ
    return parse_storage_options(env.get(STORAGE_OPTIONS_ENV))


def output_filesystem(uri: str, storage_options: dict) -> tuple[AbstractFileSystem, str]:
    """The filesystem serving `uri` and the path inside it."""
    return url_to_fs(uri, **storage_options)


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def publish_file(local_path: Path, uri: str, storage_options: dict | None) -> str:
    """Copy `local_path` to `uri` via a temporary name beside it, then move it onto `uri`; returns `uri`.

    `storage_options`: as Dagster resolved them from their EnvVar; None reads POINTVID_STORAGE_OPTIONS.
    """
    fs, path = output_filesystem(uri, storage_options_from_env() if storage_options is None else storage_options)
    folder, name = posixpath.split(path)
    temporary = posixpath.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    local = isinstance(fs, LocalFileSystem)  # a full disk of this machine: `disk_full`; object stores answer otherwise
    with disk_full_as_configuration_error(Path(path), "POINTVID_OUTPUT_URI") if local else nullcontext():
        try:
            _put_file(fs, local_path, temporary)
            fs.mv(temporary, path)
        except BaseException:
            _remove_if_present(fs, temporary)
            raise
    return uri


def _put_file(fs: AbstractFileSystem, local_path: Path, path: str) -> None:
    """Make the folder only when the upload needs it: file:// does, object stores have no folders
    and their mkdir may try to create the bucket (needing rights a writer seldom has)."""
    try:
        fs.put_file(str(local_path), path)
    except FileNotFoundError:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fs.put_file(str(local_path), path)


def _remove_if_present(fs: AbstractFileSystem, path: str) -> None:
    try:
        fs.rm_file(path)
    except (OSError, ValueError):  # never written, or already gone: nothing to clean up
        pass
