"""`lnpeft summary`: Table 2 beside each task's trivial baseline, and the README block it fills."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lnpeft import cli
from lnpeft.data.artifacts import write_parquet
from lnpeft.data.tasks import get_task
from lnpeft.report.summary import BEGIN, END, embed, trivial_baseline

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("task, labels, expected", [
    ("sst2", [0, 1, 1, 1], 0.75),             # majority class
    ("sst2", [0, 0, 0, 1], 0.75),
    ("mrpc", [1, 1, 0, 0], 2 / 3),            # F1 of always "equivalent": P 0.5, R 1
    ("cola", [0, 1, 1, 1], 0.0),              # MCC of any constant
    ("stsb", [0.5, 3.0, 4.2], 0.0),           # correlation of a constant
])
def test_trivial_baseline_is_the_best_constant_prediction(task, labels, expected):
    assert trivial_baseline(get_task(task), np.array(labels, dtype=float)) == pytest.approx(expected)


def write_dev(data_dir: Path, task: str, labels: list[float]) -> None:
    n = len(labels)
    label = pd.array(labels, dtype="Int64") if task != "stsb" else np.array(labels, dtype=float)
    df = pd.DataFrame({"idx": np.arange(n, dtype=np.int64), "text_a": ["a"] * n, "text_b": ["b"] * n,
                       "label": label})
    write_parquet(df, data_dir / task / "validation.parquet", "data")


def score_rows(values: dict[tuple[str, str], float]) -> pd.DataFrame:
    rows = []  # STS-B gets a (lower) Pearson row too: not its paper metric, so never shown
    for (method, task), value in values.items():
        names = ["spearman", "pearson"] if task == "stsb" else ["accuracy"]
        for name in names:
            rows.append({"method": method, "task": task, "split": "dev", "metric": name,
                         "value": value - 0.5 if name == "pearson" else value, "lr": 1e-3, "epoch": 1, "seeds": "0"})
    return pd.DataFrame(rows)


def test_cli_prints_the_table_and_checks_and_fills_the_readme(tmp_path, capsys):
    data = tmp_path / "data"
    write_dev(data, "sst2", [0, 1, 1, 1, 0, 1, 1, 1])  # baseline 0.75
    write_dev(data, "stsb", [0.0, 1.0, 2.5, 4.0])      # baseline 0
    scores = score_rows({("layernorm", "sst2"): 0.80, ("layernorm", "stsb"): 0.70,
                         ("random", "sst2"): 0.70, ("random", "stsb"): 0.50})
    write_parquet(scores, tmp_path / "scores.parquet", "scores")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold numbers\n{END}\nrest\n")
    assert cli.main(["summary", "--scores", str(tmp_path / "scores.parquet"), "--data-dir", str(data),
                     "--readme", str(readme)]) == 0
    out = capsys.readouterr().out
    # the paper metric of STS-B is Spearman: the (deliberately lower) Pearson rows are not shown
    assert "| LayerNorm | 0.800 | 0.700 | 0.750 |" in out
    assert "| Random | 0.700 | 0.500 | 0.600 |" in out
    assert "| trivial baseline | 0.750 | 0.000 | 0.375 |" in out
    assert "- yes: LayerNorm beats the trivial baseline on 2 of 2 tasks (SST2 0.800 vs 0.750, STSB 0.700 vs 0.000)" in out
    assert "- yes: LayerNorm beats Random on average over the tasks (0.750 vs 0.600)" in out
    text = readme.read_text()
    assert text.startswith("intro\n" + BEGIN + "\n") and text.endswith(END + "\nrest\n")
    assert "old numbers" not in text and "| LayerNorm | 0.800 |" in text


def test_a_method_at_chance_is_reported_as_no(tmp_path, capsys):
    data = tmp_path / "data"
    write_dev(data, "sst2", [0, 1, 1, 1])
    write_parquet(score_rows({("layernorm", "sst2"): 0.75, ("random", "sst2"): 0.80}),
                  tmp_path / "s.parquet", "scores")
    assert cli.main(["summary", "--scores", str(tmp_path / "s.parquet"), "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "- no: LayerNorm beats the trivial baseline on 0 of 1 tasks" in out
    assert "- no: LayerNorm beats Random on average" in out


def test_embed_needs_both_markers_in_order(tmp_path):
    path = tmp_path / "doc.md"
    for text in ("no markers\n", f"{END}\n{BEGIN}\n", f"{BEGIN}\n{BEGIN}\n{END}\n"):
        path.write_text(text)
        with pytest.raises(ValueError, match="doc.md: needs one"):
            embed(path, "x\n")
        assert path.read_text() == text  # untouched


def test_readme_has_the_summary_block():
    text = (REPO / "README.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    block = text.split(BEGIN)[1].split(END)[0]
    assert "| LayerNorm |" in block and "| trivial baseline |" in block and "- yes: LayerNorm beats" in block


def test_log_puts_the_runs_elapsed_time_in_the_title(tmp_path, capsys):
    """--log reads the last `Elapsed time:` of a Snakemake log (its own format), so the README's
    time is the run's, not typed; a log of a run that did not finish is refused."""
    import os

    data = tmp_path / "data"
    write_dev(data, "sst2", [0, 1, 1, 1])
    write_parquet(score_rows({("layernorm", "sst2"): 0.9}), tmp_path / "s.parquet", "scores")
    log = tmp_path / "run.snakemake.log"
    log.write_text("Elapsed time: 0:00:02.5\n89 of 89 steps (100%) done\nElapsed time: 1:02:03.847291\n")
    args = ["summary", "--scores", str(tmp_path / "s.parquet"), "--data-dir", str(data), "--log", str(log)]
    assert cli.main(args + ["--title", "Scores (dev):"]) == 0
    assert capsys.readouterr().out.startswith(f"Scores (dev; Snakemake 1 h 02 min on {os.cpu_count()} cores):\n")
    log.write_text("Elapsed time: 0:11:07.5\n")
    assert cli.main(args) == 0
    assert f"on dev; Snakemake 11 min 08 s on {os.cpu_count()} cores):" in capsys.readouterr().out
    log.write_text("Building DAG of jobs...\n")
    assert cli.main(args) == 2  # lnpeft's one-line error
    assert "run.snakemake.log: no 'Elapsed time:' line" in capsys.readouterr().err
