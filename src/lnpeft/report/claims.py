"""What a reproduction may conclude about the paper's claims: only tasks that learn, per task, with
the seeds' noise said.

A claim about fine-tuning is judged only on the tasks where full fine-tuning learned: its seed mean
beats the task's trivial baseline (the best constant prediction) by `LEARNING_MARGIN` of the paper
metric. A task where full fine-tuning stays near chance says nothing about which part of the model
to train, so it is left out of every verdict, with the reason given. A task where full learns and a
parameter-efficient method does not stays in: that is a result about the method.

Differences between methods are per task, paired by seed (every method of a (task, seed) starts
from the same init and sees the same batches), with a 95% t-interval over seeds; a difference whose
interval holds 0 is within the seeds' noise. A single run (a Fisher subset trained with one seed)
is compared with the seeds of the run it is measured against through the 95% prediction interval
of one more seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

LEARNING_MARGIN: dict[str, float] = {"accuracy": 0.03, "f1": 0.03, "matthews": 0.10, "spearman": 0.10,
                                     "pearson": 0.10}
"""How far above its trivial baseline full fine-tuning must be, per paper metric, for a task to count
as learnt: 3 points of accuracy or F1, 0.10 of a correlation (MCC, Spearman)."""


@dataclass(frozen=True)
class Difference:
    """A - B on one task: the mean over seeds and its 95% interval (NaN with too few seeds)."""

    mean: float
    low: float
    high: float
    n: int
    """Seeds behind the interval (paired seeds; for a single run, the seeds it is compared with)."""

    @property
    def known(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    @property
    def within_noise(self) -> bool | None:
        """The interval holds 0 (None: no interval, fewer than 2 seeds)."""
        return self.low <= 0.0 <= self.high if self.known else None

    def text(self) -> str:
        """`+1.2 [-0.4, +2.8]` in points (0.01 of the metric)."""
        interval = f" [{100 * self.low:+.1f}, {100 * self.high:+.1f}]" if self.known else ""
        return f"{100 * self.mean:+.1f}{interval}"


def paired_difference(a: pd.Series, b: pd.Series) -> Difference:
    """A - B over the seeds both have (index: seed): mean and 95% t-interval of the paired
    differences."""
    seeds = a.index.intersection(b.index)
    if len(seeds) == 0:
        raise ValueError(f"no seed in common: {sorted(a.index)} vs {sorted(b.index)}")
    d = (a.loc[seeds] - b.loc[seeds]).to_numpy(dtype=np.float64)
    mean = float(d.mean())
    if d.size < 2:
        return Difference(mean, math.nan, math.nan, int(d.size))
    half = float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return Difference(mean, mean - half, mean + half, int(d.size))


def single_run_difference(value: float, seeds: pd.Series) -> Difference:
    """One run's score minus the mean of `seeds`' scores, with the 95% prediction interval of one
    more seed around that mean (t with n - 1 degrees of freedom, scale sd * sqrt(1 + 1/n))."""
    x = seeds.to_numpy(dtype=np.float64)
    mean = float(value - x.mean())
    if x.size < 2:
        return Difference(mean, math.nan, math.nan, int(x.size))
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) * math.sqrt(1 + 1 / x.size))
    return Difference(mean, mean - half, mean + half, int(x.size))


@dataclass(frozen=True)
class TaskLearning:
    column: str
    metric: str
    full: float
    """Full fine-tuning's seed mean at Table 2's learning rate and epoch."""
    baseline: float
    learnt: bool
    reason: str


def learning_tasks(seed_scores: pd.DataFrame, baselines: dict[str, float], metrics: dict[str, str],
                   method: str = "full") -> list[TaskLearning]:
    """Which task columns full fine-tuning learnt (dev, paper metric, seed mean), with the reason.

    `seed_scores`: scores_seeds.parquet rows (method, task, split, metric, seed, value);
    `baselines`: column -> trivial baseline; `metrics`: column -> paper metric.
    """
    out = []
    for column, metric in metrics.items():
        rows = seed_scores[(seed_scores["method"] == method) & (seed_scores["task"] == column)
                           & (seed_scores["split"] == "dev") & (seed_scores["metric"] == metric)]
        margin = LEARNING_MARGIN[metric]
        if rows.empty:
            out.append(TaskLearning(column, metric, math.nan, baselines[column], False,
                                    f"no {method} runs: nothing shows the task can be learnt"))
            continue
        full = float(rows["value"].mean())
        gain = full - baselines[column]
        learnt = gain >= margin
        reason = (f"{method} {full:.3f} vs trivial baseline {baselines[column]:.3f} ({gain:+.3f}; "
                  f"{'at least' if learnt else 'less than'} the {margin:.2f} a task must gain to count as learnt)")
        out.append(TaskLearning(column, metric, full, baselines[column], learnt, reason))
    return out


def seeds_of(seed_scores: pd.DataFrame, method: str, column: str, metric: str) -> pd.Series:
    """A method's dev paper-metric value per seed on one task column (index: seed)."""
    rows = seed_scores[(seed_scores["method"] == method) & (seed_scores["task"] == column)
                       & (seed_scores["split"] == "dev") & (seed_scores["metric"] == metric)]
    return rows.set_index("seed")["value"].astype(float).sort_index()


def verdict(ok: list[bool]) -> str:
    """holds (every part), partly holds (some), does not hold (none)."""
    return "holds" if all(ok) else "partly holds" if any(ok) else "does not hold"


def reading(diff: Difference, worse: str = "lower", better: str = "higher") -> str:
    """A difference in words: within the seeds' noise, or which way outside it."""
    if diff.within_noise is None:
        return "one seed: no interval"
    if diff.within_noise:
        return "within the seeds' noise"
    return f"{better} (outside the noise)" if diff.mean > 0 else f"{worse} (outside the noise)"


def method_differences(seed_scores: pd.DataFrame, columns: list[str], metrics: dict[str, str],
                       a: str, b: str) -> dict[str, Difference]:
    """A - B per task column, paired by seed, at each method's chosen (lr, epoch)."""
    return {c: paired_difference(seeds_of(seed_scores, a, c, metrics[c]), seeds_of(seed_scores, b, c, metrics[c]))
            for c in columns}


def subset_differences(rows: pd.DataFrame, seed_scores: pd.DataFrame, columns: list[str], metrics: dict[str, str],
                       scheme: str, fraction: float) -> dict[str, Difference]:
    """A Fisher subset (one scheme, one fraction) minus all of LayerNorm per task column: paired by
    seed when the subset has several seeds, else its one run against LayerNorm's seeds (the
    prediction interval of one more seed). `rows`: lnpeft.report.runs.read_epoch_rows of the runs."""
    from lnpeft.data.tasks import column_task
    from lnpeft.report.selection import choose, chosen_rows

    out = {}
    for column in columns:
        task = column_task(column)[0].name
        group = rows[(rows["task"] == task) & (rows["scheme"] == scheme) & (rows["fraction"] == fraction)]
        if group.empty:
            continue
        choice = choose(group, "dev", what=f"{task} {scheme} f={fraction:g}")
        subset = chosen_rows(group, choice).set_index("seed")["dev"].astype(float)
        layernorm = seeds_of(seed_scores, "layernorm", column, metrics[column])
        out[column] = (paired_difference(subset, layernorm) if len(subset) > 1
                       else single_run_difference(float(subset.iloc[0]), layernorm))
    return out


def curve_ends(curves: pd.DataFrame, moved: float = 0.005) -> pd.DataFrame:
    """Per (task, method) dev curve: the epoch Table 2 reports (`best_epoch`), the last epoch run,
    how far the last epoch moved the seed mean (`last_move`, NaN with one epoch), and whether the
    curve has flattened (`flat`): the chosen epoch is not the last, or the last epoch moved the seed
    mean by less than `moved` (half a point)."""
    dev = curves[curves["quantity"] == "dev"]
    rows = []
    for (task, method), group in dev.groupby(["task", "method"], sort=False):
        group = group.sort_values("epoch")
        best, last = int(group["best_epoch"].iloc[0]), int(group["epoch"].iloc[-1])
        move = float(group["mean"].iloc[-1] - group["mean"].iloc[-2]) if len(group) > 1 else math.nan
        rows.append({"task": task, "method": method, "best_epoch": best, "last_epoch": last, "last_move": move,
                     "flat": best != last or abs(move) < moved})
    return pd.DataFrame(rows, columns=["task", "method", "best_epoch", "last_epoch", "last_move", "flat"])


def plateaus(curves: pd.DataFrame, moved: float = 0.005) -> tuple[int, int]:
    """How many (task, method) dev curves have flattened (`curve_ends`), and how many there are."""
    ends = curve_ends(curves, moved)
    return int(ends["flat"].sum()), len(ends)


def grid_edges(curves: pd.DataFrame, grids: dict[tuple[str, str], list[float]]) -> dict[str, list[tuple[str, str]]]:
    """(task, method) pairs whose Table 2 learning rate is the highest or the lowest of a grid of
    several rates (`grids`: each pair's grid): a rate beyond the grid might do better there."""
    edges: dict[str, list[tuple[str, str]]] = {"highest": [], "lowest": []}
    for (task, method), group in curves.groupby(["task", "method"], sort=False):
        grid = sorted(grids.get((task, method), []))
        if len(grid) < 2:
            continue
        lr = float(group["lr"].iloc[0])
        if math.isclose(lr, grid[-1], rel_tol=1e-9):
            edges["highest"].append((task, method))
        elif math.isclose(lr, grid[0], rel_tol=1e-9):
            edges["lowest"].append((task, method))
    return edges
