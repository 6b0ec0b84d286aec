"""Kruskal-Wallis / Wilcoxon between two methods: the paper's own p-values from its Tables 2 and 3."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from lnpeft.artifacts import write_parquet
from lnpeft.cli import main
from lnpeft.report.stats import StatsConfig, kruskal_report
from lnpeft.tasks import PAPER_COLUMNS, column_task

# PAPER.md, Table 2 (dev) and Table 3 (test), columns in PAPER_COLUMNS order
PAPER = {
    ("bitfit", "dev"): [0.9145, 0.9278, 0.8399, 0.8457, 0.6364, 0.9183, 0.9043, 0.7473, 0.8476],
    ("layernorm", "dev"): [0.9072, 0.9312, 0.8285, 0.8348, 0.6412, 0.9130, 0.9039, 0.7401, 0.8361],
    ("bitfit", "test"): [0.912, 0.928, 0.841, 0.838, 0.559, 0.877, 0.860, 0.687, 0.687],
    ("layernorm", "test"): [0.910, 0.926, 0.831, 0.828, 0.542, 0.871, 0.865, 0.682, 0.669],
    ("full", "dev"): [0.9143, 0.9335, 0.8559, 0.8567, 0.6554, 0.9239, 0.9091, 0.7653, 0.8769],
}


def long_scores(values: dict, seeds: int = 1, shuffle: bool = True, noise: float = 0.0) -> pd.DataFrame:
    """Scores in the scores.parquet layout, with a secondary-metric decoy row per column."""
    rng = np.random.default_rng(1)
    rows = []
    for (method, split), vals in values.items():
        for column, value in zip(PAPER_COLUMNS, vals):
            metric = column_task(column)[0].metric
            for s in range(seeds):
                v = value + (noise * (s - (seeds - 1) / 2))
                rows.append((method, column, split, metric, v, 1e-3, 3))
            rows.append((method, column, split, "decoy", 0.0, 1e-3, 3))  # must be ignored
    df = pd.DataFrame(rows, columns=["method", "task", "split", "metric", "value", "lr", "epoch"])
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True) if shuffle else df


def test_paper_p_values(tmp_path):
    path = tmp_path / "scores.parquet"
    write_parquet(long_scores(PAPER), path, "scores")
    out = tmp_path / "stats" / "kruskal.json"
    assert main(["stats", "kruskal", "--scores", str(path), "--a", "bitfit", "--b", "layernorm",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert round(report["dev"]["pvalue"], 4) == 0.5660   # paper: 0.56599
    assert round(report["test"]["pvalue"], 4) == 0.6270  # paper: 0.62703
    assert round(report["combined"]["pvalue"], 4) == 0.5477  # paper: 0.54773
    assert report["dev"]["pvalue"] == pytest.approx(0.56599, abs=5e-6)
    assert report["test"]["pvalue"] == pytest.approx(0.62703, abs=5e-6)
    assert report["combined"]["pvalue"] == pytest.approx(0.54773, abs=5e-6)
    # vectors aligned task by task in the paper's column order, despite shuffled rows
    assert report["dev"]["tasks"] == list(PAPER_COLUMNS)
    assert report["dev"]["a"] == PAPER["bitfit", "dev"] and report["dev"]["b"] == PAPER["layernorm", "dev"]
    assert report["combined"]["a"] == PAPER["bitfit", "dev"] + PAPER["bitfit", "test"]
    assert report["combined"]["tasks"][9] == "qnli/test"
    # paired Wilcoxon on the same vectors (LayerNorm lower on 7 of 9 dev columns)
    w = scipy_stats.wilcoxon(PAPER["bitfit", "dev"], PAPER["layernorm", "dev"])
    assert report["dev"]["wilcoxon"]["pvalue"] == pytest.approx(w.pvalue)
    assert report["dev"]["wilcoxon"]["pvalue"] == pytest.approx(0.0390625)
    assert "one seed" in report["bootstrap"]["reason"]


def test_alignment_drops_columns_one_method_lacks(tmp_path):
    values = {k: v for k, v in PAPER.items() if k[1] == "dev"}
    scores = long_scores(values)
    scores = scores[~((scores["method"] == "layernorm") & (scores["task"] == "cola"))]
    report = kruskal_report(scores, StatsConfig(tmp_path / "s.parquet"))
    keep = [i for i, c in enumerate(PAPER_COLUMNS) if c != "cola"]
    assert report["dev"]["tasks"] == [PAPER_COLUMNS[i] for i in keep]
    assert report["dev"]["dropped"] == ["cola"]
    a = [PAPER["bitfit", "dev"][i] for i in keep]
    b = [PAPER["layernorm", "dev"][i] for i in keep]
    assert report["dev"]["pvalue"] == pytest.approx(scipy_stats.kruskal(a, b).pvalue)


def test_missing_test_scores_are_null_with_a_reason(tmp_path):
    values = {k: v for k, v in PAPER.items() if k[1] == "dev"}
    report = kruskal_report(long_scores(values), StatsConfig(tmp_path / "s.parquet", a="full", b="layernorm"))
    assert report["dev"]["pvalue"] == pytest.approx(
        scipy_stats.kruskal(PAPER["full", "dev"], PAPER["layernorm", "dev"]).pvalue)
    assert report["test"]["pvalue"] is None and "no test scores" in report["test"]["reason"]
    assert report["combined"]["pvalue"] is None and "missing: test" in report["combined"]["reason"]


def test_unknown_method_is_a_clear_error(tmp_path):
    path = tmp_path / "scores.parquet"
    write_parquet(long_scores({("bitfit", "dev"): PAPER["bitfit", "dev"]}), path, "scores")
    assert main(["stats", "kruskal", "--scores", str(path), "--a", "bitfit", "--b", "layernorm",
                 "--out", str(tmp_path / "k.json")]) == 2
    assert not (tmp_path / "k.json").exists()


def test_seed_replicates_are_averaged_and_bootstrapped(tmp_path):
    values = {k: v for k, v in PAPER.items() if k[0] != "full"}
    report = kruskal_report(long_scores(values, seeds=3, noise=0.01),
                            StatsConfig(tmp_path / "s.parquet", bootstrap=200))
    # the seed mean equals the paper value (symmetric noise), so the p-value is the paper's
    assert report["dev"]["pvalue"] == pytest.approx(0.56599, abs=5e-6)
    boot = report["bootstrap"]["dev"]["qnli"]
    assert boot["seeds_a"] == 3 and boot["a_mean"] == pytest.approx(0.9145)
    lo, hi = boot["a_ci95"]
    assert 0.9145 - 0.01 - 1e-12 <= lo <= 0.9145 <= hi <= 0.9145 + 0.01 + 1e-12
    again = kruskal_report(long_scores(values, seeds=3, noise=0.01),
                           StatsConfig(tmp_path / "s.parquet", bootstrap=200))
    assert again == report  # seeded bootstrap: reproducible
