"""`lnpeft table3`: the paper's Table 3 (test-set scores), csv + md + tex, and scores with test rows.

Where test scores come from, first that applies:
1. `--glue-results TSV`: the scores the GLUE server returned for the submission zips. Format
   (tab-separated, UTF-8 with or without a BOM, LF or CRLF, header line required, `#` lines are
   comments):

       method	task	value
       layernorm	qnli	0.910
       layernorm	mnli_matched	0.831

   `task` is one of the paper's 9 columns (qnli sst2 mnli_matched mnli_mismatched cola mrpc stsb
   rte qqp), `value` is the column's paper metric (Table 4: accuracy, Matthews, F1, Spearman) as a
   fraction: the server shows percentages, divide them by 100 (a value above 1 is rejected).
   An optional `metric` column (header `method task metric value`) names each value's metric, in
   any spelling of lnpeft.data.metric_names (`matthews_correlation`, `spearmanr`, `mcc`, ...); a task's
   secondary metric (MRPC accuracy, STS-B Pearson) then lands in the test rows too.
2. labelled local test data: for each (method, task) the run the submission sends
   (lnpeft.report.submission.submitted_run: the median seed at Table 2's lr and epoch) is scored
   on every test split whose parquet has labels (GLUE's are unlabelled, so this is usually empty);
3. otherwise every cell is `n/a` and the table carries a note.
The test rows (split `test`) are appended to a copy of the input scores (`--scores-out`);
scores.parquet itself is never modified. Local test rows carry the lr, epoch and seed of the run
that made them (epoch: the one its predictions come from); GLUE server rows, which do not say,
the dev row's lr, epoch and seeds.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lnpeft.data.artifacts import atomic_path, read_parquet, write_parquet
from lnpeft.data.metric_names import resolve_metric
from lnpeft.data.metrics import compute_metrics
from lnpeft.data.tasks import PAPER_COLUMNS, column_task, get_task, is_task
from lnpeft.data.textfile import read_utf8
from lnpeft.errors import LnpeftError, quote
from lnpeft.report.submission import submitted_run

COLUMN_LABELS = {
    "qnli": "QNLI", "sst2": "SST2", "mnli_matched": "MNLI-m", "mnli_mismatched": "MNLI-mm",
    "cola": "CoLA", "mrpc": "MRPC", "stsb": "STSB", "rte": "RTE", "qqp": "QQP",
}


def column_label(column: str) -> str:
    """A score column's table header: the paper's spelling, a custom task's own name."""
    return COLUMN_LABELS.get(column, column)


METHOD_LABELS = {"full": "Full", "bitfit": "BitFit", "layernorm": "LayerNorm", "random": "Random"}
TEST_COLUMN = {"mnli": {"test_matched": "mnli_matched", "test_mismatched": "mnli_mismatched"}}


@dataclass(frozen=True)
class Table3Config:
    scores: Path
    """scores.parquet (dev rows of the best lr/epoch per method and column)."""
    out_prefix: Path
    """Writes {prefix}.csv, .md, .tex."""
    scores_out: Path
    """Copy of scores with the test rows appended."""
    glue_results: Path | None = None
    data_dir: Path | None = None
    runs: dict[tuple[str, str], tuple[Path, ...]] | None = None
    """(method, task) -> candidate run dirs, for labelled local test data."""


_GLUE_HEADERS = (["method", "task", "value"], ["method", "task", "metric", "value"])


def _text_lines(path: Path) -> list[str]:
    """A small text file's lines: UTF-8 (a BOM allowed), LF or CRLF; bad bytes named by line."""
    text = read_utf8(path, LnpeftError)
    return [ln.removesuffix("\r") for ln in text.split("\n")]


def read_glue_results(path: Path) -> pd.DataFrame:
    """The user's GLUE server scores (format in the module docstring); errors name file and line.

    Columns method, task, metric (lnpeft's name; the paper metric when the file has no metric
    column), value.
    """
    if not path.is_file():
        raise LnpeftError(f"{path}: no such GLUE results file (config submission.glue_results)")
    rows = []
    header: list[str] | None = None
    for number, line in enumerate(_text_lines(path), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        where = f"{path}:{number}"
        if header is None:
            if fields not in _GLUE_HEADERS:
                raise LnpeftError(f"{where}: header {quote(fields, 200)}, expected method<TAB>task<TAB>value "
                                  "(or method<TAB>task<TAB>metric<TAB>value)")
            header = fields
            continue
        if len(fields) != len(header):
            raise LnpeftError(f"{where}: {len(fields)} fields, expected {'<TAB>'.join(header)}")
        row = dict(zip(header, fields))
        method, task, value = row["method"], row["task"], row["value"]
        if task not in PAPER_COLUMNS:
            raise LnpeftError(f"{where}: task {quote(task)} is not one of {', '.join(PAPER_COLUMNS)}")
        spec = column_task(task)[0]
        metric = spec.metric
        if "metric" in row:
            metric = resolve_metric(row["metric"], where, task, spec.metric)
            if metric not in (spec.metric, *spec.secondary_metrics):
                raise LnpeftError(f"{where}: metric {quote(row['metric'])} is not scored for {task} "
                                  f"(its metrics: {', '.join((spec.metric, *spec.secondary_metrics))}; "
                                  f"the paper's: {spec.metric})")
        try:
            number_value = float(value)
        except ValueError:
            raise LnpeftError(f"{where}: value {quote(value)} is not a number") from None
        if not np.isfinite(number_value) or abs(number_value) > 1:
            raise LnpeftError(
                f"{where}: value {number_value:g} is not a fraction in [-1, 1]; the GLUE server shows "
                "percentages: divide by 100"
            )
        rows.append((method, task, metric, number_value, number))
    if header is None:
        raise LnpeftError(f"{path}: empty; expected a method<TAB>task<TAB>value header and rows")
    df = pd.DataFrame(rows, columns=["method", "task", "metric", "value", "line"])
    dup = df[df.duplicated(["method", "task", "metric"], keep="first")]
    if len(dup):
        r = dup.iloc[0]
        raise LnpeftError(f"{path}:{r['line']}: second value for ({r['method']}, {r['task']}, {r['metric']})")
    return df.drop(columns="line")


def local_test_scores(runs: dict[tuple[str, str], tuple[Path, ...]], data_dir: Path) -> pd.DataFrame:
    """Test scores of the best dev run per (method, task) on labelled local test splits."""
    rows = []
    for (method, task), dirs in sorted(runs.items()):
        spec = get_task(task)
        for split in spec.test_splits:
            path = data_dir / task / f"{split}.parquet"
            if not path.exists():
                continue
            data = read_parquet(path, "data")
            if data["label"].isna().any():
                continue  # GLUE test labels are private: nothing to score locally
            choice = submitted_run(spec, dirs)  # the run the submission sends: one rule for both
            run = choice.run
            preds = read_parquet(run / "predictions.parquet", "predictions")
            preds = preds[preds["split"] == split].set_index("idx")["prediction"]
            missing = np.setdiff1d(data["idx"].to_numpy(), preds.index.to_numpy())
            if len(missing):
                raise LnpeftError(
                    f"{run / 'predictions.parquet'}: no {split} prediction for {len(missing)} "
                    f"labelled test rows of {path} (first idx {missing[:5].tolist()})"
                )
            outputs = preds.loc[data["idx"].to_numpy()].to_numpy(dtype=np.float64)
            labels = data["label"].to_numpy(dtype=np.float64)
            column = TEST_COLUMN.get(task, {}).get(split, task)
            for metric, value in compute_metrics(spec, labels, outputs).items():
                rows.append((method, column, metric, value, choice.lr, choice.predictions_epoch, str(choice.seed)))
    return pd.DataFrame(rows, columns=["method", "task", "metric", "value", "lr", "epoch", "seeds"])


def to_test_rows(scores: pd.DataFrame, found: pd.DataFrame) -> pd.DataFrame:
    """Long-format test rows. Local test scores carry the lr, epoch and seed of the run that made
    them (the submitted run: its predictions come from its own best epoch); GLUE server scores,
    which do not say, carry the dev row's lr, epoch and seeds of the same method and column."""
    dev = scores[scores["split"] == "dev"]
    out = []
    for r in found.to_dict("records"):
        metric = r.get("metric") or column_task(r["task"])[0].metric
        match = dev[(dev["method"] == r["method"]) & (dev["task"] == r["task"]) & (dev["metric"] == metric)]
        if "lr" in r and pd.notna(r["lr"]):
            lr, epoch, seeds = float(r["lr"]), int(r["epoch"]), str(r["seeds"])
        else:
            lr = float(match["lr"].iloc[0]) if len(match) else float("nan")
            epoch = int(match["epoch"].iloc[0]) if len(match) else -1
            seeds = str(match["seeds"].iloc[0]) if len(match) and "seeds" in match else ""
        out.append({"method": r["method"], "task": r["task"], "split": "test", "metric": metric,
                    "value": float(r["value"]), "lr": lr, "epoch": epoch, "seeds": seeds})
    return pd.DataFrame(out, columns=["method", "task", "split", "metric", "value", "lr", "epoch", "seeds"])


def wide_table(scores: pd.DataFrame, tests: pd.DataFrame) -> pd.DataFrame:
    """Methods x paper columns (paper metric), methods in paper order then the rest."""
    present = set(scores["method"]) | set(tests["method"])
    methods = [m for m in METHOD_LABELS if m in present] + sorted(present - set(METHOD_LABELS))
    columns = [c for c in PAPER_COLUMNS if c in set(scores["task"]) | set(tests["task"])]
    table = pd.DataFrame(index=methods, columns=columns, dtype=object)
    for method in methods:
        for column in columns:
            hit = tests[(tests["method"] == method) & (tests["task"] == column)
                        & (tests["metric"] == column_task(column)[0].metric)]
            table.loc[method, column] = f"{hit['value'].iloc[0]:.3f}" if len(hit) else "n/a"
    return table


def write_tables(table: pd.DataFrame, prefix: Path, note: str) -> None:
    """csv (raw), markdown and LaTeX, each written atomically."""
    headers = ["method"] + [column_label(c) for c in table.columns]
    body = [[METHOD_LABELS.get(m, m)] + list(table.loc[m]) for m in table.index]
    with atomic_path(Path(f"{prefix}.csv")) as tmp:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["method"] + list(table.columns))
            writer.writerows([[m] + list(table.loc[m]) for m in table.index])
    md = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(row) + " |" for row in body]
    with atomic_path(Path(f"{prefix}.md")) as tmp:
        tmp.write_text("Table 3: test set results (paper metric per task).\n\n" + "\n".join(md)
                       + f"\n\n{note}\n")
    tex = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * len(table.columns) + "}",
           r"\toprule", " & ".join(headers) + r" \\", r"\midrule"]
    tex += [" & ".join(row) + r" \\" for row in body]
    tex += [r"\bottomrule", r"\end{tabular}",
            r"\caption{Test set results. " + note.replace("_", r"\_").replace("%", r"\%") + "}",
            r"\label{tab:test}", r"\end{table}"]
    with atomic_path(Path(f"{prefix}.tex")) as tmp:
        tmp.write_text("\n".join(tex) + "\n")


def make_table3(config: Table3Config) -> tuple[pd.DataFrame, str]:
    scores = read_parquet(config.scores, "scores")
    if (scores["split"] == "test").any():
        raise LnpeftError(f"{config.scores}: already holds test rows; pass the dev scores.parquet")
    if config.glue_results is not None:
        found = read_glue_results(config.glue_results)
        unknown = sorted(set(found["method"]) - set(scores["method"]))
        if unknown:  # most likely a typo: a method the workflow never ran
            raise LnpeftError(
                f"{config.glue_results}: methods {unknown} have no dev scores in {config.scores} "
                f"(methods there: {sorted(set(scores['method']))})"
            )
        note = f"Source: GLUE server results ({config.glue_results.name})."
    elif config.runs and config.data_dir is not None:
        found = local_test_scores(config.runs, config.data_dir)
        note = ("Source: labelled local test data." if len(found) else
                "n/a: no GLUE server results given (config submission.glue_results) and no "
                "labelled local test split; submit results/submission/*.zip to gluebenchmark.com.")
    else:
        found = pd.DataFrame(columns=["method", "task", "metric", "value"])
        note = "n/a: no GLUE server results given (config submission.glue_results)."
    tests = to_test_rows(scores, found)
    table = wide_table(scores, tests)
    write_tables(table, config.out_prefix, note)
    combined = pd.concat([scores, tests], ignore_index=True) if len(tests) else scores
    write_parquet(combined, config.scores_out, "scores")
    return table, note


def parse_runs(items: list[str]) -> dict[tuple[str, str], tuple[Path, ...]]:
    """`METHOD:TASK=RUN_DIR` (repeatable) -> (method, task) -> run dirs."""
    runs: dict[tuple[str, str], list[Path]] = {}
    for item in items:
        key, sep, path = item.partition("=")
        method, colon, task = key.partition(":")
        if not sep or not colon or not method or not path or not is_task(task):
            raise LnpeftError(f"--runs {item!r}: expected METHOD:TASK=RUN_DIR with a GLUE or custom task")
        runs.setdefault((method, task), []).append(Path(path))
    return {k: tuple(v) for k, v in runs.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", type=Path, required=True, help="results/tables/scores.parquet")
    parser.add_argument("--out-prefix", type=Path, required=True,
                        help="writes PREFIX.csv, PREFIX.md, PREFIX.tex (e.g. results/tables/table3)")
    parser.add_argument("--scores-out", type=Path, required=True,
                        help="copy of --scores with test rows appended (e.g. results/tables/scores_test.parquet)")
    parser.add_argument("--glue-results", type=Path, default=None,
                        help="TSV method<TAB>task<TAB>value of GLUE server scores (fractions)")
    parser.add_argument("--data-dir", type=Path, default=None, help="results/data, for labelled test splits")
    parser.add_argument("--runs", nargs="*", default=[], metavar="METHOD:TASK=RUN_DIR",
                        help="candidate runs per method and task, for labelled local test data")


def run(args: argparse.Namespace) -> int:
    config = Table3Config(args.scores, args.out_prefix, args.scores_out, args.glue_results,
                          args.data_dir, parse_runs(args.runs) or None)
    table, note = make_table3(config)
    print(table.to_string())
    print(note)
    return 0
