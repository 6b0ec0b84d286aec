"""Figures 1-5 and Table 1 from hand-made artifacts: files written, readable, values right."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from lnpeft.architectures import COMPONENTS
from lnpeft.artifacts import write_parquet
from lnpeft.cli import main
from lnpeft.report import figures
from lnpeft.report.table1 import build_table1

TASKS = ["cola", "stsb", "rte"]
LAYERS, HIDDEN = 4, 6


def drift_table(seed):
    rng = np.random.default_rng(seed)
    rows = [{"layer": l, "component": c, "kind": k, "n": 10, "D": float(rng.uniform(0, 1))}
            for l in range(LAYERS) for c in COMPONENTS for k in ("weight", "bias", "all")]
    return pd.DataFrame(rows)


def fisher_table(seed):
    rng = np.random.default_rng(seed)
    rows = [{"param": f"bert.encoder.layer.{l}.output.LayerNorm.{k}", "layer": l,
             "component": "output.LayerNorm", "kind": k, "index": i, "fisher": float(rng.uniform(0, 1))}
            for l in range(LAYERS) for k in ("weight", "bias") for i in range(HIDDEN)]
    return pd.DataFrame(rows)


def write_run(root, task, method, lr, seed, scores):
    spec_col = {"cola": "validation/matthews", "stsb": "validation/spearman", "rte": "validation/accuracy"}[task]
    path = root / "runs" / "m" / task / method / f"lr{lr}_seed{seed}" / "epochs.parquet"
    df = pd.DataFrame({"epoch": np.arange(1, len(scores) + 1, dtype=np.int64), "train_loss": 0.5,
                       "seconds": 1.0, "tokens": np.int64(10), "padded_tokens": np.int64(12),
                       "trainable": np.int64(5), "lr": float(lr), spec_col: scores})
    write_parquet(df, path, "epochs")
    return str(path)


@pytest.fixture
def runs(tmp_path):
    paths = []
    for t_i, task in enumerate(TASKS):
        for s_i, scheme in enumerate(["individual", "global", "cv"]):
            for f in (0.1, 0.5):
                for lr in ("0.001", "0.003"):
                    base = 0.3 + 0.1 * t_i + 0.2 * f + 0.01 * s_i + (0.05 if lr == "0.003" else 0)
                    paths.append(write_run(tmp_path, task, f"fisher-{scheme}-f{f}", lr, 0, [base - 0.1, base]))
        paths.append(write_run(tmp_path, task, "layernorm", "0.003", 0, [0.9, 0.8]))
    return paths


def check_image(prefix, min_px=300):
    for ext in ("pdf", "png"):
        path = prefix.parent / f"{prefix.name}.{ext}"
        assert path.stat().st_size > 1000, path
    img = mpimg.imread(prefix.parent / f"{prefix.name}.png")
    assert img.shape[0] >= min_px and img.shape[1] >= min_px
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_fig1_panels_carry_task_names(tmp_path):
    drift = {t: drift_table(i) for i, t in enumerate(TASKS)}
    fig = figures.fig1(drift)
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in visible] == TASKS
    assert [t.get_text() for t in visible[0].get_yticklabels()] == list(COMPONENTS)
    # the image shows kind "all": the cell (output.LayerNorm, layer 2) is that D
    img = visible[1].images[0].get_array()
    expected = drift["stsb"].query("kind == 'all' and layer == 2 and component == 'output.LayerNorm'")["D"].item()
    assert img[COMPONENTS.index("output.LayerNorm"), 2] == pytest.approx(expected)
    assert len(fig.axes) - len([a for a in fig.axes if not a.get_visible()]) == 2 * len(TASKS)  # + colour bars
    args = []
    for t, df in drift.items():
        write_parquet(df, tmp_path / f"{t}.parquet", "drift")
        args.append(f"{t}={tmp_path / f'{t}.parquet'}")
    assert main(["figure", "fig1", "--drift", *args, "--out", str(tmp_path / "fig1_drift")]) == 0
    check_image(tmp_path / "fig1_drift")


def test_fig3_fig4_normalisation_and_labels(tmp_path):
    fisher = {t: fisher_table(i) for i, t in enumerate(TASKS)}
    fig = figures.fig3(fisher)
    weight_ax, bias_ax = fig.axes[:2]
    assert [t.get_text() for t in weight_ax.get_xticklabels()] == TASKS
    assert weight_ax.get_title() == "LayerNorm weight"
    w = weight_ax.images[0].get_array()
    b = bias_ax.images[0].get_array()
    np.testing.assert_allclose(w.sum(axis=0) + b.sum(axis=0), 1.0)  # each task's shares sum to 1
    f = fisher["rte"]
    direct = f.query("layer == 3 and kind == 'bias'")["fisher"].sum() / f["fisher"].sum()
    assert b[3, 2] == pytest.approx(direct)
    assert fig.axes[-1].get_ylabel() == "share of the task's LayerNorm Fisher"  # colour bar
    g = figures.fig4(fisher)
    mat = g.axes[0].images[0].get_array()
    assert mat.shape == (LAYERS, 2) and mat.sum() == pytest.approx(len(TASKS))
    assert "cola, stsb, rte" in g.axes[0].get_title()
    args = []
    for t, df in fisher.items():
        write_parquet(df, tmp_path / f"{t}.parquet", "fisher")
        args.append(f"{t}={tmp_path / f'{t}.parquet'}")
    for name in ("fig3", "fig4"):
        assert main(["figure", name, "--fisher", *args, "--out", str(tmp_path / name)]) == 0
        check_image(tmp_path / name, min_px=250)


def test_fig2_fig5_best_over_lr_and_epochs(tmp_path, runs):
    scores = figures.run_scores(runs)
    fig = figures.fig2(scores)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == TASKS
    line = axes[1].get_lines()[0]  # stsb, individual
    # best epoch (the last), best lr (0.003): 0.3 + 0.1 + 0.2 f + 0.05
    np.testing.assert_allclose(line.get_xdata(), [0.1, 0.5])
    np.testing.assert_allclose(line.get_ydata(), [0.47, 0.55])
    ref = axes[1].get_lines()[1]
    assert ref.get_label() == "all LayerNorm" and ref.get_ydata()[0] == pytest.approx(0.9)
    assert axes[0].get_ylabel() == "dev matthews"
    fig5 = figures.fig5(scores)
    labels = [l.get_label() for l in fig5.axes[0].get_lines()]
    assert labels == ["individual", "global", "cv", "all LayerNorm"]
    for name in ("fig2", "fig5"):
        assert main(["figure", name, "--runs", *runs, "--out", str(tmp_path / f"{name}.png")]) == 0
        check_image(tmp_path / name)


def test_bad_run_path_is_a_clear_error(tmp_path, capsys):
    assert main(["figure", "fig2", "--runs", str(tmp_path / "x.parquet"), "--out", str(tmp_path / "f")]) == 2
    assert "not a run's epochs.parquet" in capsys.readouterr().err


def test_table1_ranks_by_normalised_sum(tmp_path):
    def comps(values):
        return pd.DataFrame([{"layer": 0, "component": c, "kind": k, "n": 2 if k == "weight" else 1,
                              "fisher": float(values[c]) * (2 if k == "bias" else 1)}
                             for c in COMPONENTS for k in ("weight", "bias")])

    # task a: huge total, favours query; task b: small total, favours output.LayerNorm twice over
    a = comps({c: (1000 if c == "attention.self.query" else 100) for c in COMPONENTS})
    b = comps({c: (0.02 if c == "output.LayerNorm" else 0.001) for c in COMPONENTS})
    table = build_table1({"a": a, "b": b})
    # per component mean = (2 v + 2 v) / 3 = 4v/3, the factor cancels in the normalisation
    na = np.array([1000 if c == "attention.self.query" else 100 for c in COMPONENTS], float)
    nb = np.array([0.02 if c == "output.LayerNorm" else 0.001 for c in COMPONENTS], float)
    expected = pd.Series(na / na.sum() + nb / nb.sum(), index=list(COMPONENTS)).sort_values(
        ascending=False, kind="stable")  # ties: forward order
    assert list(table["component"]) == list(expected.index)
    np.testing.assert_allclose(table["score"], expected.to_numpy())
    assert table["component"][0] == "output.LayerNorm" and list(table["rank"]) == list(range(1, 9))
    write_parquet(a, tmp_path / "a.parquet", "fisher_components")
    write_parquet(b, tmp_path / "b.parquet", "fisher_components")
    assert main(["table1", "--components", f"a={tmp_path / 'a.parquet'}", f"b={tmp_path / 'b.parquet'}",
                 "--out", str(tmp_path / "table1")]) == 0
    csv = pd.read_csv(tmp_path / "table1.csv")
    assert list(csv.columns) == ["rank", "component", "score", "a", "b"]
    assert "| 1 | output.LayerNorm |" in (tmp_path / "table1.md").read_text()
    assert r"output.LayerNorm" in (tmp_path / "table1.tex").read_text()
