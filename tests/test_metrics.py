"""Metric values against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lnpeft.data.metrics import compute_metrics
from lnpeft.data.tasks import get_task


def test_matthews_on_a_hand_computed_2x2_table():
    # gold/pred: TP=3, TN=2, FP=1, FN=2  ->  MCC = (3*2 - 1*2) / sqrt(4*5*3*4) = 4 / sqrt(240)
    labels = [1, 1, 1, 1, 1, 0, 0, 0]
    preds = [1, 1, 1, 0, 0, 1, 0, 0]
    got = compute_metrics(get_task("cola"), np.array(labels), np.array(preds))
    assert list(got) == ["matthews", "accuracy"]
    assert got["matthews"] == pytest.approx(4 / math.sqrt(240), rel=1e-12)
    assert got["accuracy"] == pytest.approx(5 / 8)


def test_f1_is_binary_f1_of_label_1():
    # TP=2, FP=1, FN=1 -> precision 2/3, recall 2/3, F1 2/3; accuracy 3/5
    labels = [1, 1, 1, 0, 0]
    preds = [1, 1, 0, 1, 0]
    got = compute_metrics(get_task("mrpc"), np.array(labels), np.array(preds))
    assert got == {"f1": pytest.approx(2 / 3), "accuracy": pytest.approx(3 / 5)}
    # swapping the classes changes F1 (positive class is label id 1): TP=1, FP=1, FN=1 -> 1/2
    got = compute_metrics(get_task("qqp"), 1 - np.array(labels), 1 - np.array(preds))
    assert got["f1"] == pytest.approx(1 / 2)


def test_pearson_and_spearman_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.0, 3.0, 2.0, 5.0])
    # Pearson: deviations y (-1.5,-.5,.5,1.5), p (-1.75,.25,-.75,2.25): cov 5.5, var 5 and 8.75
    pearson = 5.5 / math.sqrt(5 * 8.75)
    # Spearman: ranks of p are (1,3,2,4): d^2 sum 2 -> 1 - 6*2/(4*15) = 0.8
    got = compute_metrics(get_task("stsb"), y, p)
    assert list(got) == ["spearman", "pearson"]
    assert got["pearson"] == pytest.approx(pearson, rel=1e-12)
    assert got["spearman"] == pytest.approx(0.8, rel=1e-12)


def test_accuracy_three_classes():
    got = compute_metrics(get_task("mnli"), np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]))
    assert got == {"accuracy": 0.5}


def test_constant_prediction_gives_zero_not_nan():
    got = compute_metrics(get_task("stsb"), np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0]))
    assert got == {"spearman": 0.0, "pearson": 0.0}


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="rte: 3 labels but 2 predictions"):
        compute_metrics(get_task("rte"), np.array([0, 1, 0]), np.array([0, 1]))


@pytest.mark.parametrize("task, outputs", [("rte", [0.0, float("nan"), 1.0]), ("stsb", [1.0, 2.0, float("inf")])])
def test_non_finite_predictions_are_an_error_not_a_score(task, outputs):
    """NaN used to become a metric of 0.0 (correlations) or, through argmax, class 0 (accuracy)."""
    from lnpeft.errors import NonFiniteOutputError

    with pytest.raises(NonFiniteOutputError, match=rf"{task}: 1 of 3 predictions are not finite .* first at row"):
        compute_metrics(get_task(task), np.array([0.0, 1.0, 1.0]), np.array(outputs))
