"""The GLUE task registry: HF label order, metrics, splits and submission names."""

from __future__ import annotations

import pytest

from lnpeft.data.tasks import (
    PAPER_COLUMNS,
    PAPER_TASKS,
    SUBMISSION_FILES,
    TASKS,
    UnknownTaskError,
    column_task,
    get_task,
)

# HF nyu-mll/glue ClassLabel names, in id order (copied from the dataset card)
HF_LABELS = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "stsb": (),
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
    "wnli": ("not_entailment", "entailment"),
    "ax": ("entailment", "neutral", "contradiction"),
}


@pytest.mark.parametrize("task", sorted(HF_LABELS))
def test_label_names_follow_hf_order(task):
    spec = get_task(task)
    assert spec.label_names == HF_LABELS[task]
    assert spec.num_labels == (1 if task == "stsb" else len(HF_LABELS[task]))
    assert spec.is_regression == (task == "stsb")


@pytest.mark.parametrize("task, metric", [
    ("cola", "matthews"), ("sst2", "accuracy"), ("mrpc", "f1"), ("stsb", "spearman"),
    ("qqp", "f1"), ("mnli", "accuracy"), ("qnli", "accuracy"), ("rte", "accuracy"),
])
def test_paper_metric(task, metric):
    assert get_task(task).metric == metric


def test_splits_use_hf_names():
    assert get_task("mnli").splits == (
        "train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched")
    assert get_task("rte").splits == ("train", "validation", "test")
    assert get_task("ax").splits == ("test",)


def test_paper_tasks_and_columns():
    assert PAPER_TASKS == ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
    assert len(PAPER_COLUMNS) == 9
    assert column_task("mnli_mismatched") == (TASKS["mnli"], "validation_mismatched")
    assert column_task("rte") == (TASKS["rte"], "validation")


def test_submission_files_cover_the_glue_server_set():
    names = sorted(f for spec in TASKS.values() for f in spec.submission_files.values())
    assert names == sorted(SUBMISSION_FILES)
    assert len(SUBMISSION_FILES) == 11


def test_unknown_task_names_known_ones():
    with pytest.raises(UnknownTaskError, match=r"unknown task 'mnli-m'; GLUE tasks: cola, sst2"):
        get_task("mnli-m")
