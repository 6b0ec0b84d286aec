"""The 95% interval of a mean over seeds, one definition for every table and figure that shows one."""

from __future__ import annotations

import numpy as np
from scipy import stats


def t_halfwidth(values) -> float:
    """Half-width of the 95% t-interval of the mean of `values` (NaN for fewer than 2 values).

    Seeds are few (3 in a reproduction), so the t quantile, not 1.96: with 3 seeds it is 4.30.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
