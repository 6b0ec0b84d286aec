"""`lnpeft writeup`: a reproduction's write-up (markdown and PNG figures), generated from its results.

Nothing in the write-up is typed by hand: Table 1 and Table 2 are the workflow's own markdown
(`table1` and `table2` targets) embedded verbatim, every other number is computed here from the
parquet files, `kruskal.json` and the Snakemake log of the run, and the figures are copied from
results/figures/. Each of the paper's four claims gets a verdict with the numbers behind it
(`lnpeft.report.verdicts` says how each is judged).

Every claim is judged only on the tasks where full fine-tuning learnt (`lnpeft.report.claims`: its
seed mean beats the trivial baseline by 3 points, or 0.10 of a correlation); the others are listed
with the reason and left out of every verdict and test. Per task, (c)'s differences are paired by
seed with 95% intervals and (d)'s subset is set against LayerNorm's seeds, each said to be within
the seeds' noise or not; the learning curves say how many have flattened. (c) and (d) are also
given over the tasks where LayerNorm beats the trivial baseline. `--check` regenerates the markdown and fails
if the committed file differs, so a stale write-up cannot pass for a current one.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from lnpeft.data.artifacts import atomic_path, read_parquet
from lnpeft.data.tasks import column_task
from lnpeft.errors import LnpeftError
from lnpeft.plan.config_file import load_config
from lnpeft.plan.workflow_config import for_task, method_learning_rates
from lnpeft.report.claims import learning_tasks, method_differences, reading, subset_differences
from lnpeft.report.run_log import machines, run_time
from lnpeft.report.runs import read_epoch_rows
from lnpeft.report.selection import selected_scores
from lnpeft.report.summary import dev_table, embed, markers, render
from lnpeft.report.table3 import column_label
from lnpeft.report.verdicts import (SUBSET_FRACTION, convergence, drift_claim, first_split_baselines, fisher_claim,
                                    grid_edge_text, kruskal_over, peft_claim, plateau_table, plateau_text, rate_table,
                                    stats_lines, subset_claim, subset_scores, table1_over)

FIGURES = {  # results/figures/ file -> caption; each shown in its section
    "curves_learning.png": "Learning curves: dev score (top) and training loss (bottom) per epoch of each "
                           "method at Table 2's learning rate; band: 95% t-interval over seeds.",
    "fig1_drift.png": "Figure 1: change of each component after full fine-tuning (Eq. 1).",
    "fig3_layernorm_fisher.png": "Figure 3: Fisher information of LayerNorm per layer.",
    "fig4_global_fisher.png": "Figure 4: global Fisher of LayerNorm (sum of the tasks' normalised Fisher).",
    "fig2_fractions.png": "Figure 2: dev score when training only the top-f Fisher fraction of LayerNorm.",
    "fig5_schemes.png": "Figure 5: the three mask schemes (individual, global, cross-validated).",
}


# ---------------------------------------------------------------- the document


def figure_path(out: Path, name: str) -> Path:
    return out.parent / out.stem / name


def grid_text(config: dict) -> str:
    """Each Table 2 method's learning rates, as the jobs of `config` (one task's view) train them."""
    return "; ".join(f"{m} {', '.join(f'{v:g}' for v in method_learning_rates(config, m))}"
                     for m in config["methods"])


def setup_table(config: dict, data_dir: Path) -> list[str]:
    """Per task: the rows it trained and was scored on (its data MANIFEST.json), epochs and length
    (`per_task` over the global keys); a learning-rate column only where some task has its own grid."""
    views = {task: for_task(config, task) for task in config["tasks"]}
    grids = {task: grid_text(view) for task, view in views.items()}
    own_grids = len(set(grids.values())) > 1
    header = ["task", "training rows", "dev rows", "epochs", "max length", *(["learning rates"] * own_grids)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task in config["tasks"]:
        path = data_dir / task / "MANIFEST.json"
        if not path.is_file():
            raise LnpeftError(f"{path}: missing; build the task's data first (snakemake all with the same config)")
        splits = json.loads(path.read_text())["splits"]
        dev = "/".join(f"{info['rows_kept']:,}" for name, info in splits.items() if name.startswith("validation"))
        training = views[task]["training"]
        cells = [column_label(task), f"{splits['train']['rows_kept']:,}", dev, str(training["epochs"]),
                 str(training["max_length"]), *([grids[task]] * own_grids)]
        lines.append("| " + " | ".join(cells) + " |")
    if not own_grids:
        lines += ["", f"Learning rates, every task: {next(iter(grids.values()))}."]
    return lines


def build(config: dict, sources: list[Path], results: Path, logs: list[Path], out: Path,
          unrecorded_machine: str | None = None, link: str | None = None
          ) -> tuple[str, list[tuple[Path, Path]], str]:
    """The markdown text, the (source, destination) figure copies, and the short block for a
    README (verdicts, run time and how many learning curves flattened, linking to the write-up at
    `link`)."""
    copies: list[tuple[Path, Path]] = []

    def figure(name: str) -> list[str]:
        src = results / "figures" / name
        if not src.is_file():
            raise LnpeftError(f"{src}: missing; build it first (snakemake all with the same config)")
        copies.append((src, figure_path(out, name)))
        return [FIGURES[name], "", f"![{name}]({out.stem}/{name})", ""]

    model = config["model"]["name"]
    missing = [m for m in ("full", "bitfit", "layernorm", "random") if m not in config["methods"]]
    if missing:
        raise LnpeftError(f"methods {config['methods']}: the write-up judges the paper's claims and needs "
                          f"all four Table 2 methods; missing {missing}")
    tables = results / "tables"
    scores = read_parquet(tables / "scores.parquet", "scores")
    dev = dev_table(scores, results / "data")
    percents = pd.read_csv(tables / "table2.csv").set_index("method")["percent_of_full"]
    base = dev.loc["baseline"]
    methods = dev.drop(index="baseline")
    seed_scores = read_parquet(tables / "scores_seeds.parquet", "seed_scores")
    metrics = {c: column_task(c)[0].metric for c in dev.columns}
    # only tasks that full fine-tuning learnt can judge which part of the model to train
    learning = learning_tasks(seed_scores, base.to_dict(), metrics)
    judged = [t.column for t in learning if t.learnt]
    judged_tasks = {column_task(c)[0].name for c in judged}
    learned = [c for c in judged if dev.loc["layernorm", c] > base[c]]
    drift = {p.stem: read_parquet(p, "drift") for p in sorted((results / "drift" / model).glob("*.parquet"))}
    table1 = pd.read_csv(tables / "table1.csv")
    runs = sorted(str(p) for p in (results / "runs" / model).glob("*/*/*/epochs.parquet"))
    epoch_rows = read_epoch_rows(runs)
    run_table = selected_scores(epoch_rows)
    wide = subset_scores(run_table)
    curves = read_parquet(results / "figures" / "curves_learning.parquet", "curves")
    kruskal = json.loads((results / "stats" / "kruskal.json").read_text())
    wall, per_rule = run_time(logs, results / "benchmarks")
    run_infos = [json.loads((Path(p).parent / "run.json").read_text()) for p in runs]
    threads = sorted({info.get("threads") for info in run_infos} - {None})
    recipes = sorted({str(info["recipe"]) for info in run_infos if info.get("recipe")})
    host = machines(run_infos, unrecorded_machine)

    ln_bitfit = method_differences(seed_scores, judged, metrics, "layernorm", "bitfit")
    ln_random = method_differences(seed_scores, judged, metrics, "layernorm", "random")
    subsets = subset_differences(epoch_rows, seed_scores, judged, metrics, "individual", SUBSET_FRACTION)
    claims = ["(a) output.LayerNorm changes most in full fine-tuning (Figure 1)",
              "(b) output.LayerNorm has the most Fisher information (Table 1)",
              "(c) LayerNorm within about a point of BitFit with about a fifth of its parameters; random "
              "clearly lower (Table 2)",
              f"(d) Fisher subsets at f = {SUBSET_FRACTION} within 1-2 points of all of LayerNorm (Figure 2)"]
    if judged:
        drift_result = drift_claim({t: d for t, d in drift.items() if t in judged_tasks})
        found = [drift_result[:2], fisher_claim(table1_over(table1, sorted(judged_tasks))),
                 peft_claim(methods[judged], percents, learned),
                 subset_claim(wide.loc[[t for t in wide.index if t in judged_tasks]], learned)]
    else:  # nothing learnt: no verdict is worth stating
        drift_result = drift_claim(drift)
        found = [("not judged", "full fine-tuning learnt no task, so no task can judge it")] * 4
    verdicts = [(claim, *result) for claim, result in zip(claims, found)]
    t = config["training"]
    fr = config["fractions"]
    seeds_fr = fr.get("seeds") or config["seeds"]
    lines = [
        f"# Reproduction at CPU scale: {model} on {len(config['tasks'])} GLUE tasks", "",
        f"Generated by `lnpeft writeup` from the results of the workflow run with "
        f"{' '.join(f'`{p}`' for p in sources)}; every number and table below is computed from those "
        "results, never typed. `make reproduction-doc` rewrites this file and its figures; "
        "`lnpeft writeup --check` fails if it is out of date.", "",
        "## Setup", "",
        f"- Model: `{model}` ({config['model']['source']} `{config['model']['location']}`); tasks: "
        f"{', '.join(column_label(c) for c in dev.columns)}.",
        f"- Table 2 grid: {len(config['methods'])} methods x learning rates x seeds {config['seeds']}, batch "
        f"{t['batch_size']}; best learning rate and epoch chosen on dev from the seeds' mean. Training rows "
        f"are a seeded subsample (seed {config['data']['seed']}) where a task's cap is below its file:", "",
        *setup_table(config, results / "data"), "",
        f"- Fisher subsets: fractions {fr['values']} x schemes {fr['schemes']} at learning rate(s) "
        f"{', '.join(f'{v:g}' for v in fr['learning_rates'])}, seed(s) {seeds_fr}; Fisher from "
        f"{config['fisher']['max_samples']} training examples; drift: a full fine-tune of "
        f"{config['drift']['epochs']} epochs at {config['drift']['learning_rate']:g}.",
        f"- Run: {wall}, on {host}; {'/'.join(map(str, threads)) or 'unrecorded'} thread(s) per "
        f"fine-tuning job, recipe {'/'.join(recipes) or 'unrecorded'} (run.json).", "",
        "## The paper's four claims at this scale", "",
        f"Judged on the {len(judged)} task(s) where full fine-tuning learnt "
        f"({', '.join(column_label(c) for c in judged)}); see [Which tasks can judge](#which-tasks-can-judge).", "",
        "| claim | verdict | the numbers |", "|---|---|---|",
        *(f"| {c} | **{v}** | {n} |" for c, v, n in verdicts), "",
        "## Which tasks can judge", "",
        "A task counts when full fine-tuning's seed mean beats the task's trivial baseline (the best constant "
        "prediction) by 3 points of accuracy or F1, or 0.10 of a correlation. On a task where full "
        "fine-tuning stays near chance, nothing tells which part of the model to train: it is left out of "
        "every verdict and test, and shown in the learning curves. A task where full fine-tuning learns "
        "and a parameter-efficient method does not stays in: that is a result about the method.", "",
        "| task | full | trivial baseline | counts |", "|---|---|---|---|",
        *(f"| {column_label(r.column)} | {r.full:.3f} | {r.baseline:.3f} | "
          f"{'yes' if r.learnt else 'no: ' + r.reason} |" for r in learning), "",
        "## Per task, with the seeds' noise", "",
        "Differences in points (0.01 of the paper metric), per task, with their 95% interval: paired by seed "
        "for two Table 2 methods; a Fisher subset trained with one seed against the prediction interval "
        "of one more LayerNorm seed. The paper's claim (d) is per task (\"in some cases slightly "
        "decreases ... in other cases improved\").", "",
        "| task | LayerNorm - BitFit | | LayerNorm - random | | "
        f"individual f = {SUBSET_FRACTION:g} - LayerNorm | |", "|---|---|---|---|---|---|---|",
        *(f"| {column_label(c)} | {ln_bitfit[c].text()} | {reading(ln_bitfit[c])} | {ln_random[c].text()} | "
          f"{reading(ln_random[c])} | " + (f"{subsets[c].text()} | {reading(subsets[c], 'decreases', 'improves')} |"
                                            if c in subsets else "not run | |") for c in judged), "",
        "## Table 2: development set", "",
        (tables / "table2.md").read_text().strip(), "",
        render(dev, "Seed means beside each task's trivial baseline (the best constant prediction):").strip(), "",
        "## Learning curves", "", convergence(curves), "",
        "Per (task, method): the epoch Table 2 reports of the epochs run, and how far the last epoch moved "
        "the seed mean, in points; \"flat\" where the curve has flattened.", "",
        *plateau_table(curves, list(config["tasks"]), list(config["methods"])), "",
        grid_edge_text(curves, {(task, m): method_learning_rates(for_task(config, task), m)
                                for task in config["tasks"] for m in config["methods"]}), "",
        "Every learning rate tried: the seed-mean dev score at each rate's best epoch, in bold at the rate "
        "Table 2 reports. A method at its trivial baseline at every rate is at chance within this grid, "
        "not only at the rate Table 2 reports.", "",
        *rate_table(epoch_rows, list(config["tasks"]), list(config["methods"]), first_split_baselines(base)), "",
        *figure("curves_learning.png"),
        "## Table 1: Fisher information per component", "",
        (tables / "table1.md").read_text().strip(), "",
        *figure("fig3_layernorm_fisher.png"), *figure("fig4_global_fisher.png"),
        "## Drift (Figure 1)", "",
        "Per task: the component with the largest mean D over layers, the rank of output.LayerNorm, the "
        "layers where it changes most, and its mean D over that of the largest other component.", "",
        "| task | largest | output.LayerNorm rank | layers where first | ratio |", "|---|---|---|---|---|",
    ]
    for _, r in drift_result[2].iterrows():
        lines.append(f"| {r['task']} | {r['first']} | {r['rank']} | {r['layers_first']} of {r['layers']} "
                     f"| {r['ratio']:.2f} |")
    lines += ["", *figure("fig1_drift.png"), "## Fisher subsets (Figures 2 and 5)", "",
              "Dev score (paper metric) of all of LayerNorm and of each scheme at each fraction, as "
              "Figure 2 plots them: the learning rate and epoch with the best seed mean, as Table 2.", ""]
    header = ["task", "LayerNorm", *(f"{s} {f:g}" for s, f in wide.columns[1:])]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, row in wide.iterrows():
        lines.append("| " + " | ".join([task, *(f"{v:.3f}" for v in row)]) + " |")
    lines += ["", *figure("fig2_fractions.png"), *figure("fig5_schemes.png"),
              "## Statistics: BitFit vs LayerNorm", "",
              "Kruskal-Wallis (the paper's test) and the paired Wilcoxon signed-rank test over the task "
              "columns (`results/stats/kruskal.json`):", "", *stats_lines(kruskal),
              f"- dev, over the {len(judged)} task(s) where full fine-tuning learnt: "
              + kruskal_over(methods, judged), "",
              "## Run time", "", f"{wall}. Job seconds per rule (Snakemake benchmarks):", "",
              "| rule | jobs | wall seconds | CPU seconds |", "|---|---|---|---|"]
    lines += [f"| {rule} | {int(r['count'])} | {r['sum']:.0f} | {r['cpu']:.0f} |" for rule, r in per_rule.iterrows()]
    n_seeds = len(config["seeds"])
    block = [f"[{lines[0].removeprefix('# ')}]({link or out.name}), {n_seeds} seed{'s' * (n_seeds != 1)} ({wall}), "
             "judges the paper's four claims at that scale:", "",
             *(f"- {c}: **{v}**" for c, v, _ in verdicts), "",
             f"Learning curves: {plateau_text(curves)}"]
    return "\n".join(lines) + "\n", copies, "\n".join(block) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", type=Path, action="append", default=[],
                        help="the run's config files, in order (default: config.yaml configs/minilm-long.yaml)")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--log", type=Path, nargs="+", required=True,
                        help="the Snakemake log(s) of the runs that built --results (.snakemake/log/*.snakemake.log)")
    parser.add_argument("--out", type=Path, default=Path("docs/reproduction-minilm.md"),
                        help="the markdown file; figures go to a folder of the same name beside it")
    parser.add_argument("--machine", default=None,
                        help="what the runs ran on where their run.json does not record it (runs of lnpeft "
                             "before it did); default: said to be unrecorded")
    parser.add_argument("--readme", type=Path, default=None,
                        help="also fill this file's block between <!-- BEGIN reproduction --> and <!-- END reproduction -->")
    parser.add_argument("--check", action="store_true",
                        help="fail if --out (and the --readme block) differ from what the results give")


def run(args: argparse.Namespace) -> int:
    sources = args.configfile or [Path("config.yaml"), Path("configs/minilm-long.yaml")]
    link = os.path.relpath(args.out, args.readme.parent) if args.readme else None
    text, copies, block = build(load_config(sources), sources, args.results, args.log, args.out,
                                args.machine, link)
    if args.check:
        pairs = [(args.out, args.out.read_text() if args.out.is_file() else "", text)]
        if args.readme:
            begin, end = markers("reproduction")
            readme = args.readme.read_text()
            current = readme.split(begin, 1)[1].split(end, 1)[0].removeprefix("\n") if begin in readme else ""
            pairs.append((args.readme, current, block))
        for path, old, new in pairs:
            if old != new:
                diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), str(path), "results"))
                raise LnpeftError(f"{path} is not what {args.results} gives:\n{diff[:4000]}")
        print(f"writeup: {args.out}{' and ' + str(args.readme) if args.readme else ''} match {args.results}")
        return 0
    for src, dst in copies:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    with atomic_path(args.out) as tmp:
        tmp.write_text(text)
    if args.readme:
        embed(args.readme, block, "reproduction")
    print(f"writeup: {args.out} and {len(copies)} figures in {figure_path(args.out, '')}"
          + (f"; its block in {args.readme}" if args.readme else ""))
    return 0
