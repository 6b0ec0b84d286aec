"""`lnpeft figure fig1|fig2|fig3|fig4|fig5|curves --out PREFIX ...`: the paper's Figures 1-5 and
the learning curves.

Each figure is written as PREFIX.pdf and PREFIX.png (matplotlib, Agg backend, atomic writes).
- fig1: drift D (kind `all`) as heat maps, component x layer, one panel (and colour bar) per task.
- fig2: dev metric vs trained fraction f per task, `individual` masks; a dashed line marks the
  full-LayerNorm run when given.
- fig3: output-LayerNorm Fisher per layer, task x layer, weight and bias panels. Per task the
  entry Fisher is divided by the task's total LayerNorm Fisher (weight and bias together) and then
  summed per layer and kind, so a cell is the share of that task's LayerNorm information held by
  that layer's weight (or bias), and the cells of one task sum to 1 over both panels. One colour
  scale for both panels, so weight and bias are comparable.
- fig4: the global Fisher (the sum over tasks of the normalised Fishers, as the `global` mask
  scheme uses) summed per layer, layer x (weight, bias); the cells sum to the number of tasks.
- fig5: dev metric vs f per task for the `individual`, `global` and `cv` schemes.
- curves: dev score and training loss per epoch of each method at Table 2's learning rate, seeds
  as bands (src/lnpeft/report/curves.py); `--data` also writes the plotted numbers.
Dev scores (fig2, fig5): the task's paper metric on its first dev split; per (task, scheme, f,
lr) the best epoch, averaged over seeds, then the best learning rate.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lnpeft.analysis.masks import parse_task_paths  # noqa: E402
from lnpeft.data.artifacts import atomic_path, read_parquet, write_parquet  # noqa: E402
from lnpeft.data.tasks import get_task  # noqa: E402
from lnpeft.model.architectures import COMPONENTS  # noqa: E402
from lnpeft.report import curves  # noqa: E402
from lnpeft.report.runs import read_epoch_rows  # noqa: E402
from lnpeft.report.selection import selected_scores  # noqa: E402

SCHEME_STYLE = {"individual": ("tab:blue", "o"), "global": ("tab:orange", "s"), "cv": ("tab:green", "^")}


# ---------------------------------------------------------------- data preparation


def layernorm_share(fisher: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, kind): the task's LayerNorm Fisher share (entries / total, summed per layer)."""
    share = fisher.assign(share=fisher["fisher"] / fisher["fisher"].sum())
    return share.groupby(["layer", "kind"])["share"].sum().unstack("kind")


def ordered_tasks(tasks) -> list[str]:
    return list(dict.fromkeys(tasks))


def _grid(n: int, ncols: int = 4, size=(3.6, 3.0)) -> tuple[Figure, np.ndarray]:
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


# ---------------------------------------------------------------- figures


def fig1(drift: dict[str, pd.DataFrame]) -> Figure:
    tasks = list(drift)
    n_layers = max(int(df["layer"].max()) + 1 for df in drift.values())
    fig, axes = _grid(len(tasks), ncols=3, size=(max(4.0, 0.28 * n_layers + 2.8), 3.4))
    for ax, task in zip(axes.flat, tasks):
        df = drift[task]
        mat = (df[df["kind"] == "all"].pivot(index="component", columns="layer", values="D")
               .reindex(index=list(COMPONENTS)))
        im = ax.imshow(mat.to_numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(task)
        ax.set_xticks(range(mat.shape[1]), [str(c) for c in mat.columns], fontsize=7)
        ax.set_yticks(range(len(COMPONENTS)), list(COMPONENTS), fontsize=7)
        ax.set_xlabel("layer")
        fig.colorbar(im, ax=ax, label="D (mean |change|)")
    fig.suptitle("Change of each component after full fine-tuning (Eq. 1)")
    fig.tight_layout()
    return fig


def _fraction_panels(scores: pd.DataFrame, schemes: list[str], title: str) -> Figure:
    fisher_runs = scores[scores["scheme"].isin(schemes)]
    if fisher_runs.empty:
        raise ValueError(f"no Fisher-subset runs of scheme(s) {schemes} among the given runs")
    curves = fisher_runs  # one row per (task, scheme, fraction): Table 2's rule (lnpeft.report.selection)
    reference = scores[scores["method"] == "layernorm"].set_index("task")["score"]
    tasks = ordered_tasks(fisher_runs["task"])
    fig, axes = _grid(len(tasks))
    for ax, task in zip(axes.flat, tasks):
        for scheme in schemes:
            c = curves[(curves["task"] == task) & (curves["scheme"] == scheme)].sort_values("fraction")
            if c.empty:
                continue
            colour, marker = SCHEME_STYLE[scheme]
            ax.plot(c["fraction"], c["score"], marker=marker, color=colour, label=scheme)
        if task in reference.index:
            ax.axhline(reference[task], color="grey", linestyle="--", label="all LayerNorm")
        spec = get_task(task)
        ax.set_title(task)
        ax.set_xlabel("trained fraction f of LayerNorm")
        ax.set_ylabel(f"dev {spec.metric}")
        ax.set_xlim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def fig2(scores: pd.DataFrame) -> Figure:
    return _fraction_panels(scores, ["individual"],
                            "Dev score when training only the top-f Fisher fraction of LayerNorm")


def fig5(scores: pd.DataFrame) -> Figure:
    schemes = [s for s in SCHEME_STYLE if s in set(scores["scheme"].dropna())]
    return _fraction_panels(scores, schemes, "Fisher masks: individual vs global vs cross-validated (cv)")


def fig3(fisher: dict[str, pd.DataFrame]) -> Figure:
    shares = {task: layernorm_share(df) for task, df in fisher.items()}
    tasks = list(shares)
    kinds = _kinds(shares.values())
    n_layers = max(len(s) for s in shares.values())
    vmax = max(float(s.to_numpy().max()) for s in shares.values())
    fig, axes = plt.subplots(1, len(kinds), figsize=(max(7.0, 2.5 + 1.1 * len(tasks)), 2.0 + 0.3 * n_layers),
                             sharey=True, squeeze=False, layout="constrained")
    for ax, kind in zip(axes[0], kinds):
        mat = pd.DataFrame({task: shares[task][kind] for task in tasks})
        im = ax.imshow(mat.to_numpy(), aspect="auto", cmap="magma", vmin=0, vmax=vmax,
                       interpolation="nearest")
        ax.set_title(f"LayerNorm {kind}")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
        ax.set_yticks(range(len(mat)), [str(i) for i in mat.index])
        ax.set_xlabel("task")
    axes[0, 0].set_ylabel("layer")
    fig.colorbar(im, ax=list(axes[0]), label="share of the task's LayerNorm Fisher")
    fig.suptitle("LayerNorm Fisher information per layer")
    return fig


def _kinds(shares) -> list[str]:
    """weight and bias, or weight alone for norms without a bias (ModernBERT's)."""
    present = {k for s in shares for k in s.columns}
    return [k for k in ("weight", "bias") if k in present]


def fig4(fisher: dict[str, pd.DataFrame]) -> Figure:
    kinds = _kinds(layernorm_share(df) for df in fisher.values())
    total = sum(layernorm_share(df) for df in fisher.values())[kinds]
    mat = total.to_numpy()
    fig, ax = plt.subplots(figsize=(4.6, 1.5 + 0.3 * len(total)))
    im = ax.imshow(mat, aspect="auto", cmap="magma", interpolation="nearest")
    if mat.size <= 200:  # numbers in the cells, as in the paper, while they stay legible
        threshold = mat.min() + 0.6 * (mat.max() - mat.min())
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7,
                    color="black" if v > threshold else "white")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_yticks(range(len(total)), [str(i) for i in total.index])
    ax.set_ylabel("layer")
    ax.set_title(f"Global LayerNorm Fisher ({len(fisher)} tasks: {', '.join(fisher)})", fontsize=8)
    fig.colorbar(im, ax=ax, label="sum over tasks of normalised Fisher")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- output and CLI


def save(fig: Figure, prefix: Path | str) -> list[Path]:
    """Write PREFIX.pdf and PREFIX.png atomically; returns the paths."""
    prefix = Path(prefix)
    if prefix.suffix in (".pdf", ".png"):
        prefix = prefix.with_suffix("")
    paths = []
    for ext in ("pdf", "png"):
        path = prefix.parent / f"{prefix.name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="figure", required=True)
    for name, what, flag, help_ in [
        ("fig1", "drift heat maps", "--drift", "TASK=PARQUET of results/drift/{model}/{task}.parquet"),
        ("fig3", "LayerNorm Fisher per layer", "--fisher", "TASK=PARQUET of results/fisher/{model}/{task}.parquet"),
        ("fig4", "global LayerNorm Fisher", "--fisher", "TASK=PARQUET of results/fisher/{model}/{task}.parquet"),
    ]:
        p = sub.add_parser(name, help=what)
        p.add_argument(flag, nargs="+", required=True, metavar="TASK=PARQUET", help=help_)
        p.add_argument("--out", required=True, help="output prefix (writes .pdf and .png)")
    for name, what in [("fig2", "dev score vs fraction (individual)"), ("fig5", "mask schemes vs fraction")]:
        p = sub.add_parser(name, help=what)
        p.add_argument("--runs", nargs="+", required=True,
                       help="epochs.parquet of Fisher-subset runs (and optionally layernorm runs)")
        p.add_argument("--out", required=True, help="output prefix (writes .pdf and .png)")
    p = sub.add_parser("curves", help="learning curves (dev score, train loss) at Table 2's learning rates")
    p.add_argument("--runs", nargs="+", required=True,
                   help="epochs.parquet of the Table 2 grid runs (every lr and seed of each method)")
    p.add_argument("--out", required=True, help="output prefix (writes .pdf and .png)")
    p.add_argument("--data", default=None, help="also write the plotted numbers here (parquet, artifact curves)")


def run(args: argparse.Namespace) -> int:
    if args.figure == "fig1":
        fig = fig1({t: read_parquet(p, "drift") for t, p in parse_task_paths(args.drift).items()})
    elif args.figure in ("fig3", "fig4"):
        tables = {t: read_parquet(p, "fisher") for t, p in parse_task_paths(args.fisher).items()}
        fig = fig3(tables) if args.figure == "fig3" else fig4(tables)
    elif args.figure == "curves":
        data = curves.curve_data(read_epoch_rows(args.runs))
        fig = curves.plot_curves(data)
        if args.data:
            write_parquet(data, args.data, "curves")
            print(f"figure curves: data {args.data}")
    else:
        scores = selected_scores(read_epoch_rows(args.runs))
        fig = fig2(scores) if args.figure == "fig2" else fig5(scores)
    paths = save(fig, args.out)
    print(f"figure {args.figure}: {', '.join(map(str, paths))}")
    return 0
