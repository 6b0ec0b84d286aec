"""Stages run by hand refuse inputs made for another task or seed, naming both files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from test_faults import tiny_checkpoint
from test_workflow import glue_dir, needs_glue

from lnpeft import cli
from lnpeft.model.provenance import MismatchError, check_inputs, data_record


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """What the workflow makes for sst2 seed 0 (a real cache-model + init of a tiny BERT, real
    prepare-data of SST-2, CoLA and RTE), here by hand."""
    if glue_dir() is None:
        pytest.skip("no local GLUE copy")
    d = tmp_path_factory.mktemp("prov")
    tiny_checkpoint(d / "source")
    assert cli.main(["cache-model", "--source", "folder", "--location", str(d / "source"), "--out", str(d / "ck")]) == 0
    assert cli.main(["init", "--checkpoint", str(d / "ck"), "--task", "sst2", "--seed", "0", "--out", str(d / "init")]) == 0
    for task in ("sst2", "cola", "rte"):
        assert cli.main(["prepare-data", "--task", task, "--glue-dir", str(glue_dir()), "--out", str(d / task),
                         "--subsample-train", "24", "--subsample-validation", "8", "--subsample-test", "8"]) == 0
    return {"dir": d, "init": d / "init", **{t: d / t for t in ("sst2", "cola", "rte")}}


def _finetune(made: dict, tmp_path: Path, task: str = "sst2", data: str = "sst2", seed: str = "0") -> list[str]:
    return ["finetune", "--init", str(made["init"]), "--train", str(made[data] / "train.parquet"),
            "--dev", str(made[data] / "validation.parquet"), "--task", task, "--method", "layernorm",
            "--lr", "1e-3", "--seed", seed, "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8",
            "--max-length", "32", "--threads", "1", "--compile", "false"]


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1]


@needs_glue
def test_finetune_with_another_tasks_init_is_refused(made, tmp_path, capsys):
    assert cli.main(_finetune(made, tmp_path, task="rte", data="rte")) == 3  # exit 3: the same inputs fail again
    assert _error(capsys) == (f"lnpeft finetune: error: {made['init'] / 'init.json'} is the init of "
                              "task 'sst2', not of --task rte; give the init folder of rte "
                              "(results/init/<model>/rte/seed<seed>)")
    assert not (tmp_path / "run").exists()


@needs_glue
def test_finetune_as_another_seed_is_refused(made, tmp_path, capsys):
    assert cli.main(_finetune(made, tmp_path, seed="7")) == 3  # exit 3: the same inputs fail again
    assert _error(capsys).endswith(f"{made['init'] / 'init.json'} seeded its head with seed 0, not --seed 7; a run "
                                   "of seed 7 starts from the init of seed 7")


@needs_glue
def test_finetune_on_another_tasks_splits_is_refused(made, tmp_path, capsys):
    """--task sst2 through the SST-2 init, but CoLA's files (both single-sentence, 2 labels: it
    would train)."""
    assert cli.main(_finetune(made, tmp_path, task="sst2", data="cola")) == 3  # exit 3: the same inputs fail again
    assert _error(capsys).endswith(f"{made['cola'] / 'train.parquet'} was prepared for task 'cola' "
                                   f"({made['cola'] / 'MANIFEST.json'}), but --task says 'sst2'; give the splits of sst2")


@needs_glue
def test_fisher_on_another_tasks_split_is_refused(made, tmp_path, capsys):
    argv = ["fisher", "--model", str(made["init"]), "--out", str(tmp_path / "f.parquet"), "--max-samples", "8",
            "--batch-size", "4", "--max-length", "32", "--threads", "1"]
    assert cli.main([*argv, "--data", str(made["cola"] / "train.parquet")]) == 3  # exit 3: the same inputs fail again
    assert _error(capsys).endswith(f"{made['cola'] / 'train.parquet'} was prepared for task 'cola' "
                                   f"({made['cola'] / 'MANIFEST.json'}), but {made['init'] / 'init.json'} says "
                                   "'sst2'; give the splits of sst2")
    assert not (tmp_path / "f.parquet").exists()
    # the matching split works, and masks then refuse a table given under another task's name
    assert cli.main([*argv, "--data", str(made["sst2"] / "train.parquet")]) == 0
    assert cli.main(["masks", "--fisher", f"cola={tmp_path / 'f.parquet'}", "--scheme", "individual",
                     "--task", "cola", "--out", str(tmp_path / "m.parquet")]) == 3
    assert re.search(r"f\.parquet is the Fisher of .*sst2/train\.parquet \(task 'sst2', .*MANIFEST\.json\), given "
                     r"as cola=.*; label each table with its own task$", _error(capsys))


@needs_glue
def test_files_without_a_record_pass_and_mnli_may_predict_ax(made, tmp_path):
    own = tmp_path / "mine"
    own.mkdir()
    shutil.copy(made["cola"] / "train.parquet", own / "train.parquet")  # a user's file, no manifest
    assert data_record(own / "train.parquet") is None
    assert check_inputs(made["init"], [own / "train.parquet"], task="sst2", seed=0) == "sst2"
    ax = tmp_path / "ax"
    ax.mkdir()
    (ax / "MANIFEST.json").write_text(json.dumps({"task": "ax", "splits": {"test": {}}}))
    assert check_inputs(tmp_path / "no-init", [ax / "test.parquet"], task="mnli") == "mnli"
    with pytest.raises(MismatchError, match="prepared for task 'ax'"):
        check_inputs(tmp_path / "no-init", [ax / "test.parquet"], task="rte")
