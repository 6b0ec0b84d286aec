"""The paper's four claims judged on a reproduction's tables, and the sentences that report them.

- (a) output.LayerNorm drifts most (Eq. 1, Figure 1): per task, the component with the largest
  mean D over layers (weights and biases pooled). Holds when it is output.LayerNorm on most tasks.
- (b) it ranks first in Fisher (Table 1). Holds when Table 1 ranks it first.
- (c) LayerNorm within about a point of BitFit with about a fifth of its parameters, random
  clearly lower (Table 2): the mean over tasks of LayerNorm - BitFit is >= -1 point, and of
  LayerNorm - random >= 2 points (1 point = 0.01 of the paper metric).
- (d) Fisher subsets at f = 0.2 within 1-2 points of all of LayerNorm (Figure 2): the mean over
  tasks of subset - LayerNorm is >= -2 points, scores as Figure 2 plots them (Table 2's rule:
  the (lr, epoch) with the best seed mean).

The callers pass only the tasks that can judge (`lnpeft.report.claims.learning_tasks`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lnpeft.data.tasks import column_task
from lnpeft.model.architectures import COMPONENTS, LAYERNORM_COMPONENT
from lnpeft.report.claims import curve_ends, grid_edges, plateaus
from lnpeft.report.selection import selected_scores
from lnpeft.report.table3 import METHOD_LABELS, column_label

SUBSET_FRACTION = 0.2  # the fraction claim (d) names


def points(x: float) -> str:
    """A difference of metric values in points (0.01 = 1 point), signed."""
    return f"{100 * x:+.1f}"


def drift_claim(drift: dict[str, pd.DataFrame]) -> tuple[str, str, pd.DataFrame]:
    """(a): per task the components ranked by mean D over layers; verdict and table."""
    rows = []
    for task, df in drift.items():
        mean = df[df["kind"] == "all"].groupby("component")["D"].mean().reindex(list(COMPONENTS))
        order = mean.sort_values(ascending=False, kind="stable")
        per_layer = df[df["kind"] == "all"].pivot(index="layer", columns="component", values="D")
        rows.append({"task": task, "first": order.index[0],
                     "rank": int(list(order.index).index(LAYERNORM_COMPONENT)) + 1,
                     "layers_first": int((per_layer.idxmax(axis=1) == LAYERNORM_COMPONENT).sum()),
                     "layers": len(per_layer), "ratio": float(mean[LAYERNORM_COMPONENT] / order.iloc[1 if
                         order.index[0] == LAYERNORM_COMPONENT else 0])})
    table = pd.DataFrame(rows)
    first = int((table["rank"] == 1).sum())
    verdict = "holds" if first > len(table) / 2 else "does not hold"
    numbers = (f"output.LayerNorm has the largest mean drift on {first} of {len(table)} tasks "
               f"and is first in {int(table['layers_first'].sum())} of {int(table['layers'].sum())} "
               f"(task, layer) cells")
    return verdict, numbers, table


def fisher_claim(table1: pd.DataFrame) -> tuple[str, str]:
    """(b): the rank of output.LayerNorm in Table 1, and its mean share of the tasks' Fisher."""
    row = table1[table1["component"] == LAYERNORM_COMPONENT].iloc[0]
    tasks = [c for c in table1.columns if c not in ("rank", "component", "score")]
    firsts = sum(int(table1[t].idxmax() == row.name) for t in tasks)
    verdict = "holds" if int(row["rank"]) == 1 else "does not hold"
    return verdict, (f"Table 1 ranks output.LayerNorm {int(row['rank'])} of {len(table1)}; it holds a mean "
                     f"{row['score'] / len(tasks):.2f} of each task's Fisher and is first on {firsts} of "
                     f"{len(tasks)} tasks")


def _means(table: pd.DataFrame, a: str, b: str, columns: list[str]) -> float:
    return float((table.loc[a, columns] - table.loc[b, columns]).mean())


def peft_claim(dev: pd.DataFrame, percents: pd.Series, learned: list[str]) -> tuple[str, str]:
    """(c) on Table 2 means: LayerNorm - BitFit, LayerNorm - random, and the parameter ratio."""
    columns = [c for c in dev.columns]
    gap_bitfit, gap_random = _means(dev, "layernorm", "bitfit", columns), _means(dev, "layernorm", "random", columns)
    ratio = percents["layernorm"] / percents["bitfit"]
    ok_bitfit, ok_random = gap_bitfit >= -0.01, gap_random >= 0.02
    verdict = "holds" if ok_bitfit and ok_random else "partly holds" if ok_bitfit or ok_random else "does not hold"
    text = (f"LayerNorm - BitFit {points(gap_bitfit)} points on average over {len(columns)} tasks, with "
            f"{ratio:.2f} of BitFit's trainable parameters; LayerNorm - random {points(gap_random)} points")
    if learned and len(learned) < len(columns):
        text += (f"; on the {len(learned)} tasks where LayerNorm beats the trivial baseline "
                 f"({', '.join(column_label(c) for c in learned)}): {points(_means(dev, 'layernorm', 'bitfit', learned))}"
                 f" and {points(_means(dev, 'layernorm', 'random', learned))}")
    return verdict, text


def subset_scores(run_table: pd.DataFrame) -> pd.DataFrame:
    """Per task: all of LayerNorm and each scheme at each fraction, as Figure 2 plots them
    (`selection.selected_scores`: Table 2's rule)."""
    ln = run_table[run_table["method"] == "layernorm"].set_index("task")["score"]
    subsets = run_table[run_table["scheme"].notna()]
    wide = subsets.pivot_table(index="task", columns=["scheme", "fraction"], values="score")
    order = [c for s in ("individual", "global", "cv") for c in sorted(wide.columns) if c[0] == s]
    wide = wide[order]
    wide.insert(0, ("layernorm", 1.0), ln.reindex(wide.index))
    return wide


def subset_claim(wide: pd.DataFrame, learned: list[str]) -> tuple[str, str]:
    """(d): each scheme at f = 0.2 against all of LayerNorm, mean over tasks."""
    ln = wide[("layernorm", 1.0)]
    schemes = [s for s in ("individual", "global", "cv") if (s, SUBSET_FRACTION) in wide.columns]
    if "individual" not in schemes:
        return "not tested", f"no individual-scheme run at f = {SUBSET_FRACTION}"
    gaps = {s: wide[(s, SUBSET_FRACTION)] - ln for s in schemes}
    verdict = "holds" if gaps["individual"].mean() >= -0.02 else "does not hold"
    text = "; ".join(f"{s} f = {SUBSET_FRACTION} - LayerNorm {points(g.mean())} points" for s, g in gaps.items())
    text += f" (mean over {len(ln)} tasks)"
    learned_tasks = {column_task(c)[0].name for c in learned}
    tasks = [t for t in wide.index if t in learned_tasks]
    if tasks and len(tasks) < len(wide.index):
        text += (f"; individual on the tasks where LayerNorm beats the trivial baseline: "
                 f"{points(gaps['individual'][tasks].mean())}")
    return verdict, text


def plateau_text(curves: pd.DataFrame) -> str:
    flat, total = plateaus(curves)
    return (f"{flat} of {total} (task, method) curves have flattened (Table 2's epoch is not the last, or the "
            "last epoch moved the seed mean by less than half a point).")


def plateau_table(curves: pd.DataFrame, tasks: list[str], methods: list[str]) -> list[str]:
    """Markdown rows, a method per row and a task per column: the epoch Table 2 reports of the epochs
    run, the last epoch's move of the seed mean in points, and "flat" where the curve has flattened."""
    ends = curve_ends(curves).set_index(["method", "task"])
    tasks = [t for t in tasks if t in set(ends.index.get_level_values("task"))]

    def cell(method: str, task: str) -> str:
        if (method, task) not in ends.index:
            return "not run"
        e = ends.loc[(method, task)]
        text = f"{e['best_epoch']} of {e['last_epoch']}"
        text += "" if np.isnan(e["last_move"]) else f", last {points(e['last_move'])}"  # one epoch: no move
        return f"flat: {text}" if e["flat"] else text

    return ["| | " + " | ".join(column_label(t) for t in tasks) + " |", "|---|" + "---|" * len(tasks),
            *(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(cell(m, t) for t in tasks) + " |"
              for m in methods if m in set(ends.index.get_level_values("method")))]


def grid_edge_text(curves: pd.DataFrame, grids: dict[tuple[str, str], list[float]]) -> str:
    """Where Table 2's learning rate sits at an end of its grid, named per method and task."""
    edges = grid_edges(curves, grids)
    total = curves.groupby(["task", "method"]).ngroups

    def named(pairs: list[tuple[str, str]]) -> str:
        by_method: dict[str, list[str]] = {}
        for task, method in pairs:
            by_method.setdefault(method, []).append(column_label(task))
        return "; ".join(f"{METHOD_LABELS.get(m, m)} on {', '.join(ts)}" for m, ts in by_method.items())

    if not edges["highest"] and not edges["lowest"]:
        return f"Table 2's learning rate is inside its grid for every one of the {total} (task, method) pairs."
    parts = [f"the {end} of its grid for {len(pairs)} ({named(pairs)})" for end, pairs in edges.items() if pairs]
    return (f"Of {total} (task, method) pairs, Table 2's learning rate is {' and '.join(parts)}: a rate "
            "beyond the grid might do better there (where a method is at chance at every rate, the end says nothing).")


def first_split_baselines(baselines: pd.Series) -> dict[str, float]:
    """Trivial baselines by score column (`mnli_matched`) as baselines by task, on the first dev
    split: the split the epoch rows score (`runs.read_epoch_rows`)."""
    out = {}
    for column, value in baselines.items():
        spec, split = column_task(str(column))
        if split == spec.dev_splits[0]:
            out[spec.name] = float(value)
    return out


def rate_table(rows: pd.DataFrame, tasks: list[str], methods: list[str],
               baselines: dict[str, float] | None = None) -> list[str]:
    """Markdown rows, one per (method, learning rate) tried and a task per column: the seed mean at
    that rate's best epoch (Table 2's rule within one rate), in bold at the rate Table 2 reports;
    a last row of each task's trivial baseline (`baselines`, by task) when given. `rows`: epoch rows
    (`runs.read_epoch_rows`); Fisher-subset runs are left out."""
    table2 = rows[rows["scheme"].isna() & rows["method"].isin(methods)]
    per_rate = selected_scores(table2, by=("task", "method", "lr")).set_index(["method", "lr", "task"])["score"]
    chosen = selected_scores(table2, by=("task", "method")).set_index(["method", "task"])["lr"]
    tasks = [t for t in tasks if t in set(table2["task"])]

    def cell(method: str, lr: float, task: str) -> str:
        if (method, lr, task) not in per_rate.index:
            return "not run"
        text = f"{per_rate[(method, lr, task)]:.3f}"
        return f"**{text}**" if chosen[(method, task)] == lr else text

    out = ["| | " + " | ".join(column_label(t) for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
    for method in methods:
        for lr in sorted(set(table2.loc[table2["method"] == method, "lr"])):
            out.append(f"| {METHOD_LABELS.get(method, method)} {lr:g} | "
                       + " | ".join(cell(method, lr, t) for t in tasks) + " |")
    if baselines:
        out.append("| trivial baseline | " + " | ".join(f"{baselines[t]:.3f}" if t in baselines else ""
                                                       for t in tasks) + " |")
    return out


def table1_over(table1: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """Table 1 ranked again over `tasks` only (each task's normalised Fisher, summed)."""
    keep = [t for t in tasks if t in table1.columns]
    out = table1[["component", *keep]].copy()
    out["score"] = out[keep].sum(axis=1)
    out = out.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    out.insert(0, "rank", range(1, len(out) + 1))
    return out


def kruskal_over(methods: pd.DataFrame, columns: list[str], a: str = "bitfit", b: str = "layernorm") -> str:
    """Kruskal-Wallis between two methods' seed-mean dev scores over `columns`."""
    from scipy import stats

    x, y = methods.loc[a, columns].to_numpy(float), methods.loc[b, columns].to_numpy(float)
    if len(columns) < 2:
        return "not computed (fewer than 2 tasks)"
    result = stats.kruskal(x, y)
    return f"Kruskal-Wallis H = {result.statistic:.3f}, p = {result.pvalue:.3f} ({a} vs {b})"


def convergence(curves: pd.DataFrame) -> str:
    """How many (task, method) pairs peak at their last epoch and the dev gain of that epoch, how many
    curves have flattened (`plateau_text`), and which are not: judged before their plateau.
    A pair peaking at its last epoch by less than half a point has flattened, so the conclusion
    follows the flat count, not the count at the last epoch."""
    ends = curve_ends(curves)
    at_last = int((ends["best_epoch"] == ends["last_epoch"]).sum())
    moves = ends["last_move"].dropna()
    mean_gain = float(moves.mean()) if len(moves) else float("nan")
    moving = ends[~ends["flat"]]
    named = ", ".join(f"{column_label(e.task)} {METHOD_LABELS.get(e.method, e.method)} "
                      f"({'one epoch run' if np.isnan(e.last_move) else points(e.last_move)})"
                      for e in moving.itertuples())
    if moving.empty:
        tail = "Every curve has flattened: each method is judged at its plateau."
    elif len(moving) * 4 <= len(ends):  # the 3-in-4 bar the reproduction was sized to (issue 23)
        tail = f"Not flat at their last epoch, so judged before their plateau: {named}."
    else:
        tail = (f"Training had not converged: {len(moving)} of {len(ends)} curves were not flat at their "
                f"last epoch ({named}), so those methods are judged before their plateau.")
    return (f"Table 2's epoch is the last epoch for {at_last} of {len(ends)} (task, method) pairs, and the "
            f"last epoch changed the seed-mean dev score by {points(mean_gain)} points on average. "
            f"{plateau_text(curves)} {tail}")


def stats_lines(kruskal: dict) -> list[str]:
    """Kruskal-Wallis and Wilcoxon per part, then the seed-bootstrap interval of B - A per column."""
    lines = []
    for part in ("dev", "test", "combined"):
        r = kruskal[part]
        if r.get("pvalue") is None:
            lines.append(f"- {part}: not computed ({r.get('reason') or r.get('kruskal_reason')})")
            continue
        w = r.get("wilcoxon") or {}
        wil = (f"; paired Wilcoxon W = {w['statistic']:.1f}, p = {w['pvalue']:.3f}" if w.get("pvalue") is not None
               else f"; paired Wilcoxon not computed ({w.get('reason')})")
        lines.append(f"- {part}: Kruskal-Wallis H = {r['statistic']:.3f}, p = {r['pvalue']:.3f} over "
                     f"{len(r['tasks'])} columns ({', '.join(column_label(t) for t in r['tasks'])}){wil}")
    boot = kruskal.get("bootstrap", {}).get("dev") or {}
    a, b = (METHOD_LABELS.get(kruskal[k], kruskal[k]) for k in ("a_method", "b_method"))
    if boot:
        cells = [f"{column_label(c)} [{points(v['diff_ci95'][0])}, {points(v['diff_ci95'][1])}]"
                 for c, v in boot.items()]
        lines.append(f"- dev, per task: 95% bootstrap interval of {b} - {a} over seeds, in points "
                     f"({kruskal['bootstrap']['resamples']} resamples): {'; '.join(cells)}")
    return lines
