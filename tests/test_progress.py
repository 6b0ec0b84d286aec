"""`lnpeft progress`: a grid's planned runs, their states, and Table 2 over the finished ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_submission import write_run

from lnpeft.cli import main
from lnpeft.errors import LnpeftError
from lnpeft.plan.config_file import load_config
from lnpeft.report.progress import format_time_left, planned_runs, survey, table2_so_far, time_left

REPO = Path(__file__).resolve().parents[1]
OVERLAY = {
    "model": {"name": "m"}, "tasks": ["sst2", "rte"], "methods": ["full", "layernorm"], "seeds": [0, 1],
    "learning_rates": {"full": [2e-05], "layernorm": [1e-03, 1e-02]},
    "training": {"epochs": 3}, "per_task": {"rte": {"training": {"epochs": 4}}},
    "fractions": {"values": [0.2], "schemes": ["individual"], "learning_rates": [1e-02], "seeds": [0]},
}


def finished(results: Path, task: str, method: str, lr: str, seed: int, dev: list[float]) -> None:
    """A run as lnpeft finetune leaves it, its run.json saying how many epochs it trained."""
    run = write_run(results / "runs" / "m" / task / method / f"lr{lr}_seed{seed}", task, dev,
                    {"test": ([0], [1])}, lr=float(lr), seed=seed)
    meta = json.loads((run / "run.json").read_text())
    meta["options"]["epochs"] = len(dev)
    (run / "run.json").write_text(json.dumps(meta))


@pytest.fixture
def grid(tmp_path: Path) -> tuple[Path, Path]:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(OVERLAY))
    results = tmp_path / "results"
    finished(results, "sst2", "full", "2e-05", 0, [0.60, 0.70, 0.80])
    finished(results, "sst2", "full", "2e-05", 1, [0.60, 0.72, 0.76])   # mean 0.60, 0.71, 0.78: rising
    finished(results, "sst2", "layernorm", "0.001", 0, [0.50, 0.60, 0.60])
    finished(results, "sst2", "layernorm", "0.01", 0, [0.70, 0.80, 0.79])  # best at epoch 2 of 3: flat
    started = results / "runs" / "m" / "sst2" / "layernorm" / "lr0.01_seed1"
    started.mkdir(parents=True)
    (started / "resume.pt").write_bytes(b"")  # interrupted: Snakemake resumes it
    finished(results, "rte", "layernorm", "0.01", 0, [0.99, 0.99, 0.99])  # 3 epochs, RTE asks 4: outdated
    finished(results, "sst2", "fisher-individual-f0.2", "0.01", 0, [0.70, 0.75, 0.74])
    return overlay, results


def test_states_and_table2_over_the_finished_runs(grid, capsys):
    overlay, results = grid
    config = load_config([REPO / "config.yaml", overlay])
    runs = survey(config, results)
    # Table 2: sst2 and rte each 1 full rate + 2 LayerNorm rates, x 2 seeds; subsets: 1 per task
    assert (len(runs), int(runs["subset"].sum())) == (14, 2)
    assert runs.groupby("state").size().to_dict() == {"finished": 5, "started": 1, "outdated": 1, "waiting": 7}
    assert runs.set_index(["task", "method", "lr", "seed"])["epochs"][("rte", "full", 2e-05, 0)] == 4

    so_far = table2_so_far(runs).set_index(["task", "method"])
    assert list(so_far.index) == [("sst2", "full"), ("sst2", "layernorm")]  # the outdated RTE run is not scored
    full, ln = so_far.loc[("sst2", "full")], so_far.loc[("sst2", "layernorm")]
    assert (full["finished"], full["planned"], full["lr"], full["epoch"], full["seeds"]) == (2, 2, 2e-05, 3, 2)
    assert full["dev"] == pytest.approx(0.78) and full["last_move"] == pytest.approx(0.07) and not full["flat"]
    assert (ln["finished"], ln["planned"], ln["lr"], ln["epoch"], ln["epochs"], ln["seeds"]) == (2, 4, 0.01, 2, 3, 1)
    assert ln["dev"] == pytest.approx(0.80) and ln["flat"]

    assert main(["progress", "--configfile", str(REPO / "config.yaml"), "--configfile", str(overlay),
                 "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Table 2: 4 of 12 finished, 1 started, 1 outdated\nFisher subsets: 1 of 2 finished\n")
    assert "rte/layernorm/lr0.01_seed0" in out.splitlines()[2]  # the outdated run is named
    assert "SST2      Full 2 of 2 2e-05 3 of 3      2 0.780 +7.0 rising" in out
    assert "SST2 LayerNorm 2 of 4  0.01 2 of 3      1 0.800 -1.0   flat" in out
    assert out.rstrip().endswith("1 of 2 (task, method) curves flat so far")


def test_nothing_finished_yet(tmp_path, capsys):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(OVERLAY))
    assert main(["progress", "--configfile", str(REPO / "config.yaml"), "--configfile", str(overlay),
                 "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Table 2: 0 of 12 finished\nFisher subsets: 0 of 2 finished\n")
    assert out.rstrip().endswith("No Table 2 run has finished yet.")
    assert "Time left: no finished run has a benchmark of its own to estimate it from" in out


def test_time_left_carries_the_finished_runs_cpu_time_over_to_the_rest(grid, capsys):
    """Each run not finished costs the median CPU time of the finished runs of its task and method
    (Fisher subsets one method), else of its task, else of all; outdated runs' benchmarks are ignored."""
    overlay, results = grid
    for run, cpu in {"sst2/full/lr2e-05_seed0": 100, "sst2/full/lr2e-05_seed1": 120,
                     "sst2/layernorm/lr0.001_seed0": 40, "sst2/layernorm/lr0.01_seed0": 60,
                     "rte/layernorm/lr0.01_seed0": 999}.items():  # the last one is outdated
        bench = results / "benchmarks" / "finetune" / "m" / f"{run}.tsv"
        bench.parent.mkdir(parents=True, exist_ok=True)
        bench.write_text(f"s\th:m:s\tcpu_time\n{cpu + 5}\t0:00:00\t{cpu}\n")
    bench = results / "benchmarks" / "finetune_fisher_subset" / "m" / "sst2" / "fisher-individual-f0.2" / "lr0.01_seed0.tsv"
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\tcpu_time\n35\t0:00:00\t30\n")
    runs = survey(load_config([REPO / "config.yaml", overlay]), results)
    # 9 left: 2 SST-2 LayerNorm at their pair's median 50; 7 RTE runs, no RTE benchmark, at the median of all, 60
    assert time_left(runs) == (9, pytest.approx(2 * 50 + 7 * 60))
    assert format_time_left(runs, 2) == ("Time left: 9 runs, about 0.1 CPU-hours of job time by the finished runs' "
                                         "benchmarks; 4 min 20 s on 2 cores at one thread a job, if nothing else runs")
    assert main(["progress", "--configfile", str(REPO / "config.yaml"), "--configfile", str(overlay),
                 "--results", str(results), "--cores", "4"]) == 0
    assert "; 2 min 10 s on 4 cores" in capsys.readouterr().out.splitlines()[3]
    assert main(["progress", "--configfile", str(overlay), "--results", str(results), "--cores", "0"]) != 0
    assert "--cores 0: give the number of cores the rest runs on, at least 1" in capsys.readouterr().err


def test_planned_runs_follow_the_methods_and_per_task_grids():
    """Every (task, method, lr, seed) once, each task with its own epochs and grid."""
    config = load_config([REPO / "config.yaml", REPO / "configs" / "minilm-long.yaml"])
    runs = planned_runs(config)
    table2 = [r for r in runs if not r.subset]
    assert len({(r.task, r.method, r.lr, r.seed) for r in table2}) == len(table2) == 5 * 8 * 3
    assert {r.epochs for r in runs} == {8}
    assert sorted({r.lr for r in table2 if r.method == "random"}) == [0.03, 0.1]
    assert len(runs) - len(table2) == 5 * 4 * 3


def test_a_broken_run_json_is_named(grid):
    overlay, results = grid
    meta = results / "runs" / "m" / "sst2" / "full" / "lr2e-05_seed0" / "run.json"
    meta.write_text("{half a file")
    with pytest.raises(LnpeftError, match=f"{meta}: not a run.json .* delete the run's folder"):
        survey(load_config([REPO / "config.yaml", overlay]), results)

