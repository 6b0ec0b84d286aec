"""`lnpeft tables`: the fine-tuning grid -> results/tables/scores.parquet and Table 2 (dev).

For each (task, method) the (lr, epoch) is chosen on dev by `lnpeft.report.selection` (the seed
mean of the paper metric on the task's first dev split, MNLI: matched). Every dev split and metric
at that (lr, epoch) becomes one long-format row (`method, task, split, metric, value, lr, epoch,
seeds`; task is the paper's column, so MNLI gives mnli_matched and mnli_mismatched); value is the
mean over the seeds listed in `seeds`. `--seed-scores` also writes each seed's value at that (lr, epoch) (artifact
`seed_scores`). Table 2 puts methods in rows, "% of full" (trainable / all parameters), then the
paper's 9 columns in order (only the columns of the tasks present); with 3 or more seeds each cell
is the mean +- the half-width of its 95% t-interval (the csv: a `{column}_ci95` column each).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd

from lnpeft.data.artifacts import atomic_path, write_parquet
from lnpeft.data.tasks import column_task, get_task, score_columns
from lnpeft.errors import LnpeftError
from lnpeft.report.intervals import t_halfwidth
from lnpeft.report.selection import choose, chosen_rows, read_run_epochs
from lnpeft.report.table3 import METHOD_LABELS, column_label, parse_runs

SCORE_COLUMNS = ["method", "task", "split", "metric", "value", "lr", "epoch", "seeds"]
SEED_COLUMNS = ["method", "task", "split", "metric", "seed", "value", "lr", "epoch"]


def best_scores(method: str, task: str, runs: tuple[Path, ...]) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Long rows of the chosen (lr, epoch) of one (method, task) (`lnpeft.report.selection`: seed
    means, then each seed's), and its % of full parameters."""
    spec = get_task(task)
    epochs = read_run_epochs(runs, task)
    select = f"{spec.dev_splits[0]}/{spec.metric}"
    metric_cols = [f"{s}/{m}" for s in spec.dev_splits for m in (spec.metric, *spec.secondary_metrics)]
    missing = [c for c in metric_cols if c not in epochs.columns]
    if missing:
        raise LnpeftError(f"{method}/{task}: epochs.parquet lacks {missing}; is this a {task} run?")
    choice = choose(epochs, select, what=f"{method}/{task}")
    chosen = chosen_rows(epochs, choice)
    means = chosen[metric_cols].mean()
    rows = [
        {"method": method, "task": spec.score_name(split), "split": "dev", "metric": metric,
         "value": float(means[f"{split}/{metric}"]), "lr": choice.lr, "epoch": choice.epoch,
         "seeds": choice.seeds_text}
        for split in spec.dev_splits for metric in (spec.metric, *spec.secondary_metrics)
    ]
    seed_rows = [
        {"method": method, "task": spec.score_name(split), "split": "dev", "metric": metric,
         "seed": int(row["seed"]), "value": float(row[f"{split}/{metric}"]), "lr": choice.lr, "epoch": choice.epoch}
        for split in spec.dev_splits for metric in (spec.metric, *spec.secondary_metrics)
        for _, row in chosen.iterrows()
    ]
    meta = json.loads((Path(chosen["run"].iloc[0]) / "run.json").read_text())
    percent = 100.0 * meta["trainable"] / meta["total"]
    return pd.DataFrame(rows, columns=SCORE_COLUMNS), pd.DataFrame(seed_rows, columns=SEED_COLUMNS), percent


def build_scores(runs: dict[tuple[str, str], tuple[Path, ...]]
                 ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """scores (long format, dev: seed means), the seeds behind them, and each method's % of
    full, counted on a 2-label task when one is present (the paper counts with 2 labels), else on
    the first task."""
    frames, seed_frames, percents = [], [], {}
    for (method, task), dirs in runs.items():
        rows, seed_rows, percent = best_scores(method, task, dirs)
        frames.append(rows)
        seed_frames.append(seed_rows)
        two_labels = get_task(task).num_labels == 2
        if method not in percents or (two_labels and not percents[method][1]):
            percents[method] = (percent, two_labels)
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCORE_COLUMNS)
    seeds = pd.concat(seed_frames, ignore_index=True) if seed_frames else pd.DataFrame(columns=SEED_COLUMNS)
    return scores, seeds, {m: p for m, (p, _) in percents.items()}


def table2(scores: pd.DataFrame, percents: dict[str, float], methods: list[str]) -> pd.DataFrame:
    """Wide Table 2: methods x ("% of full", paper columns present) with the paper metric."""
    columns = [c for c in score_columns() if c in set(scores["task"])]
    table = pd.DataFrame(index=methods, columns=["percent_of_full", *columns], dtype=float)
    for method in methods:
        table.loc[method, "percent_of_full"] = percents.get(method, np.nan)
        for column in columns:
            hit = scores[(scores.method == method) & (scores.task == column)
                         & (scores.metric == column_task(column)[0].metric)]
            if len(hit):
                table.loc[method, column] = hit["value"].iloc[0]
    return table


def table2_ci(seed_scores: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Half-widths of the 95% t-interval over seeds of each Table 2 cell; NaN below 3 seeds, as
    the learning curves' bands (2 seeds give a t quantile of 12.7: an interval that says little)."""
    columns = [c for c in table.columns if c != "percent_of_full"]
    ci = pd.DataFrame(index=table.index, columns=columns, dtype=float)
    for method in table.index:
        for column in columns:
            hit = seed_scores[(seed_scores.method == method) & (seed_scores.task == column)
                              & (seed_scores.metric == column_task(column)[0].metric)]
            ci.loc[method, column] = t_halfwidth(hit["value"]) if len(hit) >= 3 else np.nan
    return ci


def _cell(value: float, half: float) -> str:
    if np.isnan(value):
        return "n/a"
    return f"{value:.4f}" if np.isnan(half) else f"{value:.4f} ± {half:.4f}"


def _percent(p: float) -> str:
    if np.isnan(p):
        return "n/a"
    return f"{p:.3g}%" if p >= 1 else f"{p:.3f}%"


def write_table2(table: pd.DataFrame, prefix: Path, model: str | None = None,
                 ci: pd.DataFrame | None = None, n_seeds: int = 1) -> None:
    """csv (full precision), markdown and LaTeX (4 decimals, as the paper), each atomic; with
    `ci` (several seeds) every cell gets its 95% half-width."""
    columns = [c for c in table.columns if c != "percent_of_full"]
    if ci is None or ci.isna().all().all():
        ci = pd.DataFrame(np.nan, index=table.index, columns=columns)
    ci_columns = [c for c in columns if ci[c].notna().any()]
    fmt = lambda v: repr(float(v)) if not np.isnan(v) else ""  # noqa: E731
    with atomic_path(Path(f"{prefix}.csv")) as tmp:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["method", "percent_of_full", *columns, *(f"{c}_ci95" for c in ci_columns)])
            for m in table.index:
                writer.writerow([m, *(fmt(v) for v in table.loc[m]), *(fmt(ci.loc[m, c]) for c in ci_columns)])
    headers = ["", "% of full", *(column_label(c) for c in columns)]
    body = [[METHOD_LABELS.get(m, m), _percent(table.loc[m, "percent_of_full"]),
             *(_cell(table.loc[m, c], ci.loc[m, c]) for c in columns)]
            for m in table.index]
    seeds = (f"; mean over {n_seeds} seeds ± the half-width of its 95% t-interval" if ci_columns else "")
    title = "Table 2: development set results" + (f" of {model}" if model else "") + \
        f" (paper metric per task; best learning rate and epoch chosen on dev{seeds})."
    md = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(row) + " |" for row in body]
    with atomic_path(Path(f"{prefix}.md")) as tmp:
        tmp.write_text(title + "\n\n" + "\n".join(md) + "\n")
    esc = lambda s: s.replace("%", r"\%").replace("_", r"\_")  # noqa: E731
    tex = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(columns) + 1) + "}",
           r"\toprule", " & ".join(esc(h) for h in headers) + r" \\", r"\midrule"]
    tex += [" & ".join(esc(c).replace("±", r"$\pm$") for c in row) + r" \\" for row in body]
    tex += [r"\bottomrule", r"\end{tabular}",
            r"\caption{" + esc(title.removeprefix("Table 2: ")).replace("±", r"$\pm$") + "}",
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
    parser.add_argument("--seed-scores", type=Path, default=None,
                        help="output: each seed's scores at the chosen (lr, epoch) (results/tables/scores_seeds.parquet)")


def run(args: argparse.Namespace) -> int:
    runs = parse_runs(args.runs)
    methods = list(dict.fromkeys(m for m, _ in runs))
    scores, seeds, percents = build_scores(runs)
    write_parquet(scores, args.scores, "scores")
    if args.seed_scores is not None:
        write_parquet(seeds, args.seed_scores, "seed_scores")
    table = table2(scores, percents, methods)
    n_seeds = int(seeds.groupby(["method", "task", "metric"])["seed"].nunique().max()) if len(seeds) else 1
    write_table2(table, args.out_prefix, args.model, table2_ci(seeds, table), n_seeds)
    print(table.to_string())
    return 0
