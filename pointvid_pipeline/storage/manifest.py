"""Input rows: a manifest of (video, caption[, start, end]) or the embedded synthetic scenes.

Accepted layouts (by file suffix: .csv, .jsonl/.ndjson, .json, .parquet):
- plain: columns `video`, `caption`, optional `start`, `end` (seconds); relative `video` paths
  are resolved against the manifest's own location (local folder or fsspec URL);
- Panda-70M: `videoID, url, timestamp, caption, matching_score` with list-valued `timestamp`
  ([["0:00:00.000", "0:00:04.004"], ...]), `caption` and `matching_score`; one row per clip.

Rows that cannot be interpreted are kept (with `error` set) so the run can ledger them.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import fsspec

PANDA70M_COLUMNS = {"videoID", "url", "timestamp", "caption"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class InputRow:
    """One clip to process. `key` is the sample key: stable across runs, no dots (WebDataset)."""

    key: str
    caption: str
    video: str | None = None  # URI of a real video
    scene: str | None = None  # name of a synthetic scene spec
    start: float | None = None
    end: float | None = None
    row: int = 0  # position in the manifest, for the ledger
    error: str | None = None  # why the row could not be interpreted

    @property
    def is_synthetic(self) -> bool:
        return self.scene is not None

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict) -> "InputRow":
        return cls(**data)


def shard_key(index: int) -> str:
    return f"shard-{index:05d}"


def synthetic_rows(scenes: list[tuple[str, str | None, str]]) -> list[InputRow]:
    """Rows of (scene name, why the spec is invalid or None, caption)."""
    return [InputRow(key=name, caption=caption, scene=name, row=i, error=error) for i, (name, error, caption) in enumerate(scenes)]


def read_manifest(uri: str) -> list[InputRow]:
    """Read a manifest into rows, expanding Panda-70M clip lists. Never raises on a bad row."""
    table = _read_table(uri)
    base = _parent_uri(uri)
    if table and PANDA70M_COLUMNS <= set(table[0]):
        rows = _panda70m_rows(table, base)
    else:
        rows = [_plain_row(record, base, i) for i, record in enumerate(table)]
    return rows


def manifest_version(uri: str) -> str:
    """Changes whenever the manifest file does (fsspec's key over size, mtime or ETag)."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.ukey(path)


def _read_table(uri: str) -> list[dict]:
    suffix = Path(uri.split("?")[0]).suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        with fsspec.open(uri, "rb") as f:
            return pq.read_table(f).to_pylist()
    with fsspec.open(uri, "rt", encoding="utf-8") as f:
        text = f.read()
    if suffix in (".jsonl", ".ndjson"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if suffix == ".json":
        return list(json.loads(text))
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def _parent_uri(uri: str) -> str:
    if "://" in uri:
        return uri.rsplit("/", 1)[0]
    return str(Path(uri).absolute().parent)


def _resolve(video: str, base: str) -> str:
    # os.path, not pathlib: this runs once per row of 70K-row manifests on every sensor tick.
    if "://" in video or os.path.isabs(video):
        return video
    if "://" in base:
        return f"{base}/{video}"
    return os.path.join(base, video)


def sample_key(video: str, start: float | None, end: float | None) -> str:
    """`<video stem>-<8 hex of video+times>`: readable, unique per clip, free of dots.

    Hashes the video reference as written in the manifest (not the resolved absolute path), so
    keys do not change when the dataset folder moves to another machine.
    """
    stem = _UNSAFE.sub("_", os.path.splitext(os.path.basename(video.split("?")[0]))[0]).strip("_") or "video"
    digest = hashlib.sha1(f"{video}|{start}|{end}".encode()).hexdigest()[:8]
    return f"{stem[:48]}-{digest}"


def _invalid_key(index: int) -> str:
    """Rows that cannot be read have no trustworthy clip identity: key them by position."""
    return f"invalid-row{index:07d}"


def _seconds(value) -> float | None:
    """Seconds from a number or an `H:MM:SS.mmm` string; None for blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    parts = [float(p) for p in str(value).strip().split(":")]
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return seconds


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _plain_row(record: dict, base: str, index: int) -> InputRow:
    video = _text(record.get("video"))
    if not video:
        return InputRow(key=_invalid_key(index), caption="", row=index, error="no `video` value")
    uri = _resolve(video, base)
    try:
        start, end = _seconds(record.get("start")), _seconds(record.get("end"))
    except ValueError as exc:
        return InputRow(key=_invalid_key(index), caption="", video=uri, row=index, error=f"bad start/end: {exc}")
    return InputRow(key=sample_key(video, start, end), caption=_text(record.get("caption")), video=uri, start=start, end=end, row=index)


def _as_list(value):
    if isinstance(value, str):
        return ast.literal_eval(value)
    return list(value)


def _panda70m_rows(table: list[dict], base: str) -> list[InputRow]:
    rows: list[InputRow] = []
    for record in table:
        video = _text(record.get("url"))
        uri = _resolve(video, base) if video else ""
        try:
            stamps, captions = _as_list(record["timestamp"]), _as_list(record["caption"])
            if len(stamps) != len(captions):
                raise ValueError(f"{len(stamps)} timestamps but {len(captions)} captions")
            clips = [(_seconds(a), _seconds(b), c) for (a, b), c in zip(stamps, captions)]
        except (ValueError, SyntaxError, TypeError, KeyError) as exc:
            rows.append(InputRow(key=_invalid_key(len(rows)), caption="", video=uri or None, row=len(rows), error=f"bad Panda-70M row: {exc}"))
            continue
        for start, end, caption in clips:
            rows.append(InputRow(key=sample_key(video, start, end), caption=_text(caption), video=uri, start=start, end=end, row=len(rows)))
    return rows
