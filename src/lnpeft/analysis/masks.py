"""`lnpeft masks`: rank output-LayerNorm entries by a Fisher mask scheme (paper Sections 3.2-3.5).

Each task's LayerNorm Fisher is first normalised by its sum over all LayerNorm entries, so a task
with large total information does not drown the others. Scores per scheme, for a target task:
- `individual`: the target's own normalised Fisher;
- `global`: the sum of the normalised Fishers of all given tasks (the same for every target);
- `cv`: the sum over all given tasks except the target.
Rank 0 is the highest score; ties keep parameter order (the row order of the Fisher tables:
model order, then entry index). A run with fraction f trains the entries with rank < ceil(f * N).
Rows are written in parameter order.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np
import pandas as pd

from lnpeft.data.artifacts import read_parquet, write_parquet
from lnpeft.model.provenance import check_fisher_labels

KEY = ["param", "layer", "kind", "index"]

SchemeFn = Callable[[dict[str, pd.Series], str], pd.Series]
SCHEMES: dict[str, SchemeFn] = {}


def register_scheme(name: str) -> Callable[[SchemeFn], SchemeFn]:
    def decorator(fn: SchemeFn) -> SchemeFn:
        SCHEMES[name] = fn
        return fn
    return decorator


@register_scheme("individual")
def individual(normalised: dict[str, pd.Series], target: str) -> pd.Series:
    if target not in normalised:
        raise ValueError(f"scheme individual: no Fisher table for the target task {target!r} "
                         f"(given: {', '.join(normalised)})")
    return normalised[target]


@register_scheme("global")
def global_(normalised: dict[str, pd.Series], target: str) -> pd.Series:
    return sum(normalised.values())


@register_scheme("cv")
def cv(normalised: dict[str, pd.Series], target: str) -> pd.Series:
    others = [s for task, s in normalised.items() if task != target]
    if not others:
        raise ValueError(f"scheme cv: needs Fisher tables of tasks other than {target!r}")
    return sum(others)


def normalise(fisher: pd.DataFrame, task: str) -> pd.Series:
    total = fisher["fisher"].sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError(f"task {task}: LayerNorm Fisher sums to {total}; cannot normalise")
    return fisher["fisher"] / total


def rank_scores(score: np.ndarray) -> np.ndarray:
    """rank[i] = position of entry i when sorted by descending score, ties by position i."""
    order = np.lexsort((np.arange(len(score)), -score))
    ranks = np.empty(len(score), dtype=np.int64)
    ranks[order] = np.arange(len(score), dtype=np.int64)
    return ranks


def build_mask(tables: dict[str, pd.DataFrame], scheme: str, target: str) -> pd.DataFrame:
    """The masks artifact of `scheme` for `target` from per-task Fisher tables (artifact `fisher`)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose from {', '.join(SCHEMES)}")
    if not tables:
        raise ValueError("no Fisher tables given")
    first_task, first = next(iter(tables.items()))
    keys = first[KEY].reset_index(drop=True)
    for task, df in tables.items():
        if len(df) != len(keys) or not df[KEY].reset_index(drop=True).equals(keys):
            raise ValueError(f"task {task}: its Fisher table lists different LayerNorm entries than "
                             f"task {first_task}'s (were they computed on the same model?)")
    normalised = {task: normalise(df, task).reset_index(drop=True) for task, df in tables.items()}
    score = SCHEMES[scheme](normalised, target).to_numpy(dtype=np.float64)
    out = keys.copy()
    out["score"] = score
    out["rank"] = rank_scores(score)
    return out


def parse_task_paths(items: list[str]) -> dict[str, str]:
    """['cola=path', ...] -> {'cola': 'path'}; a task given twice is an error."""
    out: dict[str, str] = {}
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise ValueError(f"expected TASK=PATH, got {item!r}")
        if task in out:
            raise ValueError(f"task {task!r} given twice")
        out[task] = path
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fisher", nargs="+", required=True, metavar="TASK=PARQUET",
                        help="per-task LayerNorm Fisher tables (results/fisher/{model}/{task}.parquet)")
    parser.add_argument("--scheme", required=True, choices=sorted(SCHEMES))
    parser.add_argument("--task", required=True, help="the target task")
    parser.add_argument("--out", required=True, help="masks parquet")


def run(args: argparse.Namespace) -> int:
    paths = parse_task_paths(args.fisher)
    tables = {task: read_parquet(path, "fisher") for task, path in paths.items()}
    check_fisher_labels(paths)  # TASK=PARQUET: each table's own data says which task it is
    mask = build_mask(tables, args.scheme, args.task)
    used = [t for t in paths if not (args.scheme == "cv" and t == args.task)]
    if args.scheme == "individual":
        used = [args.task]
    meta = {"lnpeft": json.dumps({"scheme": args.scheme, "task": args.task, "tasks": used}, sort_keys=True)}
    write_parquet(mask, args.out, "masks", metadata=meta)
    print(f"masks: {args.scheme} for {args.task} from {', '.join(used)}: {len(mask)} entries -> {args.out}")
    return 0
