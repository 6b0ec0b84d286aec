"""Metric names as users write them, mapped to lnpeft's own (the keys of `lnpeft.data.metrics.METRICS`).

One table for every reader of user-provided metric names (scores files, GLUE server results).
A name is matched case-insensitively, with surrounding space removed and `-` or space read as
`_`: `Matthews-Correlation` is `matthews_correlation`. A name not in the table is an error, never
a silently unmatched row.
"""

from __future__ import annotations

from lnpeft.errors import quote

ALIASES: dict[str, str] = {
    # lnpeft's names
    "accuracy": "accuracy", "f1": "f1", "matthews": "matthews", "pearson": "pearson", "spearman": "spearman",
    # Hugging Face `evaluate` (the glue metric's keys and the standalone metrics); sklearn's names
    "matthews_correlation": "matthews", "pearsonr": "pearson", "spearmanr": "spearman",
    "matthews_corrcoef": "matthews", "f1_score": "f1", "accuracy_score": "accuracy",
    # common short forms
    "acc": "accuracy", "mcc": "matthews", "matthews_corr": "matthews", "f1score": "f1",
    "pearson_r": "pearson", "pearson_corr": "pearson", "pearson_correlation": "pearson",
    "spearman_r": "spearman", "spearman_rho": "spearman", "spearman_corr": "spearman",
    "spearman_correlation": "spearman",
}


class MetricNameError(ValueError):
    """A metric name outside ALIASES; the message names where it was read and what to write."""


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def canonical_metric(name: str) -> str | None:
    """lnpeft's name of a metric as a user wrote it, or None when the name is not known."""
    return ALIASES.get(_key(name)) if isinstance(name, str) else None


def aliases_of(metric: str) -> list[str]:
    """Every accepted spelling of one of lnpeft's metrics (lnpeft's own name first)."""
    return [metric] + sorted(a for a, m in ALIASES.items() if m == metric and a != metric)


def resolve_metric(name: str, where: str, task: str, expected: str) -> str:
    """lnpeft's name of a metric read at `where` (file and line or row) for `task`.

    An unknown name is a MetricNameError naming `where`, the task and the metric `expected` there
    (the task's paper metric).
    """
    metric = canonical_metric(name)
    if metric is None:
        raise MetricNameError(
            f"{where}: unknown metric {quote(name)} for task {quote(task)}, whose paper metric is {expected!r} "
            f"(also accepted: {', '.join(aliases_of(expected)[1:])}); known metrics: "
            f"{', '.join(sorted(set(ALIASES.values())))} and their aliases in lnpeft.data.metric_names.ALIASES"
        )
    return metric
