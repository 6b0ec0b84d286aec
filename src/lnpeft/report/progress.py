"""`lnpeft progress`: what a grid's finished runs say while the rest still run.

A grid of hundreds of runs takes hours to days; before it ends a researcher wants to know whether
the methods learn, at which learning rate, and whether the curves have flattened, to fix a grid
early rather than after the last job. This reads the config's planned runs and, per (task, method)
of Table 2, prints how many have finished, the (lr, epoch) that Table 2's rule
(`lnpeft.report.selection`) chooses among the finished ones, their seed-mean dev score, and whether
the curve there has flattened by the write-up's rule (`lnpeft.report.claims.curve_ends`); then the
Fisher-subset runs' counts. Nothing is written.

A run is finished when its run.json and epochs.parquet exist; started when its folder holds only
resume.pt (running now, or interrupted: Snakemake resumes it from there); outdated when it finished
with other epochs than the config asks (Snakemake trains it again: its params changed). Outdated
runs are counted, never scored. A packed run (training.pack_size) is waiting until its pack ends.

The time left is the finished runs' job CPU time (their Snakemake benchmarks) carried over to the
runs not finished: each at the median of the finished runs of its task and method (a Fisher subset
counts as one method), else of its task, else of all.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lnpeft.errors import LnpeftError
from lnpeft.plan.config_file import load_config
from lnpeft.plan.workflow_config import fmt_lr, for_task, fraction_seeds, method_learning_rates
from lnpeft.report.claims import curve_ends
from lnpeft.report.run_log import last_benchmark_row
from lnpeft.report.runs import read_epoch_rows
from lnpeft.report.selection import choose
from lnpeft.report.summary import duration
from lnpeft.report.table3 import METHOD_LABELS, column_label

STATES = ("finished", "started", "outdated", "waiting")


@dataclass(frozen=True)
class PlannedRun:
    task: str
    method: str
    """A Table 2 method, or a Fisher subset's folder name (fisher-{scheme}-f{fraction})."""
    lr: float
    seed: int
    epochs: int
    subset: bool


def planned_runs(config: dict) -> list[PlannedRun]:
    """Every Table 2 and Fisher-subset run `snakemake all` trains, in the workflow's order."""
    out = []
    fractions = config["fractions"]
    for task in config["tasks"]:
        view = for_task(config, task)
        epochs = int(view["training"]["epochs"])
        out += [PlannedRun(task, method, float(lr), int(seed), epochs, False)
                for method in config["methods"] for lr in method_learning_rates(view, method)
                for seed in config["seeds"]]
        out += [PlannedRun(task, f"fisher-{scheme}-f{fmt_lr(fraction)}", float(lr), int(seed), epochs, True)
                for scheme in fractions["schemes"] for fraction in fractions["values"]
                for lr in view["fractions"]["learning_rates"] for seed in fraction_seeds(config)]
    return out


def run_folder(results: Path, model: str, run: PlannedRun) -> Path:
    """Where the workflow puts the run (workflow/rules/common.smk, run_dir)."""
    return results / "runs" / model / run.task / run.method / f"lr{fmt_lr(run.lr)}_seed{run.seed}"


def state(folder: Path, epochs: int) -> str:
    """finished, started, outdated or waiting (see the module's docstring)."""
    meta = folder / "run.json"
    if meta.is_file() and (folder / "epochs.parquet").is_file():
        try:
            trained = json.loads(meta.read_text()).get("options", {}).get("epochs")
        except (json.JSONDecodeError, AttributeError) as err:
            raise LnpeftError(f"{meta}: not a run.json that lnpeft finetune writes ({err}); delete the run's "
                              "folder so that Snakemake trains it again") from err
        return "outdated" if trained is not None and int(trained) != epochs else "finished"
    return "started" if (folder / "resume.pt").is_file() else "waiting"


def benchmark_file(results: Path, model: str, run: PlannedRun) -> Path:
    """The run's Snakemake benchmark (workflow/rules/finetune.smk; a packed run has its pack's)."""
    rule = "finetune_fisher_subset" if run.subset else "finetune"
    return results / "benchmarks" / rule / model / run.task / run.method / f"lr{fmt_lr(run.lr)}_seed{run.seed}.tsv"


def cpu_seconds(benchmark: Path) -> float:
    """The job's CPU seconds from its benchmark's last row (NaN without the file or the column)."""
    if not benchmark.is_file():
        return float("nan")
    row = last_benchmark_row(benchmark)
    return float(row["cpu_time"]) if "cpu_time" in row else float("nan")


def survey(config: dict, results: Path) -> pd.DataFrame:
    """One row per planned run: task, method, lr, seed, epochs, subset, state, folder, cpu (the job's
    CPU seconds where it finished and has a benchmark)."""
    model = config["model"]["name"]
    rows = []
    for run in planned_runs(config):
        folder = run_folder(results, model, run)
        status = state(folder, run.epochs)
        cpu = cpu_seconds(benchmark_file(results, model, run)) if status == "finished" else float("nan")
        rows.append({**run.__dict__, "state": status, "folder": str(folder), "cpu": cpu})
    return pd.DataFrame(rows, columns=[*PlannedRun.__dataclass_fields__, "state", "folder", "cpu"])


def time_left(runs: pd.DataFrame) -> tuple[int, float] | None:
    """(runs not finished, their estimated job CPU seconds; see the module's docstring), or None when
    no finished run has a benchmark to go by."""
    runs = runs.assign(kind=runs["method"].where(~runs["subset"], "fisher"))
    known = runs.dropna(subset=["cpu"])
    if known.empty:
        return None
    by_pair = known.groupby(["task", "kind"])["cpu"].median()
    by_task = known.groupby("task")["cpu"].median()
    overall = float(known["cpu"].median())
    left = runs[runs["state"] != "finished"]
    seconds = sum(by_pair.get((task, k), by_task.get(task, overall)) for task, k in zip(left["task"], left["kind"]))
    return len(left), float(seconds)


def table2_so_far(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method) of Table 2 with a finished run: runs finished of planned, the chosen lr and
    epoch among the finished ones, the seeds behind it, their mean dev score, the last epoch's move
    of that mean, and whether the curve has flattened."""
    table2 = runs[~runs["subset"]]
    planned = table2.groupby(["task", "method"], sort=False).size()
    done = table2[table2["state"] == "finished"]
    if done.empty:
        return pd.DataFrame(columns=["task", "method", "finished", "planned", "lr", "epoch", "epochs", "seeds",
                                     "dev", "last_move", "flat"])
    rows = read_epoch_rows(Path(f) / "epochs.parquet" for f in done["folder"])
    finished = done.groupby(["task", "method"], sort=False).size()
    out = []
    for (task, method), group in rows.groupby(["task", "method"], sort=False):
        choice = choose(group, "dev", what=f"{task} {method}")
        at = group[group["lr"] == choice.lr]
        curve = at.groupby("epoch", as_index=False)["dev"].mean().rename(columns={"dev": "mean"})
        ends = curve_ends(curve.assign(task=task, method=method, quantity="dev", best_epoch=choice.epoch)).iloc[0]
        out.append({"task": task, "method": method, "finished": int(finished[(task, method)]),
                    "planned": int(planned[(task, method)]), "lr": choice.lr, "epoch": choice.epoch,
                    "epochs": int(ends["last_epoch"]), "seeds": len(choice.seeds), "dev": choice.score,
                    "last_move": float(ends["last_move"]), "flat": bool(ends["flat"])})
    return pd.DataFrame(out)


def format_time_left(runs: pd.DataFrame, cores: int) -> str:
    """A line: the runs left and their job time, in CPU-hours and spread over `cores` one-thread jobs."""
    estimate = time_left(runs)
    if estimate is None:
        return ("Time left: no finished run has a benchmark of its own to estimate it from (results/benchmarks/"
                "finetune*/; packed runs have their pack's)")
    n, seconds = estimate
    if n == 0:
        return "Time left: none, every planned run has finished"
    return (f"Time left: {n} runs, about {seconds / 3600:.1f} CPU-hours of job time by the finished runs' "
            f"benchmarks; {duration(seconds / cores)} on {cores} cores at one thread a job, if nothing else runs")


def format_progress(runs: pd.DataFrame, so_far: pd.DataFrame, cores: int = 1) -> str:
    """The counts per state and the time left, then Table 2 so far, a (task, method) per line."""
    def counts(part: pd.DataFrame) -> str:
        n = part["state"].value_counts()
        return f"{n.get('finished', 0)} of {len(part)} finished" + "".join(
            f", {n[s]} {s}" for s in STATES[1:3] if n.get(s, 0))

    table2, subsets = runs[~runs["subset"]], runs[runs["subset"]]
    lines = [f"Table 2: {counts(table2)}", f"Fisher subsets: {counts(subsets)}" if len(subsets) else
             "Fisher subsets: none planned"]
    outdated = runs[runs["state"] == "outdated"]
    if len(outdated):
        lines.append(f"outdated (finished with other epochs than the config's; Snakemake trains them again): "
                     + ", ".join(outdated["folder"].head(5)) + (" ..." if len(outdated) > 5 else ""))
    lines.append(format_time_left(runs, cores))
    if so_far.empty:
        return "\n".join(lines + ["", "No Table 2 run has finished yet."])
    view = pd.DataFrame({
        "task": [column_label(t) for t in so_far["task"]],
        "method": [METHOD_LABELS.get(m, m) for m in so_far["method"]],
        "runs": [f"{f} of {p}" for f, p in zip(so_far["finished"], so_far["planned"])],
        "lr": [f"{lr:g}" for lr in so_far["lr"]],
        "epoch": [f"{e} of {n}" for e, n in zip(so_far["epoch"], so_far["epochs"])],
        "seeds": so_far["seeds"],
        "dev": [f"{v:.3f}" for v in so_far["dev"]],
        "last": ["" if pd.isna(m) else f"{100 * m:+.1f}" for m in so_far["last_move"]],
        "curve": ["flat" if f else "rising" for f in so_far["flat"]],
    })
    flat = int(so_far["flat"].sum())
    return "\n".join(lines + [
        "", "Table 2 so far: the (lr, epoch) with the best seed mean among the finished runs, "
        "its seeds, their mean dev score and the last epoch's move of it in points "
        "(flat: the chosen epoch is not the last, or the last epoch moved it by less than half a point)", "",
        view.to_string(index=False), "", f"{flat} of {len(so_far)} (task, method) curves flat so far"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", type=Path, action="append", default=[],
                        help="the run's config files, in order, as the workflow reads them (default: config.yaml)")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                        help="cores the rest runs on, for the wall-time estimate (default: this machine's)")


def run(args: argparse.Namespace) -> int:
    if args.cores < 1:
        raise LnpeftError(f"--cores {args.cores}: give the number of cores the rest runs on, at least 1")
    runs = survey(load_config(args.configfile or [Path("config.yaml")]), args.results)
    print(format_progress(runs, table2_so_far(runs), args.cores))
    return 0
