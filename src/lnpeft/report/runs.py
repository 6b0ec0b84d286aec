"""Where a run's facts are read from its path: results/runs/{model}/{task}/{method}/lr{lr}_seed{seed}/.

The one parser of run paths for every table, figure and curve; a Fisher-subset run's method name
(`fisher-{scheme}-f{fraction}`) carries its mask scheme and fraction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from lnpeft.data.artifacts import read_parquet
from lnpeft.data.tasks import get_task

RUN_RE = re.compile(
    r"(?:^|/)runs/(?P<model>[^/]+)/(?P<task>[^/]+)/(?P<method>[^/]+)/lr(?P<lr>[^_/]+)_seed(?P<seed>\d+)/epochs\.parquet$"
)
FISHER_METHOD_RE = re.compile(r"^fisher-(?P<scheme>individual|global|cv)-f(?P<fraction>[0-9.]+)$")


def read_epoch_rows(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Every epoch row of the given runs' epochs.parquet: task, method, scheme, fraction, lr, seed
    (numbers, from the path), epoch, train_loss, dev (the paper metric on the task's first dev
    split) and column (that column's name in epochs.parquet)."""
    frames, models = [], set()
    for path in paths:
        m = RUN_RE.search(str(path).replace("\\", "/"))
        if not m:
            raise ValueError(f"{path}: not a run's epochs.parquet (runs/{{model}}/{{task}}/{{method}}/lr{{lr}}_seed{{seed}}/)")
        spec = get_task(m["task"])
        column = f"{spec.dev_splits[0]}/{spec.metric}"
        epochs = read_parquet(path, "epochs")
        if column not in epochs:
            raise ValueError(f"{path}: no column {column!r} (columns: {list(epochs.columns)})")
        fm = FISHER_METHOD_RE.match(m["method"])
        models.add(m["model"])
        frames.append(pd.DataFrame({
            "task": m["task"], "method": m["method"], "scheme": fm["scheme"] if fm else None,
            "fraction": float(fm["fraction"]) if fm else 1.0, "lr": float(m["lr"]), "seed": int(m["seed"]),
            "epoch": epochs["epoch"].astype("int64"), "train_loss": epochs["train_loss"].astype(float),
            "dev": epochs[column].astype(float), "column": column}))
    if not frames:
        raise ValueError("no runs given")
    if len(models) > 1:
        raise ValueError(f"runs of several models {sorted(models)}: one model at a time")
    rows = pd.concat(frames, ignore_index=True)
    dup = rows.duplicated(["task", "method", "lr", "seed", "epoch"])
    if dup.any():
        first = rows.loc[dup, ["task", "method", "lr", "seed"]].iloc[0].to_dict()
        raise ValueError(f"the same run given twice: {first}")
    return rows
