"""GLUE submission zip and its strict validator, on parquet files written here."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lnpeft.cli import main
from lnpeft.data.artifacts import write_parquet
from lnpeft.data.tasks import SUBMISSION_FILES, get_task
from lnpeft.errors import LnpeftError
from lnpeft.report.submission import (
    SubmissionConfig,
    build_submission,
    manifest_path,
    submitted_run,
    write_submission,
    zip_bytes,
)
from lnpeft.report.validate import validate_zip

# test idx are deliberately not 0..n-1 and not sorted, to catch positional shortcuts
TEST_IDX = {"cola": [3, 1, 2, 0], "sst2": [0, 1, 2], "mrpc": [10, 11, 12], "stsb": [0, 1, 2, 3],
            "qqp": [0, 1], "mnli": [0, 1, 2], "qnli": [0, 1, 2], "rte": [5, 6, 7], "wnli": [0, 1],
            "ax": [0, 1, 2, 3]}


def write_data(data_dir: Path, task: str, split: str, idx: list[int], labels=None) -> None:
    spec = get_task(task)
    n = len(idx)
    if labels is None:
        label = pd.Series([np.nan] * n, dtype="float64") if spec.is_regression else pd.Series([None] * n, dtype="Int64")
    else:
        label = pd.Series(labels, dtype="float64" if spec.is_regression else "Int64")
    df = pd.DataFrame({"idx": idx, "text_a": [f"a {i}" for i in idx],
                       "text_b": [f"b {i}" for i in idx] if spec.is_pair else [None] * n, "label": label})
    write_parquet(df, data_dir / task / f"{split}.parquet", "data")


def write_run(run: Path, task: str, dev_scores: list[float], preds: dict[str, tuple[list, list]],
              lr: float = 1e-3, seed: int = 0) -> Path:
    """A finished run's files: epochs, predictions and the run.json lnpeft finetune writes."""
    spec = get_task(task)
    n = len(dev_scores)
    epochs = pd.DataFrame({
        "epoch": np.arange(1, n + 1, dtype=np.int64), "train_loss": np.ones(n), "seconds": np.ones(n),
        "tokens": np.ones(n, dtype=np.int64), "padded_tokens": np.ones(n, dtype=np.int64),
        "trainable": np.ones(n, dtype=np.int64), "lr": np.full(n, 1e-3),
        f"{spec.dev_splits[0]}/{spec.metric}": dev_scores,
    })
    write_parquet(epochs, run / "epochs.parquet", "epochs")
    frames = [pd.DataFrame({"split": s, "idx": np.asarray(i, dtype=np.int64), "prediction": np.asarray(p, dtype=float)})
              for s, (i, p) in preds.items()]
    write_parquet(pd.concat(frames, ignore_index=True), run / "predictions.parquet", "predictions")
    best = int(np.argmax(np.asarray(dev_scores, dtype=float))) + 1  # the first best epoch, as finetune keeps it
    (run / "run.json").write_text(json.dumps({"options": {"task": task, "lr": lr, "seed": seed}, "best_epoch": best,
                                              "total": 100, "trainable": 1}))
    return run


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, dict[str, tuple[Path, ...]]]:
    """Test data for every GLUE task and one or two runs per task of the paper."""
    data = tmp_path / "data"
    for task, idx in TEST_IDX.items():
        for split in get_task(task).test_splits:
            write_data(data, task, split, idx)
    write_data(data, "wnli", "train", [0, 1, 2, 3, 4], labels=[1, 1, 0, 1, 0])  # majority: 1
    runs_root = tmp_path / "runs"
    runs: dict[str, tuple[Path, ...]] = {}
    for task in ("cola", "sst2", "mrpc", "qqp", "qnli"):
        idx = TEST_IDX[task]
        runs[task] = (write_run(runs_root / task / "lr1", task, [0.5], {"test": (idx, [i % 2 for i in idx])}),)
    runs["stsb"] = (write_run(runs_root / "stsb" / "lr1", "stsb", [0.8],
                              {"test": ([0, 1, 2, 3], [5.7, -0.2, 2.34567, 3.0])}),)
    # RTE: two learning rates; the second is better on dev (0.7 at epoch 2) and predicts other labels
    runs["rte"] = (
        write_run(runs_root / "rte" / "a", "rte", [0.6, 0.65], {"test": ([5, 6, 7], [1, 1, 1])}, lr=1e-3),
        write_run(runs_root / "rte" / "b", "rte", [0.55, 0.7], {"test": ([7, 6, 5], [0, 1, 0])}, lr=3e-3),
    )
    runs["mnli"] = (write_run(runs_root / "mnli" / "lr1", "mnli", [0.8], {
        "validation_matched": ([0], [0]),
        "test_matched": ([0, 1, 2], [0, 1, 2]), "test_mismatched": ([0, 1, 2], [2, 2, 1]),
        "test": ([0, 1, 2, 3], [1, 0, 2, 0]),  # finetune names data/ax/test.parquet's split `test`
    }),)
    return data, runs


def read_zip(path: Path) -> dict[str, str]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n).decode() for n in zf.namelist()}


def test_complete_submission_decodes_labels_and_passes(world, tmp_path):
    data, runs = world
    out = tmp_path / "sub" / "layernorm.zip"
    manifest = write_submission(SubmissionConfig("layernorm", runs, data, out))
    files = read_zip(out)
    assert list(files) == list(SUBMISSION_FILES)
    assert manifest["complete"] and manifest["missing"] == []
    assert validate_zip(out, data_dir=data) == []
    # RTE from run b (best dev 0.7), sorted by index, label ids decoded with RTE's own names
    assert files["RTE.tsv"] == "index\tprediction\n5\tentailment\n6\tnot_entailment\n7\tentailment\n"
    assert manifest["files"]["RTE.tsv"]["run"].endswith("/rte/b")
    assert manifest["files"]["RTE.tsv"]["dev_value"] == pytest.approx(0.7)
    assert files["MNLI-m.tsv"].splitlines()[1:] == ["0\tentailment", "1\tneutral", "2\tcontradiction"]
    assert files["MNLI-mm.tsv"].splitlines()[1:] == ["0\tcontradiction", "1\tcontradiction", "2\tneutral"]
    assert files["AX.tsv"].splitlines()[1:] == ["0\tneutral", "1\tentailment", "2\tcontradiction", "3\tentailment"]
    assert files["CoLA.tsv"].splitlines()[1:] == ["0\t0", "1\t1", "2\t0", "3\t1"]
    assert files["STS-B.tsv"].splitlines()[1:] == ["0\t5.000", "1\t0.000", "2\t2.346", "3\t3.000"]
    assert files["WNLI.tsv"].splitlines()[1:] == ["0\t1", "1\t1"]
    wnli = manifest["files"]["WNLI.tsv"]
    assert wnli["status"] == "majority" and wnli["extra"]["majority_label"] == "entailment"
    assert json.loads(manifest_path(out).read_text()) == manifest


def test_zip_bytes_are_deterministic(world, tmp_path):
    data, runs = world
    a, b = tmp_path / "a" / "m.zip", tmp_path / "b" / "m.zip"
    write_submission(SubmissionConfig("layernorm", runs, data, a))
    write_submission(SubmissionConfig("layernorm", runs, data, b))
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_missing_task_is_an_error_unless_allowed(world, tmp_path):
    data, runs = world
    partial = {t: r for t, r in runs.items() if t not in ("qqp", "mnli")}
    out = tmp_path / "m.zip"
    with pytest.raises(LnpeftError, match=r"QQP.tsv \(qqp: no qqp model"):
        write_submission(SubmissionConfig("layernorm", partial, data, out))
    assert not out.exists() and not manifest_path(out).exists()
    manifest = write_submission(SubmissionConfig("layernorm", partial, data, out, allow_incomplete=True))
    assert manifest["missing"] == ["QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"]
    assert "no mnli model" in manifest["files"]["AX.tsv"]["reason"]
    assert sorted(read_zip(out)) == sorted(set(SUBMISSION_FILES) - set(manifest["missing"]))
    assert validate_zip(out, data_dir=data, allow_incomplete=True) == []
    assert "QQP.tsv: missing from the zip" in validate_zip(out, data_dir=data)


def test_ax_missing_when_mnli_run_did_not_predict_it(world, tmp_path):
    data, runs = world
    mnli = write_run(tmp_path / "mnli2", "mnli", [0.9], {
        "test_matched": ([0, 1, 2], [0, 0, 0]), "test_mismatched": ([0, 1, 2], [1, 1, 1])})
    runs = {**runs, "mnli": (mnli,)}
    manifest = write_submission(SubmissionConfig("m", runs, data, tmp_path / "m.zip", allow_incomplete=True))
    assert manifest["missing"] == ["AX.tsv"]
    assert "has no split 'ax' or 'test'" in manifest["files"]["AX.tsv"]["reason"]


def test_predictions_must_cover_the_test_data(world, tmp_path):
    data, runs = world
    bad = write_run(tmp_path / "sst2bad", "sst2", [0.9], {"test": ([0, 1], [0, 1])})
    with pytest.raises(LnpeftError, match=r"sst2bad/predictions.parquet split 'test'.*1 indices missing"):
        build_submission(SubmissionConfig("m", {**runs, "sst2": (bad,)}, data, tmp_path / "m.zip"))
    bad = write_run(tmp_path / "sst2bad2", "sst2", [0.9], {"test": ([0, 1, 2], [0, 3, 1])})
    with pytest.raises(LnpeftError, match=r"prediction 3.0 at index 1 is not a label id of sst2"):
        build_submission(SubmissionConfig("m", {**runs, "sst2": (bad,)}, data, tmp_path / "m.zip"))


def test_submitted_run_needs_the_dev_metric_column_and_orders_numerically(tmp_path):
    sst2 = write_run(tmp_path / "s", "sst2", [0.9], {"test": ([0], [0])})
    with pytest.raises(LnpeftError, match=r"no column 'validation/matthews' \(task cola\)"):
        submitted_run(get_task("cola"), [_as_task(sst2, "cola")])
    # two lrs tied on their seed mean: the smaller lr as a number (5e-05 < 0.0001, though "lr5e-05" >
    # "lr0.0001" as text); its seeds 2 and 10 (10 > 2, though "seed10" < "seed2" as text)
    runs = [write_run(tmp_path / "lr0.0001_seed2", "sst2", [0.5, 0.8], {"test": ([0], [0])}, lr=1e-4, seed=2),
            write_run(tmp_path / "lr0.0001_seed10", "sst2", [0.5, 0.8], {"test": ([0], [0])}, lr=1e-4, seed=10),
            write_run(tmp_path / "lr5e-05_seed2", "sst2", [0.7, 0.8], {"test": ([0], [0])}, lr=5e-5, seed=2),
            write_run(tmp_path / "lr5e-05_seed10", "sst2", [0.9, 0.8], {"test": ([0], [0])}, lr=5e-5, seed=10)]
    choice = submitted_run(get_task("sst2"), runs)
    assert (choice.lr, choice.epoch, choice.seeds) == (5e-5, 1, (2, 10))  # mean 0.8 at epoch 1 and at 2: earlier
    assert choice.score == pytest.approx(0.8)
    assert choice.seed == 2 and choice.run == runs[2]  # the lower of the two (median of an even count)
    assert choice.predictions_epoch == 2  # that run's own best epoch: its predictions are from epoch 2


def _as_task(run: Path, task: str) -> Path:
    """A run folder whose run.json says `task` but whose epochs are another task's."""
    meta = json.loads((run / "run.json").read_text())
    meta["options"]["task"] = task
    (run / "run.json").write_text(json.dumps(meta))
    return run


# ------------------------------------------------------------------ the strict validator


@pytest.fixture
def good(world, tmp_path) -> tuple[dict[str, str], Path]:
    data, runs = world
    files, _ = build_submission(SubmissionConfig("m", runs, data, tmp_path / "x.zip"))
    return files, data


def check(files: dict[str, str], data: Path, tmp_path: Path, **kwargs) -> list[str]:
    path = tmp_path / "candidate.zip"
    with zipfile.ZipFile(path, "w") as zf:  # every name as given (zip_bytes keeps only GLUE names)
        for name, text in files.items():
            zf.writestr(name, text)
    return validate_zip(path, data_dir=data, **kwargs)


def mutate(files: dict[str, str], name: str, line: int, text: str) -> dict[str, str]:
    lines = files[name].split("\n")
    lines[line - 1] = text
    return {**files, name: "\n".join(lines)}


@pytest.mark.parametrize("change, expected", [
    (lambda f: {n: t for n, t in f.items() if n != "SST-2.tsv"}, "SST-2.tsv: missing from the zip"),
    (lambda f: mutate(f, "CoLA.tsv", 1, "id\tlabel"), "CoLA.tsv:1: header 'id\\tlabel'"),
    (lambda f: mutate(f, "MRPC.tsv", 3, "10\t1"), "MRPC.tsv:3: duplicate index 10 (first on line 2)"),
    (lambda f: {**f, "QNLI.tsv": "\n".join(f["QNLI.tsv"].split("\n")[:-2]) + "\n"},
     "QNLI.tsv: 1 test indices missing (first: [2])"),
    (lambda f: mutate(f, "STS-B.tsv", 2, "0\t5.001"), "STS-B.tsv:2: STS-B score 5.001 is outside [0, 5]"),
    (lambda f: mutate(f, "STS-B.tsv", 3, "1\t-0.5"), "STS-B.tsv:3: STS-B score '-0.5' is not a plain decimal"),
    (lambda f: mutate(f, "RTE.tsv", 2, "5\tneutral"), "RTE.tsv:2: label 'neutral' is not one of rte's"),
    (lambda f: mutate(f, "SST-2.tsv", 2, "0\tpositive"), "SST-2.tsv:2: label 'positive' is not one of sst2's"),
    (lambda f: mutate(f, "AX.tsv", 2, "0\tnot_entailment"), "AX.tsv:2: label 'not_entailment' is not one of ax's"),
    (lambda f: mutate(f, "WNLI.tsv", 2, "0 1"), "WNLI.tsv:2: 1 fields"),
    (lambda f: {**f, "extra.txt": "hi\n"}, "extra.txt: not a GLUE submission file"),
    (lambda f: {**f, "CoLA.tsv": f["CoLA.tsv"].rstrip("\n")}, "CoLA.tsv: no final newline"),
])
def test_validator_rejects(good, tmp_path, change, expected):
    files, data = good
    assert check(files, data, tmp_path) == []
    errors = check(change(files), data, tmp_path)
    assert any(expected in e for e in errors), errors


def test_validator_rejects_nested_names_and_row_counts(good, tmp_path):
    files, data = good
    path = tmp_path / "nested.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(f"glue/{name}", text)
    errors = validate_zip(path, data_dir=data)
    assert "glue/CoLA.tsv: not at the top of the zip (the server wants the files flat)" in errors
    write_data(data, "rte", "test", [5, 6, 7, 8])  # the test data grew: the zip no longer matches
    assert "RTE.tsv: 3 rows, but " in check(files, data, tmp_path)[0]


def test_validate_cli_exit_status(good, tmp_path, capsys):
    files, data = good
    path = tmp_path / "ok.zip"
    path.write_bytes(zip_bytes(files))
    assert main(["validate-submission", str(path), "--data-dir", str(data)]) == 0
    path.write_bytes(zip_bytes(mutate(files, "MRPC.tsv", 2, "11\t1")))
    assert main(["validate-submission", str(path), "--data-dir", str(data)]) == 1
    assert "MRPC.tsv:3: duplicate index 11 (first on line 2)" in capsys.readouterr().out


def test_submission_cli(world, tmp_path, capsys):
    data, runs = world
    args = [f"{t}={r}" for t, dirs in runs.items() for r in dirs if t not in ("qqp",)]
    out = tmp_path / "cli" / "bitfit.zip"
    assert main(["submission", "--method", "bitfit", "--runs", *args, "--data-dir", str(data),
                 "--out", str(out)]) == 2
    assert "QQP.tsv (qqp: no qqp model" in capsys.readouterr().err
    assert main(["submission", "--method", "bitfit", "--runs", *args, "--data-dir", str(data),
                 "--out", str(out), "--allow-incomplete"]) == 0
    assert "missing QQP.tsv" in capsys.readouterr().out
    assert json.loads(manifest_path(out).read_text())["method"] == "bitfit"


# ------------------------------------------------------------------ the report rules in Snakemake

REPO = Path(__file__).resolve().parents[1]
REPORT_RULES = ["prepare_glue", "make_table3", "compute_stats", "make_submission", "table3", "stats", "submission"]


def glue_copy() -> Path | None:
    import os

    for candidate in (os.environ.get("LNPEFT_GLUE_DIR"), REPO.parent / "shared" / "glue"):
        if candidate and (Path(candidate) / "RTE" / "test.tsv").exists():
            return Path(candidate).resolve()
    return None


def test_report_rules_in_snakemake(tmp_path):
    """make_table3, compute_stats, make_submission and --report on the tiny config, real data.

    Grid runs are faked (parquet written here) and only the report rules may run, so this checks
    the rules' wiring without training."""
    import subprocess
    import sys

    import yaml

    glue = glue_copy()
    if glue is None:
        pytest.skip("no local GLUE copy (set LNPEFT_GLUE_DIR or put it at <repo>/../shared/glue)")
    config = yaml.safe_load((REPO / "tests/workflow/tiny/config.yaml").read_text())
    config["data"]["glue_dir"] = str(glue)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    model = config["model"]["name"]

    def snakemake(*targets: str, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
               "config.yaml", "--cores", "2", *options, "--allowed-rules", *REPORT_RULES, "--", *targets]
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    snakemake(*[f"results/data/{t}/test.parquet" for t in config["tasks"]], "results/data/wnli/train.parquet")
    data = tmp_path / "results" / "data"
    rows = []
    for task in config["tasks"]:
        spec = get_task(task)
        idx = pd.read_parquet(data / task / "test.parquet")["idx"].tolist()
        for i, method in enumerate(config["methods"]):
            lr = "0.0001" if method == "full" else "0.003"
            pred = [2.5 + 0.1 * (j % 30) for j in range(len(idx))] if spec.is_regression else [j % 2 for j in range(len(idx))]
            write_run(tmp_path / f"results/runs/{model}/{task}/{method}/lr{lr}_seed0", task,
                      [0.5 + 0.01 * i], {"test": (idx, pred)})
            rows.append((method, task, "dev", spec.metric, 0.5 + 0.01 * i + 0.1 * (task == "rte"), float(lr), 1))
    scores = pd.DataFrame(rows, columns=["method", "task", "split", "metric", "value", "lr", "epoch"])
    write_parquet(scores.assign(seeds="0"), tmp_path / "results/tables/scores.parquet", "scores")
    write_parquet(scores.assign(seed=0)[["method", "task", "split", "metric", "seed", "value", "lr", "epoch"]],
                  tmp_path / "results/tables/scores_seeds.parquet", "seed_scores")  # one seed: the same values
    snakemake("table3", "stats", "submission")
    out = tmp_path / f"results/submission/{model}/layernorm.zip"
    assert sorted(read_zip(out)) == ["RTE.tsv", "STS-B.tsv", "WNLI.tsv"]
    assert validate_zip(out, data_dir=data, allow_incomplete=True) == []
    assert len(read_zip(out)["RTE.tsv"].splitlines()) == 1 + config["data"]["subsample"]["test"]
    report = json.loads((tmp_path / "results/stats/kruskal.json").read_text())
    assert report["dev"]["tasks"] == ["stsb", "rte"] and report["test"]["pvalue"] is None
    assert "n/a" in (tmp_path / "results/tables/table3.md").read_text()
    snakemake("table3", "stats", "submission", options=("--report", "results/report.html"))
    html = (tmp_path / "results/report.html").read_text()
    assert "kruskal.json" in html and "layernorm.zip" in html and "table3.csv" in html
    assert "Nothing to be done" in snakemake("table3", "stats", "submission", options=("-n",)).stdout


def test_full_disk_mid_zip_keeps_the_previous_zip(world, tmp_path, full_disk):
    from lnpeft.errors import DiskFullError

    data, runs = world
    out = tmp_path / "sub" / "layernorm.zip"
    write_submission(SubmissionConfig("layernorm", runs, data, out))
    before, manifest = out.read_bytes(), manifest_path(out).read_bytes()
    full_disk.fill_after(len(before) // 2)
    runs = {**runs, "rte": runs["rte"][:1]}  # another best run: a different zip would be written
    with pytest.raises(DiskFullError) as err:
        write_submission(SubmissionConfig("layernorm", runs, data, out))
    assert str(err.value) == f"{out}: no space left on device while writing; free space (df -h {out.parent}) and rerun"
    [(partial, size)] = full_disk.partial
    assert partial.name.startswith(".layernorm.zip.") and size == len(before) // 2
    assert out.read_bytes() == before and manifest_path(out).read_bytes() == manifest
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, manifest_path(out).name])


def test_a_zip_of_subsampled_test_data_says_it_is_a_demo_zip(world, tmp_path, capsys):
    """Validated against the local (subsampled) test parquet only, a zip the GLUE server would refuse
    used to pass as ready: the manifest and the command now say it is a demo zip, and
    `validate-submission --official` refuses it."""
    data, runs = world
    out = tmp_path / "sub" / "layernorm.zip"
    argv = ["submission", "--method", "layernorm", "--data-dir", str(data), "--out", str(out),
            "--runs", *(f"{t}={r}" for t, rs in runs.items() for r in rs)]
    assert main(argv) == 0
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["complete"] and manifest["server_ready"] is False
    assert "CoLA.tsv: 4 rows; the GLUE server expects 1063, the official cola test split (a subsampled or demo " \
           "test set)" in manifest["not_server_ready"]
    assert len(manifest["not_server_ready"]) == 11  # every file of this toy world is smaller than GLUE's
    printed = capsys.readouterr().out
    assert "DEMO ZIP, not for the GLUE server (11 problems;" in printed
    assert validate_zip(out, data_dir=data) == []  # well formed for its own test data
    assert main(["validate-submission", str(out), "--official"]) == 1
    assert "QQP.tsv: 2 rows; the GLUE server expects 390965" in capsys.readouterr().out


def test_official_counts_pass_and_a_missing_file_is_named():
    from lnpeft.data.tasks import OFFICIAL_ROWS
    from lnpeft.report.glue_format import submission_targets
    from lnpeft.report.validate import official_problems

    rows = {name: OFFICIAL_ROWS[spec.name][split] for name, (spec, split) in submission_targets().items()}
    assert official_problems(list(rows), rows) == []
    del rows["AX.tsv"]
    assert official_problems(list(rows), rows) == ["AX.tsv: missing (the server scores all 11 files)"]
