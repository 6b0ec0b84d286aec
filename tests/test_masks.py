"""Mask schemes on hand-made Fisher tables: normalisation, cv exclusion, stable ranks."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from lnpeft.analysis.masks import build_mask, rank_scores
from lnpeft.cli import main
from lnpeft.data.artifacts import read_parquet, write_parquet


def table(values):
    """A fisher artifact for 1 layer x (weight, bias) x 2 entries, in parameter order."""
    rows = []
    for i, v in enumerate(values):
        kind = "weight" if i < 2 else "bias"
        rows.append({"param": f"bert.encoder.layer.0.output.LayerNorm.{kind}", "layer": 0,
                     "component": "output.LayerNorm", "kind": kind, "index": i % 2, "fisher": float(v)})
    return pd.DataFrame(rows)


TABLES = {
    "a": table([1, 2, 3, 4]),          # normalised: .1 .2 .3 .4
    "b": table([10, 0, 0, 10]),        # .5 0 0 .5
    "c": table([0, 300, 100, 0]),      # 0 .75 .25 0
}


@pytest.mark.parametrize("scheme,target,expected", [
    ("individual", "a", [.1, .2, .3, .4]),
    ("global", "a", [.6, .95, .55, .9]),
    ("global", "c", [.6, .95, .55, .9]),
    ("cv", "a", [.5, .75, .25, .5]),
    ("cv", "b", [.1, .95, .55, .4]),
    ("cv", "c", [.6, .2, .3, .9]),
])
def test_scores_by_brute_force(scheme, target, expected):
    mask = build_mask(TABLES, scheme, target)
    np.testing.assert_allclose(mask["score"], expected, rtol=1e-12)
    # brute force rank: count strictly better entries + earlier ties
    s = list(mask["score"])
    brute = [sum(o > v or (math.isclose(o, v, rel_tol=1e-12) and j < i) for j, o in enumerate(s))
             for i, v in enumerate(s)]
    if not any(math.isclose(x, y, rel_tol=1e-12) for i, x in enumerate(s) for y in s[i + 1:]):
        assert list(mask["rank"]) == brute


def test_cv_excludes_the_target_exactly():
    # cv of a == global minus a's normalised Fisher; changing a's table does not change its cv mask
    g = build_mask(TABLES, "global", "a")["score"]
    c = build_mask(TABLES, "cv", "a")["score"]
    np.testing.assert_allclose(g - c, [.1, .2, .3, .4], rtol=1e-12)
    changed = {**TABLES, "a": table([9, 9, 1, 1])}
    pd.testing.assert_frame_equal(build_mask(changed, "cv", "a"), build_mask(TABLES, "cv", "a"))
    assert not build_mask(changed, "cv", "b").equals(build_mask(TABLES, "cv", "b"))


def test_ties_rank_in_parameter_order():
    np.testing.assert_array_equal(rank_scores(np.array([1.0, 3.0, 3.0, 1.0, 2.0])), [3, 0, 1, 4, 2])
    mask = build_mask(TABLES, "cv", "a")  # scores .5 .75 .25 .5: entries 0 and 3 tie
    assert list(mask["rank"]) == [1, 0, 3, 2]


def test_mismatched_tables_are_rejected():
    other = table([1, 2, 3, 4])
    other.loc[0, "index"] = 5
    with pytest.raises(ValueError, match="task x: its Fisher table lists different LayerNorm entries"):
        build_mask({"a": TABLES["a"], "x": other}, "global", "a")
    with pytest.raises(ValueError, match="no Fisher table for the target task 'z'"):
        build_mask(TABLES, "individual", "z")
    with pytest.raises(ValueError, match="needs Fisher tables of tasks other than 'a'"):
        build_mask({"a": TABLES["a"]}, "cv", "a")


def test_cli_writes_masks_artifact(tmp_path):
    args = []
    for task, df in TABLES.items():
        write_parquet(df, tmp_path / f"{task}.parquet", "fisher")
        args.append(f"{task}={tmp_path / f'{task}.parquet'}")
    out = tmp_path / "cv" / "b.parquet"
    assert main(["masks", "--fisher", *args, "--scheme", "cv", "--task", "b", "--out", str(out)]) == 0
    mask = read_parquet(out, "masks")
    assert list(mask["rank"]) == [3, 0, 1, 2]
    assert json.loads(pq.read_schema(out).metadata[b"lnpeft"])["tasks"] == ["a", "c"]
    assert main(["masks", "--fisher", "a=x", "a=y", "--scheme", "global", "--task", "a",
                 "--out", str(out)]) == 2


def test_cli_on_fisher_tables_written_by_pandas_gives_the_same_masks(tmp_path):
    """Fisher tables a user wrote with `df.to_parquet` (text as large_string, float32 Fisher,
    int32 layer and index, columns in another order, an extra column) give the same masks file,
    byte for byte, as the tables lnpeft writes."""
    outs = {}
    for how in ("lnpeft", "pandas"):
        args = []
        for task, df in TABLES.items():
            path = tmp_path / how / f"{task}.parquet"
            path.parent.mkdir(exist_ok=True)
            if how == "lnpeft":
                write_parquet(df, path, "fisher")
            else:
                df.astype({"fisher": "float32", "layer": "int32", "index": "int32"}) \
                  .assign(note="by hand")[["fisher", "note", *df.columns.drop("fisher")]].to_parquet(path)
            args.append(f"{task}={path}")
        outs[how] = tmp_path / how / "global" / "b.parquet"
        assert main(["masks", "--fisher", *args, "--scheme", "global", "--task", "b", "--out", str(outs[how])]) == 0
    schema = pq.read_schema(tmp_path / "pandas" / "a.parquet")
    assert schema.field("param").type == "large_string" and schema.field("fisher").type == "float"
    assert outs["pandas"].read_bytes() == outs["lnpeft"].read_bytes()
