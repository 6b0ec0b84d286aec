"""lnpeft.report.claims: which tasks learnt, and paired differences with their seed noise."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lnpeft.report.claims import learning_tasks, paired_difference, seeds_of, single_run_difference, verdict


def test_paired_difference_is_scipys_paired_t_interval():
    a = pd.Series([0.81, 0.84, 0.80], index=[0, 1, 2])
    b = pd.Series([0.80, 0.80, 0.81], index=[2, 0, 1])  # seed order differs: pairs by seed
    d = paired_difference(a, b)
    diffs = np.array([0.81 - 0.80, 0.84 - 0.81, 0.80 - 0.80])  # seeds 0, 1, 2
    lo, hi = stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    assert d.n == 3 and d.mean == pytest.approx(diffs.mean(), abs=1e-15)
    assert (d.low, d.high) == pytest.approx((lo, hi), abs=1e-12)
    assert d.within_noise is True and d.text() == f"{100 * diffs.mean():+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def test_a_clear_difference_is_outside_the_noise():
    d = paired_difference(pd.Series([0.90, 0.91, 0.92]), pd.Series([0.80, 0.80, 0.81]))
    assert d.within_noise is False and d.low > 0


def test_one_seed_has_no_interval():
    d = paired_difference(pd.Series([0.9], index=[0]), pd.Series([0.8, 0.7], index=[0, 1]))
    assert d.n == 1 and math.isnan(d.low) and d.within_noise is None and d.text() == "+10.0"
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference(pd.Series([0.9], index=[3]), pd.Series([0.8], index=[0]))


def test_single_run_against_seeds_is_the_prediction_interval():
    seeds = pd.Series([0.80, 0.81, 0.79])
    d = single_run_difference(0.70, seeds)
    sd, n = seeds.std(ddof=1), 3
    half = stats.t.ppf(0.975, n - 1) * sd * math.sqrt(1 + 1 / n)
    assert d.mean == pytest.approx(0.70 - seeds.mean())
    assert (d.low, d.high) == pytest.approx((d.mean - half, d.mean + half))
    assert d.within_noise is False  # 0.70 lies below what a fourth seed would plausibly give
    assert single_run_difference(0.81, seeds).within_noise is True


def _seed_rows(values: dict[tuple[str, str], list[float]], metric: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "task": t, "split": "dev", "metric": metric[t], "seed": s, "value": v}
                         for (m, t), vs in values.items() for s, v in enumerate(vs)])


def test_learning_tasks_use_the_metric_margin_and_say_why():
    metric = {"sst2": "accuracy", "cola": "matthews", "rte": "accuracy", "mrpc": "f1"}
    rows = _seed_rows({("full", "sst2"): [0.85, 0.86, 0.87], ("full", "cola"): [0.05, 0.12, 0.10],
                       ("full", "rte"): [0.56, 0.56, 0.56], ("layernorm", "mrpc"): [0.9, 0.9, 0.9]}, metric)
    base = {"sst2": 0.51, "cola": 0.0, "rte": 0.527, "mrpc": 0.812}
    got = {t.column: t for t in learning_tasks(rows, base, metric)}
    assert got["sst2"].learnt and got["sst2"].full == pytest.approx(0.86)
    assert not got["cola"].learnt  # MCC 0.09 is below the 0.10 a correlation must gain
    assert got["cola"].reason == ("full 0.090 vs trivial baseline 0.000 (+0.090; less than the 0.10 a task must "
                                  "gain to count as learnt)")
    assert got["rte"].learnt  # +3.3 points of accuracy
    assert not got["mrpc"].learnt and got["mrpc"].reason.startswith("no full runs")


def test_seeds_of_and_verdict():
    rows = _seed_rows({("bitfit", "sst2"): [0.7, 0.8]}, {"sst2": "accuracy"})
    assert list(seeds_of(rows, "bitfit", "sst2", "accuracy")) == [0.7, 0.8]
    assert verdict([True, True]) == "holds" and verdict([True, False]) == "partly holds"
    assert verdict([False]) == "does not hold"


def test_subset_differences_pair_by_seed_or_use_the_prediction_interval():
    from lnpeft.report.claims import subset_differences

    metric = {"sst2": "accuracy"}
    seed_scores = _seed_rows({("layernorm", "sst2"): [0.80, 0.81, 0.79]}, metric)

    def rows(seeds: dict[int, list[float]]) -> pd.DataFrame:  # read_epoch_rows' layout, one lr
        return pd.DataFrame([{"task": "sst2", "method": "fisher-individual-f0.2", "scheme": "individual",
                              "fraction": 0.2, "lr": 1e-2, "seed": s, "epoch": e + 1, "dev": v}
                             for s, vs in seeds.items() for e, v in enumerate(vs)])

    one = subset_differences(rows({0: [0.70, 0.78]}), seed_scores, ["sst2"], metric, "individual", 0.2)["sst2"]
    assert one == single_run_difference(0.78, pd.Series([0.80, 0.81, 0.79]))  # its best epoch, against 3 seeds
    three = subset_differences(rows({0: [0.79], 1: [0.80], 2: [0.78]}), seed_scores, ["sst2"], metric,
                               "individual", 0.2)["sst2"]
    assert three == paired_difference(pd.Series([0.79, 0.80, 0.78]), pd.Series([0.80, 0.81, 0.79]))
    assert subset_differences(rows({0: [0.7]}), seed_scores, ["sst2"], metric, "global", 0.2) == {}
