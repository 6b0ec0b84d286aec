"""The one rule that decides "the best": every table, figure, the submission and the statistics ask it.

The paper's protocol: for each (task, method) the learning rate and epoch are chosen on dev, from
the SEED MEAN of the paper metric on the task's first dev split (MNLI: matched) at each (lr,
epoch). Ties go to the smaller learning rate, then the earlier epoch: numbers compared as numbers
(`lr5e-05` is smaller than `lr0.0001`, seed 10 comes after seed 2), never as path strings.

The GLUE test server takes one prediction per example, so the submission sends one run: among the
seeds at the chosen learning rate, the one whose dev score at the chosen epoch is the median (the
lower one of an even count; ties to the smaller seed). A representative seed, not the luckiest of
them. Its predictions.parquet holds the test predictions of that run's own best epoch (a run
predicts test once, from its best state); when that epoch is not the chosen one, the manifest and
Table 3 say so (`predictions_epoch`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lnpeft.data.artifacts import read_parquet
from lnpeft.errors import LnpeftError


@dataclass(frozen=True)
class Choice:
    """The chosen (lr, epoch) of one (task, method) and the run the submission sends."""

    lr: float
    epoch: int
    seeds: tuple[int, ...]
    """Seeds averaged at (lr, epoch), in numeric order."""
    score: float
    """Their mean dev score (the selection column)."""
    seed: int
    """The submitted seed: the median seed at (lr, epoch)."""
    run: Path | None
    """That seed's run folder (None when the rows came without run folders)."""
    predictions_epoch: int | None
    """The epoch that run's predictions.parquet comes from (its own best epoch)."""

    @property
    def seeds_text(self) -> str:
        """`0,1,2`: the form scores.parquet stores."""
        return ",".join(str(s) for s in self.seeds)


def choose(epochs: pd.DataFrame, select: str, what: str = "runs") -> Choice:
    """The (lr, epoch) with the highest seed mean of `select`, and the median seed there.

    `epochs`: one row per (run, epoch) with numeric columns lr, seed, epoch and `select`; optional
    columns `run` (the run folder) and `best_epoch` (the run's own best epoch, from run.json).
    """
    if epochs.empty or select not in epochs or epochs[select].isna().all():
        raise LnpeftError(f"{what}: no dev score in {select!r}")
    rows = epochs.astype({"lr": "float64", "seed": "int64", "epoch": "int64"})
    mean = rows.groupby(["lr", "epoch"], as_index=False)[select].mean().dropna(subset=[select])
    best = mean.sort_values([select, "lr", "epoch"], ascending=[False, True, True], kind="stable").iloc[0]
    lr, epoch = float(best["lr"]), int(best["epoch"])
    at = rows[(rows["lr"] == lr) & (rows["epoch"] == epoch)].sort_values([select, "seed"], kind="stable")
    median = at.iloc[(len(at) - 1) // 2]
    run = Path(median["run"]) if "run" in at and pd.notna(median.get("run")) else None
    own_best = int(median["best_epoch"]) if "best_epoch" in at and pd.notna(median.get("best_epoch")) else None
    return Choice(lr, epoch, tuple(sorted(int(s) for s in at["seed"])), float(best[select]), int(median["seed"]),
                  run, own_best)


def chosen_rows(epochs: pd.DataFrame, choice: Choice) -> pd.DataFrame:
    """The rows of every seed at the chosen (lr, epoch), in seed order."""
    rows = epochs[(epochs["lr"].astype(float) == choice.lr) & (epochs["epoch"].astype(int) == choice.epoch)]
    return rows.sort_values("seed", kind="stable")


def read_run_epochs(runs: Iterable[Path | str], task: str) -> pd.DataFrame:
    """Every epoch row of the given run folders, with lr and seed from their run.json (numbers, as
    the run trained with), the folder (`run`) and the run's own best epoch (`best_epoch`)."""
    frames = []
    for run in runs:
        run = Path(run)
        epochs = read_parquet(run / "epochs.parquet", "epochs")
        meta_path = run / "run.json"
        if not meta_path.exists():
            raise LnpeftError(f"{meta_path}: missing; rerun the finetune job of {run}")
        meta = json.loads(meta_path.read_text())
        if meta["options"]["task"] != task:
            raise LnpeftError(f"{run}: a {meta['options']['task']} run listed as task {task}")
        frames.append(epochs.assign(lr=float(meta["options"]["lr"]), seed=int(meta["options"]["seed"]),
                                    run=str(run), best_epoch=int(meta.get("best_epoch", -1))))
    if not frames:
        raise LnpeftError(f"task {task}: no run folders given")
    rows = pd.concat(frames, ignore_index=True)
    twice = rows.drop_duplicates(["run"]).duplicated(["lr", "seed"], keep=False)
    if twice.any():
        same = rows.drop_duplicates(["run"])[twice]
        raise LnpeftError(f"task {task}: runs {', '.join(same['run'])} have the same lr {same['lr'].iloc[0]:g} and "
                          f"seed {same['seed'].iloc[0]}: give each (lr, seed) once")
    return rows


def selected_scores(rows: pd.DataFrame, by: tuple[str, ...] = ("task", "method", "scheme", "fraction"),
                    select: str = "dev") -> pd.DataFrame:
    """One row per group `by` of epoch rows (`runs.read_epoch_rows`): its chosen lr and epoch, the
    seeds behind it and their mean `select` (`score`): Table 2's value, wherever a figure shows one."""
    out = []
    for key, group in rows.groupby(list(by), dropna=False, sort=False):
        choice = choose(group, select, what="/".join(str(k) for k in key))
        out.append({**dict(zip(by, key)), "lr": choice.lr, "epoch": choice.epoch, "n_seeds": len(choice.seeds),
                    "score": choice.score})
    return pd.DataFrame(out, columns=list(dict.fromkeys([*by, "lr", "epoch", "n_seeds", "score"])))  # by may hold lr
