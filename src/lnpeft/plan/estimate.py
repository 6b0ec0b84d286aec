"""`lnpeft estimate`: the GPU-hours of a config's whole grid, before anyone submits it.

Stages counted (what `snakemake all` runs that costs accelerator time):
  table2     every (task, method, lr, seed) of Table 2: `training.epochs` epochs
  fractions  every Fisher-subset run of Figures 2 and 5: (task, scheme, fraction, lr, seed)
  drift      one full fine-tune per task for Figure 1 (`drift.epochs` epochs, first dev split only)
  fisher     one per-sample-gradient pass per task (`fisher.max_samples` rows)
Each run trains on the task's training rows every epoch, evaluates every dev split every epoch and
predicts the test splits once, from its best epoch. Row counts
are the official GLUE sizes (lnpeft.data.tasks.OFFICIAL_ROWS; a custom task's files counted) after
`data.subsample`.

Two projections side by side:
  ours      torch.compile, length-grouped dynamic padding with length buckets: time is tokens
            over tokens/s, tokens = the task's mean padded width (TOKENS) per example
  baseline  eager, every batch padded to max_length: time is examples over examples/s (eager is
            launch-bound, issue 7: a 32 x 48 step costs what a 32 x 128 step does)
Throughput comes from `bench/out/train_step.json` (bench/train_step.py on the target card and
model shape, used as measured) or, without one, from the H200 numbers of issue 7
(DEFAULT_THROUGHPUT, BERT-large) priced for the config's model by FLOPs (lnpeft.plan.cost:
6N/4N/2N per token for full / parameter-efficient / evaluation at BERT-large's achieved FLOP/s; as
measured when the model's config.json cannot be read yet). The table's second line says which.
Assumptions: examples/s do not depend on the batch size; evaluation (forward only) runs at 3x the
full method's training throughput; bitfit/random/fisher fall back to layernorm/full where a number
is missing (lnpeft.plan.cost.FALLBACK).
"""


from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from lnpeft.data.tasks import get_task
from lnpeft.plan import runtime
from lnpeft.plan.config_file import load_config
from lnpeft.plan.cost import Cost, Throughput, model_throughput, read_throughput, rows, run_cost
from lnpeft.plan.pack_plan import pack_size, plan_packs
from lnpeft.plan.workflow_config import fmt_lr, for_task, fraction_seeds, method_learning_rates


def describe_packing(config: dict, tp: Throughput) -> str:
    """How packs are priced, in words: which number is measured and which projected."""
    if pack_size(config) <= 1:
        return "packing: off (training.pack_size 1, one job per run)"
    if tp.pack_measured:
        return (f"packing: training.pack_size {pack_size(config)}; a pack trains x{tp.pack_speedup:.2f} faster "
                f"than its runs one by one, measured ({tp.source})")
    return (f"packing: training.pack_size {pack_size(config)}; no packed measurement in {tp.source}, so a pack "
            "is projected at its runs' time one by one (no gain assumed; bench/train_step.py --packed "
            "measures it), saving only start-up")


def _asked(cost: Cost, minutes: int) -> Cost:
    """One GPU job asking for `minutes`."""
    cost.asked_s, cost.jobs = 60.0 * minutes, 1
    return cost


def estimate(config: dict, tp: Throughput) -> dict[str, Cost]:
    tasks, seeds = list(config["tasks"]), list(config["seeds"])
    stages = {name: Cost() for name in ("table2", "fractions", "drift", "fisher")}
    packs = plan_packs(config, tasks)
    for task in tasks:
        tc = for_task(config, task)  # the task's own caps, epochs and grids (per_task)
        epochs = tc["training"]["epochs"]
        for method in config["methods"]:
            if packs and method != "full":
                continue  # priced with their packs below
            lrs = method_learning_rates(tc, method)
            for _ in range(len({fmt_lr(x) for x in lrs}) * len(seeds)):
                stages["table2"].add(_asked(run_cost(config, tp, task, method, epochs),
                                            runtime.train_minutes(config, task, method)))
        fr = tc.get("fractions", {})
        n = (len(fr.get("schemes", [])) * len({fmt_lr(x) for x in fr.get("values", [])})
             * len({fmt_lr(x) for x in fr.get("learning_rates", [])}) * len(fraction_seeds(config)))
        for _ in range(0 if packs else n):
            stages["fractions"].add(_asked(run_cost(config, tp, task, "fisher", epochs),
                                           runtime.train_minutes(config, task, "fisher")))
        spec = get_task(task)
        if config["drift"].get("activate", True):  # false: no Figure 1, no drift fine-tunes
            stages["drift"].add(_asked(run_cost(config, tp, task, "full", tc["drift"]["epochs"],
                                                dev_splits=list(spec.dev_splits[:1]), with_test=False),
                                       runtime.drift_minutes(config, task)))
        cap = tc.get("fisher", {}).get("max_samples")
        n = min(rows(config, task, "train"), cap or math.inf)
        stages["fisher"].add(_asked(Cost(runs=1, eval_examples=n, ours_s=n / tp.fisher_ours, baseline_s=n / tp.fisher_baseline),
                                    runtime.fisher_minutes(config, task)))
    for pack in packs:  # one job: its runs' time over the measured packing gain (1 if unmeasured)
        epochs = for_task(config, pack.task)["training"]["epochs"]
        cost = Cost()
        for member in pack.members:
            cost.add(run_cost(config, tp, pack.task, member.method, epochs))
        cost.ours_s /= tp.pack_speedup
        methods = [m.method for m in pack.members]
        stages["table2" if pack.stage == "grid" else "fractions"].add(
            _asked(cost, runtime.pack_minutes(config, pack.task, methods)))
    return stages


def report(stages: dict[str, Cost], tp: Throughput, requests: str = "", packing: str = "") -> dict:
    """The stages and their total as JSON-ready numbers; `requests` says how the time limits were set."""
    total = Cost()
    for cost in stages.values():
        total.add(cost)
    rows = {name: {"runs": c.runs, "jobs": c.jobs, "train_examples": c.train_examples, "eval_examples": c.eval_examples,
                   "ours_hours": c.ours_s / 3600, "baseline_hours": c.baseline_s / 3600,
                   "requested_hours": c.asked_s / 3600}
            for name, c in {**stages, "total": total}.items()}
    return {"throughput": {"source": tp.source, "device": tp.device,
                           "ours_tokens_per_s": tp.ours_tokens_per_s,
                           "baseline_examples_per_s": tp.baseline_examples_per_s,
                           "fisher_ours_samples_per_s": tp.fisher_ours,
                           "fisher_baseline_samples_per_s": tp.fisher_baseline,
                           "pricing": tp.pricing, "model_params": tp.model_params},
            "pack_speedup": tp.pack_speedup, "pack_speedup_measured": tp.pack_measured,
            "requests": requests, "packing": packing, "stages": rows}


def format_table(result: dict) -> str:
    tp = result["throughput"]
    header = (f"{'stage':<10} {'runs':>6} {'jobs':>5} {'train ex (M)':>13} {'ours h':>10} {'baseline h':>11} "
              f"{'speed-up':>9} {'requested h':>12}")
    lines = [f"device-hours on {tp['device']} (throughput: {tp['source']}); requested: the SLURM time "
             f"limits at attempt 1 ({result['requests']})",
             tp.get("pricing", ""),
             result.get("packing", ""),
             header]
    for name, r in result["stages"].items():
        speed = r["baseline_hours"] / r["ours_hours"] if r["ours_hours"] else float("nan")
        if name == "total":
            lines.append("-" * len(header))
        lines.append(f"{name:<10} {r['runs']:>6} {r['jobs']:>5} {r['train_examples'] / 1e6:>13.2f} {r['ours_hours']:>10.2f} "
                     f"{r['baseline_hours']:>11.2f} {speed:>8.2f}x {r['requested_hours']:>12.1f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", type=Path, action="append", default=[],
                        help="config file (repeat for overlays, later ones win; default: config.yaml)")
    parser.add_argument("--throughput", type=Path,
                        help="bench/out/train_step.json measured on the target card (default: the config's "
                        "resources.throughput, else issue 7's H200 numbers for BERT-large, priced for the "
                        "config's model by FLOPs)")
    parser.add_argument("--fisher-throughput", type=Path, help="bench/out/fisher.json of the same card")
    parser.add_argument("--shape", help="model shape in the throughput file (bert-large, minilm, tiny)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.configfile or [Path("config.yaml")])
    if args.throughput is not None:
        tp = read_throughput(args.throughput, args.shape, args.fisher_throughput)
    else:
        if args.fisher_throughput is not None or args.shape is not None:
            raise ValueError("--fisher-throughput and --shape need --throughput")
        tp = runtime.measured(config) or model_throughput(config)  # the config's resources.throughput first

    result = report(estimate(config, tp), tp, runtime.describe(config), describe_packing(config, tp))
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else format_table(result))
    return 0
