"""Every parquet artifact's schema in one place; writers check it exactly, readers conform to it.

Writers check the exact documented schema before writing. Readers accept any file that holds the
documented columns in compatible types (lnpeft.data.conform) and return the documented frame. Writes
are atomic (a temporary file in the same folder, then `os.replace`), so a killed job or a full
disk never leaves a file that looks complete. results/README.md documents the same schemas.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lnpeft.data.conform import ArtifactError, conform
from lnpeft.errors import DiskFullError, disk_full_code

__all__ = ["SCHEMAS", "EPOCH_COLUMNS", "ArtifactError", "atomic_dir", "atomic_path", "naming_full_disk",
           "read_parquet", "read_user_table", "to_table", "write_json", "write_parquet"]

SCHEMAS: dict[str, pa.Schema] = {
    # results/data/{task}/{split}.parquet; label null on test splits, int64 (classification)
    # or float64 (STS-B)
    "data": pa.schema([
        ("idx", pa.int64()), ("text_a", pa.string()), ("text_b", pa.string()), ("label", pa.float64()),
    ]),
    # results/drift/{model}/{task}.parquet: paper Eq. 1 per (layer, component, kind)
    "drift": pa.schema([
        ("layer", pa.int64()), ("component", pa.string()), ("kind", pa.string()),
        ("n", pa.int64()), ("D", pa.float64()),
    ]),
    # results/fisher/{model}/{task}.parquet: per LayerNorm entry (paper Eq. 2)
    "fisher": pa.schema([
        ("param", pa.string()), ("layer", pa.int64()), ("component", pa.string()),
        ("kind", pa.string()), ("index", pa.int64()), ("fisher", pa.float64()),
    ]),
    # results/fisher/{model}/{task}.components.parquet: mean Fisher per component
    "fisher_components": pa.schema([
        ("layer", pa.int64()), ("component", pa.string()), ("kind", pa.string()),
        ("n", pa.int64()), ("fisher", pa.float64()),
    ]),
    # results/masks/{model}/{scheme}/{task}.parquet: rank 0 = most informative entry
    "masks": pa.schema([
        ("param", pa.string()), ("layer", pa.int64()), ("kind", pa.string()),
        ("index", pa.int64()), ("score", pa.float64()), ("rank", pa.int64()),
    ]),
    # results/runs/.../epochs.parquet: one row per epoch; dev metrics are columns
    # named {split}/{metric} (e.g. validation/accuracy, validation_matched/accuracy)
    "epochs": None,  # open schema (metric columns depend on the task); checked by check_epochs
    # results/runs/.../predictions.parquet: best epoch's predictions on dev and test splits
    "predictions": pa.schema([
        ("split", pa.string()), ("idx", pa.int64()), ("prediction", pa.float64()),
    ]),
    # results/tables/scores.parquet: long format of Tables 2 and 3; lr, epoch and seeds ("0,1,2") are
    # what lnpeft.report.selection chose (a test row: the submitted run's lr, predictions epoch and seed)
    "scores": pa.schema([
        ("method", pa.string()), ("task", pa.string()), ("split", pa.string()),
        ("metric", pa.string()), ("value", pa.float64()), ("lr", pa.float64()), ("epoch", pa.int64()),
        ("seeds", pa.string()),
    ]),
    # results/tables/scores_seeds.parquet: the seeds behind scores.parquet, one row per seed at the
    # (lr, epoch) Table 2 chose from the seeds' mean (Table 2's 95% intervals come from these)
    "seed_scores": pa.schema([
        ("method", pa.string()), ("task", pa.string()), ("split", pa.string()), ("metric", pa.string()),
        ("seed", pa.int64()), ("value", pa.float64()), ("lr", pa.float64()), ("epoch", pa.int64()),
    ]),
    # results/figures/curves_learning.parquet: the numbers the learning-curve figure plots, per
    # (task, method) at Table 2's lr; quantity `dev` (column {split}/{metric}) or `train_loss`;
    # band `minmax` (2 seeds), `ci95` (>= 3 seeds: t-interval of the mean) or `none` (1 seed)
    "curves": pa.schema([
        ("task", pa.string()), ("method", pa.string()), ("lr", pa.float64()), ("best_epoch", pa.int64()),
        ("quantity", pa.string()), ("column", pa.string()), ("epoch", pa.int64()), ("n_seeds", pa.int64()),
        ("mean", pa.float64()), ("low", pa.float64()), ("high", pa.float64()), ("band", pa.string()),
    ]),
}

EPOCH_COLUMNS: dict[str, pa.DataType] = {
    "epoch": pa.int64(), "train_loss": pa.float64(), "seconds": pa.float64(),
    "tokens": pa.int64(), "padded_tokens": pa.int64(), "trainable": pa.int64(), "lr": pa.float64(),
}


# columns that may be entirely null: text_b of single-sentence tasks, label of test splits
NULLABLE: dict[str, frozenset[str]] = {"data": frozenset({"text_b", "label"})}


def _check(table: pa.Table, artifact: str, path: Path | str) -> None:
    """Writers' check: exactly the documented columns and types (the required ones for epochs)."""
    if artifact == "epochs":
        missing = [c for c in EPOCH_COLUMNS if c not in table.column_names]
        if missing:
            raise ArtifactError(f"{path}: epochs table lacks columns {missing}")
        expected = pa.schema(list(EPOCH_COLUMNS.items()))
    else:
        expected = _schema_for(artifact, table.schema)
        if table.schema.names != expected.names:
            raise ArtifactError(
                f"{path}: {artifact} columns {table.schema.names} differ from {expected.names}"
            )
    for f in expected:
        got = table.schema.field(f.name).type
        if got != f.type and not (got == pa.null() and f.name in NULLABLE.get(artifact, ())):
            raise ArtifactError(f"{path}: column {f.name!r} is {got}, expected {f.type}")


def _schema_for(artifact: str, like: pa.Schema | pd.DataFrame) -> pa.Schema:
    """The artifact's schema; data labels are int64 for classification, float64 for STS-B."""
    schema = SCHEMAS[artifact]
    if artifact == "data":
        if isinstance(like, pa.Schema):
            i = like.get_field_index("label")  # -1 if absent or duplicated (conform names both)
            integer = i >= 0 and pa.types.is_integer(like.field(i).type)
        else:
            integer = "label" in like and pd.api.types.is_integer_dtype(like["label"].dtype)
        if integer:
            schema = schema.set(schema.get_field_index("label"), pa.field("label", pa.int64()))
    return schema


def to_table(df: pd.DataFrame, artifact: str) -> pa.Table:
    """Convert a DataFrame to the artifact's exact arrow schema (columns in schema order).

    For `data`, pass classification labels as pandas `Int64` (nullable) so test rows stay null.
    """
    if artifact == "epochs":
        return pa.Table.from_pandas(df, preserve_index=False)
    schema = _schema_for(artifact, df)
    missing = [n for n in schema.names if n not in df.columns]
    if missing:
        raise ArtifactError(f"{artifact}: missing columns {missing}")
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


_HOST = socket.gethostname().replace(".", "_").replace("-", "_")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError means someone else's live process
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _remove_dead_writers_files(path: Path) -> None:
    """Delete `.{name}.{this host}-{pid}.*.tmp` files beside `path` whose process is gone. Files of
    other hosts are left alone (their PIDs mean nothing here)."""
    prefix = f".{path.name}.{_HOST}-"
    for leftover in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = leftover.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            leftover.unlink(missing_ok=True)


@contextmanager
def naming_full_disk(path: Path | str) -> Iterator[None]:
    """Turn a full disk (ENOSPC, EDQUOT), however a library reports it, into DiskFullError naming
    `path`. Nested, the outermost wins: a file inside a temporary folder is reported as the folder."""
    try:
        yield
    except Exception as err:
        code = disk_full_code(err)
        if code is None:
            raise
        raise DiskFullError.writing(path, code) from err


def _mode_of_new(kind: int) -> int:
    """The mode open() (0o666) or mkdir() (0o777) would give under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return kind & ~umask


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    On any failure the temporary file is removed and `path` keeps its previous complete content
    (or stays absent); a full disk is raised as DiskFullError naming `path`. The temporary name
    holds this host and PID, so leftovers of a writer that was killed (SIGKILL, a node's OOM
    killer) can be told apart from a live writer's file and removed on the next write.
    """
    path = Path(path)
    with naming_full_disk(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_writers_files(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp")
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            if tmp_path.exists():  # mkstemp creates 0600; shared results/ want open()'s mode
                os.chmod(tmp_path, _mode_of_new(0o666))
            os.replace(tmp_path, path)
        finally:
            tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` as a whole only if the block
    succeeds (never a mix of old and new files). Failures and a full disk as in atomic_path."""
    path = Path(path)
    with naming_full_disk(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        try:
            yield tmp
            tmp.chmod(_mode_of_new(0o777))  # mkdtemp makes it private; results are shared
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(df: pd.DataFrame, path: Path | str, artifact: str,
                  metadata: dict[str, str] | None = None) -> None:
    """Check `df` against the artifact schema and write it atomically (zstd, deterministic)."""
    table = to_table(df, artifact)
    _check(table, artifact, path)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k.encode(): v.encode() for k, v in metadata.items()}})
    # through a Python file: the same bytes as pyarrow's own, and every artifact's bytes pass open()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")


def read_parquet(path: Path | str, artifact: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read an artifact as the documented frame, whoever wrote it; a clear error names the file.

    The documented columns (or only `columns`, those a stage needs; the other documented ones
    are then conformed where present) must be there once each, in any order, in a type that
    holds the same values (lnpeft.data.conform: any text type, integer widths, float32, integers and
    decimals as float64); they come back in the documented types and order. Other columns are
    left out (epochs: kept, its metric columns are open). Data labels that are integers come back
    as pandas Int64 (nullable), as the data stage writes them.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such {artifact} artifact; run the stage that makes it")
    try:
        # not pq.read_table: its dataset reader refuses a column given twice before conform can name it
        with pq.ParquetFile(path) as parquet:
            table = parquet.read()
    except (pa.ArrowException, OSError) as err:
        raise ArtifactError(f"{path}: not a readable parquet file ({err}); rerun the stage that makes it") from err
    if artifact == "epochs":
        schema, keep_extra = pa.schema(list(EPOCH_COLUMNS.items())), True
    else:
        schema, keep_extra = _schema_for(artifact, _decoded(table.schema)), False
    if columns is not None:
        unknown = [c for c in columns if c not in schema.names]
        if unknown:
            raise ValueError(f"read_parquet: {unknown} are not {artifact} columns ({schema.names})")
    table = conform(table, schema, path, artifact, NULLABLE.get(artifact, ()), keep_extra, needed=columns)
    df = table.to_pandas()
    if artifact == "data" and "label" in df and pa.types.is_integer(table.schema.field("label").type):
        df["label"] = df["label"].astype("Int64")
    return df


def read_user_table(path: Path | str) -> pa.Table:
    """A user's own parquet file (a custom task's rows, not an lnpeft artifact): the whole table in
    whatever Arrow types it holds; an unreadable file or a column named twice is an error naming it."""
    path = Path(path)
    try:
        with pq.ParquetFile(path) as parquet:  # as read_parquet: a repeated column is named below
            table = parquet.read()
    except (pa.ArrowException, OSError) as err:
        raise ArtifactError(f"{path}: not a readable parquet file ({err})") from err
    twice = sorted({n for n in table.column_names if table.column_names.count(n) > 1})
    if twice:
        raise ArtifactError(f"{path}: column {twice[0]!r} appears {table.column_names.count(twice[0])} times; keep one")
    return table


def _decoded(schema: pa.Schema) -> pa.Schema:
    """`schema` with dictionary columns shown as their values (a categorical label of ints is ints)."""
    return pa.schema([pa.field(f.name, f.type.value_type) if pa.types.is_dictionary(f.type) else f
                      for f in schema])


def write_json(obj: object, path: Path | str) -> None:
    """Write JSON atomically, sorted keys, so reruns give identical bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
