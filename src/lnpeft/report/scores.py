"""The scores file of `lnpeft stats` as users write it: read it, check it, name every row's metric.

Long format, parquet (results/tables/scores.parquet, or a user's own): columns `method, task,
split, metric, value`, read by lnpeft.data.artifacts.read_parquet as the `scores` artifact, which
decides the Arrow types it accepts (text as string, large_string, string_view or dictionary;
`value` as any integer or float type, or a decimal float64 holds) and names a missing,
duplicated, BOM-prefixed or whitespace-padded column. `lr` and `epoch` may be left out (if there,
they are numbers as in scores.parquet, and the rows averaged as seeds of one (method, task, split,
metric) must share them); any other column is ignored. What is particular to a
scores file is checked here, row by row: `task` is one of the paper's 9 columns (or another GLUE
task, then left out with a reason by the statistics), `split` is `dev` or `test`, `metric` any
name of lnpeft.data.metric_names (`matthews_correlation`, `spearmanr`, `mcc`, ...), `value` finite.
Names lose surrounding whitespace (a stray CR of a CRLF file included). Every problem is one
ScoresError naming the file and, for a bad row, its position counted from 0 (as pandas' `iloc`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from lnpeft.data.artifacts import ArtifactError, read_parquet
from lnpeft.data.metric_names import resolve_metric
from lnpeft.data.tasks import PAPER_COLUMNS, TASKS, column_task, get_task, is_task
from lnpeft.errors import quote

NEEDED: tuple[str, ...] = ("method", "task", "split", "metric", "value")
TEXT: tuple[str, ...] = NEEDED[:4]
SPLITS: tuple[str, ...] = ("dev", "test")
_FORMAT = "a scores file is parquet with columns method, task, split, metric, value (lr, epoch optional)"


class ScoresError(ArtifactError):
    """A scores file or row that cannot be compared; the message names the file (and row)."""


def read_scores(path: Path | str) -> pd.DataFrame:
    """The checked rows of a scores parquet: NEEDED columns, names stripped, metrics lnpeft's."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such scores file; make it with `lnpeft tables` "
                                f"(results/tables/scores.parquet) or write one: {_FORMAT}")
    try:
        raw = read_parquet(path, "scores", columns=NEEDED)
    except ArtifactError as err:  # one error type for the scores file, with its format
        raise ScoresError(f"{err}; {_FORMAT}") from err
    if len(raw) == 0:
        raise ScoresError(f"{path}: no rows; {_FORMAT}")
    rows = check_rows(raw, str(path))
    if {"lr", "epoch"} <= set(raw.columns):
        check_one_grid_point(rows.assign(lr=raw["lr"].to_numpy(), epoch=raw["epoch"].to_numpy()), str(path))
    return rows


def check_one_grid_point(rows: pd.DataFrame, source: str) -> None:
    """Rows of one (method, task, split, metric) are averaged as seed replicates: they must come from
    one (lr, epoch). Rows of several grid points are several results, not seeds of one: refused,
    naming them (positions from 0)."""
    keys = ["method", "task", "split", "metric"]
    for key, group in rows.groupby(keys, sort=False):
        points = group[["lr", "epoch"]].drop_duplicates()
        if len(points) > 1:
            listed = "; ".join(f"row {i}: lr {r.lr:g}, epoch {int(r.epoch)}" for i, r in
                               zip(group.index[:6], group[["lr", "epoch"]].itertuples(index=False)))
            raise ScoresError(f"{source}: the rows of ({', '.join(key)}) come from {len(points)} different (lr, "
                              f"epoch) grid points ({listed}); rows of one method, task, split and metric are "
                              "averaged as seeds of one run, so give the rows of one grid point per seed "
                              "(lnpeft.report.selection chooses it)")


def _float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond float range
        return math.inf


def _expected_metric(task: str) -> str:
    return column_task(task)[0].metric if task in PAPER_COLUMNS else get_task(task).metric


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
                null = isinstance(name, float) and math.isnan(name)  # how pandas reads a null text
                raise ScoresError(f"{where}: {column} is {quote(None if null else name)}, expected a name")
            names.append(name.strip())
        method, task, split, metric = names
        if task not in PAPER_COLUMNS and not is_task(task):
            raise ScoresError(f"{where}: task {quote(task)} is not one of the paper's columns "
                              f"({', '.join(PAPER_COLUMNS)}) nor a GLUE task ({', '.join(TASKS)}) nor a custom task")
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
