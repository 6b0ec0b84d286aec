"""Table 3 from GLUE server results, from labelled local test data, or n/a; scores_test.parquet."""

from __future__ import annotations

import pandas as pd
import pytest
from test_submission import write_data, write_run  # helpers: tiny data and run dirs

from lnpeft.cli import main
from lnpeft.data.artifacts import read_parquet, write_parquet
from lnpeft.data.metrics import compute_metrics
from lnpeft.data.tasks import get_task
from lnpeft.errors import LnpeftError
from lnpeft.report.table3 import Table3Config, make_table3, read_glue_results

DEV = pd.DataFrame(
    [("layernorm", "rte", "dev", "accuracy", 0.70, 1e-3, 2),
     ("layernorm", "stsb", "dev", "spearman", 0.85, 1e-3, 3),
     ("layernorm", "stsb", "dev", "pearson", 0.86, 1e-3, 3),
     ("bitfit", "rte", "dev", "accuracy", 0.68, 4e-4, 1),
     ("bitfit", "stsb", "dev", "spearman", 0.84, 4e-4, 2)],
    columns=["method", "task", "split", "metric", "value", "lr", "epoch"]).assign(seeds="0")


@pytest.fixture
def scores(tmp_path):
    path = tmp_path / "scores.parquet"
    write_parquet(DEV, path, "scores")
    return path


def outputs(tmp_path):
    return tmp_path / "tables" / "table3", tmp_path / "tables" / "scores_test.parquet"


def test_glue_results_file(scores, tmp_path):
    glue = tmp_path / "glue.tsv"
    glue.write_text("# from gluebenchmark.com\nmethod\ttask\tvalue\nlayernorm\trte\t0.682\n"
                    "layernorm\tstsb\t0.865\nbitfit\trte\t0.687\n")
    prefix, scores_out = outputs(tmp_path)
    assert main(["table3", "--scores", str(scores), "--glue-results", str(glue),
                 "--out-prefix", str(prefix), "--scores-out", str(scores_out)]) == 0
    csv = pd.read_csv(f"{prefix}.csv", dtype=str, keep_default_na=False).set_index("method")
    assert list(csv.columns) == ["stsb", "rte"]  # paper column order, configured columns only
    assert list(csv.index) == ["bitfit", "layernorm"]
    assert csv.loc["layernorm", "rte"] == "0.682" and csv.loc["bitfit", "stsb"] == "n/a"
    md = open(f"{prefix}.md").read()
    assert "| LayerNorm | 0.865 | 0.682 |" in md and "GLUE server results" in md
    assert r"LayerNorm & 0.865 & 0.682 \\" in open(f"{prefix}.tex").read()
    combined = read_parquet(scores_out, "scores")
    assert len(combined) == len(DEV) + 3
    test = combined[combined["split"] == "test"].set_index(["method", "task"])
    assert test.loc[("layernorm", "stsb"), "metric"] == "spearman"
    assert test.loc[("layernorm", "stsb"), "epoch"] == 3  # from the dev row that chose the run
    assert test.loc[("bitfit", "rte"), "lr"] == 4e-4
    pd.testing.assert_frame_equal(read_parquet(scores, "scores"), DEV)  # input untouched


@pytest.mark.parametrize("text, message", [
    ("method\ttask\tscore\n", "header"),
    ("method\ttask\tvalue\nlayernorm\twnli\t0.5\n", ":2: task 'wnli' is not one of"),
    ("method\ttask\tvalue\nlayernorm\trte\t68.2\n", ":2: value 68.2 is not a fraction"),
    ("method\ttask\tvalue\nlayernorm\trte\tx\n", ":2: value 'x' is not a number"),
    ("method\ttask\tvalue\nlayernorm\trte\t0.6\nlayernorm\trte\t0.7\n", ":3: second value for"),
    ("method\ttask\tvalue\nlayernorm\trte\n", ":2: 2 fields"),
])
def test_glue_results_errors_name_the_line(tmp_path, text, message):
    glue = tmp_path / "glue.tsv"
    glue.write_text(text)
    with pytest.raises(LnpeftError, match=message):
        read_glue_results(glue)


def test_glue_results_method_must_have_dev_scores(scores, tmp_path):
    glue = tmp_path / "glue.tsv"
    glue.write_text("method\ttask\tvalue\nlayernrom\trte\t0.6\n")
    prefix, scores_out = outputs(tmp_path)
    with pytest.raises(LnpeftError, match=r"methods \['layernrom'\] have no dev scores"):
        make_table3(Table3Config(scores, prefix, scores_out, glue_results=glue))
    assert not scores_out.exists()


def test_labelled_local_test_data(scores, tmp_path):
    data = tmp_path / "data"
    write_data(data, "rte", "test", [0, 1, 2, 3], labels=[0, 1, 1, 0])
    write_data(data, "stsb", "test", [0, 1, 2], labels=None)  # unlabelled: skipped
    best = write_run(tmp_path / "r" / "b", "rte", [0.6, 0.7], {"test": ([3, 2, 1, 0], [0, 1, 0, 0])}, lr=3e-3)
    worse = write_run(tmp_path / "r" / "a", "rte", [0.6], {"test": ([0, 1, 2, 3], [1, 1, 1, 1])}, lr=1e-3)
    stsb = write_run(tmp_path / "r" / "s", "stsb", [0.8], {"test": ([0, 1, 2], [1.0, 2.0, 3.0])})
    prefix, scores_out = outputs(tmp_path)
    table, note = make_table3(Table3Config(
        scores, prefix, scores_out, data_dir=data,
        runs={("layernorm", "rte"): (worse, best), ("layernorm", "stsb"): (stsb,)}))
    # the best run (b) predicts idx 0..3 as 0, 0, 1, 0 against labels 0, 1, 1, 0: accuracy 0.75
    expected = compute_metrics(get_task("rte"), [0, 1, 1, 0], [0, 0, 1, 0])["accuracy"]
    assert expected == 0.75 and table.loc["layernorm", "rte"] == "0.750"
    assert table.loc["layernorm", "stsb"] == "n/a" and table.loc["bitfit", "rte"] == "n/a"
    assert note == "Source: labelled local test data."
    test = read_parquet(scores_out, "scores").query("split == 'test'")
    assert sorted(test["metric"]) == ["accuracy"]
    # the test row says which run made it: the lr chosen on dev (3e-3, not the dev file's 1e-3
    # row, which came from elsewhere), the epoch its predictions come from, the seed sent
    assert test[["lr", "epoch", "seeds"]].to_dict("records") == [{"lr": 3e-3, "epoch": 2, "seeds": "0"}]


def test_no_test_scores_gives_na_with_a_note(scores, tmp_path):
    prefix, scores_out = outputs(tmp_path)
    table, note = make_table3(Table3Config(scores, prefix, scores_out))
    assert (table.to_numpy() == "n/a").all() and table.shape == (2, 2)
    assert "n/a: no GLUE server results" in open(f"{prefix}.md").read()
    pd.testing.assert_frame_equal(read_parquet(scores_out, "scores"), DEV)


def test_rejects_scores_that_already_hold_test_rows(scores, tmp_path):
    prefix, scores_out = outputs(tmp_path)
    make_table3(Table3Config(scores, prefix, scores_out, glue_results=None))
    glue = tmp_path / "g.tsv"
    glue.write_text("method\ttask\tvalue\nbitfit\trte\t0.6\n")
    make_table3(Table3Config(scores, prefix, scores_out, glue_results=glue))
    with pytest.raises(LnpeftError, match="already holds test rows"):
        make_table3(Table3Config(scores_out, prefix, tmp_path / "x.parquet", glue_results=glue))


def test_glue_results_with_a_metric_column_bom_and_crlf(scores, tmp_path):
    glue = tmp_path / "glue.tsv"
    glue.write_bytes("\ufeffmethod\ttask\tmetric\tvalue\r\nlayernorm\tstsb\tspearmanr\t0.865\r\n"
                     "layernorm\tstsb\tPearson\t0.87\r\nbitfit\trte\tacc\t0.687".encode())  # no final newline
    found = read_glue_results(glue)
    assert found.to_dict("list") == {"method": ["layernorm", "layernorm", "bitfit"], "task": ["stsb", "stsb", "rte"],
                                     "metric": ["spearman", "pearson", "accuracy"], "value": [0.865, 0.87, 0.687]}
    prefix, scores_out = outputs(tmp_path)
    make_table3(Table3Config(scores, prefix, scores_out, glue_results=glue))
    test = read_parquet(scores_out, "scores").query("split == 'test'")
    assert sorted(zip(test["task"], test["metric"], test["value"])) == [
        ("rte", "accuracy", 0.687), ("stsb", "pearson", 0.87), ("stsb", "spearman", 0.865)]
    assert "| LayerNorm | 0.865 | n/a |" in open(f"{prefix}.md").read()  # Table 3 shows the paper metric


@pytest.mark.parametrize("data, message", [
    ("method\ttask\tmetric\tvalue\nlayernorm\tstsb\trmse\t0.5\n",
     ":2: unknown metric 'rmse' for task 'stsb', whose paper metric is 'spearman'"),
    ("method\ttask\tmetric\tvalue\nlayernorm\trte\tpearson\t0.5\n",
     ":2: metric 'pearson' is not scored for rte (its metrics: accuracy; the paper's: accuracy)"),
    ("method\ttask\tmetric\tvalue\nlayernorm\tcola\tmcc\t0.5\nlayernorm\tcola\tmatthews\t0.6\n",
     ":3: second value for (layernorm, cola, matthews)"),
    (b"method\ttask\tvalue\nlayernorm\trte\t0.5\nlayernorm\tst\xffsb\t0.5\n", ":3: not valid UTF-8"),
])
def test_glue_results_metric_and_encoding_errors_name_the_line(tmp_path, data, message):
    glue = tmp_path / "glue.tsv"
    glue.write_bytes(data if isinstance(data, bytes) else data.encode())
    with pytest.raises((LnpeftError, ValueError)) as err:
        read_glue_results(glue)
    assert str(err.value).startswith(f"{glue}{message}")
