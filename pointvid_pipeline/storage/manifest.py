"""Input rows: a manifest of (video, caption[, start, end]) or the embedded synthetic scenes.

Formats, by file suffix: `.parquet`; `.jsonl` / `.ndjson` (one JSON object per line); `.json` (a
list of objects, or one object = one row); anything else is delimited text (`.csv`, `.tsv`, `.txt`).

Text is read the way spreadsheets write it: a UTF-16 or UTF-32 byte-order mark decides the
encoding; otherwise (no mark, or UTF-8's) each line is read as UTF-8, or else in the declared fallback encoding
(POINTVID_MANIFEST_ENCODING, default cp1252, what Windows spreadsheets save), line by line so one
stray byte neither garbles nor loses the other lines. The delimiter is a tab for `.tsv` / `.tab`;
otherwise the one of `,` `\\t` `;` `|` whose split of the header names the video column (failing
that, the one giving the most columns).

Column names are matched ignoring case, surrounding spaces, and `_` / `-` / space inside
(`Video Path` = `video_path`); of the aliases below the first present is used:
- plain: video (VIDEO_ALIASES: `video`, `path`, `url`, ...), caption (CAPTION_ALIASES), optional
  start / end in seconds or `H:MM:SS.mmm`; relative video paths are resolved against the
  manifest's own location (local folder or fsspec URL);
- Panda-70M: `videoID, url, timestamp, caption, matching_score` with list-valued `timestamp`
  ([["0:00:00.000", "0:00:04.004"], ...]), `caption` and `matching_score`; one row per clip.

A manifest with no video column, or one that cannot be opened or parsed at all, raises
ManifestError (a configuration error: nothing is processed). A row that cannot be interpreted (a
malformed JSONL line, a CSV record with an unclosed quote or too many fields, a Parquet cell that
does not convert, a list where text belongs) is kept with `error` starting with where it is
(`line 3`, counted from 1 with the header; `item 2` of a JSON list or `row 2` of a Parquet table,
counted from 0 as pandas does), so the run ledgers it as `invalid_manifest_row` and reads the rest.
"""

from __future__ import annotations

import ast
import codecs
import csv
import hashlib
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from pointvid_pipeline.settings import MANIFEST_FALLBACK_ENCODING

log = logging.getLogger(__name__)

VIDEO_ALIASES = ("video", "path", "url", "video_path", "video_url", "file", "filename")
CAPTION_ALIASES = ("caption", "text", "description")
START_ALIASES = ("start", "start_time")
END_ALIASES = ("end", "end_time")
PANDA70M_COLUMNS = ("videoID", "url", "timestamp", "caption")
DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
DELIMITERS = tuple(DELIMITER_NAMES)
WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_SEPARATORS = re.compile(r"[\s_-]+")
_UNREADABLE = (OSError, ImportError, ValueError)  # missing, unreachable, or a protocol whose package is not installed


class ManifestError(ValueError):
    """The manifest as a whole cannot be read (no video column, unreadable, not parseable): a configuration error."""


@dataclass(frozen=True)
class InputRow:
    """One clip to process. `key` is the sample key: stable across runs, no dots (WebDataset)."""

    key: str
    caption: str
    video: str | None = None  # URI of a real video
    scene: str | None = None  # name of a synthetic scene spec
    view: int | None = None  # which camera of the scene (0 unless the scene is a rig)
    start: float | None = None
    end: float | None = None
    row: int = 0  # position in the manifest, for the ledger
    error: str | None = None  # why the row could not be interpreted

    @property
    def is_synthetic(self) -> bool:
        return self.scene is not None

    @property
    def group(self) -> str:
        """Rows that must share a shard: the views of one synthetic scene; any other row stands alone."""
        return self.scene if self.scene is not None else self.key

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict) -> InputRow:
        return cls(**data)


@dataclass
class _Table:
    """Records as read (column name -> value), where each came from ("line 3", "item 2", "row 2"), and their read errors."""

    columns: list[str]
    records: list[dict]
    places: list[str]
    errors: dict[int, str] = field(default_factory=dict)  # record index -> why it could not be read
    layout: str = ""  # how it was read, for error messages ("comma-separated, utf-8")


def shard_key(index: int) -> str:
    return f"shard-{index:05d}"


def synthetic_rows(views: list[tuple[str, str, int, str | None, str]]) -> list[InputRow]:
    """Rows of (sample key, scene name, camera of the scene, why the spec is invalid or None, caption)."""
    return [InputRow(key=key, caption=caption, scene=name, view=view, row=i, error=error) for i, (key, name, view, error, caption) in enumerate(views)]


def read_manifest(uri: str, fallback_encoding: str = MANIFEST_FALLBACK_ENCODING) -> list[InputRow]:
    """Read a manifest into rows, expanding Panda-70M clip lists. Raises ManifestError only for the manifest as a whole."""
    table = _read_table(uri, fallback_encoding)
    base = _parent_uri(uri)
    columns = {_normalised(name): name for name in reversed(table.columns)}  # the first of equal names wins
    if all(_normalised(name) in columns for name in PANDA70M_COLUMNS):
        return _panda70m_rows(table, columns, base)
    video = _column(columns, VIDEO_ALIASES)
    if video is None and table.records and len(table.errors) == len(table.records):  # no record to find columns in: say why
        raise ManifestError(f"manifest {uri}: not one of its {len(table.records)} records can be read ({table.layout}); the first, {table.places[0]}: {table.errors[0]}")
    if video is None:
        raise ManifestError(f"manifest {uri} has no video column: found columns {table.columns} ({table.layout}); name it one of {', '.join(VIDEO_ALIASES)} (case and spaces ignored), or use the Panda-70M layout ({', '.join(PANDA70M_COLUMNS)})")
    names = (video, _column(columns, CAPTION_ALIASES), _column(columns, START_ALIASES), _column(columns, END_ALIASES))
    return [_plain_row(table, i, names, base) for i in range(len(table.records))]


def manifest_version(uri: str) -> str:
    """Changes whenever the manifest file does (fsspec's key over size, mtime or ETag)."""
    try:
        fs, path = fsspec.core.url_to_fs(uri)
        return fs.ukey(path)
    except _UNREADABLE as exc:
        raise _unreadable(uri, exc) from exc


def _unreadable(uri: str, exc: Exception) -> ManifestError:
    return ManifestError(f"cannot read manifest {uri}: {type(exc).__name__}: {exc}")


def _normalised(name) -> str:
    return _SEPARATORS.sub("_", str(name).strip().lower())


def _column(columns: dict[str, str], aliases: tuple[str, ...]) -> str | None:
    return next((columns[alias] for alias in aliases if alias in columns), None)


def _read_bytes(uri: str) -> bytes:
    try:
        with fsspec.open(uri, "rb") as f:
            return f.read()
    except _UNREADABLE as exc:
        raise _unreadable(uri, exc) from exc


def _read_table(uri: str, fallback_encoding: str) -> _Table:
    suffix = Path(uri.split("?")[0]).suffix.lower()
    data = _read_bytes(uri)
    if suffix == ".parquet":
        return _parquet_table(uri, data)
    lines, undecodable, encoding = _decoded_lines(data, fallback_encoding)
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_table(lines, undecodable, encoding)
    if suffix == ".json":
        return _json_table(uri, lines, undecodable, encoding)
    return _delimited_table(uri, lines, undecodable, encoding, "\t" if suffix in (".tsv", ".tab") else None)


def _decoded_lines(data: bytes, fallback_encoding: str) -> tuple[list[str], set[int], str]:
    """Lines with their endings, the 1-based numbers of lines no encoding could read, and the encoding used.

    Line by line, so one stray byte neither turns every other line's UTF-8 into mojibake nor loses them;
    a UTF-8 byte-order mark is dropped and the lines read the same way (a line pasted in from a cp1252
    file does not stop the manifest). A UTF-16 or UTF-32 mark decides the whole file's encoding.
    """
    for bom, encoding in WIDE_BOMS:
        if data.startswith(bom):
            try:
                return list(io.StringIO(data.decode(encoding), newline="")), set(), encoding
            except UnicodeDecodeError as exc:
                raise ManifestError(f"the manifest starts with a {encoding} byte-order mark but is not {encoding}: {exc}") from exc
    data = data.removeprefix(codecs.BOM_UTF8)
    lines, undecodable, fallback_lines = [], set(), []
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        try:
            lines.append(raw.decode("utf-8"))
            continue
        except UnicodeDecodeError:
            pass
        try:
            lines.append(raw.decode(fallback_encoding))
            fallback_lines.append(number)
        except UnicodeDecodeError:
            lines.append(raw.decode("utf-8", errors="replace"))
            undecodable.add(number)
    if not fallback_lines:
        return lines, undecodable, "utf-8"
    log.warning("%d manifest lines are not UTF-8 and were read as %s (first: line %d)", len(fallback_lines), fallback_encoding, fallback_lines[0])
    return lines, undecodable, f"utf-8, {len(fallback_lines)} lines {fallback_encoding}"


def _undecodable(numbers: set[int], first: int, last: int) -> str | None:
    bad = [n for n in range(first, last + 1) if n in numbers]
    return f"line {bad[0]} is neither UTF-8 nor the fallback encoding (set POINTVID_MANIFEST_ENCODING)" if bad else None


def _jsonl_table(lines: list[str], undecodable: set[int], encoding: str) -> _Table:
    records, places, errors, columns = [], [], {}, {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record, error = {}, _undecodable(undecodable, number, number)
        if error is None:
            try:
                record = json.loads(line.rstrip("\r\n"))  # (a line end would move the error to "line 2")
            except json.JSONDecodeError as exc:
                error = f"not JSON: {exc.msg} at column {exc.colno}"
            except RecursionError:
                error = "not JSON: nested too deeply"
            else:
                if not isinstance(record, dict):
                    record, error = {}, f"a JSON {type(record).__name__}, not an object"
        if error is not None:
            errors[len(records)] = error
        columns.update(dict.fromkeys(record))
        records.append(record)
        places.append(f"line {number}")
    return _Table(list(columns), records, places, errors, f"JSON Lines, {encoding}")


def _json_table(uri: str, lines: list[str], undecodable: set[int], encoding: str) -> _Table:
    if undecodable:
        raise ManifestError(f"manifest {uri}: {_undecodable(undecodable, 1, len(lines))}")
    try:
        data = json.loads("".join(lines))
    except ValueError as exc:
        raise ManifestError(f"manifest {uri} is not valid JSON ({exc}); one JSON object per line is read from a .jsonl file") from exc
    items = [data] if isinstance(data, dict) else data if isinstance(data, list) else None
    if items is None:
        raise ManifestError(f"manifest {uri} holds a JSON {type(data).__name__}; expected a list of objects (or one object)")
    records = [item if isinstance(item, dict) else {} for item in items]
    errors = {i: f"a JSON {type(item).__name__}, not an object" for i, item in enumerate(items) if not isinstance(item, dict)}
    columns = {name: None for record in records for name in record}
    return _Table(list(columns), records, [f"item {i}" for i in range(len(items))], errors, f"JSON, {encoding}")


def _delimiter(header: str) -> str:
    """The delimiter whose split of the header names a video column; else the one giving the most columns."""
    splits = {delimiter: next(csv.reader([header], delimiter=delimiter), []) for delimiter in DELIMITERS}
    for delimiter, names in splits.items():
        if any(_normalised(name) in VIDEO_ALIASES for name in names):
            return delimiter
    return max(DELIMITERS, key=lambda delimiter: len(splits[delimiter]))


def _delimited_table(uri: str, lines: list[str], undecodable: set[int], encoding: str, delimiter: str | None) -> _Table:
    """The first non-blank record is the header. A record csv cannot parse (strict quoting) fails alone; csv goes on after it."""
    delimiter = delimiter or _delimiter(next((line for line in lines if line.strip()), ""))
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    header: list[str] | None = None
    records, places, errors, last = [], [], {}, 0
    while True:
        first = last + 1
        try:
            fields, error = next(reader), None
        except StopIteration:
            break
        except csv.Error as exc:
            fields, error = [], str(exc) if reader.line_num == first else f"{exc} (lines {first}-{reader.line_num} not read: a quote left open?)"
        last = reader.line_num
        error = _undecodable(undecodable, first, last) or error
        if error is None and not any(value.strip() for value in fields):
            continue  # blank line
        if header is None:
            if error is not None:
                raise ManifestError(f"manifest {uri}: the header cannot be read: {error}")
            header = [name.strip() for name in fields]
            continue
        if error is None and any(value.strip() for value in fields[len(header) :]):  # (empty trailing fields are harmless)
            error = f"{len(fields)} fields but the header has {len(header)} (an unquoted delimiter in a caption?)"
        if error is not None:
            errors[len(records)] = error
        records.append({} if error else dict(zip(header, fields)))
        places.append(f"line {first}")
    return _Table(header or [], records, places, errors, f"{DELIMITER_NAMES[delimiter]}-separated, {encoding}")


def _parquet_table(uri: str, data: bytes) -> _Table:
    """Every column converted to Python at once; a column that will not convert is converted cell by cell, and a failing cell fails only its row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"manifest {uri} is not a readable Parquet file: {exc}") from exc
    columns, errors = {}, {}
    for name, column in zip(table.column_names, table.columns):
        try:
            columns[name] = column.to_pylist()
            continue
        except (ValueError, OverflowError, pa.ArrowException) as exc:
            log.warning("Parquet column %r does not convert as a whole (%s); converting it cell by cell", name, exc)
        values = []
        for i in range(len(column)):
            try:
                values.append(column[i].as_py())
            except (ValueError, OverflowError, pa.ArrowException) as exc:
                values.append(None)
                errors.setdefault(i, f"column {name!r}: {type(exc).__name__}: {exc}")
        columns[name] = values
    records = [dict(zip(columns, values)) for values in zip(*columns.values())] if columns else []
    return _Table(table.column_names, records, [f"row {i}" for i in range(table.num_rows)], errors, "Parquet")


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


def _text(value, column: str | None = None) -> str:
    """A cell as text; None / NaN are blank. Lists, objects and booleans are not text (TypeError naming the column)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"`{column}` is not UTF-8 text: {exc}") from exc
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"`{column}` holds a {type(value).__name__}, not text")
    return str(value).strip()


def _plain_row(table: _Table, index: int, names: tuple[str, str | None, str | None, str | None], base: str) -> InputRow:
    record, place = table.records[index], table.places[index]

    def invalid(error: str, uri: str | None = None) -> InputRow:
        return InputRow(key=_invalid_key(index), caption="", video=uri, row=index, error=f"{place}: {error}")

    if index in table.errors:
        return invalid(table.errors[index])
    video_column, caption_column, start_column, end_column = names
    try:
        video = _text(record.get(video_column), video_column)
        caption = _text(record.get(caption_column), caption_column)
    except (ValueError, TypeError) as exc:
        return invalid(str(exc))
    if not video:
        return invalid(f"no `{video_column}` value")
    uri = _resolve(video, base)
    try:
        start, end = _seconds(record.get(start_column)), _seconds(record.get(end_column))
    except ValueError as exc:
        return invalid(f"bad start/end: {exc}", uri)
    return InputRow(key=sample_key(video, start, end), caption=caption, video=uri, start=start, end=end, row=index)


def _as_list(value):
    if isinstance(value, str):
        return ast.literal_eval(value)
    return list(value)


def _panda70m_rows(table: _Table, columns: dict[str, str], base: str) -> list[InputRow]:
    rows: list[InputRow] = []
    for index, record in enumerate(table.records):
        place = table.places[index]
        try:
            if index in table.errors:
                raise ValueError(table.errors[index])
            video = _text(record.get(columns["url"]), columns["url"])
            if not video:
                raise ValueError(f"no `{columns['url']}` value")
            uri = _resolve(video, base)
            stamps, captions = _as_list(record[columns["timestamp"]]), _as_list(record[columns["caption"]])
            if len(stamps) != len(captions):
                raise ValueError(f"{len(stamps)} timestamps but {len(captions)} captions")
            clips = [(_seconds(a), _seconds(b), _text(c, columns["caption"])) for (a, b), c in zip(stamps, captions)]
        except (ValueError, SyntaxError, TypeError, KeyError) as exc:
            rows.append(InputRow(key=_invalid_key(len(rows)), caption="", row=len(rows), error=f"{place}: bad Panda-70M row: {exc}"))
            continue
        for start, end, caption in clips:
            rows.append(InputRow(key=sample_key(video, start, end), caption=caption, video=uri, start=start, end=end, row=len(rows)))
    return rows
