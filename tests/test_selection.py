"""One rule decides every "best": Table 2, Figure 2, the submission and the statistics agree.

A grid of 2 learning rates x 3 seeds per method, written as the workflow writes runs, where each
rule the project used to have gives a different answer: every run's own best epoch differs from
the seed mean's best epoch, the best single run sits at the other learning rate, two learning rates
tie on the seed mean, and the path strings sort the wrong way (`lr5e-05` after `lr0.0001`, `seed10`
before `seed2`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_submission import TEST_IDX, write_data, write_run

from lnpeft.cli import main
from lnpeft.data.artifacts import read_parquet
from lnpeft.data.tasks import get_task
from lnpeft.report.runs import read_epoch_rows
from lnpeft.report.scores import ScoresError, read_scores
from lnpeft.report.selection import choose, selected_scores
from lnpeft.report.submission import SubmissionConfig, build_submission

SEEDS = (2, 10, 0)
# dev accuracy per epoch (1, 2, 3) for each (method, lr, seed)
GRID = {
    # layernorm: lr 5e-05 and 1e-04 tie exactly on their best seed mean (0.625 at epoch 2; dyadic
    # numbers, so the tie is not float noise); the smaller lr (5e-05, which sorts after 0.0001 as
    # text) must win. Seeds 10 and 0 peak at other epochs on their own; the best single run (0.875)
    # is at lr 1e-04.
    ("layernorm", 5e-05): {2: [0.5, 0.75, 0.5], 10: [0.5, 0.625, 0.6875], 0: [0.5625, 0.5, 0.5]},
    ("layernorm", 1e-04): {2: [0.5, 0.5, 0.5], 10: [0.5, 0.875, 0.5], 0: [0.5, 0.5, 0.5]},
    # bitfit: lr 1e-04 is best on the mean at epoch 3 (0.6875); the best single run is at 5e-05
    ("bitfit", 5e-05): {2: [0.875, 0.5, 0.5], 10: [0.5, 0.5, 0.5], 0: [0.5, 0.5, 0.5]},
    ("bitfit", 1e-04): {2: [0.5, 0.5625, 0.6875], 10: [0.5, 0.5625, 0.625], 0: [0.5, 0.625, 0.75]},
}
EXPECTED = {"layernorm": (5e-05, 2, 0.625, 10), "bitfit": (1e-04, 3, 0.6875, 2)}  # lr, epoch, mean, median seed


def lr_text(lr: float) -> str:
    return f"{lr:g}"  # 5e-05, 0.0001: what run paths hold


@pytest.fixture
def grid(tmp_path: Path) -> dict:
    data = tmp_path / "data"
    write_data(data, "rte", "test", TEST_IDX["rte"])
    runs: dict[str, list[Path]] = {}
    for (method, lr), by_seed in GRID.items():
        for seed, scores in by_seed.items():
            run = tmp_path / "results" / "runs" / "m" / "rte" / method / f"lr{lr_text(lr)}_seed{seed}"
            # each run predicts a label pattern of its own, so the zip shows which run was sent
            label = (seed + int(lr * 1e5)) % 2
            write_run(run, "rte", scores, {"test": (TEST_IDX["rte"], [label] * 3)}, lr=lr, seed=seed)
            runs.setdefault(method, []).append(run)
    return {"dir": tmp_path, "data": data, "runs": runs}


def test_the_choice_is_numeric_and_breaks_ties_on_the_smaller_lr(grid):
    for method, (lr, epoch, mean, seed) in EXPECTED.items():
        rows = pd.concat(
            [read_parquet(r / "epochs.parquet", "epochs").assign(lr=float(json.loads((r / "run.json").read_text())
                                                                     ["options"]["lr"]),
                                                                 seed=int(r.name.rsplit("seed", 1)[1]))
             for r in grid["runs"][method]], ignore_index=True)
        choice = choose(rows, "validation/accuracy")
        assert (choice.lr, choice.epoch, choice.seeds, choice.seed) == (lr, epoch, (0, 2, 10), seed)
        assert choice.score == pytest.approx(mean)


def test_table2_figure2_submission_and_stats_use_one_choice(grid, capsys):
    d = grid["dir"]
    tables = d / "results" / "tables"
    args = [f"{m}:rte={r}" for m, runs in grid["runs"].items() for r in runs]
    assert main(["tables", "--runs", *args, "--scores", str(tables / "scores.parquet"),
                 "--out-prefix", str(tables / "table2"), "--seed-scores", str(tables / "scores_seeds.parquet")]) == 0
    scores = read_parquet(tables / "scores.parquet", "scores").set_index("method")
    seeds = read_parquet(tables / "scores_seeds.parquet", "seed_scores")
    figure = selected_scores(read_epoch_rows([r / "epochs.parquet" for rs in grid["runs"].values() for r in rs]))
    figure = figure.set_index("method")
    for method, (lr, epoch, mean, seed) in EXPECTED.items():
        # Table 2
        row = scores.loc[method]
        assert (row["lr"], row["epoch"], row["seeds"]) == (lr, epoch, "0,2,10")
        assert row["value"] == pytest.approx(mean)
        mine = seeds[seeds["method"] == method]
        assert sorted(mine["seed"]) == [0, 2, 10] and set(mine["lr"]) == {lr} and set(mine["epoch"]) == {epoch}
        # Figure 2's lines (and the write-up's claim d) read the same value
        assert (figure.loc[method, "lr"], figure.loc[method, "epoch"]) == (lr, epoch)
        assert figure.loc[method, "score"] == pytest.approx(row["value"])
        # the submission sends the median seed at that lr, and says which epoch its predictions are from
        _, manifest = build_submission(SubmissionConfig(method, {"rte": tuple(grid["runs"][method])}, grid["data"],
                                                        d / f"{method}.zip", allow_incomplete=True))
        entry = manifest["files"]["RTE.tsv"]
        assert (entry["lr"], entry["epoch"], entry["seeds"], entry["seed"]) == (lr, epoch, [0, 2, 10], seed)
        assert entry["run"].endswith(f"/rte/{method}/lr{lr_text(lr)}_seed{seed}")
        assert entry["dev_value"] == pytest.approx(mean)
        own = GRID[method, lr][seed]
        assert entry["predictions_epoch"] == int(np.argmax(own)) + 1
    # the statistics compare exactly Table 2's values (the seed means at the chosen point)
    out = d / "kruskal.json"
    assert main(["stats", "kruskal", "--scores", str(tables / "scores.parquet"), "--seed-scores",
                 str(tables / "scores_seeds.parquet"), "--a", "bitfit", "--b", "layernorm", "--out", str(out)]) == 0
    stats = json.loads(out.read_text())
    boot = stats["bootstrap"]["dev"]["rte"]
    assert boot["a_mean"] == pytest.approx(EXPECTED["bitfit"][2]) and boot["b_mean"] == pytest.approx(
        EXPECTED["layernorm"][2])


def test_stats_refuse_rows_of_several_grid_points_as_seeds(tmp_path):
    """Rows averaged as seeds must be one (lr, epoch): a file with two learning rates' rows under one
    (method, task, split, metric) used to be averaged silently."""
    from lnpeft.data.artifacts import write_parquet

    rows = pd.DataFrame({"method": ["layernorm"] * 3, "task": ["rte"] * 3, "split": ["dev"] * 3,
                         "metric": ["accuracy"] * 3, "value": [0.7, 0.6, 0.65], "lr": [1e-3, 1e-3, 3e-3],
                         "epoch": [2, 2, 2], "seeds": ["0", "1", "0"]})
    write_parquet(rows, tmp_path / "s.parquet", "scores")
    with pytest.raises(ScoresError, match=r"s\.parquet: the rows of \(layernorm, rte, dev, accuracy\) come from 2 "
                                          r"different \(lr, epoch\) grid points \(row 0: lr 0\.001, epoch 2; row 1: "
                                          r"lr 0\.001, epoch 2; row 2: lr 0\.003, epoch 2\)"):
        read_scores(tmp_path / "s.parquet")
    write_parquet(rows.assign(lr=1e-3), tmp_path / "ok.parquet", "scores")
    assert len(read_scores(tmp_path / "ok.parquet")) == 3  # three seeds of one grid point: fine
    assert get_task("rte").metric == "accuracy"
