"""`lnpeft figure curves --runs EPOCHS... --out PREFIX [--data PARQUET]`: learning curves.

The first question when a PEFT result does not reproduce is whether training had converged. Per
task and Table 2 method this draws, at the learning rate Table 2 reports for that method
(`lnpeft.report.selection`: seeds averaged per (lr, epoch), then the best (lr, epoch) on dev):
- top panel: the dev score per epoch (the task's paper metric on its first dev split, the column
  `{split}/{metric}` that selects the best epoch everywhere else), with an open circle at the
  epoch Table 2 reports;
- bottom panel, same epoch axis: the training loss per epoch (mean over the epoch's batches).
Lines are means over seeds; the band is the min-max over 2 seeds, a 95% t-interval of the mean
over >= 3 seeds, and absent for 1 seed (each panel's legend says which). Tasks are columns (4 per
row, then wrapped), each task's dev panel above its loss panel, so a plateau in one reads against
the other. `--data` writes the plotted numbers (artifact `curves`).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats

from lnpeft.data.artifacts import to_table
from lnpeft.report.selection import choose
from lnpeft.report.table3 import METHOD_LABELS

METHOD_COLOURS = {"full": "black", "bitfit": "tab:orange", "layernorm": "tab:blue", "random": "tab:red"}
OTHER_COLOURS = ("tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")  # other methods
BAND_TEXT = {"minmax": "min-max", "ci95": "95% CI"}
QUANTITIES = ("dev", "train_loss")


def _band(rows: pd.DataFrame, quantity: str) -> pd.DataFrame:
    """Per epoch over seeds: n_seeds, mean, low, high, band (see the module docstring)."""
    out = (rows.groupby("epoch")[quantity]
           .agg(n_seeds="count", mean="mean", std="std", low="min", high="max").reset_index())
    ci = out["n_seeds"] >= 3
    if ci.any():
        n = out.loc[ci, "n_seeds"]
        half = stats.t.ppf(0.975, n - 1) * out.loc[ci, "std"] / np.sqrt(n)
        out.loc[ci, "low"] = out.loc[ci, "mean"] - half
        out.loc[ci, "high"] = out.loc[ci, "mean"] + half
    out["band"] = np.select([ci, out["n_seeds"] == 2], ["ci95", "minmax"], "none")
    return out.drop(columns="std")


def _methods(present) -> list[str]:
    """Table 2's methods in its row order, then any others in the order given."""
    present = list(dict.fromkeys(present))
    return [m for m in METHOD_LABELS if m in present] + [m for m in present if m not in METHOD_LABELS]


def curve_data(runs: pd.DataFrame) -> pd.DataFrame:
    """The plotted numbers (artifact `curves`): per (task, method) Table 2's lr and best epoch, and
    per quantity (dev, train_loss) and epoch the seeds' mean and band."""
    frames = []
    for task in dict.fromkeys(runs["task"]):
        of_task = runs[runs["task"] == task]
        for method in _methods(of_task["method"]):
            group = of_task[of_task["method"] == method]
            choice = choose(group, "dev", what=f"{method}/{task}")
            chosen = group[group["lr"] == choice.lr]
            for quantity in QUANTITIES:
                frames.append(_band(chosen, quantity).assign(
                    task=task, method=method, lr=choice.lr, best_epoch=choice.epoch,
                    quantity=quantity, column=group["column"].iloc[0] if quantity == "dev" else quantity))
    data = pd.concat(frames, ignore_index=True)
    return to_table(data, "curves").to_pandas()  # the artifact's column order and types


def band_text(bands: pd.Series, n_seeds: pd.Series) -> str:
    """Legend title: how many seeds the lines average and what the band is."""
    lo, hi = int(n_seeds.min()), int(n_seeds.max())
    if hi == 1:
        return "1 seed, no band"
    kinds = [BAND_TEXT[k] for k in BAND_TEXT if k in set(bands)]
    seeds = f"{lo}-{hi}" if lo != hi else f"{hi}"
    return f"mean of {seeds} seeds; band: {' / '.join(kinds)}"


def plot_curves(data: pd.DataFrame) -> Figure:
    """Dev score (top) and training loss (bottom) per epoch, one column of two panels per task."""
    tasks = list(dict.fromkeys(data["task"]))
    ncols = min(4, len(tasks))
    task_rows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(2 * task_rows, ncols, figsize=(3.8 * ncols, 5.6 * task_rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)  # shown once a task fills it
    cycle = iter(OTHER_COLOURS)
    colours = dict(METHOD_COLOURS)
    for i, task in enumerate(tasks):
        r, c = divmod(i, ncols)
        dev_ax, loss_ax = axes[2 * r, c], axes[2 * r + 1, c]
        loss_ax.sharex(dev_ax)
        of_task = data[data["task"] == task]
        for method in _methods(of_task["method"]):
            colour = colours.setdefault(method, next(cycle, "tab:grey"))
            rows = of_task[of_task["method"] == method]
            for ax, quantity in ((dev_ax, "dev"), (loss_ax, "train_loss")):
                d = rows[rows["quantity"] == quantity].sort_values("epoch")
                ax.plot(d["epoch"], d["mean"], marker=".", color=colour,
                        label=f"{METHOD_LABELS.get(method, method)} (lr {d['lr'].iloc[0]:g})")
                if (d["band"] != "none").any():
                    ax.fill_between(d["epoch"], d["low"], d["high"], color=colour, alpha=0.2, linewidth=0)
            dev = rows[(rows["quantity"] == "dev") & (rows["epoch"] == rows["best_epoch"])]
            dev_ax.plot(dev["epoch"], dev["mean"], marker="o", markersize=8, markerfacecolor="none",
                        linestyle="none", color=colour, label="_nolegend_")
        split, metric = of_task.loc[of_task["quantity"] == "dev", "column"].iloc[0].split("/")
        dev_ax.set_title(task)
        dev_ax.set_ylabel(f"dev {metric}" + ("" if split == "validation" else f" ({split})"))
        loss_ax.set_ylabel("train loss")
        loss_ax.set_xlabel("epoch")
        dev_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in (dev_ax, loss_ax):
            ax.set_visible(True)
            ax.grid(alpha=0.3)
        dev_ax.legend(fontsize=7, title=band_text(of_task["band"], of_task["n_seeds"]), title_fontsize=7)
    fig.suptitle("Learning curves at each method's Table 2 learning rate (circle: the epoch Table 2 reports)")
    fig.tight_layout()
    return fig
