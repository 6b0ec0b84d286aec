"""GLUE metrics from scikit-learn and scipy (the `evaluate` hub metrics cannot load offline)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from lnpeft.data.task_registry import TaskSpec
from lnpeft.errors import NonFiniteOutputError

Metric = Callable[[np.ndarray, np.ndarray], float]


def _pearson(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(stats.pearsonr(y_true, y_pred).statistic)


def _spearman(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(stats.spearmanr(y_true, y_pred).statistic)


METRICS: dict[str, Metric] = {
    "accuracy": lambda t, p: float(accuracy_score(t, p)),
    # binary F1 of the positive class (label id 1), as GLUE reports for MRPC and QQP
    "f1": lambda t, p: float(f1_score(t, p, pos_label=1, average="binary", zero_division=0.0)),
    "matthews": lambda t, p: float(matthews_corrcoef(t, p)),
    "pearson": _pearson,
    "spearman": _spearman,
}


def compute_metrics(spec: TaskSpec, labels: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """Every metric of a task (paper metric first) from gold labels and model outputs.

    `outputs` are predicted label ids for classification or scores for regression. A non-finite
    output (NaN logits give NaN predictions) is an error: a metric computed from it would be a
    number about nothing. A constant prediction, a legitimate outcome of a run that learnt nothing,
    makes correlations undefined; they are reported as 0.0 (no signal), not NaN, so best-epoch
    selection never compares against NaN.
    """
    labels = np.asarray(labels)
    outputs = np.asarray(outputs)
    if labels.shape != outputs.shape:
        raise ValueError(f"{spec.name}: {labels.shape[0]} labels but {outputs.shape[0]} predictions")
    bad = ~np.isfinite(outputs.astype(np.float64))
    if bad.any():
        raise NonFiniteOutputError(f"{spec.name}: {int(bad.sum())} of {bad.size} predictions are not finite "
                                   f"(NaN or infinite model outputs, first at row {int(np.argmax(bad))}); no "
                                   "metric is computed from them")
    result = {}
    for name in (spec.metric, *spec.secondary_metrics):
        value = METRICS[name](labels, outputs)
        result[name] = 0.0 if np.isnan(value) else value
    return result
