# Validation, derived lists, shared paths and input functions. No numerics here: logic lives in
# src/lnpeft; this file only builds paths and lists from the validated config.

import os
from pathlib import Path

from snakemake.utils import validate

from lnpeft.tasks import get_task
from lnpeft.workflow_config import check_config, fmt_lr, resolve_glue_dir


validate(config, schema="../schemas/config.schema.yaml")
check_config(config)  # cross-key checks the JSON schema cannot express (fails before any job)

MODEL = config["model"]["name"]
TASKS = list(config["tasks"])
SEEDS = list(config["seeds"])
METHODS = list(config["methods"])
FRACTIONS = config["fractions"]
SCHEMES = list(FRACTIONS["schemes"])
FRACTION_VALUES = list(FRACTIONS["values"])
FRACTION_LRS = list(FRACTIONS["learning_rates"])
CHECKPOINT = f"results/checkpoints/{MODEL}"
# compute jobs read only results/: no network on compute nodes
OFFLINE = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1"


wildcard_constraints:
    model=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    task=r"[a-z0-9]+",
    split=r"[a-z_]+",
    method=r"full|bitfit|layernorm|random",
    scheme=r"individual|global|cv",
    fraction=r"[0-9.]+",
    lr=r"[0-9.e+-]+",
    seed=r"\d+",


# ---------------------------------------------------------------- data and checkpoint


def data_splits(task):
    """HF split names of a task that the run needs (train, dev and test splits)."""
    return list(get_task(task).splits)


def data_path(task, split):
    return f"results/data/{task}/{split}.parquet"


def data_outputs(task):
    return [data_path(task, s) for s in data_splits(task)]


def glue_dir():
    return resolve_glue_dir(config["data"].get("glue_dir"))


def init_dir(task, seed):
    return f"results/init/{MODEL}/{task}/seed{seed}"


# ---------------------------------------------------------------- fine-tuning grid


def method_lrs(method):
    """The learning-rate grid of a method (full vs the parameter-efficient ones)."""
    key = "full" if method == "full" else "peft"
    return [fmt_lr(lr) for lr in config["learning_rates"][key]]


def run_dir(task, method, lr, seed):
    return f"results/runs/{MODEL}/{task}/{method}/lr{lr}_seed{seed}"


def fisher_method(scheme, fraction):
    """Directory name of a Fisher-subset run: fisher-{scheme}-f{fraction}."""
    return f"fisher-{scheme}-f{fraction}"


def grid_runs(tasks=None, methods=None):
    """epochs.parquet of every (task, method, lr, seed) of Table 2."""
    return [
        f"{run_dir(t, m, lr, s)}/epochs.parquet"
        for t in (tasks or TASKS)
        for m in (methods or METHODS)
        for lr in method_lrs(m)
        for s in SEEDS
    ]


def fraction_runs(schemes=None):
    """epochs.parquet of every Fisher-subset run (Figures 2 and 5)."""
    return [
        f"{run_dir(t, fisher_method(sc, fmt_lr(f)), fmt_lr(lr), s)}/epochs.parquet"
        for t in TASKS
        for sc in (schemes or SCHEMES)
        for f in FRACTION_VALUES
        for lr in FRACTION_LRS
        for s in SEEDS
    ]


# ---------------------------------------------------------------- named targets


def figure(name):
    return [f"results/figures/{name}.{ext}" for ext in ("pdf", "png")]


def table(n):
    return [f"results/tables/table{n}.{ext}" for ext in ("csv", "md", "tex")]


TARGETS = {
    "data": lambda: [p for t in TASKS for p in data_outputs(t)],
    "pretrained": lambda: [f"{CHECKPOINT}/MANIFEST.json"],
    "init": lambda: [f"{init_dir(t, s)}/config.json" for t in TASKS for s in SEEDS],
    "table1": lambda: table(1),
    "table2": lambda: table(2) + ["results/tables/scores.parquet"],
    "table3": lambda: table(3),
    "fig1": lambda: figure("fig1_drift"),
    "fig2": lambda: figure("fig2_fractions"),
    "fig3": lambda: figure("fig3_layernorm_fisher"),
    "fig4": lambda: figure("fig4_global_fisher"),
    "fig5": lambda: figure("fig5_schemes"),
    "stats": lambda: ["results/stats/kruskal.json"],
    "submission": lambda: [
        f"results/submission/{MODEL}/{m}.zip" for m in config["submission"]["methods"]
    ],
}


def get_final_output():
    """Everything `all` builds: every table, figure, the statistics and the submission zips."""
    names = ["table1", "table2", "table3", "fig1", "fig2", "fig3", "fig4", "fig5", "stats", "submission"]
    return [p for name in names for p in TARGETS[name]()]
