"""Tasks a user defines (`custom_tasks:` in config.yaml): their spec, where their rows are, and how
every lnpeft command finds them.

A definition names one file per split (CSV, TSV, JSON lines, JSON or parquet, optionally
gzipped; or the split names of a `datasets` hub id or local dataset folder), the text column(s),
the label column with its label names (or `regression: true`), and the metric. It becomes a
`TaskSpec` like a GLUE task's, with the splits `train`, `validation` (the dev split: it picks the
best epoch) and optionally `test`, so the rest of lnpeft needs no branch for it.

Every command resolves task names through `lnpeft.data.tasks.get_task`, which reads the definitions
from the YAML or JSON file(s) in `$LNPEFT_TASKS` (a mapping name -> definition, or a config with
a `custom_tasks` key). The workflow writes `results/custom_tasks/<name>.json` and sets the
variable for its jobs; run alone, `LNPEFT_TASKS=config.yaml lnpeft finetune --task mytask ...` does the same.

Reading is liberal (labels by name or id, ints written as floats, Arrow dictionary and large
string columns), and strict about meaning: a train or dev row without a label, an unknown label,
a missing column or an empty split is an error naming the file and row.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lnpeft.data.task_registry import TASKS, USER_TASKS, TaskSpec, UnknownTaskError, register
from lnpeft.data.row_files import arrow_rows, read_rows
from lnpeft.errors import UserTaskError, quote

ENV = "LNPEFT_TASKS"
SPLIT_KEYS = {"train": "train", "dev": "validation", "test": "test"}
"""Definition key -> lnpeft split name (the dev split is stored as `validation`, as GLUE's)."""
KEYS = frozenset({"train", "dev", "test", "hub", "hub_config", "text", "label", "label_names",
                  "regression", "metric", "secondary_metrics", "id"})
_NAME = re.compile(r"[a-z0-9]+")
_INT = re.compile(r"[+-]?[0-9]{1,19}")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class TaskSource:
    """Where a custom task's rows are and which columns hold what."""

    splits: dict[str, str]
    """lnpeft split -> file path (or the hub dataset's split name, with `hub`)."""
    text: tuple[str, ...]
    label: str
    id: str | None = None
    hub: str | None = None
    hub_config: str | None = None


_SOURCES: dict[str, TaskSource] = {}
_LOADED_FROM: str | None = None


def parse(name: str, definition: object, where: str | None = None) -> tuple[TaskSpec, TaskSource]:
    """A definition to (spec, source); errors name `where` (custom_tasks.NAME) and the key."""
    from lnpeft.data.metrics import METRICS  # scipy and scikit-learn: imported on first need

    where = where or f"custom_tasks.{name}"
    if not _NAME.fullmatch(name):
        raise UserTaskError(f"{where}: task name {quote(name)} must be lower-case letters and digits "
                            "(it names folders and Snakemake wildcards)")
    if name in TASKS:
        raise UserTaskError(f"{where}: {name!r} is a GLUE task's name; give your task another name")
    if not isinstance(definition, dict):
        raise UserTaskError(f"{where}: expected a mapping of keys ({', '.join(sorted(KEYS))}), "
                            f"got {quote(definition)}")
    unknown = sorted(set(definition) - KEYS)
    if unknown:
        raise UserTaskError(f"{where}.{unknown[0]}: unknown key; the keys are {', '.join(sorted(KEYS))}")
    for key in ("train", "dev", "label"):
        if not isinstance(definition.get(key), str) or not definition[key].strip():
            raise UserTaskError(f"{where}.{key}: required, a " +
                                ("column name" if key == "label" else "file path (or hub split name)"))
    text = definition.get("text")
    text = (text,) if isinstance(text, str) else tuple(text or ())
    if not 1 <= len(text) <= 2 or not all(isinstance(c, str) and c for c in text):
        raise UserTaskError(f"{where}.text: one or two column names (text_a, text_b), got "
                            f"{quote(definition.get('text'))}")
    label, ident = definition["label"], definition.get("id")
    columns = [*text, label, *([ident] if ident else [])]
    if len(set(columns)) < len(columns):
        raise UserTaskError(f"{where}: text, label and id name the same column twice ({columns})")
    regression = definition.get("regression", False)
    names = definition.get("label_names")
    if not isinstance(regression, bool):
        raise UserTaskError(f"{where}.regression: true or false, got {quote(regression)}")
    if regression and names:
        raise UserTaskError(f"{where}: label_names and regression: true exclude each other")
    if not regression:
        if not isinstance(names, list) or len(names) < 2:
            raise UserTaskError(f"{where}.label_names: a list of at least 2 label names (label id i is "
                                "the i-th name), or set regression: true")
        names = [str(n) for n in names]
        if len(set(names)) < len(names):
            raise UserTaskError(f"{where}.label_names: {names} repeats a name")
    metric = definition.get("metric") or ("spearman" if regression else "accuracy")
    secondary = tuple(definition.get("secondary_metrics") or ())
    for key, value in [("metric", metric), *(("secondary_metrics", m) for m in secondary)]:
        if value not in METRICS:
            raise UserTaskError(f"{where}.{key}: unknown metric {quote(value)}; one of {', '.join(METRICS)}")
        if regression != (value in ("pearson", "spearman")):
            kind = "a regression" if regression else "a classification"
            raise UserTaskError(f"{where}.{key}: {value} does not score {kind} task")
        if value == "f1" and len(names) != 2:
            raise UserTaskError(f"{where}.{key}: f1 is the binary F1 of label id 1; {len(names)} labels need "
                                "accuracy or matthews")
    splits = {SPLIT_KEYS[k]: str(definition[k]) for k in SPLIT_KEYS if definition.get(k)}
    spec = TaskSpec(
        name, glue_dir="", text_columns=text, label_names=tuple(names or ()), metric=metric,
        secondary_metrics=tuple(m for m in secondary if m != metric),
        test_splits=("test",) if "test" in splits else (), in_paper=False, user_defined=True,
    )
    source = TaskSource(splits, text, label, ident, definition.get("hub"), definition.get("hub_config"))
    return spec, source


def load_definitions(path: Path | str) -> dict[str, object]:
    """name -> definition from a YAML/JSON file: the mapping itself, or a config's `custom_tasks`."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserTaskError(f"{path}: no such custom task file (${ENV} names it)") from None
    except yaml.YAMLError as err:
        raise UserTaskError(f"{path}: not YAML or JSON: {err}") from None
    if isinstance(data, dict) and "custom_tasks" in data:
        data = data["custom_tasks"] or {}
    if not isinstance(data, dict):
        raise UserTaskError(f"{path}: expected a mapping of task name -> definition (or a config with "
                            "custom_tasks:)")
    return data


def define(definitions: dict[str, object], origin: str = "custom_tasks") -> list[TaskSpec]:
    """Parse and register every definition (replacing earlier ones of the same name)."""
    specs = []
    for name, definition in definitions.items():
        spec, source = parse(str(name), definition, f"{origin}.{name}")
        register(spec)
        if _SOURCES.get(spec.name) != source:
            _ROWS.pop(spec.name, None)
        _SOURCES[spec.name] = source
        specs.append(spec)
    return specs


def load_env() -> None:
    """Register the tasks of the file(s) in $LNPEFT_TASKS (os.pathsep-separated), once per value."""
    global _LOADED_FROM
    value = os.environ.get(ENV, "")
    if value == _LOADED_FROM:
        return
    _LOADED_FROM = value
    for path in filter(None, value.split(os.pathsep)):
        define(load_definitions(path), origin=path)


def _spec(name: str) -> TaskSpec:
    load_env()
    if name not in USER_TASKS:
        raise UnknownTaskError(f"unknown custom task {name!r}; custom tasks: {', '.join(USER_TASKS) or 'none'}")
    return USER_TASKS[name]


def source(name: str) -> TaskSource:
    return _SOURCES[name]


def input_files(name: str) -> list[str]:
    """The local files a custom task reads (none for a hub dataset)."""
    src = source(name)
    return [] if src.hub else list(src.splits.values())


def _hub_rows(src: TaskSource, split: str) -> tuple[list[str], Iterator[tuple[str, dict]]]:
    import datasets  # heavy import, only for this source

    name = src.splits[split]
    try:
        ds = datasets.load_dataset(src.hub, src.hub_config, split=name)
    except Exception as err:  # noqa: BLE001 - network, missing split, ...: one clear message
        raise UserTaskError(f"load_dataset({src.hub!r}, {src.hub_config!r}, split={name!r}) failed: "
                            f"{type(err).__name__}: {err}") from err
    return arrow_rows(ds.with_format("arrow")[:], f"{src.hub} {name}")


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        (isinstance(value, str) and not value.strip())


def decode_label(value: object, spec: TaskSpec, where: str) -> float | int:
    """A label by name or id (classification) or a finite number (regression)."""
    if spec.is_regression:
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else (
            float(value) if isinstance(value, str) and _NUMBER.fullmatch(value.strip()) else math.nan)
        if not math.isfinite(number):
            raise UserTaskError(f"{where}: label {quote(value)} is not a finite number (regression task)")
        return float(number)
    raw = value
    text = str(value).strip() if not isinstance(value, bool) else None
    if text is not None and text in spec.label_names:  # a name first: names may be digits ("1".."5")
        return spec.label_names.index(text)
    if isinstance(value, bool):
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)  # pandas writes an int column with nulls as floats
    elif isinstance(value, str) and _INT.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, int) and 0 <= value < spec.num_labels:
        return value
    raise UserTaskError(f"{where}: label {quote(raw)} is neither one of {list(spec.label_names)} nor a "
                        f"label id 0..{spec.num_labels - 1}; fix the row or add the name to label_names")


def _ident(value: object, where: str, column: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT64_MAX:
        raise UserTaskError(f"{where}: id column {column!r} holds {quote(value)}, not an integer 0..2^63-1")
    return value


@dataclass
class Split:
    """One split read into plain lists, with what the manifest records of it."""

    idx: list[int]
    text_a: list[str]
    text_b: list[str | None]
    label: list[float | int | None]
    empty_text: dict[str, list[str]]
    labels_ignored: int = 0
    """Test rows whose label was present but not used (lnpeft predicts test splits)."""


def read_split(spec: TaskSpec, src: TaskSource, split: str) -> Split:
    """Every row of one split, checked; errors name the file and row."""
    origin = f"{src.hub} split {src.splits[split]!r}" if src.hub else src.splits[split]
    columns, rows = _hub_rows(src, split) if src.hub else read_rows(src.splits[split])
    is_test = split in spec.test_splits
    needed = [*src.text, *([src.label] if not is_test else []), *([src.id] if src.id else [])]
    missing = [c for c in needed if c not in columns]
    if missing:
        key = "text" if missing[0] in src.text else ("label" if missing[0] == src.label else "id")
        raise UserTaskError(f"{origin}: no column {missing[0]!r} (custom_tasks.{spec.name}.{key}); "
                            f"its columns are {columns}")
    out = Split([], [], [], [], {})
    seen: dict[int, str] = {}
    for n, (where, record) in enumerate(rows):
        ident = _ident(record.get(src.id), where, src.id) if src.id else n
        if ident in seen:
            raise UserTaskError(f"{where}: id {ident} repeats {seen[ident]}; ids must be unique in a split")
        seen[ident] = where
        texts = []
        for name, column in zip(("text_a", "text_b"), src.text):
            value = record.get(column)
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise UserTaskError(f"{where}: column {column!r} holds {quote(value)}, not text")
            if not value.strip():
                out.empty_text.setdefault(name, []).append(where)
            texts.append(value)
        raw = record.get(src.label)
        if is_test:
            out.labels_ignored += not _is_missing(raw)
            label = None
        elif _is_missing(raw):
            raise UserTaskError(f"{where}: no label in column {src.label!r}; every {split} row needs one "
                                "(drop the row, or move unlabelled rows to the test split)")
        else:
            label = decode_label(raw, spec, where)
        out.idx.append(ident)
        out.text_a.append(texts[0])
        out.text_b.append(texts[1] if len(texts) > 1 else None)
        out.label.append(label)
    if not out.idx:
        raise UserTaskError(f"{origin}: the {split} split has no rows (custom_tasks.{spec.name})")
    return out


def check_readable(name: str) -> dict[str, int] | None:
    """Read every split of a local custom task now (the workflow does, before any job runs);
    returns the rows per split (None for a hub dataset, which is read by its data job only)."""
    spec, src = _spec(name), source(name)
    if src.hub:
        return None
    return {split: len(read_split(spec, src, split).idx) for split in spec.splits}


ASSUMED_HUB_ROWS = 100_000
"""Rows per split assumed for a hub custom task in time estimates (its size is known only once read)."""
_ROWS: dict[str, dict[str, int]] = {}


def rows(name: str) -> dict[str, int]:
    """Rows per split of a custom task (read once; ASSUMED_HUB_ROWS for a hub dataset)."""
    if name not in _ROWS:
        counted = check_readable(name)
        _ROWS[name] = counted or {split: ASSUMED_HUB_ROWS for split in _spec(name).splits}
    return _ROWS[name]
