"""lnpeft tables: best (lr, epoch) on dev per (task, method), long scores, Table 2 layout."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from lnpeft.cli import main
from lnpeft.data.artifacts import read_parquet, write_json, write_parquet
from lnpeft.data.tasks import get_task

TOTAL = 333_581_314
TRAINABLE = {"full": TOTAL, "bitfit": 274_434, "layernorm": 51_202}


def fake_run(root: Path, task: str, method: str, lr: float, seed: int, rng) -> tuple[Path, pd.DataFrame]:
    """An epochs.parquet + run.json as `lnpeft finetune` writes them, with random metric values."""
    spec = get_task(task)
    run = root / task / method / f"lr{lr:g}_seed{seed}"
    n = 4
    df = pd.DataFrame({"epoch": np.arange(1, n + 1), "train_loss": rng.random(n), "seconds": rng.random(n),
                       "tokens": np.full(n, 100), "padded_tokens": np.full(n, 120),
                       "trainable": np.full(n, TRAINABLE[method]), "lr": np.full(n, lr)})
    for split in spec.dev_splits:
        for metric in (spec.metric, *spec.secondary_metrics):
            df[f"{split}/{metric}"] = rng.random(n).round(2)  # rounding makes ties likely
    write_parquet(df, run / "epochs.parquet", "epochs")
    write_json({"options": {"task": task, "method": method, "lr": lr, "seed": seed},
                "total": TOTAL, "trainable": TRAINABLE[method]}, run / "run.json")
    return run, df


def naive_best(frames: list[tuple[float, int, pd.DataFrame]], column: str) -> tuple[float, int]:
    """Brute force: mean over seeds for every (lr, epoch), then the max; ties: smaller lr, earlier epoch."""
    cells: dict[tuple[float, int], list[float]] = {}
    for lr, _, df in frames:
        for _, row in df.iterrows():
            cells.setdefault((lr, int(row["epoch"])), []).append(row[column])
    best_key, best_val = None, -np.inf
    for key in sorted(cells):
        val = float(np.mean(cells[key]))
        if val > best_val + 1e-12:
            best_key, best_val = key, val
    return best_key


def test_tables_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    tasks = ["mnli", "rte", "stsb", "cola"]
    lrs = {"full": [1e-5, 2e-5], "bitfit": [1e-4, 4e-4], "layernorm": [1e-4, 4e-4]}
    args, made = [], {}
    for task, method in itertools.product(tasks, lrs):
        for lr, seed in itertools.product(lrs[method], [0, 1]):
            run, df = fake_run(tmp_path / "runs", task, method, lr, seed, rng)
            args.append(f"{method}:{task}={run}")
            made.setdefault((method, task), []).append((lr, seed, df))
    prefix = tmp_path / "tables" / "table2"
    assert main(["tables", "--runs", *args, "--scores", str(tmp_path / "tables" / "scores.parquet"),
                 "--out-prefix", str(prefix)]) == 0

    scores = read_parquet(tmp_path / "tables" / "scores.parquet", "scores")
    assert set(scores["split"]) == {"dev"}
    assert set(scores["task"]) == {"mnli_matched", "mnli_mismatched", "rte", "stsb", "cola"}
    for (method, task), frames in made.items():
        spec = get_task(task)
        lr, epoch = naive_best(frames, f"{spec.dev_splits[0]}/{spec.metric}")
        for split in spec.dev_splits:
            for metric in (spec.metric, *spec.secondary_metrics):
                row = scores[(scores.method == method) & (scores.task == spec.score_name(split))
                             & (scores.metric == metric)]
                assert len(row) == 1
                expected = np.mean([df.loc[df.epoch == epoch, f"{split}/{metric}"].item()
                                    for r, _, df in frames if r == lr])
                assert row["lr"].item() == lr and row["epoch"].item() == epoch
                assert row["value"].item() == pytest.approx(expected)
    # secondary metrics have their own rows
    assert set(scores[scores.task == "stsb"]["metric"]) == {"spearman", "pearson"}

    csv = pd.read_csv(f"{prefix}.csv")
    assert list(csv.columns) == ["method", "percent_of_full", "mnli_matched", "mnli_mismatched", "cola", "stsb", "rte"]
    assert list(csv["method"]) == ["full", "bitfit", "layernorm"]
    assert csv["percent_of_full"].tolist() == pytest.approx([100.0, 100 * 274_434 / TOTAL, 100 * 51_202 / TOTAL])
    cola = scores[(scores.method == "bitfit") & (scores.task == "cola") & (scores.metric == "matthews")]
    assert csv.loc[1, "cola"] == pytest.approx(cola["value"].item())
    md = Path(f"{prefix}.md").read_text()
    assert "| LayerNorm | 0.015% |" in md and "| BitFit | 0.082% |" in md and "| Full | 100% |" in md
    assert "MNLI-m | MNLI-mm | CoLA | STSB | RTE" in md
    tex = Path(f"{prefix}.tex").read_text()
    assert r"0.015\%" in tex and r"\begin{tabular}{lrrrrrr}" in tex


def test_tables_reject_a_run_of_another_task(tmp_path):
    run, _ = fake_run(tmp_path, "rte", "full", 1e-5, 0, np.random.default_rng(0))
    rc = main(["tables", "--runs", f"full:cola={run}", "--scores", str(tmp_path / "s.parquet"),
               "--out-prefix", str(tmp_path / "t")])
    assert rc == 2 and not (tmp_path / "s.parquet").exists()


def test_epochs_written_by_pandas_give_the_same_tables(tmp_path):
    """Run folders whose epochs.parquet a user rewrote with `df.to_parquet` (int32 counts, float32
    timings, columns reordered) give the same scores.parquet and Table 2, byte for byte."""
    rng = np.random.default_rng(1)
    args = []
    for method, task in itertools.product(("full", "layernorm"), ("rte", "stsb")):
        for lr in (1e-4, 4e-4):
            run, _ = fake_run(tmp_path / "runs", task, method, lr, 0, rng)
            args.append(f"{method}:{task}={run}")

    def tables(name: str) -> list[bytes]:
        prefix = tmp_path / name / "table2"
        assert main(["tables", "--runs", *args, "--scores", str(tmp_path / name / "scores.parquet"),
                     "--out-prefix", str(prefix)]) == 0
        return [(tmp_path / name / f).read_bytes() for f in ("scores.parquet", "table2.csv", "table2.md", "table2.tex")]

    strict = tables("strict")
    for run in (tmp_path / "runs").glob("*/*/*"):
        df = read_parquet(run / "epochs.parquet", "epochs")
        df = df.astype({"epoch": "int32", "tokens": "int32", "padded_tokens": "int16", "trainable": "int32",
                        "seconds": "float32", "train_loss": "float32"})
        df[list(reversed(df.columns))].to_parquet(run / "epochs.parquet")
    assert pq.read_schema(run / "epochs.parquet").field("epoch").type == "int32"
    assert tables("pandas") == strict


def test_several_seeds_give_each_seed_and_a_t_interval(tmp_path):
    """3 seeds: scores_seeds.parquet holds each seed at the chosen (lr, epoch), scores.parquet their
    mean, and Table 2 the mean +- scipy's 95% t-interval half-width (csv: a _ci95 column)."""
    from scipy import stats

    rng = np.random.default_rng(3)
    args, made = [], {}
    for method, task in itertools.product(("bitfit", "layernorm"), ("rte", "stsb")):
        for lr, seed in itertools.product((1e-4, 4e-4), (0, 1, 2)):
            run, df = fake_run(tmp_path / "runs", task, method, lr, seed, rng)
            args.append(f"{method}:{task}={run}")
            made.setdefault((method, task), []).append((lr, seed, df))
    out = tmp_path / "tables"
    assert main(["tables", "--runs", *args, "--scores", str(out / "scores.parquet"),
                 "--seed-scores", str(out / "scores_seeds.parquet"), "--out-prefix", str(out / "table2")]) == 0
    scores = read_parquet(out / "scores.parquet", "scores")
    seeds = read_parquet(out / "scores_seeds.parquet", "seed_scores")
    assert len(seeds) == 3 * len(scores)
    csv = pd.read_csv(out / "table2.csv").set_index("method")
    assert list(csv.columns) == ["percent_of_full", "stsb", "rte", "stsb_ci95", "rte_ci95"]
    md = (out / "table2.md").read_text()
    assert "mean over 3 seeds ± the half-width of its 95% t-interval" in md
    for (method, task), frames in made.items():
        spec = get_task(task)
        column = f"{spec.dev_splits[0]}/{spec.metric}"
        lr, epoch = naive_best(frames, column)
        values = [df.loc[df.epoch == epoch, column].item() for r, _, df in sorted(frames, key=lambda f: f[1])
                  if r == lr]
        got = seeds[(seeds.method == method) & (seeds.task == task) & (seeds.metric == spec.metric)]
        assert got["seed"].tolist() == [0, 1, 2] and got["value"].tolist() == values
        assert set(got["lr"]) == {lr} and set(got["epoch"]) == {epoch}
        low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
        assert csv.loc[method, task] == pytest.approx(np.mean(values))
        assert csv.loc[method, f"{task}_ci95"] == pytest.approx((high - low) / 2)
        assert f"{np.mean(values):.4f} ± {(high - low) / 2:.4f}" in md
    assert r"$\pm$" in (out / "table2.tex").read_text()


def test_one_seed_keeps_the_plain_table(tmp_path):
    run, _ = fake_run(tmp_path / "runs", "rte", "layernorm", 1e-4, 0, np.random.default_rng(4))
    out = tmp_path / "tables"
    assert main(["tables", "--runs", f"layernorm:rte={run}", "--scores", str(out / "scores.parquet"),
                 "--seed-scores", str(out / "scores_seeds.parquet"), "--out-prefix", str(out / "table2")]) == 0
    assert list(pd.read_csv(out / "table2.csv").columns) == ["method", "percent_of_full", "rte"]
    assert "±" not in (out / "table2.md").read_text()
    assert len(read_parquet(out / "scores_seeds.parquet", "seed_scores")) == 1
