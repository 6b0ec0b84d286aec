"""Task lookups by name: GLUE's registry, then the custom tasks of $LNPEFT_TASKS, read on first need.

Every stage resolves a task name through `get_task`; the specs themselves live in
`lnpeft.data.task_registry` (re-exported here), the reading of custom tasks in `lnpeft.data.user_tasks`.
"""

from __future__ import annotations

from lnpeft.data import user_tasks
from lnpeft.data.task_registry import (  # noqa: F401  (re-exported: the names callers know)
    OFFICIAL_ROWS,
    PAPER_COLUMNS,
    PAPER_TASKS,
    SUBMISSION_FILES,
    TASKS,
    USER_TASKS,
    TaskSpec,
    UnknownTaskError,
    register,
)


def get_task(name: str) -> TaskSpec:
    """Look a task up by its lnpeft name (GLUE, or custom); a clear error lists the known ones."""
    if name in TASKS:
        return TASKS[name]
    user_tasks.load_env()
    try:
        return USER_TASKS[name]
    except KeyError:
        custom = f"; custom tasks: {', '.join(USER_TASKS)}" if USER_TASKS else (
            f" (define your own under custom_tasks: in the config, or in a file named by ${user_tasks.ENV})")
        raise UnknownTaskError(f"unknown task {name!r}; GLUE tasks: {', '.join(TASKS)}{custom}") from None


def is_task(name: str) -> bool:
    try:
        get_task(name)
    except UnknownTaskError:
        return False
    return True


def score_columns() -> tuple[str, ...]:
    """Score columns of Tables 2-3 and the statistics: the paper's 9, then the custom tasks."""
    user_tasks.load_env()
    return PAPER_COLUMNS + tuple(USER_TASKS)


def column_task(column: str) -> tuple[TaskSpec, str]:
    """Map a paper score column (`mnli_matched`) to (task spec, dev split)."""
    if column == "mnli_matched":
        return TASKS["mnli"], "validation_matched"
    if column == "mnli_mismatched":
        return TASKS["mnli"], "validation_mismatched"
    spec = get_task(column)
    return spec, spec.dev_splits[0]


def task_rows(name: str) -> dict[str, int]:
    """Rows per split: GLUE's official sizes, or a custom task's files counted."""
    if name in OFFICIAL_ROWS:
        return OFFICIAL_ROWS[name]
    get_task(name)  # unknown names get the registry's message
    return user_tasks.rows(name)
