"""Reader of the classic `glue_data/` TSV layout (what `download_glue_data.py` wrote).

The files are not CSV: quotes are literal text, so a line is split on tabs only (never
CSV-unquoted). Quirks handled here: CoLA train/dev have no header while CoLA test has one; MRPC
train/dev start with a UTF-8 BOM; MNLI names its splits dev_matched/test_matched...; AX lives in
`diagnostic/diagnostic.tsv`. Column names come from each file's header, so a file with extra
columns (STS-B, MNLI) needs no per-file code; a column the layout reads may appear only once.
Indices and label ids are ASCII digits (an index fits int64), STS-B scores finite decimals.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from lnpeft.data.task_registry import TaskSpec
from lnpeft.data.textfile import read_utf8
from lnpeft.errors import quote

# ASCII only: int() and float() also read other scripts' digits ("\u0663"), "1_000" and "nan"
_DIGITS = re.compile(r"[0-9]{1,19}")  # 19 digits hold every int64 (and stay below int()'s digit limit)
_SCORE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_INT64_MAX = 2**63 - 1


class GlueFormatError(ValueError):
    """A TSV file that cannot be read as its task's layout; the message names file and line."""


@dataclass(frozen=True)
class Layout:
    """Where a task's fields are in its TSV files (by header name, or by position without one)."""

    text: tuple[str, ...]
    """Header names of the text fields (text_a, text_b)."""
    label: str | None
    """Header name of the label field (absent in test files)."""
    index: str | None = "index"
    """Header name of the GLUE index column (becomes idx); None: the 0-based row number."""
    headerless: tuple[str, ...] | None = None
    """Column names of files without a header (CoLA train/dev)."""


_NLI_PAIR = Layout(("sentence1", "sentence2"), "label")

LAYOUTS: dict[str, Layout] = {
    # CoLA train/dev: source, label, original star annotation, sentence; no header
    "cola": Layout(("sentence",), "label",
                   headerless=("source", "label", "original_label", "sentence")),
    "sst2": Layout(("sentence",), "label"),
    "mrpc": Layout(("#1 String", "#2 String"), "Quality"),
    "stsb": Layout(("sentence1", "sentence2"), "score"),
    "qqp": Layout(("question1", "question2"), "is_duplicate", index="id"),
    "mnli": Layout(("sentence1", "sentence2"), "gold_label"),
    "qnli": Layout(("question", "sentence"), "label"),
    "rte": _NLI_PAIR,
    "wnli": _NLI_PAIR,
    "ax": Layout(("sentence1", "sentence2"), None),
}

_SPLIT_FILES = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "test": "test.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
    "test_matched": "test_matched.tsv",
    "test_mismatched": "test_mismatched.tsv",
}


def split_file(glue_dir: Path | str, spec: TaskSpec, split: str) -> Path:
    """The TSV file of a task's HF split in a glue_data/ folder (AX: diagnostic/diagnostic.tsv)."""
    if spec.name == "ax":
        return Path(glue_dir) / spec.glue_dir / "diagnostic.tsv"
    try:
        return Path(glue_dir) / spec.glue_dir / _SPLIT_FILES[split]
    except KeyError:
        raise ValueError(f"{spec.name}: no TSV file is known for split {split!r}") from None


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class TsvSplit:
    """One file read into plain lists, plus what was skipped or looked odd."""

    path: Path
    idx: list[int]
    text_a: list[str]
    text_b: list[str | None]
    label: list[float | int | None]
    rows_read: int = 0
    skipped: list[dict] = field(default_factory=list)
    """Malformed rows skipped under max_bad_rows: {line, fields, expected}."""
    empty_text: dict[str, list[int]] = field(default_factory=dict)
    """text column -> file lines whose text is empty after stripping."""


def _lines(path: Path) -> list[str]:
    """Physical lines of a file; BOM removed; split on '\\n' only (texts may hold other breaks)."""
    text = read_utf8(path, GlueFormatError)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last row; CoLA dev has none
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def decode_label(raw: str, spec: TaskSpec, where: str) -> float | int:
    """A TSV label to the HF label id (by name or as an id), or a float score for STS-B."""
    value = raw.strip()
    if spec.is_regression:
        score = float(value) if _SCORE.fullmatch(value) else math.nan
        if not math.isfinite(score):  # a NaN score would read as "unlabelled" downstream
            raise GlueFormatError(f"{where}: score {quote(raw)} is not a number")
        return score
    if value in spec.label_names:
        return spec.label_names.index(value)
    if _DIGITS.fullmatch(value) and int(value) < spec.num_labels:
        return int(value)
    raise GlueFormatError(
        f"{where}: label {quote(raw)} is neither a label id 0..{spec.num_labels - 1} nor one of "
        f"{list(spec.label_names)}"
    )


def read_split(glue_dir: Path | str, spec: TaskSpec, split: str, *, max_bad_rows: int = 0) -> TsvSplit:
    """Read one split's TSV file; labels decoded, test labels None.

    A row whose field count differs from the header's is an error naming file and line, unless at
    most `max_bad_rows` such rows exist in the file: then they are skipped and recorded.
    """
    path = split_file(glue_dir, spec, split)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: GLUE file for task {spec.name!r} split {split!r} not found "
            f"(expected the glue_data/ layout: <glue_dir>/{spec.glue_dir}/{path.name}); "
            "add the file, drop the task from the config, or use data.source: hub"
        )
    layout = LAYOUTS[spec.name]
    lines = _lines(path)
    if not lines:
        raise GlueFormatError(f"{path}: empty file")
    first = lines[0].split("\t")
    is_test = split in spec.test_splits
    needed = [*layout.text, *([layout.label] if not is_test and layout.label else [])]
    if layout.headerless and not is_test and not all(c in first for c in needed):
        columns, start = list(layout.headerless), 0
    else:
        columns, start = first, 1
    where0 = f"{path}:1"
    missing = [c for c in needed if c not in columns]
    if missing:
        raise GlueFormatError(f"{where0}: header {quote(columns, 300)} lacks columns {missing} for task "
                              f"{spec.name!r}")
    twice = [c for c in (*needed, layout.index) if c and columns.count(c) > 1]
    if twice:  # which of the two holds the data is anyone's guess
        raise GlueFormatError(f"{where0}: header names column {twice[0]!r} {columns.count(twice[0])} times; "
                              "keep one")
    pos_text = [columns.index(c) for c in layout.text]
    pos_label = columns.index(layout.label) if (layout.label and not is_test) else None
    pos_index = columns.index(layout.index) if layout.index in columns else None

    out = TsvSplit(path, [], [], [], [])
    bad: list[dict] = []
    first_line: dict[int, int] = {}  # idx -> file line: GLUE indices identify rows (submission)
    for lineno, line in enumerate(lines[start:], start=start + 1):
        fields = line.split("\t")
        out.rows_read += 1
        where = f"{path}:{lineno}"
        if len(fields) != len(columns):
            bad.append({"line": lineno, "fields": len(fields), "expected": len(columns)})
            if len(bad) > max_bad_rows:
                raise GlueFormatError(
                    f"{where}: {len(fields)} tab-separated fields, expected {len(columns)} "
                    f"({', '.join(columns)}); {len(bad)} malformed row(s) so far, "
                    f"max_bad_rows is {max_bad_rows} (raise it to skip such rows)"
                )
            continue
        if pos_index is not None:
            raw = fields[pos_index].strip()
            if not _DIGITS.fullmatch(raw) or int(raw) > _INT64_MAX:  # idx is int64 downstream
                raise GlueFormatError(f"{where}: index {quote(fields[pos_index])} is not an integer "
                                      f"in 0..{_INT64_MAX}")
            out.idx.append(int(raw))
        else:
            out.idx.append(out.rows_read - 1)  # HF convention: 0-based row number
        if out.idx[-1] in first_line:
            raise GlueFormatError(f"{where}: index {out.idx[-1]} repeats line {first_line[out.idx[-1]]}; "
                                  "GLUE indices must be unique within a file")
        first_line[out.idx[-1]] = lineno
        texts = [fields[p] for p in pos_text]
        for name, text in zip(("text_a", "text_b"), texts):
            if not text.strip():
                out.empty_text.setdefault(name, []).append(lineno)
        out.text_a.append(texts[0])
        out.text_b.append(texts[1] if len(texts) > 1 else None)
        out.label.append(None if pos_label is None else decode_label(fields[pos_label], spec, where))
    out.skipped = bad
    return out
