"""Read tabular data files (CSV, TSV, JSON, JSONL, Parquet) and hub datasets into plain lists of row dicts.

This layer knows nothing about chats or datasets' meanings; :mod:`tokensafe.data.sources` maps columns to
records. Its job is to turn every way a file can be malformed into one :class:`DataError` that names the file,
the row (0-based data row, header excluded) and, where it applies, the field -- so a user with a broken copy of a
dataset learns where to look instead of reading a traceback from deep inside ``csv`` or ``json``.

Rows are returned whole (no streaming): the largest file this project reads (SST-2 train, 67k rows) takes well
under a second, and a list keeps error reporting and ``limit`` handling simple.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any

from tokensafe.data.errors import DataError
from tokensafe.paths import DATA_DIR_ENV, hub_offline

Row = dict[str, Any]

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")
_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}

# HarmBench's ContextString and long Dolly contexts can exceed csv's default 128 KiB field limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def read_rows(
    path: str | PathLike,
    *,
    fmt: str | None = None,
    header: bool = True,
    column_names: list[str] | tuple[str, ...] | None = None,
) -> list[Row]:
    """Read a data file into a list of row dicts.

    Args:
        path: the file. Its suffix (``.csv``, ``.tsv``, ``.json``, ``.jsonl``/``.ndjson``, ``.parquet``) picks the
            format unless ``fmt`` is given.
        fmt: one of :data:`FORMATS`, overriding the suffix.
        header: CSV/TSV only. False for headerless files (the official AG News ``test.csv``); then
            ``column_names`` names the columns.
        column_names: CSV/TSV only. Column names for a headerless file, or replacements for the header row.

    JSON accepts a list of objects, or an object of parallel lists (``{"instructions": [...], "inputs": [...]}``,
    the safety-tuned-llamas evaluation files); empty lists in the latter are dropped as absent columns. A ``.json``
    file that is really JSON Lines is read as such. CSV/TSV values are strings; JSON and Parquet keep their types.

    Raises:
        DataError: missing file, unknown format, bytes that are not UTF-8 (naming the line and row), a JSONL line
            that is not valid JSON or not an object, a JSON element that is not an object, JSON nested too deeply
            for the parser, ragged CSV rows, a CSV/TSV header that names a column twice.
    """
    path = Path(path)
    fmt = _format_of(path, fmt)
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a regular file", file=path)
    if not header and not column_names:
        raise DataError("a headerless file needs column_names", file=path)
    if fmt == "parquet":
        return _read_parquet(path)
    data = path.read_bytes()
    if fmt in ("csv", "tsv"):
        text = _decode(data, path, row_of=lambda prefix: _csv_row_of(prefix, fmt, header))
        return _read_delimited(text, path, fmt, header, column_names)
    if fmt == "jsonl":
        text = _decode(data, path, row_of=lambda prefix: prefix.count("\n"))
        return _read_jsonl(text, path)
    text = _decode(data, path, row_of=None)
    return _read_json(text, path)


def read_rows_with_lines(path: str | PathLike, *, fmt: str | None = None) -> tuple[list[Row], list[int | None]]:
    """:func:`read_rows` (files with a header) plus, for each row, the 1-based line of the file where it starts.

    The line is what an editor shows, so errors about a user's own file can point at it: the header of a CSV/TSV is
    line 1, blank lines and quoted fields spanning several lines are counted. JSON (a list of objects) and Parquet
    rows have no line (None); errors about them name the row instead.
    """
    path = Path(path)
    fmt = _format_of(path, fmt)
    if fmt not in ("csv", "tsv", "jsonl"):
        rows = read_rows(path, fmt=fmt)
        return rows, [None] * len(rows)
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a regular file", file=path)
    data = path.read_bytes()
    lines: list[int | None] = []
    if fmt == "jsonl":
        text = _decode(data, path, row_of=lambda prefix: prefix.count("\n"))
        return _read_jsonl(text, path, lines), lines
    text = _decode(data, path, row_of=lambda prefix: _csv_row_of(prefix, fmt, True))
    return _read_delimited(text, path, fmt, True, None, lines), lines


def read_hub(dataset_id: str, *, split: str, config: str | None = None) -> list[Row]:
    """Load one split of a Hugging Face hub dataset as a list of row dicts.

    Raises:
        DataError: when the hub must not or cannot be contacted -- the usual situation on offline clusters and in
            CI. The advice to pass a local data directory is the error's ``hint`` (not its message), so a caller
            that knows better advice (a data directory was passed but lacks this split) replaces it.
    """
    what = f"{dataset_id}" + (f" (config {config})" if config else "") + f" split '{split}'"
    advice = f"pass a local data directory (--data-dir or {DATA_DIR_ENV}) that holds a copy of this dataset"
    if hub_offline():
        raise DataError(f"cannot load {what}: the Hugging Face hub is unreachable (offline mode is set)", hint=advice)
    try:
        import datasets  # deferred: importing datasets costs ~1 s and is not needed for local files
    except ImportError as err:  # pragma: no cover - datasets is a hard dependency
        raise DataError(f"cannot load {what}: the 'datasets' package is not installed", hint=advice) from err
    try:
        dataset = datasets.load_dataset(dataset_id, config, split=split)
    except FileNotFoundError as err:  # datasets' DatasetNotFoundError / DataFilesNotFoundError (OSError subclasses)
        raise DataError(f"cannot load {what}: not found on the Hugging Face hub ({err})") from err
    except (ConnectionError, TimeoutError, OSError) as err:
        # datasets turns a failed HEAD request into ConnectionError("Couldn't reach ... on the Hub"); other
        # network failures surface as OSError subclasses.
        raise DataError(f"cannot load {what}: the Hugging Face hub is unreachable ({err})", hint=advice) from err
    except Exception as err:  # a missing dataset/config/split: report it in the same shape, keep the cause
        raise DataError(f"cannot load {what} from the Hugging Face hub: {type(err).__name__}: {err}") from err
    return [dict(row) for row in dataset]


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        fmt = fmt.lower().lstrip(".")
        if fmt not in FORMATS:
            raise DataError(f"unknown format '{fmt}' (known: {', '.join(FORMATS)})", file=path)
        return fmt
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise DataError(
            f"unknown format: cannot tell it from the suffix '{suffix}' (known: {', '.join(_SUFFIXES)}); pass fmt=",
            file=path,
        )
    return _SUFFIXES[suffix]


def _decode(data: bytes, path: Path, row_of: Callable[[str], int | None] | None) -> str:
    """Decode UTF-8 (a leading BOM is dropped so it cannot end up in the first column's name).

    On bad bytes the error names the 1-based line and, when ``row_of`` can map the text before the bad byte to a
    row, the 0-based data row.
    """
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        prefix = data[bom : bom + err.start].decode("utf-8")  # valid by construction: err.start is the first bad byte
        line = prefix.count("\n") + 1
        row = row_of(prefix) if row_of is not None else None
        bad = data[bom + err.start : bom + err.start + 4].hex(" ")
        raise DataError(
            f"not valid UTF-8 at line {line} (byte offset {bom + err.start}, bytes {bad}); re-save the file as UTF-8",
            file=path,
            row=row,
        ) from err


def _csv_row_of(prefix: str, fmt: str, header: bool) -> int | None:
    """0-based data row containing the first byte after ``prefix`` (quoted fields may span lines)."""
    try:  # read the prefix as _read_delimited reads the file (newline=""), so rows are counted the same way
        records = list(csv.reader(io.StringIO(prefix, newline=""), **_dialect(fmt)))
    except csv.Error:  # the text before the bad byte is itself malformed: name the line only
        return None
    records = [r for r in records if r]
    # The text after the prefix continues the last record unless the prefix ends at a line break.
    index = len(records) if prefix == "" or prefix.endswith(("\n", "\r")) else len(records) - 1
    index -= 1 if header else 0
    return index if index >= 0 else None


def _dialect(fmt: str) -> dict[str, Any]:
    # GLUE TSVs are unquoted: a sentence may begin with '"' without closing it, so quoting must be off for TSV.
    return {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == "tsv" else {"delimiter": ","}


def _read_delimited(
    text: str,
    path: Path,
    fmt: str,
    header: bool,
    column_names: list[str] | tuple[str, ...] | None,
    lines: list[int | None] | None = None,
) -> list[Row]:
    """Rows of a CSV/TSV text; ``lines``, when given, receives the 1-based first line of each data row."""
    reader = csv.reader(io.StringIO(text, newline=""), **_dialect(fmt))
    records: list[list[str]] = []
    starts: list[int] = []
    try:
        end = 0  # lines consumed so far: a record starts on the line after the previous one ended
        for record in reader:
            if record:  # blank lines are not rows
                records.append(record)
                starts.append(end + 1)
            end = reader.line_num
    except csv.Error as err:
        raise DataError(f"malformed {fmt.upper()} near line {reader.line_num}: {err}", file=path) from err
    if header:
        if not records:
            raise DataError("empty file: no header row", file=path)
        names = list(column_names) if column_names else records[0]
        records, starts = records[1:], starts[1:]
    else:
        names = list(column_names or [])
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:  # a dict row would silently keep only the last column of each name
        raise DataError(f"duplicate column names: {', '.join(map(repr, duplicates))}", file=path)
    rows: list[Row] = []
    for index, record in enumerate(records):
        if len(record) != len(names):
            raise DataError(
                f"has {len(record)} fields but there are {len(names)} columns ({', '.join(names)})",
                file=path,
                row=index,
            )
        rows.append(dict(zip(names, record, strict=True)))
    if lines is not None:
        lines.extend(starts)
    return rows


def _read_jsonl(text: str, path: Path, lines: list[int | None] | None = None) -> list[Row]:
    """Rows of a JSON Lines text; ``lines``, when given, receives the 1-based line of each row."""
    rows: list[Row] = []
    # Split on '\n' only: str.splitlines() would also break inside strings at U+2028 and similar characters,
    # which JSON allows unescaped. The row number reported in errors is the 0-based line number.
    for index, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"line {index + 1} is not valid JSON: {err.msg} (column {err.colno})", file=path, row=index
            ) from err
        except RecursionError as err:  # json's decoder recurses once per nesting level
            raise DataError(f"line {index + 1} is nested too deeply to be read", file=path, row=index) from err
        if not isinstance(value, dict):
            raise DataError(
                f"line {index + 1} is a JSON {_json_type(value)}, expected an object", file=path, row=index
            )
        rows.append(value)
        if lines is not None:
            lines.append(index + 1)
    return rows


def _read_json(text: str, path: Path) -> list[Row]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":
            # Many '.json' dataset files are JSON Lines; read them as such rather than failing.
            return _read_jsonl(text, path)
        raise DataError(f"not valid JSON at line {err.lineno} column {err.colno}: {err.msg}", file=path) from err
    except RecursionError as err:  # json's decoder recurses once per nesting level
        raise DataError("JSON nested too deeply to be read", file=path) from err
    if isinstance(value, list):
        for index, element in enumerate(value):
            if not isinstance(element, dict):
                raise DataError(
                    f"list element is a JSON {_json_type(element)}, expected an object", file=path, row=index
                )
        return value
    if isinstance(value, dict):
        return _transpose(value, path)
    raise DataError(f"top level is a JSON {_json_type(value)}, expected a list of objects", file=path)


def _transpose(columns: dict[str, Any], path: Path) -> list[Row]:
    """Turn an object of parallel lists into rows; empty lists mean 'no such column' (``"inputs": []``)."""
    kept = {}
    for name, values in columns.items():
        if not isinstance(values, list):
            raise DataError(
                f"top level is an object but '{name}' is a JSON {_json_type(values)}; expected a list of objects "
                "or an object of parallel lists",
                file=path,
                field=name,
            )
        if values:
            kept[name] = values
    lengths = {name: len(values) for name, values in kept.items()}
    if len(set(lengths.values())) > 1:
        longest = max(lengths, key=lambda name: lengths[name])
        for name, length in lengths.items():
            if length != lengths[longest]:
                raise DataError(
                    f"parallel lists differ in length: '{name}' has {length} items, '{longest}' has "
                    f"{lengths[longest]}",
                    file=path,
                    field=name,
                )
    count = next(iter(lengths.values()), 0)
    return [{name: values[index] for name, values in kept.items()} for index in range(count)]


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq  # deferred: only Parquet files need it

    try:
        return pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises ArrowInvalid/OSError for corrupt files
        raise DataError(f"cannot read Parquet: {err}", file=path) from err


def _json_type(value: Any) -> str:
    names = {list: "array", dict: "object", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
