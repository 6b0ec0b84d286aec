"""A user's rows from one local file: CSV, TSV, JSON lines, JSON or parquet, optionally gzipped,
bz2'd or xz'd, read liberally (a BOM, pandas' quoting, Arrow dictionary and large string columns) and
each row paired with where it came from (file:line, or file row i) for the errors that name it."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
from collections.abc import Iterator
from pathlib import Path

from lnpeft.errors import UserTaskError, quote

_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


def file_format(path: Path | str) -> str:
    """csv, tsv, jsonl, json or parquet, from the file's suffix (a compression suffix looked through)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes.pop()
    fmt = _FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise UserTaskError(f"{path}: unknown file type; name it .csv, .tsv, .jsonl, .json or .parquet "
                            "(optionally .gz, .bz2 or .xz)")
    return fmt


def _text(path: Path) -> str:
    opener = _COMPRESSED.get(path.suffix.lower())
    if opener:
        with opener(path) as f:
            raw = f.read()
    else:
        raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserTaskError(f"{path}:{line}: not valid UTF-8 ({err.reason})") from None


def _delimited(path: Path, delimiter: str) -> tuple[list[str], Iterator[tuple[str, dict]]]:
    # csv quoting as pandas' to_csv writes it; strings stay strings (no NA guessing: "NA" is text)
    reader = csv.reader(io.StringIO(_text(path), newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise UserTaskError(f"{path}: empty file (expected a header row of column names)")

    def rows() -> Iterator[tuple[str, dict]]:
        for fields in reader:
            where = f"{path}:{reader.line_num}"
            if len(fields) != len(header):
                raise UserTaskError(f"{where}: {len(fields)} fields, the header has {len(header)} "
                                    f"({', '.join(header)})")
            yield where, dict(zip(header, fields))

    return header, rows()


def _json_lines(path: Path, text: str) -> tuple[list[str], Iterator[tuple[str, dict]]]:
    records = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserTaskError(f"{path}:{lineno}: not a JSON object ({err.msg})") from None
        if not isinstance(record, dict):
            raise UserTaskError(f"{path}:{lineno}: expected a JSON object per line, got {quote(record)}")
        records.append((f"{path}:{lineno}", record))
    return _columns(records), iter(records)


def _json(path: Path) -> tuple[list[str], Iterator[tuple[str, dict]]]:
    text = _text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _json_lines(path, text)  # .json files are often JSON lines (datasets writes them so)
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        data = [dict(zip(data, row)) for row in zip(*data.values())]  # {"column": [values]}
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UserTaskError(f"{path}: expected a list of objects, {{column: [values]}} or JSON lines")
    records = [(f"{path} record {i}", r) for i, r in enumerate(data)]
    return _columns(records), iter(records)


def _columns(records: list[tuple[str, dict]]) -> list[str]:
    return list(dict.fromkeys(k for _, r in records for k in r))


def arrow_rows(table, origin: str) -> tuple[list[str], Iterator[tuple[str, dict]]]:
    """An Arrow table's (column names, iterator of (where, record)), dictionary columns decoded."""
    columns = {name: table.column(name).to_pylist() for name in table.column_names}  # dictionaries decoded
    rows = ((f"{origin} row {i}", {c: v[i] for c, v in columns.items()}) for i in range(table.num_rows))
    return list(table.column_names), rows


def read_rows(path: Path | str) -> tuple[list[str], Iterator[tuple[str, dict]]]:
    """(column names, iterator of (where, record)) of one local file."""
    path = Path(path)
    fmt = file_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if fmt == "parquet":
        from lnpeft.data.artifacts import ArtifactError, read_user_table

        try:
            return arrow_rows(read_user_table(path), str(path))
        except ArtifactError as err:
            raise UserTaskError(str(err)) from None
    if fmt in ("csv", "tsv"):
        return _delimited(path, "," if fmt == "csv" else "\t")
    return _json(path) if fmt == "json" else _json_lines(path, _text(path))
