"""`lnpeft table1`: components ranked by the sum over tasks of normalised Fisher (paper Table 1).

Per task: the mean Fisher of each of the eight components over all its entries (every layer,
weight and bias pooled, i.e. the n-weighted mean of the `fisher_components` rows), divided by
the sum of the eight means, so every task contributes a total of 1. Components are ranked by the
sum over tasks (rank 1 = most information). Writes PREFIX.csv, PREFIX.md and PREFIX.tex.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from lnpeft.analysis.masks import parse_task_paths
from lnpeft.data.artifacts import atomic_path, read_parquet
from lnpeft.model.architectures import COMPONENTS


def component_means(components: pd.DataFrame, task: str = "?") -> pd.Series:
    """n-weighted mean Fisher per component (index: COMPONENTS order)."""
    weighted = components.assign(total=components["fisher"] * components["n"])
    g = weighted.groupby("component")[["total", "n"]].sum()
    missing = [c for c in COMPONENTS if c not in g.index]
    if missing:
        raise ValueError(f"task {task}: fisher components lack {missing}")
    return (g["total"] / g["n"]).reindex(list(COMPONENTS))


def build_table1(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    normalised = {}
    for task, df in tables.items():
        means = component_means(df, task)
        if means.sum() <= 0:
            raise ValueError(f"task {task}: component Fisher sums to {means.sum()}")
        normalised[task] = means / means.sum()
    wide = pd.DataFrame(normalised)
    wide.insert(0, "score", wide.sum(axis=1))
    # stable: ties keep the forward order of COMPONENTS
    wide = wide.sort_values("score", ascending=False, kind="stable")
    wide.insert(0, "component", wide.index)
    wide.insert(0, "rank", range(1, len(wide) + 1))
    return wide.reset_index(drop=True)


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if c != "component" else "---" for c in cols) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def to_latex(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    spec = "r" + "l" + "r" * (len(cols) - 2)
    esc = lambda s: str(s).replace("_", r"\_")  # noqa: E731
    lines = [r"\begin{tabular}{" + spec + "}", r"\toprule",
             " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    for _, row in df.iterrows():
        lines.append(" & ".join(esc(_fmt(row[c])) for c in cols) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _fmt(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_table1(df: pd.DataFrame, prefix: Path | str) -> list[Path]:
    prefix = Path(prefix)
    paths = []
    for ext, text in (("csv", df.to_csv(index=False, float_format="%.6g")),
                      ("md", to_markdown(df)), ("tex", to_latex(df))):
        path = prefix.parent / f"{prefix.name}.{ext}"
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        paths.append(path)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--components", nargs="+", required=True, metavar="TASK=PARQUET",
                        help="results/fisher/{model}/{task}.components.parquet per task")
    parser.add_argument("--out", required=True, help="output prefix (writes .csv, .md, .tex)")


def run(args: argparse.Namespace) -> int:
    tables = {t: read_parquet(p, "fisher_components") for t, p in parse_task_paths(args.components).items()}
    df = build_table1(tables)
    paths = write_table1(df, args.out)
    print(df[["rank", "component", "score"]].to_string(index=False))
    print(f"table1: {', '.join(map(str, paths))}")
    return 0
