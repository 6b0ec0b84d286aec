"""`lnpeft writeup`: each claim's verdict follows its stated rule, computed from the artifacts."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from lnpeft.model.architectures import COMPONENTS
from lnpeft.report.run_log import machines, run_time
from lnpeft.report.verdicts import convergence, drift_claim, fisher_claim, grid_edge_text, peft_claim, subset_claim


def drift_frame(largest: str, layers: int = 3) -> pd.DataFrame:
    """D = 1 for every component but `largest` (D = 2 in every layer but the last, where it is 0.5)."""
    rows = []
    for layer in range(layers):
        for comp in COMPONENTS:
            d = (2.0 if layer < layers - 1 else 0.5) if comp == largest else 1.0
            rows.append({"layer": layer, "component": comp, "kind": "all", "n": 10, "D": d})
            rows.append({"layer": layer, "component": comp, "kind": "weight", "n": 8, "D": 99.0})  # not pooled
    return pd.DataFrame(rows)


def test_drift_claim_counts_tasks_and_layers():
    drift = {"sst2": drift_frame("output.LayerNorm"), "rte": drift_frame("output.LayerNorm"),
             "cola": drift_frame("intermediate.dense")}
    verdict, numbers, table = drift_claim(drift)
    assert verdict == "holds"  # 2 of 3 tasks
    assert numbers == ("output.LayerNorm has the largest mean drift on 2 of 3 tasks and is first in 4 of 9 "
                       "(task, layer) cells")
    assert table.set_index("task").loc["cola", "rank"] == 8  # tied with 6 others at 1.0: forward order, last
    assert table.set_index("task").loc["sst2", "ratio"] == pytest.approx(1.5)  # mean 1.5 vs 1.0
    drift["mrpc"] = drift_frame("output.dense")
    assert drift_claim(drift)[0] == "does not hold"  # 2 of 4 is not most


def test_fisher_claim_reads_table1():
    table1 = pd.DataFrame({"rank": [1, 2], "component": ["output.LayerNorm", "attention.output.LayerNorm"],
                           "score": [1.2, 0.8], "sst2": [0.7, 0.3], "stsb": [0.5, 0.5]})
    verdict, numbers = fisher_claim(table1)
    assert verdict == "holds"
    assert numbers == ("Table 1 ranks output.LayerNorm 1 of 2; it holds a mean 0.60 of each task's Fisher "
                       "and is first on 2 of 2 tasks")
    flipped = table1.assign(rank=[2, 1])
    assert fisher_claim(flipped)[0] == "does not hold"


def dev(ln: list[float], bitfit: list[float], random: list[float]) -> pd.DataFrame:
    return pd.DataFrame([ln, bitfit, random], index=["layernorm", "bitfit", "random"], columns=["sst2", "rte"])


@pytest.mark.parametrize("ln, bitfit, random, verdict", [
    ([0.80, 0.60], [0.81, 0.60], [0.70, 0.50], "holds"),          # -0.5 and +10 points
    ([0.80, 0.60], [0.84, 0.60], [0.70, 0.50], "partly holds"),   # -2 points behind BitFit
    ([0.80, 0.60], [0.80, 0.60], [0.80, 0.59], "partly holds"),   # random only 0.5 points lower
    ([0.70, 0.50], [0.80, 0.60], [0.70, 0.50], "does not hold"),
])
def test_peft_claim_thresholds(ln, bitfit, random, verdict):
    percents = pd.Series({"layernorm": 0.024, "bitfit": 0.12})
    got, numbers = peft_claim(dev(ln, bitfit, random), percents, ["sst2", "rte"])
    assert got == verdict
    assert "with 0.20 of BitFit's trainable parameters" in numbers


def test_peft_claim_also_reports_the_tasks_that_learn():
    _, numbers = peft_claim(dev([0.80, 0.50], [0.82, 0.56], [0.70, 0.50]),
                            pd.Series({"layernorm": 1.0, "bitfit": 5.0}), ["sst2"])
    assert numbers.endswith("on the 1 tasks where LayerNorm beats the trivial baseline (SST2): -2.0 and +10.0")


def test_subset_claim_at_f_0_2():
    wide = pd.DataFrame({("layernorm", 1.0): [0.80, 0.60], ("individual", 0.2): [0.79, 0.58],
                         ("cv", 0.2): [0.70, 0.50]}, index=["sst2", "rte"])
    verdict, numbers = subset_claim(wide, ["sst2"])
    assert verdict == "holds"  # -1.5 points
    assert numbers.startswith("individual f = 0.2 - LayerNorm -1.5 points; cv f = 0.2 - LayerNorm -10.0 points")
    assert numbers.endswith("individual on the tasks where LayerNorm beats the trivial baseline: -1.0")
    worse = wide.copy()
    worse[("individual", 0.2)] = [0.70, 0.55]
    assert subset_claim(worse, [])[0] == "does not hold"
    assert subset_claim(wide.drop(columns=[("individual", 0.2)]), [])[0] == "not tested"


def _curves(pairs: dict[tuple[str, str], tuple[int, list[float]]]) -> pd.DataFrame:
    rows = []
    for (task, method), (best, means) in pairs.items():
        for epoch, mean in enumerate(means, start=1):
            for quantity, value in (("dev", mean), ("train_loss", 9.0)):
                rows.append({"task": task, "method": method, "quantity": quantity, "epoch": epoch,
                             "best_epoch": best, "mean": value})
    return pd.DataFrame(rows)


def test_convergence_counts_runs_peaking_at_the_last_epoch():
    text = convergence(_curves({("sst2", "layernorm"): (2, [0.6, 0.7]), ("sst2", "bitfit"): (1, [0.7, 0.6])}))
    assert text == ("Table 2's epoch is the last epoch for 1 of 2 (task, method) pairs, and the last epoch "
                    "changed the seed-mean dev score by +0.0 points on average. 1 of 2 (task, method) curves have "
                    "flattened (Table 2's epoch is not the last, or the last epoch moved the seed mean by less than "
                    "half a point). Training had not converged: 1 of 2 curves were not flat at their last epoch "
                    "(SST2 LayerNorm (+10.0)), so those methods are judged before their plateau.")


def test_convergence_concludes_from_the_flat_curves_not_from_the_peaks_at_the_last_epoch():
    """A curve peaking at its last epoch by less than half a point has flattened: 3 of 4 peak at the
    last epoch here, yet only CoLA's still moves, so the text names it and does not call the run
    unconverged; with no curve moving it says so."""
    pairs = {("sst2", "full"): (3, [0.80, 0.830, 0.832]), ("sst2", "layernorm"): (3, [0.70, 0.800, 0.801]),
             ("cola", "full"): (3, [0.20, 0.250, 0.280]), ("cola", "layernorm"): (2, [0.10, 0.150, 0.140])}
    text = convergence(_curves(pairs))
    assert text.startswith("Table 2's epoch is the last epoch for 3 of 4 (task, method) pairs")
    assert "3 of 4 (task, method) curves have flattened" in text
    assert text.endswith("Not flat at their last epoch, so judged before their plateau: CoLA Full (+3.0).")
    assert "had not converged" not in text
    pairs[("cola", "full")] = (3, [0.20, 0.278, 0.280])
    assert convergence(_curves(pairs)).endswith("Every curve has flattened: each method is judged at its plateau.")
    # a curve of one epoch has no last move to measure: not flat, and said to be one epoch long
    pairs[("rte", "full")] = (1, [0.55])
    assert convergence(_curves(pairs)).endswith(
        "Not flat at their last epoch, so judged before their plateau: RTE Full (one epoch run).")


def test_grid_edges_name_each_pair_whose_rate_is_an_end_of_its_grid():
    """Table 2's rate at the top of its grid (a higher one might do better) or at the bottom, per
    method and task; a grid of one rate has no end to speak of, and a rate inside says nothing."""
    chosen = {("sst2", "random"): 0.03, ("rte", "random"): 0.03, ("sst2", "layernorm"): 0.01,
              ("rte", "layernorm"): 1e-3, ("sst2", "full"): 5e-5, ("sst2", "bitfit"): 1e-3}
    curves = pd.DataFrame([{"task": t, "method": m, "lr": lr, "quantity": q, "epoch": e}
                           for (t, m), lr in chosen.items() for q in ("dev", "train_loss") for e in (1, 2)])
    peft = [1e-3, 3e-3, 1e-2, 3e-2]
    grids = {("sst2", "random"): peft, ("rte", "random"): peft, ("sst2", "layernorm"): peft,
             ("rte", "layernorm"): peft, ("sst2", "full"): [5e-5], ("sst2", "bitfit"): [1e-3, 3e-3]}
    assert grid_edge_text(curves, grids) == (
        "Of 6 (task, method) pairs, Table 2's learning rate is the highest of its grid for 2 (Random on SST2, RTE) "
        "and the lowest of its grid for 2 (LayerNorm on RTE; BitFit on SST2): a rate beyond the grid might do "
        "better there (where a method is at chance at every rate, the end says nothing).")
    inside = curves[curves["method"] == "layernorm"].assign(lr=0.01)
    assert grid_edge_text(inside, grids) == \
        "Table 2's learning rate is inside its grid for every one of the 2 (task, method) pairs."


def test_machines_are_the_runs_own_not_the_writers():
    """The write-up names the machines run.json records, with counts where they differ, and says
    so where a run predates the record instead of naming the machine that writes the document."""
    a, b = "2 logical CPUs (AMD EPYC 9R14), Linux x86_64", "16 logical CPUs (Intel Xeon), Linux x86_64"
    assert machines([{"machine": a}] * 3) == a
    assert machines([{"machine": a}, {"machine": b}, {"machine": b}]) == f"{b} (2 runs) and {a} (1 run)"
    assert machines([{"machine": a}, {}]) == \
        f"{a} (1 run) and a machine not recorded for 1 run (their run.json predates lnpeft recording it)"
    assert "does not record" in machines([{}, {}])
    assert machines([{}, {}], "a laptop") == "a laptop (given for runs without a record)"
    assert machines([{"machine": a}, {}], "a laptop") == \
        f"{a} (1 run) and a laptop (given for runs without a record) (1 run)"


def test_run_time_from_the_snakemake_log(tmp_path):
    log = tmp_path / "run.snakemake.log"
    log.write_text("Provided cores: 2\n[Tue Dec  1 11:18:48 2026]\nrule a:\nFinished job 1.\n1 of 2 steps\n"
                   "[Tue Dec  1 13:02:50 2026]\nFinished job 0.\n")
    bench = tmp_path / "benchmarks" / "finetune" / "m" / "sst2"
    bench.mkdir(parents=True)
    for name, s in (("a", 30.5), ("b", 12.0)):
        (bench / f"{name}.tsv").write_text(f"s\th:m:s\tcpu_time\n{s}\t0:00:30\t{s - 10}\n")
    text, per_rule = run_time([log], tmp_path / "benchmarks")
    assert text == ("1 h 44 min wall time from the first to the last job (2026-12-01 11:18 to 13:02), 2 jobs "
                    "on 2 Snakemake cores; the jobs' CPU time sums to 0 min 22 s")
    assert per_rule.loc["finetune", "count"] == 2 and per_rule.loc["finetune", "sum"] == pytest.approx(42.5)
    again = tmp_path / "again.snakemake.log"  # a second run: its span adds, a no-op run adds nothing
    again.write_text("[Tue Dec  1 14:00:00 2026]\nFinished job 3.\n[Tue Dec  1 14:01:30 2026]\n")
    noop = tmp_path / "noop.snakemake.log"
    noop.write_text("Nothing to be done (all requested files are present and up to date).\n")
    text, _ = run_time([log, again, noop], tmp_path / "benchmarks")
    assert text == ("1 h 45 min wall time from the first to the last job in 2 Snakemake runs (2026-12-01 11:18 "
                    "to 14:01), 3 jobs on 2 Snakemake cores; the jobs' CPU time sums to 0 min 22 s")
    with pytest.raises(Exception, match="no job timestamps"):
        run_time([noop], tmp_path / "benchmarks")
    later = tmp_path / "later.snakemake.log"  # a run on the next day: the end names its date
    later.write_text("[Wed Dec  2 09:00:00 2026]\nFinished job 4.\n[Wed Dec  2 09:10:00 2026]\n")
    text, _ = run_time([log, later], tmp_path / "benchmarks")
    assert "(2026-12-01 11:18 to 2026-12-02 09:10), 3 jobs" in text


SLOW_FAILING_WORKFLOW = """
rule all:
    input: "out/ok", "out/fail", "out/slow"
rule ok:
    output: "out/ok"
    shell: "touch {output}"
rule fail:
    output: "out/fail"
    shell: "exit 3"
rule slow:
    output: "out/slow"
    shell: "sleep 120; touch {output}"
"""


def test_run_time_counts_the_jobs_a_killed_snakemake_run_cut_off(tmp_path):
    """A real Snakemake run killed mid-job (a sitting's end): the job it started and never finished has
    no benchmark, so the text counts it and its time; the failed job is not counted as cut off."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from lnpeft.report.run_log import cut_off_jobs

    (tmp_path / "Snakefile").write_text(SLOW_FAILING_WORKFLOW)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "snakemake"), "-c3", "--keep-going"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log, deadline = None, time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # until ok finished and fail failed; slow is still sleeping
            logs = list((tmp_path / ".snakemake" / "log").glob("*.snakemake.log"))
            text = logs[0].read_text() if logs else ""
            if "Error in rule fail" in text and "Finished jobid" in text:
                log = logs[0]
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert log is not None, "snakemake did not reach the failed and finished jobs within 120 s"
    text = log.read_text()
    assert len(cut_off_jobs(text)) == 1
    summary, _ = run_time([log], tmp_path / "benchmarks")
    assert re.search(r"\), 1 job on 3 Snakemake cores; 1 more job cut off when a Snakemake run stopped ran at least 0 min \d\d s "
                     r"of wall time that no benchmark holds$", summary), summary
    slow = re.search(r"^localrule slow:\n(?:    .*\n)*?    jobid: (\d+)$", text, re.M).group(1)
    done = text + f"[Sat Dec  5 23:59:59 2026]\nFinished jobid: {slow} (Rule: slow)\n"
    assert cut_off_jobs(done) == []  # once slow's finish is logged, nothing is cut off


def test_readme_reproduction_block_is_filled_from_the_committed_write_up():
    """README's block names the four claims' verdicts and links the write-up, which is committed with
    its figures (both written by `make reproduction-doc` from one run's results)."""
    from lnpeft.report.summary import markers

    repo = Path(__file__).resolve().parents[1]
    begin, end = markers("reproduction")
    block = (repo / "README.md").read_text().split(begin, 1)[1].split(end, 1)[0]
    verdicts = re.findall(r"^- \(([a-d])\) .*: \*\*(holds|partly holds|does not hold)\*\*$", block, re.M)
    assert [v[0] for v in verdicts] == ["a", "b", "c", "d"]
    link = re.search(r"\]\((docs/reproduction-minilm\.md)\)", block)
    doc = repo / link.group(1)
    text = doc.read_text()
    for claim, verdict in verdicts:
        assert re.search(rf"^\| \({claim}\) .* \| \*\*{verdict}\*\* \|", text, re.M)
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text):
        assert (doc.parent / image).is_file(), image


def test_plateau_table_gives_each_pairs_epoch_and_last_move():
    """The learning-curve table of the write-up: a method per row, a task per column, the epoch Table 2
    reports of the epochs run, the last epoch's move in points, "flat" where the curve flattened;
    the counts agree with `plateaus`."""
    from lnpeft.report.claims import curve_ends, plateaus
    from lnpeft.report.verdicts import plateau_table

    rows = []
    for task, method, best, means in (("sst2", "full", 3, [0.5, 0.6, 0.7]),          # still rising
                                      ("sst2", "layernorm", 3, [0.5, 0.698, 0.701]),  # last moved 0.3 points
                                      ("rte", "layernorm", 2, [0.5, 0.7, 0.6]),       # peaked before the last
                                      ("rte", "full", 1, [0.55])):
        for epoch, mean in enumerate(means, start=1):
            rows.append({"task": task, "method": method, "quantity": "dev", "epoch": epoch, "best_epoch": best,
                         "mean": mean})
    curves = pd.DataFrame(rows)
    ends = curve_ends(curves).set_index(["task", "method"])
    assert ends.loc[("sst2", "full"), "last_move"] == pytest.approx(0.1)
    assert ends["flat"].to_dict() == {("sst2", "full"): False, ("sst2", "layernorm"): True,
                                      ("rte", "layernorm"): True, ("rte", "full"): False}  # one epoch: no move to judge
    assert plateaus(curves) == (int(ends["flat"].sum()), 4) == (2, 4)
    table = plateau_table(curves, ["sst2", "cola", "rte"], ["full", "bitfit", "layernorm"])
    assert table[0] == "| | SST2 | RTE |"  # CoLA has no curve: no column
    assert table[2] == "| Full | 3 of 3, last +10.0 | 1 of 1 |"
    assert table[3] == "| LayerNorm | flat: 3 of 3, last +0.3 | flat: 2 of 3, last -10.0 |"
    assert len(table) == 4  # BitFit has no curve: no row


def test_rate_table_gives_every_rate_tried_and_marks_table2s():
    """One row per (method, lr) tried: the seed mean at that rate's best epoch, bold at Table 2's rate
    (chosen from the seed mean over every (lr, epoch)); Fisher-subset runs and unlisted methods left
    out; a rate one task did not run is "not run"; the trivial baselines close the table."""
    from lnpeft.report.verdicts import first_split_baselines, rate_table

    rows = []
    # (task, method, lr): dev per epoch for seeds 0 and 1
    curves = {("sst2", "layernorm", 0.003): ([0.60, 0.70], [0.62, 0.74]),   # mean 0.72 at epoch 2
              ("sst2", "layernorm", 0.01): ([0.80, 0.76], [0.78, 0.74]),    # mean 0.79 at epoch 1: Table 2's
              ("rte", "layernorm", 0.003): ([0.527, 0.527], [0.527, 0.527]),  # at chance at both rates
              ("rte", "layernorm", 0.01): ([0.527, 0.527], [0.527, 0.527]),
              ("sst2", "full", 2e-05): ([0.85, 0.86], [0.83, 0.88]),         # mean 0.87 at epoch 2
              ("sst2", "fisher-individual-f0.2", 0.01): ([0.99, 0.99], [0.99, 0.99]),  # a subset: not a row
              ("sst2", "bitfit", 0.001): ([0.5, 0.5], [0.5, 0.5])}           # not in methods: not a row
    for (task, method, lr), seeds in curves.items():
        for seed, dev in enumerate(seeds):
            for epoch, value in enumerate(dev, start=1):
                rows.append({"task": task, "method": method, "scheme": "individual" if "fisher" in method else None,
                             "fraction": 0.2 if "fisher" in method else 1.0, "lr": lr, "seed": seed,
                             "epoch": epoch, "dev": value})
    table = rate_table(pd.DataFrame(rows), ["sst2", "cola", "rte"], ["full", "layernorm"],
                       first_split_baselines(pd.Series({"sst2": 0.509, "rte": 0.527, "mnli_mismatched": 0.35})))
    assert table == ["| | SST2 | RTE |", "|---|---|---|",  # CoLA has no run: no column
                     "| Full 2e-05 | **0.870** | not run |",
                     "| LayerNorm 0.003 | 0.720 | **0.527** |",  # a tie: the smaller rate, as Table 2
                     "| LayerNorm 0.01 | **0.790** | 0.527 |",
                     "| trivial baseline | 0.509 | 0.527 |"]
    assert first_split_baselines(pd.Series({"mnli_matched": 0.35, "mnli_mismatched": 0.36})) == {"mnli": 0.35}


def test_table1_ranked_again_over_the_judged_tasks_and_kruskal_over_them():
    from scipy import stats

    from lnpeft.report.verdicts import kruskal_over, table1_over

    table1 = pd.DataFrame({"rank": [1, 2], "component": ["attention.output.LayerNorm", "output.LayerNorm"],
                           "score": [1.1, 0.9], "sst2": [0.2, 0.8], "cola": [0.9, 0.1]})
    again = table1_over(table1, ["sst2"])  # cola's column left out: output.LayerNorm first
    assert list(again["component"]) == ["output.LayerNorm", "attention.output.LayerNorm"]
    assert list(again["rank"]) == [1, 2] and again["score"].tolist() == [0.8, 0.2]
    assert fisher_claim(again)[0] == "holds" and fisher_claim(table1)[0] == "does not hold"
    methods = pd.DataFrame({"sst2": [0.80, 0.82], "rte": [0.60, 0.58], "cola": [0.0, 0.0]},
                           index=["bitfit", "layernorm"])
    got = kruskal_over(methods, ["sst2", "rte"])
    want = stats.kruskal([0.80, 0.60], [0.82, 0.58])
    assert got == f"Kruskal-Wallis H = {want.statistic:.3f}, p = {want.pvalue:.3f} (bitfit vs layernorm)"
    assert kruskal_over(methods, ["sst2"]) == "not computed (fewer than 2 tasks)"


def test_setup_table_gives_each_task_its_own_rows_epochs_and_length(tmp_path):
    """The Setup section reads each task's rows from its data MANIFEST.json and its epochs and length
    through `per_task` (the converge config keeps all of CoLA, MRPC and RTE, trains RTE 4 epochs)."""
    import json

    from lnpeft.plan.config_file import load_config
    from lnpeft.report.writeup import setup_table

    repo = Path(__file__).resolve().parents[1]
    config = load_config([repo / "config.yaml", repo / "configs" / "minilm-converge.yaml"])
    rows = {"sst2": (4000, 872), "cola": (8551, 1000), "mrpc": (3668, 408), "stsb": (4000, 1000), "rte": (2490, 277)}
    for task, (train, dev) in rows.items():
        (tmp_path / task).mkdir()
        splits = {"train": {"rows_kept": train}, "validation": {"rows_kept": dev}, "test": {"rows_kept": 200}}
        (tmp_path / task / "MANIFEST.json").write_text(json.dumps({"splits": splits}))
    lines = setup_table(config, tmp_path)
    assert lines[:2] == ["| task | training rows | dev rows | epochs | max length |", "|---|---|---|---|---|"]
    assert lines[2:7] == ["| SST2 | 4,000 | 872 | 3 | 64 |", "| CoLA | 8,551 | 1,000 | 3 | 64 |",
                          "| MRPC | 3,668 | 408 | 3 | 128 |", "| STSB | 4,000 | 1,000 | 3 | 128 |",
                          "| RTE | 2,490 | 277 | 4 | 128 |"]
    assert lines[-1] == ("Learning rates, every task: full 2e-05, 5e-05; bitfit 0.001, 0.003, 0.01; "
                         "layernorm 0.001, 0.003, 0.01, 0.03; random 0.001, 0.003, 0.01, 0.03.")
    config["per_task"]["rte"]["learning_rates"] = {"full": [1e-5]}  # a task with its own grid: a column
    lines = setup_table(config, tmp_path)
    assert lines[0].endswith("| learning rates |")
    assert lines[6].startswith("| RTE | 2,490 | 277 | 4 | 128 | full 1e-05; bitfit 0.001")
    (tmp_path / "cola" / "MANIFEST.json").unlink()
    with pytest.raises(Exception, match=r"cola/MANIFEST.json: missing"):
        setup_table(config, tmp_path)
