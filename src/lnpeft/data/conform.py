"""What a reader accepts: the documented columns in any Arrow type that holds the same values.

`lnpeft.data.artifacts.read_parquet` runs every table it reads through `conform`, so this is the one
place that decides it, for every artifact. A file written the ordinary way (`df.to_parquet` with
pandas 3 stores text as `large_string`; a user's int32 or float32 columns; a categorical column)
reads as if lnpeft had written it: each documented column is cast to its documented type, in
schema order, and extra columns are left out, so a stage never depends on an undocumented column.
Decimal columns (what a database export or `pyarrow.csv` may give) read as float64 where every
value reads back unchanged (any decimal of up to 15 significant digits does).
A cast that would change a value (1.5 into an integer column, 2**53 + 1 into float64) or a column
of the wrong kind (text where a number is needed) is an error naming the file, the column, the
row, and what to write instead; so is a column given twice, and a missing column says which
name in the file is the same one but for a UTF-8 byte-order mark or stray whitespace (a CSV read
without utf-8-sig, a CRLF file's CR). Writers stay strict (artifacts._check): this is for reading
only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from decimal import Decimal

import pyarrow as pa

from lnpeft.errors import quote

_STRING_TYPES = (pa.types.is_string, pa.types.is_large_string,
                 # string_view exists from pyarrow 16 on
                 *([pa.types.is_string_view] if hasattr(pa.types, "is_string_view") else []))
_FLOAT64_EXACT = 2 ** 53  # integers beyond this do not all survive float64
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


class ArtifactError(ValueError):
    """A parquet artifact lacks a column or holds one of the wrong kind; the message names the fix."""


def _is_string(t: pa.DataType) -> bool:
    return any(test(t) for test in _STRING_TYPES)


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or \
        (hasattr(pa.types, "is_binary_view") and pa.types.is_binary_view(t))


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


def _decimal_as_float64(col: pa.ChunkedArray, where: str, found: pa.DataType) -> pa.ChunkedArray:
    """Decimals as float64, refused where a float64 cannot give back the decimal (beyond about 15
    significant digits). In Python: float(Decimal) rounds correctly, and an Arrow decimal cast
    neither promises that nor refuses a rounded value; decimal columns are rare and small."""
    values = col.to_pylist()
    floats = [None if d is None else float(d) for d in values]
    for row, (d, x) in enumerate(zip(values, floats)):
        # repr is the shortest decimal that reads as x: equal to d exactly when x keeps d's digits
        if d is not None and not (math.isfinite(x) and Decimal(repr(x)) == d):
            raise ArtifactError(
                f"{where} is {found}, expected double, and converting it would change a value: row {row} "
                f"holds {d}, which double reads as {x!r}; round it to 15 significant digits (or write the "
                "column as double) and rerun"
            )
    return pa.chunked_array([pa.array(floats, pa.float64())], type=pa.float64())


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
    if pa.types.is_decimal(actual) and expected == pa.float64():
        return _decimal_as_float64(col, where, found)
    compatible = (
        (_is_string(expected) and _is_string(actual))
        or (pa.types.is_integer(expected) and (pa.types.is_integer(actual) or pa.types.is_floating(actual)))
        or (pa.types.is_floating(expected) and (pa.types.is_floating(actual) or pa.types.is_integer(actual)))
    )
    if not compatible:
        # text that was not valid UTF-8 is read as bytes: say so, "binary" alone puzzles
        hint = " (bytes: not UTF-8 text?)" if _is_string(expected) and _is_binary(actual) else ""
        raise ArtifactError(
            f"{where} is {found}{hint}, expected {expected} ({_meaning(expected)}); write the column as "
            f"{_meaning(expected)} (the schemas are in results/README.md) and rerun"
        )
    return _lossless_cast(col, expected, where, found)


def _same_but_for(found: str, name: str) -> str:
    """Why `found` is not `name` although it reads the same: the fix for a missing column."""
    if found.startswith("\ufeff"):
        return (f"column {quote(found)} starts with a UTF-8 byte-order mark (a CSV read as utf-8 instead of "
                f"utf-8-sig?): rename it to {quote(name)}")
    return f"column {quote(found)} has stray whitespace: rename it to {quote(name)}"


def _check_names(names: list[str], used: Iterable[str], required: Sequence[str], path: object, who: str) -> None:
    """Each `used` column at most once, each `required` one there; `who` needs them."""
    used = set(used)
    twice = sorted({n for n in names if n in used and names.count(n) > 1})
    if twice:
        raise ArtifactError(f"{path}: " + ", ".join(f"column {quote(n)} appears {names.count(n)} times" for n in twice)
                            + "; keep one of each and rerun")
    missing = [n for n in required if n not in names]
    if not missing:
        return
    near: dict[str, str] = {}
    for n in names:
        near.setdefault(n.lstrip("\ufeff").strip(), n)
    fixes = [_same_but_for(near[m], m) for m in missing if m in near]
    if len(fixes) < len(missing):
        fixes.append("add them (see results/README.md) or rerun the stage that makes this file")
    raise ArtifactError(f"{path}: {who} {missing}, which the file lacks (it has {quote(names, 300)}; "
                        f"needed: {list(required)}); {'; '.join(fixes)}")


def conform(table: pa.Table, schema: pa.Schema, path: object, artifact: str,
            nullable: Iterable[str] = (), keep_extra: bool = False,
            needed: Sequence[str] | None = None) -> pa.Table:
    """`table` with every column of `schema` cast to its documented type.

    Column order in the file is free; the result has the schema's order. Columns outside the
    schema are dropped, or kept after the documented ones, unchanged, with `keep_extra` (the
    open `epochs` schema, whose metric columns depend on the task). With `needed` (the columns a
    stage uses) only those must be there; the schema's other columns are conformed where present.
    A column of type null (pandas writes an all-None column so) is accepted only for the columns
    in `nullable`. The file's pandas metadata is dropped, so the frame a reader gets depends on
    the data alone.
    """
    names = table.column_names
    if needed is None:
        required, who = schema.names, f"the {artifact} artifact needs column(s)"
    else:
        required, who = list(needed), f"this stage needs {artifact} column(s)"
    # a duplicated column the reader does not read is no ambiguity for it
    _check_names(names, names if keep_extra else schema.names, required, path, who)
    if needed is not None:
        schema = pa.schema([f for f in schema if f.name in needed or f.name in names])
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
