"""`lnpeft validate-submission ZIP`: strict check of a GLUE submission zip before it is uploaded.

Checks: exactly the server's 11 file names, flat (fewer with --allow-incomplete); each file UTF-8
with the header `index<TAB>prediction`, one `index<TAB>prediction` per line, a final newline, no
blank lines; every index an integer, each exactly once; labels from the task's GLUE label set
(`0`/`1`, or the NLI strings of that task); STS-B a plain decimal in [0, 5]. With --data-dir the
row count and index set of every file equal the test data's (data/{task}/{split}.parquet).
Each failure names the file and line (a BOM or CRLF line endings once per file, at most
MAX_ERRORS_PER_FILE lines per file, then a count); a damaged zip is a listed problem, not a crash.
Exit status 1 when anything fails.
"""

from __future__ import annotations

import argparse
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from lnpeft.data.artifacts import read_parquet
from lnpeft.data.tasks import OFFICIAL_ROWS, SUBMISSION_FILES, TaskSpec
from lnpeft.errors import LnpeftError, quote
from lnpeft.report.glue_format import HEADER, submission_targets

# ASCII digits only (`\d` also matches other scripts' digits); 19 digits hold every int64 index
_INDEX = re.compile(r"[0-9]{1,19}")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")  # no sign, exponent, nan or inf
MAX_ERRORS_PER_FILE = 20
"""Problems listed per file; the rest are counted (a wrong 400,000-row file is not 400,000 lines)."""
# what a damaged zip member raises on reading: a bad CRC, bad deflate data, a truncated entry,
# an unknown compression method, an encryption flag
_UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError)


def allowed_labels(spec: TaskSpec) -> tuple[str, ...] | None:
    """The label strings the server accepts for a task; None for STS-B (a score)."""
    if spec.is_regression:
        return None
    if spec.submission_labels:
        return spec.submission_labels
    return tuple(str(i) for i in range(spec.num_labels))


def _check_file(name: str, spec: TaskSpec, text: str) -> tuple[list[str], list[int]]:
    """Format errors of one file and the indices it lists."""
    errors: list[str] = []
    indices: list[int] = []
    seen: dict[int, int] = {}
    labels = allowed_labels(spec)
    if not text:
        return [f"{name}: empty file; expected the header {HEADER!r} and one row per test example"], []
    if text.startswith("\ufeff"):
        errors.append(f"{name}:1: starts with a UTF-8 byte-order mark; save the file without one")
        text = text[1:]
    if not text.endswith("\n"):
        errors.append(f"{name}: no final newline")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    crlf = [number for number, line in enumerate(lines, start=1) if line.endswith("\r")]
    if crlf:
        errors.append(f"{name}:{crlf[0]}: CRLF line ending{'s' if len(crlf) > 1 else ''} ({len(crlf)} line(s), "
                      "first here); use LF")
        lines = [line.removesuffix("\r") for line in lines]
    if not lines or lines[0] != HEADER:
        got = lines[0] if lines else ""
        errors.append(f"{name}:1: header {quote(got)}, expected {HEADER!r}")
    for number, line in enumerate(lines[1:], start=2):
        where = f"{name}:{number}"
        fields = line.split("\t")
        if len(fields) != 2:
            errors.append(f"{where}: {len(fields)} fields in {quote(line)}, expected index<TAB>prediction")
            continue
        index, value = fields
        if not _INDEX.fullmatch(index) or int(index) >= 2**63:
            errors.append(f"{where}: index {quote(index)} is not a non-negative integer")
        else:
            i = int(index)
            if i in seen:
                errors.append(f"{where}: duplicate index {i} (first on line {seen[i]})")
            else:
                seen[i] = number
                indices.append(i)
        if labels is None:
            if not _DECIMAL.fullmatch(value):
                errors.append(f"{where}: STS-B score {quote(value)} is not a plain decimal number")
            elif not 0.0 <= float(value) <= 5.0:
                errors.append(f"{where}: STS-B score {value if len(value) <= 40 else quote(value)} is outside [0, 5]")
        elif value not in labels:
            errors.append(f"{where}: label {quote(value)} is not one of {spec.name}'s {list(labels)}")
    if len(errors) > MAX_ERRORS_PER_FILE:
        more = len(errors) - MAX_ERRORS_PER_FILE
        errors = errors[:MAX_ERRORS_PER_FILE] + [f"{name}: {more} more problem(s) not shown"]
    return errors, indices


def _check_rows(name: str, path: Path, indices: list[int]) -> list[str]:
    """Rows and indices equal the test data's."""
    if not path.exists():
        return [f"{name}: no test data {path} to check row counts against"]
    want = read_parquet(path, "data")["idx"].to_numpy(dtype=np.int64)
    got = np.asarray(indices, dtype=np.int64)
    errors = []
    if len(got) != len(want):
        errors.append(f"{name}: {len(got)} rows, but {path} has {len(want)}")
    missing = np.setdiff1d(want, got)
    extra = np.setdiff1d(got, want)
    if len(missing):
        errors.append(f"{name}: {len(missing)} test indices missing (first: {missing[:5].tolist()})")
    if len(extra):
        errors.append(f"{name}: {len(extra)} indices not in {path} (first: {extra[:5].tolist()})")
    return errors


def official_problems(names: list[str], rows: dict[str, int]) -> list[str]:
    """What keeps a well-formed zip from the GLUE server: a missing file, or a file whose row count
    is not the official test split's (`OFFICIAL_ROWS`; a demo's subsampled test data gives those)."""
    return missing_files(names) + row_count_problems(rows)


def missing_files(names: list[str]) -> list[str]:
    return [f"{n}: missing (the server scores all {len(SUBMISSION_FILES)} files)"
            for n in SUBMISSION_FILES if n not in names]


def row_count_problems(rows: dict[str, int]) -> list[str]:
    """Files (name -> rows) whose row count is not the official GLUE test split's."""
    targets = submission_targets()
    problems = []
    for name in SUBMISSION_FILES:
        if name in rows:
            spec, split = targets[name]
            want = OFFICIAL_ROWS[spec.name][split]
            if rows[name] != want:
                problems.append(f"{name}: {rows[name]} rows; the GLUE server expects {want}, the official "
                                f"{spec.name} {split} split (a subsampled or demo test set)")
    return problems


def validate_zip(path: Path | str, data_dir: Path | str | None = None,
                 allow_incomplete: bool = False, official: bool = False) -> list[str]:
    """Every problem of a submission zip, one line each (empty: valid). `official`: also the row
    counts of the official GLUE test splits, and all 11 files (what the server accepts)."""
    path = Path(path)
    targets = submission_targets()
    try:
        zf = zipfile.ZipFile(path)
    except _UNREADABLE as err:
        return [f"{path}: not a readable zip ({type(err).__name__}: {err})"]
    errors: list[str] = []
    rows: dict[str, int] = {}
    with zf:
        names = zf.namelist()
        for name in names:
            if "/" in name or "\\" in name:
                errors.append(f"{name}: not at the top of the zip (the server wants the files flat)")
            elif name not in targets:
                errors.append(f"{name}: not a GLUE submission file; expected only {', '.join(SUBMISSION_FILES)}")
        for name in sorted({n for n in names if names.count(n) > 1}):
            errors.append(f"{name}: stored {names.count(name)} times")
        absent = [n for n in SUBMISSION_FILES if n not in names]
        if absent and not allow_incomplete:
            errors.extend(f"{n}: missing from the zip" for n in absent)
        for name in SUBMISSION_FILES:
            if name not in names:
                continue
            spec, split = targets[name]
            try:
                data = zf.read(name)
            except _UNREADABLE as err:
                errors.append(f"{name}: cannot be read from {path} ({type(err).__name__}: {err}); "
                              "the zip is damaged: write it again")
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                line = data[: err.start].count(b"\n") + 1
                errors.append(f"{name}:{line}: not UTF-8 ({err.reason} at byte {err.start})")
                continue
            file_errors, indices = _check_file(name, spec, text)
            errors.extend(file_errors)
            rows[name] = len(indices)
            if data_dir is not None:
                errors.extend(_check_rows(name, Path(data_dir) / spec.name / f"{split}.parquet", indices))
    if official:  # the server takes all 11 files at their official sizes, whatever allow_incomplete says
        errors.extend(row_count_problems(rows) + (missing_files(names) if allow_incomplete else []))
    return errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("zip", type=Path, help="the submission zip")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="results/data: check row counts and indices against each test split")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="accept a zip without some of the 11 files")
    parser.add_argument("--official", action="store_true",
                        help="also require the official GLUE test row counts and all 11 files: what the server accepts")


def run(args: argparse.Namespace) -> int:
    if not args.zip.exists():
        raise LnpeftError(f"{args.zip}: no such file")
    errors = validate_zip(args.zip, args.data_dir, args.allow_incomplete, official=args.official)
    for line in errors:
        print(line)
    if errors:
        print(f"{args.zip}: INVALID ({len(errors)} problems)")
        return 1
    if args.data_dir is None:
        print("note: no --data-dir, so row counts and indices were not checked against the test data")
    if not args.official:
        print("note: without --official the row counts of the official GLUE test splits were not checked")
    print(f"{args.zip}: valid" + (" for the GLUE server" if args.official else ""))
    return 0
