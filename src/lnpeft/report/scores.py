"""The scores file of `lnpeft stats` as users write it: read it, check it, name every row's metric.

Long format, parquet (results/tables/scores.parquet, or a user's own): columns `method, task,
split, metric, value`; any other column (`lr`, `epoch`, `seed`, ...) is ignored, so a file
without `lr` and `epoch` is fine. Text columns may be Arrow string, large_string or
dictionary-encoded (what pandas writes); `value` any integer, float or decimal type. `task` is one
of the paper's 9 columns (or another GLUE task, then left out with a reason by the statistics),
`split` is `dev` or `test`, `metric` any name of lnpeft.metric_names (`matthews_correlation`,
`spearmanr`, `mcc`, ...). Names lose surrounding whitespace (a stray CR of a CRLF file included).
Every problem is one ScoresError naming the file and, for a bad row, its position counted from 0
(as pandas' `iloc`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lnpeft.messages import quote
from lnpeft.metric_names import resolve_metric
from lnpeft.tasks import PAPER_COLUMNS, TASKS, column_task

NEEDED: tuple[str, ...] = ("method", "task", "split", "metric", "value")
TEXT: tuple[str, ...] = NEEDED[:4]
SPLITS: tuple[str, ...] = ("dev", "test")
_FORMAT = "a scores file is parquet with columns method, task, split, metric, value (lr, epoch optional)"


class ScoresError(ValueError):
    """A scores file or row that cannot be compared; the message names the file (and row)."""


def _is_text(typ: pa.DataType) -> bool:
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)


def _is_number(typ: pa.DataType) -> bool:
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ)


def _check_columns(path: Path, schema: pa.Schema) -> None:
    names = schema.names
    bom = [n for n in names if n.startswith("\ufeff")]
    if bom:
        raise ScoresError(f"{path}: column {quote(bom[0])} starts with a UTF-8 byte-order mark (a CSV read "
                          "as utf-8 instead of utf-8-sig?); rename it to "
                          f"{quote(bom[0].lstrip(chr(0xFEFF)))}")
    for name in NEEDED:
        if names.count(name) > 1:
            raise ScoresError(f"{path}: column {name!r} appears {names.count(name)} times; keep one")
    missing = [n for n in NEEDED if n not in names]
    if missing:
        near = {n.strip(): n for n in names}
        hints = [f"{quote(near[m])} has stray whitespace" for m in missing if m in near]
        raise ScoresError(
            f"{path}: lacks column(s) {', '.join(missing)} (columns there: "
            f"{quote(names, 200)}){'; ' + ', '.join(hints) if hints else ''}; {_FORMAT}"
        )
    for name in TEXT:
        typ = schema.field(name).type
        if not _is_text(typ) and not pa.types.is_null(typ):
            extra = " (bytes: not UTF-8 text?)" if pa.types.is_binary(typ) or pa.types.is_large_binary(typ) else ""
            raise ScoresError(f"{path}: column {name!r} is {typ}{extra}, expected text (string)")
    typ = schema.field("value").type
    if not _is_number(typ) and not pa.types.is_null(typ):
        raise ScoresError(f"{path}: column 'value' is {typ}, expected a number (float64)")


def read_scores(path: Path | str) -> pd.DataFrame:
    """The checked rows of a scores parquet: NEEDED columns, names stripped, metrics lnpeft's."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such scores file; make it with `lnpeft tables` "
                                f"(results/tables/scores.parquet) or write one: {_FORMAT}")
    try:
        schema = pq.read_schema(path)
        _check_columns(path, schema)
        table = pq.read_table(path, columns=list(NEEDED))
        value = table.column("value")
        if pa.types.is_dictionary(value.type):
            value = value.cast(value.type.value_type)
        # every integer, float and decimal type as float64 (nulls stay null: check_rows names them)
        raw = pd.DataFrame({**{name: table.column(name).to_pylist() for name in TEXT},
                            "value": value.cast(pa.float64(), safe=False).to_pylist()})
    except (pa.ArrowException, OSError) as err:
        raise ScoresError(f"{path}: not a readable parquet file ({err}); {_FORMAT}") from None
    if len(raw) == 0:
        raise ScoresError(f"{path}: no rows; {_FORMAT}")
    return check_rows(raw, str(path))


def _float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond float range
        return math.inf


def _expected_metric(task: str) -> str:
    return column_task(task)[0].metric if task in PAPER_COLUMNS else TASKS[task].metric


def check_rows(scores: pd.DataFrame, source: str) -> pd.DataFrame:
    """Every row checked (text names, a known task and split, a known metric, a finite value);
    metric names mapped to lnpeft's. Errors name `source` and the row (from 0)."""
    missing = [c for c in NEEDED if c not in scores.columns]
    if missing:
        raise ScoresError(f"{source}: lacks column(s) {', '.join(missing)}; {_FORMAT}")
    rows = []
    for i, row in enumerate(zip(*(scores[c].tolist() for c in NEEDED))):
        where = f"{source} row {i}"
        names = []
        for column, name in zip(TEXT, row):
            if not isinstance(name, str) or not name.strip():
                raise ScoresError(f"{where}: {column} is {quote(name)}, expected a name")
            names.append(name.strip())
        method, task, split, metric = names
        if task not in PAPER_COLUMNS and task not in TASKS:
            raise ScoresError(f"{where}: task {quote(task)} is not one of the paper's columns "
                              f"({', '.join(PAPER_COLUMNS)}) nor a GLUE task ({', '.join(TASKS)})")
        if split not in SPLITS:
            raise ScoresError(f"{where}: split {quote(split)} is neither dev nor test")
        metric = resolve_metric(metric, where, task, _expected_metric(task))
        value = row[4]
        number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
        if not number or not math.isfinite(_float(value)):
            raise ScoresError(f"{where}: value {quote(value)} of ({method}, {task}, {split}, {metric}) is not "
                              "a finite number; give the score or drop the row")
        rows.append((method, task, split, metric, float(value)))
    return pd.DataFrame(rows, columns=list(NEEDED)).astype({"value": "float64"})
