"""Artifacts: readers accept what a stage needs in any compatible type and return the documented
frame; writers write exactly the documented schema; nothing half-written (a killed writer, a full
disk) is ever left looking complete."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lnpeft.cli import main
from lnpeft.data.artifacts import (
    _HOST,
    EPOCH_COLUMNS,
    SCHEMAS,
    ArtifactError,
    _check,
    atomic_dir,
    atomic_path,
    read_parquet,
    write_json,
    write_parquet,
)
from lnpeft.errors import DiskFullError, disk_full_code


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "state.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        files = {
            "dead": tmp_path / f".state.safetensors.{_HOST}-{dead_pid}.abc123.tmp",
            "live": tmp_path / f".state.safetensors.{_HOST}-{live.pid}.def456.tmp",
            "other host": tmp_path / f".state.safetensors.othernode-{dead_pid}.ghi789.tmp",
            "other file": tmp_path / f".run.json.{_HOST}-{dead_pid}.jkl012.tmp",
        }
        for f in files.values():
            f.write_text("partial")
        with atomic_path(target) as tmp:
            assert tmp.name.startswith(f".state.safetensors.{_HOST}-{os.getpid()}.")
            tmp.write_text("complete")
        assert target.read_text() == "complete"
        assert not files["dead"].exists()
        assert files["live"].exists() and files["other host"].exists() and files["other file"].exists()
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------- readers: what a stage needs

# one small frame per artifact, as its writer gets it; floats are dyadic so float32 holds them exactly
FRAMES: dict[str, pd.DataFrame] = {
    "data_classification": pd.DataFrame({
        "idx": [0, 1, 2], "text_a": ["a b", "c", "d e f"], "text_b": ["x", None, "z"],
        "label": pd.array([1, 0, 1], dtype="Int64")}),
    "data_regression": pd.DataFrame({
        "idx": [3, 4], "text_a": ["a", "b"], "text_b": ["c", "d"], "label": [4.5, 0.25]}),
    "drift": pd.DataFrame({
        "layer": [0, 0, 1], "component": ["output.dense", "output.LayerNorm", "output.dense"],
        "kind": ["weight", "bias", "all"], "n": [6, 2, 8], "D": [0.5, 0.125, 0.75]}),
    "fisher": pd.DataFrame({
        "param": ["ln.weight", "ln.weight", "ln.bias"], "layer": [0, 0, 0],
        "component": ["output.LayerNorm"] * 3, "kind": ["weight", "weight", "bias"],
        "index": [0, 1, 0], "fisher": [1.5, 0.0, 2.0 ** -20]}),
    "fisher_components": pd.DataFrame({
        "layer": [0, 1], "component": ["output.LayerNorm", "intermediate.dense"], "kind": ["weight", "all"],
        "n": [2, 10], "fisher": [0.5, 3.0]}),
    "masks": pd.DataFrame({
        "param": ["ln.weight", "ln.bias"], "layer": [0, 0], "kind": ["weight", "bias"],
        "index": [0, 0], "score": [0.75, 0.25], "rank": [0, 1]}),
    "predictions": pd.DataFrame({"split": ["validation", "test"], "idx": [0, 1], "prediction": [1.0, 2.5]}),
    "scores": pd.DataFrame({
        "method": ["bitfit", "layernorm"], "task": ["rte", "stsb"], "split": ["dev", "dev"],
        "metric": ["accuracy", "pearson"], "value": [0.625, 0.875], "lr": [2.0 ** -10, 2.0 ** -8], "epoch": [3, 7],
        "seeds": ["0,1,2", "0"]}),
    "seed_scores": pd.DataFrame({
        "method": ["layernorm", "layernorm"], "task": ["rte", "rte"], "split": ["dev", "dev"],
        "metric": ["accuracy", "accuracy"], "seed": [0, 1], "value": [0.625, 0.5], "lr": [2.0 ** -10] * 2,
        "epoch": [3, 3]}),
    "epochs": pd.DataFrame({
        "epoch": [1, 2], "train_loss": [0.75, 0.5], "seconds": [1.5, 1.25], "tokens": [100, 100],
        "padded_tokens": [120, 128], "trainable": [51_202, 51_202], "lr": [2.0 ** -10, 2.0 ** -10],
        "validation/accuracy": [0.5, 0.625]}),
}


def artifact_of(case: str) -> str:
    return case.split("_")[0] if case.startswith("data_") else case


def strict(tmp_path: Path, case: str) -> tuple[Path, pd.DataFrame]:
    path = tmp_path / f"strict_{case}.parquet"
    write_parquet(FRAMES[case], path, artifact_of(case))
    return path, read_parquet(path, artifact_of(case))


def documented(case: str) -> pa.Schema:
    """The columns a reader needs, with their documented types."""
    if case == "epochs":
        return pa.schema(list(EPOCH_COLUMNS.items()))
    schema = SCHEMAS[artifact_of(case)]
    if case == "data_classification":
        schema = schema.set(schema.get_field_index("label"), pa.field("label", pa.int64()))
    return schema


# each documented type and the other Arrow types that hold its values unchanged
VARIANTS: dict[pa.DataType, list[str]] = {
    pa.string(): ["large_string", "string_view", "dictionary"],
    pa.int64(): ["int8", "int16", "int32", "uint8", "uint32", "uint64", "float64 (whole)", "float32 (whole)",
                 "dictionary"],
    pa.float64(): ["float32", "float16", "int64 (whole)", "int32 (whole)"],
}


def _target(variant: str) -> pa.DataType:
    return getattr(pa, variant.split(" ")[0])()


def base_frame(case: str, column: str, variant: str) -> pd.DataFrame:
    """The case's frame; for an integer variant of a float column, with whole values in it."""
    df = FRAMES[case]
    if "whole" in variant and documented(case).field(column).type == pa.float64():
        df = df.assign(**{column: np.arange(len(df), dtype=np.float64) * 3 + 1})
    return df


def as_variant(col: pa.ChunkedArray, variant: str) -> pa.ChunkedArray:
    if variant == "dictionary":  # what pandas writes for a categorical column
        return pa.chunked_array([c.dictionary_encode() for c in col.chunks])
    if variant == "float16":  # pyarrow casts to float16 from float32 only
        return col.cast(pa.float32()).cast(pa.float16())
    return col.cast(_target(variant))  # safe: the test's values fit


def _holds(case: str, column: str, variant: str) -> bool:
    """Whether the variant holds this column's test values (uint8 cannot hold 51,202)."""
    if variant == "dictionary" or "whole" in variant or not pa.types.is_integer(_target(variant)):
        return True
    try:
        pa.array(FRAMES[case][column].to_numpy()).cast(_target(variant))
    except (pa.ArrowInvalid, OverflowError):
        return False
    return True


PAIRINGS = [
    pytest.param(case, f.name, variant, id=f"{case}-{f.name}-{variant}")
    for case in FRAMES for f in documented(case) for variant in VARIANTS[f.type]
    # data labels: integers are the classification form (int64), floats the STS-B form (float64);
    # each reads as its own form (test_a_float_label_reads_as_the_float64_label_of_the_schema)
    if _holds(case, f.name, variant) and not (case == "data_classification" and variant.startswith("float"))
    and not (case == "data_regression" and f.name == "label" and variant.startswith("int"))
]


@pytest.mark.parametrize("case, column, variant", PAIRINGS)
def test_reader_accepts_a_compatible_type_and_returns_the_documented_frame(tmp_path, case, column, variant):
    df = base_frame(case, column, variant)
    write_parquet(df, tmp_path / "strict.parquet", artifact_of(case))
    expected = read_parquet(tmp_path / "strict.parquet", artifact_of(case))
    table = pq.read_table(tmp_path / "strict.parquet")
    i = table.schema.get_field_index(column)
    other = table.set_column(i, column, as_variant(table.column(column), variant))
    assert other.schema.field(column).type != documented(case).field(column).type
    pq.write_table(other, tmp_path / "other.parquet")
    got = read_parquet(tmp_path / "other.parquet", artifact_of(case))
    pd.testing.assert_frame_equal(got, expected)
    assert got[column].tolist() == expected[column].tolist()


def test_a_float_label_reads_as_the_float64_label_of_the_schema(tmp_path):
    FRAMES["data_classification"].astype({"label": "float32"}).to_parquet(tmp_path / "train.parquet")
    got = read_parquet(tmp_path / "train.parquet", "data")
    assert got["label"].dtype == "float64" and got["label"].tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("case", FRAMES)
def test_a_frame_written_with_pandas_defaults_reads_as_the_strict_file(tmp_path, case):
    """`df.to_parquet(path)` (pandas 3: text as large_string, its own metadata) is read by the
    artifact's reader as if lnpeft had written it."""
    _, expected = strict(tmp_path, case)
    path = tmp_path / "pandas.parquet"
    FRAMES[case].to_parquet(path)
    written = pq.read_schema(path)
    text = [f.name for f in documented(case) if f.type == pa.string()]
    assert all(written.field(n).type == pa.large_string() for n in text)  # the pairing under test
    pd.testing.assert_frame_equal(read_parquet(path, artifact_of(case)), expected)


@pytest.mark.parametrize("case", FRAMES)
def test_narrow_pandas_dtypes_read_as_the_strict_file(tmp_path, case):
    """int32 / float32 / categorical columns, shuffled column order, and an extra column."""
    _, expected = strict(tmp_path, case)
    df = FRAMES[case].copy()
    for name in df.columns:
        if name in documented(case).names:
            if pd.api.types.is_float_dtype(df[name]):
                df[name] = df[name].astype("float32")
            elif pd.api.types.is_integer_dtype(df[name]) and df[name].dtype != "Int64":
                df[name] = df[name].astype("int32")
            elif df[name].notna().all():
                df[name] = df[name].astype("category")
    df = df.assign(note="written by hand")[["note", *reversed(df.columns)]]
    path = tmp_path / "narrow.parquet"
    df.to_parquet(path)
    got = read_parquet(path, artifact_of(case))
    if case == "epochs":  # open schema: extra columns are kept, after the documented ones
        assert list(got.columns) == [*EPOCH_COLUMNS, "note", "validation/accuracy"]
        got = got.drop(columns="note")[expected.columns]
    else:
        assert list(got.columns) == documented(case).names  # documented order, extra column left out
    pd.testing.assert_frame_equal(got, expected)


@pytest.mark.parametrize("task, label", [("rte", "Int64"), ("stsb", "float64")])
def test_all_null_text_b_and_label_of_a_test_split(tmp_path, task, label):
    """pandas writes an all-None column as type null; text_b and label may be entirely null."""
    df = pd.DataFrame({"idx": [0, 1], "text_a": ["a", "b"], "text_b": [None, None], "label": [None, None]})
    df.to_parquet(tmp_path / "test.parquet")
    assert pq.read_schema(tmp_path / "test.parquet").field("label").type == pa.null()
    got = read_parquet(tmp_path / "test.parquet", "data")
    assert got["text_b"].isna().all() and got["label"].isna().all()
    assert got["label"].dtype == "float64"  # the schema's label type when the file says nothing
    write_parquet(df.assign(label=pd.Series([None, None], dtype=label)), tmp_path / "strict.parquet", "data")
    expected = read_parquet(tmp_path / "strict.parquet", "data")
    pd.testing.assert_frame_equal(got.drop(columns="label"), expected.drop(columns="label"))
    assert expected["label"].isna().all()


def test_a_missing_column_names_the_file_and_the_column(tmp_path):
    path = tmp_path / "fisher.parquet"
    FRAMES["fisher"].drop(columns="index").to_parquet(path)
    with pytest.raises(ArtifactError) as err:
        read_parquet(path, "fisher")
    assert str(err.value).startswith(f"{path}: the fisher artifact needs column(s) ['index'], which the file lacks")
    assert "add them (see results/README.md) or rerun the stage" in str(err.value)


def test_a_name_wrong_but_for_a_bom_or_whitespace_says_which_to_rename(tmp_path):
    path = tmp_path / "fisher.parquet"
    FRAMES["fisher"].rename(columns={"param": "\ufeffparam", "fisher": "fisher\r"}).to_parquet(path)
    with pytest.raises(ArtifactError) as err:
        read_parquet(path, "fisher")
    assert str(err.value).startswith(f"{path}: the fisher artifact needs column(s) ['param', 'fisher'], which "
                                     "the file lacks (it has ['\\ufeffparam', 'layer', ")
    assert str(err.value).endswith(
        "column '\\ufeffparam' starts with a UTF-8 byte-order mark (a CSV read as utf-8 instead of utf-8-sig?): "
        "rename it to 'param'; column 'fisher\\r' has stray whitespace: rename it to 'fisher'")
    FRAMES["fisher"].rename(columns={"param": " param"}).drop(columns="index").to_parquet(path)
    with pytest.raises(ArtifactError, match=r"column ' param' has stray whitespace: rename it to 'param'; add them "
                                            r"\(see results/README.md\) or rerun the stage"):
        read_parquet(path, "fisher")


@pytest.mark.parametrize("case, twice, refused", [
    ("masks", "rank", True), ("epochs", "validation/accuracy", True),  # epochs keeps its open columns
    ("predictions", "note", False),  # a column no reader reads: nothing is ambiguous
])
def test_a_column_given_twice_is_refused_where_a_reader_reads_it(tmp_path, case, twice, refused):
    path = tmp_path / f"{case}.parquet"
    table = pa.Table.from_pandas(FRAMES[case], preserve_index=False)
    column = table[twice] if twice in table.column_names else pa.array(["x"] * len(table))
    while table.column_names.count(twice) < 2:
        table = table.append_column(twice, column)
    pq.write_table(table, path)
    if not refused:
        pd.testing.assert_frame_equal(read_parquet(path, case), strict(tmp_path, case)[1])
        return
    with pytest.raises(ArtifactError, match=rf"^{re.escape(str(path))}: column '{twice}' appears 2 times; "
                                            "keep one of each and rerun$"):
        read_parquet(path, case)


def test_decimals_read_as_float64_where_each_value_reads_back(tmp_path):
    path = tmp_path / "fisher.parquet"
    table = pa.Table.from_pandas(FRAMES["fisher"], preserve_index=False)
    exact = pa.array([Decimal("1.5"), Decimal("0"), Decimal("0.000000953674316")], pa.decimal128(18, 15))
    pq.write_table(table.set_column(5, "fisher", exact), path)
    assert read_parquet(path, "fisher")["fisher"].tolist() == [1.5, 0.0, 9.53674316e-07]
    digits = pa.array([Decimal("1.5"), None, Decimal("0.1234567890123456789")], pa.decimal128(20, 19))
    pq.write_table(table.set_column(5, "fisher", digits), path)
    with pytest.raises(ArtifactError) as err:
        read_parquet(path, "fisher")
    assert str(err.value) == (
        f"{path}: column 'fisher' is decimal128(20, 19), expected double, and converting it would change a value: "
        "row 2 holds 0.1234567890123456789, which double reads as 0.12345678901234568; round it to 15 significant "
        "digits (or write the column as double) and rerun")
    # only float64 columns: a decimal where whole numbers belong is refused as the wrong kind
    pq.write_table(table.set_column(1, "layer", pa.array([Decimal(0)] * 3, pa.decimal128(3, 0))), path)
    with pytest.raises(ArtifactError, match=r"column 'layer' is decimal128\(3, 0\), expected int64 \(whole numbers\)"):
        read_parquet(path, "fisher")


@pytest.mark.parametrize("case, column, values, message", [
    ("fisher", "fisher", ["1.5", "0", "2"],
     "column 'fisher' is large_string, expected double (numbers); write the column as numbers"),
    ("masks", "rank", [0.0, 1.5],
     "column 'rank' is double, expected int64, and converting it would change a value: row 1 holds 1.5, "
     "which is not a whole number"),
    ("drift", "layer", np.array([0, 0, 2 ** 63], dtype=np.uint64),
     "column 'layer' is uint64, expected int64, and converting it would change a value: row 2 holds "
     "9223372036854775808, which does not fit in int64"),
    ("predictions", "prediction", np.array([1, 2 ** 53 + 1], dtype=np.int64),
     "column 'prediction' is int64, expected double, and converting it would change a value: row 1 holds "
     "9007199254740993, which is beyond 2**53"),
    ("fisher", "component", [1, 2, 3], "column 'component' is int64, expected string (text)"),
    ("fisher", "component", [b"\xff", b"a", b"b"],
     "column 'component' is binary (bytes: not UTF-8 text?), expected string (text)"),
    ("scores", "epoch", [True, False], "column 'epoch' is bool, expected int64 (whole numbers)"),
    ("fisher", "fisher", [None, None, None], "column 'fisher' is entirely empty (type null), expected double"),
    ("epochs", "seconds", ["fast", "slow"], "column 'seconds' is large_string, expected double (numbers)"),
])
def test_a_wrong_column_names_the_file_column_found_and_expected(tmp_path, case, column, values, message):
    path = tmp_path / f"{case}.parquet"
    FRAMES[case].assign(**{column: values}).to_parquet(path)
    with pytest.raises(ArtifactError) as err:
        read_parquet(path, artifact_of(case))
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)
    assert str(err.value).endswith("and rerun")


def test_a_stage_that_needs_fewer_columns_reads_a_file_without_the_others(tmp_path):
    path = tmp_path / "scores.parquet"
    FRAMES["scores"].drop(columns=["lr", "epoch", "seeds"]).to_parquet(path)
    needed = ["method", "task", "split", "metric", "value"]
    got = read_parquet(path, "scores", columns=needed)
    pd.testing.assert_frame_equal(got, read_parquet(strict(tmp_path, "scores")[0], "scores")[needed])
    with pytest.raises(ArtifactError, match=r"needs column\(s\) \['lr', 'epoch', 'seeds'\]"):
        read_parquet(path, "scores")
    FRAMES["scores"].drop(columns=["value"]).to_parquet(path)
    with pytest.raises(ArtifactError, match=r"this stage needs scores column\(s\) \['value'\]"):
        read_parquet(path, "scores", columns=["value", "method"])


def test_an_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "masks.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(ArtifactError, match=rf"^{re.escape(str(path))}: not a readable parquet file"):
        read_parquet(path, "masks")


@pytest.mark.parametrize("case", FRAMES)
def test_writers_write_exactly_the_documented_schema(tmp_path, case):
    """However the frame's columns are typed (int32, float32, categorical), the file has the
    documented types; and the writer's check refuses anything else."""
    df = FRAMES[case].copy()
    for name in documented(case).names:
        if pd.api.types.is_float_dtype(df[name]) and case != "epochs":
            df[name] = df[name].astype("float32")
        elif pd.api.types.is_integer_dtype(df[name]) and df[name].dtype != "Int64" and case != "epochs":
            df[name] = df[name].astype("int32")
    path = tmp_path / "out.parquet"
    write_parquet(df, path, artifact_of(case))
    written = pq.read_schema(path)
    for f in documented(case):
        assert written.field(f.name).type == f.type, f.name
    if case != "epochs":
        assert written.names == documented(case).names
    loose = pq.read_table(path)
    name = documented(case).names[0]
    loose = loose.set_column(0, name, loose.column(0).cast(
        pa.large_string() if documented(case).field(name).type == pa.string() else pa.int32()))
    with pytest.raises(ArtifactError, match=rf"column '{name}' is (large_string|int32), expected"):
        _check(loose, artifact_of(case), path)


def test_epochs_writer_refuses_a_narrow_required_column(tmp_path):
    with pytest.raises(ArtifactError, match=r"column 'seconds' is float, expected double"):
        write_parquet(FRAMES["epochs"].astype({"seconds": "float32"}), tmp_path / "e.parquet", "epochs")
    assert not (tmp_path / "e.parquet").exists()


def test_every_reader_in_src_goes_through_read_parquet():
    """One place decides what a reader accepts: no stage reads parquet by itself."""
    src = Path(__file__).resolve().parents[1] / "src" / "lnpeft"
    stray = [f"{p.relative_to(src)}:{n}" for p in src.rglob("*.py") if p.name != "artifacts.py"
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"pd\.read_parquet|pq\.read_table|ParquetFile|pq\.read_pandas|read_parquet\(.*engine", line)]
    assert stray == []


# ---------------------------------------------------------------- a full disk


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_disk_full_error(err: pytest.ExceptionInfo, target: Path) -> None:
    assert isinstance(err.value, DiskFullError) and isinstance(err.value, OSError)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert str(err.value) == (f"{target}: no space left on device while writing; "
                              f"free space (df -h {target.parent}) and rerun")


WRITERS = {
    "parquet": lambda path, version: write_parquet(FRAMES["fisher"].assign(fisher=float(version)), path, "fisher"),
    "json": lambda path, version: write_json({"version": version, "pad": "x" * 5000}, path),
}


@pytest.mark.parametrize("kind", WRITERS)
@pytest.mark.parametrize("previous", [True, False], ids=["over a previous file", "first write"])
def test_full_disk_mid_write_keeps_the_previous_file_and_names_the_target(tmp_path, full_disk, kind, previous):
    target = tmp_path / "out" / f"artifact.{kind}"
    write = WRITERS[kind]
    if previous:
        write(target, 1)
        before = target.read_bytes()
    full_disk.fill_after(200)
    with pytest.raises(DiskFullError) as err:
        write(target, 2)
    assert_disk_full_error(err, target)
    [(partial, size)] = full_disk.partial
    assert partial.parent == target.parent and partial.name.startswith(f".{target.name}.") and size > 0
    assert files_in(tmp_path / "out") == ([target.name] if previous else [])
    if previous:
        assert target.read_bytes() == before


def test_full_disk_while_writing_a_folder_keeps_the_previous_folder(tmp_path, full_disk):
    target = tmp_path / "init" / "seed0"
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("old")
    full_disk.fill_after(150)
    with pytest.raises(DiskFullError) as err:
        with atomic_dir(target) as tmp:
            (tmp / "weights.bin").write_bytes(b"w" * 100)
            # fails in its own atomic_path; the error names the folder, the output a user knows
            write_json({"pad": "x" * 500}, tmp / "init.json")
    assert_disk_full_error(err, target)
    [(partial, size)] = full_disk.partial
    assert partial.name.startswith(".init.json.") and size == 50
    assert files_in(tmp_path / "init") == ["seed0", "seed0/config.json"]
    assert (target / "config.json").read_text() == "old"


@pytest.mark.parametrize("raised, code", [
    (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT),
    # pyarrow (path-based write on a full tmpfs)
    (OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device"), errno.ENOSPC),
    # safetensors' save_file on a full tmpfs: its own exception type, the OS text in the message
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), errno.ENOSPC),
    (OSError(errno.EACCES, "Permission denied"), None),
    (ValueError("no such column"), None),
])
def test_disk_full_is_recognised_however_a_library_says_it(tmp_path, raised, code):
    assert disk_full_code(raised) == code
    # torch.save to a file object: "unexpected pos", with the file's OSError as its context
    try:
        try:
            raise raised
        except Exception:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    except RuntimeError as wrapped:
        assert disk_full_code(wrapped) == code
    with pytest.raises(DiskFullError if code else type(raised)):
        with atomic_path(tmp_path / "x.bin"):
            raise raised
    assert files_in(tmp_path) == []


def test_cli_reports_a_full_disk_as_one_line(tmp_path, full_disk, capsys):
    fisher = tmp_path / "fisher.parquet"
    write_parquet(FRAMES["fisher"], fisher, "fisher")
    out = tmp_path / "masks" / "rte.parquet"
    full_disk.fill_after(100)
    rc = main(["masks", "--fisher", f"rte={fisher}", "--scheme", "individual", "--task", "rte", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == (f"lnpeft masks: error: {out}: no space left on device while writing; "
                   f"free space (df -h {out.parent}) and rerun\n")
    assert files_in(out.parent) == []


def test_a_stage_may_read_only_the_columns_it_needs_of_a_data_split(tmp_path):
    FRAMES["data_classification"][["text_a", "idx"]].to_parquet(tmp_path / "test.parquet")
    got = read_parquet(tmp_path / "test.parquet", "data", columns=["idx"])
    assert list(got.columns) == ["idx", "text_a"] and got["idx"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r"\['labels'\] are not data columns"):
        read_parquet(tmp_path / "test.parquet", "data", columns=["labels"])
