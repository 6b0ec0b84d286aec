"""The tiny end-to-end scenario (tests/workflow/tiny/config.yaml), run with real Snakemake.

The workflow runs once per session in a temporary folder (never the repo root: other runs would
share .snakemake/ and results/). To test a later stage, add its named targets to TARGETS and a
test that reads from the `tiny_run` fixture's folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
TINY_CONFIG = REPO / "tests" / "workflow" / "tiny" / "config.yaml"

# Named targets of the Snakefile that the tiny scenario builds (other stages: add theirs here).
TARGETS = ["data", "pretrained", "init", "fig1", "fig2", "fig3", "fig4", "fig5", "curves", "table1", "table2",
           "table3", "stats", "submission"]

SUBSAMPLE = {"train": 32, "validation": 24, "test": 16}


def glue_dir() -> Path | None:
    """The local GLUE copy: $LNPEFT_GLUE_DIR, else <repo>/../shared/glue."""
    for candidate in (os.environ.get("LNPEFT_GLUE_DIR"), REPO.parent / "shared" / "glue"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate).resolve()
    return None


def write_config(folder: Path, overrides: dict | None = None, base: Path = TINY_CONFIG) -> Path:
    """The scenario's config with data.glue_dir filled in, plus `{"a.b": value}` overrides."""
    config = yaml.safe_load(base.read_text())
    config["data"]["glue_dir"] = str(glue_dir())
    for dotted, value in (overrides or {}).items():
        *parents, key = dotted.split(".")
        node = config
        for p in parents:
            node = node.setdefault(p, {})
        node[key] = value
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(folder: Path, config: Path, *args: str, timeout: int = 1500,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the repo's Snakefile in `folder` with the venv's snakemake, offline."""
    exe = Path(sys.executable).parent / "snakemake"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           **(env or {})}
    cmd = [str(exe), "-s", str(SNAKEFILE), "--configfile", str(config), "--cores", "2", *args]
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)


needs_glue = pytest.mark.skipif(glue_dir() is None,
                                reason="no local GLUE copy (<repo>/../shared/glue or $LNPEFT_GLUE_DIR)")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """Run TARGETS of the tiny scenario once; returns the run folder (results/ inside)."""
    if glue_dir() is None:
        pytest.skip("no local GLUE copy (<repo>/../shared/glue or $LNPEFT_GLUE_DIR)")
    folder = tmp_path_factory.mktemp("tiny")
    config = write_config(folder)
    proc = snakemake(folder, config, *TARGETS)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-10000:]
    return folder


@needs_glue
def test_data_parquets(tiny_run):
    from lnpeft.data.artifacts import read_parquet

    for task in ("rte", "stsb"):
        manifest = json.loads((tiny_run / "results" / "data" / task / "MANIFEST.json").read_text())
        for split, cap in SUBSAMPLE.items():
            df = read_parquet(tiny_run / "results" / "data" / task / f"{split}.parquet", "data")
            assert len(df) == cap == manifest["splits"][split]["rows_kept"]
            assert df["idx"].is_monotonic_increasing and df["text_b"].notna().all()
            assert df["label"].isna().all() == (split == "test")
    rte = read_parquet(tiny_run / "results" / "data" / "rte" / "train.parquet", "data")
    assert str(rte["label"].dtype) == "Int64" and set(rte["label"]) <= {0, 1}
    stsb = read_parquet(tiny_run / "results" / "data" / "stsb" / "validation.parquet", "data")
    assert stsb["label"].dtype == "float64" and stsb["label"].between(0, 5).all()
    full = json.loads((tiny_run / "results" / "data" / "rte" / "MANIFEST.json").read_text())
    assert full["splits"]["test"]["rows_read"] == 3000


@needs_glue
def test_checkpoint_and_init(tiny_run):
    from safetensors.torch import load_file

    from lnpeft.model.checkpoint import verify_checkpoint

    ck = tiny_run / "results" / "checkpoints" / "all-minilm-l6-v2"
    assert verify_checkpoint(ck)["source"] == "package"
    encoder = load_file(ck / "model.safetensors")
    for task, labels in (("rte", 2), ("stsb", 1)):
        init = tiny_run / "results" / "init" / "all-minilm-l6-v2" / task / "seed0"
        weights = load_file(init / "model.safetensors")
        assert weights["classifier.weight"].shape == (labels, 384)
        assert all(weights[f"bert.{k}"].equal(v) for k, v in encoder.items() if f"bert.{k}" in weights)
        assert json.loads((init / "init.json").read_text())["task"] == task
        assert (tiny_run / "results" / "logs" / "init_model" / "all-minilm-l6-v2" / task / "seed0.log").exists()


@needs_glue
def test_drift_fisher_figures_and_table1(tiny_run):
    import matplotlib.image as mpimg
    import pandas as pd

    from lnpeft.data.artifacts import read_parquet

    results = tiny_run / "results"
    for task in ("rte", "stsb"):
        drift = read_parquet(results / "drift" / "all-minilm-l6-v2" / f"{task}.parquet", "drift")
        assert len(drift) == 6 * 8 * 3 and (drift["D"] > 0).all()  # every entry moved (full fine-tune)
        fisher = read_parquet(results / "fisher" / "all-minilm-l6-v2" / f"{task}.parquet", "fisher")
        assert len(fisher) == 6 * 2 * 384 and fisher["fisher"].sum() > 0
        # the fine-tuned weights were temporary
        assert not (results / "drift" / "all-minilm-l6-v2" / f"{task}.finetuned").exists()
    table1 = pd.read_csv(results / "tables" / "table1.csv")
    assert sorted(table1["component"]) == sorted(drift["component"].unique())
    assert table1["score"].sum() == pytest.approx(2.0, abs=1e-4)  # two tasks, each normalised to 1 (csv: 6 digits)
    for name in ("fig1_drift", "fig3_layernorm_fisher", "fig4_global_fisher"):
        assert (results / "figures" / f"{name}.pdf").stat().st_size > 1000
        assert min(mpimg.imread(results / "figures" / f"{name}.png").shape[:2]) > 300


@needs_glue
def test_finetune_grid_and_table2(tiny_run):
    """Every (task, method) run is complete, PEFT states are small, Table 2 has the paper layout."""
    import pandas as pd

    from lnpeft.data.artifacts import read_parquet

    results = tiny_run / "results"
    runs = results / "runs" / "all-minilm-l6-v2"
    for task, method in [(t, m) for t in ("rte", "stsb") for m in ("full", "bitfit", "layernorm", "random")]:
        (run,) = (runs / task / method).iterdir()
        assert sorted(p.name for p in run.iterdir()) == [
            "epochs.parquet", "predictions.parquet", "run.json", "state.safetensors"]  # resume.pt removed
        epochs = read_parquet(run / "epochs.parquet", "epochs")
        assert len(epochs) == 1 and epochs["train_loss"].notna().all()
        if method == "layernorm":
            assert (run / "state.safetensors").stat().st_size < 50_000  # 6 x 2 x 384 entries + head
    scores = read_parquet(results / "tables" / "scores.parquet", "scores")
    assert set(scores["task"]) == {"rte", "stsb"} and set(scores["split"]) == {"dev"}
    assert set(scores[scores.task == "stsb"]["metric"]) == {"spearman", "pearson"}
    table2 = pd.read_csv(results / "tables" / "table2.csv")
    assert list(table2.columns) == ["method", "percent_of_full", "stsb", "rte"]
    assert list(table2["method"]) == ["full", "bitfit", "layernorm", "random"]
    assert table2["percent_of_full"].tolist() == pytest.approx(
        [100.0, 100 * 26_882 / 22_713_986, 100 * 5_378 / 22_713_986, 100 * 5_378 / 22_713_986])
    assert "| LayerNorm | 0.024% |" in (results / "tables" / "table2.md").read_text()


@needs_glue
def test_learning_curves(tiny_run):
    """One row per task x method x epoch and quantity, at Table 2's lr and epoch; the figure opens."""
    import matplotlib.image as mpimg

    from lnpeft.data.artifacts import read_parquet

    results = tiny_run / "results"
    curves = read_parquet(results / "figures" / "curves_learning.parquet", "curves")
    methods = ["full", "bitfit", "layernorm", "random"]
    assert len(curves) == 2 * 4 * 1 * 2  # tasks x methods x epochs x (dev, train_loss)
    assert list(dict.fromkeys(curves["task"])) == ["rte", "stsb"]
    assert list(dict.fromkeys(curves["method"])) == methods
    assert set(curves["epoch"]) == {1} and set(curves["band"]) == {"none"} and set(curves["n_seeds"]) == {1}
    assert curves["mean"].notna().all() and (curves.query("quantity == 'train_loss'")["mean"] > 0).all()
    dev = curves[curves["quantity"] == "dev"].set_index(["method", "task"])
    assert set(dev.loc[(slice(None), "stsb"), "column"]) == {"validation/spearman"}
    # the lr and epoch Table 2 reports, and its value at that epoch
    scores = read_parquet(results / "tables" / "scores.parquet", "scores").set_index(["method", "task", "metric"])
    for method in methods:
        for task, metric in (("rte", "accuracy"), ("stsb", "spearman")):
            best, cell = scores.loc[(method, task, metric)], dev.loc[(method, task)]
            assert (cell["lr"], cell["best_epoch"]) == (best["lr"], best["epoch"])
            assert cell["mean"] == pytest.approx(best["value"])
    assert (results / "figures" / "curves_learning.pdf").stat().st_size > 1000
    assert min(mpimg.imread(results / "figures" / "curves_learning.png").shape[:2]) > 300


@needs_glue
def test_submission_stats_and_table3(tiny_run):
    """The incomplete zip (RTE, STS-B, WNLI) passes the validator; dev-only statistics; Table 3 n/a."""
    from lnpeft.report.validate import validate_zip

    results = tiny_run / "results"
    sub = results / "submission" / "all-minilm-l6-v2"
    assert validate_zip(sub / "layernorm.zip", data_dir=results / "data", allow_incomplete=True) == []
    manifest = json.loads((sub / "layernorm.manifest.json").read_text())
    status = {name: entry["status"] for name, entry in manifest["files"].items()}
    assert {n for n, s in status.items() if s != "missing"} == {"RTE.tsv", "STS-B.tsv", "WNLI.tsv"}
    assert status["WNLI.tsv"] == "majority" and manifest["files"]["RTE.tsv"]["rows"] == SUBSAMPLE["test"]
    kruskal = json.loads((results / "stats" / "kruskal.json").read_text())
    assert kruskal["dev"]["tasks"] == ["stsb", "rte"] and 0 <= kruskal["dev"]["pvalue"] <= 1
    assert kruskal["test"]["pvalue"] is None and kruskal["combined"]["pvalue"] is None
    assert "n/a" in (results / "tables" / "table3.md").read_text()


@needs_glue
def test_fraction_runs_and_figures_2_and_5(tiny_run):
    """Fisher-subset runs train ceil(f * N) LayerNorm entries + the head; Figures 2 and 5 drawn."""
    import math

    import matplotlib.image as mpimg
    from safetensors import safe_open

    results = tiny_run / "results"
    n_layernorm = 6 * 2 * 384
    for task in ("rte", "stsb"):
        for scheme in ("individual", "global", "cv"):
            (run,) = (results / "runs" / "all-minilm-l6-v2" / task / f"fisher-{scheme}-f0.5").iterdir()
            info = json.loads((run / "run.json").read_text())
            head = 384 * (1 if task == "stsb" else 2) + (1 if task == "stsb" else 2)
            assert info["trainable"] == math.ceil(0.5 * n_layernorm) + head
            with safe_open(run / "state.safetensors", "pt") as f:
                stored = sum(f.get_slice(k).get_shape()[0] for k in f.keys() if k.endswith("@indices"))
            assert stored == math.ceil(0.5 * n_layernorm)
    for name in ("fig2_fractions", "fig5_schemes"):
        assert (results / "figures" / f"{name}.pdf").stat().st_size > 1000
        assert min(mpimg.imread(results / "figures" / f"{name}.png").shape[:2]) > 300


@needs_glue
def test_writeup_from_the_tiny_results(tiny_run, tmp_path):
    """`lnpeft writeup` on the tiny run: Tables 1 and 2 as the workflow wrote them, the four
    verdicts, byte-identical figure copies, and --check failing once the file is edited."""
    import pandas as pd

    from lnpeft.data.artifacts import read_parquet
    from lnpeft.train.machine import describe as describe_machine

    results = tiny_run / "results"
    seeds = read_parquet(results / "tables" / "scores_seeds.parquet", "seed_scores")
    scores = read_parquet(results / "tables" / "scores.parquet", "scores")
    assert len(seeds) == len(scores) and set(seeds["seed"]) == {0}  # one seed: the seed is the mean
    assert seeds["value"].tolist() == scores["value"].tolist()
    out = tmp_path / "docs" / "repro.md"
    logs = sorted(str(p) for p in (tiny_run / ".snakemake" / "log").glob("*.snakemake.log"))
    args = [str(Path(sys.executable).parent / "lnpeft"), "writeup", "--configfile", str(REPO / "config.yaml"),
            "--configfile", str(tiny_run / "config.yaml"), "--results", str(results), "--log", *logs,
            "--out", str(out), "--readme", str(tmp_path / "README.md")]
    (tmp_path / "README.md").write_text("intro\n<!-- BEGIN reproduction -->\nold\n<!-- END reproduction -->\nrest\n")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for table in ("table1.md", "table2.md"):
        assert (results / "tables" / table).read_text().strip() in text
    verdicts = [line for line in text.splitlines() if line.startswith("| (")]
    assert [v.split(" | ")[1] for v in verdicts][3] == "**not tested**"  # tiny: no run at f = 0.2
    table1 = pd.read_csv(results / "tables" / "table1.csv")
    rank = int(table1.loc[table1.component == "output.LayerNorm", "rank"].item())
    assert f"Table 1 ranks output.LayerNorm {rank} of 8" in verdicts[1]
    assert ("**holds**" in verdicts[1]) == (rank == 1)
    assert f"on {describe_machine()};" in text and "jobs" in text  # the machine each run's run.json records
    for name in ("curves_learning.png", "fig1_drift.png", "fig2_fractions.png", "fig5_schemes.png"):
        assert (out.parent / "repro" / name).read_bytes() == (results / "figures" / name).read_bytes()
        assert f"](repro/{name})" in text
    readme = (tmp_path / "README.md").read_text()
    block = readme.split("<!-- BEGIN reproduction -->\n")[1].split("<!-- END reproduction -->")[0]
    assert block.startswith("[Reproduction at CPU scale: all-minilm-l6-v2 on 2 GLUE tasks](docs/repro.md), 1 seed (")
    assert [line.rsplit(": ", 1)[1] for line in block.splitlines() if line.startswith("- (")] == \
        [v.split(" | ")[1] for v in verdicts]
    plateau = re.search(r"\d+ of \d+ \(task, method\) curves have flattened \([^)]*\)\.", text).group(0)
    assert block.rstrip().endswith(f"Learning curves: {plateau}")  # the README says how many curves flattened
    assert readme.startswith("intro\n") and readme.endswith("<!-- END reproduction -->\nrest\n")
    # lnpeft progress on the finished grid: every run finished, and the write-up's plateau count
    progress = subprocess.run([str(Path(sys.executable).parent / "lnpeft"), "progress", *args[2:6],
                               "--results", str(results)], capture_output=True, text=True, timeout=300)
    assert progress.returncode == 0, progress.stderr[-3000:]
    table2_line, subsets_line = progress.stdout.splitlines()[:2]
    assert re.fullmatch(r"Table 2: (\d+) of \1 finished", table2_line), progress.stdout
    assert re.fullmatch(r"Fisher subsets: (\d+) of \1 finished", subsets_line), progress.stdout
    flat = re.match(r"\d+ of \d+", plateau).group(0)
    assert progress.stdout.rstrip().endswith(f"{flat} (task, method) curves flat so far")
    assert subprocess.run([*args, "--check"], capture_output=True, text=True, timeout=300).returncode == 0
    out.write_text(text.replace("**not tested**", "**holds**"))
    check = subprocess.run([*args, "--check"], capture_output=True, text=True, timeout=300)
    assert check.returncode != 0 and "is not what" in check.stderr and "+| (d)" in check.stderr


def assert_export_predicts(results: Path, model_name: str, task: str, method: str, tmp_path: Path) -> Path:
    """Export the run, then check the merged model (and the adapter on the cached checkpoint, for
    LayerNorm-type runs) predicts the run's dev predictions; returns the run folder."""
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lnpeft.data.artifacts import read_parquet
    from lnpeft.data.batching import load_split
    from lnpeft.data.tasks import get_task
    from lnpeft.model.init import head_config
    from lnpeft.train.finetune import predict

    (run,) = (results / "runs" / model_name / task / method).iterdir()
    out = tmp_path / "export"
    proc = subprocess.run([str(Path(sys.executable).parent / "lnpeft"), "export", str(run), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    adapter = method == "layernorm" or method.startswith("fisher")
    assert (out / "adapter").is_dir() == adapter and (out / "model" / "model.safetensors").is_file()
    spec = get_task(task)
    expected = read_parquet(run / "predictions.parquet", "predictions")
    expected = expected[expected["split"] == "validation"].set_index("idx")["prediction"]
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    dev = load_split(results / "data" / task / "validation.parquet", tokenizer, max_length=32)
    models = {"merged": AutoModelForSequenceClassification.from_pretrained(out / "model")}
    if adapter:
        base = AutoModelForSequenceClassification.from_pretrained(results / "checkpoints" / model_name,
                                                                  **head_config(spec))
        models["adapter"] = PeftModel.from_pretrained(base, out / "adapter")
    for kind, model in models.items():
        got = predict(model, dev, 16, torch.device("cpu"), spec.is_regression, amp=False)
        want = expected.loc[dev.idx].to_numpy()
        if spec.is_regression:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=kind)
        else:
            assert np.array_equal(got, want), kind
    return run


@needs_glue
@pytest.mark.parametrize("task, method", [("rte", "layernorm"), ("stsb", "fisher-individual-f0.5"),
                                          ("rte", "bitfit"), ("stsb", "full")])
def test_export_predicts_what_the_run_predicted(tiny_run, tmp_path, task, method):
    """`lnpeft export`: the merged save_pretrained model, and for LayerNorm-type runs the PEFT
    adapter loaded with the real peft on the cached checkpoint, predict the run's dev predictions
    (labels equal; STS-B scores within 1e-5)."""
    run = assert_export_predicts(tiny_run / "results", "all-minilm-l6-v2", task, method, tmp_path)
    if method == "bitfit":  # BitFit trains biases outside LayerNorm: no LN-tuning adapter can hold it
        again = subprocess.run([str(Path(sys.executable).parent / "lnpeft"), "export", str(run), "--out",
                                str(tmp_path / "again"), "--adapter"], capture_output=True, text=True, timeout=600)
        assert again.returncode == 2 and "cannot hold it" in again.stderr
        assert not (tmp_path / "again").exists()


@needs_glue
def test_second_dry_run_has_nothing_to_do(tiny_run):
    """`all` (every table, figure, the statistics and the zip) is complete after TARGETS."""
    proc = snakemake(tiny_run, tiny_run / "config.yaml", "-n", "all")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


@needs_glue
def test_evidence_round_trip_leaves_snakemake_only_the_cheap_report_jobs(tiny_run, tmp_path):
    """`lnpeft evidence save` from the tiny run, then in a fresh folder: the inputs rebuilt
    (`snakemake data init`), `lnpeft evidence restore`, and Snakemake plans no training, Fisher,
    drift or mask job again, under training.save_state false and true alike (`all` asks for no
    state.safetensors); with true, a target asking for a run's state trains that run again."""
    lnpeft = str(Path(sys.executable).parent / "lnpeft")
    evidence = tmp_path / "evidence"
    saved = subprocess.run([lnpeft, "evidence", "save", str(evidence), "--results", str(tiny_run / "results")],
                           capture_output=True, text=True, timeout=300)
    assert saved.returncode == 0, saved.stderr[-3000:]
    runs = sorted((tiny_run / "results" / "runs").glob("*/*/*/*/epochs.parquet"))
    assert sorted((evidence / "results" / "runs").glob("*/*/*/*/epochs.parquet")) == \
        [evidence / "results" / p.relative_to(tiny_run / "results") for p in runs]
    assert not list(evidence.rglob("*.safetensors")) and list((evidence / "snakemake-logs").glob("*.log"))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    config = write_config(fresh, {"training.save_state": False})
    built = snakemake(fresh, config, "data", "init")
    assert built.returncode == 0, built.stderr[-5000:]
    restored = subprocess.run([lnpeft, "evidence", "restore", str(evidence), "--results", str(fresh / "results")],
                              capture_output=True, text=True, timeout=300)
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert f"note: {len(runs)} run(s) were made with training.save_state true" in restored.stdout

    def planned(config_file: Path, *targets: str) -> dict[str, int]:
        proc = snakemake(fresh, config_file, "-n", *targets)
        assert proc.returncode == 0, proc.stderr[-5000:]
        stats = (proc.stdout + proc.stderr).split("Job stats:")[1].split("\n\n")[0]
        return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M) if m[1] != "total"}

    expensive = {"finetune", "finetune_fisher_subset", "compute_fisher", "finetune_for_drift", "compute_drift",
                 "rank_masks", "train_pack", "collect_run"}
    jobs = planned(config, "all")
    assert jobs and not expensive & set(jobs), jobs  # only tables, figures, statistics and the zip
    stateful = write_config(tmp_path, {"training.save_state": True})
    assert planned(stateful, "all") == jobs
    full = next(p for p in runs if p.parent.parent.name == "full")  # one job a run (the others train in packs)
    state = full.parent.relative_to(tiny_run).as_posix() + "/state.safetensors"
    assert planned(stateful, state) == {"finetune": 1}


@needs_glue
def test_a_float32_config_inits_with_the_command_it_had_before_model_dtype(tiny_run):
    """Only model.dtype bfloat16 adds `--dtype` to `lnpeft init` and `lnpeft fisher` (common.smk
    DTYPE_FLAG): a float32 results folder made before the option keeps its inits and Fisher tables
    (Snakemake reruns on a changed command)."""
    proc = snakemake(tiny_run, tiny_run / "config.yaml", "-n", "-p", "--forcerun", "init_model", "init", "table1")
    assert proc.returncode == 0, proc.stderr[-5000:]
    commands = [line for line in proc.stdout.splitlines() if "lnpeft init " in line]
    assert len(commands) == 2 and not any("--dtype" in c for c in commands)
    assert all("--layernorm output.LayerNorm > results/logs/init_model/" in c for c in commands)
    commands = [line for line in proc.stdout.splitlines() if "lnpeft fisher " in line]
    assert len(commands) == 2 and not any("--dtype" in c for c in commands)
    assert all(re.search(r" --threads \d+ > results/logs/compute_fisher/", c) for c in commands)


def test_hub_source_through_a_local_dataset_folder(tmp_path):
    """data.source hub: the same rule reads a load_dataset folder (the hub's parquet layout)."""
    from test_data import _hub_folder

    from lnpeft.data.artifacts import read_parquet

    folder = _hub_folder(tmp_path / "hub")
    config = write_config(tmp_path, {"data.source": "hub", "data.glue_dir": None,
                                     "data.hub_path": str(folder), "tasks": ["rte"],
                                     "data.subsample.train": 5})
    proc = snakemake(tmp_path, config, "data", env={"HF_DATASETS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-5000:]
    rows = {s: len(read_parquet(tmp_path / "results" / "data" / "rte" / f"{s}.parquet", "data"))
            for s in ("train", "validation", "test")}
    assert rows == {"train": 5, "validation": 3, "test": 4}
