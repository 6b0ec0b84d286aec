"""`lnpeft stats kruskal`: is method A different from method B over the GLUE columns? (Section 3.1)

Input: scores in the long format of results/tables/scores.parquet (`method, task, split, metric,
value`; `lr`, `epoch` and other columns are not needed), with split `dev` and, when known, `test`
rows (results/tables/scores_test.parquet adds them); lnpeft.report.scores reads and checks them
(metric names as Hugging Face `evaluate` writes them included). For each of the paper's 9 columns
(then each custom task, lnpeft.data.user_tasks, on its own metric) the value on the column's paper metric is taken; several rows for one (method, task, split,
metric) are seed replicates and their mean enters the tests. The two vectors are aligned column
by column (only columns both methods have), then:
- Kruskal-Wallis (scipy.stats.kruskal), the paper's test, on dev (9 values each), test (9) and
  the 18 combined (dev then test);
- a paired Wilcoxon signed-rank test (scipy.stats.wilcoxon) on the same aligned vectors;
- per column, with several seeds, a bootstrap 95% CI of the mean of each method and of B - A.
A part that cannot be computed (no test scores: GLUE test labels are private) is null with a
`reason`, never a crash. Nothing is left out silently: each part lists the (task, split) columns
`used` and those `left_out` with the reason, `rows` accounts for every row read, and the CLI
prints each left-out column.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from lnpeft.data.artifacts import write_json
from lnpeft.data.tasks import column_task, score_columns
from lnpeft.errors import LnpeftError
from lnpeft.report.scores import check_rows, read_scores


@dataclass(frozen=True)
class StatsConfig:
    scores: Path
    """Long-format scores parquet (artifact `scores`)."""
    a: str = "bitfit"
    """First method (the paper: BitFit)."""
    b: str = "layernorm"
    """Second method (the paper: LayerNorm)."""
    out: Path = Path("results/stats/kruskal.json")
    bootstrap: int = 1000
    """Bootstrap resamples per column for the seed CIs (0: none)."""
    seed: int = 0
    """Seed of the bootstrap."""


def paper_metric(column: str) -> str:
    """The metric of one of the paper's 9 columns (Table 4: matthews for cola, ...)."""
    return column_task(column)[0].metric


def replicates(scores: pd.DataFrame, method: str, split: str) -> dict[str, np.ndarray]:
    """Column -> values (one per seed) of a method on a split, on each column's paper metric."""
    rows = scores[(scores["method"] == method) & (scores["split"] == split)]
    out = {}
    for column in score_columns():
        values = rows.loc[(rows["task"] == column) & (rows["metric"] == paper_metric(column)), "value"]
        values = values.to_numpy(dtype=np.float64)  # finite: check_rows refuses NaN and inf
        if len(values):
            out[column] = values
    return out


def coverage(scores: pd.DataFrame, a: str, b: str, split: str) -> tuple[list[dict], list[dict]]:
    """(used, left_out) columns of one split: each paper column with the paper-metric seeds of
    both methods, or the reason it is left out; rows of other GLUE tasks are left out too."""
    rows = scores[scores["method"].isin([a, b]) & (scores["split"] == split)]
    used, left_out = [], []
    columns = score_columns()
    for column in columns:
        metric = paper_metric(column)
        here = rows[rows["task"] == column]
        seeds, reasons = {}, []
        for method in (a, b):
            mine = here[here["method"] == method]
            seeds[method] = int((mine["metric"] == metric).sum())
            if seeds[method]:
                continue
            others = sorted(set(mine["metric"]))
            reasons.append(f"no {method} {metric} value" + (
                f" (it has {', '.join(others)}: not the paper metric for {column})" if others else ""))
        if not reasons:
            used.append({"task": column, "split": split, "metric": metric,
                         "seeds_a": seeds[a], "seeds_b": seeds[b]})
        else:
            if reasons == [f"no {a} {metric} value", f"no {b} {metric} value"]:
                reasons = [f"no {a} or {b} {metric} value"]
            left_out.append({"task": column, "split": split, "reason": "; ".join(reasons)})
    for task in sorted(set(rows["task"]) - set(columns)):
        reason = ("the paper's MNLI columns are mnli_matched and mnli_mismatched: name the task so"
                  if task == "mnli" else "neither one of the paper's 9 columns nor a custom task")
        left_out.append({"task": task, "split": split, "reason": reason})
    return used, left_out


def row_counts(scores: pd.DataFrame, a: str, b: str) -> dict[str, int]:
    """Every row read, by what the statistics did with it."""
    mine = scores["method"].isin([a, b])
    columns = score_columns()
    column = scores["task"].isin(columns)
    paper = np.array([t in columns and m == paper_metric(t) for t, m in zip(scores["task"], scores["metric"])],
                     dtype=bool)
    return {"read": len(scores), "compared_methods": int(mine.sum()),
            "paper_metric": int((mine & paper).sum()),
            "other_metric": int((mine & column & ~paper).sum()),
            "other_task": int((mine & ~column).sum()), "other_methods": int((~mine).sum())}


def _tests(a: list[float], b: list[float]) -> dict:
    """Kruskal-Wallis and paired Wilcoxon on two aligned vectors."""
    result: dict = {}
    if len(set(a) | set(b)) == 1:
        # scipy returns NaN here (older versions raise): null with a reason, never NaN in the JSON
        result["statistic"], result["pvalue"] = None, None
        result["kruskal_reason"] = "all values are identical: no ranks to compare"
    else:
        try:
            kw = stats.kruskal(a, b)
            result["statistic"], result["pvalue"] = float(kw.statistic), float(kw.pvalue)
        except ValueError as err:
            result["statistic"], result["pvalue"], result["kruskal_reason"] = None, None, str(err)
    diffs = np.subtract(b, a)
    if np.all(diffs == 0):
        result["wilcoxon"] = {"statistic": None, "pvalue": None,
                              "reason": "every paired difference is zero"}
    else:
        w = stats.wilcoxon(a, b)
        result["wilcoxon"] = {"statistic": float(w.statistic), "pvalue": float(w.pvalue)}
        if not np.isfinite(w.pvalue):
            result["wilcoxon"] = {"statistic": None, "pvalue": None, "reason": "scipy.stats.wilcoxon gave NaN"}
    return result


def compare(a_vals: dict[str, np.ndarray], b_vals: dict[str, np.ndarray], label: str,
            suffix: str = "") -> dict:
    """One part (dev or test): aligned vectors of seed means and the two tests."""
    tasks = [c for c in score_columns() if c in a_vals and c in b_vals]
    dropped = [c for c in score_columns() if (c in a_vals) != (c in b_vals)]
    if len(tasks) < 2:
        reason = (f"no {label} scores" if not a_vals and not b_vals
                  else f"only {len(tasks)} {label} column(s) scored for both methods")
        return {"statistic": None, "pvalue": None, "reason": reason, "tasks": tasks,
                "a": [], "b": [], "dropped": dropped}
    a = [float(np.mean(a_vals[c])) for c in tasks]
    b = [float(np.mean(b_vals[c])) for c in tasks]
    part = {"tasks": [c + suffix for c in tasks], "a": a, "b": b, **_tests(a, b)}
    if dropped:
        part["dropped"] = dropped  # scored for one method only: left out to keep pairs aligned
    return part


def combine(dev: dict, test: dict) -> dict:
    """The paper's 18-value comparison: dev vector then test vector."""
    missing = [name for name, part in (("dev", dev), ("test", test)) if part.get("reason")]
    if missing:
        return {"statistic": None, "pvalue": None, "tasks": [], "a": [], "b": [],
                "reason": f"needs both dev and test scores; missing: {', '.join(missing)} "
                          f"({'; '.join(p['reason'] for p in (dev, test) if p.get('reason'))})"}
    a, b = dev["a"] + test["a"], dev["b"] + test["b"]
    tasks = [f"{c}/dev" for c in dev["tasks"]] + [f"{c}/test" for c in test["tasks"]]
    return {"tasks": tasks, "a": a, "b": b, **_tests(a, b)}


def bootstrap_ci(a_vals: dict[str, np.ndarray], b_vals: dict[str, np.ndarray], resamples: int,
                 seed: int) -> dict:
    """Per column, percentile 95% CIs of each method's seed mean and of (B - A), when seeds > 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for column in score_columns():
        if column not in a_vals or column not in b_vals:
            continue
        a, b = a_vals[column], b_vals[column]
        if len(a) < 2 or len(b) < 2:
            continue
        # resample seeds independently per method (the seeds of A and B are not paired runs)
        ma = rng.choice(a, size=(resamples, len(a)), replace=True).mean(axis=1)
        mb = rng.choice(b, size=(resamples, len(b)), replace=True).mean(axis=1)

        def ci(x: np.ndarray) -> list[float]:
            return [float(np.quantile(x, 0.025)), float(np.quantile(x, 0.975))]

        out[column] = {"seeds_a": len(a), "seeds_b": len(b), "a_mean": float(a.mean()),
                       "b_mean": float(b.mean()), "a_ci95": ci(ma), "b_ci95": ci(mb),
                       "diff_ci95": ci(mb - ma)}
    return out


def kruskal_report(scores: pd.DataFrame, config: StatsConfig) -> dict:
    """The JSON object of `lnpeft stats kruskal`."""
    scores = check_rows(scores, str(config.scores))
    methods = sorted(scores["method"].unique())
    for key, method in (("--a", config.a), ("--b", config.b)):
        if method not in methods:
            raise LnpeftError(f"{config.scores}: {key} method {method!r} has no scores; methods there: {methods}")
    vals = {(m, s): replicates(scores, m, s) for m in (config.a, config.b) for s in ("dev", "test")}
    dev = compare(vals[config.a, "dev"], vals[config.b, "dev"], "dev")
    test = compare(vals[config.a, "test"], vals[config.b, "test"], "test")
    if test.get("reason") and not vals[config.a, "test"] and not vals[config.b, "test"]:
        test["reason"] += " (GLUE test labels are private: set submission.glue_results to the server's scores)"
    for part, split in ((dev, "dev"), (test, "test")):
        part["used"], part["left_out"] = coverage(scores, config.a, config.b, split)
    combined = combine(dev, test)
    combined["used"] = [] if combined.get("reason") else dev["used"] + test["used"]
    combined["left_out"] = dev["left_out"] + test["left_out"]
    report = {
        "test_name": "Kruskal-Wallis H (scipy.stats.kruskal); wilcoxon: paired signed-rank (scipy.stats.wilcoxon)",
        "a_method": config.a,
        "b_method": config.b,
        "scores": str(config.scores),
        "rows": row_counts(scores, config.a, config.b),
        "dev": dev,
        "test": test,
        "combined": combined,
    }
    seeds = max((len(v) for part in vals.values() for v in part.values()), default=0)
    if seeds > 1 and config.bootstrap > 0:
        report["bootstrap"] = {
            "resamples": config.bootstrap, "seed": config.seed,
            "dev": bootstrap_ci(vals[config.a, "dev"], vals[config.b, "dev"], config.bootstrap, config.seed),
            "test": bootstrap_ci(vals[config.a, "test"], vals[config.b, "test"], config.bootstrap, config.seed),
        }
    else:
        report["bootstrap"] = {
            "reason": "one seed per column: no seed confidence intervals" if seeds <= 1
            else "bootstrap disabled (--bootstrap 0)"}
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("test", choices=["kruskal"], help="the statistic to compute (the paper's test)")
    parser.add_argument("--scores", type=Path, required=True, help="scores parquet (long format)")
    parser.add_argument("--a", default="bitfit", help="first method (paper: bitfit)")
    parser.add_argument("--b", default="layernorm", help="second method (paper: layernorm)")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write")
    parser.add_argument("--seed-scores", type=Path, default=None,
                        help="each seed's dev scores (results/tables/scores_seeds.parquet): they replace the "
                             "dev rows of --scores, so the bootstrap sees the seeds (the tests use their mean)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for seed CIs")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def run(args: argparse.Namespace) -> int:
    if args.bootstrap < 0:
        raise LnpeftError(f"--bootstrap {args.bootstrap}: must be >= 0")
    config = StatsConfig(args.scores, args.a, args.b, args.out, args.bootstrap, args.seed)
    scores = read_scores(args.scores)
    if args.seed_scores is not None:
        seeds = read_scores(args.seed_scores)
        scores = pd.concat([scores[scores["split"] != "dev"], seeds[seeds["split"] == "dev"]], ignore_index=True)
    report = kruskal_report(scores, config)
    write_json(report, args.out)
    for part in ("dev", "test", "combined"):
        p = report[part]
        shown = (f"p = {p['pvalue']:.5f} (n = {len(p['a'])} per method)" if p.get("pvalue") is not None
                 else p.get("reason") or p.get("kruskal_reason"))
        print(f"{part}: {shown}")
    left_out = report["dev"]["left_out"] + report["test"]["left_out"]
    if left_out:
        print(f"left out ({len(left_out)} column(s); listed in {args.out}):")
    for entry in left_out:
        print(f"  {entry['split']}/{entry['task']}: {entry['reason']}")
    return 0
