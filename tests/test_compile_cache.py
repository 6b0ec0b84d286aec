"""torch.compile's cache shared by a workflow's jobs (lnpeft.train.compile_cache): the folder a job
compiles into, and a later job that reads its compiled graphs instead of compiling again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_workflow import needs_glue, snakemake, write_config

from lnpeft.train.compile_cache import ENV, cache_folder


def test_the_configured_folder_made_absolute_or_torchs_own_choice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cache_folder(".cache/torch_compile") == str(tmp_path / ".cache" / "torch_compile")
    assert cache_folder(None) is None


RUN = Path("results/runs/all-minilm-l6-v2/rte/full/lr0.0001_seed0")


@needs_glue
@pytest.mark.slow
def test_a_later_job_reads_the_graphs_an_earlier_job_compiled(tmp_path, monkeypatch):
    """Two compiled runs of one job in the workflow (CPU, Inductor's C++ kernels): the first compiles
    into training.compile_cache under the working folder, the second (its outputs deleted) finds
    every graph there, and both train to the same numbers."""
    # torch sets the variable to its default in a process that compiled (a test before this one, say):
    # the config's folder still wins
    monkeypatch.setenv(ENV, str(tmp_path / "not-this-one"))
    config = write_config(tmp_path, {"training.compile": True})
    target = str(RUN / "predictions.parquet")
    reports, epochs = [], []
    for attempt in range(2):
        if attempt:
            shutil.rmtree(tmp_path / RUN)
        proc = snakemake(tmp_path, config, target, "--set-threads", "finetune=1")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        reports.append(json.loads((tmp_path / RUN / "run.json").read_text())["compile_cache"])
        epochs.append(pd.read_parquet(tmp_path / RUN / "epochs.parquet"))
    cold, warm = reports
    assert cold["dir"] == warm["dir"] == str(tmp_path / ".cache" / "torch_compile")
    assert cold["graph_misses"] > 0 and cold["graph_hits"] == 0
    assert warm["graph_hits"] == cold["graph_misses"] and warm["graph_misses"] == 0
    assert any((tmp_path / ".cache" / "torch_compile").rglob("*"))
    assert "validation/accuracy" in epochs[0]
    pd.testing.assert_frame_equal(epochs[0].drop(columns="seconds"), epochs[1].drop(columns="seconds"))
