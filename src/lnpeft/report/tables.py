"""`lnpeft tables`: the fine-tuning grid -> results/tables/scores.parquet and Table 2 (dev).

For each (task, method) the best (lr, epoch) is chosen on dev by the paper metric of the task's
first dev split (MNLI: matched), with every metric averaged over seeds first. Every dev split and
metric at that (lr, epoch) becomes one long-format row (`method, task, split, metric, value, lr,
epoch`; task is the paper's column, so MNLI gives mnli_matched and mnli_mismatched). Table 2 puts
methods in rows, "% of full" (trainable / all parameters), then the paper's 9 columns in order
(only the columns of the tasks present).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd

from lnpeft.artifacts import atomic_path, read_parquet, write_parquet
from lnpeft.cli import LnpeftError
from lnpeft.report.table3 import COLUMN_LABELS, METHOD_LABELS, parse_runs
from lnpeft.tasks import PAPER_COLUMNS, column_task, get_task

SCORE_COLUMNS = ["method", "task", "split", "metric", "value", "lr", "epoch"]


def _read_run(run: Path, task: str) -> tuple[pd.DataFrame, dict]:
    epochs = read_parquet(run / "epochs.parquet", "epochs")
    meta_path = run / "run.json"
    if not meta_path.exists():
        raise LnpeftError(f"{meta_path}: missing; rerun the finetune job of {run}")
    meta = json.loads(meta_path.read_text())
    if meta["options"]["task"] != task:
        raise LnpeftError(f"{run}: a {meta['options']['task']} run listed as task {task}")
    epochs = epochs.assign(lr=float(meta["options"]["lr"]), seed=int(meta["options"]["seed"]))
    return epochs, meta


def best_lr_epoch(epochs: pd.DataFrame, select: str, columns: list[str] | None = None,
                  what: str = "runs") -> pd.Series:
    """Table 2's choice of (lr, epoch) for one (method, task): every column averaged over seeds per
    (lr, epoch), then the row with the highest `select`; ties go to the smaller lr, then the
    earlier epoch. `epochs` holds the epoch rows of all its runs with columns lr, epoch, `select`
    (and `columns`). Returns that row of seed means (lr, epoch, select, columns)."""
    columns = list(dict.fromkeys([select, *(columns or [])]))
    mean = epochs.groupby(["lr", "epoch"], as_index=False)[columns].mean()
    if mean[select].isna().all():
        raise LnpeftError(f"{what}: no dev score in {select!r}")
    return mean.sort_values([select, "lr", "epoch"], ascending=[False, True, True]).iloc[0]


def best_scores(method: str, task: str, runs: tuple[Path, ...]) -> tuple[pd.DataFrame, float]:
    """Long rows of the best (lr, epoch) of one (method, task), and its % of full parameters."""
    spec = get_task(task)
    frames, metas = zip(*(_read_run(Path(r), task) for r in runs))
    epochs = pd.concat(frames, ignore_index=True)
    select = f"{spec.dev_splits[0]}/{spec.metric}"
    metric_cols = [f"{s}/{m}" for s in spec.dev_splits for m in (spec.metric, *spec.secondary_metrics)]
    missing = [c for c in metric_cols if c not in epochs.columns]
    if missing:
        raise LnpeftError(f"{method}/{task}: epochs.parquet lacks {missing}; is this a {task} run?")
    best = best_lr_epoch(epochs, select, metric_cols, what=f"{method}/{task}")
    rows = [
        {"method": method, "task": spec.score_name(split), "split": "dev", "metric": metric,
         "value": float(best[f"{split}/{metric}"]), "lr": float(best["lr"]), "epoch": int(best["epoch"])}
        for split in spec.dev_splits for metric in (spec.metric, *spec.secondary_metrics)
    ]
    percent = 100.0 * metas[0]["trainable"] / metas[0]["total"]
    return pd.DataFrame(rows, columns=SCORE_COLUMNS), percent


def build_scores(runs: dict[tuple[str, str], tuple[Path, ...]]) -> tuple[pd.DataFrame, dict[str, float]]:
    """scores (long format, dev) and each method's % of full, counted on a 2-label task when
    one is present (the paper counts with 2 labels), else on the first task."""
    frames, percents = [], {}
    for (method, task), dirs in runs.items():
        rows, percent = best_scores(method, task, dirs)
        frames.append(rows)
        two_labels = get_task(task).num_labels == 2
        if method not in percents or (two_labels and not percents[method][1]):
            percents[method] = (percent, two_labels)
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCORE_COLUMNS)
    return scores, {m: p for m, (p, _) in percents.items()}


def table2(scores: pd.DataFrame, percents: dict[str, float], methods: list[str]) -> pd.DataFrame:
    """Wide Table 2: methods x ("% of full", paper columns present) with the paper metric."""
    columns = [c for c in PAPER_COLUMNS if c in set(scores["task"])]
    table = pd.DataFrame(index=methods, columns=["percent_of_full", *columns], dtype=float)
    for method in methods:
        table.loc[method, "percent_of_full"] = percents.get(method, np.nan)
        for column in columns:
            hit = scores[(scores.method == method) & (scores.task == column)
                         & (scores.metric == column_task(column)[0].metric)]
            if len(hit):
                table.loc[method, column] = hit["value"].iloc[0]
    return table


def _percent(p: float) -> str:
    if np.isnan(p):
        return "n/a"
    return f"{p:.3g}%" if p >= 1 else f"{p:.3f}%"


def write_table2(table: pd.DataFrame, prefix: Path, model: str | None = None) -> None:
    """csv (full precision), markdown and LaTeX (4 decimals, as the paper), each atomic."""
    columns = [c for c in table.columns if c != "percent_of_full"]
    with atomic_path(Path(f"{prefix}.csv")) as tmp:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["method", "percent_of_full", *columns])
            for m in table.index:
                writer.writerow([m, *(repr(float(v)) if not np.isnan(v) else "" for v in table.loc[m])])
    headers = ["", "% of full", *(COLUMN_LABELS[c] for c in columns)]
    body = [[METHOD_LABELS.get(m, m), _percent(table.loc[m, "percent_of_full"]),
             *("n/a" if np.isnan(table.loc[m, c]) else f"{table.loc[m, c]:.4f}" for c in columns)]
            for m in table.index]
    title = "Table 2: development set results" + (f" of {model}" if model else "") + \
        " (paper metric per task; best learning rate and epoch chosen on dev)."
    md = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(row) + " |" for row in body]
    with atomic_path(Path(f"{prefix}.md")) as tmp:
        tmp.write_text(title + "\n\n" + "\n".join(md) + "\n")
    esc = lambda s: s.replace("%", r"\%").replace("_", r"\_")  # noqa: E731
    tex = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(columns) + 1) + "}",
           r"\toprule", " & ".join(esc(h) for h in headers) + r" \\", r"\midrule"]
    tex += [" & ".join(esc(c) for c in row) + r" \\" for row in body]
    tex += [r"\bottomrule", r"\end{tabular}", r"\caption{" + esc(title.removeprefix("Table 2: ")) + "}",
            r"\label{tab:dev}", r"\end{table}"]
    with atomic_path(Path(f"{prefix}.tex")) as tmp:
        tmp.write_text("\n".join(tex) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="+", required=True, metavar="METHOD:TASK=RUN_DIR",
                        help="every grid run (repeat per method, task, lr and seed)")
    parser.add_argument("--scores", type=Path, required=True, help="output: results/tables/scores.parquet")
    parser.add_argument("--out-prefix", type=Path, required=True,
                        help="writes PREFIX.csv, PREFIX.md, PREFIX.tex (e.g. results/tables/table2)")
    parser.add_argument("--model", default=None, help="model name for the caption")


def run(args: argparse.Namespace) -> int:
    runs = parse_runs(args.runs)
    methods = list(dict.fromkeys(m for m, _ in runs))
    scores, percents = build_scores(runs)
    write_parquet(scores, args.scores, "scores")
    table = table2(scores, percents, methods)
    write_table2(table, args.out_prefix, args.model)
    print(table.to_string())
    return 0
