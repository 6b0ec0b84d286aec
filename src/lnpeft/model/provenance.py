"""Do a stage's inputs belong together? What each input says it was made for, checked before any work.

The workflow wires the right files together; a stage run by hand may not. An init folder records
its task and seed (`init.json`, written by `lnpeft init`); a data folder records its task
(`MANIFEST.json` beside the split files, written by `lnpeft prepare-data`); a Fisher table records
the data it was computed on (its parquet metadata). Each stage compares these with each other and
with its own options, and refuses a mismatch naming both files: an RTE run trained through the
SST-2 init, or seed 7 trained on seed 0's head, would otherwise write a complete-looking result.
A file without such a record (a user's own parquet or save_pretrained folder) has nothing to
compare and passes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from lnpeft.data.tasks import get_task
from lnpeft.errors import LnpeftError


class MismatchError(LnpeftError):
    """Inputs of one stage made for different tasks or seeds."""

    deterministic = True


def init_record(folder: Path | str) -> tuple[dict, Path] | None:
    """The init folder's init.json and its path, or None for a folder `lnpeft init` did not make."""
    path = Path(folder) / "init.json"
    return (json.loads(path.read_text()), path) if path.is_file() else None


def data_record(parquet: Path | str) -> tuple[str, Path] | None:
    """The task a split file was prepared for and the MANIFEST.json that says so, or None when no
    manifest beside it describes that split (a user's own file)."""
    parquet = Path(parquet)
    manifest = parquet.parent / "MANIFEST.json"
    if not manifest.is_file():
        return None
    info = json.loads(manifest.read_text())
    if parquet.name.removesuffix(".parquet") not in (info.get("splits") or {}):
        return None
    return info.get("task"), manifest


def _fits(data_task: str, task: str) -> bool:
    """A split of `data_task` belongs to a run of `task`: the same task, or one it predicts (AX by MNLI)."""
    return data_task == task or get_task(data_task).predicted_by == task


def check_inputs(init: Path | str, data: Sequence[Path | str] = (), task: str | None = None,
                 seed: int | None = None) -> str | None:
    """Refuse a stage's inputs that were made for another task or seed; returns the task
    they agree on (None when nothing records one)."""
    record = init_record(init)
    if record is not None:
        info, where = record
        if task is not None and info.get("task") != task:
            raise MismatchError(f"{where} is the init of task {info.get('task')!r}, not of --task "
                                f"{task}; give the init folder of {task} (results/init/<model>/{task}/seed<seed>)")
        if seed is not None and info.get("seed") != seed:
            raise MismatchError(f"{where} seeded its head with seed {info.get('seed')}, not --seed "
                                f"{seed}; a run of seed {seed} starts from the init of seed {seed}")
    expected, said_by = (task, "--task") if task is not None else (
        (record[0].get("task"), str(record[1])) if record is not None else (None, None))
    for path in data:
        found = data_record(path)
        if found is None:
            continue
        data_task, manifest = found
        if expected is None:
            expected, said_by = data_task, str(manifest)
        elif not _fits(data_task, expected):
            raise MismatchError(f"{path} was prepared for task {data_task!r} ({manifest}), but "
                                f"{said_by} says {expected!r}; give the splits of {expected}")
    return expected


def check_fisher_labels(tables: dict[str, Path | str]) -> None:
    """`lnpeft masks --fisher TASK=PARQUET`: each Fisher table was computed on its label's task
    (read from the table's metadata: the data file it was computed on, and that file's manifest)."""
    import pyarrow.parquet as pq

    for label, path in tables.items():
        meta = pq.read_schema(path).metadata or {}
        if b"lnpeft" not in meta:
            continue
        data = json.loads(meta[b"lnpeft"]).get("data")
        found = data_record(data) if data and Path(data).is_file() else None
        if found is not None and found[0] != label:
            raise MismatchError(f"{path} is the Fisher of {data} (task {found[0]!r}, {found[1]}), "
                                f"given as {label}={path}; label each table with its own task")
