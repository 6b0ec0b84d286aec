"""Every parquet artifact's schema in one place; writers check before writing, readers after reading.

Writes are atomic (a temporary file in the same folder, then `os.replace`), so a killed job never
leaves a parquet file that looks complete. results/README.md documents the same schemas.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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
    # results/tables/scores.parquet: long format of Tables 2 and 3
    "scores": pa.schema([
        ("method", pa.string()), ("task", pa.string()), ("split", pa.string()),
        ("metric", pa.string()), ("value", pa.float64()), ("lr", pa.float64()), ("epoch", pa.int64()),
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


class ArtifactError(ValueError):
    pass


def _check(table: pa.Table, artifact: str, path: Path | str) -> None:
    if artifact == "epochs":
        missing = [c for c in EPOCH_COLUMNS if c not in table.column_names]
        if missing:
            raise ArtifactError(f"{path}: epochs table lacks columns {missing}")
        return
    expected = _schema_for(artifact, table.schema)
    if table.schema.names != expected.names:
        raise ArtifactError(
            f"{path}: {artifact} columns {table.schema.names} differ from {expected.names}"
        )
    for f in expected:
        got = table.schema.field(f.name).type
        if got != f.type and not (got == pa.null() and f.nullable):
            raise ArtifactError(f"{path}: column {f.name!r} is {got}, expected {f.type}")


def _schema_for(artifact: str, like: pa.Schema | pd.DataFrame) -> pa.Schema:
    """The artifact's schema; data labels are int64 for classification, float64 for STS-B."""
    schema = SCHEMAS[artifact]
    if artifact == "data":
        if isinstance(like, pa.Schema):
            integer = "label" in like.names and pa.types.is_integer(like.field("label").type)
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
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    The temporary name holds this host and PID, so leftovers of a writer that was killed (SIGKILL,
    a node's OOM killer) can be told apart from a live writer's file and removed on the next write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_writers_files(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file the mode a plain open() would (shared results/)
        umask = os.umask(0)
        os.umask(umask)
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_parquet(df: pd.DataFrame, path: Path | str, artifact: str,
                  metadata: dict[str, str] | None = None) -> None:
    """Check `df` against the artifact schema and write it atomically (zstd, deterministic)."""
    table = to_table(df, artifact)
    _check(table, artifact, path)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k.encode(): v.encode() for k, v in metadata.items()}})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_parquet(path: Path | str, artifact: str) -> pd.DataFrame:
    """Read an artifact and check its schema; a clear error names the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such {artifact} artifact; run the stage that makes it")
    table = pq.read_table(path)
    _check(table, artifact, path)
    return table.to_pandas()


def write_json(obj: object, path: Path | str) -> None:
    """Write JSON atomically, sorted keys, so reruns give identical bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
