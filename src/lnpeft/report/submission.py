"""`lnpeft submission`: one method's GLUE test submission zip (the server's 11 files, flat).

How the run is chosen: the workflow passes every grid run of the method (`--runs TASK=RUN_DIR`,
repeated, all learning rates and seeds); `lnpeft.report.selection` chooses the learning rate and
epoch as Table 2 does (the seeds' mean of the paper metric on the task's first dev split, MNLI:
validation_matched) and sends the median seed there, a representative run rather than the best
of the seeds. The manifest records lr, epoch, the seeds, the seed sent and the epoch its
predictions come from (`predictions_epoch`: the run's own best epoch).

What each file holds:
- a task with a model: the best run's predictions.parquet rows of the test split, decoded with
  the task's label names from the registry (label id i -> TaskSpec.label_names[i]);
- AX: the MNLI run's predictions of the AX test set (finetune of MNLI must also be given
  `--test results/data/ax/test.parquet`, split `test` or `ax`); without them AX is missing;
- WNLI (excluded by the paper): the majority class of data/wnli/train.parquet (ties: lower id);
  without WNLI data it is missing.
A task without a model is an error unless --allow-incomplete; the manifest then lists it and its
file is absent from the zip. The manifest is written BESIDE the zip (`<zip stem>.manifest.json`)
so the zip holds exactly what the GLUE server accepts. Zip bytes are deterministic (fixed
timestamps and attributes, files in the server's order), and every zip is validated
(lnpeft.report.validate) before it is moved into place.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lnpeft.data.artifacts import atomic_path, read_parquet, write_json
from lnpeft.data.tasks import SUBMISSION_FILES, TaskSpec, get_task
from lnpeft.errors import LnpeftError
from lnpeft.report.glue_format import HEADER, submission_targets
from lnpeft.report.selection import Choice, choose, read_run_epochs
from lnpeft.report.validate import official_problems, validate_zip

AX_SPLITS = ("ax", "test")
"""Split names, in the MNLI run's predictions.parquet, of the AX diagnostic test set: `ax`, or
`test` (finetune names a split after its file, and data/ax/test.parquet is the only `test` split an
MNLI run can have: MNLI's own are test_matched and test_mismatched)."""
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date zip can store: a fixed timestamp


@dataclass(frozen=True)
class SubmissionConfig:
    method: str
    """Method whose runs are packaged (recorded in the manifest)."""
    runs: dict[str, tuple[Path, ...]]
    """task -> candidate run directories (every lr and seed of the method)."""
    data_dir: Path
    """results/data: {task}/{split}.parquet, for test indices and WNLI's training labels."""
    out: Path
    """The zip; its manifest goes to manifest_path(out)."""
    allow_incomplete: bool = False
    """List tasks without a model (or without test data) in the manifest instead of failing."""


@dataclass
class Entry:
    """One file of the submission and where its predictions came from."""

    task: str
    split: str
    status: str  # model | majority | missing
    rows: int | None = None
    run: str | None = None
    dev_metric: str | None = None
    dev_value: float | None = None
    """The seeds' mean dev score at (lr, epoch)."""
    lr: float | None = None
    epoch: int | None = None
    """The learning rate and epoch chosen on dev (lnpeft.report.selection), as Table 2's."""
    seeds: list[int] | None = None
    seed: int | None = None
    """The seed sent: the median at (lr, epoch)."""
    predictions_epoch: int | None = None
    """The epoch the sent predictions come from: the sent run's own best epoch."""
    reason: str | None = None
    extra: dict = field(default_factory=dict)


def manifest_path(zip_path: Path | str) -> Path:
    zip_path = Path(zip_path)
    return zip_path.with_name(f"{zip_path.stem}.manifest.json")


def parse_runs(items: list[str]) -> dict[str, tuple[Path, ...]]:
    """`TASK=RUN_DIR` strings (repeatable per task) -> task -> run dirs."""
    runs: dict[str, list[Path]] = {}
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise LnpeftError(f"--runs {item!r}: expected TASK=RUN_DIR, e.g. rte=results/runs/m/rte/layernorm/lr0.001_seed0")
        get_task(task)
        runs.setdefault(task, []).append(Path(path))
    return {task: tuple(dirs) for task, dirs in runs.items()}


def dev_column(spec: TaskSpec) -> str:
    """epochs.parquet column of the selection metric: the paper metric on the first dev split."""
    return f"{spec.dev_splits[0]}/{spec.metric}"


def submitted_run(spec: TaskSpec, run_dirs: tuple[Path, ...] | list[Path]) -> Choice:
    """The run whose predictions a task's file holds (`lnpeft.report.selection`): the median seed at
    the learning rate and epoch chosen on dev from the seeds' mean."""
    if not run_dirs:
        raise LnpeftError(f"task {spec.name}: no run directories given")
    epochs = read_run_epochs(run_dirs, spec.name)
    column = dev_column(spec)
    if column not in epochs.columns:
        raise LnpeftError(f"{run_dirs[0]}: epochs.parquet has no column {column!r} (task {spec.name}); "
                          f"columns are {list(epochs.columns)}: is this a {spec.name} run?")
    return choose(epochs, column, what=f"task {spec.name}")


def format_predictions(spec: TaskSpec, idx: np.ndarray, prediction: np.ndarray, where: str) -> str:
    """`index<TAB>prediction` lines (header first, sorted by index, final newline)."""
    order = np.argsort(idx, kind="stable")
    idx, prediction = idx[order], prediction[order]
    lines = [HEADER]
    if spec.is_regression:
        # GLUE STS-B scores live in [0, 5]; a regression head can overshoot, so clip
        for i, p in zip(idx, np.clip(prediction, 0.0, 5.0)):
            lines.append(f"{int(i)}\t{p:.3f}")
    else:
        ids = np.rint(prediction)
        bad = ~np.isfinite(prediction) | (ids < 0) | (ids >= spec.num_labels) | (ids != prediction)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise LnpeftError(
                f"{where}: prediction {float(prediction[first])!r} at index {int(idx[first])} is not a "
                f"label id of {spec.name} (0..{spec.num_labels - 1})"
            )
        for i, label_id in zip(idx, ids.astype(np.int64)):
            if spec.submission_labels:
                name = spec.label_names[label_id]  # decode with the task's own label order
                if name not in spec.submission_labels:
                    raise LnpeftError(f"{spec.name}: label {name!r} is not a GLUE server label")
                lines.append(f"{int(i)}\t{name}")
            else:
                lines.append(f"{int(i)}\t{int(label_id)}")
    return "\n".join(lines) + "\n"


def _test_index(data_dir: Path, task: str, split: str) -> np.ndarray | None:
    path = data_dir / task / f"{split}.parquet"
    if not path.exists():
        return None
    return read_parquet(path, "data")["idx"].to_numpy(dtype=np.int64)


def _check_covers(where: str, want: np.ndarray, got: np.ndarray) -> None:
    """Predictions must cover every test index exactly once."""
    uniq, counts = np.unique(got, return_counts=True)
    if (counts > 1).any():
        raise LnpeftError(f"{where}: index {int(uniq[counts > 1][0])} predicted {int(counts.max())} times")
    missing = np.setdiff1d(want, got)
    extra = np.setdiff1d(got, want)
    if len(missing) or len(extra):
        raise LnpeftError(
            f"{where}: predictions do not match the test data ({len(want)} rows): "
            f"{len(missing)} indices missing (first {missing[:5].tolist()}), "
            f"{len(extra)} unknown (first {extra[:5].tolist()}); rerun the run on this test data"
        )


def _model_file(config: SubmissionConfig, spec: TaskSpec, split: str,
                by: TaskSpec) -> tuple[Entry, str | None]:
    """One file predicted by the model of task `by` (the task itself, or MNLI for AX)."""
    pred_splits = AX_SPLITS if by.name != spec.name else (split,)
    if by.name not in config.runs:
        return Entry(spec.name, split, "missing", reason=f"no {by.name} model given (--runs {by.name}=...)"), None
    choice = submitted_run(by, config.runs[by.name])
    run = choice.run
    entry = Entry(spec.name, split, "model", run=str(run), dev_metric=dev_column(by), dev_value=choice.score,
                  lr=choice.lr, epoch=choice.epoch, seeds=list(choice.seeds), seed=choice.seed,
                  predictions_epoch=choice.predictions_epoch)
    want = _test_index(config.data_dir, spec.name, split)
    if want is None:
        entry.status, entry.reason = "missing", f"no test data {config.data_dir / spec.name / split}.parquet"
        return entry, None
    preds = read_parquet(run / "predictions.parquet", "predictions")
    pred_split = next((s for s in pred_splits if (preds["split"] == s).any()), None)
    if pred_split is None:
        entry.status = "missing"
        entry.reason = f"{run / 'predictions.parquet'} has no split {' or '.join(map(repr, pred_splits))}"
        return entry, None
    preds = preds[preds["split"] == pred_split]
    entry.extra = {"prediction_split": pred_split}
    where = f"{run / 'predictions.parquet'} split {pred_split!r}"
    got = preds["idx"].to_numpy(dtype=np.int64)
    _check_covers(where, want, got)
    entry.rows = len(got)
    return entry, format_predictions(spec, got, preds["prediction"].to_numpy(dtype=np.float64), where)


def _majority_file(config: SubmissionConfig, spec: TaskSpec, split: str) -> tuple[Entry, str | None]:
    """WNLI: the majority class of its training labels (the paper excludes WNLI)."""
    train = config.data_dir / spec.name / "train.parquet"
    want = _test_index(config.data_dir, spec.name, split)
    if not train.exists() or want is None:
        return Entry(spec.name, split, "missing", reason=f"no {spec.name} train/test data in {config.data_dir}"), None
    labels = read_parquet(train, "data")["label"].dropna().to_numpy(dtype=np.int64)
    if len(labels) == 0:
        raise LnpeftError(f"{train}: no labelled rows to take a majority class from")
    counts = np.bincount(labels, minlength=spec.num_labels)
    majority = int(np.argmax(counts))  # argmax: ties go to the lower label id
    entry = Entry(spec.name, split, "majority", rows=len(want),
                  reason="majority class of the training set (WNLI is excluded by the paper)",
                  extra={"majority_label": spec.label_names[majority],
                         "majority_id": majority, "train_counts": counts.tolist()})
    text = format_predictions(spec, want, np.full(len(want), float(majority)), str(train))
    return entry, text


def build_submission(config: SubmissionConfig) -> tuple[dict[str, str], dict]:
    """The files (name -> text) and the manifest; raises when a file is missing and not allowed."""
    files: dict[str, str] = {}
    entries: dict[str, Entry] = {}
    for name, (spec, split) in submission_targets().items():
        if spec.name == "wnli":
            entry, text = _majority_file(config, spec, split)
            if "wnli" in config.runs:  # said, not silently dropped
                entry.reason = f"{entry.reason}; the given wnli runs are not used"
        else:
            by = get_task(spec.predicted_by) if spec.predicted_by else spec
            entry, text = _model_file(config, spec, split, by)
        entries[name] = entry
        if text is not None:
            files[name] = text
    missing = [name for name, e in entries.items() if e.status == "missing"]
    if missing and not config.allow_incomplete:
        raise LnpeftError(
            "incomplete submission: "
            + "; ".join(f"{n} ({entries[n].task}: {entries[n].reason})" for n in missing)
            + ". Give every task a model or pass --allow-incomplete (config submission.allow_incomplete)"
        )
    manifest = {
        "method": config.method,
        "zip": config.out.name,
        "complete": not missing,
        "missing": missing,
        "selection": ("per task, the learning rate and epoch with the best mean over seeds of the paper metric on "
                      "the first dev split; the run sent is the median seed there (its predictions come from its "
                      "own best epoch: predictions_epoch)"),
        "files": {
            name: {k: v for k, v in vars(e).items() if v not in (None, {})} for name, e in entries.items()
        },
    }
    return files, manifest


def zip_bytes(files: dict[str, str]) -> bytes:
    """Deterministic zip: server file order, fixed timestamp, mode and creator system."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in SUBMISSION_FILES:
            if name not in files:
                continue
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, whatever OS writes it
            zf.writestr(info, files[name].encode("utf-8"))
    return buffer.getvalue()


def write_submission(config: SubmissionConfig) -> dict:
    """Build, validate and atomically write the zip and its manifest; returns the manifest."""
    files, manifest = build_submission(config)
    # what the GLUE server would refuse though the zip is well formed: say it, in the manifest too
    server = official_problems(list(files), {n: text.count("\n") - 1 for n, text in files.items()})
    manifest["server_ready"] = not server
    if server:
        manifest["not_server_ready"] = server
    with atomic_path(config.out) as tmp:
        tmp.write_bytes(zip_bytes(files))
        errors = validate_zip(tmp, data_dir=config.data_dir, allow_incomplete=config.allow_incomplete)
        if errors:
            raise LnpeftError(f"{config.out}: the written zip fails validation:\n" + "\n".join(errors))
    write_json(manifest, manifest_path(config.out))
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help="method whose runs are packaged")
    parser.add_argument("--runs", nargs="*", default=[], metavar="TASK=RUN_DIR",
                        help="candidate run dirs (repeat a task for every lr/seed; best on dev wins)")
    parser.add_argument("--data-dir", type=Path, default=Path("results/data"),
                        help="folder of {task}/{split}.parquet (test indices, WNLI train labels)")
    parser.add_argument("--out", type=Path, required=True, help="the zip to write")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="list tasks without a model in the manifest instead of failing")


def run(args: argparse.Namespace) -> int:
    if args.out.suffix != ".zip":
        raise LnpeftError(f"--out {args.out}: the submission must be a .zip file")
    config = SubmissionConfig(args.method, parse_runs(args.runs), args.data_dir, args.out,
                              args.allow_incomplete)
    manifest = write_submission(config)
    present = [n for n in SUBMISSION_FILES if n not in manifest["missing"]]
    print(f"wrote {args.out} ({len(present)} files) and {manifest_path(args.out)}")
    for name in manifest["missing"]:
        print(f"missing {name}: {manifest['files'][name]['reason']}")
    if not manifest["server_ready"]:
        print(f"DEMO ZIP, not for the GLUE server ({len(manifest['not_server_ready'])} problems; "
              "`lnpeft validate-submission --official` checks a zip for the server):")
        for line in manifest["not_server_ready"]:
            print(f"  {line}")
    return 0
