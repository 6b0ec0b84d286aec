"""The GLUE server's submission format, shared by the writer (`lnpeft submission`) and the strict
checker (`lnpeft validate-submission`): which file holds which task's test split, and its header."""

from __future__ import annotations

from lnpeft.data.tasks import SUBMISSION_FILES, TASKS, TaskSpec

HEADER = "index\tprediction"


def submission_targets() -> dict[str, tuple[TaskSpec, str]]:
    """GLUE file name -> (task spec, test split), in the server's file order."""
    targets = {
        name: (spec, split)
        for spec in TASKS.values()
        for split, name in spec.submission_files.items()
    }
    return {name: targets[name] for name in SUBMISSION_FILES}
