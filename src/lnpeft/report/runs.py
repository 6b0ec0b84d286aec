"""Where a run's facts are read from its path: results/runs/{model}/{task}/{method}/lr{lr}_seed{seed}/.

The one parser of run paths for every table, figure and curve; a Fisher-subset run's method name
(`fisher-{scheme}-f{fraction}`) carries its mask scheme and fraction.
"""

from __future__ import annotations

import re

RUN_RE = re.compile(
    r"(?:^|/)runs/(?P<model>[^/]+)/(?P<task>[^/]+)/(?P<method>[^/]+)/lr(?P<lr>[^_/]+)_seed(?P<seed>\d+)/epochs\.parquet$"
)
FISHER_METHOD_RE = re.compile(r"^fisher-(?P<scheme>individual|global|cv)-f(?P<fraction>[0-9.]+)$")
