"""Stage data: the classic GLUE TSV reader on the real files, its quirks, and the hub path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lnpeft import cli
from lnpeft.data import glue_tsv
from lnpeft.data.artifacts import read_parquet
from lnpeft.data.prepare import DataConfig, prepare, subsample_positions
from lnpeft.data.tasks import UnknownTaskError, get_task

REPO = Path(__file__).resolve().parents[1]


def _glue_dir() -> Path | None:
    for candidate in (os.environ.get("LNPEFT_GLUE_DIR"), REPO.parent / "shared" / "glue"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


GLUE = _glue_dir()
needs_glue = pytest.mark.skipif(GLUE is None, reason="no local GLUE copy (<repo>/../shared/glue or $LNPEFT_GLUE_DIR)")

# Data rows of every file of the local GLUE copy (../shared/glue/SOURCE.md): (task, split) -> rows
ROWS = {
    ("cola", "train"): 8551, ("cola", "validation"): 1043, ("cola", "test"): 1063,
    ("sst2", "train"): 67349, ("sst2", "validation"): 872, ("sst2", "test"): 1821,
    ("mrpc", "train"): 3668, ("mrpc", "validation"): 408, ("mrpc", "test"): 1725,
    ("stsb", "train"): 5749, ("stsb", "validation"): 1500, ("stsb", "test"): 1379,
    ("qnli", "train"): 320, ("qnli", "validation"): 5463, ("qnli", "test"): 5463,
    ("rte", "train"): 2490, ("rte", "validation"): 277, ("rte", "test"): 3000,
    ("wnli", "train"): 635, ("wnli", "validation"): 71, ("wnli", "test"): 146,
    ("ax", "test"): 1104,
    ("mnli", "train"): 480, ("qqp", "train"): 20000,  # subsamples; their dev/test files are missing
}


def _raw_rows(path: Path, header: bool) -> list[list[str]]:
    """Oracle: the file's data rows by the plainest possible parsing (bytes, BOM, tabs)."""
    text = path.read_bytes().decode("utf-8")
    text = text.removeprefix("\ufeff")
    lines = [ln for ln in text.split("\n")]
    if lines[-1] == "":
        lines.pop()
    return [ln.split("\t") for ln in lines[1 if header else 0:]]


@needs_glue
@pytest.mark.parametrize("task, split", sorted(ROWS))
def test_rows_and_labels_of_every_real_file(task, split):
    spec = get_task(task)
    part = glue_tsv.read_split(GLUE, spec, split)
    assert len(part.idx) == part.rows_read == ROWS[task, split]
    assert part.skipped == []
    headerless = task == "cola" and split != "test"
    raw = _raw_rows(part.path, header=not headerless)
    assert len(raw) == ROWS[task, split]
    if split in spec.test_splits:
        assert all(v is None for v in part.label)
        return
    # labels decode to HF names: label_names[id] equals the raw label text (or id for 0/1 files)
    column = 1 if headerless else 0 if task == "mrpc" else -1  # MRPC: Quality comes first
    raw_labels = [r[column] for r in raw]
    if spec.is_regression:
        assert part.label == [float(x) for x in raw_labels]
    else:
        decoded = [spec.label_names[i] for i in part.label]
        expected = [spec.label_names[int(x)] if x.isdigit() else x for x in raw_labels]
        assert decoded == expected
        assert set(part.label) == set(range(spec.num_labels))


@needs_glue
def test_label_examples_decode_to_hf_ids():
    rte = glue_tsv.read_split(GLUE, get_task("rte"), "train")
    assert rte.label[0] == 1  # "not_entailment" -> 1
    mrpc = glue_tsv.read_split(GLUE, get_task("mrpc"), "validation")
    assert mrpc.label[0] == 1  # Quality 1 -> equivalent
    assert get_task("mrpc").label_names[1] == "equivalent"
    mnli = glue_tsv.read_split(GLUE, get_task("mnli"), "train")
    assert np.bincount(mnli.label).tolist() == [160, 160, 160]  # LM-BFF class-balanced sample
    stsb = glue_tsv.read_split(GLUE, get_task("stsb"), "validation")
    assert stsb.label[:2] == [5.0, 4.75]


@needs_glue
def test_quirks_cola_headers_mrpc_bom_literal_quotes_idx():
    cola = glue_tsv.read_split(GLUE, get_task("cola"), "train")  # no header: row 1 is data
    assert cola.text_a[0] == "Our friends won't buy this analysis, let alone the next one we propose."
    assert cola.idx[:3] == [0, 1, 2]  # no index column: 0-based row number
    cola_test = glue_tsv.read_split(GLUE, get_task("cola"), "test")  # header "index sentence"
    assert cola_test.text_a[0] == "Bill whistled past the house." and cola_test.idx[0] == 0
    mrpc = glue_tsv.read_split(GLUE, get_task("mrpc"), "validation")  # BOM before "Quality"
    assert mrpc.path.read_bytes()[:3] == b"\xef\xbb\xbf"
    # quotes are literal text: a field starting with a quote keeps it, and no row merges
    assert mrpc.text_b[0] == '" The foodservice pie business does not fit our long-term growth strategy .'
    quoted = [t for t in mrpc.text_a + mrpc.text_b if t.count('"') % 2 == 1]
    assert quoted, "MRPC has fields with an odd number of quotes; CSV quoting would merge rows"
    qnli = glue_tsv.read_split(GLUE, get_task("qnli"), "train")
    assert qnli.idx[0] == 434  # the file's index column, not the row number
    assert glue_tsv.split_file(GLUE, get_task("mnli"), "validation_matched").name == "dev_matched.tsv"
    assert glue_tsv.split_file(GLUE, get_task("ax"), "test") == GLUE / "diagnostic" / "diagnostic.tsv"


# ---------------------------------------------------------------- small hand-made folders

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def _rte_folder(root: Path, train: str) -> Path:
    (root / "RTE").mkdir(parents=True)
    (root / "RTE" / "train.tsv").write_text(train)
    (root / "RTE" / "dev.tsv").write_text(RTE_HEADER + "0\ta\tb\tentailment\n1\tc\td\tnot_entailment\n")
    (root / "RTE" / "test.tsv").write_text("index\tsentence1\tsentence2\n0\te\tf\n")
    return root


GOOD_TRAIN = RTE_HEADER + "".join(f"{i}\tp {i}\th {i}\t{['entailment', 'not_entailment'][i % 2]}\n"
                                  for i in range(10))


def test_malformed_row_names_file_and_line(tmp_path):
    bad = GOOD_TRAIN + "10\tonly two fields\n" + "11\tx\ty\tentailment\n"
    glue = _rte_folder(tmp_path / "glue", bad)
    out = tmp_path / "out"
    with pytest.raises(glue_tsv.GlueFormatError, match=r"RTE/train\.tsv:12: 2 tab-separated fields, expected 4"):
        prepare(DataConfig("rte", str(out), glue_dir=str(glue)))
    assert not out.exists() or not list(out.glob("*.parquet"))  # nothing written on failure

    manifest = prepare(DataConfig("rte", str(out), glue_dir=str(glue), max_bad_rows=1))
    info = manifest["splits"]["train"]
    assert info["rows_read"] == 12 and info["rows_kept"] == 11
    assert info["skipped"] == [{"file": str(glue / "RTE" / "train.tsv"), "line": 12, "fields": 2, "expected": 4}]
    df = read_parquet(out / "train.parquet", "data")
    assert df["idx"].tolist() == [*range(10), 11]
    assert json.loads((out / "MANIFEST.json").read_text()) == manifest


def test_unknown_label_and_unknown_task(tmp_path):
    glue = _rte_folder(tmp_path / "glue", RTE_HEADER + "0\ta\tb\tmaybe\n")
    with pytest.raises(glue_tsv.GlueFormatError, match=r"train\.tsv:2: label 'maybe'"):
        prepare(DataConfig("rte", str(tmp_path / "o"), glue_dir=str(glue)))
    with pytest.raises(UnknownTaskError, match="unknown task 'rtee'; GLUE tasks: "):
        prepare(DataConfig("rtee", str(tmp_path / "o"), glue_dir=str(glue)))


def test_cli_errors_are_one_line(tmp_path, capsys):
    glue = _rte_folder(tmp_path / "glue", GOOD_TRAIN)
    assert cli.main(["prepare-data", "--task", "boolq", "--glue-dir", str(glue), "--out", str(tmp_path / "o")]) == 2
    assert "unknown task 'boolq'; GLUE tasks: cola" in capsys.readouterr().err
    (glue / "RTE" / "test.tsv").unlink()
    assert cli.main(["prepare-data", "--task", "rte", "--glue-dir", str(glue), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{glue / 'RTE' / 'test.tsv'}: GLUE file for task 'rte' split 'test' not found" in err
    assert not (tmp_path / "o").exists()


def test_empty_text_report_or_error(tmp_path):
    glue = _rte_folder(tmp_path / "glue", RTE_HEADER + "0\t  \tb\tentailment\n1\ta\tb\tentailment\n")
    manifest = prepare(DataConfig("rte", str(tmp_path / "o"), glue_dir=str(glue)))
    assert manifest["splits"]["train"]["empty_text"] == {"text_a": {"count": 1, "lines": [2]}}
    with pytest.raises(ValueError, match=r"train\.tsv:2: text_a is empty"):
        prepare(DataConfig("rte", str(tmp_path / "o2"), glue_dir=str(glue), empty_text="error"))


def test_subsample_seeded_ordered_recorded_and_deterministic(tmp_path):
    glue = _rte_folder(tmp_path / "glue", GOOD_TRAIN)
    a = prepare(DataConfig("rte", str(tmp_path / "a"), glue_dir=str(glue), subsample_train=4, seed=3))
    prepare(DataConfig("rte", str(tmp_path / "b"), glue_dir=str(glue), subsample_train=4, seed=3))
    prepare(DataConfig("rte", str(tmp_path / "c"), glue_dir=str(glue), subsample_train=4, seed=4))
    df = read_parquet(tmp_path / "a" / "train.parquet", "data")
    idx = df["idx"].tolist()
    assert len(idx) == 4 and idx == sorted(idx)  # original order kept
    assert idx == subsample_positions(10, 4, 3, "train").tolist()
    assert df["text_a"].tolist() == [f"p {i}" for i in idx]  # rows stay aligned
    assert a["splits"]["train"]["subsample"] == 4 and a["splits"]["train"]["rows_kept"] == 4
    assert a["subsample"]["seed"] == 3
    assert a["splits"]["validation"]["rows_kept"] == 2  # no cap: all rows
    for split in ("train", "validation", "test"):  # same seed -> identical bytes
        assert (tmp_path / "a" / f"{split}.parquet").read_bytes() == (tmp_path / "b" / f"{split}.parquet").read_bytes()
    assert read_parquet(tmp_path / "c" / "train.parquet", "data")["idx"].tolist() != idx


@needs_glue
def test_real_task_parquet_types(tmp_path):
    prepare(DataConfig("stsb", str(tmp_path / "stsb"), glue_dir=str(GLUE), subsample_test=5))
    train = read_parquet(tmp_path / "stsb" / "train.parquet", "data")
    assert str(train["label"].dtype) == "float64" and len(train) == 5749
    test = read_parquet(tmp_path / "stsb" / "test.parquet", "data")
    assert len(test) == 5 and test["label"].isna().all()
    prepare(DataConfig("sst2", str(tmp_path / "sst2"), glue_dir=str(GLUE), subsample_train=100))
    sst = read_parquet(tmp_path / "sst2" / "train.parquet", "data")
    assert str(sst["label"].dtype) == "Int64" and sst["text_b"].isna().all() and len(sst) == 100
    manifest = json.loads((tmp_path / "sst2" / "MANIFEST.json").read_text())
    assert manifest["source"]["files"]["train"]["sha256"] == glue_tsv.sha256_file(GLUE / "SST-2" / "train.tsv")
    assert manifest["splits"]["train"]["rows_read"] == 67349


# ---------------------------------------------------------------- hub path (a local dataset folder)


def _hub_folder(root: Path) -> Path:
    """A dataset folder with the hub's parquet layout for config `rte` (test labels -1)."""
    rows = {"train": 6, "validation": 3, "test": 4}
    for split, n in rows.items():
        (root / "rte").mkdir(parents=True, exist_ok=True)
        pd.DataFrame({
            "sentence1": [f"{split} premise {i}" for i in range(n)],
            "sentence2": [f"{split} hypothesis {i}" for i in range(n)],
            "label": [-1] * n if split == "test" else [i % 2 for i in range(n)],
            "idx": list(range(n)),
        }).to_parquet(root / "rte" / f"{split}-00000-of-00001.parquet", index=False)
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: rte\n  data_files:\n"
        + "".join(f"  - split: {s}\n    path: rte/{s}-*\n" for s in rows)
        + "---\n"
    )
    return root


def test_hub_path_local_dataset_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = _hub_folder(tmp_path / "hub")
    out = tmp_path / "out"
    assert cli.main(["prepare-data", "--task", "rte", "--hub", "--hub-path", str(folder), "--out", str(out),
                     "--subsample-train", "4"]) == 0
    train = read_parquet(out / "train.parquet", "data")
    assert len(train) == 4 and train["idx"].tolist() == sorted(train["idx"])
    assert train["text_a"].tolist() == [f"train premise {i}" for i in train["idx"]]
    assert train["label"].tolist() == [i % 2 for i in train["idx"]]
    test = read_parquet(out / "test.parquet", "data")
    assert len(test) == 4 and test["label"].isna().all()  # -1 -> null
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["source"]["kind"] == "hub" and manifest["source"]["hub_path"] == str(folder)
    assert manifest["splits"]["validation"]["rows_kept"] == 3


@needs_glue
@pytest.mark.parametrize("task, folder, drop", [("mnli", "MNLI", 2), ("qqp", "QQP", 1)])
def test_full_task_folders_from_real_train_rows(tmp_path, task, folder, drop):
    """MNLI/QQP dev and test files are missing locally: build them from real train rows in the
    real layouts (MNLI dev_matched.tsv ..., test files without the label columns)."""
    src = (GLUE / folder / "train.tsv").read_text().split("\n")
    src = [ln for ln in src if ln][:51]
    head = src[0].split("\t")
    if task == "qqp":  # QQP test: id, question1, question2
        keep = [head.index(c) for c in ("id", "question1", "question2")]
    else:  # MNLI test: every column but label1 and gold_label
        keep = list(range(len(head) - drop))
    test = "\n".join("\t".join(ln.split("\t")[i] for i in keep) for ln in src) + "\n"
    (tmp_path / folder).mkdir()
    spec = get_task(task)
    for split in spec.splits:
        path = glue_tsv.split_file(tmp_path, spec, split)
        path.write_text(test if split in spec.test_splits else "\n".join(src) + "\n")
    out = tmp_path / "out"
    manifest = prepare(DataConfig(task, str(out), glue_dir=str(tmp_path)))
    assert sorted(p.name for p in out.glob("*.parquet")) == sorted(f"{s}.parquet" for s in spec.splits)
    for split in spec.splits:
        df = read_parquet(out / f"{split}.parquet", "data")
        assert len(df) == 50 == manifest["splits"][split]["rows_kept"]
        assert df["label"].isna().all() == (split in spec.test_splits)
        assert df["idx"].iloc[0] == int(src[1].split("\t")[0])  # the file's index/id column
    dev = read_parquet(out / f"{spec.dev_splits[0]}.parquet", "data")
    text_cols = ("sentence1", "sentence2") if task == "mnli" else ("question1", "question2")
    first = dict(zip(head, src[1].split("\t")))
    assert (dev["text_a"].iloc[0], dev["text_b"].iloc[0]) == tuple(first[c] for c in text_cols)


@needs_glue
def test_held_out_dev_and_test_from_the_training_file(tmp_path):
    """QQP here has only train.tsv: data.held_out takes its dev and test splits from seeded, disjoint
    training rows that are no longer trained on, without reading (or needing) their files."""
    (tmp_path / "QQP").mkdir()
    (tmp_path / "QQP" / "train.tsv").write_bytes((GLUE / "QQP" / "train.tsv").read_bytes())
    cfg = DataConfig("qqp", str(tmp_path / "out"), glue_dir=str(tmp_path), subsample_train=1000,
                     held_out_validation=400, held_out_test=100, seed=3)
    manifest = prepare(cfg)
    out = {s: read_parquet(tmp_path / "out" / f"{s}.parquet", "data") for s in ("train", "validation", "test")}
    assert {s: len(df) for s, df in out.items()} == {"train": 1000, "validation": 400, "test": 100}
    ids = {s: set(df["idx"]) for s, df in out.items()}
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    source = pd.read_csv(GLUE / "QQP" / "train.tsv", sep="\t", quoting=3, keep_default_na=False).set_index("id")
    for df in out.values():  # real rows, labels kept (the held-out test split is scored by Table 3)
        assert df["label"].notna().all()
        assert (source.loc[df["idx"], "question1"].to_numpy() == df["text_a"].to_numpy()).all()
        assert (source.loc[df["idx"], "is_duplicate"].to_numpy() == df["label"].to_numpy()).all()
        assert (np.diff(source.index.get_indexer(df["idx"])) > 0).all()  # in file order
    assert manifest["splits"]["validation"]["held_out_from"] == "train"
    assert manifest["splits"]["train"]["held_out"] == {"validation": 400, "test": 100}
    assert list(manifest["splits"]) == ["train", "validation", "test"]
    again = prepare(DataConfig(**{**cfg.__dict__, "out": str(tmp_path / "again")}))
    assert again["splits"] == manifest["splits"]
    for s in out:  # the same seed gives the same rows
        assert read_parquet(tmp_path / "again" / f"{s}.parquet", "data").equals(out[s])
    # the held-out rows do not depend on the training cap
    other = DataConfig(**{**cfg.__dict__, "out": str(tmp_path / "other"), "subsample_train": 50})
    prepare(other)
    assert read_parquet(tmp_path / "other" / "validation.parquet", "data").equals(out["validation"])


@needs_glue
def test_held_out_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match=r"mnli: held_out validation needs a task with one validation split, it has 2"):
        prepare(DataConfig("mnli", str(tmp_path / "m"), glue_dir=str(GLUE), held_out_validation=10))
    with pytest.raises(ValueError, match=r"RTE/train.tsv: held_out asks for 3000 rows of a training file of 2490"):
        prepare(DataConfig("rte", str(tmp_path / "r"), glue_dir=str(GLUE), held_out_validation=3000))
    assert not (tmp_path / "r").exists()  # nothing written
