"""Kruskal-Wallis / Wilcoxon between two methods: the paper's own p-values from its Tables 2 and 3."""

from __future__ import annotations

import decimal
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats as scipy_stats

from lnpeft.cli import main
from lnpeft.data.artifacts import write_parquet
from lnpeft.data.metric_names import ALIASES, MetricNameError, aliases_of, canonical_metric
from lnpeft.data.metrics import METRICS
from lnpeft.data.tasks import PAPER_COLUMNS, column_task
from lnpeft.report.scores import NEEDED, ScoresError, read_scores
from lnpeft.report.stats import StatsConfig, kruskal_report

# PAPER.md, Table 2 (dev) and Table 3 (test), columns in PAPER_COLUMNS order
PAPER = {
    ("bitfit", "dev"): [0.9145, 0.9278, 0.8399, 0.8457, 0.6364, 0.9183, 0.9043, 0.7473, 0.8476],
    ("layernorm", "dev"): [0.9072, 0.9312, 0.8285, 0.8348, 0.6412, 0.9130, 0.9039, 0.7401, 0.8361],
    ("bitfit", "test"): [0.912, 0.928, 0.841, 0.838, 0.559, 0.877, 0.860, 0.687, 0.687],
    ("layernorm", "test"): [0.910, 0.926, 0.831, 0.828, 0.542, 0.871, 0.865, 0.682, 0.669],
    ("full", "dev"): [0.9143, 0.9335, 0.8559, 0.8567, 0.6554, 0.9239, 0.9091, 0.7653, 0.8769],
}


# metric names as Hugging Face `evaluate` writes them (its glue metric's keys)
EVALUATE = {"accuracy": "accuracy", "f1": "f1", "matthews": "matthews_correlation", "pearson": "pearson",
            "spearman": "spearmanr"}
SHORT = {"accuracy": "acc", "f1": "f1_score", "matthews": "mcc", "pearson": "pearson_r", "spearman": "spearman_r"}


def decoy(metric: str) -> str:
    """A real metric other than the paper's: its row must not enter the statistics."""
    return "f1" if metric == "accuracy" else "accuracy"


def long_scores(values: dict, seeds: int = 1, shuffle: bool = True, noise: float = 0.0,
                names: dict[str, str] | None = None) -> pd.DataFrame:
    """Scores in the scores.parquet layout, metrics spelled by `names`, with a non-paper-metric decoy
    row per column."""
    name = (names or {}).get
    rows = []
    for (method, split), vals in values.items():
        for column, value in zip(PAPER_COLUMNS, vals):
            metric = column_task(column)[0].metric
            for s in range(seeds):
                v = value + (noise * (s - (seeds - 1) / 2))
                rows.append((method, column, split, name(metric, metric), v, 1e-3, 3))
            rows.append((method, column, split, name(decoy(metric), decoy(metric)), 0.0, 1e-3, 3))
    df = pd.DataFrame(rows, columns=["method", "task", "split", "metric", "value", "lr", "epoch"]).assign(seeds="0")
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True) if shuffle else df


def test_paper_p_values(tmp_path):
    path = tmp_path / "scores.parquet"
    write_parquet(long_scores(PAPER), path, "scores")
    out = tmp_path / "stats" / "kruskal.json"
    assert main(["stats", "kruskal", "--scores", str(path), "--a", "bitfit", "--b", "layernorm",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert round(report["dev"]["pvalue"], 4) == 0.5660   # paper: 0.56599
    assert round(report["test"]["pvalue"], 4) == 0.6270  # paper: 0.62703
    assert round(report["combined"]["pvalue"], 4) == 0.5477  # paper: 0.54773
    assert report["dev"]["pvalue"] == pytest.approx(0.56599, abs=5e-6)
    assert report["test"]["pvalue"] == pytest.approx(0.62703, abs=5e-6)
    assert report["combined"]["pvalue"] == pytest.approx(0.54773, abs=5e-6)
    # vectors aligned task by task in the paper's column order, despite shuffled rows
    assert report["dev"]["tasks"] == list(PAPER_COLUMNS)
    assert report["dev"]["a"] == PAPER["bitfit", "dev"] and report["dev"]["b"] == PAPER["layernorm", "dev"]
    assert report["combined"]["a"] == PAPER["bitfit", "dev"] + PAPER["bitfit", "test"]
    assert report["combined"]["tasks"][9] == "qnli/test"
    # paired Wilcoxon on the same vectors (LayerNorm lower on 7 of 9 dev columns)
    w = scipy_stats.wilcoxon(PAPER["bitfit", "dev"], PAPER["layernorm", "dev"])
    assert report["dev"]["wilcoxon"]["pvalue"] == pytest.approx(w.pvalue)
    assert report["dev"]["wilcoxon"]["pvalue"] == pytest.approx(0.0390625)
    assert "one seed" in report["bootstrap"]["reason"]


def test_alignment_drops_columns_one_method_lacks(tmp_path):
    values = {k: v for k, v in PAPER.items() if k[1] == "dev"}
    scores = long_scores(values)
    scores = scores[~((scores["method"] == "layernorm") & (scores["task"] == "cola"))]
    report = kruskal_report(scores, StatsConfig(tmp_path / "s.parquet"))
    keep = [i for i, c in enumerate(PAPER_COLUMNS) if c != "cola"]
    assert report["dev"]["tasks"] == [PAPER_COLUMNS[i] for i in keep]
    assert report["dev"]["dropped"] == ["cola"]
    a = [PAPER["bitfit", "dev"][i] for i in keep]
    b = [PAPER["layernorm", "dev"][i] for i in keep]
    assert report["dev"]["pvalue"] == pytest.approx(scipy_stats.kruskal(a, b).pvalue)


def test_missing_test_scores_are_null_with_a_reason(tmp_path):
    values = {k: v for k, v in PAPER.items() if k[1] == "dev"}
    report = kruskal_report(long_scores(values), StatsConfig(tmp_path / "s.parquet", a="full", b="layernorm"))
    assert report["dev"]["pvalue"] == pytest.approx(
        scipy_stats.kruskal(PAPER["full", "dev"], PAPER["layernorm", "dev"]).pvalue)
    assert report["test"]["pvalue"] is None and "no test scores" in report["test"]["reason"]
    assert report["combined"]["pvalue"] is None and "missing: test" in report["combined"]["reason"]


def test_unknown_method_is_a_clear_error(tmp_path):
    path = tmp_path / "scores.parquet"
    write_parquet(long_scores({("bitfit", "dev"): PAPER["bitfit", "dev"]}), path, "scores")
    assert main(["stats", "kruskal", "--scores", str(path), "--a", "bitfit", "--b", "layernorm",
                 "--out", str(tmp_path / "k.json")]) == 2
    assert not (tmp_path / "k.json").exists()


def test_seed_replicates_are_averaged_and_bootstrapped(tmp_path):
    values = {k: v for k, v in PAPER.items() if k[0] != "full"}
    report = kruskal_report(long_scores(values, seeds=3, noise=0.01),
                            StatsConfig(tmp_path / "s.parquet", bootstrap=200))
    # the seed mean equals the paper value (symmetric noise), so the p-value is the paper's
    assert report["dev"]["pvalue"] == pytest.approx(0.56599, abs=5e-6)
    boot = report["bootstrap"]["dev"]["qnli"]
    assert boot["seeds_a"] == 3 and boot["a_mean"] == pytest.approx(0.9145)
    lo, hi = boot["a_ci95"]
    assert 0.9145 - 0.01 - 1e-12 <= lo <= 0.9145 <= hi <= 0.9145 + 0.01 + 1e-12
    again = kruskal_report(long_scores(values, seeds=3, noise=0.01),
                           StatsConfig(tmp_path / "s.parquet", bootstrap=200))
    assert again == report  # seeded bootstrap: reproducible


def test_seed_scores_replace_the_dev_means(tmp_path):
    """`--seed-scores` (scores_seeds.parquet, with its seed column): the dev tests are those of the
    means in --scores (the paper's p-value), the test rows stay, and the bootstrap sees 3 seeds."""
    values = {k: v for k, v in PAPER.items() if k[0] != "full"}
    means = long_scores(values)
    seeds = long_scores({k: v for k, v in values.items() if k[1] == "dev"}, seeds=3, noise=0.01)
    seeds = seeds.assign(seed=np.arange(len(seeds)) % 3)
    write_parquet(means.assign(seeds="0"), tmp_path / "scores.parquet", "scores")
    seeds[["method", "task", "split", "metric", "seed", "value", "lr", "epoch"]].to_parquet(tmp_path / "seeds.parquet")
    out = tmp_path / "kruskal.json"
    assert main(["stats", "kruskal", "--scores", str(tmp_path / "scores.parquet"), "--seed-scores",
                 str(tmp_path / "seeds.parquet"), "--bootstrap", "200", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dev"]["pvalue"] == pytest.approx(0.56599, abs=5e-6)
    assert report["test"]["pvalue"] == pytest.approx(0.62703, abs=5e-6)
    assert report["bootstrap"]["dev"]["rte"]["seeds_b"] == 3
    assert report["bootstrap"]["dev"]["rte"]["b_mean"] == pytest.approx(0.7401)
    assert report["bootstrap"]["test"] == {}  # test rows have one value each


# ---------------------------------------------------------------- metric names, optional columns

PAPER_P = {"dev": 0.56599, "test": 0.62703, "combined": 0.54773}  # PAPER.md, Section 3.1


def run_stats(tmp_path, scores: pd.DataFrame, capsys=None) -> tuple[int, dict | None, str]:
    """`lnpeft stats kruskal` on `scores` written as plain pandas parquet: (exit, report, stdout)."""
    path = tmp_path / "scores.parquet"
    scores.to_parquet(path, index=False)
    out = tmp_path / "stats" / "kruskal.json"
    code = main(["stats", "kruskal", "--scores", str(path), "--out", str(out)])
    printed = capsys.readouterr().out if capsys else ""
    return code, json.loads(out.read_text()) if out.exists() else None, printed


@pytest.mark.parametrize("names", [None, EVALUATE, SHORT], ids=["lnpeft", "evaluate", "short"])
@pytest.mark.parametrize("keep", [["lr", "epoch"], []], ids=["with-lr-epoch", "without"])
def test_paper_p_values_whatever_the_metric_names_and_without_lr_epoch(tmp_path, capsys, names, keep):
    values = {k: v for k, v in PAPER.items() if k[0] != "full"}
    scores = long_scores(values, names=names)[["method", "task", "split", "metric", "value", *keep]]
    code, report, printed = run_stats(tmp_path, scores, capsys)
    assert code == 0
    oracle = {"dev": scipy_stats.kruskal(PAPER["bitfit", "dev"], PAPER["layernorm", "dev"]).pvalue,
              "test": scipy_stats.kruskal(PAPER["bitfit", "test"], PAPER["layernorm", "test"]).pvalue,
              "combined": scipy_stats.kruskal(PAPER["bitfit", "dev"] + PAPER["bitfit", "test"],
                                              PAPER["layernorm", "dev"] + PAPER["layernorm", "test"]).pvalue}
    for part, p in PAPER_P.items():
        assert oracle[part] == pytest.approx(p, abs=5e-6)  # scipy itself gives the paper's numbers
        assert report[part]["pvalue"] == pytest.approx(oracle[part], rel=1e-12)
        assert len(report[part]["a"]) == (18 if part == "combined" else 9)
    assert [u["task"] for u in report["dev"]["used"]] == list(PAPER_COLUMNS)
    assert {u["metric"] for u in report["dev"]["used"] if u["task"] in ("cola", "stsb")} == {"matthews", "spearman"}
    assert report["dev"]["left_out"] == [] and report["test"]["left_out"] == []
    assert report["rows"] == {"read": 72, "compared_methods": 72, "paper_metric": 36, "other_metric": 36,
                              "other_task": 0, "other_methods": 0}
    assert printed == ("dev: p = 0.56599 (n = 9 per method)\ntest: p = 0.62703 (n = 9 per method)\n"
                       "combined: p = 0.54773 (n = 18 per method)\n")


def test_issue_14_evaluate_names_no_longer_drop_cola_and_stsb(tmp_path):
    """The reported case: dev 0.406 (7 columns) instead of 0.566 when CoLA/STS-B were unmatched."""
    values = {k: v for k, v in PAPER.items() if k[0] != "full" and k[1] == "dev"}
    report = kruskal_report(long_scores(values, names=EVALUATE), StatsConfig(tmp_path / "s.parquet"))
    assert report["dev"]["pvalue"] == pytest.approx(0.56599, abs=5e-6)
    seven = [i for i, c in enumerate(PAPER_COLUMNS) if c not in ("cola", "stsb")]
    wrong = scipy_stats.kruskal([PAPER["bitfit", "dev"][i] for i in seven],
                                [PAPER["layernorm", "dev"][i] for i in seven]).pvalue
    assert round(wrong, 3) == 0.406 and report["dev"]["pvalue"] != pytest.approx(wrong)


def test_unknown_metric_is_an_error_naming_it_the_row_and_the_task(tmp_path, capsys):
    scores = long_scores({k: v for k, v in PAPER.items() if k[1] == "dev"}, shuffle=False)
    row = int(np.flatnonzero((scores["task"] == "stsb") & (scores["metric"] == "spearman"))[1])
    scores.loc[row, "metric"] = "spearman_rank"
    code, report, _ = run_stats(tmp_path, scores)
    assert code == 2 and report is None  # nothing written
    assert capsys.readouterr().err == (
        f"lnpeft stats: error: {tmp_path / 'scores.parquet'} row {row}: unknown metric 'spearman_rank' for task "
        "'stsb', whose paper metric is 'spearman' (also accepted: spearman_corr, spearman_correlation, "
        "spearman_r, spearman_rho, spearmanr); known metrics: accuracy, f1, matthews, pearson, spearman and "
        "their aliases in lnpeft.data.metric_names.ALIASES\n")


def test_left_out_columns_are_listed_with_the_reason_and_printed(tmp_path, capsys):
    values = {k: v for k, v in PAPER.items() if k[0] != "full" and k[1] == "dev"}
    scores = long_scores(values)
    # LayerNorm's CoLA has only accuracy; nobody has RTE; one WNLI row (a GLUE task outside the paper)
    scores = scores[~((scores["method"] == "layernorm") & (scores["task"] == "cola")
                      & (scores["metric"] == "matthews")) & (scores["task"] != "rte")]
    scores = pd.concat([scores, pd.DataFrame([("bitfit", "wnli", "dev", "accuracy", 0.56, 1e-3, 1, "0")],
                                             columns=scores.columns)], ignore_index=True)
    code, report, printed = run_stats(tmp_path, scores, capsys)
    assert code == 0
    keep = [i for i, c in enumerate(PAPER_COLUMNS) if c not in ("cola", "rte")]
    assert report["dev"]["pvalue"] == pytest.approx(scipy_stats.kruskal(
        [PAPER["bitfit", "dev"][i] for i in keep], [PAPER["layernorm", "dev"][i] for i in keep]).pvalue)
    assert [u["task"] for u in report["dev"]["used"]] == [PAPER_COLUMNS[i] for i in keep]
    assert report["dev"]["dropped"] == ["cola"]  # the old key keeps its meaning
    assert report["dev"]["left_out"] == [
        {"task": "cola", "split": "dev",
         "reason": "no layernorm matthews value (it has accuracy: not the paper metric for cola)"},
        {"task": "rte", "split": "dev", "reason": "no bitfit or layernorm accuracy value"},
        {"task": "wnli", "split": "dev", "reason": "neither one of the paper's 9 columns nor a custom task"},
    ]
    assert len(report["test"]["left_out"]) == 9 and report["test"]["used"] == []
    assert report["combined"]["left_out"] == report["dev"]["left_out"] + report["test"]["left_out"]
    rows = report["rows"]
    assert rows["read"] == len(scores) == sum(rows[k] for k in ("paper_metric", "other_metric", "other_task",
                                                                  "other_methods"))
    lines = printed.splitlines()
    assert lines[3] == f"left out (12 column(s); listed in {tmp_path / 'stats' / 'kruskal.json'}):"
    assert lines[4:7] == [
        "  dev/cola: no layernorm matthews value (it has accuracy: not the paper metric for cola)",
        "  dev/rte: no bitfit or layernorm accuracy value",
        "  dev/wnli: neither one of the paper's 9 columns nor a custom task"]
    assert lines[7] == "  test/qnli: no bitfit or layernorm accuracy value" and len(lines) == 16


def test_metric_alias_table_covers_every_lnpeft_metric():
    assert set(ALIASES.values()) == set(METRICS)
    assert all(ALIASES[m] == m for m in METRICS)
    assert canonical_metric(" Matthews-Correlation ") == "matthews" and canonical_metric("Spearman R") == "spearman"
    assert canonical_metric("rmse") is None and canonical_metric(None) is None
    assert aliases_of("pearson") == ["pearson", "pearson_corr", "pearson_correlation", "pearson_r", "pearsonr"]
    assert issubclass(MetricNameError, ValueError)


# ---------------------------------------------------------------- the scores reader

def _write(path, table: pa.Table):
    pq.write_table(table, path)
    return path


def _table(**columns) -> pa.Table:
    base = {"method": pa.array(["bitfit"]), "task": pa.array(["rte"]), "split": pa.array(["dev"]),
            "metric": pa.array(["acc"]), "value": pa.array([0.7])}
    base.update(columns)
    return pa.table({k: v for k, v in base.items() if v is not None})


def test_reader_accepts_what_pandas_and_arrow_write(tmp_path):
    table = pa.table({"method": pa.array(["bitfit", "layernorm"], pa.large_string()),
                      "task": pa.array(["cola", "cola"]).dictionary_encode(),
                      "split": pa.array([" dev\r", "dev"]),  # a stray CR of a CRLF file, a space
                      "metric": pa.array(["MCC", "matthews_correlation"], pa.string_view()),
                      "value": pa.array([0.5, 0.25], pa.float32()), "seed": pa.array([0, 0], pa.int32())})
    df = read_scores(_write(tmp_path / "s.parquet", table))
    assert df.to_dict("list") == {"method": ["bitfit", "layernorm"], "task": ["cola", "cola"],
                                  "split": ["dev", "dev"], "metric": ["matthews", "matthews"], "value": [0.5, 0.25]}
    ints = read_scores(_write(tmp_path / "i.parquet", _table(value=pa.array([1], pa.int8()))))
    assert ints["value"].tolist() == [1.0] and ints["value"].dtype == np.float64
    decimals = pa.array([decimal.Decimal("0.865"), decimal.Decimal("12.5")], pa.decimal128(5, 3))
    two = pa.table({"method": ["bitfit"] * 2, "task": ["rte"] * 2, "split": ["dev"] * 2, "metric": ["acc"] * 2,
                    "value": decimals})
    dec = read_scores(_write(tmp_path / "d.parquet", two))
    assert dec["value"].tolist() == [0.865, 12.5] and dec["value"].dtype == np.float64


_LACKS = ("this stage needs scores column(s) ['value'], which the file lacks (it has ['method', 'task', 'split', "
          "'metric'{}]; needed: ['method', 'task', 'split', 'metric', 'value']); ")


@pytest.mark.parametrize("table, message", [
    (_table(**{"value": None, "\ufeffvalue": pa.array([0.7])}),
     _LACKS.format(", '\\ufeffvalue'") + "column '\\ufeffvalue' starts with a UTF-8 byte-order mark (a CSV read "
     "as utf-8 instead of utf-8-sig?): rename it to 'value'; a scores file is parquet with columns"),
    (_table(value=None), _LACKS.format("") + "add them (see results/README.md) or rerun the stage"),
    (_table(**{"value": None, "value\r": pa.array([0.7])}),
     _LACKS.format(", 'value\\r'") + "column 'value\\r' has stray whitespace: rename it to 'value'"),
    (_table(task=pa.array([b"rte\xff"], pa.binary())), "column 'task' is binary (bytes: not UTF-8 text?), "
     "expected string (text)"),
    (_table(value=pa.array(["0.7"])), "column 'value' is string, expected double (numbers)"),
    (_table(value=pa.array([None], pa.null())), "column 'value' is entirely empty (type null), expected double"),
    (_table(value=pa.array([decimal.Decimal("0.12345678901234567")], pa.decimal128(20, 17))),
     "column 'value' is decimal128(20, 17), expected double, and converting it would change a value: row 0 holds "
     "0.12345678901234567, which double reads as 0.12345678901234566; round it to 15 significant digits"),
    (_table(lr=pa.array(["1e-3"])), "column 'lr' is string, expected double (numbers)"),  # optional, not ignored
    (_table(value=pa.array([float("nan")])), "row 0: value nan of (bitfit, rte, dev, accuracy) is not a finite "
     "number; give the score or drop the row"),
    # a null reads as NaN (a pandas float column has no null): the same row, the same fix
    (_table(value=pa.array([None], pa.float64())), "row 0: value nan of (bitfit, rte, dev, accuracy)"),
    (_table(split=pa.array(["validation"])), "row 0: split 'validation' is neither dev nor test"),
    (_table(task=pa.array(["CoLA"])), "row 0: task 'CoLA' is not one of the paper's columns (qnli, sst2, "),
    (_table(method=pa.array([None], pa.string())), "row 0: method is None, expected a name"),
    (_table(metric=pa.array(["acc\x00"])), "row 0: unknown metric 'acc\\x00' for task 'rte'"),
    (_table(method=pa.array([], pa.string()), task=pa.array([], pa.string()), split=pa.array([], pa.string()),
            metric=pa.array([], pa.string()), value=pa.array([], pa.float64())), "no rows"),
], ids=["bom", "missing", "whitespace-name", "binary", "text-value", "null-type-value", "inexact-decimal",
        "text-lr", "nan", "null-value", "split", "task", "null-name", "nul-byte", "no-rows"])
def test_reader_errors_name_the_file_and_row(tmp_path, table, message):
    path = _write(tmp_path / "s.parquet", table)
    with pytest.raises((ScoresError, MetricNameError)) as err:
        read_scores(path)
    assert str(err.value).startswith(f"{path}: {message}") or str(err.value).startswith(f"{path} {message}")


def test_reader_refuses_duplicated_columns_empty_and_non_parquet_files(tmp_path):
    dup = pa.Table.from_arrays([pa.array(["bitfit"]), pa.array(["rte"]), pa.array(["dev"]), pa.array(["acc"]),
                                pa.array([0.7]), pa.array(["f1"])],
                               names=["method", "task", "split", "metric", "value", "metric"])
    with pytest.raises(ScoresError, match=r"s\.parquet: column 'metric' appears 2 times; keep one"):
        read_scores(_write(tmp_path / "s.parquet", dup))
    # a column this reader does not read may be there twice: nothing is ambiguous
    seeds = pa.Table.from_arrays([*_table().columns, pa.array([0]), pa.array([1])], names=[*NEEDED, "seed", "seed"])
    assert read_scores(_write(tmp_path / "seeds.parquet", seeds))["value"].tolist() == [0.7]
    for name, data in (("empty.parquet", b""), ("csv.parquet", b"method,task\r\nbitfit,rte\r\n")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ScoresError, match=rf"{name}: not a readable parquet file \(.*\); rerun the stage that "
                                              "makes it; a scores file is "
                                              "parquet with columns method, task, split, metric, value"):
            read_scores(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no such scores file"):
        read_scores(tmp_path / "absent.parquet")
