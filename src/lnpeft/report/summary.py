"""`lnpeft summary`: the headline of a run in a few lines, generated from its results.

Table 2's dev scores next to each task's trivial baseline (the best constant prediction on the
same dev split under the paper metric: the majority class for accuracy, always "positive" for
F1, 0 for MCC and correlations), and two checks a reader asks first: does LayerNorm beat the
baseline on every task, and does it beat the random control on average. `--readme FILE` puts the
block between `<!-- BEGIN summary -->` and `<!-- END summary -->` of FILE, so documentation
shows numbers made by code, never typed.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from lnpeft.data.artifacts import atomic_path, read_parquet
from lnpeft.data.metrics import compute_metrics
from lnpeft.data.tasks import TaskSpec, column_task, score_columns
from lnpeft.report.table3 import METHOD_LABELS, column_label

BEGIN, END = "<!-- BEGIN summary -->", "<!-- END summary -->"  # markers("summary")


def trivial_baseline(spec: TaskSpec, labels: np.ndarray) -> float:
    """The paper metric of the best constant prediction (regression: any constant scores 0)."""
    if spec.is_regression:  # a correlation with a constant is undefined: no signal, 0
        return 0.0
    labels = np.asarray(labels, dtype=np.float64)
    return max(compute_metrics(spec, labels, np.full_like(labels, c))[spec.metric] for c in range(spec.num_labels))


def dev_table(scores: pd.DataFrame, data_dir: Path) -> pd.DataFrame:
    """methods (+ `baseline`) x paper columns present: the dev paper metric of each."""
    dev = scores[scores["split"] == "dev"]
    columns = [c for c in score_columns() if c in set(dev["task"])]
    methods = list(dict.fromkeys(dev["method"]))
    table = pd.DataFrame(index=[*methods, "baseline"], columns=columns, dtype=float)
    for column in columns:
        spec, split = column_task(column)
        hits = dev[(dev["task"] == column) & (dev["metric"] == spec.metric)]
        for method, value in zip(hits["method"], hits["value"]):
            table.loc[method, column] = value
        data = read_parquet(Path(data_dir) / spec.name / f"{split}.parquet", "data")
        table.loc["baseline", column] = trivial_baseline(spec, data["label"].to_numpy(dtype=np.float64))
    return table


def checks(table: pd.DataFrame, method: str = "layernorm", control: str = "random") -> list[str]:
    """One line per check, each starting with yes/no, with the numbers behind it."""
    lines = []
    if method in table.index:
        row, base = table.loc[method], table.loc["baseline"]
        beats = [c for c in table.columns if row[c] > base[c]]
        detail = ", ".join(f"{column_label(c)} {row[c]:.3f} vs {base[c]:.3f}" for c in table.columns)
        lines.append(f"{'yes' if len(beats) == len(table.columns) else 'no'}: {METHOD_LABELS[method]} beats "
                     f"the trivial baseline on {len(beats)} of {len(table.columns)} tasks ({detail})")
        if control in table.index:
            a, b = row.mean(), table.loc[control].mean()
            lines.append(f"{'yes' if a > b else 'no'}: {METHOD_LABELS[method]} beats {METHOD_LABELS[control]} "
                         f"on average over the tasks ({a:.3f} vs {b:.3f})")
    return lines


def duration(seconds: float) -> str:
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s"


def elapsed(log: Path) -> float:
    """Seconds of a finished Snakemake run, from its log's last `Elapsed time: H:MM:SS` line."""
    found = re.findall(r"^Elapsed time: (\d+):(\d\d):(\d\d(?:\.\d+)?)$", Path(log).read_text(), re.M)
    if not found:
        raise ValueError(f"{log}: no 'Elapsed time:' line (not the log of a finished Snakemake run)")
    h, m, s = found[-1]
    return 3600 * int(h) + 60 * int(m) + float(s)


def render(table: pd.DataFrame, title: str) -> str:
    headers = ["", *(column_label(c) for c in table.columns), "mean"]
    lines = [title, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for method in table.index:
        label = "trivial baseline" if method == "baseline" else METHOD_LABELS.get(method, method)
        cells = ["n/a" if np.isnan(v) else f"{v:.3f}" for v in table.loc[method]]
        lines.append("| " + " | ".join([label, *cells, f"{table.loc[method].mean():.3f}"]) + " |")
    return "\n".join(lines + [""] + [f"- {line}" for line in checks(table)]) + "\n"


def markers(name: str) -> tuple[str, str]:
    """The BEGIN/END comment lines of a generated block (`summary`, `reproduction`, ...)."""
    return f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"


def embed(path: Path, block: str, name: str = "summary") -> None:
    """Replace what stands between the BEGIN/END `name` markers of `path` by `block` (atomically)."""
    begin, end = markers(name)
    text = Path(path).read_text()
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{path}: needs one '{begin}' line and, after it, one '{end}' line")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(f"{head}{begin}\n{block}{end}{tail}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", type=Path, default=Path("results/tables/scores.parquet"))
    parser.add_argument("--data-dir", type=Path, default=Path("results/data"))
    parser.add_argument("--title", default="Dev scores (paper metric; best learning rate and epoch on dev):")
    parser.add_argument("--readme", type=Path, help="also write the block between the summary markers of this file")
    parser.add_argument("--log", type=Path, help="the run's Snakemake log: its elapsed time joins the title")


def run(args: argparse.Namespace) -> int:
    table = dev_table(read_parquet(args.scores, "scores"), args.data_dir)
    title = args.title
    if args.log:
        took = f"Snakemake {duration(elapsed(args.log))} on {os.cpu_count()} cores"
        title = f"{title[:-2]}; {took}):" if title.endswith("):") else f"{title} ({took})"
    block = render(table, title)
    print(block, end="")
    if args.readme:
        embed(args.readme, block)
        print(f"summary -> {args.readme}")
    return 0
