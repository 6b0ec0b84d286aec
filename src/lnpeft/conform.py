"""What a reader accepts: the documented columns in any Arrow type that holds the same values.

`lnpeft.artifacts.read_parquet` runs every table it reads through `conform`, so this is the one
place that decides it, for every artifact. A file written the ordinary way (`df.to_parquet` with
pandas 3 stores text as `large_string`; a user's int32 or float32 columns; a categorical column)
reads as if lnpeft had written it: each documented column is cast to its documented type, in
schema order, and extra columns are left out, so a stage never depends on an undocumented column.
A cast that would change a value (1.5 into an integer column, 2**53 + 1 into float64) or a column
of the wrong kind (text where a number is needed) is an error naming the file, the column, the
row, and what to write instead. Writers stay strict (artifacts._check): this is for reading only.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

_STRING_TYPES = (pa.types.is_string, pa.types.is_large_string,
                 # string_view exists from pyarrow 16 on
                 *([pa.types.is_string_view] if hasattr(pa.types, "is_string_view") else []))
_FLOAT64_EXACT = 2 ** 53  # integers beyond this do not all survive float64
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


class ArtifactError(ValueError):
    """A parquet artifact lacks a column or holds one of the wrong kind; the message names the fix."""


def _is_string(t: pa.DataType) -> bool:
    return any(test(t) for test in _STRING_TYPES)


def _meaning(t: pa.DataType) -> str:
    if _is_string(t):
        return "text"
    if pa.types.is_integer(t):
        return "whole numbers"
    if pa.types.is_floating(t):
        return "numbers"
    return str(t)


def _first_changed(col: pa.ChunkedArray, expected: pa.DataType) -> tuple[int, object, str] | None:
    """The first row whose value `expected` cannot hold exactly: (row, value, why). Only on the
    error path, so a plain Python scan is fine and obviously right."""
    for row, value in enumerate(col.to_pylist()):
        if value is None:
            continue
        if pa.types.is_integer(expected):
            if isinstance(value, float) and not value.is_integer():
                return row, value, "is not a whole number"
            if not _INT64_MIN <= value <= _INT64_MAX:
                return row, value, f"does not fit in {expected}"
        elif abs(value) > _FLOAT64_EXACT:
            return row, value, f"is beyond 2**53, where {expected} cannot hold every integer"
    return None


def _lossless_cast(col: pa.ChunkedArray, expected: pa.DataType, where: str, found: pa.DataType) -> pa.ChunkedArray:
    try:
        return col.cast(expected, safe=True)  # Arrow refuses truncation, overflow and inexact ints
    except (pa.ArrowInvalid, OverflowError) as err:
        bad = _first_changed(col, expected)
        detail = f"row {bad[0]} holds {bad[1]!r}, which {bad[2]}" if bad else str(err)
        raise ArtifactError(
            f"{where} is {found}, expected {expected}, and converting it would change a value: {detail}; "
            f"fix that value (or write the column as {expected}) and rerun"
        ) from err


def conform_column(col: pa.ChunkedArray, expected: pa.DataType, nullable: bool, where: str) -> pa.ChunkedArray:
    """`col` as `expected`, if that keeps every value; `where` ("file: column 'x'") starts errors."""
    found = col.type
    if found == expected:
        return col
    if pa.types.is_dictionary(found):  # pandas categoricals: judge the values, not the codes
        col = col.cast(found.value_type)
    actual = col.type
    if pa.types.is_null(actual):
        if nullable:
            return pa.chunked_array([pa.nulls(len(col), expected)], type=expected)
        raise ArtifactError(f"{where} is entirely empty (type null), expected {expected} ({_meaning(expected)}); "
                            "this column needs values: write them and rerun")
    compatible = (
        (_is_string(expected) and _is_string(actual))
        or (pa.types.is_integer(expected) and (pa.types.is_integer(actual) or pa.types.is_floating(actual)))
        or (pa.types.is_floating(expected) and (pa.types.is_floating(actual) or pa.types.is_integer(actual)))
    )
    if not compatible:
        raise ArtifactError(
            f"{where} is {found}, expected {expected} ({_meaning(expected)}); write the column as "
            f"{_meaning(expected)} (the schemas are in results/README.md) and rerun"
        )
    return _lossless_cast(col, expected, where, found)


def conform(table: pa.Table, schema: pa.Schema, path: object, artifact: str,
            nullable: Iterable[str] = (), keep_extra: bool = False) -> pa.Table:
    """`table` with every column of `schema` cast to its documented type.

    Column order in the file is free; the result has the schema's order. Columns outside the
    schema are dropped, or kept after the documented ones, unchanged, with `keep_extra` (the
    open `epochs` schema, whose metric columns depend on the task). A column of type null (pandas
    writes an all-None column so) is accepted only for the columns in `nullable`. The file's
    pandas metadata is dropped, so the frame a reader gets depends on the data alone.
    """
    names = table.column_names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ArtifactError(f"{path}: column(s) {twice} appear more than once; keep one of each and rerun")
    missing = [n for n in schema.names if n not in names]
    if missing:
        raise ArtifactError(
            f"{path}: the {artifact} artifact needs column(s) {missing}, which the file lacks "
            f"(it has {names}; needed: {schema.names}); add them (see results/README.md) or rerun "
            "the stage that makes this file"
        )
    nullable = set(nullable)
    columns = [conform_column(table.column(f.name), f.type, f.name in nullable, f"{path}: column {f.name!r}")
               for f in schema]
    fields = [pa.field(f.name, f.type) for f in schema]
    if keep_extra:
        for name in names:
            if name not in schema.names:
                columns.append(table.column(name))
                fields.append(pa.field(name, table.schema.field(name).type))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))
