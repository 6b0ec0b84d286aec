"""The task registry: one TaskSpec per GLUE task, the single source of task facts, and the
custom tasks once `lnpeft.data.user_tasks` registers them.

Label names follow the Hugging Face `nyu-mll/glue` order (label id i means label_names[i]);
metrics follow Table 4 of the paper; submission names follow the GLUE server. Lookups that may
read a custom task's definition first live in `lnpeft.data.tasks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TaskSpec:
    name: str
    """Short name used everywhere in lnpeft (`cola`, `mnli`, ...)."""
    glue_dir: str
    """Folder name in a classic `glue_data/` layout."""
    text_columns: tuple[str, ...]
    """Hugging Face column names of the one or two text fields (become text_a, text_b)."""
    label_names: tuple[str, ...]
    """HF label order; empty for regression (STS-B)."""
    metric: str
    """The paper's metric (Table 4)."""
    secondary_metrics: tuple[str, ...] = ()
    train_split: str | None = "train"
    dev_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)
    submission_files: dict[str, str] = field(default_factory=dict)
    """test split -> file name in the GLUE submission zip."""
    submission_labels: tuple[str, ...] = ()
    """Label strings as the GLUE server wants them (in label-id order); empty: numeric."""
    predicted_by: str | None = None
    """Another task whose model predicts this task's test set (AX is predicted by MNLI)."""
    in_paper: bool = True
    user_defined: bool = False
    """Defined in the config's custom_tasks (lnpeft.data.user_tasks), not a GLUE task."""

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    @property
    def splits(self) -> tuple[str, ...]:
        train = (self.train_split,) if self.train_split else ()
        return train + self.dev_splits + self.test_splits

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    def score_name(self, dev_split: str) -> str:
        """The paper's column name for a dev/test split: MNLI gives mnli_matched and mnli_mismatched."""
        if self.name == "mnli":
            return "mnli_matched" if dev_split.endswith("_matched") else "mnli_mismatched"
        return self.name


_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            "cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"),
            metric="matthews", secondary_metrics=("accuracy",),
            submission_files={"test": "CoLA.tsv"},
        ),
        TaskSpec(
            "sst2", "SST-2", ("sentence",), ("negative", "positive"),
            metric="accuracy", submission_files={"test": "SST-2.tsv"},
        ),
        TaskSpec(
            "mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
            metric="f1", secondary_metrics=("accuracy",), submission_files={"test": "MRPC.tsv"},
        ),
        TaskSpec(
            "stsb", "STS-B", ("sentence1", "sentence2"), (),
            metric="spearman", secondary_metrics=("pearson",), submission_files={"test": "STS-B.tsv"},
        ),
        TaskSpec(
            "qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"),
            metric="f1", secondary_metrics=("accuracy",), submission_files={"test": "QQP.tsv"},
        ),
        TaskSpec(
            "mnli", "MNLI", ("premise", "hypothesis"), _NLI3,
            metric="accuracy",
            dev_splits=("validation_matched", "validation_mismatched"),
            test_splits=("test_matched", "test_mismatched"),
            submission_files={"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
            submission_labels=_NLI3,
        ),
        TaskSpec(
            "qnli", "QNLI", ("question", "sentence"), _NLI2,
            metric="accuracy", submission_files={"test": "QNLI.tsv"}, submission_labels=_NLI2,
        ),
        TaskSpec(
            "rte", "RTE", ("sentence1", "sentence2"), _NLI2,
            metric="accuracy", submission_files={"test": "RTE.tsv"}, submission_labels=_NLI2,
        ),
        TaskSpec(
            "wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"),
            metric="accuracy", submission_files={"test": "WNLI.tsv"}, in_paper=False,
        ),
        TaskSpec(
            "ax", "diagnostic", ("premise", "hypothesis"), _NLI3,
            metric="matthews", train_split=None, dev_splits=(),
            submission_files={"test": "AX.tsv"}, submission_labels=_NLI3,
            predicted_by="mnli", in_paper=False,
        ),
    ]
}

PAPER_TASKS: tuple[str, ...] = tuple(name for name, spec in TASKS.items() if spec.in_paper)
"""The 8 tasks of the paper, in registry order."""

PAPER_COLUMNS: tuple[str, ...] = (
    "qnli", "sst2", "mnli_matched", "mnli_mismatched", "cola", "mrpc", "stsb", "rte", "qqp",
)
"""The 9 score columns of the paper's Tables 2 and 3, in the paper's order."""

SUBMISSION_FILES: tuple[str, ...] = (
    "CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv",
    "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv",
)


class UnknownTaskError(ValueError):
    pass


USER_TASKS: dict[str, TaskSpec] = {}
"""Custom tasks registered by lnpeft.data.user_tasks (from $LNPEFT_TASKS or the workflow's config)."""


def register(spec: TaskSpec) -> None:
    """Make a custom task known to every lookup below."""
    if spec.name in TASKS:
        raise ValueError(f"custom task {spec.name!r} has a GLUE task's name; give it another name")
    USER_TASKS[spec.name] = spec


OFFICIAL_ROWS: dict[str, dict[str, int]] = {
    "cola": {"train": 8551, "validation": 1043, "test": 1063},
    "sst2": {"train": 67349, "validation": 872, "test": 1821},
    "mrpc": {"train": 3668, "validation": 408, "test": 1725},
    "stsb": {"train": 5749, "validation": 1500, "test": 1379},
    "qqp": {"train": 363846, "validation": 40430, "test": 390965},
    "mnli": {"train": 392702, "validation_matched": 9815, "validation_mismatched": 9832,
             "test_matched": 9796, "test_mismatched": 9847},
    "qnli": {"train": 104743, "validation": 5463, "test": 5463},
    "rte": {"train": 2490, "validation": 277, "test": 3000},
    "wnli": {"train": 635, "validation": 71, "test": 146},
    "ax": {"test": 1104},
}
"""Rows of each split of the official GLUE release (for resource and cost estimates)."""
